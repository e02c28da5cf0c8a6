"""Transformer encoders under segmentation decoders: TransUNet (ViT + learned neck + U-Net decoder)
and Swin under every smp-style decoder.

Training runs use tiny ViT / Swin variants registered for the test only (the registered variants
fix their widths); parameter counts use the real ones, traced without compute. With torch: a timm
ViT state dict loads into TransUNet's encoder and gives timm's tokens."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxderm.models import convert, create_model, list_models, registry
from flaxderm.models.segmentation import SegmentationModel
from flaxderm.models.swin import SwinTransformer
from flaxderm.models.transunet import NeckLevel
from flaxderm.models.vit import VisionTransformer
from rng import rbg_key

SIZE = 64
NUM_CLASSES = 2


def _count(tree) -> int:
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def _init_shapes(model, size=SIZE):
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return jax.eval_shape(functools.partial(model.init, rbg_key(0)), x)


TINY_ENCODERS = {
    "vit_test_p16": ("vit", functools.partial(VisionTransformer, patch_size=16, embed_dim=32,
                                              depth=2, num_heads=2)),
    "vit_test_p8": ("vit", functools.partial(VisionTransformer, patch_size=8, embed_dim=32,
                                             depth=1, num_heads=2)),
    "swin_test": ("swin", functools.partial(SwinTransformer, embed_dim=16, depths=(1, 1, 1, 1),
                                            num_heads=(1, 1, 2, 2), window_size=4)),
}


@pytest.fixture
def tiny_encoders(monkeypatch):
  """The TINY_ENCODERS in the registry for one test."""
  for name, (family, build) in TINY_ENCODERS.items():
    factory = functools.partial(lambda build, name, *, num_classes, **options: build(
        num_classes=num_classes, model_name=name, **options), build, name)
    monkeypatch.setitem(registry._REGISTRY, name, registry.ModelEntry(
        name, factory, "classification", family, SIZE, "test encoder"))


def check_trains(model, x, *, every_parameter: bool):
  """Init, the eval-mode output and the gradients of a train-mode loss, in one compilation: the
  output has the input's size, gradients are finite and not all zero (with ``every_parameter``,
  none is: decoders with zero-initialised gates or score layers, FCN's, have exact zeros at
  init). Returns the variables."""
  @jax.jit
  def run(x):
    variables = model.init({"params": rbg_key(0), "dropout": rbg_key(1)}, x)

    def loss(params):
      out, _ = model.apply({**variables, "params": params}, x, train=True,
                           mutable=["batch_stats"], rngs={"dropout": rbg_key(2)})
      return jnp.mean(jnp.square(out - 1))  # not minimal at a zero-initialised head's output

    return variables, model.apply(variables, x), jax.grad(loss)(variables["params"])

  variables, out, grads = run(x)
  assert out.shape == (*x.shape[:3], NUM_CLASSES)
  assert np.all(np.isfinite(np.asarray(out)))
  flat = {"/".join(str(k.key) for k in path): np.asarray(g)
          for path, g in jax.tree_util.tree_leaves_with_path(grads)}
  assert all(np.all(np.isfinite(g)) for g in flat.values())
  dead = [k for k, g in flat.items() if not np.any(g)]
  assert (not dead) if every_parameter else len(dead) < len(flat), dead
  return variables


# ------------------------------------------------------------------------------------------------
# TransUNet.
# ------------------------------------------------------------------------------------------------
# At 256 px, 1 class, default neck and decoder: (whole model, encoder). The encoder is timm's ViT
# without its head, with the position embedding of a 16x16 grid (256 + 1 tokens instead of 197).
TRANSUNET_COUNTS = {"vit_tiny": (11_536_017, 5_535_936), "vit_small": (27_873_105, 21_688_704),
                    "vit_base": (92_397_777, 85_844_736)}
TIMM_VIT = {"vit_tiny": (5_717_416, 192), "vit_small": (22_050_664, 384),
            "vit_base": (86_567_656, 768)}


@pytest.mark.parametrize("encoder", sorted(TRANSUNET_COUNTS))
def test_transunet_parameter_counts(encoder):
  model = create_model("transunet", num_classes=1, encoder_name=encoder)
  params = _init_shapes(model, 256)["params"]
  assert (_count(params), _count(params["encoder"])) == TRANSUNET_COUNTS[encoder]
  timm_count, width = TIMM_VIT[encoder]
  head = 1000 * width + 1000
  assert _count(params["encoder"]) == timm_count - head + (257 - 197) * width
  assert params["encoder"]["pos_embed"].shape == (1, 257, width)


TINY_TRANSUNET = dict(img_size=SIZE, neck_channels=(8, 8, 16, 16),
                      decoder_channels=(16, 16, 8, 8, 8))


@pytest.mark.slow
def test_transunet_trains(tiny_encoders):
  model = create_model("transunet", num_classes=NUM_CLASSES, encoder_name="vit_test_p16",
                       **TINY_TRANSUNET)
  check_trains(model, jax.random.normal(rbg_key(3), (2, SIZE, SIZE, 3)), every_parameter=True)


@pytest.mark.parametrize("encoder,ups", [("vit_test_p16", {4: 2, 8: 1, 16: 0, 32: -1}),
                                         ("vit_test_p8", {4: 1, 8: 0, 16: -1, 32: -2})])
def test_transunet_builds_the_pyramid(tiny_encoders, encoder, ups):
  """Any patch size: per level, x2 steps up (transposed conv + 3x3) or down (strided 3x3) from
  the token map's stride to the level's (``ups``: the number of steps up, negative = down)."""
  model = create_model("transunet", num_classes=NUM_CLASSES, encoder_name=encoder,
                       **TINY_TRANSUNET)
  x = jnp.zeros((2, SIZE, SIZE, 3))
  variables = _init_shapes(model)
  for stride, steps in ups.items():
    level = variables["params"][f"neck_stride{stride}"]
    assert {k for k in level if k.startswith("up_")} == {f"up_{i}" for i in range(max(steps, 0))}
    assert {k for k in level if k.startswith("down_")} == {f"down_{i}"
                                                           for i in range(max(-steps, 0))}
  _, state = jax.eval_shape(functools.partial(
      model.apply, capture_intermediates=lambda m, _: isinstance(m, NeckLevel),
      mutable=["intermediates"]), variables, x)
  for stride, width in zip((4, 8, 16, 32), TINY_TRANSUNET["neck_channels"]):
    (out,) = state["intermediates"][f"neck_stride{stride}"]["__call__"]
    assert out.shape == (2, SIZE // stride, SIZE // stride, width)


def test_transunet_position_embedding_follows_img_size(tiny_encoders):
  options = dict(num_classes=1, encoder_name="vit_test_p16", neck_channels=(4, 4, 4, 4),
                 decoder_channels=(4, 4, 4, 4, 4))
  for img_size in (64, 128):
    params = _init_shapes(create_model("transunet", img_size=img_size, **options))["params"]
    assert params["encoder"]["pos_embed"].shape == (1, 1 + (img_size // 16) ** 2, 32)
  # Other input sizes resample the embedding in the forward pass.
  model = create_model("transunet", img_size=64, **options)
  variables = _init_shapes(model)
  out = jax.eval_shape(model.apply, variables, jnp.zeros((1, 128, 96, 3)))
  assert out.shape == (1, 128, 96, 1)


@pytest.mark.parametrize("options,message", [
    (dict(encoder_name="resnet18"), r"transunet: encoder_name must be a ViT \(vit_.*'resnet18'"),
    (dict(encoder_name=None), r"transunet: encoder_name must be a ViT .*got None"),
    (dict(depth=3), r"transunet: option\(s\) depth apply only to encoder_name=None"),
    (dict(encoder_kwargs={"img_size": 64}), r"transunet: set img_size on the model itself"),
    (dict(neck_channels=(8, 8)), r"transunet: neck_channels needs 4 widths .*\(8, 8\)"),
])
def test_transunet_bad_options_are_named(options, message):
  with pytest.raises(ValueError, match=message):
    _init_shapes(create_model("transunet", num_classes=1, **options))


def test_transunet_bad_input_size_is_named():
  model = create_model("transunet", num_classes=1, encoder_name="vit_tiny")
  with pytest.raises(ValueError, match=r"transunet: input 80x80 is not divisible by the vit_tiny "
                                       r"encoder stride 32"):
    _init_shapes(model, 80)


def test_transunet_state_dict_round_trip(tiny_encoders):
  """The neck's mechanical names survive to_state_dict -> from_state_dict exactly."""
  model = create_model("transunet", num_classes=1, encoder_name="vit_test_p16", **TINY_TRANSUNET)
  variables = jax.jit(lambda x: model.init(rbg_key(0), x))(jnp.zeros((1, SIZE, SIZE, 3)))
  state_dict = convert.to_state_dict(variables, model)
  assert "neck_stride4.up.1.proj.weight" in state_dict and "encoder.pos_embed" in state_dict
  restored, report = convert.from_state_dict(state_dict, model)
  assert report.loaded == len(jax.tree.leaves(variables)) and not report.adapted
  jax.tree.map(np.testing.assert_array_equal, restored, jax.device_get(variables))


@pytest.mark.slow
@pytest.mark.torch
def test_transunet_encoder_loads_timm_vit():
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm")
  from torch_reference import TOLERANCE, calibration, images, nchw, randomize, relative_error
  torch.manual_seed(0)
  reference = randomize(timm.create_model("vit_tiny_patch16_224", img_size=SIZE, num_classes=10),
                        calibration(SIZE))
  model = create_model("transunet", num_classes=1, encoder_name="vit_tiny", img_size=SIZE)
  state_dict = {k: v.numpy() for k, v in reference.state_dict().items()}
  variables, report = convert.from_state_dict(state_dict, model, rng=rbg_key(0))
  assert set(report.dropped) == {"head.weight", "head.bias"} and not report.adapted
  assert report.loaded == len(state_dict) - 2
  assert {p.split("/")[1] for p in report.initialised} == set(variables["params"]) - {"encoder"}
  x = images(SIZE)
  with torch.no_grad():
    tokens = reference.forward_features(nchw(x))[:, 1:].numpy()  # without the class token
  grid = jax.jit(functools.partial(model.apply, method=lambda m, x: m.encoder(
      x, features_only=True)[3]))(variables, x)
  assert relative_error(grid.reshape(tokens.shape), tokens) <= TOLERANCE


# ------------------------------------------------------------------------------------------------
# Swin under the decoders.
# ------------------------------------------------------------------------------------------------
def _encoder_decoders() -> tuple[list[str], list[str]]:
  """(decoders that take any encoder, decoders that need a dilated one): the registered
  ``SegmentationModel``s, split by whether they set the encoder's ``output_stride``; TransUNet
  takes ViTs only."""
  plain, dilated = [], []
  for name in list_models(task="segmentation"):
    model = create_model(name, num_classes=1)
    if isinstance(model, SegmentationModel) and name != "transunet":
      (dilated if "output_stride" in model.encoder_options() else plain).append(name)
  return plain, dilated


ANY_ENCODER, DILATED = _encoder_decoders()


def _swin_model(decoder: str):
  return create_model(decoder, num_classes=NUM_CLASSES, encoder_name="swin_test",
                      encoder_kwargs={"img_size": SIZE})


@pytest.mark.slow
@pytest.mark.parametrize("decoder", ANY_ENCODER)
def test_decoder_traces_on_swin(tiny_encoders, decoder):
  """Traced only: output shape and one gradient per parameter."""
  model = _swin_model(decoder)
  x = jnp.zeros((2, SIZE, SIZE, 3))
  variables = _init_shapes(model)
  assert jax.eval_shape(model.apply, variables, x).shape == (2, SIZE, SIZE, NUM_CLASSES)

  def loss(params, variables):
    out, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"],
                         rngs={"dropout": rbg_key(2)})
    return jnp.mean(jnp.square(out - 1))

  grads = jax.eval_shape(jax.grad(loss), variables["params"], variables)
  assert jax.tree.structure(grads) == jax.tree.structure(variables["params"])


# Compiled for real: U-Net on Swin (tens of seconds on a small CPU). The other decoders are traced
# on Swin above and compiled for real on CNN encoders by tests/models/test_models.py; compiling
# each on Swin too cost 185 s of the full suite and ran no code those two do not.
@pytest.mark.slow
def test_unet_trains_on_swin(tiny_encoders):
  check_trains(_swin_model("unet"), jax.random.normal(rbg_key(3), (2, SIZE, SIZE, 3)),
               every_parameter=False)


def test_unet_on_swin_tiny_parameter_count():
  """U-Net + Swin-T, 1 class: 31.63M parameters, of which the encoder is timm's Swin-T without its
  head (28,288,354 - 769,000)."""
  model = create_model("unet", num_classes=1, encoder_name="swin_tiny")
  variables = _init_shapes(model)
  params = variables["params"]
  assert (_count(params), _count(params["encoder"])) == (31_629_515, 27_519_354)
  out = jax.eval_shape(model.apply, variables, jnp.zeros((1, SIZE, SIZE, 3)))
  assert out.shape == (1, SIZE, SIZE, 1)


@pytest.mark.parametrize("decoder", DILATED)
def test_dilated_decoders_name_the_swin_encoder(decoder):
  model = create_model(decoder, num_classes=1, encoder_name="swin_tiny")
  with pytest.raises(ValueError, match=rf"{decoder}: .*'swin_tiny'.*output_stride"):
    _init_shapes(model)
