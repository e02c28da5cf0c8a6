"""FPN (Lin et al. 2017) as a semantic-segmentation decoder, smp's ``FPN`` (the panoptic-FPN
segmentation branch of Kirillov et al. 2019), on any registered encoder.

Data flow (smp ``decoders/fpn``): a 1x1 conv turns the stride-32 map into P5; each finer level
P4, P3, P2 is the coarser one upsampled x2 (nearest, or bilinear with half-pixel centres) plus a
1x1 conv (with bias) of the encoder map at that stride. Each P level then goes through a
segmentation block of 3x3 conv-GroupNorm(32)-ReLU, each followed by a bilinear x2 upsampling
(``align_corners=True``), as many as it takes to reach stride 4 (P5: 3, P4: 2, P3: 1, P2: one conv
and no upsampling). The four stride-4 maps are summed (``merge_policy="add"``) or concatenated
("cat"), then spatial dropout (whole channels, smp's ``Dropout2d``), a 1x1 head and bilinear x4
upsampling (``align_corners=True``) to the input size.

Submodule names map smp's module paths: ``decoder.p5`` -> ``decoder_p5``,
``decoder.p{4,3,2}.skip_conv`` -> ``decoder_p{4,3,2}_skip_conv``,
``decoder.seg_blocks.{i}.block.{j}.block.{0,1}`` -> ``decoder_seg_blocks_{i}_block_{j}/{conv,
norm/gn}``, ``segmentation_head.0`` -> ``segmentation_head``, ``classification_head.3`` ->
``classification_head/fc``, ``encoder.*`` -> ``encoder/*``.

Where this differs from smp: ``encoder_depth`` is always 5 (smp's default; its shallower FPNs
take maps that are no longer at strides 4-32). GroupNorm uses the largest group count up to 32
that divides the channels (smp requires ``segmentation_channels`` divisible by 32).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from flaxderm.models import layers
from flaxderm.models.naming import (SEGMENTATION_HEAD_RULES, SEGMENTATION_HEADS, NameRules,
                                     register_rules)
from flaxderm.models.registry import register_model
from flaxderm.models.segmentation import (DECODER_INIT, TEST_ENCODER, SegmentationModel,
                                          hashable_options, upsample_nearest)

MERGE_POLICIES = ("add", "cat")
INTERPOLATIONS = ("nearest", "bilinear")


class FPN(SegmentationModel):
  """FPN with an smp-style encoder.

  Attributes (besides ``SegmentationModel``'s):
    pyramid_channels: width of P2..P5 (smp's ``decoder_pyramid_channels``, 256).
    segmentation_channels: width of the segmentation blocks (smp's 128).
    merge_policy: "add" sums the four stride-4 maps, "cat" concatenates them (4x the channels).
    dropout: spatial (channel) dropout before the head (rng "dropout").
    interpolation: the x2 upsampling of the top-down path, "nearest" (smp's default) or
      "bilinear" (half-pixel centres, PyTorch's ``align_corners=False``).
  """
  pyramid_channels: int = 256
  segmentation_channels: int = 128
  merge_policy: str = "add"
  dropout: float = 0.2
  interpolation: str = "nearest"

  model_name = "fpn"
  head_kernel_size = 1

  def decode(self, features, train):
    if self.merge_policy not in MERGE_POLICIES:
      raise ValueError(f"fpn: merge_policy must be one of {MERGE_POLICIES}, got "
                       f"{self.merge_policy!r}")
    if self.interpolation not in INTERPOLATIONS:
      raise ValueError(f"fpn: interpolation must be one of {INTERPOLATIONS}, got "
                       f"{self.interpolation!r}")
    maps = features[1:]  # strides 4, 8, 16, 32
    sizes = [f.shape[1:3] for f in maps]
    if any(fine != (2 * coarse[0], 2 * coarse[1]) for fine, coarse in zip(sizes, sizes[1:])):
      raise ValueError(f"fpn: needs encoder maps that halve from stride 4 to 32, got sizes "
                       f"{sizes} (a dilated encoder?)")
    common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    lateral = lambda x, name: layers.conv(self.pyramid_channels, 1, use_bias=True,
                                          kernel_init=DECODER_INIT, name=name, **common)(x)
    pyramid = [lateral(maps[-1], "decoder_p5")]
    for level, skip in zip((4, 3, 2), maps[-2::-1]):
      up = self._upsample2x(pyramid[-1])
      pyramid.append(up + lateral(skip, f"decoder_p{level}_skip_conv"))
    merged = []
    for i, p in enumerate(pyramid):
      for j in range(max(3 - i, 1)):
        p = layers.ConvNormAct(self.segmentation_channels, 3, norm="group",
                               kernel_init=DECODER_INIT, name=f"decoder_seg_blocks_{i}_block_{j}",
                               **common)(p, train)
        if i < 3:
          p = layers.resize_bilinear(p, 2 * p.shape[1], 2 * p.shape[2], align_corners=True)
      merged.append(p)
    y = sum(merged[1:], merged[0]) if self.merge_policy == "add" else jnp.concatenate(merged, -1)
    return nn.Dropout(self.dropout, broadcast_dims=(1, 2), deterministic=not train)(y)

  def _upsample2x(self, x):
    h, w = 2 * x.shape[1], 2 * x.shape[2]
    if self.interpolation == "nearest":
      return upsample_nearest(x, h, w)
    return layers.resize_bilinear(x, h, w)


@register_model(task="segmentation", family="fpn", default_input_size=256,
                test_options={**TEST_ENCODER, "pyramid_channels": 32,
                              "segmentation_channels": 16})
def fpn(*, num_classes: int, **options) -> FPN:
  """FPN (top-down pyramid, stride-4 merge) on any encoder (resnet34), smp's FPN."""
  return FPN(num_classes=num_classes, **hashable_options(options))


register_rules("fpn", NameRules(rules=(
    ("decoder.p5", "decoder_p5"),
    ("decoder.p{k}.skip_conv", "decoder_p{k}_skip_conv"),
    ("decoder.seg_blocks.{i}.block.{j}.block.0", "decoder_seg_blocks_{i}_block_{j}/conv"),
    ("decoder.seg_blocks.{i}.block.{j}.block.1", "decoder_seg_blocks_{i}_block_{j}/norm/gn"),
    *SEGMENTATION_HEAD_RULES,
), head=SEGMENTATION_HEADS), segmentation=True)
