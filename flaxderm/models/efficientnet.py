"""EfficientNet (Tan & Le 2019) in timm's layout: ``efficientnet_b0`` and ``efficientnet_lite0/1/2``.

Both are a stem conv (3x3 stride 2, 32 channels), seven stages of blocks, a 1x1 ``conv_head`` to
1280 channels, global average pooling, dropout and a linear ``classifier``. Stage 0 is timm's
DepthwiseSeparableConv (depthwise, [SE], pointwise), the others its InvertedResidual (1x1 expand,
depthwise, [SE], 1x1 project); a block has a residual connection (with stochastic depth) when
stride 1 and width unchanged. ``InvertedResidual`` is shared with MobileNetV2 (mobilenet.py).

* ``efficientnet_b0`` (timm ``efficientnet_b0``, 5,288,548 parameters at 1000 classes): SiLU,
  squeeze-excitation reducing to 1/4 of the *block input* width, PyTorch symmetric padding,
  BatchNorm eps 1e-5.
* ``efficientnet_lite0`` (timm ``tf_efficientnet_lite0``, 4,652,008 parameters): ReLU6, no SE,
  TensorFlow "SAME" padding (which pads the extra row/column at the bottom/right of strided convs,
  as the TF-trained weights expect), BatchNorm eps 1e-3.
* ``efficientnet_lite1`` / ``efficientnet_lite2`` (timm ``tf_efficientnet_lite1/2``, 5,416,680 and
  6,092,072 parameters): Lite0 compound-scaled by width 1.0 / 1.1 and depth 1.1 / 1.2
  (``scaled_stages``); Lite keeps the stem, the head and the first and last stages' repeats fixed.
  Their ImageNet checkpoints were trained at 240 and 260 px.

Parameter names are timm's module paths with ``.N`` turned into ``_N`` and ``.`` into ``/`` and
created in timm's order (conv_stem, bn1, blocks, conv_head, bn2, classifier; inside a block
conv_pw, bn1, conv_dw, bn2, se, conv_pwl, bn3, or conv_dw, bn1, se, conv_pw, bn2 for stage 0), so
a timm state dict converts mechanically: ``blocks.1.0.conv_dw.weight`` ->
``params/blocks_1_0/conv_dw/kernel`` (OIHW -> HWIO), ``blocks.1.0.bn2.running_var`` ->
``batch_stats/blocks_1_0/bn2/bn/var``. Two names differ: norms add a level (``bn`` or ``gn``, see
``layers.Norm``) and the SE convs are ``se/reduce`` and ``se/expand`` (timm's ``se.conv_reduce``,
``se.conv_expand``; ``attention.SqueezeExcite``).

Encoder (``features_only=True``): the output of the last block at each stride level, timm's
``features_only`` maps (blocks 0, 1, 2, 4, 6 for both variants: 16, 24, 40, 112, 320 channels at
strides 2, 4, 8, 16, 32); ``conv_head`` is not part of the encoder.

``output_stride`` 16 or 8 trades the stride of the last stages for dilation of their depthwise
convs (timm's rule, see ``encoder.stage_dilations``); inputs must be divisible by
``output_stride`` (32 by default). ``drop_path_rate`` grows linearly over the blocks, block i of n
getting ``rate * i / n`` (timm's EfficientNet rule). ``depth_multiplier`` scales every stage's
repeats, rounded up: 0.3 leaves one block per stage but one of two (B0 and Lite0), every block
type kept, which the experiments' ``runlocal`` smoke runs train.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax.numpy as jnp

from flaxderm.models import layers
from flaxderm.models import weights
from flaxderm.models.attention import SqueezeExcite
from flaxderm.models.encoder import FEATURE_STRIDES, ConvNet, conv2d, stage_dilations
from flaxderm.models.naming import NameRules, register_rules
from flaxderm.models.registry import register_model

Dtype = Any


class Stage(NamedTuple):
  """One stage of identical blocks; the first block has the stride and the width change.
  ``expand_ratio`` 1 means timm's DepthwiseSeparableConv (no expansion conv)."""
  repeats: int
  kernel_size: int
  stride: int
  expand_ratio: int
  channels: int


EFFICIENTNET_B0 = (
    Stage(1, 3, 1, 1, 16),
    Stage(2, 3, 2, 6, 24),
    Stage(2, 5, 2, 6, 40),
    Stage(3, 3, 2, 6, 80),
    Stage(3, 5, 1, 6, 112),
    Stage(4, 5, 2, 6, 192),
    Stage(1, 3, 1, 6, 320),
)


def scaled_stages(stages: Sequence[Stage], *, width: float = 1.0, depth: float = 1.0,
                  fix_first_last: bool = False) -> tuple[Stage, ...]:
  """Compound scaling as timm's EfficientNet builder: channels times ``width`` rounded to a
  multiple of 8 (never below 90% of the product), repeats times ``depth`` rounded up, except the
  first and last stage with ``fix_first_last`` (the Lite models)."""
  def channels(c: int) -> int:
    if width == 1.0:
      return c
    rounded = max(8, int(c * width + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * c * width else rounded

  last = len(stages) - 1
  return tuple(stage._replace(
      channels=channels(stage.channels),
      repeats=stage.repeats if fix_first_last and i in (0, last) else
      int(math.ceil(stage.repeats * depth))) for i, stage in enumerate(stages))


class InvertedResidual(nn.Module):
  """timm's InvertedResidual (MobileNetV2/EfficientNet block), or its DepthwiseSeparableConv when
  ``expand_ratio`` is 1. Names follow timm, which numbers the norms in order of use."""
  features: int
  kernel_size: int = 3
  strides: int = 1
  dilation: int = 1
  expand_ratio: int = 6
  se_ratio: float = 0.0  # of the block's input width, as in timm's EfficientNets
  act: str = "relu6"
  padding: str = "symmetric"
  norm: str = "batch"
  norm_epsilon: float = 1e-5
  drop_path: float = 0.0
  zero_init_last: bool = False
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    act = layers.activation(self.act)
    common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    use_bias = self.norm == "none"

    def norm(i, scale_init=nn.initializers.ones):
      return layers.Norm(self.norm, epsilon=self.norm_epsilon, scale_init=scale_init,
                         name=f"bn{i}", **common)

    in_features = x.shape[-1]
    expand = self.expand_ratio != 1
    mid = in_features * self.expand_ratio
    y, i = x, 1
    if expand:
      y = conv2d(mid, 1, use_bias=use_bias, name="conv_pw", **common)(y)
      y, i = act(norm(i)(y, train)), i + 1
    y = conv2d(mid, self.kernel_size, strides=self.strides, dilation=self.dilation, groups=mid,
               padding=self.padding, use_bias=use_bias, name="conv_dw", **common)(y)
    y, i = act(norm(i)(y, train)), i + 1
    if self.se_ratio:
      y = SqueezeExcite(max(1, round(in_features * self.se_ratio)), act=self.act, name="se",
                        **common)(y)
    y = conv2d(self.features, 1, use_bias=use_bias, name="conv_pwl" if expand else "conv_pw",
               **common)(y)
    y = norm(i, nn.initializers.zeros if self.zero_init_last else nn.initializers.ones)(y, train)
    if self.strides == 1 and in_features == self.features:
      y = layers.DropPath(self.drop_path)(y, train) + x
    return y


class EfficientNet(ConvNet):
  """timm's EfficientNet/MobileNetV2 builder; see the module docstring (defaults: EfficientNet-B0).

  ``features_include_head``: the stride-32 encoder map is taken after ``conv_head`` (its norm and
  activation) instead of after the last block (smp's MobileNetV2 encoder does this).
  """
  stages: Sequence[Stage] = EFFICIENTNET_B0
  stem_channels: int = 32
  head_channels: int = 1280
  se_ratio: float = 0.25
  act: str = "silu"
  padding: str = "symmetric"
  norm_epsilon: float = 1e-5
  features_include_head: bool = False
  drop_rate: float = 0.2
  depth_multiplier: float = 1.0  # every stage's repeats times this, rounded up (timm's option)

  @property
  def _stages(self) -> tuple[Stage, ...]:
    """``stages`` as ``Stage`` tuples (a config saved as JSON, ``model.kwargs.stages``, gives them
    back as lists), their repeats scaled by ``depth_multiplier``."""
    return scaled_stages(tuple(Stage(*stage) for stage in self.stages),
                         depth=self.depth_multiplier)

  def _levels(self) -> list[int]:
    """The nominal stride at the end of each stage (before dilation replaces any stride)."""
    stride, levels = 2, []
    for stage in self._stages:
      stride *= stage.stride
      levels.append(stride)
    return levels

  @property
  def feature_channels(self) -> tuple[int, ...]:
    channels = {2: self.stem_channels}
    channels.update({level: stage.channels for level, stage in zip(self._levels(), self._stages)})
    if self.features_include_head:
      channels[32] = self.head_channels
    return tuple(channels.get(s, 0) for s in FEATURE_STRIDES)

  @nn.compact
  def __call__(self, x, train: bool = False, features_only: bool = False):
    self.check(x, features_only)
    act = layers.activation(self.act)
    common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    use_bias = self.norm == "none"

    def norm(name):
      return layers.Norm(self.norm, epsilon=self.norm_epsilon, name=name, **common)

    x = conv2d(self.stem_channels, 3, strides=2, padding=self.padding, use_bias=use_bias,
               name="conv_stem", **common)(x)
    x = act(norm("bn1")(x, train))
    features = {2: x}
    total, index = sum(s.repeats for s in self._stages), 0
    schedule = stage_dilations([s.stride for s in self._stages], self.output_stride, stride=2)
    for i, (stage, level, (stride, first_dilation, dilation)) in enumerate(
        zip(self._stages, self._levels(), schedule)):
      for j in range(stage.repeats):
        x = InvertedResidual(
            stage.channels, stage.kernel_size, strides=stride if j == 0 else 1,
            dilation=first_dilation if j == 0 else dilation, expand_ratio=stage.expand_ratio,
            se_ratio=self.se_ratio, act=self.act, padding=self.padding, norm=self.norm,
            norm_epsilon=self.norm_epsilon, drop_path=self.drop_path_rate * index / total,
            zero_init_last=self.zero_init_last, name=f"blocks_{i}_{j}", **common)(x, train)
        index += 1
      features[level] = x
    if features_only and not self.features_include_head:
      return [features[s] for s in FEATURE_STRIDES]
    x = conv2d(self.head_channels, 1, use_bias=use_bias, name="conv_head", **common)(x)
    x = act(norm("bn2")(x, train))
    if features_only:
      features[32] = x
      return [features[s] for s in FEATURE_STRIDES]
    return self.head(x, train, name="classifier")


@register_model(task="classification", family="efficientnet", default_input_size=224,
                test_options={"stages": scaled_stages(EFFICIENTNET_B0, width=0.25, depth=0.3)})
def efficientnet_b0(*, num_classes: int, **options) -> EfficientNet:
  """EfficientNet-B0 as timm's ``efficientnet_b0`` (SiLU, SE); 5.3M parameters at 1000 classes."""
  return EfficientNet(num_classes=num_classes, model_name="efficientnet_b0", **options)


LITE = {"se_ratio": 0.0, "act": "relu6", "padding": "same", "norm_epsilon": 1e-3}


@register_model(task="classification", family="efficientnet", default_input_size=224)
def efficientnet_lite0(*, num_classes: int, **options) -> EfficientNet:
  """EfficientNet-Lite0 as timm's ``tf_efficientnet_lite0`` (ReLU6, no SE, TF SAME padding, BN eps
  1e-3); 4.7M parameters at 1000 classes. Its TF-trained weights expect inputs in [-1, 1]."""
  return EfficientNet(num_classes=num_classes, model_name="efficientnet_lite0",
                      **{**LITE, **options})


@register_model(task="classification", family="efficientnet", default_input_size=240)
def efficientnet_lite1(*, num_classes: int, **options) -> EfficientNet:
  """EfficientNet-Lite1 as timm's ``tf_efficientnet_lite1`` (Lite0 at depth 1.1); 5.4M params."""
  stages = scaled_stages(EFFICIENTNET_B0, width=1.0, depth=1.1, fix_first_last=True)
  return EfficientNet(num_classes=num_classes, model_name="efficientnet_lite1",
                      **{**LITE, "stages": stages, **options})


@register_model(task="classification", family="efficientnet", default_input_size=260)
def efficientnet_lite2(*, num_classes: int, **options) -> EfficientNet:
  """EfficientNet-Lite2 as timm's ``tf_efficientnet_lite2`` (width 1.1, depth 1.2); 6.1M params."""
  stages = scaled_stages(EFFICIENTNET_B0, width=1.1, depth=1.2, fix_first_last=True)
  return EfficientNet(num_classes=num_classes, model_name="efficientnet_lite2",
                      **{**LITE, "stages": stages, **options})


# timm's squeeze-excitation convs inside the inverted-residual blocks (also MobileNetV2's).
TIMM_SE_RULES = (("blocks.{i}.{j}.se.conv_reduce", "blocks_{i}_{j}/se/reduce"),
                 ("blocks.{i}.{j}.se.conv_expand", "blocks_{i}_{j}/se/expand"))
register_rules("efficientnet", NameRules(rules=TIMM_SE_RULES, head=("classifier",),
                                         unused=("conv_head", "bn2")))


for _tag in (
    *(weights.lite_package_tag(k, size) for k, size in ((0, 224), (1, 240), (2, 260))),
    weights.torchvision_tag("efficientnet_b0.tv_in1k", "efficientnet_b0",
                            "efficientnet_b0_rwightman-7f5810bc.pth"),
    weights.timm_tag("efficientnet_b0.ra_in1k", "efficientnet_b0", "timm/efficientnet_b0.ra_in1k"),
    weights.timm_tag("efficientnet_lite0.in1k", "efficientnet_lite0",
                     "timm/tf_efficientnet_lite0.in1k", weights.SYMMETRIC, weights.SYMMETRIC),
):
  weights.register_tag(_tag)
