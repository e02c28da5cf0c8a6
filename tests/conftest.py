"""Shared test fixtures: the real-data folder and marker handling."""
from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import sys
from pathlib import Path

import pytest

# Keep TensorFlow (pulled in by TFDS) quiet during tests.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Importing torchvision after TensorFlow segfaults (torch 2.14 / torchvision 0.29 beside TFDS's
# TensorFlow); the other order is safe, and a test process may need both (MONAI, timm, TFDS).
try:
  import torchvision  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
except ImportError:
  pass


def shared_data_dir() -> Path | None:
  """``../shared/data`` beside the checkout (or $FLAXDERM_SHARED_DATA), None when absent."""
  candidates = [os.environ.get("FLAXDERM_SHARED_DATA"),
                Path(__file__).resolve().parents[2] / "shared" / "data"]
  for c in candidates:
    if c and Path(c).is_dir():
      return Path(c)
  return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
  path = shared_data_dir()
  if path is None:
    pytest.skip("../shared/data is absent")
  return path


@contextlib.contextmanager
def data_dir_set_to(path: Path):
  """$FLAXDERM_DATA_DIR is ``path`` inside the block, and as it was after it."""
  previous = os.environ.get("FLAXDERM_DATA_DIR")
  os.environ["FLAXDERM_DATA_DIR"] = str(path)
  try:
    yield str(path)
  finally:
    if previous is None:
      del os.environ["FLAXDERM_DATA_DIR"]
    else:
      os.environ["FLAXDERM_DATA_DIR"] = previous


@pytest.fixture(scope="module")
def private_data_dir(tmp_path_factory):
  """A private TFDS folder ($FLAXDERM_DATA_DIR) for one test module, so parallel test workers
  never prepare into the same one; modules take it with ``pytest.mark.usefixtures``."""
  with data_dir_set_to(tmp_path_factory.mktemp("tfds")) as path:
    yield path


@pytest.fixture
def import_source(tmp_path):
  """``load(name, source)``: writes ``source`` as ``tmp_path/name.py`` and imports it (configs
  that a test's subprocesses import too)."""
  def load(name: str, source: str):
    (tmp_path / f"{name}.py").write_text(source)
    sys.modules.pop(name, None)  # another test's copy
    sys.path.insert(0, str(tmp_path))
    try:
      return importlib.import_module(name)
    finally:
      sys.path.remove(str(tmp_path))
  return load


def pytest_collection_modifyitems(config, items):
  if shared_data_dir() is not None:
    return
  skip = pytest.mark.skip(reason="real data (../shared/data) is absent")
  for item in items:
    if "real_data" in item.keywords:
      item.add_marker(skip)


@pytest.fixture
def torch_seed():
  """Parity tests: the references' own weight init draws from torch's global generator."""
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)


@pytest.fixture(scope="session")
def _trained_tiny_runs(tmp_path_factory):
  """The tiny runs of tiny_runs.py, each trained at most once per test process (in its own data
  folder) when a module first asks for it; modules get copies (below), so what one module's tests
  write into a run never reaches another's."""
  from tiny_runs import (train_classification_run,  # pylint: disable=g-import-not-at-top
                         train_segmentation_run)
  trainers = {"segmentation": train_segmentation_run, "classification": train_classification_run}
  trained = {}

  def get(kind: str) -> Path:
    if kind not in trained:
      with data_dir_set_to(tmp_path_factory.mktemp(f"{kind}_tfds")):
        trained[kind] = trainers[kind](tmp_path_factory.mktemp(kind))
    return trained[kind]
  return get


def _module_copy(kind, trained_tiny_runs, tmp_path_factory) -> Path:
  return Path(shutil.copytree(trained_tiny_runs(kind), tmp_path_factory.mktemp(kind) / "run"))


@pytest.fixture(scope="module")
def segmentation_run(_trained_tiny_runs, tmp_path_factory, private_data_dir):
  """A tiny trained U-Net run (tiny_runs.py), a copy per test module."""
  del private_data_dir  # the module's own TFDS folder, where the run tools prepare its data
  return _module_copy("segmentation", _trained_tiny_runs, tmp_path_factory)


@pytest.fixture(scope="module")
def classification_run(_trained_tiny_runs, tmp_path_factory, private_data_dir):
  """A tiny trained ResNet classifier run (tiny_runs.py), a copy per test module."""
  del private_data_dir
  return _module_copy("classification", _trained_tiny_runs, tmp_path_factory)
