"""DenseNet-BC (Huang et al. 2017, "Densely Connected Convolutional Networks") in timm's layout:
``densenet121``, ``densenet169`` and ``densenet201`` (timm's models of those names, which are
torchvision's).

Layout (growth rate k = 32, bottleneck width 4k; parameter counts equal timm's at 1000 classes:
densenet121 7,978,856, densenet169 14,149,480, densenet201 20,013,928): a 7x7 stride-2 stem conv
to 2k channels, BatchNorm, ReLU, a 3x3 stride-2 max pool (padding 1), then four dense blocks of
(6, 12, 24, 16), (6, 12, 32, 32) or (6, 12, 48, 32) layers. A dense layer is BN-ReLU-1x1 conv (to
4k) -BN-ReLU-3x3 conv (to k), and its k channels are concatenated to its input. Between blocks a
transition (BN-ReLU-1x1 conv halving the channels, 2x2 average pool) halves the resolution. A
final BatchNorm and ReLU (``norm5``), global average pooling, dropout and a linear
``classifier`` end the network. Padding is PyTorch's symmetric ``k // 2``.

Parameter names are torchvision's module paths without the ``features.`` prefix (``NameRules``
at the bottom of this file), norms one level down (``bn`` or ``gn``, see ``layers.Norm``):
``features.denseblock2.denselayer3.conv1.weight`` -> ``params/denseblock2/denselayer3/conv1/kernel``
(OIHW -> HWIO), ``features.transition1.norm.running_var`` ->
``batch_stats/transition1/norm/bn/var``, ``features.norm5`` -> ``norm5/bn``. timm, torchvision and
smp's encoders (``encoder.features...``) share these keys.

Encoder (``features_only=True``), smp's ``DenseNetEncoder`` maps: the stem after its ReLU (stride
2, 2k channels), inside each transition the output of its BN-ReLU, before the conv and the pooling
(strides 4, 8, 16: 256, 512 and 1024 / 1280 / 1792 channels), and ``norm5`` *before* its ReLU
(stride 32: 1024 / 1664 / 1920 channels) -- what smp's U-Net decoders were trained on. timm's
``features_only`` maps differ (block outputs before the transition norm, ``norm5`` after ReLU).

Differences from timm: ``output_stride`` must be 32 (the transitions downsample by pooling, which
neither timm nor smp trades for dilation); convs start from the kaiming fan-out init of the other
CNN families (timm: fan-in); the per-layer dropout (timm's ``proj_drop_rate``) and gradient
checkpointing (``memory_efficient``) are not offered.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxderm.models import layers
from flaxderm.models.encoder import ConvNet, check_plain_convnet, conv2d
from flaxderm.models.naming import NameRules, register_rules
from flaxderm.models.registry import register_model

Dtype = Any


class DenseLayer(nn.Module):
  """BN-ReLU-1x1 conv (to ``bn_size * growth_rate``) -BN-ReLU-3x3 conv (to ``growth_rate``); returns
  the input with the new channels appended."""
  growth_rate: int = 32
  bn_size: int = 4
  norm: str = "batch"
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    use_bias = self.norm == "none"
    y = nn.relu(layers.Norm(self.norm, name="norm1", **common)(x, train))
    y = conv2d(self.bn_size * self.growth_rate, 1, use_bias=use_bias, name="conv1", **common)(y)
    y = nn.relu(layers.Norm(self.norm, name="norm2", **common)(y, train))
    y = conv2d(self.growth_rate, 3, use_bias=use_bias, name="conv2", **common)(y)
    return jnp.concatenate([x, y.astype(x.dtype)], axis=-1)


class DenseBlock(nn.Module):
  """``depth`` dense layers (``denselayer1``...), each seeing every earlier layer's channels."""
  depth: int
  growth_rate: int = 32
  bn_size: int = 4
  norm: str = "batch"
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i in range(1, self.depth + 1):
      x = DenseLayer(self.growth_rate, self.bn_size, self.norm, self.dtype, self.param_dtype,
                     name=f"denselayer{i}")(x, train)
    return x


class Transition(nn.Module):
  """BN-ReLU, then a 1x1 conv to ``features`` and a 2x2 average pool. Returns the BN-ReLU output
  (the encoder map smp taps) and the transition's output."""
  features: int
  norm: str = "batch"
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    tap = nn.relu(layers.Norm(self.norm, name="norm", **common)(x, train))
    y = conv2d(self.features, 1, use_bias=self.norm == "none", name="conv", **common)(tap)
    return tap, nn.avg_pool(y, (2, 2), strides=(2, 2))


class DenseNet(ConvNet):
  """timm's DenseNet; see the module docstring for layout, names and the encoder maps.

  ``depths`` are the dense layers per block; ``growth_rate`` the channels each layer adds (the stem
  has twice as many); ``bn_size`` the bottleneck width in multiples of the growth rate.
  """
  depths: Sequence[int] = (6, 12, 24, 16)
  growth_rate: int = 32
  bn_size: int = 4

  def check(self, x: jax.Array, features_only: bool = False):
    if len(self.depths) != 4:
      raise ValueError(f"{self.model_name or 'DenseNet'}: depths must list 4 dense blocks (one per "
                       f"stride level from 4 to 32), got {tuple(self.depths)}")
    check_plain_convnet(self, "DenseNet", "average pooling in its transitions")
    super().check(x, features_only)

  def _block_channels(self) -> list[int]:
    """Channels at the end of each dense block (a transition then halves all but the last)."""
    channels, out = 2 * self.growth_rate, []
    for depth in self.depths:
      channels += depth * self.growth_rate
      out.append(channels)
      channels //= 2
    return out

  @property
  def feature_channels(self) -> tuple[int, ...]:
    return (2 * self.growth_rate, *self._block_channels())

  @nn.compact
  def __call__(self, x, train: bool = False, features_only: bool = False):
    self.check(x, features_only)
    common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    use_bias = self.norm == "none"

    def norm(name):
      return layers.Norm(self.norm, name=name, **common)

    x = conv2d(2 * self.growth_rate, 7, strides=2, use_bias=use_bias, name="conv0", **common)(x)
    x = nn.relu(norm("norm0")(x, train))
    features = [x]
    x = layers.max_pool(x, 3, strides=2, padding=1)
    for block, (depth, channels) in enumerate(zip(self.depths, self._block_channels()), start=1):
      x = DenseBlock(depth, self.growth_rate, self.bn_size, self.norm, name=f"denseblock{block}",
                     **common)(x, train)
      if block < len(self.depths):
        tap, x = Transition(channels // 2, self.norm, name=f"transition{block}", **common)(x, train)
        features.append(tap)
    x = norm("norm5")(x, train)
    if features_only:
      return features + [x]
    return self.head(nn.relu(x), train, name="classifier")


def _densenet(model_name: str, depths: Sequence[int], /, *, num_classes: int,
              **options) -> DenseNet:
  # Options may override the variant's depths (e.g. tiny test models).
  return DenseNet(num_classes=num_classes, model_name=model_name,
                  **{"depths": tuple(depths), **options})


@register_model(task="classification", family="densenet", default_input_size=224,
                test_options={"depths": (1, 2, 2, 1), "growth_rate": 8})
def densenet121(*, num_classes: int, **options) -> DenseNet:
  """DenseNet-121 (blocks 6-12-24-16, growth 32) as timm's; 8.0M parameters at 1000 classes."""
  return _densenet("densenet121", (6, 12, 24, 16), num_classes=num_classes, **options)


@register_model(task="classification", family="densenet", default_input_size=224)
def densenet169(*, num_classes: int, **options) -> DenseNet:
  """DenseNet-169 (blocks 6-12-32-32, growth 32) as timm's; 14.1M parameters at 1000 classes."""
  return _densenet("densenet169", (6, 12, 32, 32), num_classes=num_classes, **options)


@register_model(task="classification", family="densenet", default_input_size=224)
def densenet201(*, num_classes: int, **options) -> DenseNet:
  """DenseNet-201 (blocks 6-12-48-32, growth 32) as timm's; 20.0M parameters at 1000 classes."""
  return _densenet("densenet201", (6, 12, 48, 32), num_classes=num_classes, **options)


# timm/torchvision keep the trunk under ``features.``; flaxderm's modules sit at the top level.
register_rules("densenet", NameRules(rules=(
    ("features.conv0", "conv0"),
    ("features.norm{i}", "norm{i}/bn"),  # norm0 (stem), norm5 (final)
    ("features.denseblock{b}.denselayer{i}.conv{j}", "denseblock{b}/denselayer{i}/conv{j}"),
    ("features.denseblock{b}.denselayer{i}.norm{j}", "denseblock{b}/denselayer{i}/norm{j}/bn"),
    ("features.transition{b}.conv", "transition{b}/conv"),
    ("features.transition{b}.norm", "transition{b}/norm/bn"),
), head=("classifier",)))
