"""UPerNet (Xiao et al. 2018) on any registered encoder, structured like smp's ``UperNet``.

Data flow (smp ``decoders/upernet``): the encoder maps at strides 4, 8, 16, 32 are each layer-
normalised over channels (eps 1e-6). The stride-32 map goes through a pyramid pooling module:
for each bin size 1, 2, 3, 6, PyTorch's adaptive average pooling (``layers.adaptive_avg_pool``),
a 1x1 conv-BN-ReLU to ``decoder_channels`` and bilinear resizing back (half-pixel centres,
``align_corners=False``); [input, bins 1, 2, 3, 6] are concatenated and fused by a 3x3
conv-BN-ReLU. Top-down FPN: at strides 16, 8, 4, the coarser state is resized (bilinear,
``align_corners=False``) to the lateral 1x1 conv-BN-ReLU of the encoder map and added; each of
these three sums then gets a 3x3 conv-BN-ReLU. All four levels are resized to stride 4,
concatenated finest first [stride 4, 8, 16, pyramid], fused by a 3x3 conv-BN-ReLU, and a 1x1 head
with bilinear x4 upsampling (``align_corners=True``, smp's ``SegmentationHead``) gives the input
size.

Submodule names map smp's module paths: ``decoder.feature_norms.{i}`` ->
``decoder_feature_norms_{i}``, ``decoder.psp.blocks.{i}.1.{0,1}`` -> ``decoder_psp_blocks_{i}/
{conv,norm/bn}``, ``decoder.psp.out_conv`` -> ``decoder_psp_out_conv``,
``decoder.fpn_lateral_blocks.{i}.conv_norm_relu`` -> ``decoder_fpn_lateral_blocks_{i}``,
``decoder.fpn_conv_blocks.{i}`` -> ``decoder_fpn_conv_blocks_{i}``, ``decoder.fusion_block`` ->
``decoder_fusion_block`` (each conv-norm-ReLU as ``{conv,norm/bn}`` for smp's ``.0``/``.1``),
``segmentation_head.0`` -> ``segmentation_head``, ``classification_head.3`` ->
``classification_head/fc``, ``encoder.*`` -> ``encoder/*``.

Where this differs from smp: ``encoder_depth`` is always 5 (smp's default).
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


class UPerNet(SegmentationModel):
  """UPerNet with an smp-style encoder.

  Attributes (besides ``SegmentationModel``'s):
    decoder_channels: width of the pyramid, FPN and fusion (smp's 256).
    norm: "batch" (smp's ``decoder_use_norm``), "group" or "none" for the decoder's convs; the
      pyramid's 3x3 fusion conv always uses BatchNorm, as in smp.
  """
  decoder_channels: int = 256
  norm: str = "batch"

  model_name = "upernet"
  head_kernel_size = 1

  def decode(self, features, train):
    common = dict(kernel_init=DECODER_INIT, dtype=self.dtype, param_dtype=self.param_dtype)
    block = lambda k, name, norm=self.norm: layers.ConvNormAct(
        self.decoder_channels, k, norm=norm, name=name, **common)
    resize = lambda y, like: layers.resize_bilinear(y, like.shape[1], like.shape[2])
    maps = [nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, param_dtype=self.param_dtype,
                         name=f"decoder_feature_norms_{i}")(f)
            for i, f in enumerate(features[1:])]  # strides 4, 8, 16, 32
    deepest = maps[-1]
    pyramid = [deepest]
    for i, size in enumerate(BIN_SIZES):
      y = block(1, f"decoder_psp_blocks_{i}")(layers.adaptive_avg_pool(deepest, size), train)
      pyramid.append(resize(y, deepest))
    state = block(3, "decoder_psp_out_conv", norm="batch")(jnp.concatenate(pyramid, -1), train)
    levels = [state]
    for i, lateral in enumerate(maps[-2::-1]):  # strides 16, 8, 4
      lateral = block(1, f"decoder_fpn_lateral_blocks_{i}")(lateral, train)
      state = resize(state, lateral) + lateral
      levels.append(block(3, f"decoder_fpn_conv_blocks_{i}")(state, train))
    finest = levels[-1]
    y = jnp.concatenate([resize(level, finest) for level in levels[::-1]], axis=-1)
    return block(3, "decoder_fusion_block")(y, train)


@register_model(task="segmentation", family="upernet", default_input_size=256,
                test_options={**TEST_ENCODER, "decoder_channels": 32})
def upernet(*, num_classes: int, **options) -> UPerNet:
  """UPerNet (pyramid pooling + FPN, fused at stride 4) on any encoder (resnet34), smp's UperNet."""
  return UPerNet(num_classes=num_classes, **hashable_options(options))


register_rules("upernet", NameRules(rules=(
    ("decoder.feature_norms.{i}", "decoder_feature_norms_{i}"),
    *conv_norm("decoder.psp.blocks.{i}.1", "decoder_psp_blocks_{i}"),
    *conv_norm("decoder.psp.out_conv", "decoder_psp_out_conv"),
    *conv_norm("decoder.fpn_lateral_blocks.{i}.conv_norm_relu", "decoder_fpn_lateral_blocks_{i}"),
    *conv_norm("decoder.fpn_conv_blocks.{i}", "decoder_fpn_conv_blocks_{i}"),
    *conv_norm("decoder.fusion_block", "decoder_fusion_block"),
    *SEGMENTATION_HEAD_RULES,
), head=SEGMENTATION_HEADS), segmentation=True)
