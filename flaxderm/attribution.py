"""Attribution maps of a flax model's prediction: Grad-CAM, Grad-CAM++, saliency and integrated
gradients, as pure functions of a logits function and a prepared batch. ``flaxderm.tools.explain``
applies them to a trained run; nothing here knows of runs or training.

What is explained (the *target*, a scalar per image), as pytorch-grad-cam's targets:

* classification (``class_target``): the logit of a class, ``ClassifierOutputTarget``. A one-logit
  binary classifier's class 0 is the negated logit.
* segmentation (``lesion_target``): the lesion logit summed over the pixels the model predicts as
  lesion, ``SemanticSegmentationTarget``; where it predicts no lesion at all, over the whole image
  (what would make it a lesion).

Methods:

* ``gradcam`` (Selvaraju et al. 2017) and ``gradcampp`` (Grad-CAM++, Chattopadhay et al. 2018, in
  pytorch-grad-cam's closed form): a weighted sum of a layer's channels, then ReLU, and
  pytorch-grad-cam's normalisation (min-max scaling, a bilinear resize to the model input, min-max
  again). The layer is a flax module path such as ``layer4_1`` or ``encoder/layer4_1``
  (``cam_layers`` lists the valid ones). Default (``default_layer``): the pattern a family declares
  at registration (``ModelEntry.gradcam_layer``; a ViT's last block's ``norm1``, since after the
  last block the patch tokens no longer reach the class token and their gradients vanish, and a
  Swin's last stage), otherwise the last output on the coarsest grid among the model's own
  submodules (a CNN's last stage or head conv, the original U-Net's bottleneck); segmentation
  models with an encoder take their encoder's (a PSP-style decoder's pooled bins are coarser
  still), a classifier fed clinical metadata (``MetadataFusion``) its backbone's, the metadata
  held fixed. A token sequence ``(N, T, D)`` is read as prefix tokens (the class token) followed by the
  patch grid. Where pytorch-grad-cam hooks a torch module, the gradient here is that of a zero
  added to the flax module's output (``nn.intercept_methods``), so no model file knows about
  explanations.
* ``saliency`` (Simonyan et al. 2014): ``|d target / d input|``, the maximum over colour channels.
* ``integrated_gradients`` (Sundararajan et al. 2017): ``(x - baseline) * mean of the gradients at
  baseline + (k + 1/2) / steps * (x - baseline)``, k < ``steps`` (midpoint rule); the baseline is
  the all-zero model input (the normalisation's mean colour). Completeness: the attributions sum to
  ``target(x) - target(baseline)`` up to the quadrature error. Shown as ``|attribution|`` summed
  over channels.

Each map is min-max scaled to [0, 1] per image.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable

import cv2
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flaxderm.models import model_entry
from flaxderm.models.fusion import BACKBONE, MetadataFusion
from flaxderm.models.segmentation import SegmentationModel

METHODS = ("gradcam", "gradcampp", "integrated_gradients", "saliency")
CAM_METHODS = ("gradcam", "gradcampp")
DEFAULT_STEPS = 64
# Register tokens and the like: a token sequence has at most this many before its patch grid.
MAX_PREFIX_TOKENS = 8
# pytorch-grad-cam's scale_cam_image: x - min, divided by this plus the max.
SCALE_EPS = 1e-7

LogitsFn = Callable[[jax.Array], jax.Array]
TargetFn = Callable[[jax.Array], jax.Array]


# ------------------------------------------------------------------------------------------------
# The model's layers: module outputs as spatial maps.


@dataclasses.dataclass(frozen=True)
class Layer:
  """A module output usable as a CAM layer: its path, output shape, and how it reads as an NHWC
  map (``prefix`` leading tokens dropped and the rest reshaped to ``grid`` for token sequences)."""
  name: str
  shape: tuple[int, ...]
  grid: tuple[int, int]
  prefix: int = 0

  def as_map(self, output: jax.Array) -> jax.Array:
    if output.ndim == 4:
      return output
    return output[:, self.prefix:].reshape(output.shape[0], *self.grid, output.shape[-1])


def _path(module: nn.Module) -> str:
  return "/".join(module.path)


def _spatial_layout(shape: tuple[int, ...], height: int, width: int
                    ) -> tuple[tuple[int, int], int] | None:
  """(grid, prefix tokens) of an output of a ``height x width`` input, or None when it is not a
  map of the image: NHWC at one integer stride, or tokens = prefix + the grid at one stride."""
  if len(shape) == 4:
    h, w = shape[1:3]
    if 0 < h <= height and 0 < w <= width and height // h == width // w:
      stride = height // h
      if (h, w) == (height // stride, width // stride):
        return (h, w), 0
    return None
  if len(shape) == 3:
    for stride in range(1, height + 1):  # finest grid first: the fewest prefix tokens
      if height % stride or width % stride:
        continue
      grid = (height // stride, width // stride)
      if 0 <= shape[1] - grid[0] * grid[1] <= MAX_PREFIX_TOKENS:
        return grid, shape[1] - grid[0] * grid[1]
  return None


def _module_outputs(apply_fn: Callable, x: jax.Array) -> list[tuple[str, object]]:
  """(module path, abstract output) of every module call of ``apply_fn(x)``, in completion order."""
  calls: list[tuple[str, object]] = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__":
      calls.append((_path(context.module), out))
    return out

  with nn.intercept_methods(record):
    jax.eval_shape(apply_fn, x)
  return calls


def cam_layers(model: nn.Module, variables, x: jax.Array, *inputs: jax.Array
               ) -> dict[str, Layer]:
  """The model's module outputs that are maps of the input, by path, in call order (a module called
  more than once: its first call). ``inputs``: what the model takes after the images (the
  metadata of a ``MetadataFusion``)."""
  found: dict[str, Layer] = {}
  height, width = x.shape[1:3]
  for name, out in _module_outputs(lambda z: model.apply(variables, z, *inputs, train=False), x):
    if not name or name in found or not hasattr(out, "shape"):
      continue
    layout = _spatial_layout(tuple(out.shape), height, width)
    if layout is not None and jnp.issubdtype(out.dtype, jnp.floating):
      found[name] = Layer(name, tuple(out.shape), *layout)
  return found


def default_layer(model: nn.Module, model_name: str, layers: dict[str, Layer]) -> str:
  """The default CAM layer of ``model`` (registered as ``model_name``); see the module docstring."""
  prefix, entry = "", model_entry(model_name)
  if isinstance(model, SegmentationModel) and model.encoder_name is not None:
    prefix, entry = "encoder/", model_entry(model.encoder_name)
  if isinstance(model, MetadataFusion):  # the classifier's layers, inside the fused model
    prefix = f"{BACKBONE}/"
  inside = [name[len(prefix):] for name in layers if name.startswith(prefix)]
  if entry.gradcam_layer:  # a pattern over the module paths inside it, the last match wins
    candidates = [n for n in inside if re.fullmatch(entry.gradcam_layer, n)]
  else:
    children = [n for n in inside if "/" not in n]
    coarsest = min((np.prod(layers[prefix + n].grid) for n in children), default=None)
    candidates = [n for n in children if np.prod(layers[prefix + n].grid) == coarsest]
  if not candidates:
    raise ValueError(f"{model_name}: no default Grad-CAM layer; pass --layer, one of "
                     f"{', '.join(layers)}")
  return prefix + candidates[-1]


def checked_layer(layers: dict[str, Layer], name: str, model_name: str) -> Layer:
  if name not in layers:
    raise ValueError(f"--layer {name!r}: {model_name} has no such layer; valid layers (module "
                     f"paths whose output is a map of the image): {', '.join(layers)}")
  return layers[name]


# ------------------------------------------------------------------------------------------------
# Targets and attributions (pure functions of the model's logits).


def class_target(classes: jax.Array) -> TargetFn:
  """Per image, the logit of its class in ``classes`` (N,) (negated logit of class 0 for a
  one-logit binary classifier)."""
  def target(logits):
    if logits.shape[-1] == 1:
      return jnp.where(classes == 1, 1.0, -1.0) * logits[:, 0]
    return jnp.take_along_axis(logits, classes[:, None], axis=-1)[:, 0]
  return target


def lesion_target(logits: jax.Array) -> jax.Array:
  """Per image, the lesion logit summed over its predicted lesion (the whole image when none)."""
  if logits.shape[-1] == 1:
    lesion, predicted = logits[..., 0], logits[..., 0] >= 0
  else:
    lesion, predicted = logits[..., 1], jnp.argmax(logits, axis=-1) == 1
  predicted = jax.lax.stop_gradient(predicted)
  inside = jnp.where(predicted.any(axis=(1, 2), keepdims=True), predicted, True)
  return jnp.sum(lesion * inside, axis=(1, 2))


def activation_and_gradient(logits_fn: LogitsFn, x: jax.Array, layer: Layer, target: TargetFn
                            ) -> tuple[jax.Array, jax.Array]:
  """(``layer``'s output as NHWC maps, d sum(target) / d that output): a zero perturbation is
  added to the module's output (``nn.intercept_methods``) and differentiated."""
  def total(delta):
    seen = []

    def perturb(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.method_name == "__call__" and not seen and _path(context.module) == layer.name:
        out = out + delta.astype(out.dtype)
        seen.append(out)
      return out

    with nn.intercept_methods(perturb):
      value = jnp.sum(target(logits_fn(x)))
    return value, seen[0]

  grads, activations = jax.grad(total, has_aux=True)(jnp.zeros(layer.shape, jnp.float32))
  return (layer.as_map(activations.astype(jnp.float32)),
          layer.as_map(grads.astype(jnp.float32)))


def grad_cam(activations: jax.Array, grads: jax.Array) -> jax.Array:
  """(N, h, w) class activation maps before ReLU: channels weighted by their mean gradient."""
  return jnp.sum(jnp.mean(grads, axis=(1, 2), keepdims=True) * activations, axis=-1)


def grad_cam_plusplus(activations: jax.Array, grads: jax.Array) -> jax.Array:
  """Grad-CAM++ maps before ReLU: the weights of the paper's eq. 19 with the exponential
  target's closed-form derivatives, as pytorch-grad-cam computes them (its epsilon 1e-6)."""
  g2 = grads ** 2
  total = jnp.sum(activations, axis=(1, 2), keepdims=True)
  alpha = jnp.where(grads != 0, g2 / (2 * g2 + total * g2 * grads + 1e-6), 0.0)
  weights = jnp.sum(jax.nn.relu(grads) * alpha, axis=(1, 2), keepdims=True)
  return jnp.sum(weights * activations, axis=-1)


def input_gradient(logits_fn: LogitsFn, x: jax.Array, target: TargetFn) -> jax.Array:
  return jax.grad(lambda z: jnp.sum(target(logits_fn(z))))(x)


def saliency(logits_fn: LogitsFn, x: jax.Array, target: TargetFn) -> jax.Array:
  """(N, H, W): |d target / d input|, the maximum over channels."""
  return jnp.max(jnp.abs(input_gradient(logits_fn, x, target)), axis=-1)


def integrated_gradients(logits_fn: LogitsFn, x: jax.Array, target: TargetFn, *,
                         baseline: jax.Array | None = None, steps: int = DEFAULT_STEPS
                         ) -> jax.Array:
  """(N, H, W, C) attributions along the straight path from ``baseline`` (default zeros) to ``x``,
  midpoint rule over ``steps`` points; they sum to ``target(x) - target(baseline)`` per image up
  to the quadrature error."""
  if steps < 1:
    raise ValueError(f"integrated gradients: --steps must be >= 1, got {steps}")
  baseline = jnp.zeros_like(x) if baseline is None else baseline
  delta = x - baseline

  def accumulate(total, k):
    point = baseline + (k + 0.5) / steps * delta
    return total + input_gradient(logits_fn, point, target), None

  total, _ = jax.lax.scan(accumulate, jnp.zeros_like(x), jnp.arange(steps, dtype=x.dtype))
  return delta * total / steps


def scale_maps(maps: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
  """pytorch-grad-cam's ``scale_cam_image``: per map, minus its minimum, divided by 1e-7 plus its
  maximum, then (given ``size`` (height, width)) resized bilinearly (OpenCV)."""
  out = []
  for m in np.asarray(maps, np.float32):
    m = m - m.min()
    m = m / (SCALE_EPS + m.max())
    if size is not None:
      m = cv2.resize(m, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    out.append(m)
  return np.asarray(out, np.float32)


def raw_map(logits_fn: LogitsFn, x: jax.Array, target: TargetFn, method: str, *,
            layer: Layer | None = None, steps: int = DEFAULT_STEPS) -> jax.Array:
  """The unscaled map of a prepared batch (jit-able): for the CAM methods before ReLU at
  ``layer``'s grid, else at the input's size."""
  if method in CAM_METHODS:
    activations, grads = activation_and_gradient(logits_fn, x, layer, target)
    return (grad_cam if method == "gradcam" else grad_cam_plusplus)(activations, grads)
  if method == "saliency":
    return saliency(logits_fn, x, target)
  if method == "integrated_gradients":
    return jnp.sum(jnp.abs(integrated_gradients(logits_fn, x, target, steps=steps)), axis=-1)
  raise ValueError(f"--method must be one of {METHODS}, got {method!r}")


def scaled_map(raw: np.ndarray, method: str, size: tuple[int, int]) -> np.ndarray:
  """(N, H, W) maps in [0, 1] at the model input's ``size``: CAMs as pytorch-grad-cam finishes
  them (ReLU, scale and resize, scale again), the others scaled."""
  if method in CAM_METHODS:
    return scale_maps(scale_maps(np.maximum(raw, 0), size))
  return scale_maps(raw)


def heat_maps(logits_fn: LogitsFn, x: jax.Array, target: TargetFn, method: str, *,
              layer: Layer | None = None, steps: int = DEFAULT_STEPS) -> np.ndarray:
  """(N, H, W) maps in [0, 1] at the model input's size; ``layer`` for the CAM methods. The raw map
  is one jitted program: run eagerly, each operation of the model's gradient compiles apart."""
  raw = jax.jit(functools.partial(raw_map, logits_fn, target=target, method=method, layer=layer,
                                  steps=steps))(x)
  return scaled_map(np.asarray(raw), method, x.shape[1:3])
