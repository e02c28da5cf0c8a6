"""VGG (Simonyan & Zisserman 2015, "Very Deep Convolutional Networks for Large-Scale Image
Recognition") in timm's layout: ``vgg16``, ``vgg16_bn`` and ``vgg19_bn`` (timm's models of those
names).

Layout (parameter counts equal timm's at 1000 classes: vgg16 138,357,544, vgg16_bn 138,365,992,
vgg19_bn 143,678,248): five stages of 3x3 convs (with bias; configuration D: 2-2-3-3-3 convs of
64, 128, 256, 512, 512 channels; E: 2-2-4-4-4), each conv followed by BatchNorm in the ``_bn``
variants and a ReLU, each stage by a 2x2 max pool. timm's ``pre_logits`` (``ConvMlp``) replaces
the original fully connected layers by convolutions: ``fc1`` a 7x7 conv (no padding) to
``4096 * mlp_ratio`` channels, ReLU, dropout, ``fc2`` a 1x1 conv to 4096, ReLU; a map smaller than
7x7 (inputs under 224 px) is first average-pooled adaptively up to 7 on that side, as timm does.
The head is global average pooling, dropout and a linear ``fc``; ``num_classes=0`` returns the
pooled ``pre_logits`` output (4096 features), as timm's VGG does.

Parameter names are timm's (and torchvision's) ``features`` indices, ``.N`` turned into ``_N``, so
a checkpoint converts mechanically: ``features.7.weight`` -> ``params/features_7/kernel`` (OIHW ->
HWIO), ``features.8.running_mean`` -> ``batch_stats/features_8/bn/mean`` (norms add a level, see
``layers.Norm``), ``pre_logits.fc1`` -> ``pre_logits/fc1``; timm's ``head.fc`` is ``fc``. The
numbering counts every module of timm's ``features`` sequence (conv, [norm], ReLU; a pool after
each stage), so ``norm="none"`` is ``vgg16`` and a norm is ``vgg16_bn``.

Encoder (``features_only=True``), smp's ``VGGEncoder`` maps: each stage's output before its max
pool, for stages 2 to 5 (strides 2, 4, 8, 16: 128, 256, 512, 512 channels), and the last max pool's
output (stride 32, 512 channels). smp's first map, stage 1 at stride 1, is not part of flaxderm's
encoder contract. ``pre_logits`` and the head are not part of the encoder.

Differences from timm: ``output_stride`` must be 32 (the max pools downsample, which neither timm
nor smp trades for dilation), and the head's linear layer keeps flax's default init (timm: normal,
std 0.01).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxderm.models import layers
from flaxderm.models.encoder import CONV_INIT, ConvNet, check_plain_convnet, conv2d
from flaxderm.models.naming import NameRules, register_rules
from flaxderm.models.registry import register_model

Dtype = Any

# Conv widths per stage; a 2x2 max pool follows each stage.
VGG16 = ((64,) * 2, (128,) * 2, (256,) * 3, (512,) * 3, (512,) * 3)
VGG19 = ((64,) * 2, (128,) * 2, (256,) * 4, (512,) * 4, (512,) * 4)


class ConvMlp(nn.Module):
  """timm's VGG ``pre_logits``: [adaptive average pool up to ``kernel_size``] -> ``fc1`` (k x k
  conv, no padding) -> ReLU -> dropout -> ``fc2`` (1x1 conv) -> ReLU."""
  features: int = 4096
  hidden_features: int = 4096
  kernel_size: int = 7
  drop_rate: float = 0.0
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    k = self.kernel_size
    common = dict(use_bias=True, kernel_init=CONV_INIT, dtype=self.dtype,
                  param_dtype=self.param_dtype)
    _, h, w, _ = x.shape
    if h < k or w < k:
      x = layers.adaptive_avg_pool(x, (max(k, h), max(k, w)))
    x = nn.relu(layers.conv(self.hidden_features, k, name="fc1", **common)(x))
    x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
    return nn.relu(layers.conv(self.features, 1, name="fc2", **common)(x))


class VGG(ConvNet):
  """timm's VGG; see the module docstring for layout, names and the encoder maps.

  ``stages`` are the conv widths of each stage; ``mlp_ratio`` scales ``pre_logits``' hidden width
  (timm's option); ``drop_rate`` is the dropout inside ``pre_logits`` and before ``fc``.
  """
  stages: Sequence[Sequence[int]] = VGG16
  mlp_ratio: float = 1.0
  norm: str = "none"

  def check(self, x: jax.Array, features_only: bool = False):
    if len(self.stages) != 5:
      raise ValueError(f"{self.model_name or 'VGG'}: stages must list 5 stages (one per stride "
                       f"level), got {len(self.stages)}")
    check_plain_convnet(self, "VGG", "max pooling")
    super().check(x, features_only)

  @property
  def feature_channels(self) -> tuple[int, ...]:
    return (*(stage[-1] for stage in self.stages[1:]), self.stages[-1][-1])

  @nn.compact
  def __call__(self, x, train: bool = False, features_only: bool = False):
    self.check(x, features_only)
    common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    normed = self.norm != "none"
    features, index = [], 0  # index: the module's position in timm's ``features`` sequence
    for stage in self.stages:
      for width in stage:
        x = conv2d(width, 3, use_bias=True, name=f"features_{index}", **common)(x)
        if normed:
          x = layers.Norm(self.norm, name=f"features_{index + 1}", **common)(x, train)
        x = nn.relu(x)
        index += 3 if normed else 2
      features.append(x)
      x = layers.max_pool(x, 2, strides=2)
      index += 1
    if features_only:
      return features[1:] + [x]
    x = ConvMlp(4096, int(4096 * self.mlp_ratio), drop_rate=self.drop_rate, name="pre_logits",
                **common)(x, train)
    return self.head(x, train, name="fc")


def _vgg(model_name: str, stages: Sequence[Sequence[int]], norm: str, /, *, num_classes: int,
         **options) -> VGG:
  # Options may override the variant's stages (e.g. tiny test models).
  return VGG(num_classes=num_classes, model_name=model_name,
             **{"stages": tuple(map(tuple, stages)), "norm": norm, **options})


@register_model(task="classification", family="vgg", default_input_size=224,
                test_options={"stages": ((16,), (16,), (32, 32), (32, 32), (32, 32)),
                              "mlp_ratio": 1 / 64})
def vgg16(*, num_classes: int, **options) -> VGG:
  """VGG-16 (configuration D, no norm) as timm's ``vgg16``; 138.4M parameters at 1000 classes."""
  return _vgg("vgg16", VGG16, "none", num_classes=num_classes, **options)


@register_model(task="classification", family="vgg", default_input_size=224)
def vgg16_bn(*, num_classes: int, **options) -> VGG:
  """VGG-16 with BatchNorm as timm's ``vgg16_bn``; 138.4M parameters at 1000 classes."""
  return _vgg("vgg16_bn", VGG16, "batch", num_classes=num_classes, **options)


@register_model(task="classification", family="vgg", default_input_size=224)
def vgg19_bn(*, num_classes: int, **options) -> VGG:
  """VGG-19 with BatchNorm (configuration E) as timm's ``vgg19_bn``; 143.7M parameters."""
  return _vgg("vgg19_bn", VGG19, "batch", num_classes=num_classes, **options)


# timm's classifier sits in a ClassifierHead (``head.fc``); flaxderm's is a top-level ``fc``.
# ``pre_logits`` is not part of an encoder, so a classifier checkpoint's copy is dropped there.
register_rules("vgg", NameRules(rules=(("head.fc", "fc"),), head=("head.fc",),
                                unused=("pre_logits",)))
