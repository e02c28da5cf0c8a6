"""benchmarks/large_dataset.py: a step killed for memory is measured again at half the batch
instead of ending the run with nothing recorded (no step is run)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import large_dataset  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_a_killed_step_is_measured_again_at_half_the_batch(monkeypatch):
  tried = []

  def measured(part, size, batch, steps):
    tried.append(batch)
    if batch > 8:
      raise large_dataset.PartDied(f"{part.__name__} killed")
    return {"images_per_s": 2.0 * batch}, 0

  monkeypatch.setattr(large_dataset, "measured", measured)
  assert large_dataset.fitting_step(512, 32, 2) == {"images_per_s": 16.0, "batch": 8}
  assert tried == [32, 16, 8]


def test_a_step_killed_at_batch_one_ends_the_run(monkeypatch):
  def measured(part, *args):
    raise large_dataset.PartDied("step_part(512, 1, 2) failed with exit code -9")

  monkeypatch.setattr(large_dataset, "measured", measured)
  with pytest.raises(SystemExit, match="exit code -9"):
    large_dataset.fitting_step(512, 1, 2)
