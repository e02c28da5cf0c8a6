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

The encoder, heads and init constants come from ``segmentation.py``, the decoder attention from
``attention.py``.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from flaxderm.models import layers
from flaxderm.models.attention import decoder_attention
from flaxderm.models.naming import (SEGMENTATION_HEAD_RULES, SEGMENTATION_HEADS, NameRules,
                                     conv_norm, register_rules)
from flaxderm.models.registry import register_model
from flaxderm.models.segmentation import (DECODER_INIT, Dtype, SegmentationModel, hashable_options,
                                          upsample_nearest)

UPSAMPLINGS = ("transpose", "bilinear")


# ------------------------------------------------------------------------------------------------
# U-Net blocks.
# ------------------------------------------------------------------------------------------------
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
      x = decoder_attention(self.attention, x.shape[-1], "attention1", train=train, **common)(x)
    for name in ("conv1", "conv2"):
      x = layers.ConvNormAct(self.features, 3, norm=self.norm, kernel_init=DECODER_INIT,
                             name=name, **common)(x, train)
    return decoder_attention(self.attention, self.features, "attention2", train=train, **common)(x)


def depth_to_space2x(y: jax.Array, features: int) -> jax.Array:
  """(N, H, W, 4F) -> (N, 2H, 2W, F); channel ``(2a + b) * F + o`` lands at pixel offset (a, b)."""
  n, h, w, _ = y.shape
  y = y.reshape(n, h, w, 2, 2, features).transpose(0, 1, 3, 2, 4, 5)
  return y.reshape(n, 2 * h, 2 * w, features)


class Upsample2x(nn.Module):
  """Learned x2 upsampling to ``features`` channels.

  ``"transpose"`` is ``ConvTranspose(features, (2, 2), strides=(2, 2))`` written as a bias-free 1x1
  conv to ``4 * features`` channels, depth-to-space, then one bias per output channel: on XLA:CPU
  the transposed conv cost ~40% of a U-Net step and this form ~none (1.65 s -> 1.0 s per step at
  base width 32, 128 px, batch 8; benchmarks/NOTES.md). Each output pixel sees exactly one input
  pixel through one kernel tap, so the two are the same map. Weight mapping, with
  ``W = params["proj"]["kernel"]`` of shape (1, 1, Cin, 4 * F):

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


# ------------------------------------------------------------------------------------------------
# The model.
# ------------------------------------------------------------------------------------------------
class UNet(SegmentationModel):
  """U-Net; the original one when ``encoder_name`` is None, smp's ``Unet`` otherwise.

  Attributes (besides ``SegmentationModel``'s; ``encoder_name`` None = the original U-Net):
    decoder_channels: with an encoder, the five decoder blocks' widths (strides 16, 8, 4, 2, 1).
    depth: original U-Net only: number of max-pool downsamplings (input divisible by 2**depth).
    base_width: original U-Net only: channels at full resolution, doubled per level.
    upsampling: original U-Net only: "transpose" (2x2 stride-2 transposed conv, see Upsample2x) or
      "bilinear" (bilinear x2 + 1x1 conv). With an encoder, smp's nearest x2 is used.
    norm: normalisation of every conv this model builds (the whole original U-Net; the decoder when
      there is an encoder, smp's ``decoder_use_norm``): "batch", "group" or "none". The encoder's
      own norm goes in ``encoder_kwargs``.
    decoder_attention: one of ``attention.ATTENTIONS`` (smp's "scse", ...), after each skip
      concatenation and each decoder block.
  """
  encoder_name: str | None = None
  decoder_channels: Sequence[int] = (256, 128, 64, 32, 16)
  depth: int = 4
  base_width: int = 64
  upsampling: str = "transpose"
  norm: str = "batch"
  decoder_attention: str | None = None

  model_name = "unet"

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.encoder_name is not None:
      return super().__call__(x, train)
    self.check_input(x, 2 ** self.depth, "the total stride 2**depth =")
    deepest, y = self._original(x, train)
    return self.heads(y, deepest, x, train, kernel_size=1)  # Ronneberger's 1x1 head

  def _block(self, features: int, name: str, attention_kind: str | None = None):
    return UNetBlock(features, self.norm, attention_kind, dtype=self.dtype,
                     param_dtype=self.param_dtype, name=name)

  def gate_skip(self, index: int, skip: jax.Array, gating: jax.Array, train: bool) -> jax.Array:
    """The skip connection decoder block ``index`` fuses, given ``gating``, the coarser decoder
    features before upsampling. U-Net passes it unchanged; Attention U-Net gates it."""
    del index, gating, train
    return skip

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
      skip = self.gate_skip(i, skip, x, train)
      x = Upsample2x(features, self.upsampling, dtype=self.dtype, param_dtype=self.param_dtype,
                     name=f"upsample_{i}")(x)
      x = self._block(features, f"decoder_blocks_{i}", self.decoder_attention)(x, skip, train)
    return deepest, x

  def decode(self, features, train):
    if len(self.decoder_channels) != 5:
      raise ValueError(f"unet: decoder_channels needs 5 widths (strides 16, 8, 4, 2, 1), got "
                       f"{tuple(self.decoder_channels)}")
    # Each block upsamples to the next finer map's size (x2, or x1 where an encoder trades stride
    # for dilation), the last one to the input size (twice the stride-2 map, the last skip).
    skips = features[-2::-1]
    sizes = [f.shape[1:3] for f in skips] + [(2 * skips[-1].shape[1], 2 * skips[-1].shape[2])]
    y = features[-1]
    for i, (width, size) in enumerate(zip(self.decoder_channels, sizes)):
      skip = self.gate_skip(i, skips[i], y, train) if i < len(skips) else None
      y = upsample_nearest(y, *size)
      y = self._block(width, f"decoder_blocks_{i}", self.decoder_attention)(y, skip, train)
    return y


_ORIGINAL_ONLY = ("depth", "base_width", "upsampling")
_ENCODER_ONLY = ("encoder_kwargs", "decoder_channels")


def check_unet_options(model: str, encoder_name: str | None, options: dict):
  """ValueError for options of the other form (original U-Net vs encoder-based)."""
  wrong = _ENCODER_ONLY if encoder_name is None else _ORIGINAL_ONLY
  given = sorted(set(wrong) & set(options))
  if given:
    which = "need encoder_name" if encoder_name is None else "apply only to encoder_name=None"
    raise ValueError(f"{model}: option(s) {', '.join(given)} {which}")


@register_model(task="segmentation", family="unet", default_input_size=256,
                test_options={"base_width": 16})
def unet(*, num_classes: int, encoder_name: str | None = None, **options) -> UNet:
  """U-Net: the original (encoder_name=None, base width 64, depth 4) or smp's Unet on an encoder."""
  check_unet_options("unet", encoder_name, options)
  return UNet(num_classes=num_classes, encoder_name=encoder_name, **hashable_options(options))


def unet_block_rules(torch_block: str, flax_block: str) -> tuple[tuple[str, str], ...]:
  """Name rules of a ``UNetBlock`` (smp's ``DecoderBlock``, its convs and scSE attention) at the
  templates ``torch_block`` <-> ``flax_block``; also used by U-Net++, whose nodes are such blocks."""
  return (
      *conv_norm(f"{torch_block}.conv{{n}}", f"{flax_block}/conv{{n}}"),
      *((f"{torch_block}.attention{{n}}.attention.{torch_name}",
         f"{flax_block}/attention{{n}}/{flax_name}")
        for torch_name, flax_name in (("cSE.1", "cse_reduce"), ("cSE.3", "cse_expand"),
                                      ("sSE.0", "sse"))))


UNET_RULES = register_rules("unet", NameRules(rules=(
    *unet_block_rules("decoder.blocks.{i}", "decoder_blocks_{i}"),
    *SEGMENTATION_HEAD_RULES,
), head=SEGMENTATION_HEADS, unused=("decoder.blocks.4.attention1",)), segmentation=True)
