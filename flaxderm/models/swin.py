"""Swin Transformer (Liu et al. 2021), timm's ``swin_{tiny,small,base}_patch4_window7_224``.

Layout, as in timm 1.0 (parameter counts equal timm's at 224 px, 1000 classes): a 4x4 stride-4
patch conv + LayerNorm, four stages, each (from the second on) opening with patch merging
(2x2 neighbours concatenated in timm's (w, h, C) order -> LayerNorm(4C) -> Linear 4C->2C without
bias) and then pre-norm blocks whose attention runs in non-overlapping windows, every second block
on windows shifted by half a window (cyclic roll plus an attention mask). Each window attention
adds a trainable relative position bias, a ``(2w-1)^2 x heads`` table indexed by a constant
relative position index (a buffer in timm, so not a parameter here either). Final LayerNorm,
global average pooling, linear head. LayerNorm eps 1e-5 throughout.

Parameter names are timm's module paths with ``.N`` -> ``_N`` and ``.`` -> ``/``:
``layers.1.downsample.reduction.weight`` -> ``layers_1/downsample/reduction/kernel``,
``layers.0.blocks.1.attn.relative_position_bias_table`` -> the same path with ``/``; the one
exception is the head, timm ``head.fc`` -> ``head``.

Input sizes. Any multiple of 32 (patch 4 x three mergings) works; a ValueError names the model,
the size and the nearest valid one. Per stage and axis, as in timm: a resolution not larger than
the window clamps the window to it (and drops the shift on that axis); a larger resolution that is
not a multiple of the window is zero-padded at the bottom/right up to one (at 64 px the stages are
16, 8, 4, 2: windows 7 (padded to 21), 7 (padded to 14), 4 and 2). Padding differs from timm on
purpose: timm rolls, then pads, then builds the shift mask on the padded grid, which misplaces the
mask when both happen; here the map is padded first, then rolled, and padded tokens are masked out
as keys, so real tokens never see padding and never attend across the shifted boundary. Where no
padding is needed (224 px and every size whose stage resolutions are at most, or multiples of, the
window) the result equals timm's. The bias table is built for the window clamped at ``img_size``
(timm's shapes for any ``img_size``); a clamped window at run time uses the table's central part
(the same relative offsets), and an input needing a larger window than the table raises.

Encoder (``features_only=True``): stride 2 absent (0 channels); strides 4, 8, 16, 32 are the four
stage outputs. timm's ``features_only`` returns the raw stage outputs (no norm); here the final
LayerNorm is applied to the stride-32 map (timm's ``forward_intermediates(norm=True)``), so the
encoder uses every parameter but the head. Per-output LayerNorms (as mmsegmentation adds) would be
new parameters that a classifier checkpoint lacks, so there are none.

Dropout options as in vit.py (timm's): ``drop_rate`` before the head, ``proj_drop_rate``,
``attn_drop_rate``, ``drop_path_rate`` (linear from 0 over all blocks).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from flaxderm.models import layers
from flaxderm.models import weights
from flaxderm.models.naming import NameRules, register_rules
from flaxderm.models.registry import register_model
from flaxderm.models.vit import DENSE_INIT, Attention, Block, PatchEmbed

Dtype = Any
Pair = tuple[int, int]

# timm's additive mask value: exp(-100) vanishes in float32 while a fully masked row (a padded
# query) stays finite.
MASK_VALUE = -100.0
NORM_EPS = 1e-5
# Grad-CAM's default layer (flaxderm/explain.py): the last stage's output. The default rule would
# take the final LayerNorm, the last top-level map on the coarsest grid.
GRADCAM_LAYER = r"layers_\d+"


def window_partition(x, window: Pair):
  """``(B, H, W, C)`` -> ``(B, windows, wh * ww, C)``, windows in row-major order. Works on numpy
  and jax arrays; H and W must be multiples of the window."""
  b, h, w, c = x.shape
  wh, ww = window
  x = x.reshape(b, h // wh, wh, w // ww, ww, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // wh) * (w // ww), wh * ww, c)


def window_reverse(x, window: Pair, height: int, width: int):
  """Inverse of ``window_partition``."""
  b, _, _, c = x.shape
  wh, ww = window
  x = x.reshape(b, height // wh, width // ww, wh, ww, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, height, width, c)


def relative_position_index(window: Pair, table_window: int) -> np.ndarray:
  """``(N, N)`` rows of the ``(2t-1)^2`` bias table for query/key pairs of a ``window`` (N = wh *
  ww tokens): row ``(dy + t - 1) * (2t - 1) + dx + t - 1`` for offsets query minus key. For
  ``window == (t, t)`` this is timm's ``get_relative_position_index``."""
  wh, ww = window
  coords = np.stack(np.meshgrid(np.arange(wh), np.arange(ww), indexing="ij")).reshape(2, -1)
  rel = coords[:, :, None] - coords[:, None, :] + table_window - 1
  return rel[0] * (2 * table_window - 1) + rel[1]


def shifted_window_mask(height: int, width: int, window: Pair, shift: Pair) -> np.ndarray | None:
  """Which keys each query may attend to, ``(windows, N, N)`` bool, for a ``height x width`` map
  padded to whole windows, then rolled by ``-shift``; None when there is neither shift nor padding.

  Along each axis the rolled, padded grid has up to three regions (the Swin paper's): positions
  before the last window, the last window's part that did not wrap, and the part that wrapped
  around from the start. Tokens attend only within their region pair, and never to padding."""
  def axis(length, w, s):
    padded = length + (-length % w)
    i = np.arange(padded)
    region = (i >= padded - w).astype(int) + (i >= padded - s) if s else np.zeros(padded, int)
    return region, (i + s) % padded >= length  # padding: rolled back, beyond the real map

  (ry, py), (rx, px) = axis(height, window[0], shift[0]), axis(width, window[1], shift[1])
  if not (any(shift) or py.any() or px.any()):
    return None
  label = np.where(py[:, None] | px[None, :], -1, 3 * ry[:, None] + rx[None, :])
  label = window_partition(label[None, :, :, None], window)[0, :, :, 0]  # (windows, N)
  return (label[:, :, None] == label[:, None, :]) & (label[:, None, :] >= 0)


class WindowAttention(Attention):
  """Self-attention within windows of ``(B, windows, N, C)`` plus the relative position bias and
  the optional ``(windows, N, N)`` mask. ``window`` (the run-time window, at most
  ``table_window`` per axis) picks the table rows."""
  table_window: int = 7

  @nn.compact
  def __call__(self, x, window: Pair, mask: np.ndarray | None = None, train: bool = False):
    t = self.table_window
    table = self.param("relative_position_bias_table", DENSE_INIT,
                       ((2 * t - 1) ** 2, self.num_heads), self.param_dtype)
    bias = jnp.transpose(table[relative_position_index(window, t)], (2, 0, 1))  # (heads, N, N)
    bias = bias.astype(jnp.float32)
    if mask is not None:
      bias = bias + jnp.where(mask, 0.0, MASK_VALUE)[:, None].astype(jnp.float32)
    return self.attend(x, bias, train)


class SwinBlock(Block):
  """A ``Block`` on ``(B, H, W, C)`` whose token mixing is (shifted-)window attention."""
  window: Pair = (7, 7)
  shift: Pair = (0, 0)
  table_window: int = 7
  norm_epsilon: float = NORM_EPS

  def mix(self, x, train: bool):
    _, h, w, _ = x.shape
    (wh, ww), shift = self.window, self.shift
    x = jnp.pad(x, ((0, 0), (0, -h % wh), (0, -w % ww), (0, 0)))
    padded = x.shape[1:3]
    if any(shift):
      x = jnp.roll(x, (-shift[0], -shift[1]), axis=(1, 2))
    y = WindowAttention(self.num_heads, self.attn_drop_rate, self.proj_drop_rate,
                        dtype=self.dtype, param_dtype=self.param_dtype,
                        table_window=self.table_window, name="attn")(
        window_partition(x, self.window), self.window,
        shifted_window_mask(h, w, self.window, shift), train)
    y = window_reverse(y, self.window, *padded)
    if any(shift):
      y = jnp.roll(y, shift, axis=(1, 2))
    return y[:, :h, :w]


class PatchMerging(nn.Module):
  """2x2 neighbours -> 4C channels in timm's order -> LayerNorm -> Linear 4C->2C (no bias)."""
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5).reshape(
        b, h // 2, w // 2, 4 * c)
    x = nn.LayerNorm(NORM_EPS, dtype=self.dtype, param_dtype=self.param_dtype, name="norm")(x)
    return nn.Dense(2 * c, use_bias=False, kernel_init=DENSE_INIT, dtype=self.dtype,
                    param_dtype=self.param_dtype, name="reduction")(x)


class SwinStage(nn.Module):
  """[patch merging] -> ``len(drop_path_rates)`` blocks, odd ones on shifted windows."""
  num_heads: int
  drop_path_rates: Sequence[float]
  downsample: bool
  window: Pair
  shift: Pair
  table_window: int
  mlp_ratio: float = 4.0
  proj_drop_rate: float = 0.0
  attn_drop_rate: float = 0.0
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.downsample:
      x = PatchMerging(self.dtype, self.param_dtype, name="downsample")(x)
    for j, rate in enumerate(self.drop_path_rates):
      x = SwinBlock(self.num_heads, self.mlp_ratio, self.proj_drop_rate, self.attn_drop_rate,
                    rate, window=self.window, shift=self.shift if j % 2 else (0, 0),
                    table_window=self.table_window, dtype=self.dtype,
                    param_dtype=self.param_dtype, name=f"blocks_{j}")(x, train)
    return x


class SwinTransformer(nn.Module):
  """Swin (v1); see the module docstring for layout, sizes and the encoder maps."""
  num_classes: int = 1000
  patch_size: int = 4
  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 6, 2)
  num_heads: Sequence[int] = (3, 6, 12, 24)
  window_size: int = 7
  mlp_ratio: float = 4.0
  img_size: int = 224  # fixes the bias tables' window (clamped to the stage resolutions there)
  in_channels: int = 3
  drop_rate: float = 0.0
  proj_drop_rate: float = 0.0
  attn_drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  model_name: str = "SwinTransformer"  # used in error messages
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @property
  def feature_channels(self) -> tuple[int, ...]:
    self._check_encoder_layout()
    return (0,) + tuple(self.embed_dim * 2 ** i for i in range(4))

  def _check_encoder_layout(self):
    if self.patch_size != 4 or len(self.depths) != 4:
      raise ValueError(f"{self.model_name}: the stride 2..32 encoder maps need patch_size 4 and 4 "
                       f"stages, got patch_size {self.patch_size} and depths {tuple(self.depths)}")

  def stage_windows(self, height: int, width: int) -> list[tuple[Pair, Pair, int]]:
    """Per stage: (window, shift of the shifted blocks, table window) for a ``height x width``
    input; ValueError when the input or ``img_size`` does not fit (see the module docstring)."""
    if len(self.depths) != len(self.num_heads):
      raise ValueError(f"{self.model_name}: depths {tuple(self.depths)} and num_heads "
                       f"{tuple(self.num_heads)} must have one entry per stage")
    stride = self.patch_size * 2 ** (len(self.depths) - 1)
    if self.img_size % stride:
      raise ValueError(f"{self.model_name}: img_size {self.img_size} is not divisible by the "
                       f"encoder stride {stride}")
    plan = []
    for i in range(len(self.depths)):
      scale = self.patch_size * 2 ** i
      table = min(self.window_size, self.img_size // scale)
      res = (height // scale, width // scale)
      window = tuple(min(self.window_size, r) for r in res)
      if max(window) > table:
        raise ValueError(
            f"{self.model_name}: input {height}x{width} needs {window[0]}x{window[1]} windows in "
            f"stage {i + 1}, but the model was created with img_size={self.img_size}, whose "
            f"bias table there covers {table}x{table}; create it with a larger img_size")
      shift = tuple(0 if r <= self.window_size else self.window_size // 2 for r in res)
      plan.append((window, shift, table))
    return plan

  @nn.compact
  def __call__(self, x, train: bool = False, features_only: bool = False):
    layers.check_input(self.model_name, x, in_channels=self.in_channels,
                       multiple_of=self.patch_size * 2 ** (len(self.depths) - 1))
    if features_only:
      self._check_encoder_layout()
    plan = self.stage_windows(*x.shape[1:3])
    x = PatchEmbed(self.patch_size, self.embed_dim, NORM_EPS, dtype=self.dtype,
                   param_dtype=self.param_dtype, name="patch_embed")(x)
    rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths)).tolist()
    starts = np.cumsum((0,) + tuple(self.depths)).tolist()
    features = []
    for i, (heads, (window, shift, table)) in enumerate(zip(self.num_heads, plan)):
      x = SwinStage(heads, tuple(rates[starts[i]:starts[i + 1]]), i > 0, window, shift, table,
                    self.mlp_ratio, self.proj_drop_rate, self.attn_drop_rate, dtype=self.dtype,
                    param_dtype=self.param_dtype, name=f"layers_{i}")(x, train)
      features.append(x)
    x = nn.LayerNorm(NORM_EPS, dtype=self.dtype, param_dtype=self.param_dtype, name="norm")(x)

    if features_only:
      n, h, w, _ = features[0].shape
      return [jnp.zeros((n, 2 * h, 2 * w, 0), x.dtype)] + features[:-1] + [x]
    x = jnp.mean(x, axis=(1, 2))
    if self.num_classes == 0:
      return x
    x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, kernel_init=DENSE_INIT, dtype=self.dtype,
                    param_dtype=self.param_dtype, name="head")(x)


def _swin(model_name: str, depths: Sequence[int], /, *, embed_dim: int, num_heads: Sequence[int],
          num_classes: int, **options) -> SwinTransformer:
  # Options may override the variant's depths (e.g. tiny test models).
  return SwinTransformer(num_classes=num_classes, patch_size=4, embed_dim=embed_dim,
                         num_heads=tuple(num_heads), model_name=model_name,
                         **{"depths": tuple(depths), **options})


@register_model(task="classification", family="swin", default_input_size=224,
                gradcam_layer=GRADCAM_LAYER, test_options={"depths": (2, 1, 1, 1)})
def swin_tiny(*, num_classes: int, **options) -> SwinTransformer:
  """Swin-T (timm swin_tiny_patch4_window7_224): width 96, depths 2-2-6-2, 28.3M parameters."""
  return _swin("swin_tiny", (2, 2, 6, 2), embed_dim=96, num_heads=(3, 6, 12, 24),
               num_classes=num_classes, **options)


@register_model(task="classification", family="swin", default_input_size=224,
                gradcam_layer=GRADCAM_LAYER)
def swin_small(*, num_classes: int, **options) -> SwinTransformer:
  """Swin-S (timm swin_small_patch4_window7_224): width 96, depths 2-2-18-2, 49.6M parameters."""
  return _swin("swin_small", (2, 2, 18, 2), embed_dim=96, num_heads=(3, 6, 12, 24),
               num_classes=num_classes, **options)


@register_model(task="classification", family="swin", default_input_size=224,
                gradcam_layer=GRADCAM_LAYER)
def swin_base(*, num_classes: int, **options) -> SwinTransformer:
  """Swin-B (timm swin_base_patch4_window7_224): width 128, depths 2-2-18-2, 87.8M parameters."""
  return _swin("swin_base", (2, 2, 18, 2), embed_dim=128, num_heads=(4, 8, 16, 32),
               num_classes=num_classes, **options)


register_rules("swin", NameRules(rules=(("head.fc", "head"),), head=("head.fc",),
                                 derived=r"(^|\.)(relative_position_index|attn_mask)$"))


weights.register_tag(weights.timm_tag("swin_tiny.ms_in1k", "swin_tiny",
                                      "timm/swin_tiny_patch4_window7_224.ms_in1k"))
