"""Channel and spatial attention: the squeeze-excitation gate and the blocks built on it.

One gate, ``squeeze_excitation`` (global average -> 1x1 conv -> act -> 1x1 conv -> sigmoid), serves
EfficientNet's and MobileNetV2's ``SqueezeExcite``, smp's scSE (``SCSE``) and MA-Net's fusion block
(``ChannelGate``, which sums two gates before it rescales). It creates its convs in the calling
module under names the caller chooses, so each keeps the parameter names its PyTorch twin's
checkpoints convert to (naming rules in the family files).

Also here: ECA, CBAM and coordinate attention, and ``decoder_attention``, which builds the
attention a segmentation decoder's ``decoder_attention`` option names (``ATTENTIONS``).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxderm.models import layers
from flaxderm.models.segmentation import DECODER_INIT

Dtype = Any

# Decoder attention by name: smp's "scse" and "se", CBAM (Woo et al. 2018), ECA (Wang et al. 2020)
# and coordinate attention ("coord", Hou et al. 2021, APC-UNet's decoder in paper 004 §2).
ATTENTIONS = (None, "scse", "se", "cbam", "eca", "coord")
# Paper 004 (§2) reports k_size 5 for the ECA of Wang et al.'s dermoscopy U-Net; the decoder fixes
# it rather than use ECA-Net's channel-adaptive rule, which gives 3 below 128 channels.
ECA_KERNEL_SIZE = 5


def squeeze_excitation(x: jax.Array, reduced_features: int, *,
                       names: Sequence[str] = ("reduce", "expand"), act: str | Callable = "relu",
                       gate: str | Callable = "sigmoid",
                       kernel_init: Callable = nn.initializers.lecun_normal(),
                       dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32) -> jax.Array:
  """The squeeze-excitation gate of ``x``, shape (N, 1, 1, C): global average -> 1x1 conv to
  ``reduced_features`` -> ``act`` -> 1x1 conv back to C -> ``gate``. Call it from a module's
  compact method: its two convs become that module's children, named ``names``."""
  reduce, expand = names
  conv = lambda features, name: nn.Conv(features, (1, 1), kernel_init=kernel_init, dtype=dtype,
                                        param_dtype=param_dtype, name=name)
  s = layers.activation(act)(conv(reduced_features, reduce)(jnp.mean(x, (1, 2), keepdims=True)))
  return layers.activation(gate)(conv(x.shape[-1], expand)(s))


class SqueezeExcite(nn.Module):
  """Squeeze-and-excitation: ``x`` rescaled by its ``squeeze_excitation`` gate (convs ``reduce``
  and ``expand``, flax's default LeCun-normal init)."""
  reduced_features: int
  act: str | Callable = "relu"
  gate: str | Callable = "sigmoid"
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return x * squeeze_excitation(x, self.reduced_features, act=self.act, gate=self.gate,
                                  dtype=self.dtype, param_dtype=self.param_dtype)


class ChannelGate(nn.Module):
  """The ``squeeze_excitation`` gate alone (ReLU, sigmoid, smp's decoder init), for a caller that
  combines gates before rescaling (MA-Net's fusion block)."""
  reduced_features: int
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return squeeze_excitation(x, self.reduced_features, kernel_init=DECODER_INIT, dtype=self.dtype,
                              param_dtype=self.param_dtype)


class SCSE(nn.Module):
  """Concurrent spatial and channel squeeze-excitation (Roy et al. 2018), smp's ``scse``:
  ``x * cSE(x) + x * sSE(x)``. The channel branch keeps at least one hidden unit where smp's
  ``c // 16`` is 0 (c < 16), which leaves smp's gate a constant; from 16 channels up they match."""
  reduction: int = 16
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    channel = squeeze_excitation(x, max(x.shape[-1] // self.reduction, 1),
                                 names=("cse_reduce", "cse_expand"), kernel_init=DECODER_INIT,
                                 **common)
    spatial = nn.sigmoid(nn.Conv(1, (1, 1), kernel_init=DECODER_INIT, name="sse", **common)(x))
    return x * channel + x * spatial


class ECA(nn.Module):
  """Efficient channel attention (Wang et al. 2020): a 1-D conv across the pooled channel vector.

  ``kernel_size`` None adapts it to the channel count as ECA-Net does (|log2(C)/gamma +
  beta/gamma| rounded up to odd: 3 below 128 channels, 5 from 128 to 2047); an int fixes it.
  """
  gamma: int = 2
  beta: int = 1
  kernel_size: int | None = None
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    k = self.kernel_size
    if k is None:
      k = int(abs(math.log2(c) / self.gamma + self.beta / self.gamma))
      k = k if k % 2 else k + 1
    s = jnp.mean(x, axis=(1, 2))[..., None]  # (N, C, 1): channels as a 1-D sequence
    s = nn.Conv(1, (k,), padding="SAME", use_bias=False, dtype=self.dtype,
                param_dtype=self.param_dtype, name="conv")(s)
    return x * nn.sigmoid(s[:, None, None, :, 0])


class CBAM(nn.Module):
  """Convolutional block attention (Woo et al. 2018): channel attention from average- and max-pooled
  descriptors through a shared MLP, then spatial attention from a 7x7 conv over channel mean/max."""
  reduction: int = 16
  spatial_kernel: int = 7
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    hidden = nn.Dense(max(c // self.reduction, 1), dtype=self.dtype, param_dtype=self.param_dtype,
                      name="mlp_in")
    out = nn.Dense(c, dtype=self.dtype, param_dtype=self.param_dtype, name="mlp_out")
    mlp = lambda v: out(nn.relu(hidden(v)))
    channel = nn.sigmoid(mlp(jnp.mean(x, axis=(1, 2))) + mlp(jnp.max(x, axis=(1, 2))))
    x = x * channel[:, None, None, :]
    pooled = jnp.concatenate([jnp.mean(x, -1, keepdims=True), jnp.max(x, -1, keepdims=True)], -1)
    k = self.spatial_kernel
    spatial = nn.Conv(1, (k, k), padding=layers.conv_padding(k), use_bias=False, dtype=self.dtype,
                      param_dtype=self.param_dtype, name="spatial")(pooled)
    return x * nn.sigmoid(spatial)


class CoordAttention(nn.Module):
  """Coordinate attention (Hou et al. 2021, "Coordinate Attention for Efficient Mobile Network
  Design"); APC-UNet (paper 004 §2) puts it in a U-Net decoder for positional information.

  The map is average-pooled along W (one C-vector per row) and along H (one per column); the two
  sequences are joined and passed through one shared 1x1 conv (with bias, as Hou's code) -> norm
  -> hard-swish to ``max(min_hidden, C // reduction)`` channels, split again, and each half
  becomes a sigmoid gate by its own 1x1 conv. The output is ``x * gate_h[row] * gate_w[col]``: the
  row gate varies only along H, the column gate only along W. Hou's defaults: reduction 32,
  at least 8 hidden channels, BatchNorm (statistics over both sequences together).
  """
  reduction: int = 32
  min_hidden: int = 8
  norm: str = "batch"
  act: str | Callable = "hard_swish"
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    _, h, _, c = x.shape
    common = dict(use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype)
    rows = jnp.mean(x, axis=2)  # (N, H, C)
    cols = jnp.mean(x, axis=1)  # (N, W, C)
    y = jnp.concatenate([rows, cols], axis=1)[:, :, None, :]  # (N, H + W, 1, C)
    y = layers.ConvNormAct(max(self.min_hidden, c // self.reduction), 1, norm=self.norm,
                           act=self.act, name="reduce", **common)(y, train)
    gate_h = nn.sigmoid(layers.conv(c, 1, name="gate_h", **common)(y[:, :h]))  # (N, H, 1, C)
    gate_w = nn.sigmoid(layers.conv(c, 1, name="gate_w", **common)(y[:, h:]))  # (N, W, 1, C)
    return x * gate_h * gate_w.transpose(0, 2, 1, 3)


def decoder_attention(kind: str | None, channels: int, name: str, dtype: Dtype | None,
                      param_dtype: Dtype, train: bool | None = None):
  """The attention applied to a ``channels``-channel map, as a function of the map (identity for
  None). ``train`` (the caller's flag) is required by "coord", whose BatchNorm depends on it."""
  common = dict(dtype=dtype, param_dtype=param_dtype, name=name)
  if kind is None:
    return lambda x: x
  if kind == "scse":
    return SCSE(**common)
  if kind == "se":
    return SqueezeExcite(max(channels // 16, 1), **common)
  if kind == "cbam":
    return CBAM(**common)
  if kind == "eca":
    return ECA(kernel_size=ECA_KERNEL_SIZE, **common)
  if kind == "coord":
    if train is None:
      raise ValueError(f"decoder_attention 'coord' ({name}) has BatchNorm: its decoder must pass "
                       f"train to attention.decoder_attention()")
    coordinate = CoordAttention(**common)
    return lambda x: coordinate(x, train)
  raise ValueError(f"decoder_attention must be one of {ATTENTIONS}, got {kind!r}")
