"""Shared test fixtures: the real-data folder and marker handling."""
from __future__ import annotations

import importlib
import os
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


@pytest.fixture(scope="module")
def private_data_dir(tmp_path_factory):
  """A private TFDS folder ($FLAXDERM_DATA_DIR) for one test module, so parallel test workers
  never prepare into the same one; modules take it with ``pytest.mark.usefixtures``."""
  previous = os.environ.get("FLAXDERM_DATA_DIR")
  os.environ["FLAXDERM_DATA_DIR"] = str(tmp_path_factory.mktemp("tfds"))
  yield os.environ["FLAXDERM_DATA_DIR"]
  if previous is None:
    del os.environ["FLAXDERM_DATA_DIR"]
  else:
    os.environ["FLAXDERM_DATA_DIR"] = previous


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


@pytest.fixture(scope="module")
def segmentation_run(tmp_path_factory, private_data_dir):
  """A tiny trained U-Net run (tiny_runs.py), one per test module."""
  del private_data_dir  # the module's own TFDS folder
  from tiny_runs import train_segmentation_run  # pylint: disable=g-import-not-at-top
  return train_segmentation_run(tmp_path_factory.mktemp("segmentation"))


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory, private_data_dir):
  """A tiny trained ResNet classifier run (tiny_runs.py), one per test module."""
  del private_data_dir
  from tiny_runs import train_classification_run  # pylint: disable=g-import-not-at-top
  return train_classification_run(tmp_path_factory.mktemp("classification"))
