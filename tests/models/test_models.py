"""Every registered model, automatically: init, apply in train and eval mode under jit, finite
gradients, output shapes, the encoder contract, and bad-input errors. A new registry entry is
covered here with no new test code: its family file's ``test_options`` (registry.py) say how the
family is run for real, and flaxderm/models/__init__.py imports the file."""
from __future__ import annotations

import functools
import importlib.util
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flaxderm.models
from flaxderm.models import create_model, list_models, model_entry, registry
from rng import rbg_key

SIZE = 64
NUM_CLASSES = 3


def _init(model, x):
  return model.init({"params": rbg_key(0), "dropout": rbg_key(1)}, x, train=False)


def _apply(model, variables, x, train, **kwargs):
  out = model.apply(variables, x, train=train, rngs={"dropout": rbg_key(2)},
                    mutable=["batch_stats"] if train else False, **kwargs)
  return out[0] if train else out


def _size(name):
  """SIZE, or the entry's ``min_input_size`` where its classifier needs more (Inception-v3)."""
  return max(SIZE, model_entry(name).min_input_size or 0)


def _expected_shape(name, batch):
  if model_entry(name).task == "classification":
    return (batch, NUM_CLASSES)
  return (batch, _size(name), _size(name), NUM_CLASSES)


def traced_only() -> list[str]:
  """The registered variants that ``test_model_runs_with_finite_gradients`` does not run."""
  return [n for n in list_models() if model_entry(n).test_options is None]


@pytest.mark.slow
@pytest.mark.parametrize("name", traced_only())
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_model_traces_train_and_eval(name, dtype):
  """Every entry not run for real, traced (no compilation): shapes, compute dtype, f32 params, a
  gradient per param (the entries run for real are checked for the same there)."""
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
# of a family share their code, so one per family is run for real numbers: the variant that
# declares ``test_options`` at registration, narrowed there (fewer blocks per stage, fewer
# channels) where the family has such options: same code path, a fraction of the compile time.
def models_run_for_real() -> list[tuple[str, dict]]:
  """(name, test options) of every registered variant that declares test options, by name."""
  return [(n, dict(model_entry(n).test_options)) for n in list_models()
          if model_entry(n).test_options is not None]


def test_every_family_is_run_for_real_once():
  run = [model_entry(n).family for n, _ in models_run_for_real()]
  families = {model_entry(n).family for n in list_models()}
  assert sorted(run) == sorted(families), f"families without test_options: {families - set(run)}"


def check_runs_with_finite_gradients(name, options, dtype):
  """Init, forward in eval mode, and finite, non-zero gradients of a train-mode loss, all jitted."""
  model = create_model(name, num_classes=NUM_CLASSES, dtype=dtype, **options)
  x = jax.random.normal(rbg_key(3), (2, _size(name), _size(name), 3))
  variables = jax.jit(functools.partial(_init, model))(x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  eval_out = jax.jit(lambda v, x: _apply(model, v, x, False))(variables, x)
  assert eval_out.shape == _expected_shape(name, 2) and eval_out.dtype == dtype
  assert np.all(np.isfinite(np.asarray(eval_out, np.float32)))

  def loss(params):  # away from 0: zero-initialised score layers (FCN's) output exactly 0
    out = _apply(model, {**variables, "params": params}, x, True)
    return jnp.mean(jnp.square(out.astype(jnp.float32) - 1.0))

  value, grads = jax.jit(jax.value_and_grad(loss))(variables["params"])
  assert np.isfinite(float(value))
  assert jax.tree.structure(grads) == jax.tree.structure(variables["params"])
  leaves = jax.tree.leaves(grads)
  assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in leaves)
  assert any(float(jnp.abs(g).max()) > 0 for g in leaves)


@pytest.mark.slow
@pytest.mark.parametrize("name,options", models_run_for_real(),
                         ids=[n for n, _ in models_run_for_real()])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_model_runs_with_finite_gradients(name, options, dtype):
  check_runs_with_finite_gradients(name, options, dtype)


THROWAWAY_FAMILY = """
import flax.linen as nn
import jax.numpy as jnp

from flaxderm.models.registry import register_model


class Throwaway(nn.Module):
  num_classes: int
  dtype: object = None

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Conv(4, (3, 3), strides=2, dtype=self.dtype)(x))
    return nn.Dense(self.num_classes, dtype=self.dtype)(jnp.mean(x, axis=(1, 2)))


@register_model(task="classification", family="throwaway", test_options={})
def throwaway_net(*, num_classes, **options):
  '''A family that exists only in this test.'''
  return Throwaway(num_classes=num_classes, **options)
"""


def test_a_new_family_file_is_run_by_the_shared_tests(tmp_path, monkeypatch):
  """A family is its file and its @register_model: registered, the shared tests run it."""
  monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # restored afterwards
  path = tmp_path / "throwaway_family.py"
  path.write_text(THROWAWAY_FAMILY)
  spec = importlib.util.spec_from_file_location("throwaway_family", path)
  spec.loader.exec_module(importlib.util.module_from_spec(spec))
  assert ("throwaway_net", {}) in models_run_for_real()
  check_runs_with_finite_gradients("throwaway_net", {}, jnp.float32)


def test_every_family_module_is_imported_and_registers_a_model():
  """flaxderm/models/__init__.py imports every module not in SHARED_MODULES as a family; one that
  registers nothing is a shared module missing from that list."""
  modules = {m.name for m in pkgutil.iter_modules(flaxderm.models.__path__)}
  registering = {model_entry(n).factory.__module__.rpartition(".")[2] for n in list_models()}
  assert registering == modules - flaxderm.models.SHARED_MODULES


def test_importing_the_models_loads_no_converter_or_optimiser():
  """Model code stays light: convert.py (and pretrained.py, which needs it) and optax load only
  when asked for."""
  code = ("import sys, flaxderm.models; "
          "print(sorted(m for m in ('flaxderm.models.convert', 'flaxderm.models.pretrained', "
          "'optax') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[1]).stdout
  assert out.strip() == "[]"


def _module_paths(name: str) -> set[str]:
  """The paths of the modules called in the model's forward pass."""
  model = create_model(name, num_classes=NUM_CLASSES)
  x = jnp.zeros((1, _size(name), _size(name), 3))
  variables = jax.eval_shape(functools.partial(_init, model), x)
  paths = set()

  def record(next_fun, args, kwargs, context):
    paths.add("/".join(context.module.path))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda v, x: _apply(model, v, x, False), variables, x)
  return paths


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in list_models() if model_entry(n).gradcam_layer])
def test_gradcam_layer_names_modules_of_the_model(name):
  pattern = model_entry(name).gradcam_layer
  assert any(re.fullmatch(pattern, p) for p in _module_paths(name)), (name, pattern)


@pytest.mark.slow
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
    jax.eval_shape(lambda x: model.init({"params": rbg_key(0), "dropout": rbg_key(1)}, x,
                                        train=False, **encoder), jnp.zeros((1, 50, 50, 3)))


def test_registry_lists_every_family():
  names = set(list_models())
  expected = {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vit_tiny", "vit_small",
              "vit_base", "swin_tiny", "swin_small", "swin_base", "efficientnet_b0",
              "efficientnet_lite0", "mobilenet_v2", "unet", "deeplabv3plus", "sepdilated_codec"}
  assert expected <= names, expected - names
  assert set(list_models(task="segmentation")) >= {"unet", "deeplabv3plus", "sepdilated_codec"}
