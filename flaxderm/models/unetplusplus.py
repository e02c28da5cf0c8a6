"""U-Net++ (Zhou et al. 2018, "UNet++: A Nested U-Net Architecture for Medical Image
Segmentation") on any registered encoder, structured like smp's ``UnetPlusPlus``.

Data flow (smp ``decoders/unetplusplus``): with the encoder maps ``f[0..4]`` at strides 32, 16, 8,
4, 2, node ``x_{d}_{j}`` (``0 <= d <= j <= 3``) sits at the stride of ``f[j + 1]``. It is a
``unet.UNetBlock`` (nearest x2 upsampling -> concat skip -> [attention1] -> conv3x3-norm-ReLU x2
-> [attention2]) whose input is ``f[d]`` on the diagonal (``j == d``) and ``x_{d}_{j-1}`` otherwise,
and whose skip is the concatenation of the finer nodes of its column, ``x_{d+1..j}_{j}``, and
``f[j + 1]``. The top row ``x_0_j`` has ``decoder_channels[j]`` channels, the nested nodes those of
``f[j + 1]``. A last block ``x_0_4`` (no skip) reaches stride 1; a 3x3 segmentation head without
activation follows. This is the paper's dense nested decoder without deep supervision (smp has
none either).

Submodule names are smp's module paths: ``decoder.blocks.x_{d}_{j}.conv{n}.{0,1}`` ->
``decoder_blocks_x_{d}_{j}/conv{n}/{conv,norm/bn}``, the scSE convs as in ``unet.py``,
``segmentation_head.0`` -> ``segmentation_head``, ``classification_head.3`` ->
``classification_head/fc``, ``encoder.*`` -> ``encoder/*``.

Where this differs from smp: the decoder upsamples with nearest neighbours only (smp's
``decoder_interpolation`` is not an option); smp also builds, but never calls, a centre block for
VGG encoders, which flaxderm does not build (its weights are dropped on import). An encoder map with
zero channels (ViT/Swin at stride 2) gives empty nested nodes, as smp's empty blocks.
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp

from flaxderm.models import layers
from flaxderm.models.attention import ATTENTIONS
from flaxderm.models.naming import (SEGMENTATION_HEAD_RULES, SEGMENTATION_HEADS, NameRules,
                                     register_rules)
from flaxderm.models.registry import register_model
from flaxderm.models.segmentation import (TEST_ENCODER, SegmentationModel, check_choice,
                                          hashable_options, upsample_nearest)
from flaxderm.models.unet import UNetBlock, unet_block_rules


class UNetPlusPlus(SegmentationModel):
  """smp's ``UnetPlusPlus``: an encoder and the nested, densely connected U-Net++ decoder.

  Attributes (besides ``SegmentationModel``'s):
    decoder_channels: widths of the top-row nodes ``x_0_0 .. x_0_4`` (strides 16, 8, 4, 2, 1).
    norm: normalisation of the decoder convs (smp's ``decoder_use_norm``): "batch", "group" or
      "none". The encoder's own norm goes in ``encoder_kwargs``.
    decoder_attention: one of ``attention.ATTENTIONS`` (smp's ``decoder_attention_type``
      "scse", ...), after each skip concatenation and each node.
  """
  decoder_channels: Sequence[int] = (256, 128, 64, 32, 16)
  norm: str = "batch"
  decoder_attention: str | None = None

  model_name = "unetplusplus"

  def decode(self, features, train):
    if len(self.decoder_channels) != 5:
      raise ValueError(f"{self.model_name}: decoder_channels needs 5 widths (strides 16, 8, 4, 2, "
                       f"1), got {tuple(self.decoder_channels)}")
    check_choice(self.model_name, "norm", self.norm, layers.NORMS)
    check_choice(self.model_name, "decoder_attention", self.decoder_attention, ATTENTIONS)
    f = features[::-1]  # strides 32, 16, 8, 4, 2
    depth = len(f) - 1
    nodes = {}

    def node(d, j, x, skip):
      width = self.decoder_channels[j] if d == 0 else f[j + 1].shape[-1]
      x = upsample_nearest(x, *(skip.shape[1:3] if skip is not None else
                                (2 * x.shape[1], 2 * x.shape[2])))
      if width == 0:  # below a zero-channel encoder map: smp's empty block
        return jnp.zeros(x.shape[:3] + (0,), x.dtype)
      return UNetBlock(width, self.norm, self.decoder_attention, dtype=self.dtype,
                       param_dtype=self.param_dtype, name=f"decoder_blocks_x_{d}_{j}")(
                           x, skip, train)

    # smp's order: column offset j - d outer, row d inner, so every skip a node needs exists.
    for offset in range(depth):
      for d in range(depth - offset):
        j = d + offset
        x = f[d] if offset == 0 else nodes[d, j - 1]
        skip = jnp.concatenate([nodes[i, j] for i in range(d + 1, j + 1)] + [f[j + 1]], axis=-1)
        nodes[d, j] = node(d, j, x, skip)
    return node(0, depth, nodes[0, depth - 1], None)


@register_model(task="segmentation", family="unetplusplus", default_input_size=256,
                test_options={**TEST_ENCODER, "decoder_channels": (64, 32, 16, 8, 8)})
def unetplusplus(*, num_classes: int, **options) -> UNetPlusPlus:
  """U-Net++ (nested dense skip pathways) on an encoder (resnet34), smp's ``UnetPlusPlus``."""
  return UNetPlusPlus(num_classes=num_classes, **hashable_options(options))


register_rules("unetplusplus", NameRules(rules=(
    *unet_block_rules("decoder.blocks.x_{d}_{j}", "decoder_blocks_x_{d}_{j}"),
    *SEGMENTATION_HEAD_RULES,
), head=SEGMENTATION_HEADS, unused=("decoder.blocks.x_0_4.attention1", "decoder.center")),
    segmentation=True)
