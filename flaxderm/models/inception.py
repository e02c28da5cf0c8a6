"""Inception-v3 (Szegedy et al. 2016, "Rethinking the Inception Architecture for Computer Vision")
in timm's layout: ``inception_v3`` (timm's model of that name, torchvision's ``Inception3``).

Layout (23,834,568 parameters at 1000 classes, 21,806,058 at 10, as timm): a stem of 3x3 convs
(``Conv2d_1a_3x3`` stride 2, ``Conv2d_2a_3x3``, ``Conv2d_2b_3x3``), a 3x3 stride-2 max pool, a 1x1
and a 3x3 conv (``Conv2d_3b_1x1``, ``Conv2d_4a_3x3``), another max pool, then the Inception
modules ``Mixed_5b``..``Mixed_5d`` (A: 1x1, 5x5, double 3x3 and pooled branches),
``Mixed_6a`` (B: grid reduction), ``Mixed_6b``..``Mixed_6e`` (C: factorised 1x7/7x1 branches),
``Mixed_7a`` (D: grid reduction) and ``Mixed_7b``, ``Mixed_7c`` (E: split 1x3/3x1 branches),
global average pooling, dropout and a linear ``fc``. Every conv is timm's ``ConvNormAct``
(conv without bias, BatchNorm eps 1e-3, ReLU); the pooled branches average 3x3 windows counting
the zero padding (PyTorch's ``count_include_pad``). As in timm, the stem's 3x3 convs but
``Conv2d_2b_3x3``, the strided convs of the grid reductions and the max pools are unpadded, so
classifier inputs may have any size from 75x75 up (299x299 is the size the weights were trained
at); smaller ones are a ValueError.

Parameter names are timm's (and torchvision's) module paths: ``Mixed_6b.branch7x7_2.conv.weight``
-> ``params/Mixed_6b/branch7x7_2/conv/kernel`` (OIHW -> HWIO), ``Mixed_6b.branch7x7_2.bn`` ->
``Mixed_6b/branch7x7_2/bn/bn`` (norms one level down, see ``layers.Norm``). The rules at the bottom
keep the trailing ``_N`` of the branch names, which the mechanical rule would read as an index.
The auxiliary classifier is not built (timm's default ``aux_logits=False``): the ``AuxLogits.*``
keys of torchvision's checkpoint are dropped on import, as timm does.

Encoder (``features_only=True``): timm's ``feature_info`` taps, ``Conv2d_2b_3x3``,
``Conv2d_4a_3x3``, ``Mixed_5d``, ``Mixed_6e`` and ``Mixed_7c`` (64, 192, 288, 768, 2048 channels),
but with every conv padded by ``k // 2`` and every max pool by 1, as smp's Inception-v4 and
Inception-ResNet-v2 encoders do: at 96 px the unpadded layout gives maps of 45, 20, 9, 4 and 1
pixels, which a decoder cannot line up, the padded one 48, 24, 12, 6 and 3 (exactly H / 2 ...
H / 32 for inputs divisible by 32). The parameters are the same in both modes, so a classifier
checkpoint loads into the encoder; the maps are those of the re-padded timm network (what smp
would build), not of timm's ``features_only`` model. ``output_stride`` must be 32.

Differences from timm: convs start from the kaiming fan-out init of the other CNN families and
``fc`` from flax's default (timm: normal with std 0.1 for both); no auxiliary classifier.
"""
from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxderm.models import layers
from flaxderm.models.encoder import CONV_INIT, ConvNet, check_plain_convnet
from flaxderm.models.naming import NORM_CHILDREN, NameRules, register_rules
from flaxderm.models.registry import register_model

Dtype = Any
Kernel = int | tuple[int, int]


def check_unpadded_input(model: ConvNet, x: jax.Array, features_only: bool, min_size: int):
  """Input checks of a network whose classifier keeps the reference's unpadded convs (any size from
  ``min_size`` up) while its encoder pads them (sizes divisible by 32); shared with Xception."""
  name = model.model_name or type(model).__name__
  if features_only:
    layers.check_input(name, x, in_channels=model.in_channels, multiple_of=32)
    return
  layers.check_input(name, x, in_channels=model.in_channels)
  h, w = x.shape[1:3]
  if min(h, w) < min_size:
    raise ValueError(f"{name}: input {h}x{w} is smaller than {min_size}x{min_size}, the least its "
                     f"classifier takes (its convolutions are unpadded, as in timm); "
                     f"features_only pads them and takes any size divisible by 32")


def _pair(k: Kernel) -> tuple[int, int]:
  return (k, k) if isinstance(k, int) else tuple(k)


class BasicConv(nn.Module):
  """timm's Inception ``ConvNormAct``: conv (no bias) -> norm (eps 1e-3) -> ReLU, children ``conv``
  and ``bn``. Padded by ``k // 2`` on each side unless ``unpadded`` (as timm has it) and not
  ``pad_all`` (the encoder layout)."""
  features: int
  kernel: Kernel = 1
  strides: int = 1
  unpadded: bool = False
  pad_all: bool = False
  norm: str = "batch"
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    kh, kw = _pair(self.kernel)
    padded = self.pad_all or not self.unpadded
    pads = ((kh // 2, kh // 2), (kw // 2, kw // 2)) if padded else ((0, 0), (0, 0))
    common = dict(strides=self.strides, padding=pads, use_bias=self.norm == "none",
                  kernel_init=CONV_INIT, dtype=self.dtype, param_dtype=self.param_dtype,
                  name="conv")
    # layers.conv picks XLA's fastest form of square kernels (1x1 as a matmul); it has none other.
    conv = (layers.conv(self.features, kh, **common) if kh == kw
            else nn.Conv(self.features, (kh, kw), **common))
    x = layers.Norm(self.norm, epsilon=1e-3, dtype=self.dtype, param_dtype=self.param_dtype,
                    name="bn")(conv(x), train)
    return nn.relu(x)


def max_pool(x: jax.Array, pad_all: bool) -> jax.Array:
  """The 3x3 stride-2 max pool: unpadded as in timm, padded by 1 in the encoder layout."""
  return layers.max_pool(x, 3, strides=2, padding=1 if pad_all else 0)


def avg_pool(x: jax.Array) -> jax.Array:
  """The pooled branches' 3x3 average, padded by 1 and counting the padding (PyTorch's default)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=True)


class InceptionModule(nn.Module):
  """Options shared by the Inception modules A-E: those of their ``BasicConv`` children."""
  norm: str = "batch"
  pad_all: bool = False
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  def conv(self, x, train, features: int, kernel: Kernel, name: str, *, strides: int = 1,
           unpadded: bool = False):
    return BasicConv(features, kernel, strides, unpadded, self.pad_all, self.norm, self.dtype,
                     self.param_dtype, name=name)(x, train)


class InceptionA(InceptionModule):
  """1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg pool -> 1x1 (``pool_features``)."""
  pool_features: int = 32

  @nn.compact
  def __call__(self, x, train: bool = False):
    b1 = self.conv(x, train, 64, 1, "branch1x1")
    b5 = self.conv(x, train, 48, 1, "branch5x5_1")
    b5 = self.conv(b5, train, 64, 5, "branch5x5_2")
    b3 = self.conv(x, train, 64, 1, "branch3x3dbl_1")
    b3 = self.conv(b3, train, 96, 3, "branch3x3dbl_2")
    b3 = self.conv(b3, train, 96, 3, "branch3x3dbl_3")
    bp = self.conv(avg_pool(x), train, self.pool_features, 1, "branch_pool")
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(InceptionModule):
  """Grid reduction: 3x3 stride 2 | 1x1 -> 3x3 -> 3x3 stride 2 | max pool."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    b3 = self.conv(x, train, 384, 3, "branch3x3", strides=2, unpadded=True)
    bd = self.conv(x, train, 64, 1, "branch3x3dbl_1")
    bd = self.conv(bd, train, 96, 3, "branch3x3dbl_2")
    bd = self.conv(bd, train, 96, 3, "branch3x3dbl_3", strides=2, unpadded=True)
    return jnp.concatenate([b3, bd, max_pool(x, self.pad_all)], axis=-1)


class InceptionC(InceptionModule):
  """1x1 | 1x1 -> 1x7 -> 7x1 | 1x1 -> 7x1 -> 1x7 -> 7x1 -> 1x7 | avg pool -> 1x1; the 7-wide
  branches run at ``channels_7x7`` until their last conv."""
  channels_7x7: int = 128

  @nn.compact
  def __call__(self, x, train: bool = False):
    c7 = self.channels_7x7
    b1 = self.conv(x, train, 192, 1, "branch1x1")
    b7 = self.conv(x, train, c7, 1, "branch7x7_1")
    b7 = self.conv(b7, train, c7, (1, 7), "branch7x7_2")
    b7 = self.conv(b7, train, 192, (7, 1), "branch7x7_3")
    bd = self.conv(x, train, c7, 1, "branch7x7dbl_1")
    for i, kernel in enumerate(((7, 1), (1, 7), (7, 1), (1, 7)), start=2):
      bd = self.conv(bd, train, 192 if i == 5 else c7, kernel, f"branch7x7dbl_{i}")
    bp = self.conv(avg_pool(x), train, 192, 1, "branch_pool")
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(InceptionModule):
  """Grid reduction: 1x1 -> 3x3 stride 2 | 1x1 -> 1x7 -> 7x1 -> 3x3 stride 2 | max pool."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    b3 = self.conv(x, train, 192, 1, "branch3x3_1")
    b3 = self.conv(b3, train, 320, 3, "branch3x3_2", strides=2, unpadded=True)
    b7 = self.conv(x, train, 192, 1, "branch7x7x3_1")
    b7 = self.conv(b7, train, 192, (1, 7), "branch7x7x3_2")
    b7 = self.conv(b7, train, 192, (7, 1), "branch7x7x3_3")
    b7 = self.conv(b7, train, 192, 3, "branch7x7x3_4", strides=2, unpadded=True)
    return jnp.concatenate([b3, b7, max_pool(x, self.pad_all)], axis=-1)


class InceptionE(InceptionModule):
  """1x1 | 1x1 -> (1x3 ; 3x1) | 1x1 -> 3x3 -> (1x3 ; 3x1) | avg pool -> 1x1."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    b1 = self.conv(x, train, 320, 1, "branch1x1")
    b3 = self.conv(x, train, 384, 1, "branch3x3_1")
    b3 = [self.conv(b3, train, 384, (1, 3), "branch3x3_2a"),
          self.conv(b3, train, 384, (3, 1), "branch3x3_2b")]
    bd = self.conv(x, train, 448, 1, "branch3x3dbl_1")
    bd = self.conv(bd, train, 384, 3, "branch3x3dbl_2")
    bd = [self.conv(bd, train, 384, (1, 3), "branch3x3dbl_3a"),
          self.conv(bd, train, 384, (3, 1), "branch3x3dbl_3b")]
    bp = self.conv(avg_pool(x), train, 192, 1, "branch_pool")
    return jnp.concatenate([b1, *b3, *bd, bp], axis=-1)


# (name, module, options), in order; the encoder taps the last module of each resolution.
MIXED = (
    ("Mixed_5b", InceptionA, {"pool_features": 32}),
    ("Mixed_5c", InceptionA, {"pool_features": 64}),
    ("Mixed_5d", InceptionA, {"pool_features": 64}),
    ("Mixed_6a", InceptionB, {}),
    ("Mixed_6b", InceptionC, {"channels_7x7": 128}),
    ("Mixed_6c", InceptionC, {"channels_7x7": 160}),
    ("Mixed_6d", InceptionC, {"channels_7x7": 160}),
    ("Mixed_6e", InceptionC, {"channels_7x7": 192}),
    ("Mixed_7a", InceptionD, {}),
    ("Mixed_7b", InceptionE, {}),
    ("Mixed_7c", InceptionE, {}),
)
TAPS = ("Mixed_5d", "Mixed_6e", "Mixed_7c")


class InceptionV3(ConvNet):
  """timm's Inception-v3; see the module docstring for layout, names and the encoder maps.
  ``drop_path_rate`` and ``zero_init_last`` are refused (no residual branches)."""
  min_input_size: ClassVar[int] = 75

  @property
  def feature_channels(self) -> tuple[int, ...]:
    return (64, 192, 288, 768, 2048)

  def check(self, x: jax.Array, features_only: bool = False):
    check_plain_convnet(self, "Inception", "strided convolutions and max pools")
    check_unpadded_input(self, x, features_only, self.min_input_size)

  @nn.compact
  def __call__(self, x, train: bool = False, features_only: bool = False):
    self.check(x, features_only)
    common = dict(norm=self.norm, pad_all=features_only, dtype=self.dtype,
                  param_dtype=self.param_dtype)
    x = BasicConv(32, 3, strides=2, unpadded=True, name="Conv2d_1a_3x3", **common)(x, train)
    x = BasicConv(32, 3, unpadded=True, name="Conv2d_2a_3x3", **common)(x, train)
    x = BasicConv(64, 3, name="Conv2d_2b_3x3", **common)(x, train)
    features = [x]
    x = BasicConv(80, 1, name="Conv2d_3b_1x1", **common)(max_pool(x, features_only), train)
    x = BasicConv(192, 3, unpadded=True, name="Conv2d_4a_3x3", **common)(x, train)
    features.append(x)
    x = max_pool(x, features_only)
    for name, module, options in MIXED:
      x = module(**common, **options, name=name)(x, train)
      if name in TAPS:
        features.append(x)
    if features_only:
      return features
    return self.head(x, train, name="fc")


@register_model(task="classification", family="inception", default_input_size=299,
                min_input_size=InceptionV3.min_input_size, test_options={})
def inception_v3(*, num_classes: int, **options) -> InceptionV3:
  """Inception-v3 (timm inception_v3, no auxiliary logits); 23.8M parameters at 1000 classes."""
  return InceptionV3(num_classes=num_classes, model_name="inception_v3", **options)


def _branch_rules() -> tuple[tuple[str, str], ...]:
  """Rules for the branch convs whose names end in ``_N`` (``branch7x7_2``): kept whole, not read
  as the index ``branch7x7.2`` the mechanical rule would make of them."""
  bases = ("branch5x5", "branch3x3dbl", "branch3x3", "branch7x7", "branch7x7dbl", "branch7x7x3")
  rules = []
  for block, _, _ in MIXED:
    for base in bases:
      rules.append((f"{block}.{base}_{{j}}.conv", f"{block}/{base}_{{j}}/conv"))
      rules.extend((f"{block}.{base}_{{j}}.bn", f"{block}/{base}_{{j}}/bn/{child}")
                   for child in NORM_CHILDREN)
  return tuple(rules)


register_rules("inception", NameRules(rules=_branch_rules(), head=("fc",), unused=("AuxLogits",)))
