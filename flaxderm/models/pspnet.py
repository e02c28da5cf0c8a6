"""PSPNet (Zhao et al. 2017) on any registered encoder, structured like smp's ``PSPNet``.

Data flow (smp ``decoders/pspnet``): the encoder map at stride ``2 ** encoder_depth`` (stride 8 by
default, smp's ``encoder_depth=3``) goes through the pyramid pooling module: for each bin size 1,
2, 3, 6, PyTorch's adaptive average pooling (``layers.adaptive_avg_pool``), a 1x1 conv-BN-ReLU to
a quarter of the channels (no norm and a bias at bin size 1, where smp skips BatchNorm) and
bilinear upsampling back (``align_corners=True``); the four maps and the input are concatenated
[bins 1, 2, 3, 6, input], then a 1x1 conv-BN-ReLU to ``psp_out_channels``, spatial dropout (whole
channels, smp's ``Dropout2d``), a 3x3 head and bilinear upsampling (``align_corners=True``; smp's
x8) to the input size. The auxiliary classification head, if any, sees that same encoder map.

Submodule names map smp's module paths: ``decoder.psp.blocks.{i}.pool.1.{0,1}`` ->
``decoder_psp_blocks_{i}/{conv,norm/bn}``, ``decoder.conv.{0,1}`` -> ``decoder_conv/{conv,
norm/bn}``, ``segmentation_head.0`` -> ``segmentation_head``, ``classification_head.3`` ->
``classification_head/fc``, ``encoder.*`` -> ``encoder/*``.

With ``encoder_depth`` < 5 the encoder's deeper stages keep their parameters but do not affect
the output, as in smp (whose state dicts hold them too); under ``jax.jit`` their computation is
pruned and their gradients are zero.

Where this differs from smp: the head is always resized to the input size (smp's fixed x8
``upsampling`` reaches it only at ``encoder_depth=3``), and the input must be divisible by 32 (the
whole encoder's stride, which flaxderm's encoders check), where smp's depth-3 PSPNet accepts
multiples of 8.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from flaxderm.models import layers
from flaxderm.models.naming import (SEGMENTATION_HEAD_RULES, SEGMENTATION_HEADS, NameRules,
                                     conv_norm, register_rules)
from flaxderm.models.registry import register_model
from flaxderm.models.segmentation import (DECODER_INIT, TEST_ENCODER, SegmentationModel,
                                          hashable_options)

BIN_SIZES = (1, 2, 3, 6)
ENCODER_DEPTHS = (3, 4, 5)


class PSPNet(SegmentationModel):
  """PSPNet with an smp-style encoder.

  Attributes (besides ``SegmentationModel``'s):
    encoder_depth: 3, 4 or 5: the pyramid pools the encoder map at stride 2 ** encoder_depth.
    psp_out_channels: width after the pyramid (smp's 512).
    psp_dropout: spatial (channel) dropout before the head (rng "dropout").
    norm: "batch" (smp's ``decoder_use_norm``), "group" or "none" for the 1x1 convs built here.
  """
  encoder_depth: int = 3
  psp_out_channels: int = 512
  psp_dropout: float = 0.2
  norm: str = "batch"

  model_name = "pspnet"

  def encode(self, x, train):
    if self.encoder_depth not in ENCODER_DEPTHS:
      raise ValueError(f"pspnet: encoder_depth must be one of {ENCODER_DEPTHS}, got "
                       f"{self.encoder_depth!r}")
    return super().encode(x, train)[:self.encoder_depth]

  def decode(self, features, train):
    x = features[-1]
    common = dict(kernel_init=DECODER_INIT, dtype=self.dtype, param_dtype=self.param_dtype)
    h, w, c = x.shape[1:]
    pyramid = []
    for i, size in enumerate(BIN_SIZES):
      y = layers.adaptive_avg_pool(x, size)
      y = layers.ConvNormAct(c // len(BIN_SIZES), 1, norm="none" if size == 1 else self.norm,
                             name=f"decoder_psp_blocks_{i}", **common)(y, train)
      pyramid.append(layers.resize_bilinear(y, h, w, align_corners=True))
    y = jnp.concatenate([*pyramid, x.astype(pyramid[0].dtype)], axis=-1)
    y = layers.ConvNormAct(self.psp_out_channels, 1, norm=self.norm, name="decoder_conv",
                           **common)(y, train)
    return nn.Dropout(self.psp_dropout, broadcast_dims=(1, 2), deterministic=not train)(y)


@register_model(task="segmentation", family="pspnet", default_input_size=256,
                test_options={**TEST_ENCODER, "psp_out_channels": 32})
def pspnet(*, num_classes: int, **options) -> PSPNet:
  """PSPNet (pyramid pooling on the stride-8 map) on any encoder (resnet34), smp's PSPNet."""
  return PSPNet(num_classes=num_classes, **hashable_options(options))


register_rules("pspnet", NameRules(rules=(
    *conv_norm("decoder.psp.blocks.{i}.pool.1", "decoder_psp_blocks_{i}"),
    *conv_norm("decoder.conv", "decoder_conv"),
    *SEGMENTATION_HEAD_RULES,
), head=SEGMENTATION_HEADS), segmentation=True)
