"""Shared test fixtures: the real-data folder, marker handling and the run's XLA compilation
cache."""
from __future__ import annotations

import importlib
import os
import shutil
import sys
import tempfile
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


# JAX's persistent compilation cache, read from the environment when jax is imported, so that the
# test workers and the launch.py subprocesses the tests start all inherit it.
COMPILATION_CACHE = {"JAX_COMPILATION_CACHE_DIR": None,
                     "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                     "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}
_CACHE_KEY = pytest.StashKey[str]()  # the temporary cache folder this run made, to remove


def pytest_configure(config):
  """One XLA compilation cache for the whole test run: most of the suite's time is XLA:CPU
  compiling (benchmarks/NOTES.md), and many tests, workers and subprocesses compile the same
  programs (the tiny runs' train steps, each family's test model). A program is compiled once per
  run and read back after. A $JAX_COMPILATION_CACHE_DIR set by the user is used as it is (and kept
  between runs); otherwise the controller makes a temporary one that ends with the run."""
  if hasattr(config, "workerinput") or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return  # an xdist worker inherits the controller's environment
  directory = tempfile.mkdtemp(prefix="flaxderm-test-xla-cache-")
  config.stash[_CACHE_KEY] = directory
  os.environ.update({**COMPILATION_CACHE, "JAX_COMPILATION_CACHE_DIR": directory})
  if "jax" in sys.modules:  # imported by a plugin before the environment was set
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def pytest_unconfigure(config):
  directory = config.stash.get(_CACHE_KEY, None)
  if directory:
    shutil.rmtree(directory, ignore_errors=True)


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
