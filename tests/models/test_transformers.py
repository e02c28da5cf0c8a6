"""ViT and Swin: timm's exact parameter counts, tiny models in train and eval mode, the encoder
maps, position-embedding resampling, the shifted-window attention against a naive per-token
reference, size errors, and (with torch) equality with timm on the same weights."""
from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxderm.models import create_model
from flaxderm.models.layers import resample_position_embedding
from flaxderm.models.swin import SwinBlock, SwinTransformer, shifted_window_mask
from flaxderm.models.vit import VisionTransformer
from rng import rbg_key

# timm 1.0: sum of parameter sizes at 224 px, 1000 classes.
TIMM_COUNTS = {
    "vit_tiny": 5_717_416, "vit_small": 22_050_664, "vit_base": 86_567_656,
    "swin_tiny": 28_288_354, "swin_small": 49_606_258, "swin_base": 87_768_224,
}
NUM_CLASSES = 5


def _count(tree) -> int:
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def _init_shapes(model, size, **kwargs):
  x = jax.ShapeDtypeStruct((1, size, size, model.in_channels), jnp.float32)
  return jax.eval_shape(functools.partial(model.init, jax.random.key(0), **kwargs), x)


def tiny_vit(**kwargs) -> VisionTransformer:
  return VisionTransformer(**{"num_classes": NUM_CLASSES, "patch_size": 8, "embed_dim": 32,
                              "depth": 2, "num_heads": 2, "img_size": 32, **kwargs})


def tiny_swin(**kwargs) -> SwinTransformer:
  return SwinTransformer(**{"num_classes": NUM_CLASSES, "embed_dim": 16, "depths": (2, 1, 1, 1),
                            "num_heads": (2, 2, 4, 4), "window_size": 4, "img_size": 64,
                            **kwargs})


@pytest.mark.parametrize("name", sorted(TIMM_COUNTS))
def test_parameter_count_equals_timm(name):
  model = create_model(name, num_classes=1000)
  params = _init_shapes(model, 224)["params"]
  assert _count(params) == TIMM_COUNTS[name]
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(params))
  # The encoder is the classifier without its head (the head is never built on that path).
  encoder = _init_shapes(model, 224, features_only=True)["params"]
  assert set(encoder) == set(params) - {"head"}
  assert _count(encoder) == TIMM_COUNTS[name] - _count(params["head"])


@pytest.mark.slow
@pytest.mark.parametrize("build", [tiny_vit, tiny_swin], ids=["vit", "swin"])
def test_tiny_model_train_eval_and_encoder(build):
  rates = dict(drop_rate=0.1, proj_drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.2)
  model = build(**rates)
  x = jax.random.normal(rbg_key(0), (2, 32, 32, 3))
  variables = jax.jit(model.init)(rbg_key(1), x)
  assert set(variables) == {"params"}

  apply = jax.jit(model.apply, static_argnames=("train", "features_only"))
  logits = apply(variables, x)
  assert logits.shape == (2, NUM_CLASSES)
  assert np.all(np.isfinite(logits))
  np.testing.assert_array_equal(logits, apply(variables, x))  # eval is deterministic

  @jax.jit
  def train_step(params, key):
    def loss(params):
      out = model.apply({"params": params}, x, train=True, rngs={"dropout": key})
      return jnp.mean(out ** 2), out
    return jax.value_and_grad(loss, has_aux=True)(params)

  (_, train_a), grads = train_step(variables["params"], rbg_key(2))
  (_, train_b), _ = train_step(variables["params"], rbg_key(3))
  assert np.all(np.isfinite(train_a)) and np.all(np.isfinite(train_b))
  assert not np.allclose(train_a, train_b) and not np.allclose(train_a, logits)  # dropout is on
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))

  feats = apply(variables, x, features_only=True)
  assert [f.shape for f in feats] == [(2, 32 // s, 32 // s, c) for s, c in
                                      zip((2, 4, 8, 16, 32), model.feature_channels)]
  pooled = jax.eval_shape(model.clone(num_classes=0).apply, variables, x)
  assert pooled.shape == (2, model.feature_channels[-1])
  # bfloat16 compute for every registered variant is covered by tests/models/test_models.py.


def test_vit_position_embedding_is_resampled_for_other_sizes():
  small = tiny_vit()  # position embedding for a 4x4 patch grid (32 px)
  x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
  params = jax.jit(small.init)(jax.random.key(1), x[:, :32, :32])["params"]
  resampled = resample_position_embedding(params["pos_embed"], 8)
  assert resampled.shape == (1, 1 + 8 * 8, 32)
  np.testing.assert_array_equal(resampled[:, 0], params["pos_embed"][:, 0])  # class token kept
  # Applying the 32-px model at 64 px equals a 64-px model holding the resampled embedding.
  large = tiny_vit(img_size=64)
  large_params = {**params, "pos_embed": resampled}
  np.testing.assert_allclose(jax.jit(small.apply)({"params": params}, x),
                             jax.jit(large.apply)({"params": large_params}, x),
                             rtol=1e-6, atol=1e-6)
  assert resample_position_embedding(params["pos_embed"], 4) is params["pos_embed"]
  assert resample_position_embedding(params["pos_embed"], (8, 6)).shape == (1, 49, 32)
  # A non-square grid (8x6) runs too.
  assert jax.eval_shape(small.apply, {"params": params}, x[:, :, :48]).shape == (2, NUM_CLASSES)


def test_resample_position_embedding_rejects_a_non_square_grid():
  with pytest.raises(ValueError, match=r"\(1, 11, 4\).*not a square grid"):
    resample_position_embedding(jnp.zeros((1, 11, 4)), 3)


# ------------------------------------------------------------------------------------------------
# Shifted windows.
# ------------------------------------------------------------------------------------------------
def _original_coords(length: int, window: int, shift: int) -> np.ndarray:
  """For each position of the padded, rolled axis, its coordinate in the original map (>= length
  for padding)."""
  padded = -(-length // window) * window
  return (np.arange(padded) + shift) % padded


def _expected_mask(h, w, window, shift):
  """Built without the implementation: windows tile the padded, rolled map row-major; two tokens
  of a window may interact iff the key is real and both are less than a window apart in the
  original map on each axis (tokens that wrapped around the border are far apart). Also returns
  which queries are real (the mask of padded queries does not matter)."""
  (wh, ww), oy, ox = window, _original_coords(h, window[0], shift[0]), _original_coords(
      w, window[1], shift[1])
  mask, real = [], []
  for by in range(len(oy) // wh):
    for bx in range(len(ox) // ww):
      tokens = [(y, x) for y in oy[by * wh:(by + 1) * wh] for x in ox[bx * ww:(bx + 1) * ww]]
      mask.append([[ky < h and kx < w and abs(qy - ky) < wh and abs(qx - kx) < ww
                    for ky, kx in tokens] for qy, qx in tokens])
      real.append([y < h and x < w for y, x in tokens])
  return np.array(mask), np.array(real)


@pytest.mark.parametrize("h,w,window,shift", [(8, 8, (4, 4), (2, 2)), (10, 10, (4, 4), (2, 2)),
                                              (10, 7, (4, 4), (2, 2)), (6, 8, (3, 4), (1, 0)),
                                              (6, 6, (4, 4), (0, 0))])
def test_shifted_window_mask_matches_the_definition(h, w, window, shift):
  mask = shifted_window_mask(h, w, window, shift)
  expected, real_query = _expected_mask(h, w, window, shift)
  assert mask.shape == expected.shape
  np.testing.assert_array_equal(mask[real_query], expected[real_query])


def test_shifted_window_mask_blocks_the_wrapped_border():
  # 8x8 map, 4x4 windows shifted by 2: the last window holds original rows/cols 6, 7 (not wrapped)
  # and 0, 1 (wrapped from the other border), four groups of 2x2 tokens that must stay apart.
  mask = shifted_window_mask(8, 8, (4, 4), (2, 2))
  assert mask.shape == (4, 16, 16)
  assert mask[0].all()  # original rows/cols 2..5: nothing wrapped
  np.testing.assert_array_equal(mask[1].sum(1), 8)  # wrapped columns only: two groups of 8
  np.testing.assert_array_equal(mask[3].sum(1), 4)
  # Token (6, 6) sees (6, 7) but neither (6, 0) nor (0, 6).
  assert mask[3, 0, 1] and not mask[3, 0, 2] and not mask[3, 0, 8]
  assert shifted_window_mask(8, 8, (4, 4), (0, 0)) is None


def _layer_norm(x, p, eps=1e-5):
  normed = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
  return normed * p["scale"] + p["bias"]


def _dense(x, p):
  return x @ p["kernel"] + p.get("bias", 0.0)


def _naive_swin_block(p, x, heads, window, shift, table):
  """One token at a time: a query attends to the keys of its shifted window (rolled coordinates of
  the padded map) that are less than a window away in the original map."""
  from scipy.special import erf  # noqa: PLC0415  (test-only dependency)
  h, w, c = x.shape
  hd = c // heads
  pos = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1).reshape(-1, 2)
  padded = np.array([-(-n // win) * win for n, win in zip((h, w), window)])
  window_id = ((pos - np.array(shift)) % padded) // np.array(window)
  qkv = _dense(_layer_norm(x, p["norm1"]).reshape(h * w, c), p["attn"]["qkv"])
  q, k, v = qkv.reshape(h * w, 3, heads, hd).transpose(1, 0, 2, 3)
  out = np.zeros((h * w, heads, hd))
  for i in range(h * w):
    d = pos[i] - pos
    keys = np.all(window_id == window_id[i], 1) & np.all(np.abs(d) < np.array(window), 1)
    row = (d[keys, 0] + table - 1) * (2 * table - 1) + d[keys, 1] + table - 1
    logits = np.einsum("hd,khd->kh", q[i], k[keys]) / np.sqrt(hd)
    logits = logits + p["attn"]["relative_position_bias_table"][row]
    a = np.exp(logits - logits.max(0))
    out[i] = np.einsum("kh,khd->hd", a / a.sum(0), v[keys])
  x = x + _dense(out.reshape(h * w, c), p["attn"]["proj"]).reshape(h, w, c)
  y = _dense(_layer_norm(x, p["norm2"]), p["mlp"]["fc1"])
  return x + _dense(0.5 * y * (1 + erf(y / np.sqrt(2))), p["mlp"]["fc2"])


@pytest.mark.slow
@pytest.mark.parametrize("size,window,shift,table", [
    ((8, 8), (4, 4), (2, 2), 4),   # shifted, no padding
    ((10, 6), (4, 4), (2, 2), 4),  # shifted and padded (to 12x8)
    ((3, 2), (3, 2), (0, 0), 4),   # a window clamped below the table's: its central rows
])
def test_swin_block_equals_naive_token_by_token_attention(size, window, shift, table):
  block = SwinBlock(num_heads=2, window=window, shift=shift, table_window=table)
  x = jax.random.normal(jax.random.key(0), (1, *size, 8))
  params = jax.jit(block.init)(jax.random.key(1), x)["params"]
  # Random biases, norms and table so every parameter matters.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  params = tree.unflatten([a + 0.3 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])
  got = jax.jit(block.apply)({"params": params}, x)[0]
  want = _naive_swin_block(jax.tree.map(lambda a: np.asarray(a, np.float64), params),
                           np.asarray(x[0], np.float64), 2, window, shift, table)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_swin_stage_windows_follow_timm_clamping():
  model = create_model("swin_tiny", num_classes=2)
  # 64 px: stage resolutions 16, 8, 4, 2; windows clamp to 4 and 2 (no shift there).
  assert model.stage_windows(64, 64) == [((7, 7), (3, 3), 7), ((7, 7), (3, 3), 7),
                                         ((4, 4), (0, 0), 7), ((2, 2), (0, 0), 7)]
  assert model.stage_windows(224, 96)[3] == ((7, 3), (0, 0), 7)
  small = create_model("swin_tiny", num_classes=2, img_size=192)  # stage 4 at 6x6: table for 6
  assert small.stage_windows(192, 192)[3] == ((6, 6), (0, 0), 6)
  assert _count(_init_shapes(small, 192)["params"]["layers_3"]) < _count(
      _init_shapes(model, 224)["params"]["layers_3"])


# ------------------------------------------------------------------------------------------------
# Errors.
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,size,message", [
    ("vit_tiny", (50, 50), r"vit_tiny: input 50x50 is not divisible by the patch size 16"),
    ("vit_tiny", (224, 200), r"vit_tiny: input 224x200 .* patch size 16.*224x192"),
    ("swin_tiny", (50, 50), r"swin_tiny: input 50x50 is not divisible by the encoder stride 32"
                            r".*64x64"),
    ("swin_small", (240, 224), r"swin_small: input 240x224 .*stride 32.*256x224"),
])
def test_bad_sizes_name_the_model(name, size, message):
  model = create_model(name, num_classes=2)
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(functools.partial(model.init, jax.random.key(0)), jnp.zeros((1, *size, 3)))


def test_other_bad_inputs_name_the_model():
  vit = create_model("vit_small", num_classes=2)
  with pytest.raises(ValueError, match=r"vit_small: expected 3 input channels.*got 4"):
    jax.eval_shape(functools.partial(vit.init, jax.random.key(0)), jnp.zeros((1, 32, 32, 4)))
  with pytest.raises(ValueError, match=r"vit_small: img_size 100 is not divisible by the patch"):
    _init_shapes(vit.clone(img_size=100), 32)
  swin = create_model("swin_base", num_classes=2, img_size=64)  # tables: 7, 7, 4, 2
  with pytest.raises(ValueError, match=r"swin_base: input 224x224 needs 7x7 windows in stage 3.*"
                                       r"img_size=64.*4x4"):
    _init_shapes(swin, 224)
  with pytest.raises(ValueError, match=r"SwinTransformer: the stride 2\.\.32 encoder maps need"):
    _ = tiny_swin(depths=(2, 2, 2), num_heads=(2, 2, 4)).feature_channels


# ------------------------------------------------------------------------------------------------
# Equality with timm on the same weights (torch CPU).
# ------------------------------------------------------------------------------------------------
def _timm_to_flax(state_dict) -> dict:
  """timm module paths -> flax paths (``.N`` -> ``_N``, ``.`` -> nesting), torch layouts -> flax."""
  params: dict = {}
  for key, value in state_dict.items():
    *path, leaf = re.sub(r"\.(\d+)", r"_\1", key.replace("head.fc.", "head.")).split(".")
    value = value.detach().numpy()
    if leaf == "weight":
      leaf = "kernel" if value.ndim > 1 else "scale"
      value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
    node = params
    for p in path:
      node = node.setdefault(p, {})
    node[leaf] = jnp.asarray(value)
  return params


def _randomized_timm(torch, model):
  """Every tensor perturbed (biases, norms and tables included), so each mapping is exercised."""
  torch.manual_seed(0)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return model.eval()


@pytest.mark.torch
def test_vit_equals_timm():
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm")
  ref = _randomized_timm(torch, timm.models.vision_transformer.VisionTransformer(
      img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=NUM_CLASSES))
  x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
  with torch.no_grad():
    want = ref(torch.from_numpy(x)).numpy()
    want_map = ref.forward_intermediates(torch.from_numpy(x), indices=1, norm=True,
                                         intermediates_only=True)[0].numpy()
  model = tiny_vit()
  params = _timm_to_flax(ref.state_dict())
  xj = jnp.asarray(x.transpose(0, 2, 3, 1))
  np.testing.assert_allclose(model.apply({"params": params}, xj), want, rtol=1e-4, atol=1e-4)
  feats = model.apply({"params": params}, xj, features_only=True)
  np.testing.assert_allclose(feats[2], want_map.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.torch
def test_swin_equals_timm():
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm")
  # 64 px, window 4: stage resolutions 16, 8 (shifted windows), 4, 2 (clamped windows).
  ref = _randomized_timm(torch, timm.models.swin_transformer.SwinTransformer(
      img_size=64, patch_size=4, embed_dim=16, depths=(2, 2, 1, 1), num_heads=(2, 2, 4, 4),
      window_size=4, num_classes=NUM_CLASSES))
  x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
  with torch.no_grad():
    want = ref(torch.from_numpy(x)).numpy()
    want_maps = ref.forward_intermediates(torch.from_numpy(x), norm=True, intermediates_only=True)
  model = tiny_swin(depths=(2, 2, 1, 1))
  params = _timm_to_flax(ref.state_dict())
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(
      jnp.shape, _init_shapes(model, 64)["params"])
  xj = jnp.asarray(x.transpose(0, 2, 3, 1))
  np.testing.assert_allclose(model.apply({"params": params}, xj), want, rtol=1e-4, atol=1e-4)
  feats = model.apply({"params": params}, xj, features_only=True)
  for got, w in zip(feats[1:], want_maps):
    np.testing.assert_allclose(got, w.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)


@pytest.mark.torch
@pytest.mark.parametrize("grid", [(3, 5), (11, 7)])
def test_resample_position_embedding_equals_timm_bilinear(grid):
  torch = pytest.importorskip("torch")
  pos_embed_lib = pytest.importorskip("timm.layers.pos_embed")
  pos = np.random.default_rng(0).normal(size=(1, 1 + 7 * 7, 6)).astype(np.float32)
  want = pos_embed_lib.resample_abs_pos_embed(torch.from_numpy(pos), list(grid),
                                              interpolation="bilinear", antialias=False)
  np.testing.assert_allclose(resample_position_embedding(jnp.asarray(pos), grid), want.numpy(),
                             rtol=1e-5, atol=1e-6)
