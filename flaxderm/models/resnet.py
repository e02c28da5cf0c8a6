"""ResNet (He et al. 2016) in torchvision's layout, plus the parts every CNN family shares.

Layout (parameter counts equal torchvision's at 224 px, 1000 classes: resnet18 11,689,512,
resnet34 21,797,672, resnet50 25,557,032, resnet101 44,549,160, resnet152 60,192,808): a 7x7
stride-2 stem conv, BatchNorm, ReLU, a 3x3 stride-2 max pool (padding 1), four stages of
BasicBlocks (18/34) or Bottlenecks (50/101/152) with the stride on the 3x3 conv ("ResNet v1.5"),
a 1x1 conv + norm projection shortcut where the shape changes, global average pooling, and a
linear head. Padding is PyTorch's symmetric ``k // 2 * dilation``.

Parameter names are torchvision's module paths with ``.N`` turned into ``_N`` and ``.`` into
``/``; norms add one level (``bn`` for BatchNorm, ``gn`` for GroupNorm, see ``layers.Norm``), so a
torchvision checkpoint converts mechanically (conv kernels OIHW -> HWIO, linear kernels
transposed): ``layer2.0.conv1.weight`` -> ``params/layer2_0/conv1/kernel``,
``layer2.0.bn1.running_mean`` -> ``batch_stats/layer2_0/bn1/bn/mean``, ``layer2.0.downsample.0``
-> ``layer2_0/downsample_0``, ``fc``.

Encoder (``features_only=True``): the stem after its ReLU (stride 2, 64 channels) and the outputs
of layer1..layer4 (strides 4, 8, 16, 32).

``output_stride`` 16 or 8 trades the stride of layer4 (and layer3) for dilation as torchvision's
``replace_stride_with_dilation`` and timm's ``output_stride`` do: the first block of a dilated
stage keeps the previous dilation on its first 3x3 conv, later convs use the new one. The feature
maps then stay at stride ``output_stride``, and the input only needs to be divisible by
``output_stride`` (the total downsampling left), 32 by default.

The options and encoder plumbing it shares with the other CNN families (``ConvNet``, ``conv2d``,
``stage_dilations``) are in encoder.py.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from flaxderm.models import layers
from flaxderm.models import weights
from flaxderm.models.encoder import ConvNet, conv2d, stage_dilations
from flaxderm.models.naming import NameRules, register_rules
from flaxderm.models.registry import register_model

Dtype = Any


class ResidualBlock(nn.Module):
  """torchvision's BasicBlock (two 3x3 convs) or Bottleneck (1x1 reduce, 3x3, 1x1 expand x4).

  The strided 3x3 conv uses ``first_dilation``; a BasicBlock's second 3x3 conv uses ``dilation``.
  Convs and norms are ``conv{i}``/``bn{i}``, the projection shortcut ``downsample_0`` (1x1 conv)
  and ``downsample_1`` (norm), as in torchvision.
  """
  width: int
  bottleneck: bool = False
  strides: int = 1
  first_dilation: int = 1
  dilation: int = 1
  norm: str = "batch"
  drop_path: float = 0.0
  zero_init_last: bool = False
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    w, s = self.width, self.strides
    # (features, kernel, stride, dilation) of each conv in the residual branch.
    if self.bottleneck:
      convs = ((w, 1, 1, 1), (w, 3, s, self.first_dilation), (4 * w, 1, 1, 1))
    else:
      convs = ((w, 3, s, self.first_dilation), (w, 3, 1, self.dilation))
    common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    use_bias = self.norm == "none"
    shortcut, y = x, x
    for i, (features, k, stride, dilation) in enumerate(convs, start=1):
      last = i == len(convs)
      y = conv2d(features, k, strides=stride, dilation=dilation, use_bias=use_bias, name=f"conv{i}",
                 **common)(y)
      scale_init = nn.initializers.zeros if last and self.zero_init_last else nn.initializers.ones
      y = layers.Norm(self.norm, scale_init=scale_init, name=f"bn{i}", **common)(y, train)
      if not last:
        y = nn.relu(y)
    if s != 1 or x.shape[-1] != y.shape[-1]:
      shortcut = conv2d(y.shape[-1], 1, strides=s, use_bias=use_bias, name="downsample_0",
                        **common)(x)
      shortcut = layers.Norm(self.norm, name="downsample_1", **common)(shortcut, train)
    y = layers.DropPath(self.drop_path)(y, train)
    return nn.relu(y + shortcut)


class ResNet(ConvNet):
  """torchvision ResNet; see the module docstring for layout, names and the encoder maps.

  ``depths`` are the blocks per stage; ``drop_path_rate`` grows linearly from 0 at the first block
  to the rate at the last (timm's rule for ResNets).
  """
  depths: Sequence[int] = (2, 2, 2, 2)
  bottleneck: bool = False

  @property
  def feature_channels(self) -> tuple[int, ...]:
    e = 4 if self.bottleneck else 1  # a Bottleneck's output is 4x its width
    return (64, 64 * e, 128 * e, 256 * e, 512 * e)

  @nn.compact
  def __call__(self, x, train: bool = False, features_only: bool = False):
    self.check(x, features_only)
    common = dict(norm=self.norm, dtype=self.dtype, param_dtype=self.param_dtype)
    x = conv2d(64, 7, strides=2, use_bias=self.norm == "none", dtype=self.dtype,
               param_dtype=self.param_dtype, name="conv1")(x)
    x = nn.relu(layers.Norm(self.norm, dtype=self.dtype, param_dtype=self.param_dtype,
                            name="bn1")(x, train))
    features = [x]
    x = layers.max_pool(x, 3, strides=2, padding=1)
    total, index = sum(self.depths), 0
    schedule = stage_dilations((1, 2, 2, 2), self.output_stride, stride=4)
    for stage, (depth, width, (stride, first_dilation, dilation)) in enumerate(
        zip(self.depths, (64, 128, 256, 512), schedule), start=1):
      for block in range(depth):
        x = ResidualBlock(
            width, self.bottleneck, strides=stride if block == 0 else 1,
            first_dilation=first_dilation if block == 0 else dilation, dilation=dilation,
            drop_path=self.drop_path_rate * index / max(total - 1, 1),
            zero_init_last=self.zero_init_last, name=f"layer{stage}_{block}", **common)(x, train)
        index += 1
      features.append(x)
    if features_only:
      return features
    return self.head(x, train, name="fc")


def _resnet(model_name: str, depths: Sequence[int], bottleneck: bool, /, *, num_classes: int,
            **options) -> ResNet:
  # Options may override the variant's depths (e.g. tiny test models).
  return ResNet(num_classes=num_classes, model_name=model_name,
                **{"depths": tuple(depths), "bottleneck": bottleneck, **options})


@register_model(task="classification", family="resnet", default_input_size=224,
                test_options={"depths": (1, 1, 1, 1)})
def resnet18(*, num_classes: int, **options) -> ResNet:
  """ResNet-18 (BasicBlocks 2-2-2-2), torchvision layout; 11.7M parameters at 1000 classes."""
  return _resnet("resnet18", (2, 2, 2, 2), False, num_classes=num_classes, **options)


@register_model(task="classification", family="resnet", default_input_size=224)
def resnet34(*, num_classes: int, **options) -> ResNet:
  """ResNet-34 (BasicBlocks 3-4-6-3), torchvision layout; 21.8M parameters at 1000 classes."""
  return _resnet("resnet34", (3, 4, 6, 3), False, num_classes=num_classes, **options)


@register_model(task="classification", family="resnet", default_input_size=224)
def resnet50(*, num_classes: int, **options) -> ResNet:
  """ResNet-50 (Bottlenecks 3-4-6-3), torchvision layout; 25.6M parameters at 1000 classes."""
  return _resnet("resnet50", (3, 4, 6, 3), True, num_classes=num_classes, **options)


@register_model(task="classification", family="resnet", default_input_size=224)
def resnet101(*, num_classes: int, **options) -> ResNet:
  """ResNet-101 (Bottlenecks 3-4-23-3), torchvision layout; 44.5M parameters at 1000 classes."""
  return _resnet("resnet101", (3, 4, 23, 3), True, num_classes=num_classes, **options)


@register_model(task="classification", family="resnet", default_input_size=224)
def resnet152(*, num_classes: int, **options) -> ResNet:
  """ResNet-152 (Bottlenecks 3-8-36-3), torchvision layout; 60.2M parameters at 1000 classes."""
  return _resnet("resnet152", (3, 8, 36, 3), True, num_classes=num_classes, **options)


# timm and torchvision share these names; the classifier is "fc".
register_rules("resnet", NameRules(head=("fc",)))


for _tag in (
    weights.torchvision_tag("resnet18.tv_in1k", "resnet18", "resnet18-f37072fd.pth"),
    weights.torchvision_tag("resnet50.tv_in1k", "resnet50", "resnet50-0676ba61.pth"),
    weights.torchvision_tag("resnet50.tv2_in1k", "resnet50", "resnet50-11ad3fa6.pth"),
    weights.timm_tag("resnet50.a1_in1k", "resnet50", "timm/resnet50.a1_in1k"),
):
  weights.register_tag(_tag)
