"""Decoder attention ("coord", "eca"), attention_unet, segnet and fcn8s: the layers they add
(coordinate attention, max pooling with indices and unpooling, FCN's bilinear upsampling), shapes,
wiring, parameter counts and errors. Shapes and counts are traced (jax.eval_shape); the few real
runs use widths of 2-8 channels at 16-64 px."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxderm.models import create_model, layers, list_models
from flaxderm.models.attention import ATTENTIONS, ECA, CoordAttention, decoder_attention
from flaxderm.models.attention_unet import AttentionGate
from flaxderm.models.fcn import learned_upsample2x

# A VGG small enough to run: the fcn8s tests that need numbers use it as encoder.
TINY_VGG = dict(encoder_name="vgg16", encoder_kwargs=dict(
    stages=((2, 2), (4, 4), (4, 4, 4), (8, 8, 8), (8, 8, 8))), fc_channels=8)


def _keys():
  return {"params": jax.random.key(0, impl="rbg"), "dropout": jax.random.key(1, impl="rbg")}


def _init(model, x):
  return jax.jit(model.init)(_keys(), x)


def _abstract_params(model, x):
  return jax.eval_shape(lambda x: _init(model, x), x)["params"]


def _output_shapes(model, x):
  out = jax.eval_shape(lambda x: model.apply(_init(model, x), x), x)
  return jax.tree.map(lambda a: a.shape, out)


def _param_count(params):
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def _x(size=32, batch=1, channels=3, seed=0):
  return jax.random.normal(jax.random.key(seed), (batch, size, size, channels))


# ------------------------------------------------------------------------------------------------
# Max pooling with indices and max unpooling.
# ------------------------------------------------------------------------------------------------
def _window_argmax_mask(x, k=2):
  """Numpy: True at the first maximum (row-major) of each k x k window of an NHWC array."""
  n, h, w, c = x.shape
  windows = x.reshape(n, h // k, k, w // k, k, c).transpose(0, 1, 3, 5, 2, 4).reshape(
      n, h // k, w // k, c, k * k)
  first = np.eye(k * k, dtype=bool)[windows.argmax(-1)]
  return first.reshape(n, h // k, w // k, c, k, k).transpose(0, 1, 4, 2, 5, 3).reshape(x.shape)


@pytest.mark.parametrize("window", [2, 3])
def test_unpool_of_pool_puts_each_max_back_at_its_argmax(window):
  x = np.asarray(_x(6 * window // 2 * 2, batch=2, channels=3))
  pooled, indices = layers.max_pool_with_indices(jnp.asarray(x), window)
  n, h, w, c = x.shape
  expected_max = x.reshape(n, h // window, window, w // window, window, c).max(axis=(2, 4))
  np.testing.assert_array_equal(pooled, expected_max)
  assert indices.dtype == jnp.int32 and indices.shape == pooled.shape
  unpooled = np.asarray(layers.max_unpool(pooled, indices, window))
  np.testing.assert_array_equal(unpooled, np.where(_window_argmax_mask(x, window), x, 0))


def test_pool_gradient_goes_to_the_argmax_only():
  x = jnp.asarray(np.random.default_rng(0).integers(0, 3, (1, 4, 6, 2)).astype(np.float32))
  grad = jax.grad(lambda x: jnp.sum(layers.max_pool_with_indices(x)[0]))(x)  # ties included
  np.testing.assert_array_equal(grad, _window_argmax_mask(np.asarray(x)).astype(np.float32))


@pytest.mark.torch
@pytest.mark.parametrize("ties", [False, True])
def test_pool_and_unpool_match_torch(ties):
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(1)
  x = (rng.integers(0, 3, (2, 3, 8, 6)) if ties else rng.normal(size=(2, 3, 8, 6)))
  x = x.astype(np.float32)  # NCHW
  pooled_t, indices_t = torch.nn.MaxPool2d(2, return_indices=True)(torch.from_numpy(x))
  unpooled_t = torch.nn.MaxUnpool2d(2)(pooled_t, indices_t)
  nhwc = lambda a: np.asarray(a).transpose(0, 2, 3, 1)
  pooled, indices = layers.max_pool_with_indices(jnp.asarray(nhwc(x)))
  np.testing.assert_array_equal(pooled, nhwc(pooled_t.numpy()))
  np.testing.assert_array_equal(indices, nhwc(indices_t.numpy()))
  np.testing.assert_array_equal(layers.max_unpool(pooled, indices), nhwc(unpooled_t.numpy()))


def test_pool_and_unpool_name_bad_shapes():
  with pytest.raises(ValueError, match=r"max_pool_with_indices: input 5x4 is not divisible by"):
    layers.max_pool_with_indices(jnp.zeros((1, 5, 4, 1)))
  with pytest.raises(ValueError, match=r"max_unpool: indices shape \(1, 2, 2, 1\) differs"):
    layers.max_unpool(jnp.zeros((1, 2, 3, 1)), jnp.zeros((1, 2, 2, 1), jnp.int32))


# ------------------------------------------------------------------------------------------------
# Coordinate attention and the decoder's ECA.
# ------------------------------------------------------------------------------------------------
def _coord_apply(x, train=False, **options):
  module = CoordAttention(**options)
  variables = jax.jit(module.init)(jax.random.key(0), x)
  out = jax.jit(lambda v: module.apply(v, x, train, mutable=["batch_stats"] if train else False))(
      variables)
  return out[0] if train else out


@pytest.mark.parametrize("train", [False, True])
def test_coord_attention_shape_and_separable_gates(train):
  x = jnp.exp(_x(8, batch=2, channels=16)[:, :6])  # positive, so y / x is the gate; H != W
  y = _coord_apply(x, train)
  assert y.shape == x.shape == (2, 6, 8, 16)
  gate = np.asarray(y / x, np.float64)
  assert np.all((gate > 0) & (gate < 1))
  # gate[h, w] = row gate[h] * column gate[w]: the log gate, centred along H and W, is zero.
  log = np.log(gate)
  centred = (log - log.mean(1, keepdims=True) - log.mean(2, keepdims=True)
             + log.mean((1, 2), keepdims=True))
  np.testing.assert_allclose(centred, 0, atol=1e-5)
  assert np.ptp(log, axis=(1, 2)).min() > 1e-4  # and the gates do vary with position


@pytest.mark.parametrize("constant_axis", [1, 2], ids=["constant_along_h", "constant_along_w"])
def test_coord_attention_gates_follow_each_axis_separately(constant_axis):
  """A map constant along one axis gets gates constant along it, yet varying along the other."""
  x = jnp.exp(_x(8, channels=16))
  x = jnp.broadcast_to(x.mean(axis=constant_axis, keepdims=True), x.shape)
  gate = np.asarray(_coord_apply(x) / x)
  np.testing.assert_allclose(gate, np.broadcast_to(gate.take([0], constant_axis), gate.shape),
                             rtol=1e-6)
  other = 3 - constant_axis
  assert np.ptp(gate, axis=other).min() > 1e-4  # position along the other axis matters


@pytest.mark.parametrize("channels,options,hidden", [
    (64, {}, 8), (64, dict(reduction=4), 16), (512, {}, 16), (64, dict(min_hidden=1), 2)])
def test_coord_attention_reduction(channels, options, hidden):
  module = CoordAttention(**options)
  x = jnp.zeros((1, 4, 4, channels))
  params = jax.eval_shape(lambda x: module.init(jax.random.key(0), x), x)["params"]
  assert params["reduce"]["conv"]["kernel"].shape == (1, 1, channels, hidden)
  assert params["reduce"]["conv"]["bias"].shape == (hidden,)  # with bias, as Hou's code
  assert params["gate_h"]["kernel"].shape == params["gate_w"]["kernel"].shape == (
      1, 1, hidden, channels)


def test_decoder_eca_uses_kernel_5_and_eca_alone_adapts():
  model = create_model("unet", num_classes=1, base_width=4, decoder_attention="eca")
  params = _abstract_params(model, _x(16))
  for i in range(4):
    for j in (1, 2):
      assert params[f"decoder_blocks_{i}"][f"attention{j}"]["conv"]["kernel"].shape == (5, 1, 1)
  for channels, k in ((64, 3), (128, 5), (2048, 7)):
    x = jnp.zeros((1, 2, 2, channels))
    eca = jax.eval_shape(lambda x: ECA().init(jax.random.key(0), x), x)
    assert eca["params"]["conv"]["kernel"].shape == (k, 1, 1), channels


def test_coord_attention_in_the_decoder_needs_train():
  assert "coord" in ATTENTIONS and "eca" in ATTENTIONS
  with pytest.raises(ValueError, match=r"'coord' \(attention1\) has BatchNorm.*pass train"):
    decoder_attention("coord", 8, "attention1", None, jnp.float32)


@pytest.mark.slow
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_every_decoder_attention_builds_on_resnet18(attention):
  model = create_model("unet", num_classes=2, encoder_name="resnet18", decoder_attention=attention,
                       decoder_channels=(16, 8, 8, 8, 8))
  assert _output_shapes(model, _x(64)) == (1, 64, 64, 2)


@pytest.mark.slow
def test_coord_decoder_trains():
  model = create_model("unet", num_classes=1, base_width=2, depth=2, decoder_attention="coord")
  x = _x(16, batch=2)
  variables = _init(model, x)
  coordinate = variables["params"]["decoder_blocks_0"]["attention1"]
  assert coordinate["reduce"]["conv"]["kernel"].shape == (1, 1, 8, 8)

  def loss(params):
    out, stats = model.apply({**variables, "params": params}, x, train=True,
                             mutable=["batch_stats"])
    return jnp.mean(out ** 2), stats

  (value, stats), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
  assert np.isfinite(float(value))
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  gate_grads = grads["decoder_blocks_0"]["attention2"]
  for name in ("reduce", "gate_h", "gate_w"):  # (reduce's bias, before BatchNorm, gets none)
    kernel = (gate_grads[name]["conv"] if name == "reduce" else gate_grads[name])["kernel"]
    assert np.abs(kernel).max() > 0, name
  # Training updates the attention's BatchNorm statistics.
  before = variables["batch_stats"]["decoder_blocks_0"]["attention2"]["reduce"]["norm"]["bn"]
  after = stats["batch_stats"]["decoder_blocks_0"]["attention2"]["reduce"]["norm"]["bn"]
  assert not np.allclose(before["mean"], after["mean"])


# ------------------------------------------------------------------------------------------------
# Attention U-Net.
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [3, 4])
def test_attention_unet_shapes_and_gates(depth):
  model = create_model("attention_unet", num_classes=2, base_width=4, depth=depth)
  assert _output_shapes(model, _x(32)) == (1, 32, 32, 2)
  params = _abstract_params(model, _x(32))
  assert sorted(k for k in params if k.startswith("attention_gates")) == [
      f"attention_gates_{i}" for i in range(depth)]
  for i in range(depth):
    skip = 4 * 2 ** (depth - 1 - i)  # decoder level i fuses the skip of that width
    gate = params[f"attention_gates_{i}"]
    assert gate["w_x"]["kernel"].shape == (2, 2, skip, skip // 2) and "bias" not in gate["w_x"]
    assert gate["w_g"]["kernel"].shape == (1, 1, 2 * skip, skip // 2)
    assert gate["psi"]["kernel"].shape == (1, 1, skip // 2, 1)


def test_attention_unet_on_an_encoder():
  model = create_model("attention_unet", num_classes=1, encoder_name="resnet18",
                       decoder_channels=(16, 8, 8, 8, 8))
  assert _output_shapes(model, _x(64)) == (1, 64, 64, 1)
  params = _abstract_params(model, _x(64))
  # resnet18's skips at strides 16, 8, 4, 2 (256, 128, 64, 64 channels); gating from the decoder.
  assert [params[f"attention_gates_{i}"]["w_x"]["kernel"].shape for i in range(4)] == [
      (2, 2, 256, 128), (2, 2, 128, 64), (2, 2, 64, 32), (2, 2, 64, 32)]
  assert params["attention_gates_1"]["w_g"]["kernel"].shape == (1, 1, 16, 64)
  assert "attention_gates_4" not in params  # the last block has no skip


def test_attention_gate_follows_the_paper_equation():
  skip, gating = _x(8, channels=6), _x(4, channels=10, seed=1)
  gate = AttentionGate(3)
  variables = jax.jit(gate.init)(jax.random.key(2), skip, gating)
  p = jax.tree.map(np.asarray, variables["params"])
  out, state = jax.jit(lambda v: gate.apply(v, skip, gating, mutable=["intermediates"]))(variables)
  # W_x on 2x2 windows (stride 2), W_g and psi 1x1, additive, then bilinear back to 8x8.
  windows = np.asarray(skip).reshape(1, 4, 2, 4, 2, 6).transpose(0, 1, 3, 2, 4, 5)
  theta = np.einsum("nhwabc,abcf->nhwf", windows, p["w_x"]["kernel"])
  phi = np.asarray(gating) @ p["w_g"]["kernel"][0, 0] + p["w_g"]["bias"]
  q = np.maximum(theta + phi, 0) @ p["psi"]["kernel"][0, 0] + p["psi"]["bias"]
  alpha = jax.image.resize(1 / (1 + np.exp(-q)), (1, 8, 8, 1), "linear")
  np.testing.assert_allclose(state["intermediates"]["attention"][0], alpha, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out, np.asarray(skip) * alpha, rtol=1e-5, atol=1e-6)


def test_open_gates_give_the_unet():
  """With every gate forced open (alpha = 1) Attention U-Net is U-Net with the same weights."""
  options = dict(num_classes=2, base_width=2, depth=2)
  x = _x(16, batch=2)
  attention_unet = create_model("attention_unet", **options)
  variables = _init(attention_unet, x)
  params = dict(variables["params"])
  for name in [k for k in params if k.startswith("attention_gates")]:
    psi = params[name]["psi"]
    params[name] = {**params[name], "psi": {"kernel": jnp.zeros_like(psi["kernel"]),
                                            "bias": jnp.full_like(psi["bias"], 100.0)}}
  unet_params = {k: v for k, v in params.items() if not k.startswith("attention_gates")}
  gated = jax.jit(attention_unet.apply)({**variables, "params": params}, x)
  plain = jax.jit(create_model("unet", **options).apply)({**variables, "params": unet_params}, x)
  np.testing.assert_allclose(gated, plain, rtol=1e-6, atol=1e-6)


def test_attention_unet_sows_its_attention_maps():
  model = create_model("attention_unet", num_classes=1, base_width=2, depth=2)
  x = _x(16)
  _, state = jax.jit(lambda v, x: model.apply(v, x, mutable=["intermediates"]))(_init(model, x), x)
  maps = [state["intermediates"][f"attention_gates_{i}"]["attention"][0] for i in range(2)]
  assert [m.shape for m in maps] == [(1, 8, 8, 1), (1, 16, 16, 1)]
  assert all(np.all((m > 0) & (m < 1)) for m in maps)


def test_attention_unet_option_errors_name_it():
  with pytest.raises(ValueError, match=r"attention_unet: option\(s\) decoder_channels need "):
    create_model("attention_unet", num_classes=1, decoder_channels=(8,) * 5)
  with pytest.raises(ValueError, match=r"attention_unet: input 20x20 is not divisible"):
    _abstract_params(create_model("attention_unet", num_classes=1, base_width=2), _x(20))


# ------------------------------------------------------------------------------------------------
# SegNet.
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [32, 64])
def test_segnet_shapes_and_layout(size):
  model = create_model("segnet", num_classes=3, base_width=4)
  assert _output_shapes(model, _x(size, batch=2)) == (2, size, size, 3)
  params = _abstract_params(model, _x(size))
  encoder = sorted(k for k in params if k.startswith("encoder"))
  decoder = sorted(k for k in params if k.startswith("decoder"))
  assert len(encoder) == 13 and len(decoder) == 12  # + the classifier: 13 decoder convs
  assert params["encoder_4_2"]["conv"]["kernel"].shape == (3, 3, 32, 32)
  assert params["decoder_4_2"]["conv"]["kernel"].shape == (3, 3, 32, 32)  # stage 5 -> stage 4
  assert params["decoder_1_1"]["conv"]["kernel"].shape == (3, 3, 8, 4)
  assert params["decoder_0_0"]["conv"]["kernel"].shape == (3, 3, 4, 4)
  assert params["segmentation_head"]["kernel"].shape == (3, 3, 4, 3)


@pytest.mark.slow
def test_segnet_decoder_unpools_with_the_encoder_indices():
  model = create_model("segnet", num_classes=1, base_width=2)
  x = _x(32)
  variables = _init(model, x)

  def probe(variables, x):
    seen = {}

    def record(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.method_name == "__call__" and context.module.name in ("encoder_3_2",
                                                                       "decoder_3_0"):
        seen[context.module.name] = out if context.module.name == "encoder_3_2" else args[0]
      return out

    with nn.intercept_methods(record):
      model.apply(variables, x)
    return seen

  seen = jax.tree.map(np.asarray, jax.jit(probe)(variables, x))
  before_pool, unpooled = seen["encoder_3_2"], seen["decoder_3_0"]
  assert unpooled.shape == before_pool.shape == (1, 4, 4, 16)
  # Stage 4's decoder input is non-zero exactly where stage 4's encoder pool found its maxima
  # (zero where the decoder's own value there is zero, after ReLU).
  mask = _window_argmax_mask(before_pool)
  assert np.all(unpooled[~mask] == 0)
  assert np.count_nonzero(unpooled) > 0


# ------------------------------------------------------------------------------------------------
# FCN-8s.
# ------------------------------------------------------------------------------------------------
def test_learned_upsampling_starts_bilinear():
  x = _x(6, batch=2, channels=3)
  up = learned_upsample2x(3, "upscore2")
  variables = up.init(jax.random.key(0), x)
  kernel = variables["params"]["kernel"]
  assert kernel.shape == (4, 4, 3, 3)
  np.testing.assert_allclose(kernel[:, :, 0, 1], 0)  # class by class
  out = up.apply(variables, x)
  expected = layers.resize_bilinear(x, 12, 12)
  assert out.shape == expected.shape
  np.testing.assert_allclose(out[:, 1:-1, 1:-1], expected[:, 1:-1, 1:-1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("encoder,fc", [("resnet18", False), ("vgg16", True)])
def test_fcn8s_shapes_and_fc_layers(encoder, fc):
  model = create_model("fcn8s", num_classes=2, encoder_name=encoder)
  x = _x(64, batch=2)
  assert _output_shapes(model, x) == (2, 64, 64, 2)
  params = _abstract_params(model, x)
  assert ("fc6" in params) == ("fc7" in params) == fc
  width = 4096 if fc else 512
  assert params["score_fr"]["kernel"].shape == (1, 1, width, 2)
  pool3, pool4 = (256, 512) if fc else (128, 256)  # VGG's pool3/pool4; resnet18's layer2/layer3
  assert params["score_pool3"]["kernel"].shape == (1, 1, pool3, 2)
  assert params["score_pool4"]["kernel"].shape == (1, 1, pool4, 2)
  assert params["upscore2"]["kernel"].shape == params["upscore_pool4"]["kernel"].shape == (
      4, 4, 2, 2)
  assert "segmentation_head" not in params


def test_fcn8s_fuses_strides_32_16_8():
  model = create_model("fcn8s", num_classes=2, **TINY_VGG)
  x = _x(64)
  variables = _init(model, x)
  params = dict(variables["params"])
  for i, name in enumerate(("score_fr", "score_pool4", "score_pool3")):  # zero at init
    assert not np.any(params[name]["kernel"])
    params[name] = jax.tree.map(lambda a, i=i: jax.random.normal(jax.random.key(i), a.shape),
                                params[name])
  out, state = jax.jit(lambda p, x: model.apply({**variables, "params": p}, x,
                                                capture_intermediates=True,
                                                mutable=["intermediates"]))(params, x)
  seen = {k: v["__call__"][0] for k, v in state["intermediates"].items() if k != "__call__"}
  assert seen["score_fr"].shape[1:3] == (2, 2) and seen["score_pool4"].shape[1:3] == (4, 4)
  assert seen["score_pool3"].shape[1:3] == (8, 8)
  upscore = learned_upsample2x(2, "upscore_pool4")
  fused16 = upscore.apply({"params": params["upscore_pool4"]},
                          seen["upscore2"] + seen["score_pool4"])
  np.testing.assert_allclose(seen["upscore_pool4"], fused16, rtol=1e-5, atol=1e-5)
  expected = layers.resize_bilinear(fused16 + seen["score_pool3"], 64, 64)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_fcn8s_needs_strides_8_16_32():
  model = create_model("fcn8s", num_classes=2, encoder_name="resnet18",
                       encoder_kwargs={"output_stride": 16})
  with pytest.raises(ValueError, match=r"fcn8s: needs the encoder's maps at strides 8, 16 and 32"):
    _abstract_params(model, _x(64))


# ------------------------------------------------------------------------------------------------
# Registry and the parameter counts the docstrings state.
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,expected", [
    ("attention_unet", 32_083_077), ("segnet", 29_435_649), ("fcn8s", 134_265_443)])
def test_default_parameter_counts(name, expected):
  assert name in list_models(task="segmentation")
  assert _param_count(_abstract_params(create_model(name, num_classes=1), _x(64))) == expected
