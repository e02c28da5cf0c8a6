"""Shared helpers of the parity tests (``test_parity*.py``): the protocol that proves each
architecture is the one it is named after.

The same random weights in flaxderm and in the reference implementation (timm, torchvision,
segmentation_models_pytorch) give the same outputs, in inference mode and float32, to a max
relative error of ``TOLERANCE`` (``max|flaxderm - reference| / max|reference|``).

Random weights are made well-conditioned like a trained network's: every norm's affine parameters
and every bias get noise around the library's init (so zero-initialised residual gammas stay
small), then BatchNorm running statistics are calibrated on a random batch (one train-mode
pass over 8 images with cumulative averaging), so eval-mode BatchNorm neither vanishes nor
explodes and the statistics differ from the test batch's. Weights go torch ->
``convert.from_state_dict`` (strict: every key used, every leaf filled), and back with
``convert.to_state_dict`` into the reference (``load_state_dict(strict=True)``): the export is
exact.

A parity module imports what it needs from here and seeds torch per test with
``pytestmark = [pytest.mark.torch, pytest.mark.usefixtures("torch_seed")]`` (conftest.py).
"""
from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from flaxderm.models import convert  # noqa: E402

TOLERANCE = 1e-4


def apply_jitted(model, variables, x, **kwargs):
  """flaxderm's inference output, as one jitted program: an eager ``model.apply`` dispatches and
  compiles each operation separately, which takes 5-10x longer for a deep net on XLA:CPU."""
  return jax.jit(functools.partial(model.apply, **kwargs))(variables, x)


def relative_error(ours, reference) -> float:
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  return float(np.abs(ours - reference).max() / np.abs(reference).max())


def randomize(module: torch.nn.Module, calibration: torch.Tensor, seed: int = 0) -> torch.nn.Module:
  """Random norm affines and token/position embeddings, calibrated BatchNorm statistics, eval mode
  (see the module docstring). Conv/linear weights keep the library's own (seeded) init."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      if p.ndim == 1:  # around the library's init, so zero-init residual gammas stay small
        p.add_(torch.randn_like(p) * 0.1)
      elif name.endswith(("cls_token", "pos_embed")):
        p.copy_(torch.randn_like(p) * 0.02)
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
      m.reset_running_stats()
      m.momentum = None  # cumulative average: one pass sets the statistics
    if norms:
      module.train()(calibration)
  return module.eval()


def nchw(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


def state_dict(module: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def images(size: int, batch: int = 2, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)


def calibration(size: int) -> torch.Tensor:
  """Enough samples that the deepest (2x2 at 64 px) BatchNorm statistics are representative."""
  return nchw(images(size, batch=8, seed=1))


def check_export(variables, model, reference: torch.nn.Module, *, arch=None, skip=()):
  """``to_state_dict`` loads strictly into the reference and equals its state dict."""
  exported = convert.to_state_dict(variables, model, arch=arch)
  expected = {k: v for k, v in state_dict(reference).items() if not k.startswith(tuple(skip))}
  assert exported.keys() == expected.keys()
  for k, v in expected.items():
    if not k.endswith("num_batches_tracked"):
      np.testing.assert_array_equal(exported[k], v, err_msg=k)
  if not skip:
    reference.load_state_dict({k: torch.tensor(v) for k, v in exported.items()}, strict=True)
