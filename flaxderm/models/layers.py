"""Building blocks shared by the model families (NHWC, flax.linen).

Padding follows the weights a family is meant to load: ``"symmetric"`` is PyTorch's ``k // 2 *
dilation`` on every side (torchvision/timm ResNet, MobileNetV2, smp decoders); ``"same"`` is
TensorFlow's SAME, which pads the extra row/column at the bottom/right for even strides (the
``tf_`` EfficientNets). The two differ for strided convolutions, so the choice matters for parity.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "relu6": nn.relu6,
    "silu": nn.silu,
    "swish": nn.silu,
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
    "sigmoid": nn.sigmoid,
    "hard_sigmoid": nn.hard_sigmoid,
    "hard_swish": nn.hard_swish,
    "identity": lambda x: x,
}
NORMS = ("batch", "group", "none")


def activation(name: str | Callable | None) -> Callable[[jax.Array], jax.Array]:
  if name is None:
    return _ACTIVATIONS["identity"]
  if callable(name):
    return name
  if name not in _ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; choose from {sorted(_ACTIVATIONS)}")
  return _ACTIVATIONS[name]


def check_input(model: str, x: jax.Array, *, in_channels: int | None = None,
                multiple_of: int | None = None, what: str = "the encoder stride"):
  """ValueError naming the model and the expected/given values, before any op can fail obscurely."""
  if x.ndim != 4:
    raise ValueError(f"{model}: expected an NHWC batch of rank 4, got shape {tuple(x.shape)}")
  _, h, w, c = x.shape
  if in_channels is not None and c != in_channels:
    raise ValueError(f"{model}: expected {in_channels} input channels (NHWC, last axis), got {c} "
                     f"in shape {tuple(x.shape)}")
  if multiple_of and (h % multiple_of or w % multiple_of):
    raise ValueError(f"{model}: input {h}x{w} is not divisible by {what} {multiple_of}; use a size "
                     f"such as {max(multiple_of, round(h / multiple_of) * multiple_of)}x"
                     f"{max(multiple_of, round(w / multiple_of) * multiple_of)}")


def conv_padding(kernel_size: int, dilation: int = 1, mode: str = "symmetric"):
  if mode == "same":
    return "SAME"
  if mode == "symmetric":
    p = dilation * (kernel_size - 1) // 2
    return ((p, p), (p, p))
  raise ValueError(f"padding must be 'symmetric' or 'same', got {mode!r}")


def group_count(channels: int, preferred: int = 32) -> int:
  """Largest divisor of ``channels`` not above ``preferred`` (GroupNorm needs an exact split)."""
  return math.gcd(channels, preferred)


class Norm(nn.Module):
  """BatchNorm (PyTorch defaults: momentum 0.1 -> flax 0.9, eps 1e-5), GroupNorm, or nothing."""
  kind: str = "batch"
  epsilon: float = 1e-5
  momentum: float = 0.9
  groups: int = 32
  scale_init: Callable = nn.initializers.ones
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.kind == "batch":
      return nn.BatchNorm(use_running_average=not train, momentum=self.momentum,
                          epsilon=self.epsilon, scale_init=self.scale_init, dtype=self.dtype,
                          param_dtype=self.param_dtype, name="bn")(x)
    if self.kind == "group":
      return nn.GroupNorm(num_groups=group_count(x.shape[-1], self.groups), epsilon=self.epsilon,
                          scale_init=self.scale_init, dtype=self.dtype,
                          param_dtype=self.param_dtype, name="gn")(x)
    if self.kind == "none":
      return x
    raise ValueError(f"norm must be one of {NORMS}, got {self.kind!r}")


# Set while graphs are traced for export (flaxderm/tools/export.py): the depthwise and 1x1
# convolutions are then written as the convolutions they are, which converters map to
# DEPTHWISE_CONV_2D / CONV_2D, fold BatchNorm into and quantize per channel. Traced as shifted sums
# and matrix products, int8 re-quantized every partial sum per tensor and TFLite ran them as
# separate operators: the PH2 U-Net lost 1.59 points of Dice in int8 (now 0.05), and float32 ran
# at 70 ms per ISIC image (now 28; benchmarks/RESULTS.md, "TFLite export").
_STANDARD_CONVOLUTIONS = contextvars.ContextVar("standard_convolutions", default=False)


@contextlib.contextmanager
def standard_convolutions() -> Iterator[None]:
  """Within it, depthwise and 1x1 convolutions are traced as ``lax.conv_general_dilated``: the
  same values, the graph an exporter expects. JAX's trace caches do not see this switch, so they
  are cleared on entry (a function traced before would keep its shifted sums) and on exit (one
  traced inside would keep the slower convolutions)."""
  jax.clear_caches()
  token = _STANDARD_CONVOLUTIONS.set(True)
  try:
    yield
  finally:
    _STANDARD_CONVOLUTIONS.reset(token)
    jax.clear_caches()


def _convolution(x: jax.Array, kernel: jax.Array, strides: int, dilation: int, padding: Any,
                 groups: int) -> jax.Array:
  return jax.lax.conv_general_dilated(
      x, kernel, (strides, strides), padding, rhs_dilation=(dilation, dilation),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)


def depthwise_conv(x: jax.Array, kernel: jax.Array, *, strides: int = 1, dilation: int = 1,
                   padding: Any = "SAME") -> jax.Array:
  """Depthwise convolution (``kernel`` (k, k, 1, C), one filter per channel) as a sum of k*k
  shifted, strided slices times per-channel weights.

  The same mathematics as ``lax.conv_general_dilated(..., feature_group_count=C)``, written with
  elementwise ops because XLA:CPU runs grouped convolutions -- and above all their gradients --
  5-7x slower than this fused sum (benchmarks/NOTES.md, "Depthwise and 1x1 convolutions"). The
  kernel gradient is computed one example at a time (``_depthwise_kernel_gradient``).
  """
  k = kernel.shape[0]
  if kernel.shape[:3] != (k, k, 1) or kernel.shape[3] != x.shape[-1]:
    raise ValueError(f"depthwise_conv: kernel shape {kernel.shape} does not fit input {x.shape}")
  window = dilation * (k - 1) + 1
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(x.shape[1:3], (window, window), (strides, strides), padding)
  if _STANDARD_CONVOLUTIONS.get():
    return _convolution(x, kernel, strides, dilation, padding, x.shape[-1])
  return _depthwise(x, kernel, strides, dilation, tuple(tuple(int(p) for p in pad)
                                                          for pad in padding))


def _depthwise_taps(x: jax.Array, out_shape: tuple[int, int], k: int, strides: int,
                    dilation: int):
  """The k*k shifted, strided slices of the padded ``x`` that tap (i, j) of the kernel sees."""
  out_h, out_w = out_shape
  n, _, _, c = x.shape
  for i in range(k):
    for j in range(k):
      top, left = i * dilation, j * dilation
      yield i, j, jax.lax.slice(
          x, (0, top, left, 0),
          (n, top + (out_h - 1) * strides + 1, left + (out_w - 1) * strides + 1, c),
          (1, strides, strides, 1))


def _depthwise_forward(x, kernel, strides, dilation, padding):
  x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  k = kernel.shape[0]
  window = dilation * (k - 1) + 1
  out_shape = tuple((size - window) // strides + 1 for size in x.shape[1:3])
  out = None
  for i, j, tap in _depthwise_taps(x, out_shape, k, strides, dilation):
    out = tap * kernel[i, j, 0] if out is None else out + tap * kernel[i, j, 0]
  return out


def _depthwise_kernel_gradient(x, out_grad, k, strides, dilation, padding):
  """Sum over examples and pixels of each tap times the output gradient, one example per scan
  step: the k*k reductions then read an example's slices from cache, where over the whole batch
  each reads them from memory again (1.3-1.5x faster EfficientNet-Lite0 training steps on a
  2-core CPU, benchmarks/NOTES.md)."""
  x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  accumulate = jnp.promote_types(out_grad.dtype, jnp.float32)

  def add_example(total, example):
    image, grad = example[0][None], example[1][None]
    taps = _depthwise_taps(image, grad.shape[1:3], k, strides, dilation)  # row-major (i, j)
    return total + jnp.stack([jnp.sum(tap * grad, axis=(0, 1, 2), dtype=accumulate)
                              for _, _, tap in taps]), None

  total = jnp.zeros((k * k, x.shape[-1]), accumulate)
  total, _ = jax.lax.scan(add_example, total, (x, out_grad))
  return total.reshape(k, k, 1, x.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _depthwise(x, kernel, strides, dilation, padding):
  return _depthwise_forward(x, kernel, strides, dilation, padding)


def _depthwise_fwd(x, kernel, strides, dilation, padding):
  return _depthwise_forward(x, kernel, strides, dilation, padding), (x, kernel)


def _depthwise_bwd(strides, dilation, padding, residuals, out_grad):
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda v: _depthwise_forward(v, kernel, strides, dilation, padding), x)
  kernel_grad = _depthwise_kernel_gradient(x, out_grad, kernel.shape[0], strides, dilation,
                                           padding)
  return input_vjp(out_grad)[0], kernel_grad.astype(kernel.dtype)


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def max_pool(x: jax.Array, window: int, strides: int, padding: int = 0) -> jax.Array:
  """``nn.max_pool`` over square windows (padding with -inf), written where it can be as reshapes
  and elementwise maxima.

  On XLA:CPU the gradient of ``reduce_window`` max is a select-and-scatter that ran 5x slower than
  everything else the pool costs (benchmarks/NOTES.md); these forms differentiate into compares
  and selects. Same values; where a window holds equal maxima the gradient is shared between them
  instead of going to the first (after ReLU such ties are zeros, whose gradient ReLU drops).
  """
  n, h, w, c = x.shape
  if window == strides and not padding and h % strides == 0 and w % strides == 0:
    return x.reshape(n, h // strides, strides, w // strides, strides, c).max(axis=(2, 4))
  if (window, strides, padding) == (3, 2, 1) and h % 2 == 0 and w % 2 == 0:
    return _max_pool_3x3_stride2(_max_pool_3x3_stride2(x, axis=1), axis=2)
  return nn.max_pool(x, (window, window), strides=(strides, strides),
                     padding=((padding, padding), (padding, padding)))


def _windows(x: jax.Array, window: int) -> jax.Array:
  """(N, H, W, C) -> (N, H/k, W/k, C, k*k): each non-overlapping k x k window, row-major."""
  n, h, w, c = x.shape
  k = window
  x = x.reshape(n, h // k, k, w // k, k, c).transpose(0, 1, 3, 5, 2, 4)
  return x.reshape(n, h // k, w // k, c, k * k)


def max_pool_with_indices(x: jax.Array, window: int = 2) -> tuple[jax.Array, jax.Array]:
  """Max pooling over non-overlapping ``window`` x ``window`` windows (stride = window), and
  where each maximum was: PyTorch's ``MaxPool2d(window, return_indices=True)`` in NHWC.

  The indices are int32 and, as PyTorch's, flat positions ``row * W + col`` in the input's
  (H, W) plane of each image and channel; ties go to the first maximum in row-major window order
  (also PyTorch's choice). The gradient flows to that maximum only, so it agrees with
  ``max_unpool``. SegNet's decoder upsamples with these indices.
  """
  n, h, w, c = x.shape
  k = window
  if h % k or w % k:
    raise ValueError(f"max_pool_with_indices: input {h}x{w} is not divisible by the window {k}")
  windows = _windows(x, k)
  local = jnp.argmax(windows, axis=-1)
  at_max = local[..., None] == jnp.arange(k * k)
  pooled = jnp.sum(jnp.where(at_max, windows, jnp.zeros((), x.dtype)), axis=-1)
  rows = jnp.arange(h // k)[:, None, None] * k + local // k
  cols = jnp.arange(w // k)[None, :, None] * k + local % k
  return pooled, (rows * w + cols).astype(jnp.int32)


def max_unpool(x: jax.Array, indices: jax.Array, window: int = 2) -> jax.Array:
  """Inverse of ``max_pool_with_indices``: each value goes back to the position its index names
  inside its ``window`` x ``window`` window, zeros elsewhere; the output is ``window`` times
  larger. PyTorch's ``MaxUnpool2d(window)`` for indices from the matching pool.

  Written as a compare-and-select per window rather than a scatter: XLA:CPU runs scatters and
  their gradients slowly, and pooling indices never leave their own window. An index outside its
  window (which PyTorch would scatter there) leaves that window zero.
  """
  if indices.shape != x.shape:
    raise ValueError(f"max_unpool: indices shape {tuple(indices.shape)} differs from the input "
                     f"shape {tuple(x.shape)}")
  n, h, w, c = x.shape
  k = window
  out_w = w * k
  rows = indices // out_w - jnp.arange(h)[:, None, None] * k
  cols = indices % out_w - jnp.arange(w)[None, :, None] * k
  at_index = (rows * k + cols)[..., None] == jnp.arange(k * k)
  y = jnp.where(at_index, x[..., None], jnp.zeros((), x.dtype)).reshape(n, h, w, c, k, k)
  return y.transpose(0, 1, 4, 2, 5, 3).reshape(n, h * k, w * k, c)


def _max_pool_3x3_stride2(x: jax.Array, axis: int) -> jax.Array:
  """Output i covers inputs 2i-1, 2i, 2i+1 along ``axis`` (padding 1, even length): the maximum of
  pair i and the second element of pair i-1."""
  size = x.shape[axis]
  pairs = x.reshape(x.shape[:axis] + (size // 2, 2) + x.shape[axis + 1:])
  second = jax.lax.index_in_dim(pairs, 1, axis + 1, keepdims=False)
  pad = [(0, 0)] * x.ndim
  pad[axis] = (1, 0)
  previous = jnp.pad(jax.lax.slice_in_dim(second, 0, size // 2 - 1, axis=axis), pad,
                     constant_values=-jnp.inf)
  return jnp.maximum(pairs.max(axis=axis + 1), previous)


def adaptive_avg_pool(x: jax.Array, size: int | tuple[int, int]) -> jax.Array:
  """PyTorch's ``adaptive_avg_pool2d`` to ``size`` x ``size`` (or ``(height, width)``) bins (NHWC):
  along an axis of length n, bin i of m averages positions floor(i * n / m) .. ceil((i + 1) * n /
  m) - 1, so bins overlap when n is not a multiple of m and repeat positions when m > n. Written
  as one product with two small averaging matrices rather than a loop over bins."""
  height, width = (size, size) if isinstance(size, int) else size

  def averaging(n: int, m: int) -> jax.Array:
    rows = []
    for i in range(m):
      start, end = i * n // m, -(-(i + 1) * n // m)
      rows.append([1.0 / (end - start) if start <= j < end else 0.0 for j in range(n)])
    return jnp.asarray(rows, x.dtype)

  return jnp.einsum("nhwc,ih,jw->nijc", x, averaging(x.shape[1], height),
                    averaging(x.shape[2], width))


class _ConvWeights(nn.Module):
  """``nn.Conv``'s ``kernel`` / ``bias`` parameters and dtype handling, for the convolutions below
  that compute differently with the same parameters (so checkpoints and converters still fit)."""
  strides: int = 1
  use_bias: bool = False
  kernel_init: Callable = nn.initializers.lecun_normal()
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  def weights(self, x: jax.Array, kernel_shape: tuple[int, ...]):
    """(x, kernel, bias or None), promoted to the compute dtype."""
    kernel = self.param("kernel", self.kernel_init, kernel_shape, self.param_dtype)
    bias = (self.param("bias", nn.initializers.zeros, kernel_shape[-1:], self.param_dtype)
            if self.use_bias else None)
    return nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)


class DepthwiseConv(_ConvWeights):
  """``nn.Conv`` with ``feature_group_count`` = channels, computed by ``depthwise_conv``."""
  kernel_size: int = 3
  dilation: int = 1
  padding: Any = "SAME"

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    x, kernel, bias = self.weights(x, (k, k, 1, x.shape[-1]))
    y = depthwise_conv(x, kernel, strides=self.strides, dilation=self.dilation, padding=self.padding)
    return y if bias is None else y + bias


class PointwiseConv(_ConvWeights):
  """A 1x1 ``nn.Conv`` computed as a matrix product over the (strided) pixels: XLA:CPU runs the
  1x1 convolution's gradients 2.5-6x slower than the same products written as matmuls
  (benchmarks/NOTES.md, "Depthwise and 1x1 convolutions")."""
  features: int = 1

  @nn.compact
  def __call__(self, x):
    x, kernel, bias = self.weights(x, (1, 1, x.shape[-1], self.features))
    if _STANDARD_CONVOLUTIONS.get():
      y = _convolution(x, kernel, self.strides, 1, "VALID", 1)
      return y if bias is None else y + bias
    if self.strides > 1:
      # lax.slice, not x[:, ::s, ::s]: with a symbolic batch (export) indexing becomes a gather.
      x = jax.lax.slice(x, (0,) * 4, x.shape, (1, self.strides, self.strides, 1))
    y = jnp.dot(x.reshape(-1, x.shape[-1]), kernel[0, 0]).reshape(*x.shape[:-1], self.features)
    return y if bias is None else y + bias


def conv(features: int, kernel_size: int, *, strides: int = 1,
         dilation: int = 1, groups: int = 1, padding: Any = ((0, 0), (0, 0)), use_bias: bool = False,
         kernel_init: Callable = nn.initializers.lecun_normal(), dtype: Dtype | None = None,
         param_dtype: Dtype = jnp.float32, name: str | None = None) -> nn.Module:
  """A square 2-D convolution module with ``nn.Conv``'s parameters, choosing the formulation XLA
  runs fastest: depthwise (one group per output channel, which must equal the input channels) and
  1x1 convolutions get their own."""
  common = dict(use_bias=use_bias, kernel_init=kernel_init, dtype=dtype, param_dtype=param_dtype,
                name=name)
  if groups > 1 and groups == features:
    return DepthwiseConv(kernel_size=kernel_size, strides=strides, dilation=dilation,
                         padding=padding, **common)
  unpadded = padding in ("SAME", "VALID") or not any(map(any, padding))  # SAME pads a 1x1 by 0
  if kernel_size == 1 and groups == 1 and unpadded:
    return PointwiseConv(features=features, strides=strides, **common)
  return nn.Conv(features, (kernel_size, kernel_size), strides=strides, padding=padding,
                 kernel_dilation=dilation, feature_group_count=groups, **common)


class ConvNormAct(nn.Module):
  """Conv (no bias when normalised) -> Norm -> activation."""
  features: int
  kernel_size: int = 3
  strides: int = 1
  dilation: int = 1
  groups: int = 1
  norm: str = "batch"
  act: str | Callable | None = "relu"
  padding: str = "symmetric"
  norm_epsilon: float = 1e-5
  use_bias: bool | None = None  # None: bias only without a norm
  kernel_init: Callable = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
  norm_scale_init: Callable = nn.initializers.ones
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    k = self.kernel_size
    x = conv(self.features, k, strides=self.strides,
             dilation=self.dilation, groups=self.groups,
             padding=conv_padding(k, self.dilation, self.padding),
             use_bias=(self.norm == "none") if self.use_bias is None else self.use_bias,
             kernel_init=self.kernel_init, dtype=self.dtype, param_dtype=self.param_dtype,
             name="conv")(x)
    x = Norm(self.norm, epsilon=self.norm_epsilon, scale_init=self.norm_scale_init,
             dtype=self.dtype, param_dtype=self.param_dtype, name="norm")(x, train)
    return activation(self.act)(x)


class SeparableConv(nn.Module):
  """Depthwise k x k conv -> norm/act, then pointwise 1x1 conv -> norm/act (MobileNet/Xception form)."""
  features: int
  kernel_size: int = 3
  strides: int = 1
  dilation: int = 1
  norm: str = "batch"
  act: str | Callable | None = "relu"
  padding: str = "symmetric"
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    common = dict(norm=self.norm, act=self.act, padding=self.padding, dtype=self.dtype,
                  param_dtype=self.param_dtype)
    x = ConvNormAct(x.shape[-1], self.kernel_size, self.strides, self.dilation,
                    groups=x.shape[-1], name="depthwise", **common)(x, train)
    return ConvNormAct(self.features, 1, name="pointwise", **common)(x, train)


class ASPP(nn.Module):
  """Atrous spatial pyramid pooling (DeepLabV3): a 1x1 branch, one 3x3 branch per atrous rate
  (optionally depthwise-separable), and an image-pooling branch, concatenated, then a 1x1 projection
  with dropout. Also the dilated pyramid of paper 004's codec (rates 3, 3, 6 there)."""
  features: int = 256
  rates: Sequence[int] = (6, 12, 18)
  separable: bool = False
  image_pooling: bool = True
  dropout: float = 0.5
  norm: str = "batch"
  act: str = "relu"
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    common = dict(norm=self.norm, act=self.act, dtype=self.dtype, param_dtype=self.param_dtype)
    branches = [ConvNormAct(self.features, 1, name="branch_1x1", **common)(x, train)]
    for i, r in enumerate(self.rates):
      if self.separable:
        branches.append(SeparableConv(self.features, 3, dilation=r, name=f"branch_rate{i}",
                                      **common)(x, train))
      else:
        branches.append(ConvNormAct(self.features, 3, dilation=r, name=f"branch_rate{i}",
                                    **common)(x, train))
    if self.image_pooling:
      pooled = jnp.mean(x, axis=(1, 2), keepdims=True)
      # GroupNorm/BatchNorm over a 1x1 map: BatchNorm is fine (statistics over the batch).
      pooled = ConvNormAct(self.features, 1, name="image_pool", **common)(pooled, train)
      branches.append(jnp.broadcast_to(pooled, branches[0].shape))
    y = jnp.concatenate(branches, axis=-1)
    y = ConvNormAct(self.features, 1, name="project", **common)(y, train)
    return nn.Dropout(self.dropout, deterministic=not train)(y)


class DropPath(nn.Module):
  """Stochastic depth: drops the whole residual branch per sample with probability ``rate``
  (needs the 'dropout' rng when training)."""
  rate: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.rate == 0.0 or not train:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


def resize_bilinear(x: jax.Array, height: int, width: int, *, align_corners: bool = False):
  """Bilinear NHWC resize. ``align_corners=False`` is PyTorch's ``F.interpolate(...,
  align_corners=False)`` (half-pixel centres) when upsampling; ``True`` matches smp's DeepLabV3+."""
  n, h, w, c = x.shape
  if (h, w) == (height, width):
    return x
  if not align_corners:
    return jax.image.resize(x, (n, height, width, c), "linear", antialias=False)

  def coords(src, dst):
    if dst == 1:
      return jnp.zeros((1,), jnp.float32)
    return jnp.arange(dst, dtype=jnp.float32) * ((src - 1) / (dst - 1))

  def interp(a, axis, src, dst):
    pos = coords(src, dst)
    lo = jnp.floor(pos).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, src - 1)
    frac = (pos - lo).astype(a.dtype)
    shape = [1] * a.ndim
    shape[axis] = dst
    frac = frac.reshape(shape)
    return jnp.take(a, lo, axis=axis) * (1 - frac) + jnp.take(a, hi, axis=axis) * frac

  return interp(interp(x, 1, h, height), 2, w, width)


def resample_position_embedding(pos_embed: jax.Array, new_grid: int | Sequence[int],
                                num_prefix_tokens: int = 1) -> jax.Array:
  """Resamples a ``(1, num_prefix_tokens + g * g, D)`` position embedding to ``new_grid`` (an int or
  ``(height, width)`` in patches): the square grid part is resized bilinearly (PyTorch's
  ``align_corners=False``, no antialiasing) in float32, the prefix tokens are kept as they are.
  Equals timm's ``resample_abs_pos_embed(..., interpolation="bilinear", antialias=False)``."""
  gh, gw = (new_grid, new_grid) if isinstance(new_grid, int) else tuple(new_grid)
  if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
    raise ValueError(f"pos_embed must have shape (1, tokens, dim), got {tuple(pos_embed.shape)}")
  num_grid = pos_embed.shape[1] - num_prefix_tokens
  old = math.isqrt(max(num_grid, 0))
  if old * old != num_grid or num_grid == 0:
    raise ValueError(f"pos_embed of shape {tuple(pos_embed.shape)} with {num_prefix_tokens} prefix "
                     f"token(s) has {num_grid} grid entries, not a square grid")
  if (gh, gw) == (old, old):
    return pos_embed
  prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
  grid = grid.reshape(1, old, old, -1).astype(jnp.float32)
  grid = resize_bilinear(grid, gh, gw).reshape(1, gh * gw, -1).astype(pos_embed.dtype)
  return jnp.concatenate([prefix, grid], axis=1)
