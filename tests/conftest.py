"""Shared test fixtures: the real-data folder and marker handling."""
from __future__ import annotations

import os
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


def pytest_collection_modifyitems(config, items):
  if shared_data_dir() is not None:
    return
  skip = pytest.mark.skip(reason="real data (../shared/data) is absent")
  for item in items:
    if "real_data" in item.keywords:
      item.add_marker(skip)
