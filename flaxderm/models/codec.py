"""The separable-dilated encoder-decoder ("codec") of paper 004 (Lalitha & Vijayalakshmi, §3.2).

Paper 004 describes, in words only:

* §3.2.1 a feature extractor of "two standard convolutional layers with 3x3 kernels and 3 deep
  separable convolutional layers" (depthwise conv, then pointwise 1x1);
* §3.2.2 a pyramid over its output: "a standard convolution with a single 1x1 kernel and three
  [3x3] kernels ... dilated convolutions using expansion rates of 3, 3, and 6 respectively,
  alongside a pooling layer", whose outputs are fused;
* §3.2.3 the encoder passes the extractor's low-level features straight to the decoder and its
  high-level features through the pyramid and a 1x1 conv "to reduce the number of channels"; the
  decoder reduces the low-level features with a 1x1 conv, upsamples the pyramid output bilinearly,
  concatenates both, applies "a convolution operation with a kernel of 3x3", and upsamples the
  result to the image size.

That is a DeepLabV3+-style model on a small separable backbone. What the paper leaves open, and what
this implementation chose:

1. Strides and widths of the extractor are not given. Chosen (``w = width``): conv3x3 stride 2 -> w,
   conv3x3 -> 2w, then separable 3x3 stride 2 -> 4w, -> 8w, -> 8w, so the extractor's output stride
   is 16 (DeepLabV3+'s usual) and the input must be divisible by 16. Widths double with each
   downsampling but stop at 8w: the pyramid's three dilated standard 3x3 convs dominate the
   parameter count, and 16w input channels would make them larger than the extractor's savings.
2. Where the low-level features come from is not said. Chosen: the stride-4 output of the first
   separable layer (4w channels), DeepLabV3+'s convention.
3. "Three kernels sized 1x3" in §3.2.2 is read as 3x3 (the next sentence's dilated convolutions,
   and Figure 4's 3x3 dilated kernel). The pyramid convs are standard, not separable, as the text
   says nothing else; ``separable_pyramid=True`` makes them separable. Rates default to the
   published (3, 3, 6), repeated rate included; ``rates`` changes them.
4. Pyramid width: ``8w`` (256 at the default ``w = 32``, DeepLab's width), fused by concatenation
   and a 1x1 conv-norm-ReLU to 8w (the "1x1 to reduce the number of channels"). The paper's
   "first, the standard convolution with a kernel of 1x1 is used to reduce the number of channels"
   is read as the pyramid's 1x1 branch (Figure 5 is not in the text). No dropout is mentioned:
   ``dropout`` defaults to 0.
5. The decoder's 1x1 reduction of the low-level features has no stated width: ``w`` channels
   (4x fewer, like DeepLabV3+'s 256 -> 48 at w = 32 being ~5x).
6. The decoder has exactly a 1x1 conv, the fusion, one 3x3 conv and upsampling, so the 3x3 conv
   produces the class logits directly (with bias, no norm/activation), and bilinear upsampling
   (half-pixel centres) takes them from stride 4 to the input size.
7. Normalisation and activation are not mentioned: every conv but the last is conv-norm-ReLU
   (``norm`` "batch" by default), as in the DeepLab family the design comes from.

Parameters (see tests/models/test_segmentation_models.py): at equal width the codec has ~3x fewer than the
original U-Net (depth 4), in line with the paper's "about 1/3" for separable convs.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from flaxderm.models import layers
from flaxderm.models.naming import NameRules, register_rules
from flaxderm.models.registry import register_model
from flaxderm.models.segmentation import HEAD_INIT, check_segmentation_input, hashable_options

Dtype = Any

STRIDE = 16


class SepDilatedCodec(nn.Module):
  """Paper 004's codec: separable extractor -> dilated pyramid -> DeepLabV3+-like decoder.

  Attributes:
    num_classes: output channels per pixel (1 = binary mask with sigmoid).
    width: channels of the first conv; the extractor has w, 2w, 4w, 8w, 8w (see module docstring).
    rates: the pyramid's three dilation rates (published: 3, 3, 6).
    separable_pyramid: depthwise-separable pyramid convs instead of the standard ones.
    dropout: after the pyramid's 1x1 fusion (rng "dropout").
    norm: "batch", "group" or "none".
    in_channels: input channels (checked).
    dtype / param_dtype: compute and parameter dtypes.
  """
  num_classes: int
  width: int = 32
  rates: Sequence[int] = (3, 3, 6)
  separable_pyramid: bool = False
  dropout: float = 0.0
  norm: str = "batch"
  in_channels: int = 3
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    check_segmentation_input("sepdilated_codec", x, num_classes=self.num_classes,
                             in_channels=self.in_channels, multiple_of=STRIDE,
                             what="the extractor stride")
    w = self.width
    common = dict(norm=self.norm, dtype=self.dtype, param_dtype=self.param_dtype)
    y = layers.ConvNormAct(w, 3, strides=2, name="conv1", **common)(x, train)
    y = layers.ConvNormAct(2 * w, 3, name="conv2", **common)(y, train)
    low = layers.SeparableConv(4 * w, 3, strides=2, name="sepconv1", **common)(y, train)
    y = layers.SeparableConv(8 * w, 3, strides=2, name="sepconv2", **common)(low, train)
    y = layers.SeparableConv(8 * w, 3, strides=2, name="sepconv3", **common)(y, train)
    y = layers.ASPP(8 * w, tuple(self.rates), self.separable_pyramid, dropout=self.dropout,
                    name="pyramid", **common)(y, train)
    low = layers.ConvNormAct(w, 1, name="low_level_reduce", **common)(low, train)
    y = layers.resize_bilinear(y, low.shape[1], low.shape[2])
    y = jnp.concatenate([y, low], axis=-1)
    y = nn.Conv(self.num_classes, (3, 3), padding=layers.conv_padding(3), kernel_init=HEAD_INIT,
                dtype=self.dtype, param_dtype=self.param_dtype, name="segmentation_head")(y)
    return layers.resize_bilinear(y, x.shape[1], x.shape[2])


@register_model(task="segmentation", family="codec", default_input_size=256, test_options={})
def sepdilated_codec(*, num_classes: int, **options) -> SepDilatedCodec:
  """Paper 004's separable-conv + dilated-pyramid encoder-decoder; ~3x fewer params than a U-Net."""
  return SepDilatedCodec(num_classes=num_classes, **hashable_options(options))


# No PyTorch counterpart; the mechanical names still give a faithful state dict export.
register_rules("codec", NameRules())
