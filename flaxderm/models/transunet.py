"""TransUNet (Chen et al. 2021, "TransUNet: Transformers Make Strong Encoders for Medical Image
Segmentation"), in its pure-ViT form: a ViT encoder, a learned neck that turns its stride-16 token
map into a four-level pyramid, and smp's U-Net decoder (unet.py) on that pyramid.

The paper's TransUNet is the R50-ViT-B/16 hybrid: a ResNet-50 runs to stride 16, a ViT-B treats
each stride-16 position as a token, and the cascaded upsampler ("CUP": 3x3 conv of the token map to
512 channels, then four x2 bilinear upsamplings each followed by two 3x3 conv-BN-ReLU, decoder
widths 256-128-64-16) concatenates the ResNet's stride-8, 4 and 2 maps as skips. flaxderm takes
the ViT alone, so the skips have to come from the tokens, as in UNETR (Hatamizadeh et al. 2022)
and the SETR / ViTDet feature pyramids:

* Encoder: any registered ViT (``encoder_name`` = ``vit_tiny``, ``vit_small`` or ``vit_base``,
  the paper's width; vit.py's patch embedding, blocks, final LayerNorm and position-embedding
  resampling, unchanged). The decoder reads the final-normed patch tokens reshaped to a grid, the
  encoder map at the patch stride (the class token is not used). The position embedding is
  created for ``img_size`` (passed to the ViT; a 224-px timm checkpoint's is resampled once on
  conversion) and resampled bilinearly for other input sizes in the forward pass.
* Neck (flaxderm's choice; the paper has none): per stride 4, 8, 16, 32 (``neck_channels``, by
  default ResNet-34's widths 64-128-256-512) a 1x1 conv-norm-ReLU projection of the token map
  (done first, at the coarse resolution where it is cheapest), then per factor 2 finer a learned
  2x2 stride-2 transposed conv (``unet.Upsample2x``) and a 3x3 conv-norm-ReLU (UNETR's
  transposed-conv skip path), per factor 2 coarser a stride-2 3x3 conv-norm-ReLU. Learned rather
  than bilinear upsampling because the finer maps must carry detail the tokens only hold in their
  channels (a 16x16 patch per token). The stride-2 skip is empty, as for Swin: the decoder's last
  block upsamples without one.
* Decoder and head: ``unet.UNet``'s smp decoder, unchanged (five blocks from stride 32 to the
  input size, ``decoder_channels`` 256-128-64-32-16 where the paper's CUP has four blocks from
  stride 16), its 3x3 segmentation head, optional ``decoder_attention`` and auxiliary head (on the
  ViT's deepest map, i.e. the pooled tokens).

Parameters at ``img_size`` 256, 1 class, default neck and decoder (tests/models/test_hybrids.py pins
them): vit_tiny 11,536,017 (encoder 5,535,936), vit_small 27,873,105 (encoder 21,688,704),
vit_base 92,397,777 (encoder 85,844,736); the neck and decoder add 6.0-6.6M. Each encoder is
timm's ViT without its head, its position embedding holding 257 rather than 197 tokens.

Weights: the encoder has the ViT family's timm names under ``encoder.``, so a timm
``vit_*_patch16_*`` classifier checkpoint loads into ``params["encoder"]`` with
``convert.from_state_dict(..., rng=...)`` (the neck and decoder initialised). There is no PyTorch
reference to export to; the neck's names are the mechanical ones (``neck_stride4/up_0/proj`` <->
``neck_stride4.up.0.proj``).
Inputs must be a multiple of 32 (the stride-32 neck level meets the decoder's x2 steps).
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from flaxderm.models import layers
from flaxderm.models.naming import register_rules
from flaxderm.models.registry import list_models, register_model
from flaxderm.models.segmentation import DECODER_INIT, Dtype, hashable_options
from flaxderm.models.unet import UNET_RULES, UNet, Upsample2x, check_unet_options

ENCODER_STRIDES = (2, 4, 8, 16, 32)
NECK_STRIDES = (4, 8, 16, 32)


class NeckLevel(nn.Module):
  """The token map at ``token_stride`` -> one ``features``-channel map at ``stride`` (module
  docstring): 1x1 projection, then x2 transposed-conv + 3x3 steps up or stride-2 3x3 steps down."""
  features: int
  stride: int
  token_stride: int
  norm: str = "batch"
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    conv = functools.partial(layers.ConvNormAct, self.features, norm=self.norm,
                             kernel_init=DECODER_INIT, **common)
    x = conv(kernel_size=1, name="proj")(x, train)
    steps = int(math.log2(self.stride / self.token_stride))
    for i in range(-steps):
      x = Upsample2x(self.features, "transpose", name=f"up_{i}", **common)(x)
      x = conv(name=f"conv_{i}")(x, train)
    for i in range(steps):
      x = conv(strides=2, name=f"down_{i}")(x, train)
    return x


class TransUNet(UNet):
  """TransUNet on a ViT; see the module docstring.

  Attributes (besides ``unet.UNet``'s encoder-path ones: ``decoder_channels``, ``norm``, which
  also applies to the neck, ``decoder_attention``; and ``SegmentationModel``'s):
    encoder_name: a registered ViT (``list_models(family="vit")``).
    img_size: the input size the ViT's position embedding is created for (other sizes resample
      it in every forward pass).
    neck_channels: the neck's widths at strides 4, 8, 16, 32.
  """
  encoder_name: str = "vit_base"
  img_size: int = 256
  neck_channels: Sequence[int] = (64, 128, 256, 512)

  model_name = "transunet"

  def setup(self):
    vits = list_models(family="vit")
    if self.encoder_name not in vits:
      raise ValueError(f"{self.model_name}: encoder_name must be a ViT ({', '.join(vits)}), got "
                       f"{self.encoder_name!r}")
    if len(self.neck_channels) != len(NECK_STRIDES):
      raise ValueError(f"{self.model_name}: neck_channels needs {len(NECK_STRIDES)} widths "
                       f"(strides {NECK_STRIDES}), got {tuple(self.neck_channels)}")
    super().setup()

  def encoder_options(self):
    return {"img_size": self.img_size}

  def decode(self, features, train):
    # The ViT's encoder map at its patch stride is the token grid itself; the other four are its
    # parameter-free resamplings, which the neck replaces (and XLA then drops as unused).
    patch = self.encoder.patch_size
    tokens = features[ENCODER_STRIDES.index(patch)]
    pyramid = [NeckLevel(width, stride, patch, self.norm, dtype=self.dtype,
                         param_dtype=self.param_dtype, name=f"neck_stride{stride}")(tokens, train)
               for width, stride in zip(self.neck_channels, NECK_STRIDES)]
    return super().decode([features[0], *pyramid], train)


@register_model(task="segmentation", family="transunet", default_input_size=256,
                test_options={"encoder_name": "vit_tiny", "img_size": 64})
def transunet(*, num_classes: int, **options) -> TransUNet:
  """TransUNet, pure-ViT form: a ViT (vit_base), a learned token pyramid, smp's U-Net decoder."""
  check_unet_options("transunet", options.get("encoder_name", TransUNet.encoder_name), options)
  return TransUNet(num_classes=num_classes, **hashable_options(options))


# The encoder's names are the ViT family's, the decoder's unet's; the neck's are mechanical.
register_rules("transunet", UNET_RULES, segmentation=True)
