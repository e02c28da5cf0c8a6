"""SegNet (Badrinarayanan, Kendall & Cipolla 2017, "SegNet: A Deep Convolutional Encoder-Decoder
Architecture for Image Segmentation"), the lightweight encoder-decoder that paper 000 (§2.1) cites
for "employ[ing] indexing information from the max-pooling stages during upsampling".

* Encoder: the 13 convolutions of VGG16 with BatchNorm, in five stages of 2, 2, 3, 3, 3 3x3
  conv-BN-ReLU at ``w, 2w, 4w, 8w, 8w`` channels (``w = base_width``, VGG's 64), each stage ending
  in a 2x2 stride-2 max pool that records where every maximum was
  (``layers.max_pool_with_indices``). VGG16's fully connected layers are dropped.
* Decoder: the mirror image. Each stage first max-unpools with the indices of the matching encoder
  pool (``layers.max_unpool``: each value back at its argmax, zeros elsewhere; no learned
  upsampling and no skip of encoder features), then applies as many 3x3 conv-BN-ReLU as its
  encoder stage, the last one narrowing to the next finer stage's width; as in the authors' Caffe
  model, the finest decoder stage's last conv is the classifier (3x3 to ``num_classes``, with bias,
  no norm), so the decoder also has 13 convolutions. Logits, not softmax probabilities, come out.

Where flaxderm differs: the input must be divisible by 32 (five exact 2x2 pools); ``norm`` may be
"group"/"none"; convs followed by a norm have no bias; the convs start from He initialisation (the
paper's for its CamVid runs) and the classifier from flaxderm's Xavier head init; the paper notes
the encoder can start from ImageNet VGG16 weights, which are not loaded here.

Parameters at the default (``base_width`` 64, BatchNorm, 1 class), measured: 29,435,649; the
paper's Table 6 gives 29.5 M for SegNet.

Submodule names: ``encoder_{s}_{j}`` and ``decoder_{s}_{j}`` (stage ``s`` from the finest, conv
``j`` in order of application), ``segmentation_head``. There is no PyTorch counterpart to follow,
so the torch names are the mechanical ones.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from flaxderm.models import layers
from flaxderm.models.naming import NameRules, register_rules
from flaxderm.models.registry import register_model
from flaxderm.models.segmentation import (HEAD_INIT, Dtype, check_segmentation_input,
                                          hashable_options)

CONVS_PER_STAGE = (2, 2, 3, 3, 3)  # VGG16's 13 convolutions
WIDTH_MULTIPLIERS = (1, 2, 4, 8, 8)
STRIDE = 2 ** len(CONVS_PER_STAGE)


class SegNet(nn.Module):
  """SegNet: VGG16-BN encoder whose pooling indices drive the mirrored decoder's unpooling.

  Attributes:
    num_classes: output channels per pixel (1 = binary mask with sigmoid).
    base_width: channels of the first stage (VGG's 64); the stages have 1, 2, 4, 8, 8 times it.
    norm: "batch", "group" or "none" for every conv but the classifier.
    in_channels: input channels (checked).
    dtype / param_dtype: compute and parameter dtypes.
  """
  num_classes: int
  base_width: int = 64
  norm: str = "batch"
  in_channels: int = 3
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    check_segmentation_input("segnet", x, num_classes=self.num_classes,
                             in_channels=self.in_channels, multiple_of=STRIDE,
                             what="the total stride")
    widths = [self.base_width * m for m in WIDTH_MULTIPLIERS]
    conv = lambda features, name: layers.ConvNormAct(
        features, 3, norm=self.norm, kernel_init=nn.initializers.he_normal(), dtype=self.dtype,
        param_dtype=self.param_dtype, name=name)
    pool_indices = []
    for stage, (convs, width) in enumerate(zip(CONVS_PER_STAGE, widths)):
      for j in range(convs):
        x = conv(width, f"encoder_{stage}_{j}")(x, train)
      x, indices = layers.max_pool_with_indices(x)
      pool_indices.append(indices)
    for stage in reversed(range(len(CONVS_PER_STAGE))):
      x = layers.max_unpool(x, pool_indices[stage])
      convs = CONVS_PER_STAGE[stage]
      # The finest stage's last conv is the classifier below.
      outputs = [widths[stage]] * (convs - 1) + ([widths[stage - 1]] if stage else [])
      for j, width in enumerate(outputs):
        x = conv(width, f"decoder_{stage}_{j}")(x, train)
    return nn.Conv(self.num_classes, (3, 3), padding=layers.conv_padding(3), kernel_init=HEAD_INIT,
                   dtype=self.dtype, param_dtype=self.param_dtype, name="segmentation_head")(x)


@register_model(task="segmentation", family="segnet", default_input_size=256,
                test_options={"base_width": 8})
def segnet(*, num_classes: int, **options) -> SegNet:
  """SegNet (Badrinarayanan et al. 2017): VGG16-BN encoder, decoder upsampling by pool indices."""
  return SegNet(num_classes=num_classes, **hashable_options(options))


# No PyTorch counterpart; the mechanical names still give a faithful state dict export.
register_rules("segnet", NameRules(head=("segmentation_head",)))
