"""FCN-8s (Long, Shelhamer & Darrell 2015, "Fully Convolutional Networks for Semantic
Segmentation"), the first end-to-end fully convolutional segmentation network (paper 000, §2.1).

Data flow, with the paper's (Caffe) layer names as submodule names:

* the encoder's features at strides 8, 16 and 32 (FCN's ``pool3``, ``pool4``, ``pool5``);
* on ``pool5``, VGG's classifier turned into convolutions, ``fc6`` (7x7 conv to 4096, ReLU,
  dropout 0.5) and ``fc7`` (1x1 conv to 4096, ReLU, dropout 0.5);
* ``score_fr``, ``score_pool4``, ``score_pool3``: 1x1 convs to ``num_classes`` on ``fc7``,
  ``pool4`` and ``pool3``, zero-initialised as the paper's class scoring layers;
* ``upscore2``: learned 2x upsampling of ``score_fr`` (a 4x4 stride-2 transposed conv without
  bias, initialised to bilinear interpolation, class by class), added to ``score_pool4``;
  ``upscore_pool4``: the same 2x upsampling of that sum, added to ``score_pool3``;
* the stride-8 sum is upsampled 8x to the input size by fixed bilinear interpolation (the paper
  fixes its last deconvolution to bilinear; ``layers.resize_bilinear`` with half-pixel centres is
  that 16x16 stride-8 deconvolution with its crop of 4, up to the border rows, where it repeats the
  edge instead of fading to zero).

On other encoders (any registered classification model, e.g. ``resnet18``): the same score layers
and upsamplings on the encoder's stride-8, 16 and 32 maps; by default without ``fc6``/``fc7``, which
are VGG's own classifier (the paper's GoogLeNet variant likewise scores its last features
directly); ``fc_channels`` adds them to any encoder.

With ``encoder_name="vgg16"`` (the default, the paper's FCN-VGG16): flaxderm's VGG encoder hands
out each stage's output before its max pool (smp's layout), so FCN's ``pool3`` and ``pool4`` are
its stride-4 and stride-8 maps (``conv3_3``, ``conv4_3``) max-pooled 2x2 here, and ``pool5`` is its
stride-32 map: the taps are exactly the paper's. ``fc6``/``fc7`` have the shapes of VGG's
``pre_logits.fc1``/``fc2`` (timm's convolutionalised fc6/fc7), so ImageNet weights can be copied in;
they are not part of the encoder (whose parameters exclude the classifier) and are initialised
here. ``fc6`` pads by 3 so the score map keeps the stride-32 grid, where the paper pads the input by
100 and crops the upsampled scores back into alignment.

Where flaxderm differs: the input must be divisible by 32 (no 100-pixel padding and crops), the
upsamplings keep the input grid exactly, there is no "at-once" scaling of the pool3/pool4 skips,
and the network is trained in one piece (the paper also trains FCN-32s, then 16s, then 8s).

Parameters at the default (vgg16 encoder, 1 class), measured: 134,265,443 (the encoder's
14,714,688, ``fc6``/``fc7`` 119,545,856, scoring and upsampling 4,899); the paper reports 134 M for
FCN-VGG16. On resnet18 (no ``fc6``/``fc7``): 11,177,443.
"""
from __future__ import annotations

import jax.numpy as jnp
import flax.linen as nn

from flaxderm.models import layers
from flaxderm.models.naming import SEGMENTATION_HEAD_RULES, NameRules, register_rules
from flaxderm.models.registry import model_entry, register_model
from flaxderm.models.segmentation import (DECODER_INIT, TEST_ENCODER, SegmentationModel,
                                          hashable_options)

VGG_FC_CHANNELS = 4096


def bilinear_upsampling_init(key, shape, dtype=jnp.float32):
  """A (k, k, C, C) transposed-conv kernel that upsamples each channel bilinearly on its own, by
  the factor ``(k + 1) // 2`` (FCN's ``upsample_filt`` on the diagonal, zeros across channels)."""
  del key
  k, _, cin, cout = shape
  if shape[0] != shape[1] or cin != cout:
    raise ValueError(f"bilinear_upsampling_init: needs a square kernel from C to C channels, got "
                     f"{shape}")
  factor = (k + 1) // 2
  center = factor - 1 if k % 2 else factor - 0.5
  taps = 1 - jnp.abs(jnp.arange(k) - center) / factor
  return (jnp.outer(taps, taps)[:, :, None, None] * jnp.eye(cin)).astype(dtype)


def learned_upsample2x(features: int, name: str, **common) -> nn.ConvTranspose:
  """FCN's ``upscore2``: a 4x4 stride-2 transposed conv without bias, bilinear at init, padded so
  that output pixel ``2i + a`` sits at input ``i + (2a - 1) / 4`` (half-pixel centres, as
  ``layers.resize_bilinear``; PyTorch's ``ConvTranspose2d(4, stride=2, padding=1)``)."""
  return nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                          use_bias=False, kernel_init=bilinear_upsampling_init, name=name, **common)


class FCN8s(SegmentationModel):
  """FCN-8s on a registered encoder (module docstring).

  Attributes (besides ``SegmentationModel``'s):
    fc_channels: width of ``fc6``/``fc7`` on the stride-32 map; None = 4096 on a VGG encoder (the
      paper's) and no such layers on any other; 0 = none.
    fc_dropout: dropout after ``fc6`` and ``fc7`` (rng "dropout").
  """
  encoder_name: str = "vgg16"
  fc_channels: int | None = None
  fc_dropout: float = 0.5

  model_name = "fcn8s"
  head_kernel_size = 0  # the score layers already give the class scores
  head_align_corners = False

  def _vgg_encoder(self) -> bool:
    return model_entry(self.encoder_name).family == "vgg"

  def decode(self, features, train):
    common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if self._vgg_encoder():  # stage outputs before their pools: pool them (module docstring)
      pool3, pool4 = (layers.max_pool(f, 2, strides=2) for f in features[1:3])
    else:
      pool3, pool4 = features[2:4]
    y = features[4]
    if (pool3.shape[1:3] != tuple(2 * s for s in pool4.shape[1:3])
        or pool4.shape[1:3] != tuple(2 * s for s in y.shape[1:3])):
      raise ValueError(f"{self.model_name}: needs the encoder's maps at strides 8, 16 and 32 "
                       f"(output_stride 32); got sizes {pool3.shape[1:3]}, {pool4.shape[1:3]}, "
                       f"{y.shape[1:3]}")
    fc = self.fc_channels
    if fc is None:
      fc = VGG_FC_CHANNELS if self._vgg_encoder() else 0
    for name, kernel_size in (("fc6", 7), ("fc7", 1)) if fc else ():
      y = layers.conv(fc, kernel_size, padding=layers.conv_padding(kernel_size), use_bias=True,
                      kernel_init=DECODER_INIT, name=name, **common)(y)
      y = nn.Dropout(self.fc_dropout, deterministic=not train)(nn.relu(y))
    score = lambda name: layers.conv(self.num_classes, 1, use_bias=True,
                                     kernel_init=nn.initializers.zeros, name=name, **common)
    upscore = lambda name: learned_upsample2x(self.num_classes, name, **common)
    y = upscore("upscore2")(score("score_fr")(y)) + score("score_pool4")(pool4)
    return upscore("upscore_pool4")(y) + score("score_pool3")(pool3)


@register_model(task="segmentation", family="fcn", default_input_size=256,
                test_options=TEST_ENCODER)
def fcn8s(*, num_classes: int, **options) -> FCN8s:
  """FCN-8s (Long et al. 2015): stride-8/16/32 score layers fused by learned 2x upsamplings."""
  return FCN8s(num_classes=num_classes, **hashable_options(options))


# No PyTorch counterpart (torchvision's FCNs are FCN-32s-like heads on ResNets): mechanical names.
register_rules("fcn", NameRules(rules=SEGMENTATION_HEAD_RULES, head=(
    "score_fr", "score_pool4", "score_pool3", "upscore2", "upscore_pool4",
    "classification_head")), segmentation=True)
