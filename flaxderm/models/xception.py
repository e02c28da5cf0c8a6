"""Xception (Chollet 2017, "Xception: Deep Learning with Depthwise Separable Convolutions") in the
layout of timm's ``legacy_xception``: ``xception``.

Why ``legacy_xception``: it is the original network (Cadene's port of the Keras weights), the one
smp's ``xception`` encoder builds, with the same module names, so its checkpoints and smp's
encoder weights both load. timm's ``xception41/65/71`` are the deeper, aligned variants of
DeepLabV3+ (strided separable convs instead of max pools, BN + ReLU inside the separable convs) --
other networks, not offered here.

Layout (22,855,952 parameters at 1000 classes, 20,827,442 at 10, as timm): an entry stem of two
unpadded 3x3 convs (``conv1`` stride 2 to 32 channels, ``conv2`` to 64), each with BatchNorm and
ReLU; twelve residual blocks -- ``block1``..``block3`` (128, 256, 728 channels) and ``block12``
(728 then 1024) each end in a 3x3 stride-2 max pool (padding 1), ``block4``..``block11`` keep 728
channels -- whose branch is ReLU -> separable conv -> BatchNorm, repeated 2 or 3 times (``block1``
starts without the ReLU), and whose shortcut is the input or, where shape changes, a strided 1x1
conv + BatchNorm (``skip``, ``skipbn``); then separable convs ``conv3`` (1536) and ``conv4`` (2048)
with BatchNorm and ReLU, global average pooling and a linear ``fc``. A separable conv is a 3x3
depthwise conv (``conv1``) then a 1x1 conv (``pointwise``), with nothing between them (unlike
``layers.SeparableConv``, the DeepLabV3+ form). As in timm, classifier inputs may have any size
from 7x7 up, the least the unpadded stem convs take (299x299 is the size the weights were trained
at); smaller ones are a ValueError.

Parameter names are timm's (and smp's) module paths, converted mechanically: ``block4.rep.1.conv1``
-> ``block4/rep_1/conv1`` (the depthwise kernel, OIHW (C, 1, 3, 3) -> HWIO (3, 3, 1, C)),
``block4.rep.2`` -> ``block4/rep_2/bn`` (norms one level down, see ``layers.Norm``); the
parameter-free ReLUs and pools keep their places in ``rep``'s numbering.

Encoder (``features_only=True``), smp's ``XceptionEncoder`` maps: the stem after its ReLU (stride 2,
64 channels), the outputs of ``block1``, ``block2`` and ``block11`` (strides 4, 8, 16: 128, 256, 728
channels) and ``bn4`` *before* its ReLU (stride 32, 2048 channels). As in smp, the stem convs are
padded by 1 there, which makes every map exactly H / stride for inputs divisible by 32 (at 64 px,
32, 16, 8, 4 and 2 pixels, where timm's unpadded stem gives 29, 15, 8, 4 and 2); the parameters
are the same. timm's ``features_only`` maps differ (the block outputs after the next block's ReLU,
``act4`` after its ReLU).

Differences from timm: ``output_stride`` must be 32 (the blocks downsample by max pooling, and
smp's encoder refuses dilation too); ``drop_path_rate`` (stochastic depth of the residual
branches, growing linearly over the blocks) and ``zero_init_last`` (each branch's last norm starts
at gamma 0) are offered as in the other residual families, off by default as timm has them.
"""
from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxderm.models import layers
from flaxderm.models.encoder import CONV_INIT, ConvNet, conv2d
from flaxderm.models.inception import check_unpadded_input
from flaxderm.models.naming import NameRules, register_rules
from flaxderm.models.registry import register_model

Dtype = Any


class SeparableConv2d(nn.Module):
  """Chollet's separable conv: depthwise k x k (``conv1``) then 1x1 (``pointwise``), no norm or
  activation between; no bias (with ``use_bias``, on the pointwise conv only)."""
  features: int
  kernel_size: int = 3
  use_bias: bool = False
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = conv2d(x.shape[-1], self.kernel_size, groups=x.shape[-1], name="conv1", **common)(x)
    return conv2d(self.features, 1, use_bias=self.use_bias, name="pointwise", **common)(x)


class Block(nn.Module):
  """timm's legacy Xception ``Block``: ``reps`` x (ReLU -> separable conv -> norm), an optional
  stride-``strides`` max pool, plus the shortcut. ``grow_first``: the first separable conv changes
  the width (else the last). Without ``start_with_relu`` the first ReLU is left out (and from
  ``rep``'s numbering, as in timm)."""
  features: int
  reps: int
  strides: int = 1
  start_with_relu: bool = True
  grow_first: bool = True
  norm: str = "batch"
  drop_path: float = 0.0
  zero_init_last: bool = False
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    channels = x.shape[-1]
    first = 0 if self.start_with_relu else -1  # rep index of the first (ReLU, conv, norm) triple
    y = x
    for i in range(self.reps):
      grows = i == 0 if self.grow_first else i == self.reps - 1
      if i or self.start_with_relu:
        y = nn.relu(y)
      y = SeparableConv2d(self.features if grows else y.shape[-1], use_bias=self.norm == "none",
                          name=f"rep_{first + 3 * i + 1}", **common)(y)
      last = i == self.reps - 1
      scale_init = nn.initializers.zeros if last and self.zero_init_last else nn.initializers.ones
      y = layers.Norm(self.norm, scale_init=scale_init, name=f"rep_{first + 3 * i + 2}",
                      **common)(y, train)
    if self.strides != 1:
      y = layers.max_pool(y, 3, strides=self.strides, padding=1)
    shortcut = x
    if self.features != channels or self.strides != 1:
      shortcut = conv2d(self.features, 1, strides=self.strides, use_bias=self.norm == "none",
                        name="skip", **common)(x)
      shortcut = layers.Norm(self.norm, name="skipbn", **common)(shortcut, train)
    return layers.DropPath(self.drop_path)(y, train) + shortcut


# (features, reps, strides, start_with_relu, grow_first) of block1..block12.
BLOCKS = ((128, 2, 2, False, True), (256, 2, 2, True, True), (728, 2, 2, True, True),
          *((728, 3, 1, True, True),) * 8, (1024, 2, 2, True, False))
TAPS = (1, 2, 11)  # blocks whose outputs are encoder maps (strides 4, 8, 16)


class Xception(ConvNet):
  """timm's legacy Xception; see the module docstring for layout, names and the encoder maps."""
  min_input_size: ClassVar[int] = 7  # conv1 (3x3, stride 2) and conv2 (3x3) leave 1x1

  @property
  def feature_channels(self) -> tuple[int, ...]:
    return (64, 128, 256, 728, 2048)

  def check(self, x: jax.Array, features_only: bool = False):
    if self.output_stride != 32:
      raise ValueError(f"{self.model_name or 'Xception'}: output_stride must be 32, got "
                       f"{self.output_stride!r}: Xception downsamples by max pooling, which it "
                       f"cannot trade for dilation (smp's Xception encoder refuses dilation too)")
    check_unpadded_input(self, x, features_only, self.min_input_size)

  @nn.compact
  def __call__(self, x, train: bool = False, features_only: bool = False):
    self.check(x, features_only)
    common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    use_bias = self.norm == "none"
    stem_padding = 1 if features_only else 0  # smp's encoder pads the stem convs

    def norm(name):
      return layers.Norm(self.norm, name=name, **common)

    for i, (features, strides) in enumerate(((32, 2), (64, 1)), start=1):
      x = layers.conv(features, 3, strides=strides, padding=((stem_padding,) * 2,) * 2,
                      use_bias=use_bias, kernel_init=CONV_INIT, name=f"conv{i}", **common)(x)
      x = nn.relu(norm(f"bn{i}")(x, train))
    features = [x]
    for i, (width, reps, strides, start_with_relu, grow_first) in enumerate(BLOCKS, start=1):
      x = Block(width, reps, strides, start_with_relu, grow_first, self.norm,
                drop_path=self.drop_path_rate * (i - 1) / (len(BLOCKS) - 1),
                zero_init_last=self.zero_init_last, name=f"block{i}", **common)(x, train)
      if i in TAPS:
        features.append(x)
    x = nn.relu(norm("bn3")(SeparableConv2d(1536, use_bias=use_bias, name="conv3", **common)(x),
                            train))
    x = norm("bn4")(SeparableConv2d(2048, use_bias=use_bias, name="conv4", **common)(x), train)
    if features_only:
      return features + [x]
    return self.head(nn.relu(x), train, name="fc")


@register_model(task="classification", family="xception", default_input_size=299,
                min_input_size=Xception.min_input_size, test_options={})
def xception(*, num_classes: int, **options) -> Xception:
  """Xception (timm legacy_xception, smp's xception encoder); 22.9M parameters at 1000 classes."""
  return Xception(num_classes=num_classes, model_name="xception", **options)


# timm and smp share these names; the classifier is "fc".
register_rules("xception", NameRules(head=("fc",)))
