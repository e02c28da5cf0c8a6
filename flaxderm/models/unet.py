"""U-Net, in two forms under one name, ``unet``.

* ``encoder_name=None``: the original U-Net (Ronneberger et al. 2015) with "same" padding, so the
  output has the input size: ``depth`` max-pool downsamplings, two 3x3 conv-norm-ReLU per level,
  ``base_width`` channels at the top level doubling per level, learned x2 upsampling, skip
  concatenation, and a 1x1 head.
* ``encoder_name="resnet18"`` (any registered classification model): smp's ``Unet``. The decoder
  follows ``segmentation_models_pytorch.decoders.unet`` layer for layer (nearest x2 upsampling to
  the next skip's size -> concat skip -> [attention1] -> conv3x3-BN-ReLU x2 -> [attention2], no
  centre block, a 3x3 segmentation head without activation), and the submodule names are smp's
  module paths with dots turned into underscores, so torch weights map mechanically:
  ``decoder.blocks.0.conv1.{0,1}`` -> ``decoder_blocks_0/conv1/{conv,norm/bn}``,
  ``decoder.blocks.0.attention1.attention.cSE.1`` -> ``decoder_blocks_0/attention1/cse_reduce``,
  ``segmentation_head.0`` -> ``segmentation_head``, ``classification_head.3`` ->
  ``classification_head/fc``, ``encoder.*`` -> ``encoder/*`` (the encoder family's own mapping).

Shared by the segmentation models (deeplab.py and codec.py import them): ``build_encoder``,
``ClassificationHead`` (smp's ``aux_params`` head), ``check_segmentation_input``,
``hashable_options``, and the init constants.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxderm.models import layers
from flaxderm.models.registry import create_model, register_model

Dtype = Any

ATTENTIONS = (None, "scse", "se", "cbam", "eca")
UPSAMPLINGS = ("transpose", "bilinear")
# smp's initialize_decoder: Kaiming-uniform (fan in, ReLU gain) for decoder convs, Xavier-uniform
# for heads. Same variance as Ronneberger's Gaussian sqrt(2 / fan_in): one init serves both forms.
DECODER_INIT = nn.initializers.kaiming_uniform()
HEAD_INIT = nn.initializers.xavier_uniform()


# ------------------------------------------------------------------------------------------------
# Pieces shared with the other segmentation models.
# ------------------------------------------------------------------------------------------------
def hashable_options(options: dict[str, Any]) -> dict[str, Any]:
  """Lists -> tuples and dicts -> FrozenDicts, recursively, so a module built from user options
  stays hashable (flax compares and hashes module fields)."""
  def freeze(v):
    if isinstance(v, tuple) and hasattr(v, "_fields"):  # a NamedTuple keeps its type
      return type(v)(*(freeze(i) for i in v))
    if isinstance(v, (list, tuple)):
      return tuple(freeze(i) for i in v)
    if isinstance(v, Mapping):
      return flax.core.FrozenDict({k: freeze(i) for k, i in v.items()})
    return v
  return {k: freeze(v) for k, v in options.items()}


def check_segmentation_input(model: str, x: jax.Array, *, num_classes: int, in_channels: int,
                             multiple_of: int, what: str):
  if num_classes < 1:
    raise ValueError(f"{model}: num_classes must be >= 1 (1 = binary mask with sigmoid), got "
                     f"{num_classes}")
  layers.check_input(model, x, in_channels=in_channels, multiple_of=multiple_of, what=what)


def build_encoder(model: str, encoder_name: str, encoder_kwargs: Mapping[str, Any] | None, *,
                  dtype: Dtype | None, param_dtype: Dtype, **fixed: Any) -> nn.Module:
  """``create_model(encoder_name, num_classes=0, ...)``. ``fixed`` are options the segmentation
  model owns (e.g. DeepLab's ``output_stride``), which ``encoder_kwargs`` may not override."""
  kwargs = dict(encoder_kwargs or {})
  owned = {"dtype", "param_dtype", "num_classes", *fixed} & set(kwargs)
  if owned:
    raise ValueError(f"{model}: set {', '.join(sorted(owned))} on the model itself, not in "
                     f"encoder_kwargs")
  try:
    return create_model(encoder_name, num_classes=0, dtype=dtype, param_dtype=param_dtype, **fixed,
                        **kwargs)
  except ValueError as e:
    raise ValueError(f"{model}: cannot build encoder {encoder_name!r}: {e}") from e


class ClassificationHead(nn.Module):
  """smp's ``aux_params`` head on the deepest features: global pool -> dropout -> linear."""
  num_classes: int
  pooling: str = "avg"
  dropout: float = 0.2
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.pooling not in ("avg", "max"):
      raise ValueError(f"aux_pooling must be 'avg' or 'max', got {self.pooling!r}")
    x = jnp.mean(x, axis=(1, 2)) if self.pooling == "avg" else jnp.max(x, axis=(1, 2))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, kernel_init=HEAD_INIT, dtype=self.dtype,
                    param_dtype=self.param_dtype, name="fc")(x)


# ------------------------------------------------------------------------------------------------
# U-Net blocks.
# ------------------------------------------------------------------------------------------------
class SCSE(nn.Module):
  """Concurrent spatial and channel squeeze-excitation (Roy et al. 2018), smp's ``scse``:
  ``x * cSE(x) + x * sSE(x)``. The channel branch keeps at least one hidden unit where smp's
  ``c // 16`` is 0 (c < 16), which leaves smp's gate a constant; from 16 channels up they match."""
  reduction: int = 16
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = lambda f, name: nn.Conv(f, (1, 1), kernel_init=DECODER_INIT, dtype=self.dtype,
                                   param_dtype=self.param_dtype, name=name)
    c = x.shape[-1]
    s = nn.relu(conv(max(c // self.reduction, 1), "cse_reduce")(jnp.mean(x, (1, 2), keepdims=True)))
    channel = nn.sigmoid(conv(c, "cse_expand")(s))
    spatial = nn.sigmoid(conv(1, "sse")(x))
    return x * channel + x * spatial


def attention(kind: str | None, channels: int, name: str, dtype: Dtype | None, param_dtype: Dtype):
  """The attention module applied to a ``channels``-channel map (identity for None)."""
  common = dict(dtype=dtype, param_dtype=param_dtype, name=name)
  if kind is None:
    return lambda x: x
  if kind == "scse":
    return SCSE(**common)
  if kind == "se":
    return layers.SqueezeExcite(max(channels // 16, 1), **common)
  if kind == "cbam":
    return layers.CBAM(**common)
  if kind == "eca":
    return layers.ECA(**common)
  raise ValueError(f"decoder_attention must be one of {ATTENTIONS}, got {kind!r}")


class UNetBlock(nn.Module):
  """Two 3x3 conv-norm-ReLU. Given a skip, concatenates it first and applies ``attention1`` to the
  concatenation; ``attention2`` follows the second conv (smp's UnetDecoderBlock order)."""
  features: int
  norm: str = "batch"
  attention: str | None = None
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, skip: jax.Array | None = None, train: bool = False):
    common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if skip is not None:
      x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
      x = attention(self.attention, x.shape[-1], "attention1", **common)(x)
    for name in ("conv1", "conv2"):
      x = layers.ConvNormAct(self.features, 3, norm=self.norm, kernel_init=DECODER_INIT,
                             name=name, **common)(x, train)
    return attention(self.attention, self.features, "attention2", **common)(x)


def depth_to_space2x(y: jax.Array, features: int) -> jax.Array:
  """(N, H, W, 4F) -> (N, 2H, 2W, F); channel ``(2a + b) * F + o`` lands at pixel offset (a, b)."""
  n, h, w, _ = y.shape
  y = y.reshape(n, h, w, 2, 2, features).transpose(0, 1, 3, 2, 4, 5)
  return y.reshape(n, 2 * h, 2 * w, features)


class Upsample2x(nn.Module):
  """Learned x2 upsampling to ``features`` channels.

  ``"transpose"`` is ``ConvTranspose(features, (2, 2), strides=(2, 2))`` written as a bias-free 1x1
  conv to ``4 * features`` channels, depth-to-space, then one bias per output channel: on XLA:CPU
  the transposed conv cost ~40% of a U-Net step and this form ~none (DESIGN.md). Each output pixel
  sees exactly one input pixel through one kernel tap, so the two are the same map. Weight
  mapping, with ``W = params["proj"]["kernel"]`` of shape (1, 1, Cin, 4 * F):

  * flax ``nn.ConvTranspose`` kernel ``K`` (2, 2, Cin, F), ``transpose_kernel=False``:
    ``W[0, 0, c, (2a + b) * F + o] = K[1 - a, 1 - b, c, o]`` (lax.conv_transpose applies the kernel
    unflipped to the dilated input, so output offset ``a`` meets tap ``1 - a``);
  * PyTorch ``nn.ConvTranspose2d`` weight ``Wt`` (Cin, F, 2, 2):
    ``W[0, 0, c, (2a + b) * F + o] = Wt[c, o, a, b]``; the bias maps one to one.

  ``"bilinear"`` is bilinear x2 (half-pixel centres, PyTorch ``align_corners=False``) and a 1x1
  conv; the conv runs first, at low resolution: a 1x1 conv commutes with bilinear interpolation
  (whose weights sum to 1, so the bias commutes too), and this way it costs a quarter.
  """
  features: int
  mode: str = "transpose"
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.mode == "transpose":
      y = nn.Conv(4 * self.features, (1, 1), use_bias=False, dtype=self.dtype,
                  param_dtype=self.param_dtype, name="proj")(x)
      bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
      y = depth_to_space2x(y, self.features)
      return y + bias.astype(y.dtype)
    if self.mode == "bilinear":
      y = nn.Conv(self.features, (1, 1), dtype=self.dtype, param_dtype=self.param_dtype,
                  name="proj")(x)
      return layers.resize_bilinear(y, 2 * x.shape[1], 2 * x.shape[2])
    raise ValueError(f"upsampling must be one of {UPSAMPLINGS}, got {self.mode!r}")


def upsample_nearest(x: jax.Array, height: int, width: int) -> jax.Array:
  """Nearest upsampling by the integer factors that reach (height, width) (PyTorch's
  ``F.interpolate(mode="nearest")`` for integer factors; a factor of 1 is a no-op)."""
  return jnp.repeat(jnp.repeat(x, height // x.shape[1], axis=1), width // x.shape[2], axis=2)


# ------------------------------------------------------------------------------------------------
# The model.
# ------------------------------------------------------------------------------------------------
class UNet(nn.Module):
  """U-Net; the original one when ``encoder_name`` is None, smp's ``Unet`` otherwise.

  Attributes:
    num_classes: output channels per pixel (1 = binary mask with sigmoid).
    encoder_name: a registered classification model used as encoder (``features_only=True``,
      submodule "encoder"), or None for the original U-Net.
    encoder_kwargs: options for the encoder (``output_stride``, ``norm``, ``drop_path_rate`` ...).
    decoder_channels: with an encoder, the five decoder blocks' widths (strides 16, 8, 4, 2, 1).
    depth: original U-Net only: number of max-pool downsamplings (input divisible by 2**depth).
    base_width: original U-Net only: channels at full resolution, doubled per level.
    upsampling: original U-Net only: "transpose" (2x2 stride-2 transposed conv, see Upsample2x) or
      "bilinear" (bilinear x2 + 1x1 conv). With an encoder, smp's nearest x2 is used.
    norm: normalisation of every conv this model builds (the whole original U-Net; the decoder when
      there is an encoder, smp's ``decoder_use_norm``): "batch", "group" or "none". The encoder's
      own norm goes in ``encoder_kwargs``.
    decoder_attention: None, "scse" (smp's), "se", "cbam" or "eca", after each skip concatenation
      and each decoder block.
    in_channels: input channels (checked, and passed to the encoder).
    aux_classes: > 0 adds smp's auxiliary classification head on the deepest features; the model
      then returns ``(mask_logits, class_logits)``.
    aux_pooling / aux_dropout: that head's global pooling ("avg"/"max") and dropout.
    dtype / param_dtype: compute and parameter dtypes.
  """
  num_classes: int
  encoder_name: str | None = None
  encoder_kwargs: Mapping[str, Any] | None = None
  decoder_channels: Sequence[int] = (256, 128, 64, 32, 16)
  depth: int = 4
  base_width: int = 64
  upsampling: str = "transpose"
  norm: str = "batch"
  decoder_attention: str | None = None
  in_channels: int = 3
  aux_classes: int = 0
  aux_pooling: str = "avg"
  aux_dropout: float = 0.2
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  def setup(self):
    # Built in setup so that it is named "encoder": pretrained weights go to params["encoder"].
    if self.encoder_name is not None:
      self.encoder = build_encoder("unet", self.encoder_name, self.encoder_kwargs,
                                   dtype=self.dtype, param_dtype=self.param_dtype,
                                   in_channels=self.in_channels)

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.encoder_name is None:
      check_segmentation_input("unet", x, num_classes=self.num_classes,
                               in_channels=self.in_channels, multiple_of=2 ** self.depth,
                               what="the total stride 2**depth =")
      deepest, y = self._original(x, train)
    else:
      check_segmentation_input("unet", x, num_classes=self.num_classes,
                               in_channels=self.in_channels, multiple_of=32,
                               what=f"the {self.encoder_name} encoder stride")
      deepest, y = self._smp(x, train)
    k = 1 if self.encoder_name is None else 3  # Ronneberger's 1x1 head; smp's is 3x3
    masks = nn.Conv(self.num_classes, (k, k), padding=layers.conv_padding(k),
                    kernel_init=HEAD_INIT, dtype=self.dtype, param_dtype=self.param_dtype,
                    name="segmentation_head")(y)
    if self.aux_classes <= 0:
      return masks
    labels = ClassificationHead(self.aux_classes, self.aux_pooling, self.aux_dropout,
                                dtype=self.dtype, param_dtype=self.param_dtype,
                                name="classification_head")(deepest, train)
    return masks, labels

  def _block(self, features: int, name: str, attention_kind: str | None = None):
    return UNetBlock(features, self.norm, attention_kind, dtype=self.dtype,
                     param_dtype=self.param_dtype, name=name)

  def _original(self, x, train):
    """Returns (bottleneck features, last decoder features)."""
    skips = []
    for level in range(self.depth + 1):
      if level:
        skips.append(x)
        x = layers.max_pool(x, 2, strides=2)
      x = self._block(self.base_width * 2 ** level, f"encoder_blocks_{level}")(x, train=train)
    deepest = x
    for i, skip in enumerate(reversed(skips)):
      features = self.base_width * 2 ** (self.depth - 1 - i)
      x = Upsample2x(features, self.upsampling, dtype=self.dtype, param_dtype=self.param_dtype,
                     name=f"upsample_{i}")(x)
      x = self._block(features, f"decoder_blocks_{i}", self.decoder_attention)(x, skip, train)
    return deepest, x

  def _smp(self, x, train):
    """Returns (deepest encoder features, last decoder features)."""
    if len(self.decoder_channels) != 5:
      raise ValueError(f"unet: decoder_channels needs 5 widths (strides 16, 8, 4, 2, 1), got "
                       f"{tuple(self.decoder_channels)}")
    features = self.encoder(x, train, features_only=True)
    # Each block upsamples to the next finer map's size (x2, or x1 where an encoder trades stride
    # for dilation), the last one to the input size; the stride-2 map is the last skip.
    skips = features[-2::-1]
    sizes = [f.shape[1:3] for f in skips] + [x.shape[1:3]]
    y = features[-1]
    for i, (width, size) in enumerate(zip(self.decoder_channels, sizes)):
      y = upsample_nearest(y, *size)
      y = self._block(width, f"decoder_blocks_{i}", self.decoder_attention)(
          y, skips[i] if i < len(skips) else None, train)
    return features[-1], y


_ORIGINAL_ONLY = ("depth", "base_width", "upsampling")
_ENCODER_ONLY = ("encoder_kwargs", "decoder_channels")


@register_model(task="segmentation", family="unet", default_input_size=256)
def unet(*, num_classes: int, encoder_name: str | None = None, **options) -> UNet:
  """U-Net: the original (encoder_name=None, base width 64, depth 4) or smp's Unet on an encoder."""
  wrong = _ENCODER_ONLY if encoder_name is None else _ORIGINAL_ONLY
  given = sorted(set(wrong) & set(options))
  if given:
    which = "need encoder_name" if encoder_name is None else "apply only to encoder_name=None"
    raise ValueError(f"unet: option(s) {', '.join(given)} {which}")
  return UNet(num_classes=num_classes, encoder_name=encoder_name, **hashable_options(options))
