"""MA-Net (Fan et al. 2020, "MA-Net: A Multi-Scale Attention Network for Liver and Tumor
Segmentation") on any registered encoder, structured like smp's ``MAnet``.

Data flow (smp ``decoders/manet``): the stride-32 map goes through the position-wise attention
block (PAB: a softmax affinity over all pixel pairs mixes a 3x3-conv value map into the input, then
a 3x3 conv). Then five decoder blocks up to stride 1; each one with an encoder skip is a
multi-scale fusion attention block (MFAB): conv3x3-norm-ReLU and conv1x1-norm-ReLU to the skip's
width, nearest x2 upsampling, a channel gate (sigmoid of the sum of two squeeze-excitation branches,
one on the upsampled map, one on the skip) multiplying the upsampled map, then a ``unet.UNetBlock``
(concat skip -> conv3x3-norm-ReLU x2). The last block has no skip: upsampling and the UNetBlock
alone. A 3x3 segmentation head without activation follows.

Submodule names map smp's module paths: ``decoder.center.{top,center,bottom,out}_conv`` ->
``decoder_center/...``, ``decoder.blocks.{i}.conv{n}.{0,1}`` -> ``decoder_blocks_{i}/conv{n}/
{conv,norm/bn}``, the MFAB's ``hl_conv.{k}`` / ``SE_hl`` / ``SE_ll`` -> ``decoder_blocks_{i}_fusion/
hl_conv_{k}`` / ``se_high`` / ``se_low`` (``.1`` -> ``reduce``, ``.3`` -> ``expand``),
``segmentation_head.0`` -> ``segmentation_head``, ``classification_head.3`` ->
``classification_head/fc``, ``encoder.*`` -> ``encoder/*``.

Follows smp where it departs from a plain reading of the paper, so that smp weights give smp's
outputs: the PAB softmax is taken jointly over all (query, key) pairs of an image, not per query,
and the attended values (pixels x channels, row-major) are reinterpreted as channels x pixels
without a transpose. Where this differs from smp: nearest upsampling only (smp's
``decoder_interpolation`` is not an option).
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import flax.linen as nn

from flaxderm.models import layers
from flaxderm.models.attention import ChannelGate
from flaxderm.models.naming import (SEGMENTATION_HEAD_RULES, SEGMENTATION_HEADS, NameRules,
                                     conv_norm, register_rules)
from flaxderm.models.registry import register_model
from flaxderm.models.segmentation import (DECODER_INIT, TEST_ENCODER, Dtype, SegmentationModel,
                                          check_choice, hashable_options, upsample_nearest)
from flaxderm.models.unet import UNetBlock, unet_block_rules

SE_REDUCTION = 16  # smp's MFAB squeeze-excitation reduction


class PositionAttention(nn.Module):
  """MA-Net's position-wise attention block (smp's ``PABBlock``), see the module docstring."""
  attention_channels: int = 64
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    n, h, w, c = x.shape
    conv = lambda f, k, name: nn.Conv(f, (k, k), padding=layers.conv_padding(k),
                                      kernel_init=DECODER_INIT, dtype=self.dtype,
                                      param_dtype=self.param_dtype, name=name)
    keys = conv(self.attention_channels, 1, "top_conv")(x).reshape(n, h * w, -1)
    queries = conv(self.attention_channels, 1, "center_conv")(x).reshape(n, h * w, -1)
    values = conv(c, 3, "bottom_conv")(x).reshape(n, h * w, c)
    affinity = jnp.einsum("nqp,nkp->nqk", queries, keys)
    affinity = nn.softmax(affinity.reshape(n, -1), axis=-1).reshape(n, h * w, h * w)
    attended = jnp.einsum("nqk,nkc->nqc", affinity, values)
    # smp reshapes the (pixels, channels) product straight to (channels, H, W).
    attended = attended.reshape(n, c, h, w).transpose(0, 2, 3, 1)
    return conv(c, 3, "out_conv")(x + attended)


class FusionAttention(nn.Module):
  """The attention half of MA-Net's MFAB: the deeper map brought to the skip's width and size, and
  gated channel-wise by both maps; a ``UNetBlock`` then fuses it with the skip."""
  norm: str = "batch"
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, skip, train: bool = False):
    common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    c = skip.shape[-1]
    x = layers.ConvNormAct(x.shape[-1], 3, norm=self.norm, kernel_init=DECODER_INIT,
                           name="hl_conv_0", **common)(x, train)
    x = layers.ConvNormAct(c, 1, norm=self.norm, kernel_init=DECODER_INIT, name="hl_conv_1",
                           **common)(x, train)
    x = upsample_nearest(x, *skip.shape[1:3])
    reduced = max(c // SE_REDUCTION, 1)
    gate = (ChannelGate(reduced, name="se_high", **common)(x)
            + ChannelGate(reduced, name="se_low", **common)(skip.astype(x.dtype)))
    return x * gate


class MANet(SegmentationModel):
  """smp's ``MAnet``: an encoder, a position-wise attention centre and MFAB decoder blocks.

  Attributes (besides ``SegmentationModel``'s):
    decoder_channels: widths of the five decoder blocks (strides 16, 8, 4, 2, 1).
    decoder_pab_channels: channels of the PAB's query and key maps (smp's default 64).
    norm: normalisation of the decoder convs (smp's ``decoder_use_norm``): "batch", "group" or
      "none". The encoder's own norm goes in ``encoder_kwargs``.
  """
  decoder_channels: Sequence[int] = (256, 128, 64, 32, 16)
  decoder_pab_channels: int = 64
  norm: str = "batch"

  model_name = "manet"

  def decode(self, features, train):
    if len(self.decoder_channels) != 5:
      raise ValueError(f"{self.model_name}: decoder_channels needs 5 widths (strides 16, 8, 4, 2, "
                       f"1), got {tuple(self.decoder_channels)}")
    if self.decoder_pab_channels < 1:
      raise ValueError(f"{self.model_name}: decoder_pab_channels must be >= 1, got "
                       f"{self.decoder_pab_channels}")
    check_choice(self.model_name, "norm", self.norm, layers.NORMS)
    common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    skips = features[-2::-1]  # strides 16, 8, 4, 2
    y = PositionAttention(self.decoder_pab_channels, name="decoder_center", **common)(features[-1])
    for i, width in enumerate(self.decoder_channels):
      skip = skips[i] if i < len(skips) else None
      if skip is not None and skip.shape[-1]:  # smp: an MFAB wherever the skip has channels
        y = FusionAttention(self.norm, name=f"decoder_blocks_{i}_fusion", **common)(y, skip, train)
      else:
        y = upsample_nearest(y, 2 * y.shape[1], 2 * y.shape[2])
      y = UNetBlock(width, self.norm, name=f"decoder_blocks_{i}", **common)(y, skip, train)
    return y


@register_model(task="segmentation", family="manet", default_input_size=256,
                test_options={**TEST_ENCODER, "decoder_channels": (64, 32, 16, 8, 8),
                              "decoder_pab_channels": 16})
def manet(*, num_classes: int, **options) -> MANet:
  """MA-Net (position-wise and multi-scale fusion attention) on an encoder (resnet34)."""
  return MANet(num_classes=num_classes, **hashable_options(options))


register_rules("manet", NameRules(rules=(
    *((f"decoder.center.{name}", f"decoder_center/{name}")
      for name in ("top_conv", "center_conv", "bottom_conv", "out_conv")),
    *unet_block_rules("decoder.blocks.{i}", "decoder_blocks_{i}"),
    *conv_norm("decoder.blocks.{i}.hl_conv.{k}", "decoder_blocks_{i}_fusion/hl_conv_{k}"),
    *((f"decoder.blocks.{{i}}.SE_{torch_branch}.{torch_index}",
       f"decoder_blocks_{{i}}_fusion/se_{branch}/{conv}")
      for torch_branch, branch in (("hl", "high"), ("ll", "low"))
      for torch_index, conv in (("1", "reduce"), ("3", "expand"))),
    *SEGMENTATION_HEAD_RULES,
), head=SEGMENTATION_HEADS), segmentation=True)
