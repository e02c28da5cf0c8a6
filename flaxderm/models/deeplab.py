"""DeepLabV3+ (Chen et al. 2018) on any registered CNN encoder, structured like smp's DeepLabV3Plus.

Data flow (smp ``decoders/deeplabv3``): the encoder runs at ``output_stride`` 16 or 8 (its last
stages dilated); ASPP over the deepest map (1x1, three atrous 3x3, image pooling -> 1x1
projection -> dropout), then a separable 3x3 conv-BN-ReLU, bilinear upsampling to the stride-4
map; the stride-4 map reduced by a 1x1 conv-BN-ReLU to 48 channels; concatenation [ASPP,
low-level]; a separable 3x3 conv-BN-ReLU; a 1x1 head; bilinear upsampling to the input size.
Both bilinear resizes use ``align_corners=True`` like smp's ``nn.Upsample``.

Submodule names map smp's module paths mechanically: ``decoder.aspp.0.convs.0`` ->
``aspp/branch_1x1``, ``convs.{1,2,3}`` -> ``aspp/branch_rate{0,1,2}``, ``convs.4`` ->
``aspp/image_pool``, ``aspp.0.project`` -> ``aspp/project``, ``decoder.aspp.{1,2}`` ->
``aspp_conv``, ``decoder.block1`` -> ``block1``, ``decoder.block2`` -> ``block2``,
``segmentation_head.0`` -> ``segmentation_head``, ``classification_head.3`` ->
``classification_head/fc``, ``encoder.*`` -> ``encoder/*``.

Where this differs from smp:

* Atrous rates default to the paper's: (6, 12, 18) at output stride 16 and (12, 24, 36) at 8. smp
  uses (12, 24, 36) at both; pass ``atrous_rates=(12, 24, 36)`` to match it.
* Separable convs are ``layers.SeparableConv``: depthwise conv-BN-ReLU then pointwise conv-BN-ReLU,
  the Xception form of the DeepLabV3+ paper and its TensorFlow code. smp's ``SeparableConv2d`` has
  no norm/activation between the depthwise and pointwise convs, so a parity test needs that variant
  of ``layers.SeparableConv`` (or ``separable=False`` for the ASPP branches, which then match).
* ``norm`` may be "group"/"none" for the layers this model builds; smp always uses BatchNorm.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp

from flaxderm.models import layers
from flaxderm.models.registry import register_model
from flaxderm.models.unet import (HEAD_INIT, ClassificationHead, build_encoder,
                                  check_segmentation_input, hashable_options)

Dtype = Any

DEFAULT_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}


class DeepLabV3Plus(nn.Module):
  """DeepLabV3+ with an smp-style encoder.

  Attributes:
    num_classes: output channels per pixel (1 = binary mask with sigmoid).
    encoder_name: a registered CNN classification model that accepts ``output_stride``.
    encoder_kwargs: further encoder options (``norm``, ``drop_path_rate`` ...).
    output_stride: 16 or 8: the stride of the map ASPP sees (input divisible by it).
    atrous_rates: the three ASPP rates; None = (6, 12, 18) at stride 16, (12, 24, 36) at 8.
    decoder_channels: width of ASPP and of the decoder (smp's 256).
    low_level_channels: the stride-4 features are reduced to this many channels (paper's 48).
    separable: depthwise-separable atrous convs in ASPP (smp's default); the two decoder 3x3 convs
      are separable regardless, as in smp.
    aspp_dropout: dropout after the ASPP projection (rng "dropout").
    norm: "batch", "group" or "none" for the layers this model builds (not the encoder's).
    in_channels: input channels (checked, and passed to the encoder).
    aux_classes / aux_pooling / aux_dropout: smp's auxiliary classification head on the deepest
      encoder features; with ``aux_classes > 0`` the model returns ``(mask_logits, class_logits)``.
    dtype / param_dtype: compute and parameter dtypes.
  """
  num_classes: int
  encoder_name: str = "resnet50"
  encoder_kwargs: Mapping[str, Any] | None = None
  output_stride: int = 16
  atrous_rates: Sequence[int] | None = None
  decoder_channels: int = 256
  low_level_channels: int = 48
  separable: bool = True
  aspp_dropout: float = 0.5
  norm: str = "batch"
  in_channels: int = 3
  aux_classes: int = 0
  aux_pooling: str = "avg"
  aux_dropout: float = 0.2
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  def setup(self):
    if self.output_stride not in DEFAULT_RATES:
      raise ValueError(f"deeplabv3plus: output_stride must be 16 or 8, got {self.output_stride}")
    # Built in setup so that it is named "encoder": pretrained weights go to params["encoder"].
    self.encoder = build_encoder("deeplabv3plus", self.encoder_name, self.encoder_kwargs,
                                 dtype=self.dtype, param_dtype=self.param_dtype,
                                 in_channels=self.in_channels, output_stride=self.output_stride)

  @nn.compact
  def __call__(self, x, train: bool = False):
    check_segmentation_input("deeplabv3plus", x, num_classes=self.num_classes,
                             in_channels=self.in_channels, multiple_of=self.output_stride,
                             what="the output stride")
    rates = tuple(self.atrous_rates or DEFAULT_RATES[self.output_stride])
    if len(rates) != 3:
      raise ValueError(f"deeplabv3plus: atrous_rates needs 3 rates, got {rates}")
    features = self.encoder(x, train, features_only=True)
    low, deep = features[1], features[-1]
    if low.shape[-1] == 0:
      raise ValueError(f"deeplabv3plus: encoder {self.encoder_name} has no stride-4 features")
    common = dict(norm=self.norm, dtype=self.dtype, param_dtype=self.param_dtype)
    y = layers.ASPP(self.decoder_channels, rates, self.separable, dropout=self.aspp_dropout,
                    name="aspp", **common)(deep, train)
    y = layers.SeparableConv(self.decoder_channels, 3, name="aspp_conv", **common)(y, train)
    y = layers.resize_bilinear(y, low.shape[1], low.shape[2], align_corners=True)
    low = layers.ConvNormAct(self.low_level_channels, 1, name="block1", **common)(low, train)
    y = jnp.concatenate([y, low.astype(y.dtype)], axis=-1)
    y = layers.SeparableConv(self.decoder_channels, 3, name="block2", **common)(y, train)
    masks = nn.Conv(self.num_classes, (1, 1), kernel_init=HEAD_INIT, dtype=self.dtype,
                    param_dtype=self.param_dtype, name="segmentation_head")(y)
    masks = layers.resize_bilinear(masks, x.shape[1], x.shape[2], align_corners=True)
    if self.aux_classes <= 0:
      return masks
    labels = ClassificationHead(self.aux_classes, self.aux_pooling, self.aux_dropout,
                                dtype=self.dtype, param_dtype=self.param_dtype,
                                name="classification_head")(deep, train)
    return masks, labels


@register_model(task="segmentation", family="deeplab", default_input_size=256)
def deeplabv3plus(*, num_classes: int, **options) -> DeepLabV3Plus:
  """DeepLabV3+ (ASPP + stride-4 decoder) on a CNN encoder (resnet50) at output stride 16 or 8."""
  return DeepLabV3Plus(num_classes=num_classes, **hashable_options(options))
