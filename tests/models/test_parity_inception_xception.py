"""Inception-v3 and Xception against timm (``inception_v3``, ``legacy_xception``), torchvision and
smp's ``xception`` encoder, by the protocol of torch_reference.py: same random weights, same
outputs to ``TOLERANCE``, exact export back.

One deviation: Inception-v3's outputs are compared in float64 on both sides (the float32
conversion's weights, cast). With these random weights the network amplifies rounding about a
thousandfold: timm's own float32 logits differ from its float64 ones by 1e-4 to 2e-4 of their
range at 96, 128 and 160 px alike, and flaxderm's float32 ones by as much, while in float64 the two
agree to 1e-13. Xception stays in float32.
"""
from __future__ import annotations

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from flaxderm.models import convert, create_model, model_entry  # noqa: E402
from torch_reference import (TOLERANCE, apply_jitted, calibration, check_export,  # noqa: E402
                             images, nchw, randomize, relative_error, state_dict)

pytestmark = [pytest.mark.torch, pytest.mark.usefixtures("torch_seed")]

TIMM_NAMES = {"inception_v3": "inception_v3", "xception": "legacy_xception"}
# The smallest comfortable size that also divides by 32 (inception_v3's 7x7 grid at 96 px ends
# 1x1, as at its minimum of 75).
SIZE = 96


FLOAT64 = {"inception_v3"}


def _ours(model, variables, x, float64: bool, **kwargs):
  """flaxderm's outputs (numpy), in float64 when asked."""
  if not float64:
    return jax.tree.map(np.asarray, apply_jitted(model, variables, x, **kwargs))
  with jax.enable_x64(True):
    model = model.clone(dtype=jnp.float64, param_dtype=jnp.float64)
    variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
    return jax.tree.map(np.asarray,
                        apply_jitted(model, variables, jnp.asarray(x, jnp.float64), **kwargs))


def _reference(run, module, x, float64: bool):
  """``run(module, nchw batch)`` without gradients, on a float64 copy when asked."""
  batch = nchw(x)
  if float64:
    module, batch = copy.deepcopy(module).double(), batch.double()
  with torch.no_grad():
    return run(module, batch)


def _logits(module, batch):
  return module(batch).numpy()


def _param_count(model, size: int) -> int:
  x = jnp.zeros((1, size, size, 3))
  params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)["params"]
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


@pytest.mark.parametrize("num_classes", [1000, 10])
@pytest.mark.parametrize("name", sorted(TIMM_NAMES))
def test_parameter_count_equals_timm(name, num_classes):
  reference = timm.create_model(TIMM_NAMES[name], num_classes=num_classes)
  expected = sum(p.numel() for p in reference.parameters() if p.requires_grad)
  assert _param_count(create_model(name, num_classes=num_classes), SIZE) == expected


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TIMM_NAMES))
def test_classifier_matches_timm(name):
  x = images(SIZE, batch=1)
  reference = randomize(timm.create_model(TIMM_NAMES[name], num_classes=10), calibration(SIZE))
  model = create_model(name, num_classes=10)
  variables, report = convert.from_state_dict(state_dict(reference), model)
  assert not report.adapted and not report.dropped
  float64 = name in FLOAT64
  expected = _reference(_logits, reference, x, float64)
  assert relative_error(_ours(model, variables, x, float64), expected) <= TOLERANCE
  check_export(variables, model, reference)


@pytest.mark.slow
def test_inception_encoder_is_timm_repadded_as_smp():
  """features_only = timm's feature_info taps of the network with smp's encoder padding (every
  3x3 conv padded by 1, every max pool by 1), at exact strides 2..32."""
  size = 64
  x = images(size, batch=1)
  reference = timm.create_model("inception_v3", num_classes=0)
  for module in reference.modules():
    if isinstance(module, torch.nn.Conv2d) and module.kernel_size == (3, 3):
      module.padding = (1, 1)
  unpadded_max_pool = torch.nn.functional.max_pool2d

  def padded_max_pool(x, kernel_size, stride=None, padding=0, *args, **kwargs):
    return unpadded_max_pool(x, kernel_size, stride, 1, *args, **kwargs)

  with pytest.MonkeyPatch.context() as patch:
    # timm's Inception B/D modules call the functional max pool, Pool1/Pool2 the module.
    patch.setattr(torch.nn.functional, "max_pool2d", padded_max_pool)
    randomize(reference, calibration(size))
    taps = lambda m, batch: [f.permute(0, 2, 3, 1).numpy()
                             for f in m.forward_intermediates(batch, intermediates_only=True)]
    expected = _reference(taps, reference, x, float64=True)
  model = create_model("inception_v3", num_classes=0)
  variables, _ = convert.from_state_dict(state_dict(reference), model)
  ours = _ours(model, variables, x, float64=True, features_only=True)
  assert [f.shape[1:] for f in ours] == [(size // s, size // s, c) for s, c in
                                         zip((2, 4, 8, 16, 32), model.feature_channels)]
  for o, e in zip(ours, expected, strict=True):
    assert relative_error(o, e) <= TOLERANCE


@pytest.mark.slow
def test_xception_encoder_matches_smp():
  """smp's ``xception`` encoder: same keys as timm's legacy_xception less ``fc``, same maps
  (shapes, channels and values) as flaxderm's features_only, and flaxderm's export loads into it."""
  smp = pytest.importorskip("segmentation_models_pytorch")
  size = 64
  x = images(size, batch=1)
  reference = randomize(smp.encoders.get_encoder("xception", weights=None), calibration(size))
  model = create_model("xception", num_classes=0)
  variables, report = convert.from_state_dict(state_dict(reference), model)
  assert not report.dropped
  with torch.no_grad():
    expected = [f.permute(0, 2, 3, 1).numpy() for f in reference(nchw(x))[1:]]
  ours = apply_jitted(model, variables, x, features_only=True)
  assert tuple(reference.out_channels[1:]) == tuple(model.feature_channels)
  assert [o.shape for o in ours] == [e.shape for e in expected]
  for o, e in zip(ours, expected, strict=True):
    assert relative_error(o, e) <= TOLERANCE
  exported, expected = convert.to_state_dict(variables, model), state_dict(reference)
  assert exported.keys() == expected.keys()
  for k, v in expected.items():
    if not k.endswith("num_batches_tracked"):
      np.testing.assert_array_equal(exported[k], v, err_msg=k)
  # smp's load_state_dict override takes no ``strict`` (and drops ``fc``): torch's own, strictly.
  torch.nn.Module.load_state_dict(reference, {k: torch.tensor(v) for k, v in exported.items()},
                                  strict=True)


@pytest.mark.slow
def test_torchvision_inception_checkpoint_with_aux_logits_converts():
  """torchvision's names are timm's; its ``AuxLogits`` (not built here, nor by timm by default)
  are dropped, and the logits are torchvision's eval-mode ones."""
  torchvision = pytest.importorskip("torchvision")
  x = images(SIZE, batch=1)
  reference = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False,
                                              num_classes=10)
  # Train-mode calibration would run the auxiliary head, on a map too small for it.
  aux_logits, reference.AuxLogits = reference.AuxLogits, None
  randomize(reference, calibration(SIZE))
  reference.AuxLogits = aux_logits.eval()
  model = create_model("inception_v3", num_classes=10)
  variables, report = convert.from_state_dict(state_dict(reference), model)
  assert report.dropped and all(k.startswith("AuxLogits.") for k in report.dropped)
  expected = _reference(_logits, reference, x, float64=True)
  assert relative_error(_ours(model, variables, x, float64=True), expected) <= TOLERANCE


def _init(model, size: int, **kwargs):
  x = jnp.zeros((1, size, size, 3))
  return jax.eval_shape(functools.partial(model.init, jax.random.key(0), **kwargs), x)


@pytest.mark.parametrize("name", sorted(TIMM_NAMES))
def test_input_size_limits(name):
  """The classifier takes any size from the registered minimum, where timm's unpadded layers stop
  working too; features_only takes multiples of 32."""
  model = create_model(name, num_classes=2)
  smallest = model_entry(name).min_input_size
  _init(model, smallest)
  _init(model, 299)
  with pytest.raises(ValueError, match=rf"{name}: input {smallest - 1}x{smallest - 1} is smaller "
                                       rf"than {smallest}x{smallest}"):
    _init(model, smallest - 1)
  with pytest.raises(ValueError, match=rf"{name}: input 80x80 is not divisible by .* 32"):
    _init(model, 80, features_only=True)
  reference = timm.create_model(TIMM_NAMES[name]).eval()
  with torch.no_grad():
    reference(torch.zeros(1, 3, smallest, smallest))
    with pytest.raises(RuntimeError):
      reference(torch.zeros(1, 3, smallest - 1, smallest - 1))


@pytest.mark.parametrize("option", [{"output_stride": 16}, {"output_stride": 8},
                                    {"drop_path_rate": 0.1}])
@pytest.mark.parametrize("name", sorted(TIMM_NAMES))
def test_unsupported_options_name_the_model(name, option):
  model = create_model(name, num_classes=0, **option)
  if name == "xception" and "drop_path_rate" in option:  # residual branches: supported
    _init(model, SIZE, features_only=True)
    return
  with pytest.raises(ValueError, match=rf"{name}: {next(iter(option))}"):
    _init(model, SIZE, features_only=True)
