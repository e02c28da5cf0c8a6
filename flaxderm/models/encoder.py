"""The base of the CNN classifiers, which are also the segmentation models' encoders.

``ConvNet`` holds the options every CNN family accepts (``num_classes``, ``in_channels``,
``output_stride``, ``norm``, dropout and stochastic depth, ``zero_init_last``, dtypes) and the
plumbing of the encoder contract (flaxderm/models/__init__.py): input checks, the pooled linear
head. ``conv2d`` is a conv with torchvision's init named like the PyTorch module, and
``stage_dilations`` the schedule by which the last stages trade stride for dilation when
``output_stride`` is 16 or 8. ``check_plain_convnet`` refuses the options a network without
residual branches or dilation cannot honour.

Every CNN family subclasses ``ConvNet``; the transformers (vit.py, swin.py) have their own options.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxderm.models import layers

Dtype = Any

# torchvision's kaiming_normal_(mode="fan_out", nonlinearity="relu") for every conv.
CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
OUTPUT_STRIDES = (8, 16, 32)
FEATURE_STRIDES = (2, 4, 8, 16, 32)


def conv2d(features: int, kernel_size: int, *, strides: int = 1, dilation: int = 1,
           groups: int = 1, padding: str = "symmetric", use_bias: bool = False,
           dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32,
           name: str | None = None) -> nn.Module:
  """A square conv with the torchvision init; a function rather than ``layers.ConvNormAct`` so the
  conv and its norm are siblings named like the PyTorch modules (``conv1``/``bn1``)."""
  return layers.conv(features, kernel_size, strides=strides, dilation=dilation, groups=groups,
                     padding=layers.conv_padding(kernel_size, dilation, padding),
                     use_bias=use_bias, kernel_init=CONV_INIT, dtype=dtype,
                     param_dtype=param_dtype, name=name)


def stage_dilations(strides: Sequence[int], output_stride: int,
                    stride: int = 1) -> list[tuple[int, int, int]]:
  """``(stride, first_dilation, dilation)`` per stage, given each stage's nominal stride.

  ``stride`` is the network stride before the first stage. Once a stage's stride would take the
  network past ``output_stride``, it becomes dilation instead (timm's rule, torchvision's
  ``replace_stride_with_dilation``); the stage's first block keeps the previous dilation
  (``first_dilation``) so its receptive field matches the strided original.
  """
  dilation, schedule = 1, []
  for s in strides:
    previous = dilation
    if stride * s > output_stride:
      dilation, s = dilation * s, 1
    else:
      stride *= s
    schedule.append((s, previous, dilation))
  return schedule


class ConvNet(nn.Module):
  """Options and encoder plumbing common to the CNN classifiers (ResNet, EfficientNet, MobileNetV2).

  ``num_classes`` 0 returns the pooled features. ``drop_rate`` is dropout before the classifier,
  ``drop_path_rate`` the stochastic depth of the residual branches (rng "dropout").
  ``zero_init_last`` starts each residual branch's last norm at gamma 0, so every block begins as
  the identity (Goyal et al. 2017; torchvision's ``zero_init_residual``, timm's ``zero_init_last``).
  ``model_name`` is the registered name, used in error messages.
  """
  num_classes: int = 1000
  in_channels: int = 3
  output_stride: int = 32
  norm: str = "batch"
  drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  zero_init_last: bool = False
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  model_name: str = ""

  def check(self, x: jax.Array, features_only: bool = False):
    """Validates options and input before any op can fail obscurely. A classifier takes any
    size, as timm's (pretrained checkpoints come at 240 or 260 px); the encoder maps must sit at
    exact strides, so ``features_only`` needs sizes divisible by ``output_stride``."""
    name = self.model_name or type(self).__name__
    if self.output_stride not in OUTPUT_STRIDES:
      raise ValueError(f"{name}: output_stride must be one of {OUTPUT_STRIDES}, got "
                       f"{self.output_stride!r}")
    layers.check_input(name, x, in_channels=self.in_channels,
                       multiple_of=self.output_stride if features_only else None)

  def head(self, x: jax.Array, train: bool, name: str) -> jax.Array:
    """Global average pooling, then dropout and the linear classifier (none at 0 classes)."""
    x = jnp.mean(x, axis=(1, 2))
    if self.num_classes == 0:
      return x
    x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name=name)(x)


def check_plain_convnet(model: ConvNet, family: str, downsampling: str):
  """ValueError for the ``ConvNet`` options a network without residual branches or dilation
  (DenseNet, VGG, Inception) cannot honour, rather than silently ignoring them."""
  name = model.model_name or type(model).__name__
  if model.output_stride != 32:
    raise ValueError(f"{name}: output_stride must be 32, got {model.output_stride!r}: {family} "
                     f"downsamples by {downsampling}, which it cannot trade for dilation (smp's "
                     f"{family} encoders refuse dilation too)")
  for option in ("drop_path_rate", "zero_init_last"):
    if getattr(model, option):
      raise ValueError(f"{name}: {option}={getattr(model, option)!r} needs residual branches, "
                       f"which {family} has none of")
