"""Optimisers and learning-rate schedules from the config (optax).

The learning rate is kept out of the optax chain: ``make_optimizer`` returns the direction
(``scale_by_adam``, momentum, weight decay, clipping ...) and the train step multiplies it by
``-lr * schedule(progress)``. Every optax optimiser used here ends with
``scale_by_learning_rate``, so the result is the same as optax's (and PyTorch's) for a constant
rate, while the rate can follow progress computed on the host -- step / total steps, or elapsed
time / budget -- as a traced scalar argument of the step: one compiled step serves any schedule
position and a wall-clock budget needs no recompilation.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

# Leaf names never weight-decayed unless asked: biases, norm scales, and (as timm) position
# embeddings, class tokens and relative-position tables.
NO_DECAY_LEAVES = ("bias", "scale", "pos_embed", "cls_token", "relative_position_bias_table")


def schedule_fn(cfg: ml_collections.ConfigDict) -> Callable[[jax.Array], jax.Array]:
  """``progress in [0, 1] -> learning-rate multiplier`` for ``config.schedule`` (jnp, jit-safe)."""
  name = cfg.name
  warmup = cfg.warmup_fraction
  final = cfg.final_fraction

  def cosine(p):  # from 1 at p=0 to `final` at p=1
    return final + (1.0 - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.clip(p, 0.0, 1.0)))

  if name == "constant":
    return lambda p: jnp.ones_like(p)
  if name == "cosine":
    return cosine
  if name == "warmup_cosine":
    def warmup_cosine(p):
      if warmup == 0.0:
        return cosine(p)
      ramp = jnp.clip(p / warmup, 0.0, 1.0)
      return jnp.where(p < warmup, ramp, cosine((p - warmup) / (1.0 - warmup + 1e-12)))
    return warmup_cosine
  if name == "step":
    boundaries = jnp.asarray(cfg.boundaries, jnp.float32)
    return lambda p: cfg.decay_factor ** jnp.sum(p >= boundaries).astype(jnp.float32)
  if name == "one_cycle":  # PyTorch OneCycleLR / optax.cosine_onecycle_schedule, on progress
    rise = warmup or 0.3
    start, end = 1.0 / cfg.div_factor, 1.0 / cfg.div_factor / cfg.final_div_factor

    def interpolate(a, b, t):
      return b + (a - b) * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.clip(t, 0.0, 1.0)))

    return lambda p: jnp.where(p < rise, interpolate(start, 1.0, p / rise),
                               interpolate(1.0, end, (p - rise) / (1.0 - rise)))
  raise ValueError(f"config.schedule.name: unknown schedule {name!r}")


def decay_mask(params: Any) -> Any:
  """True for leaves to weight-decay: kernels, not biases / norm scales / embeddings."""
  def decayed(path, leaf):
    name = getattr(path[-1], "key", str(path[-1]))
    return leaf.ndim > 1 and name not in NO_DECAY_LEAVES
  return jax.tree_util.tree_map_with_path(decayed, params)


def _direction(cfg: ml_collections.ConfigDict, params: Any) -> optax.GradientTransformation:
  """The optimiser without its learning rate (optax's chain minus ``scale_by_learning_rate``)."""
  mask = None if cfg.decay_norms_and_biases else decay_mask(params)
  l2 = (optax.add_decayed_weights(cfg.weight_decay, mask) if cfg.weight_decay > 0
        else optax.identity())
  if cfg.name == "sgd":  # torch.optim.SGD: L2 into the gradient, then (Nesterov) momentum
    core = (optax.trace(decay=cfg.momentum, nesterov=cfg.nesterov) if cfg.momentum > 0
            else optax.identity())
    return optax.chain(l2, core)
  if cfg.name == "adam":  # torch.optim.Adam(weight_decay=...): coupled L2
    return optax.chain(l2, optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
  if cfg.name == "adamw":  # decoupled decay, added after Adam's scaling (optax.adamw)
    return optax.chain(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps), l2)
  if cfg.name == "rmsprop":
    return optax.chain(l2, optax.scale_by_rms(decay=cfg.decay, eps=cfg.eps))
  raise ValueError(f"config.optimizer.name: unknown optimizer {cfg.name!r}")


def make_optimizer(cfg: ml_collections.ConfigDict, params: Any, *,
                   labels: Any | None = None) -> optax.GradientTransformation:
  """The update direction for ``config.optimizer``: clipping, decay, the optimiser's scaling,
  per-group learning-rate scales, and gradient accumulation (``optax.MultiSteps``).

  labels: optional ``"encoder"``/``"decoder"`` per parameter leaf (a pretrained model's groups);
    encoder updates are scaled by ``encoder_lr_scale``.
  """
  parts = []
  if cfg.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  parts.append(_direction(cfg, params))
  if labels is not None and cfg.encoder_lr_scale != 1.0:
    parts.append(optax.multi_transform(
        {"encoder": optax.scale(cfg.encoder_lr_scale), "decoder": optax.identity()}, labels))
  tx = optax.chain(*parts)
  if cfg.accumulate_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=cfg.accumulate_steps)
  return tx


def learning_rate(cfg: ml_collections.ConfigDict, progress: jax.Array) -> jax.Array:
  """``optimizer.lr * schedule(progress)``."""
  return cfg.optimizer.lr * schedule_fn(cfg.schedule)(jnp.asarray(progress, jnp.float32))


def ema_update(ema: Any, params: Any, decay: float) -> Any:
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def scaled_updates(updates: Mapping[str, Any], lr: jax.Array) -> Any:
  """``-lr * updates``, kept in each leaf's dtype."""
  return jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates)
