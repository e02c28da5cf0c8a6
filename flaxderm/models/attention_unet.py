"""Attention U-Net (Oktay et al. 2018, "Attention U-Net: Learning Where to Look for the Pancreas").

A U-Net whose skip connections pass through additive attention gates before the decoder
concatenates them. The gate of skip ``x`` (at level l) takes as gating signal ``g`` the decoder
features one level coarser, before their upsampling (the bottleneck for the deepest skip), and
computes the paper's Eq. 1-2:

    alpha = sigmoid(psi(relu(W_x x + W_g g + b_g)) + b_psi),    x_hat = alpha * x,

with ``W_x``, ``W_g`` linear maps to ``F_int`` channels and ``psi`` one to a single channel, at
``g``'s resolution; ``alpha`` is resampled bilinearly to ``x``'s size (Fig. 2's "resampler"). The
topology and every other layer are ``unet.UNet``'s, for both of its forms: the original U-Net
(``encoder_name=None``, the paper's setting, here 2-D with "same" padding) and smp's decoder on a
registered encoder, whose decoder blocks then see gated skips.

Choices where the paper leaves room, following the authors' released code where it has one:

* ``W_x`` brings ``x`` to ``g``'s resolution as a ``k x k`` stride-``k`` convolution without bias,
  ``k`` the resolution ratio (2; 1 where a dilated encoder keeps the stride): Fig. 2 draws a
  "1x1x1" map ending at ``g``'s size, which the authors' code realises with a 2x2 stride-2 kernel.
  ``W_g`` and ``psi`` are 1x1 convolutions with bias (``b_g``, ``b_psi``).
* ``F_int`` is half the skip's channels, as in that code.
* No normalisation inside the gate and no extra 1x1 conv-BN on the gated skip (the code's optional
  output transform and its separate gating-signal conv are not in the paper's equations).
* Each gate sows its coefficients ``alpha`` (N, H, W, 1) as ``intermediates/.../attention``, so
  ``apply(..., mutable=["intermediates"])`` returns the attention maps.

Parameters at the default (original U-Net, base width 64, depth 4, BatchNorm, 1 class), measured:
32,083,077, of which the four gates hold 1,045,444 (the U-Net alone: 31,037,633).

Submodule names are ``unet``'s plus ``attention_gates_{i}/{w_x,w_g,psi}`` (decoder level ``i``,
coarsest first); there is no PyTorch counterpart for the gates, so their torch names are the
mechanical ones.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxderm.models import layers
from flaxderm.models.naming import register_rules
from flaxderm.models.registry import register_model
from flaxderm.models.segmentation import DECODER_INIT, Dtype, hashable_options
from flaxderm.models.unet import UNET_RULES, UNet, check_unet_options


class AttentionGate(nn.Module):
  """Oktay et al.'s additive attention gate: ``skip * alpha(skip, gating)`` (module docstring)."""
  inter_features: int
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, skip: jax.Array, gating: jax.Array) -> jax.Array:
    ratio = skip.shape[1] // gating.shape[1]
    if skip.shape[1:3] != (gating.shape[1] * ratio, gating.shape[2] * ratio):
      raise ValueError(f"attention_unet: the skip {tuple(skip.shape)} is not an integer multiple "
                       f"of its gating signal {tuple(gating.shape)}")
    common = dict(kernel_init=DECODER_INIT, dtype=self.dtype, param_dtype=self.param_dtype)
    theta = nn.Conv(self.inter_features, (ratio, ratio), strides=ratio, padding="VALID",
                    use_bias=False, name="w_x", **common)(skip)
    phi = layers.conv(self.inter_features, 1, use_bias=True, name="w_g", **common)(gating)
    psi = layers.conv(1, 1, use_bias=True, name="psi", **common)(nn.relu(theta + phi))
    alpha = layers.resize_bilinear(nn.sigmoid(psi), skip.shape[1], skip.shape[2])
    self.sow("intermediates", "attention", alpha)
    return skip * alpha.astype(skip.dtype)


class AttentionUNet(UNet):
  """``UNet`` (either form, same options) with an attention gate on every skip connection."""
  model_name = "attention_unet"

  def gate_skip(self, index, skip, gating, train):
    del train
    if skip.shape[-1] == 0:  # an encoder stride without features: nothing to gate
      return skip
    gate = AttentionGate(max(skip.shape[-1] // 2, 1), dtype=self.dtype,
                         param_dtype=self.param_dtype, name=f"attention_gates_{index}")
    return gate(skip, gating)


@register_model(task="segmentation", family="attention_unet", default_input_size=256,
                test_options={"base_width": 16})
def attention_unet(*, num_classes: int, encoder_name: str | None = None,
                   **options) -> AttentionUNet:
  """Attention U-Net (Oktay et al. 2018): U-Net with additive attention gates on the skips."""
  check_unet_options("attention_unet", encoder_name, options)
  return AttentionUNet(num_classes=num_classes, encoder_name=encoder_name,
                       **hashable_options(options))


# U-Net's names (smp's for the decoder on an encoder); the gates' are mechanical.
register_rules("attention_unet", UNET_RULES, segmentation=True)
