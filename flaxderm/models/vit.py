"""Vision Transformer (Dosovitskiy et al. 2021), timm's ``vit_{tiny,small,base}_patch16_224``.

Layout (parameter counts equal timm's at 224 px, 1000 classes): a 16x16 stride-16 patch conv, a
class token, a learned position embedding over class token + patch grid, pre-norm blocks
(LayerNorm eps 1e-6, multi-head self-attention with one fused q/k/v projection, an exact-GELU MLP
of ratio 4), a final LayerNorm and a linear head on the class token.

Parameter names are timm's module paths with ``.N`` turned into ``_N`` and ``.`` into ``/``, so a
timm checkpoint converts mechanically (kernels transposed): ``blocks.3.attn.qkv.weight`` ->
``blocks_3/attn/qkv/kernel``, ``patch_embed.proj`` -> ``patch_embed/proj``, ``cls_token``,
``pos_embed``, ``norm``, ``head``. The fused ``qkv`` Dense splits its 3 * dim outputs as (3, heads,
head_dim), timm's order.

Other input sizes: the position embedding is created for ``img_size`` and, for any other input
size, its grid part is resampled bilinearly (half-pixel centres, no antialiasing: PyTorch's
``F.interpolate(mode="bilinear", align_corners=False)``) to the new patch grid inside the forward
pass; the class token's entry is kept. ``layers.resample_position_embedding`` is the same function
for converting checkpoints. Inputs must be a multiple of the patch size. (timm's own default for
dynamic sizes is bicubic with antialiasing, so at sizes other than ``img_size`` the two differ.)

Dropout options follow timm: ``drop_rate`` before the head, ``proj_drop_rate`` on the attention
projection and MLP outputs, ``attn_drop_rate`` on the attention weights, ``drop_path_rate`` the
stochastic-depth rate of the last block (linear from 0 over the blocks).

Encoder (``features_only=True``): a ViT has one resolution, stride 16. The five smp maps are a
parameter-free simple feature pyramid built from the final-normed patch tokens reshaped to NHWC
(the final LayerNorm is applied, as in timm's ``forward_intermediates(norm=True)``, so the encoder
uses every parameter but the head): stride 2 absent (0 channels), strides 4 and 8 bilinear
upsamplings of the stride-16 map, stride 16 the map itself, stride 32 a 2x2 average pooling
(other patch sizes, 4 to 32: the same rule around their own stride).

``Attention``, ``Mlp``, ``Block`` and ``PatchEmbed`` are shared with the Swin family (swin.py).
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flaxderm.models import layers
from flaxderm.models import weights
from flaxderm.models.naming import NameRules, register_rules
from flaxderm.models.registry import register_model

Dtype = Any

# As timm: std-0.02 normal (truncated at 2 std) for linear layers, position embeddings and Swin's
# bias tables, zero biases, a near-zero class token; the patch conv uses LeCun normal (timm's
# "jax" scheme). They matter only when training from scratch rather than from converted weights.
DENSE_INIT = nn.initializers.truncated_normal(0.02)
# Token-map strides from which the parameter-free pyramid reaches the encoder strides 4..32.
PYRAMID_STRIDES = (4, 8, 16, 32)
# Grad-CAM's default layer (flaxderm/explain.py): the last block's norm1, pytorch-grad-cam's ViT
# recipe. After the last block the patch tokens no longer reach the class token, so their
# gradients vanish.
GRADCAM_LAYER = r"blocks_\d+/norm1"


class PatchEmbed(nn.Module):
  """Non-overlapping ``patch_size`` conv (``proj``), optionally followed by a LayerNorm (``norm``,
  Swin). NHWC in, NHWC out."""
  patch_size: int
  embed_dim: int
  norm_epsilon: float | None = None  # None: no norm
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    p = self.patch_size
    x = nn.Conv(self.embed_dim, (p, p), strides=p, padding="VALID",
                kernel_init=nn.initializers.lecun_normal(), dtype=self.dtype,
                param_dtype=self.param_dtype, name="proj")(x)
    if self.norm_epsilon is not None:
      x = nn.LayerNorm(self.norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype,
                       name="norm")(x)
    return x


class Mlp(nn.Module):
  """fc1 -> exact GELU -> dropout -> fc2 -> dropout (timm's ``Mlp``)."""
  hidden: int
  drop_rate: float = 0.0
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    dense = functools.partial(nn.Dense, kernel_init=DENSE_INIT, dtype=self.dtype,
                              param_dtype=self.param_dtype)
    out = x.shape[-1]
    x = nn.gelu(dense(self.hidden, name="fc1")(x), approximate=False)
    x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
    x = dense(out, name="fc2")(x)
    return nn.Dropout(self.drop_rate, deterministic=not train)(x)


class Attention(nn.Module):
  """Multi-head self-attention over the second-to-last axis of ``(..., tokens, dim)``: one fused
  ``qkv`` projection (3 * dim outputs, ordered (3, heads, head_dim) like timm), scaled dot products
  plus an optional additive ``bias`` broadcastable to ``(..., heads, tokens, tokens)``, softmax in
  float32, dropout on the weights, output projection ``proj``.

  Subclasses (Swin's window attention) add their bias and call ``attend`` from their own compact
  ``__call__``."""
  num_heads: int
  attn_drop_rate: float = 0.0
  proj_drop_rate: float = 0.0
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    return self.attend(x, None, train)

  def attend(self, x, bias: jax.Array | None, train: bool):
    """The attention itself; creates ``qkv`` and ``proj``, so it must run inside a compact call."""
    *lead, n, dim = x.shape
    if dim % self.num_heads:
      raise ValueError(f"attention width {dim} is not divisible by num_heads {self.num_heads}")
    head_dim = dim // self.num_heads
    dense = functools.partial(nn.Dense, kernel_init=DENSE_INIT, dtype=self.dtype,
                              param_dtype=self.param_dtype)
    qkv = dense(3 * dim, name="qkv")(x).reshape(*lead, n, 3, self.num_heads, head_dim)
    q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
    # Logits accumulate in float32 so bfloat16 compute keeps the softmax accurate.
    logits = jnp.einsum("...qhd,...khd->...hqk", q * (head_dim ** -0.5), k,
                        preferred_element_type=jnp.float32)
    if bias is not None:
      logits = logits + bias
    attn = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    attn = nn.Dropout(self.attn_drop_rate, deterministic=not train)(attn)
    out = jnp.einsum("...hqk,...khd->...qhd", attn, v).reshape(*lead, n, dim)
    out = dense(dim, name="proj")(out)
    return nn.Dropout(self.proj_drop_rate, deterministic=not train)(out)


class Block(nn.Module):
  """Pre-norm transformer block: ``x + DropPath(mix(norm1(x)))``, then
  ``x + DropPath(mlp(norm2(x)))``. ``mix`` is global self-attention here; Swin overrides it with
  shifted-window attention. Works on any ``(..., dim)`` layout since only ``mix`` looks at the
  token axes."""
  num_heads: int
  mlp_ratio: float = 4.0
  proj_drop_rate: float = 0.0
  attn_drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  norm_epsilon: float = 1e-6
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = functools.partial(nn.LayerNorm, self.norm_epsilon, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    drop_path = layers.DropPath(self.drop_path_rate)
    x = x + drop_path(self.mix(norm(name="norm1")(x), train), train)
    y = Mlp(int(x.shape[-1] * self.mlp_ratio), self.proj_drop_rate, dtype=self.dtype,
            param_dtype=self.param_dtype, name="mlp")(norm(name="norm2")(x), train)
    return x + drop_path(y, train)

  def mix(self, x, train: bool):
    """Token mixing on ``(B, tokens, dim)``; called from the compact ``__call__``."""
    return Attention(self.num_heads, self.attn_drop_rate, self.proj_drop_rate, dtype=self.dtype,
                     param_dtype=self.param_dtype, name="attn")(x, train)


class VisionTransformer(nn.Module):
  """ViT with a class token; see the module docstring for layout, sizes and the encoder maps."""
  num_classes: int = 1000
  patch_size: int = 16
  embed_dim: int = 192
  depth: int = 12
  num_heads: int = 3
  mlp_ratio: float = 4.0
  img_size: int = 224  # the size the position embedding is created for
  in_channels: int = 3
  drop_rate: float = 0.0
  proj_drop_rate: float = 0.0
  attn_drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  model_name: str = "VisionTransformer"  # used in error messages
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @property
  def feature_channels(self) -> tuple[int, ...]:
    self._check_encoder_layout()
    return (0,) + (self.embed_dim,) * 4

  def _check_encoder_layout(self):
    if self.patch_size not in PYRAMID_STRIDES:
      raise ValueError(f"{self.model_name}: the stride 2..32 encoder maps need a patch size in "
                       f"{PYRAMID_STRIDES}, got {self.patch_size}")

  @nn.compact
  def __call__(self, x, train: bool = False, features_only: bool = False):
    p = self.patch_size
    layers.check_input(self.model_name, x, in_channels=self.in_channels, multiple_of=p,
                       what="the patch size")
    if self.img_size % p:
      raise ValueError(f"{self.model_name}: img_size {self.img_size} is not divisible by the "
                       f"patch size {p}")
    if features_only:
      self._check_encoder_layout()
    n, h, w, _ = x.shape
    gh, gw = h // p, w // p
    x = PatchEmbed(p, self.embed_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                   name="patch_embed")(x)
    x = x.reshape(n, gh * gw, self.embed_dim)
    cls = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, self.embed_dim),
                     self.param_dtype)
    grid = self.img_size // p
    pos = self.param("pos_embed", DENSE_INIT, (1, 1 + grid * grid, self.embed_dim),
                     self.param_dtype)
    pos = layers.resample_position_embedding(pos, (gh, gw))
    x = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, self.embed_dim)).astype(x.dtype), x], 1)
    x = x + pos.astype(x.dtype)

    rates = np.linspace(0.0, self.drop_path_rate, self.depth)
    for i in range(self.depth):
      x = Block(self.num_heads, self.mlp_ratio, self.proj_drop_rate, self.attn_drop_rate,
                float(rates[i]), dtype=self.dtype, param_dtype=self.param_dtype,
                name=f"blocks_{i}")(x, train)
    x = nn.LayerNorm(1e-6, dtype=self.dtype, param_dtype=self.param_dtype, name="norm")(x)

    if features_only:
      return simple_feature_pyramid(x[:, 1:].reshape(n, gh, gw, self.embed_dim), p)
    x = x[:, 0]
    if self.num_classes == 0:
      return x
    x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, kernel_init=DENSE_INIT, dtype=self.dtype,
                    param_dtype=self.param_dtype, name="head")(x)


def simple_feature_pyramid(x: jax.Array, stride: int) -> list[jax.Array]:
  """Five maps at strides 2..32 from one NHWC map at ``stride`` (one of ``PYRAMID_STRIDES``),
  without parameters: stride 2 absent (0 channels), finer strides bilinear upsamplings, coarser
  ones average pooling (floor, like ``H // 32``)."""
  n, gh, gw, _ = x.shape
  maps = [jnp.zeros((n, gh * stride // 2, gw * stride // 2, 0), x.dtype)]
  for s in (4, 8, 16, 32):
    if s < stride:
      maps.append(layers.resize_bilinear(x, gh * stride // s, gw * stride // s))
    elif s == stride:
      maps.append(x)
    else:
      maps.append(nn.avg_pool(x, (s // stride,) * 2, strides=(s // stride,) * 2))
  return maps


def _vit(model_name: str, *, embed_dim: int, num_heads: int, num_classes: int, **options):
  # Options may override the variant's depth (e.g. tiny test models).
  return VisionTransformer(num_classes=num_classes, patch_size=16, embed_dim=embed_dim,
                           num_heads=num_heads, model_name=model_name, **{"depth": 12, **options})


@register_model(task="classification", family="vit", default_input_size=224,
                gradcam_layer=GRADCAM_LAYER, test_options={"depth": 2})
def vit_tiny(*, num_classes: int, **options) -> VisionTransformer:
  """ViT-Ti/16 (timm vit_tiny_patch16_224): width 192, 12 blocks, 3 heads, 5.7M parameters."""
  return _vit("vit_tiny", embed_dim=192, num_heads=3, num_classes=num_classes, **options)


@register_model(task="classification", family="vit", default_input_size=224,
                gradcam_layer=GRADCAM_LAYER)
def vit_small(*, num_classes: int, **options) -> VisionTransformer:
  """ViT-S/16 (timm vit_small_patch16_224): width 384, 12 blocks, 6 heads, 22.1M parameters."""
  return _vit("vit_small", embed_dim=384, num_heads=6, num_classes=num_classes, **options)


@register_model(task="classification", family="vit", default_input_size=224,
                gradcam_layer=GRADCAM_LAYER)
def vit_base(*, num_classes: int, **options) -> VisionTransformer:
  """ViT-B/16 (timm vit_base_patch16_224): width 768, 12 blocks, 12 heads, 86.6M parameters."""
  return _vit("vit_base", embed_dim=768, num_heads=12, num_classes=num_classes, **options)


register_rules("vit", NameRules(head=("head",)))


weights.register_tag(weights.timm_tag(
    "vit_tiny.augreg_in21k_ft_in1k", "vit_tiny", "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k",
    weights.SYMMETRIC, weights.SYMMETRIC))
