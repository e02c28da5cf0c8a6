"""Run logging: metrics to ``metrics.jsonl`` and TensorBoard event files, and a terminal progress
bar. Only process 0 writes; other processes get no-op writers."""
from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax


def _plain(value: Any) -> Any:
  value = float(value)
  return value if math.isfinite(value) else str(value)  # JSON has no NaN/inf


class MetricWriter:
  """One JSON object per line (``{"step": ..., "split": ..., name: value}``) plus TensorBoard
  scalars under ``<split>/<name>``, both in the work directory."""

  def __init__(self, workdir: str | Path, *, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

      workdir = Path(workdir)
      self._jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8")
      self._tb = SummaryWriter(str(workdir / "tensorboard"))

  def write(self, step: int, split: str, scalars: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "split": split, "time": round(time.time(), 3)}
    record.update({k: _plain(v) for k, v in scalars.items()})
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    for name, value in scalars.items():
      if math.isfinite(float(value)):  # an undefined metric (NaN) stays in the JSON only
        self._tb.add_scalar(f"{split}/{name}", float(value), int(step))
    self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


class Progress:
  """tqdm bar over steps (or over the time budget) with loss and throughput; process 0 only."""

  def __init__(self, *, total_steps: int | None, initial: int, budget_s: float,
                 enabled: bool):
    self._bar = None
    self._budget = budget_s
    if enabled and jax.process_index() == 0:
      from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

      self._bar = tqdm(total=total_steps, initial=initial, unit="step", dynamic_ncols=True,
                       smoothing=0.1)

  def update(self, step: int, *, loss: float, images_per_s: float, elapsed_s: float) -> None:
    if self._bar is None:
      return
    postfix = {"loss": f"{loss:.4f}", "img/s": f"{images_per_s:.1f}"}
    if self._budget > 0:
      postfix["budget_left"] = f"{max(self._budget - elapsed_s, 0):.0f}s"
    self._bar.set_postfix(postfix, refresh=False)
    self._bar.update(step - self._bar.n)

  def write(self, text: str) -> None:
    if self._bar is not None:
      self._bar.write(text)
    elif jax.process_index() == 0:
      print(text, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
