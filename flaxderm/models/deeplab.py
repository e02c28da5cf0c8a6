"""DeepLabV3 (Chen et al. 2017) and DeepLabV3+ (Chen et al. 2018) on any registered CNN encoder,
structured like smp's ``DeepLabV3`` and ``DeepLabV3Plus`` (``decoders/deeplabv3``).

Both run the encoder at ``output_stride`` 16 or 8 (its last stages dilated) and apply ASPP to the
deepest map: a 1x1 branch, three atrous 3x3 branches and image pooling, concatenated, a 1x1
projection and dropout (``layers.ASPP``; its image-pooling branch is a broadcast, which is what
smp's bilinear resize of a 1x1 map gives).

* DeepLabV3: ASPP (plain atrous convs by default, smp's ``decoder_aspp_separable=False``), a 3x3
  conv-BN-ReLU, a 1x1 head, bilinear upsampling by ``output_stride`` to the input size.
* DeepLabV3+: ASPP, a separable 3x3 conv-BN-ReLU, bilinear upsampling to the stride-4 map; the
  stride-4 map reduced by a 1x1 conv-BN-ReLU to 48 channels; concatenation [ASPP, low-level]; a
  separable 3x3 conv-BN-ReLU; a 1x1 head; bilinear upsampling to the input size.

Every bilinear resize uses ``align_corners=True`` like smp's ``nn.Upsample``.

Submodule names map smp's module paths (``encoder.*`` -> ``encoder/*``, the encoder family's
mapping; ``segmentation_head.0`` -> ``segmentation_head``, ``classification_head.3`` ->
``classification_head/fc``). In the ASPP, ``convs.0`` -> ``branch_1x1``, ``convs.{1,2,3}`` ->
``branch_rate{0,1,2}``, ``convs.4`` -> ``image_pool``, ``project`` -> ``project``; the ASPP is
``decoder.aspp.0`` -> ``aspp`` in DeepLabV3+ and ``decoder.aspp`` -> ``decoder_aspp`` in
DeepLabV3 (both models are family "deeplab" and share one table, so their flax names differ).
DeepLabV3+: ``decoder.aspp.{1,2}`` -> ``aspp_conv``, ``decoder.block1`` -> ``block1``,
``decoder.block2`` -> ``block2``. DeepLabV3: ``decoder.conv`` + ``decoder.bn`` -> ``decoder_conv``.

Where this differs from smp:

* Atrous rates default to the papers': (6, 12, 18) at output stride 16 and (12, 24, 36) at 8. smp
  uses (12, 24, 36) at both; at stride 16 pass ``atrous_rates=(12, 24, 36)`` to match it.
* Separable convs are ``layers.SeparableConv``: depthwise conv-BN-ReLU then pointwise conv-BN-ReLU,
  the Xception form of the DeepLabV3+ paper and its TensorFlow code. smp's ``SeparableConv2d`` has
  no norm/activation between the depthwise and pointwise convs; flaxderm's extra BN converts as
  ``<separable>.depthwise_bn``.
* Dilated ResNet encoders follow torchvision's ``replace_stride_with_dilation`` (the first 3x3 conv
  of a dilated stage keeps the previous dilation); smp dilates every conv of the stage.
* ``norm`` may be "group"/"none" for the layers this model builds; smp always uses BatchNorm.
* The default DeepLabV3+ encoder is resnet50 (smp: resnet34); DeepLabV3's is smp's resnet34.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from flaxderm.models import layers
from flaxderm.models.naming import (SEGMENTATION_HEAD_RULES, SEGMENTATION_HEADS, NameRules,
                                     conv_norm, register_rules, separable)
from flaxderm.models.registry import register_model
from flaxderm.models.segmentation import TEST_ENCODER, SegmentationModel, hashable_options

DEFAULT_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}


class DeepLab(SegmentationModel):
  """What DeepLabV3 and DeepLabV3+ share: the dilated encoder and ASPP on its deepest map.

  Attributes (besides ``SegmentationModel``'s; ``encoder_name`` must accept ``output_stride``):
    output_stride: 16 or 8: the stride of the map ASPP sees (input divisible by it).
    atrous_rates: the three ASPP rates; None = (6, 12, 18) at stride 16, (12, 24, 36) at 8.
    decoder_channels: width of ASPP and of the decoder (smp's 256).
    separable: depthwise-separable atrous convs in ASPP.
    aspp_dropout: dropout after the ASPP projection (rng "dropout").
    norm: "batch", "group" or "none" for the layers this model builds (not the encoder's).
  """
  output_stride: int = 16
  atrous_rates: Sequence[int] | None = None
  decoder_channels: int = 256
  separable: bool = False
  aspp_dropout: float = 0.5
  norm: str = "batch"

  head_kernel_size = 1

  def encoder_options(self):
    if self.output_stride not in DEFAULT_RATES:
      raise ValueError(f"{self.model_name}: output_stride must be 16 or 8, got "
                       f"{self.output_stride}")
    return {"output_stride": self.output_stride}

  def input_multiple(self):
    return self.output_stride

  def layer_options(self) -> dict:
    return dict(norm=self.norm, dtype=self.dtype, param_dtype=self.param_dtype)

  def aspp(self, deep: jax.Array, train: bool, name: str) -> jax.Array:
    rates = tuple(self.atrous_rates or DEFAULT_RATES[self.output_stride])
    if len(rates) != 3:
      raise ValueError(f"{self.model_name}: atrous_rates needs 3 rates, got {rates}")
    return layers.ASPP(self.decoder_channels, rates, self.separable, dropout=self.aspp_dropout,
                       name=name, **self.layer_options())(deep, train)


class DeepLabV3(DeepLab):
  """DeepLabV3 with an smp-style encoder: ASPP and a 3x3 conv-norm-ReLU at ``output_stride``
  (default 8, as smp), then the 1x1 head upsampled to the input size. Attributes: ``DeepLab``'s."""
  output_stride: int = 8

  model_name = "deeplabv3"

  def decode(self, features, train):
    y = self.aspp(features[-1], train, "decoder_aspp")
    return layers.ConvNormAct(self.decoder_channels, 3, name="decoder_conv",
                              **self.layer_options())(y, train)


class DeepLabV3Plus(DeepLab):
  """DeepLabV3+ with an smp-style encoder.

  Attributes (besides ``DeepLab``'s):
    low_level_channels: the stride-4 features are reduced to this many channels (paper's 48).
    separable: here True by default (smp's too); the two decoder 3x3 convs are separable
      regardless, as in smp.
  """
  encoder_name: str = "resnet50"
  low_level_channels: int = 48
  separable: bool = True

  model_name = "deeplabv3plus"

  def decode(self, features, train):
    low, deep = features[1], features[-1]
    if low.shape[-1] == 0:
      raise ValueError(f"{self.model_name}: encoder {self.encoder_name} has no stride-4 features")
    common = self.layer_options()
    y = self.aspp(deep, train, "aspp")
    y = layers.SeparableConv(self.decoder_channels, 3, name="aspp_conv", **common)(y, train)
    y = layers.resize_bilinear(y, low.shape[1], low.shape[2], align_corners=True)
    low = layers.ConvNormAct(self.low_level_channels, 1, name="block1", **common)(low, train)
    y = jnp.concatenate([y, low.astype(y.dtype)], axis=-1)
    return layers.SeparableConv(self.decoder_channels, 3, name="block2", **common)(y, train)


@register_model(task="segmentation", family="deeplab", default_input_size=256)
def deeplabv3(*, num_classes: int, **options) -> DeepLabV3:
  """DeepLabV3 (ASPP, no decoder) on a CNN encoder (resnet34) at output stride 8 or 16."""
  return DeepLabV3(num_classes=num_classes, **hashable_options(options))


@register_model(task="segmentation", family="deeplab", default_input_size=256,
                test_options=TEST_ENCODER)
def deeplabv3plus(*, num_classes: int, **options) -> DeepLabV3Plus:
  """DeepLabV3+ (ASPP + stride-4 decoder) on a CNN encoder (resnet50) at output stride 16 or 8."""
  return DeepLabV3Plus(num_classes=num_classes, **hashable_options(options))


def aspp_rules(torch_aspp: str, flax_aspp: str):
  """smp's ``ASPP`` at ``torch_aspp`` <-> ``layers.ASPP`` at ``flax_aspp`` (plain or separable)."""
  return (*conv_norm(f"{torch_aspp}.convs.0", f"{flax_aspp}/branch_1x1"),
          *conv_norm(f"{torch_aspp}.convs.{{k+1}}", f"{flax_aspp}/branch_rate{{k}}"),
          *separable(f"{torch_aspp}.convs.{{k+1}}.0", f"{flax_aspp}/branch_rate{{k}}",
                     norm=f"{torch_aspp}.convs.{{k+1}}.1"),
          *conv_norm(f"{torch_aspp}.convs.4", f"{flax_aspp}/image_pool", conv="1", norm="2"),
          *conv_norm(f"{torch_aspp}.project", f"{flax_aspp}/project"))


register_rules("deeplab", NameRules(rules=(
    *aspp_rules("decoder.aspp.0", "aspp"),  # DeepLabV3+
    *separable("decoder.aspp.1", "aspp_conv", norm="decoder.aspp.2"),
    *conv_norm("decoder.block1", "block1"),
    *separable("decoder.block2.0", "block2", norm="decoder.block2.1"),
    *aspp_rules("decoder.aspp", "decoder_aspp"),  # DeepLabV3
    *conv_norm("decoder", "decoder_conv", conv="conv", norm="bn"),
    *SEGMENTATION_HEAD_RULES,
), head=SEGMENTATION_HEADS), segmentation=True)
