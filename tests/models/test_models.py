"""Every registered model, automatically: init, apply in train and eval mode under jit, finite
gradients, output shapes, the encoder contract, and bad-input errors. A new registry entry is
covered here with no new test code."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxderm.models import create_model, list_models, model_entry

SIZE = 64
NUM_CLASSES = 3


# "rbg" keys compile several times faster than threefry on XLA:CPU; the numbers do not matter here.
def _key(seed):
  return jax.random.key(seed, impl="rbg")


def _init(model, x):
  return model.init({"params": _key(0), "dropout": _key(1)}, x, train=False)


def _apply(model, variables, x, train, **kwargs):
  out = model.apply(variables, x, train=train, rngs={"dropout": _key(2)},
                    mutable=["batch_stats"] if train else False, **kwargs)
  return out[0] if train else out


def _size(name):
  """SIZE, or the entry's ``min_input_size`` where its classifier needs more (Inception-v3)."""
  return max(SIZE, model_entry(name).min_input_size or 0)


def _expected_shape(name, batch):
  if model_entry(name).task == "classification":
    return (batch, NUM_CLASSES)
  return (batch, _size(name), _size(name), NUM_CLASSES)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_model_traces_train_and_eval(name, dtype):
  """Every entry, traced (no compilation): shapes, compute dtype, f32 params, a gradient per param."""
  model = create_model(name, num_classes=NUM_CLASSES, dtype=dtype)
  x = jnp.zeros((2, _size(name), _size(name), 3))
  variables = jax.eval_shape(functools.partial(_init, model), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  out = jax.eval_shape(lambda v, x: _apply(model, v, x, False), variables, x)
  assert out.shape == _expected_shape(name, 2) and out.dtype == dtype

  def loss(params, variables, x):
    out = _apply(model, {**variables, "params": params}, x, True)
    return jnp.mean(jnp.square(out.astype(jnp.float32)))

  grads = jax.eval_shape(jax.grad(loss), variables["params"], variables, x)
  assert jax.tree.structure(grads) == jax.tree.structure(variables["params"])


# Compiling and running every variant costs minutes per large model on a 2-core CPU; the variants
# of a family share their code, so one per family is run for real numbers, narrowed where the
# family has width options (same code path, a fraction of the compile and run time). Decoders run
# on a one-block-per-stage resnet18.
TINY_ENCODER = {"encoder_name": "resnet18", "encoder_kwargs": {"depths": (1, 1, 1, 1)}}
RUN_PER_FAMILY = {
    "resnet": ("resnet18", {}), "efficientnet": ("efficientnet_b0", {}),
    "mobilenet": ("mobilenet_v2", {}), "vit": ("vit_tiny", {}), "swin": ("swin_tiny", {}),
    "densenet": ("densenet121", {"depths": (1, 2, 2, 1), "growth_rate": 8}),
    "vgg": ("vgg16", {"mlp_ratio": 1 / 64}),
    "inception": ("inception_v3", {}), "xception": ("xception", {}),
    "unet": ("unet", {"base_width": 16}), "deeplab": ("deeplabv3plus", TINY_ENCODER),
    "codec": ("sepdilated_codec", {}),
    "unetplusplus": ("unetplusplus", {**TINY_ENCODER, "decoder_channels": (64, 32, 16, 8, 8)}),
    "linknet": ("linknet", TINY_ENCODER),
    "manet": ("manet", {**TINY_ENCODER, "decoder_channels": (64, 32, 16, 8, 8),
                        "decoder_pab_channels": 16}),
    "fpn": ("fpn", {**TINY_ENCODER, "pyramid_channels": 32, "segmentation_channels": 16}),
    "pspnet": ("pspnet", {**TINY_ENCODER, "psp_out_channels": 32}),
    "pan": ("pan", {**TINY_ENCODER, "decoder_channels": 16}),
    "upernet": ("upernet", {**TINY_ENCODER, "decoder_channels": 32}),
    "attention_unet": ("attention_unet", {"base_width": 16}),
    "segnet": ("segnet", {"base_width": 8}),
    "fcn": ("fcn8s", TINY_ENCODER),
    "transunet": ("transunet", {"encoder_name": "vit_tiny", "img_size": 64}),
}


def test_every_family_is_run_for_real():
  families = {model_entry(n).family for n in list_models()}
  assert families == set(RUN_PER_FAMILY), families ^ set(RUN_PER_FAMILY)


@pytest.mark.parametrize("name,options", sorted(RUN_PER_FAMILY.values()),
                         ids=sorted(n for n, _ in RUN_PER_FAMILY.values()))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_model_runs_with_finite_gradients(name, options, dtype):
  model = create_model(name, num_classes=NUM_CLASSES, dtype=dtype, **options)
  x = jax.random.normal(_key(3), (2, _size(name), _size(name), 3))
  variables = jax.jit(functools.partial(_init, model))(x)
  eval_out = jax.jit(lambda v, x: _apply(model, v, x, False))(variables, x)
  assert eval_out.shape == _expected_shape(name, 2)
  assert np.all(np.isfinite(np.asarray(eval_out, np.float32)))

  def loss(params):  # away from 0: zero-initialised score layers (FCN's) output exactly 0
    out = _apply(model, {**variables, "params": params}, x, True)
    return jnp.mean(jnp.square(out.astype(jnp.float32) - 1.0))

  value, grads = jax.jit(jax.value_and_grad(loss))(variables["params"])
  assert np.isfinite(float(value))
  leaves = jax.tree.leaves(grads)
  assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in leaves)
  assert any(float(jnp.abs(g).max()) > 0 for g in leaves)


@pytest.mark.parametrize("name", list_models(task="classification"))
def test_encoder_contract(name):
  model = create_model(name, num_classes=0)
  x = jnp.zeros((1, SIZE, SIZE, 3))
  variables = jax.eval_shape(functools.partial(_init, model),
                             jnp.zeros((1, _size(name), _size(name), 3)))
  feats = jax.eval_shape(lambda v, x: model.apply(v, x, features_only=True), variables, x)
  assert len(feats) == 5
  assert tuple(f.shape[-1] for f in feats) == tuple(model.feature_channels)
  for stride, f in zip((2, 4, 8, 16, 32), feats):
    assert f.shape[:3] == (1, SIZE // stride, SIZE // stride), (name, stride, f.shape)
  # The features path builds no head: an encoder's params are the classifier's minus its head.
  enc_params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, features_only=True), x)
  assert set(jax.tree.leaves(jax.tree.map(lambda a: a.shape, enc_params["params"]))) <= set(
      jax.tree.leaves(jax.tree.map(lambda a: a.shape, variables["params"])))


def test_unknown_model_suggests_close_names():
  with pytest.raises(ValueError, match=r"unknown model 'resnet5'.*resnet50"):
    create_model("resnet5", num_classes=2)


@pytest.mark.parametrize("name", list_models())
def test_unknown_keyword_is_named(name):
  with pytest.raises(ValueError, match=rf"{name}: unknown keyword argument\(s\) 'dtpye'.*dtype"):
    create_model(name, num_classes=2, dtpye=jnp.bfloat16)


@pytest.mark.parametrize("name", list_models())
def test_bad_input_names_model_and_shape(name):
  model = create_model(name, num_classes=2)
  # The message names the model (registered or class name) and the offending value.
  named = rf"(?i)({name}|{type(model).__name__})"
  with pytest.raises(ValueError, match=rf"{named}.*channels.*\b4\b"):
    jax.eval_shape(functools.partial(_init, model), jnp.zeros((1, SIZE, SIZE, 4)))
  # Classifiers take any size (as timm's); their encoder maps need exact strides.
  encoder = {"features_only": True} if model_entry(name).task == "classification" else {}
  with pytest.raises(ValueError, match=rf"{named}.*\b50x50\b"):
    jax.eval_shape(lambda x: model.init({"params": _key(0), "dropout": _key(1)}, x, train=False,
                                        **encoder), jnp.zeros((1, 50, 50, 3)))


def test_registry_lists_every_family():
  names = set(list_models())
  expected = {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vit_tiny", "vit_small",
              "vit_base", "swin_tiny", "swin_small", "swin_base", "efficientnet_b0",
              "efficientnet_lite0", "mobilenet_v2", "unet", "deeplabv3plus", "sepdilated_codec"}
  assert expected <= names, expected - names
  assert set(list_models(task="segmentation")) >= {"unet", "deeplabv3plus", "sepdilated_codec"}
