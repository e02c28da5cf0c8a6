"""Shared test fixtures: the real-data folder and marker handling."""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest

# Keep TensorFlow (pulled in by TFDS) quiet during tests.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


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
