"""``TrainState``: everything on devices that a training run updates, as one pytree of arrays.

It holds no functions (no ``apply_fn``, no ``tx``): the model and optimiser are rebuilt from the
config, so the state checkpoints and restores as plain arrays, under any device count.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """step: updates applied so far (int32). params / batch_stats: the model's collections
  (batch_stats ``{}`` without BatchNorm). opt_state: the optax state. rng: raw uint32 key data,
  the run's base key (step keys are ``fold_in(rng, step)``, so resuming reproduces them).
  ema_params: exponential moving average of params, or None."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  ema_params: Any = None

  def variables(self, *, use_ema: bool = False) -> dict[str, Any]:
    """The variables to call the model with: {"params", ["batch_stats"]}."""
    if use_ema and self.ema_params is None:
      raise ValueError("use_ema: this run keeps no EMA of the parameters "
                       "(config.optimizer.ema_decay is 0)")
    variables = {"params": self.ema_params if use_ema else self.params}
    if self.batch_stats:
      variables["batch_stats"] = self.batch_stats
    return variables


def create_train_state(variables: Mapping[str, Any], tx: optax.GradientTransformation, *,
                       seed: int, ema: bool) -> TrainState:
  """A step-0 state from initial (or pretrained) model variables."""
  params = variables["params"]
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get("batch_stats", {}),
      opt_state=tx.init(params),
      rng=jax.random.key_data(jax.random.key(seed)),
      ema_params=jax.tree.map(jnp.copy, params) if ema else None)


def step_key(state: TrainState) -> jax.Array:
  """This step's PRNG key, derived from the base key and the step count."""
  return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
