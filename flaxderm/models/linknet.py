"""LinkNet (Chaurasia & Culurciello 2017, "LinkNet: Exploiting Encoder Representations for
Efficient Semantic Segmentation") on any registered encoder, structured like smp's ``Linknet``.

Data flow (smp ``decoders/linknet``): five decoder blocks from the stride-32 map up to stride 1,
each conv1x1-norm-ReLU to a quarter of its input width -> 4x4 stride-2 transposed conv-norm-ReLU
-> conv1x1-norm-ReLU to the width of the next encoder map, which is then *added* (LinkNet fuses
skips by sum, not concatenation). The last block ends at 32 channels (smp's fixed
``prefinal_channels``) and has no skip; a 1x1 segmentation head without activation follows. Like
smp, all four encoder skips are used (the paper has three; its encoder has no stride-2 map). Where
an encoder map has zero channels (ViT/Swin at stride 2), the block keeps the previous width and
adds nothing, as smp does.

Submodule names map smp's module paths: ``decoder.blocks.{i}.block.{0,1,2}`` ->
``decoder_blocks_{i}/{reduce,upsample,expand}`` (each ``{conv,norm/bn}``),
``segmentation_head.0`` -> ``segmentation_head``, ``classification_head.3`` ->
``classification_head/fc``, ``encoder.*`` -> ``encoder/*``.

Where this differs from smp: only in how the transposed conv is computed (``TransposedConv4x4``,
the same map); its kernel is stored in the layout the torch weight converts to mechanically.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from flaxderm.models import layers
from flaxderm.models.naming import (SEGMENTATION_HEAD_RULES, SEGMENTATION_HEADS, NameRules,
                                     conv_norm, register_rules)
from flaxderm.models.registry import register_model
from flaxderm.models.segmentation import (DECODER_INIT, TEST_ENCODER, Dtype, SegmentationModel,
                                          check_choice, hashable_options)
from flaxderm.models.unet import depth_to_space2x

PREFINAL_CHANNELS = 32  # smp's Linknet fixes the last decoder width
# Output row 2i + a of a stride-2, padding-1 transposed conv with a 4-tap kernel reads input rows
# i - 1, i, i + 1 through kernel taps _TAPS[a] (tap 4 = none: the zero row padded onto the kernel).
_TAPS = np.array([[3, 1, 4], [4, 2, 0]])


class TransposedConv4x4(nn.Module):
  """PyTorch's ``ConvTranspose2d(cin, features, kernel_size=4, stride=2, padding=1)``, computed as
  a 3x3 conv to ``4 * features`` channels and a depth-to-space (sub-pixel convolution).

  Each output phase (a, b) of the transposed conv sees a 2x2 input neighbourhood through four of the
  sixteen taps; gathering them into one 3x3 kernel avoids the input-dilated convolution that
  ``lax.conv_transpose`` lowers to, which XLA:CPU runs slowly (see ``unet.Upsample2x``):
  forward plus gradient on (8, 64, 64, 32) -> 32 channels took 0.7-0.9 s against 7-10 s for
  ``nn.ConvTranspose`` on a loaded 2-core CPU.

  ``kernel`` is (4, 4, features, cin) = the torch weight (cin, features, 4, 4) under the converter's
  OIHW -> HWIO transpose, i.e. ``nn.ConvTranspose(transpose_kernel=True)``'s layout. The default
  kernel init is PyTorch's for that layer (Kaiming-uniform, a = sqrt(5): bound
  1 / sqrt(16 * features)), which smp keeps, since its decoder init only visits ``Conv2d``; the bias
  starts at zero (PyTorch draws it from the same bound).
  """
  features: int
  kernel_init: Callable = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    f, cin = self.features, x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (4, 4, f, cin), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (f,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    padded = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))
    taps = padded[_TAPS[:, :, None, None], _TAPS[None, None]]  # (a, dy, b, dx, f, cin)
    subpixel = taps.transpose(1, 3, 5, 0, 2, 4).reshape(3, 3, cin, 4 * f)
    y = jax.lax.conv_general_dilated(x, subpixel, (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return depth_to_space2x(y, f) + bias


class Upsample(nn.Module):
  """Transposed conv (always with a bias, as smp's) -> norm -> ReLU (smp's ``TransposeX2``)."""
  features: int
  norm: str = "batch"
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = TransposedConv4x4(self.features, name="conv", **common)(x)
    return nn.relu(layers.Norm(self.norm, name="norm", **common)(x, train))


class LinkNetBlock(nn.Module):
  """conv1x1 -> x2 transposed conv -> conv1x1, each norm-ReLU (smp's Linknet ``DecoderBlock``)."""
  features: int
  norm: str = "batch"
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    common = dict(norm=self.norm, kernel_init=DECODER_INIT, dtype=self.dtype,
                  param_dtype=self.param_dtype)
    quarter = x.shape[-1] // 4
    x = layers.ConvNormAct(quarter, 1, name="reduce", **common)(x, train)
    x = Upsample(quarter, self.norm, dtype=self.dtype, param_dtype=self.param_dtype,
                 name="upsample")(x, train)
    return layers.ConvNormAct(self.features, 1, name="expand", **common)(x, train)


class LinkNet(SegmentationModel):
  """smp's ``Linknet``: an encoder and LinkNet's additive-skip decoder.

  Attributes (besides ``SegmentationModel``'s):
    norm: normalisation of the decoder convs (smp's ``decoder_use_norm``): "batch", "group" or
      "none". The encoder's own norm goes in ``encoder_kwargs``.
  """
  norm: str = "batch"

  model_name = "linknet"
  head_kernel_size = 1

  def decode(self, features, train):
    check_choice(self.model_name, "norm", self.norm, layers.NORMS)
    skips = features[-2::-1]  # strides 16, 8, 4, 2
    y = features[-1]
    width = y.shape[-1]
    for i in range(len(skips) + 1):
      skip = skips[i] if i < len(skips) else None
      # A zero-channel map (no stride-2 features) keeps the width and is not added.
      width = PREFINAL_CHANNELS if skip is None else (skip.shape[-1] or width)
      y = LinkNetBlock(width, self.norm, dtype=self.dtype, param_dtype=self.param_dtype,
                       name=f"decoder_blocks_{i}")(y, train)
      if skip is not None and skip.shape[-1]:
        y = y + skip.astype(y.dtype)
    return y


@register_model(task="segmentation", family="linknet", default_input_size=256,
                test_options=TEST_ENCODER)
def linknet(*, num_classes: int, **options) -> LinkNet:
  """LinkNet (additive skips, 4x4 transposed-conv upsampling) on an encoder (resnet34)."""
  return LinkNet(num_classes=num_classes, **hashable_options(options))


register_rules("linknet", NameRules(rules=(
    *(rule for k, name in enumerate(("reduce", "upsample", "expand"))
      for rule in conv_norm(f"decoder.blocks.{{i}}.block.{k}", f"decoder_blocks_{{i}}/{name}")),
    *SEGMENTATION_HEAD_RULES,
), head=SEGMENTATION_HEADS), segmentation=True)
