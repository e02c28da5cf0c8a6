"""PAN, the Pyramid Attention Network (Li et al. 2018), on any registered CNN encoder, structured
like smp's ``PAN``.

Data flow (smp ``decoders/pan``): the encoder runs at ``output_stride`` 16 (its last stage
dilated; 32 is also allowed). Feature Pyramid Attention (FPA) on the deepest map X (H x W):

* a global branch: global average pooling, 1x1 conv-BN-ReLU, broadcast back to H x W;
* a middle branch: 1x1 conv-BN-ReLU of X;
* a U-shaped one-channel pyramid: three 2x2 max pools (H/2, H/4, H/8), each followed by conv-BN-
  ReLU (7x7 to one channel; 5x5; two 3x3); the H/8 map is upsampled to H/4 and added to a 5x5
  conv-BN-ReLU of the H/4 map, upsampled to H/2 and added to a 7x7 conv-BN-ReLU of the H/2 map,
  and upsampled to H x W;

FPA = pyramid * middle + global. Then Global Attention Upsample (GAU) at strides 16, 8 and 4: the
coarser map Y is upsampled to the finer encoder map's size and added to a 3x3 conv-BN-ReLU of the
encoder map gated by ``sigmoid(BN(1x1 conv(global average of Y)))``. A 3x3 head and bilinear x4
upsampling (``align_corners=True``) to the input size. Every conv here has a bias (also before
BatchNorm, as smp's ``ConvBnRelu``); every resize is bilinear with ``align_corners=True`` (or
nearest, ``interpolation="nearest"``).

Submodule names map smp's module paths with ``.N`` -> ``_N``: ``decoder.fpa.<part>.conv`` /
``.bn`` -> ``decoder_fpa/<part>/conv`` / ``norm/bn`` for the parts ``branch1_1``, ``mid_0``,
``down1_1``, ``down2_1``, ``down3_1``, ``down3_2``, ``conv1``, ``conv2``;
``decoder.gau{k}.conv1.1`` -> ``decoder_gau{k}/conv1_1``, ``decoder.gau{k}.conv2`` ->
``decoder_gau{k}/conv2``; ``segmentation_head.0`` -> ``segmentation_head``,
``classification_head.3`` -> ``classification_head/fc``, ``encoder.*`` -> ``encoder/*``.

Where this differs from smp:

* ``encoder_depth`` is always 5 (smp's default).
* A max pool of a one-pixel axis keeps the pixel (PyTorch's 2x2 pool fails there), so the model
  also runs where the deepest map is 4 x 4 (64 px at output stride 16); from 8 x 8 on, the two
  agree. The deepest map must be at least 4 x 4.
* Dilated ResNet encoders follow torchvision's ``replace_stride_with_dilation`` (the first 3x3
  conv of a dilated stage keeps the previous dilation); smp dilates every conv of the stage.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxderm.models import layers
from flaxderm.models.naming import (SEGMENTATION_HEAD_RULES, SEGMENTATION_HEADS, NameRules,
                                     conv_norm, register_rules)
from flaxderm.models.registry import register_model
from flaxderm.models.segmentation import (DECODER_INIT, TEST_ENCODER, Dtype, SegmentationModel,
                                          hashable_options, upsample_nearest)

OUTPUT_STRIDES = (16, 32)
INTERPOLATIONS = ("bilinear", "nearest")
MIN_DEEPEST_SIZE = 4


def resize(x: jax.Array, height: int, width: int, mode: str) -> jax.Array:
  """smp PAN's ``F.interpolate``: bilinear with aligned corners, or nearest (integer factors)."""
  if mode == "nearest":
    return upsample_nearest(x, height, width)
  return layers.resize_bilinear(x, height, width, align_corners=True)


def max_pool2x2(x: jax.Array) -> jax.Array:
  """2x2 stride-2 max pool (odd sizes floor, as PyTorch's); a one-pixel axis stays one pixel."""
  pad = tuple((0, 1 if n == 1 else 0) for n in x.shape[1:3])
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding=pad)


class FPA(nn.Module):
  """Feature Pyramid Attention (see the module docstring)."""
  features: int
  interpolation: str = "bilinear"
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  def conv(self, x, features: int, k: int, name: str, train: bool):
    return layers.ConvNormAct(features, k, use_bias=True, kernel_init=DECODER_INIT,
                              dtype=self.dtype, param_dtype=self.param_dtype, name=name)(x, train)

  @nn.compact
  def __call__(self, x, train: bool = False):
    h, w = x.shape[1:3]
    pooled = self.conv(jnp.mean(x, axis=(1, 2), keepdims=True), self.features, 1, "branch1_1",
                       train)
    middle = self.conv(x, self.features, 1, "mid_0", train)
    x1 = self.conv(max_pool2x2(x), 1, 7, "down1_1", train)
    x2 = self.conv(max_pool2x2(x1), 1, 5, "down2_1", train)
    x3 = self.conv(self.conv(max_pool2x2(x2), 1, 3, "down3_1", train), 1, 3, "down3_2", train)
    y = resize(x3, h // 4, w // 4, self.interpolation) + self.conv(x2, 1, 5, "conv2", train)
    y = resize(y, h // 2, w // 2, self.interpolation) + self.conv(x1, 1, 7, "conv1", train)
    y = resize(y, h, w, self.interpolation) * middle
    return y + pooled  # the global branch, broadcast


class GAU(nn.Module):
  """Global Attention Upsample: ``up(high) + conv3x3(low) * sigmoid(BN(conv1x1(mean(high))))``."""
  features: int
  interpolation: str = "bilinear"
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, low, high, train: bool = False):
    common = dict(use_bias=True, kernel_init=DECODER_INIT, dtype=self.dtype,
                  param_dtype=self.param_dtype)
    gate = layers.ConvNormAct(self.features, 1, act="sigmoid", name="conv1_1", **common)(
        jnp.mean(high, axis=(1, 2), keepdims=True), train)
    low = layers.ConvNormAct(self.features, 3, name="conv2", **common)(low, train)
    return resize(high, low.shape[1], low.shape[2], self.interpolation) + low * gate


class PAN(SegmentationModel):
  """PAN with an smp-style encoder.

  Attributes (besides ``SegmentationModel``'s; ``encoder_name`` must accept ``output_stride``):
    output_stride: 16 (smp's default) or 32: the stride of the map FPA sees.
    decoder_channels: width of FPA and the GAUs (smp's 32).
    interpolation: "bilinear" (``align_corners=True``, smp's default) or "nearest".
  """
  output_stride: int = 16
  decoder_channels: int = 32
  interpolation: str = "bilinear"

  model_name = "pan"

  def encoder_options(self):
    if self.output_stride not in OUTPUT_STRIDES:
      raise ValueError(f"pan: output_stride must be one of {OUTPUT_STRIDES}, got "
                       f"{self.output_stride!r}")
    return {"output_stride": self.output_stride}

  def input_multiple(self):
    return self.output_stride

  def decode(self, features, train):
    if self.interpolation not in INTERPOLATIONS:
      raise ValueError(f"pan: interpolation must be one of {INTERPOLATIONS}, got "
                       f"{self.interpolation!r}")
    deepest = features[-1]
    if min(deepest.shape[1:3]) < MIN_DEEPEST_SIZE:
      raise ValueError(f"pan: feature pyramid attention needs the deepest encoder map at least "
                       f"{MIN_DEEPEST_SIZE}x{MIN_DEEPEST_SIZE}, got {deepest.shape[1]}x"
                       f"{deepest.shape[2]} (input side >= {MIN_DEEPEST_SIZE * self.output_stride}"
                       f" at output_stride {self.output_stride})")
    common = dict(interpolation=self.interpolation, dtype=self.dtype,
                  param_dtype=self.param_dtype)
    y = FPA(self.decoder_channels, name="decoder_fpa", **common)(deepest, train)
    for k, low in zip((3, 2, 1), features[3:0:-1]):  # strides 16, 8, 4
      y = GAU(self.decoder_channels, name=f"decoder_gau{k}", **common)(low, y, train)
    return y


@register_model(task="segmentation", family="pan", default_input_size=256,
                test_options={**TEST_ENCODER, "decoder_channels": 16})
def pan(*, num_classes: int, **options) -> PAN:
  """PAN (feature pyramid attention + global attention upsampling) on a CNN encoder (resnet34)."""
  return PAN(num_classes=num_classes, **hashable_options(options))


FPA_PARTS = ("branch1.1", "mid.0", "down1.1", "down2.1", "down3.1", "down3.2", "conv1", "conv2")

register_rules("pan", NameRules(rules=(
    *(rule for part in FPA_PARTS
      for rule in conv_norm(f"decoder.fpa.{part}", f"decoder_fpa/{part.replace('.', '_')}",
                            conv="conv", norm="bn")),
    *conv_norm("decoder.gau{k}.conv1.1", "decoder_gau{k}/conv1_1", conv="conv", norm="bn"),
    *conv_norm("decoder.gau{k}.conv2", "decoder_gau{k}/conv2", conv="conv", norm="bn"),
    *SEGMENTATION_HEAD_RULES,
), head=SEGMENTATION_HEADS), segmentation=True)
