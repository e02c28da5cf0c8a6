"""Segmentation architectures (unet, deeplabv3plus, sepdilated_codec): shapes, the transposed-conv
rewrite, parameter counts, input validation, gradients, and smp parity of the U-Net decoder.

Encoder-based models run on tiny test-only encoders registered for the duration of this module, so
the tests exercise the encoder contract without paying for a real backbone; a shape test per model
uses resnet18 (and vit_tiny) when registered.
"""
from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxderm.models import create_model, layers, list_models, registry
from flaxderm.models.efficientnet import Stage
from flaxderm.models.unet import Upsample2x

TINY = "_test_tiny_encoder"
PASSTHROUGH = "_test_passthrough_encoder"
STRIDES = (2, 4, 8, 16, 32)


class TinyEncoder(nn.Module):
  """Follows the encoder contract: one conv-BN-ReLU per stride, dilated past ``output_stride``."""
  num_classes: int = 0
  widths: tuple[int, ...] = (4, 6, 8, 8, 12)
  output_stride: int = 32
  in_channels: int = 3
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32

  @property
  def feature_channels(self):
    return self.widths

  @nn.compact
  def __call__(self, x, train: bool = False, features_only: bool = False):
    layers.check_input("tiny", x, in_channels=self.in_channels, multiple_of=self.output_stride)
    features, stride, dilation = [], 1, 1
    for i, width in enumerate(self.widths):
      step = 2 if stride < self.output_stride else 1
      stride, dilation = stride * step, dilation * (2 // step)
      x = layers.ConvNormAct(max(width, 1), 3, step, dilation, dtype=self.dtype,
                             param_dtype=self.param_dtype, name=f"stage{i}")(x, train)
      features.append(x[..., :width])  # width 0: a zero-channel map, as the contract allows
    if features_only:
      return features
    return jnp.mean(x, axis=(1, 2))


class PassthroughEncoder(nn.Module):
  """Its feature maps are its parameters, so a decoder can be fed exactly the maps torch gets."""
  num_classes: int = 0
  widths: tuple[int, ...] = (8, 6, 10, 12, 16)
  in_channels: int = 3
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32

  @property
  def feature_channels(self):
    return self.widths

  @nn.compact
  def __call__(self, x, train: bool = False, features_only: bool = True):
    n, h, w, _ = x.shape
    return [self.param(f"feature_{i}", nn.initializers.normal(1.0), (n, h // s, w // s, c))
            for i, (s, c) in enumerate(zip(STRIDES, self.widths))]


@pytest.fixture(scope="module", autouse=True)
def _registered_test_encoders():
  for name, cls in ((TINY, TinyEncoder), (PASSTHROUGH, PassthroughEncoder)):
    register = registry.register_model(task="classification", family="test", default_input_size=64)
    factory = lambda *, num_classes, _cls=cls, **kw: _cls(num_classes=num_classes, **kw)
    factory.__name__ = name
    register(factory)
  yield
  for name in (TINY, PASSTHROUGH):
    del registry._REGISTRY[name]  # pylint: disable=protected-access


def _init(model, x):
  # Jitted, with XLA's RngBitGenerator keys: eager threefry initialisation of a few dozen kernels
  # costs ~10 s of op-by-op compilation on a 2-core CPU, this ~2 s.
  keys = {"params": jax.random.key(0, impl="rbg"), "dropout": jax.random.key(1, impl="rbg")}
  return jax.jit(model.init)(keys, x)


def _abstract_init(model, x):
  # A closure, not an argument: jax.eval_shape abstracts a Module (it has a `dtype`) to a scalar.
  return jax.eval_shape(lambda x: _init(model, x), x)


def _output_shapes(model, x):
  """Output shapes of an eval-mode forward pass, traced without compiling or running."""
  out = jax.eval_shape(lambda x: model.apply(_init(model, x), x), x)
  return jax.tree.map(lambda a: a.shape, out)


def _x(size=32, batch=2, channels=3):
  return jax.random.normal(jax.random.key(0), (batch, size, size, channels))


# ------------------------------------------------------------------------------------------------
# Shapes.
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("upsampling", ["transpose", "bilinear"])
@pytest.mark.parametrize("depth", [3, 4])
def test_original_unet_shapes(upsampling, depth):
  model = create_model("unet", num_classes=3, base_width=4, depth=depth, upsampling=upsampling)
  assert _output_shapes(model, _x(32)) == (2, 32, 32, 3)


def test_original_unet_names_levels():
  model = create_model("unet", num_classes=2, base_width=4, norm="group", decoder_attention="eca")
  assert _output_shapes(model, _x(32)) == (2, 32, 32, 2)
  params = _abstract_init(model, _x(32))["params"]
  assert sorted(k for k in params if k.startswith("encoder_blocks")) == [
      f"encoder_blocks_{i}" for i in range(5)]
  assert params["encoder_blocks_4"]["conv2"]["conv"]["kernel"].shape == (3, 3, 64, 64)
  assert params["upsample_0"]["proj"]["kernel"].shape == (1, 1, 64, 4 * 32)


@pytest.mark.parametrize("attention", [None, "scse", "se", "cbam", "eca"])
def test_encoder_unet_shapes(attention):
  model = create_model("unet", num_classes=1, encoder_name=TINY, decoder_channels=(16, 8, 8, 8, 8),
                       decoder_attention=attention)
  assert _output_shapes(model, _x(64)) == (2, 64, 64, 1)


@pytest.mark.parametrize("encoder_kwargs", [{"output_stride": 16}, {"widths": [4, 0, 8, 8, 12]}],
                         ids=["os16", "zero_channel_skip"])
def test_encoder_unet_follows_encoder_strides(encoder_kwargs):
  model = create_model("unet", num_classes=2, encoder_name=TINY, encoder_kwargs=encoder_kwargs,
                       decoder_channels=[16, 8, 8, 8, 8])
  assert _output_shapes(model, _x(64)) == (2, 64, 64, 2)
  hash(model)  # list/dict options are frozen: the module stays hashable


@pytest.mark.parametrize("name", ["unet", "deeplabv3plus"])
def test_aux_classification_head(name):
  model = create_model(name, num_classes=2, encoder_name=TINY, aux_classes=5,
                       **_small_decoder(name))
  assert _output_shapes(model, _x(64)) == ((2, 64, 64, 2), (2, 5))


def _small_decoder(name):
  return {"unet": dict(decoder_channels=(16, 8, 8, 8, 8)),
          "deeplabv3plus": dict(decoder_channels=16, low_level_channels=8)}[name]


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("separable", [True, False])
def test_deeplab_shapes(output_stride, separable):
  model = create_model("deeplabv3plus", num_classes=2, encoder_name=TINY,
                       output_stride=output_stride, separable=separable, decoder_channels=16,
                       low_level_channels=8)
  assert _output_shapes(model, _x(64)) == (2, 64, 64, 2)


@pytest.mark.parametrize("output_stride,atrous_rates,expected", [
    (16, None, (6, 12, 18)), (8, None, (12, 24, 36)), (16, (12, 24, 36), (12, 24, 36))])
def test_deeplab_atrous_rates(output_stride, atrous_rates, expected):
  model = create_model("deeplabv3plus", num_classes=1, encoder_name=TINY, decoder_channels=8,
                       output_stride=output_stride, atrous_rates=atrous_rates)
  seen = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, layers.ASPP) and context.method_name == "__call__":
      seen.append(tuple(context.module.rates))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    _abstract_init(model, _x(64))
  assert seen == [expected]


@pytest.mark.parametrize("width", [4, 8])
def test_codec_shapes(width):
  model = create_model("sepdilated_codec", num_classes=2, width=width)
  assert _output_shapes(model, _x(32)) == (2, 32, 32, 2)
  assert _output_shapes(model, _x(48, batch=1)) == (1, 48, 48, 2)


@pytest.mark.parametrize("name,kwargs", [
    ("unet", dict(encoder_name="resnet18", decoder_channels=(16, 8, 8, 8, 8))),
    ("unet", dict(encoder_name="vit_tiny", decoder_channels=(16, 8, 8, 8, 8))),
    # Stage is a NamedTuple: the options must reach the encoder as Stages, not plain tuples.
    ("unet", dict(encoder_name="efficientnet_b0", decoder_channels=(16, 8, 8, 8, 8),
                  encoder_kwargs=dict(stem_channels=8, head_channels=16, stages=(
                      Stage(1, 3, 1, 1, 8), Stage(1, 3, 2, 2, 8), Stage(1, 3, 2, 2, 16),
                      Stage(1, 5, 2, 2, 16), Stage(1, 3, 2, 2, 24))))),
    ("deeplabv3plus", dict(encoder_name="resnet18", decoder_channels=16, output_stride=8)),
    ("deeplabv3plus", dict(encoder_name="resnet18", decoder_channels=16, output_stride=16)),
])
def test_real_encoder_shapes(name, kwargs):
  if kwargs["encoder_name"] not in list_models():
    pytest.skip(f"{kwargs['encoder_name']} is not registered")
  model = create_model(name, num_classes=2, **kwargs)
  shapes = _abstract_init(model, _x(64))
  assert "encoder" in shapes["params"]
  assert _output_shapes(model, _x(64)) == (2, 64, 64, 2)


# ------------------------------------------------------------------------------------------------
# The transposed conv as 1x1 conv + depth-to-space.
# ------------------------------------------------------------------------------------------------
def _upsample_params(kernel_2x2, bias):
  """Upsample2x params equal to a flax ConvTranspose kernel (2, 2, Cin, F) (see its docstring)."""
  cin, features = kernel_2x2.shape[2:]
  proj = kernel_2x2[::-1, ::-1].transpose(2, 0, 1, 3).reshape(1, 1, cin, 4 * features)
  return {"params": {"proj": {"kernel": proj}, "bias": bias}}


def test_transpose_upsampling_equals_conv_transpose():
  x = jax.random.normal(jax.random.key(0), (2, 5, 7, 6))
  reference = nn.ConvTranspose(4, (2, 2), strides=(2, 2))
  ref_vars = reference.init(jax.random.key(1), x)
  ref_vars = {"params": {**ref_vars["params"],
                         "bias": jax.random.normal(jax.random.key(2), (4,))}}
  expected = reference.apply(ref_vars, x)
  ours = Upsample2x(4, "transpose").apply(
      _upsample_params(ref_vars["params"]["kernel"], ref_vars["params"]["bias"]), x)
  assert ours.shape == expected.shape == (2, 10, 14, 4)
  np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.torch
def test_transpose_upsampling_equals_torch_conv_transpose2d():
  torch = pytest.importorskip("torch")
  conv = torch.nn.ConvTranspose2d(6, 4, kernel_size=2, stride=2)
  x = np.random.default_rng(0).normal(size=(2, 6, 5, 7)).astype(np.float32)
  with torch.no_grad():
    expected = conv(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
  weight = conv.weight.detach().numpy()  # (Cin, F, 2, 2): W[c, o, a, b]
  proj = weight.transpose(0, 2, 3, 1).reshape(1, 1, 6, 16)  # channel (2a + b) * F + o
  ours = Upsample2x(4, "transpose").apply(
      {"params": {"proj": {"kernel": proj}, "bias": conv.bias.detach().numpy()}},
      x.transpose(0, 2, 3, 1))
  np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=1e-5)


def test_bilinear_upsampling_commutes_conv_and_resize():
  x = jax.random.normal(jax.random.key(0), (1, 4, 6, 5))
  up = Upsample2x(3, "bilinear")
  variables = up.init(jax.random.key(1), x)
  p = variables["params"]["proj"]
  resize_then_conv = layers.resize_bilinear(x, 8, 12) @ p["kernel"][0, 0] + p["bias"]
  np.testing.assert_allclose(up.apply(variables, x), resize_then_conv, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Parameter counts: paper 004's codec against the original U-Net of the same width.
# ------------------------------------------------------------------------------------------------
def _param_count(model, size=64):
  params = _abstract_init(model, _x(size, batch=1))["params"]
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


@pytest.mark.parametrize("width", [8, 16, 32, 64])
def test_codec_has_far_fewer_parameters_than_unet(width):
  codec = _param_count(create_model("sepdilated_codec", num_classes=1, width=width))
  unet = _param_count(create_model("unet", num_classes=1, base_width=width))
  assert unet >= 2 * codec, (width, codec, unet)
  if width == 64:
    # Ronneberger's U-Net (base width 64, depth 4, with BatchNorm): 31.04 M parameters.
    assert unet == 31_037_633


# ------------------------------------------------------------------------------------------------
# Validation.
# ------------------------------------------------------------------------------------------------
_MODELS = [
    ("unet", dict(base_width=4), 16),
    ("unet", dict(encoder_name=TINY, decoder_channels=(8, 8, 8, 8, 8)), 32),
    ("deeplabv3plus", dict(encoder_name=TINY, decoder_channels=8), 16),
    ("deeplabv3plus", dict(encoder_name=TINY, decoder_channels=8, output_stride=8), 8),
    ("sepdilated_codec", dict(width=4), 16),
]


@pytest.mark.parametrize("name,kwargs,multiple", _MODELS)
def test_bad_input_raises_naming_model(name, kwargs, multiple):
  model = create_model(name, num_classes=2, **kwargs)
  bad = multiple * 3 + multiple // 2
  with pytest.raises(ValueError, match=rf"{name}: input {bad}x{bad} is not divisible .*{multiple}"):
    _abstract_init(model, _x(bad, batch=1))
  with pytest.raises(ValueError, match=rf"{name}: expected 3 input channels .* got 1"):
    _abstract_init(model, _x(multiple * 2, batch=1, channels=1))
  with pytest.raises(ValueError, match=rf"{name}: expected an NHWC batch"):
    _abstract_init(model, jnp.zeros((multiple, multiple, 3)))


@pytest.mark.parametrize("name,kwargs", [
    ("sepdilated_codec", dict(width=4)), ("unet", dict(base_width=4)),
    ("unet", dict(encoder_name=TINY, decoder_channels=(8,) * 5)),
    ("deeplabv3plus", dict(encoder_name=TINY, decoder_channels=8))])
def test_in_channels_option(name, kwargs):
  model = create_model(name, num_classes=1, in_channels=1, **kwargs)
  assert _output_shapes(model, _x(32, channels=1)) == (2, 32, 32, 1)


@pytest.mark.parametrize("name,kwargs,match", [
    ("unet", dict(decoder_channels=(8,) * 5), r"unet: option\(s\) decoder_channels need encoder"),
    ("unet", dict(encoder_name=TINY, base_width=8), r"unet: option\(s\) base_width apply only"),
    ("unet", dict(encoder_name=TINY, decoder_channels=(8, 8)), r"unet: decoder_channels needs 5"),
    ("unet", dict(upsampling="nearest"), r"upsampling must be one of"),
    ("unet", dict(base_width=4, decoder_attention="transformer"), r"decoder_attention must be"),
    ("deeplabv3plus", dict(encoder_name=TINY, output_stride=32), r"deeplabv3plus: output_stride"),
    ("deeplabv3plus", dict(encoder_name=TINY, encoder_kwargs={"output_stride": 8}),
     r"deeplabv3plus: set output_stride on the model itself"),
    ("deeplabv3plus", dict(encoder_name=TINY, atrous_rates=(6, 12)), r"needs 3 rates"),
    ("deeplabv3plus", dict(encoder_name=TINY, encoder_kwargs={"widths": (4, 0, 8, 8, 8)}),
     r"no stride-4 features"),
    ("sepdilated_codec", dict(width=4, num_classes=0), r"num_classes must be >= 1"),
    ("unet", dict(encoder_name="no_such_encoder"),
     r"unet: cannot build encoder 'no_such_encoder': unknown model"),
    ("unet", dict(encoder_name=TINY, encoder_kwargs={"in_channels": 1}),
     r"unet: set in_channels on the model itself"),
])
def test_bad_options_raise(name, kwargs, match):
  kwargs = {"num_classes": 2, **kwargs}
  with pytest.raises(ValueError, match=match):
    _abstract_init(create_model(name, **kwargs), _x(64, batch=1))


# ------------------------------------------------------------------------------------------------
# Training mode: gradients.
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name,kwargs", [
    ("unet", dict(base_width=4, upsampling="transpose")),
    ("unet", dict(encoder_name=TINY, decoder_channels=(8, 8, 8, 8, 8), aux_classes=2)),
    ("deeplabv3plus", dict(encoder_name=TINY, decoder_channels=8, low_level_channels=4)),
    ("sepdilated_codec", dict(width=4, dropout=0.1)),
])
def test_gradients_finite(name, kwargs):
  model = create_model(name, num_classes=2, **kwargs)
  x = _x(64 if "encoder_name" in kwargs else 32)
  variables = _init(model, x)

  def loss(params):
    out, _ = model.apply({**variables, "params": params}, x, train=True,
                         rngs={"dropout": jax.random.key(3)}, mutable=["batch_stats"])
    return sum(jnp.mean(jnp.square(o)) for o in jax.tree.leaves(out))

  value, grads = jax.jit(jax.value_and_grad(loss))(variables["params"])
  assert np.isfinite(float(value))
  leaves = jax.tree.leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads["segmentation_head"]))


# ------------------------------------------------------------------------------------------------
# smp parity of the U-Net decoder and head (the encoder's own parity is its family's test).
# ------------------------------------------------------------------------------------------------
_SMP_TO_FLAX = [  # (torch state-dict key pattern, flax path template)
    (r"decoder\.blocks\.(\d)\.(conv\d)\.0\.weight", r"decoder_blocks_\1/\2/conv/kernel"),
    (r"decoder\.blocks\.(\d)\.(conv\d)\.1\.(\w+)", r"decoder_blocks_\1/\2/norm/bn/\3"),
    (r"decoder\.blocks\.(\d)\.(attention\d)\.attention\.cSE\.1\.(\w+)",
     r"decoder_blocks_\1/\2/cse_reduce/\3"),
    (r"decoder\.blocks\.(\d)\.(attention\d)\.attention\.cSE\.3\.(\w+)",
     r"decoder_blocks_\1/\2/cse_expand/\3"),
    (r"decoder\.blocks\.(\d)\.(attention\d)\.attention\.sSE\.0\.(\w+)",
     r"decoder_blocks_\1/\2/sse/\3"),
    (r"segmentation_head\.0\.(\w+)", r"segmentation_head/\1"),
]


def _smp_to_flax(state_dict) -> dict:
  """{"params": ..., "batch_stats": ...} from an smp state dict (decoder and head only)."""
  variables = {"params": {}, "batch_stats": {}}
  for key, tensor in state_dict.items():
    if key.endswith("num_batches_tracked"):
      continue
    path = next(re.sub(p, t, key) for p, t in _SMP_TO_FLAX if re.fullmatch(p, key)).split("/")
    value = tensor.detach().numpy()
    if value.ndim == 4:  # OIHW -> HWIO
      value = value.transpose(2, 3, 1, 0)
    leaf = {"weight": "scale" if "norm" in path else "kernel", "running_mean": "mean",
            "running_var": "var"}.get(path[-1], path[-1])
    collection = "batch_stats" if leaf in ("mean", "var") else "params"
    node = variables[collection]
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[leaf] = value
  return variables


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.parametrize("attention", [None, "scse"])
def test_unet_decoder_matches_smp(attention):
  torch = pytest.importorskip("torch")
  smp_unet = pytest.importorskip("segmentation_models_pytorch.decoders.unet.decoder")
  smp_heads = pytest.importorskip("segmentation_models_pytorch.base.heads")
  torch.manual_seed(0)
  widths = PassthroughEncoder.widths
  # smp's scSE reduces c to c // 16 channels, zero below 16; ours keeps at least one.
  decoder_channels = (32, 16, 16, 16, 16) if attention else (16, 8, 8, 8, 8)
  decoder = smp_unet.UnetDecoder([3, *widths], decoder_channels, n_blocks=5,
                                 attention_type=attention)
  head = smp_heads.SegmentationHead(decoder_channels[-1], 2, kernel_size=3)
  for module in decoder.modules():  # non-trivial BatchNorm statistics and affine parameters
    if isinstance(module, torch.nn.BatchNorm2d):
      with torch.no_grad():
        for t in (module.weight, module.bias, module.running_mean):
          t.copy_(torch.randn_like(t) * 0.5)
        module.running_var.copy_(torch.rand_like(module.running_var) + 0.5)
  decoder.eval()
  head.eval()

  model = create_model("unet", num_classes=2, encoder_name=PASSTHROUGH,
                       decoder_channels=decoder_channels, decoder_attention=attention)
  x = _x(64, batch=2)
  variables = _init(model, x)
  features = [variables["params"]["encoder"][f"feature_{i}"] for i in range(5)]
  # smp builds attention1 in the last block too, but never applies it there (no skip to fuse).
  state = {f"decoder.{k}": v for k, v in decoder.state_dict().items()
           if not k.startswith("blocks.4.attention1.")}
  state.update({f"segmentation_head.{k}": v for k, v in head.state_dict().items()})
  converted = _smp_to_flax(state)
  converted["params"]["encoder"] = variables["params"]["encoder"]
  paths = lambda tree: {jax.tree_util.keystr(p) for p, _ in jax.tree.leaves_with_path(tree)}
  assert paths(converted) == paths(dict(variables))
  ours = jax.jit(model.apply)(converted, x)

  to_torch = lambda a: torch.from_numpy(np.asarray(a).transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    expected = head(decoder([to_torch(x)] + [to_torch(f) for f in features]))
  np.testing.assert_allclose(ours, expected.numpy().transpose(0, 2, 3, 1), atol=1e-4, rtol=1e-4)
