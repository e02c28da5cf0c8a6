"""Scoring: a model's parameters on a dataset split, as set metrics and as one row per case.

Used during training (validation every N steps; ``flaxderm.train.loop``) and afterwards on a run
directory::

    python launch.py evaluate --workdir RUN [--manual-dir DIR] [--params last|best]
        [--ema | --no-ema] [--tta none|hflip|flips]

which loads the run's config and its final parameters (``config.final_params``,
``config.use_ema`` and ``config.eval.tta`` unless the flags say otherwise: one run scored with and
without its EMA or test-time augmentation is how those ingredients are ablated) and scores them on
the run's validation set, or -- with ``--manual-dir`` -- on all of the dataset found in DIR (same
layout as the official release), prepared into a temporary folder so no other prepared copy is
read. It writes ``RUN/evaluation/cases.csv`` (per case) and ``RUN/evaluation/metrics.json``, and
prints the metrics as one JSON line, last.
"""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from flaxderm import metrics as metrics_lib
from flaxderm import run as run_lib
from flaxderm.data import pipeline
from flaxderm.train import config as config_lib
from flaxderm.train import parallel as parallel_lib
from flaxderm.train import scoring
from flaxderm.train import setup
from flaxderm.train import step as step_lib
from flaxderm.train.lock import RunLock

log = logging.getLogger(__name__)

def _auc(rows: list[dict[str, Any]], class_names: tuple[str, ...]) -> dict[str, float]:
  """ROC AUC (macro one-vs-rest) of the per-case probabilities: a threshold-free score beside
  balanced accuracy, steadier when a class has a handful of examples."""
  probs = np.array([[row[f"prob/{n}"] for n in class_names] for row in rows])
  labels = np.array([class_names.index(row["label"]) for row in rows])
  return metrics_lib.roc_auc(probs, labels, class_names=class_names)


def write_cases(path: Path, rows: list[dict[str, Any]]) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def json_line(metrics: Mapping[str, float]) -> str:
  """Metrics as one JSON line (NaN written as null)."""
  return json.dumps({k: (v if isinstance(v, float) and math.isfinite(v) else
                         None if isinstance(v, float) else v) for k, v in metrics.items()},
                    sort_keys=True)


# ------------------------------------------------------------------------------------------------
# Scoring a run directory.


def _scoring_data(cfg: ml_collections.ConfigDict, manual_dir: str | None, scratch: str | None
                  ) -> tuple[ml_collections.ConfigDict, str]:
  """(data config, split) to score on: the run's validation set, or all of ``manual_dir``'s
  dataset prepared into ``scratch``."""
  data_cfg = setup.eval_data_config(cfg)
  if manual_dir is None:
    if not config_lib.has_validation(cfg):
      raise ValueError("this run trained on all of its data (data.split='all'): pass "
                       "--manual-dir DIR to score it on another dataset folder")
    return data_cfg, data_cfg.eval_split
  if not Path(manual_dir).is_dir():
    raise ValueError(f"--manual-dir {manual_dir}: no such directory")
  data_cfg.manual_dir = str(Path(manual_dir).resolve())
  data_cfg.data_dir = scratch
  data_cfg.split = "official"
  setup.dataset_info(data_cfg)  # prepares it, or says how to get the files
  return data_cfg, "+".join(pipeline.open_source(data_cfg).split_names())


def evaluate_run(workdir: str | Path, *, manual_dir: str | None = None,
                 params: str | None = None, use_ema: bool | None = None,
                 tta: str | None = None, batch_size: int | None = None) -> dict[str, float]:
  """Scores a training run's final parameters; see the module docstring. Returns the metrics.

  Holds the run directory (``RunLock``) throughout: scoring a run that a live process is still
  training fails at once, naming that process, rather than after the scoring.
  """
  workdir = Path(workdir).resolve()
  if not (workdir / run_lib.CONFIG).is_file():
    raise ValueError(f"{workdir} is not a training run directory (no {run_lib.CONFIG})")
  with RunLock(workdir, "evaluation") if jax.process_index() == 0 else contextlib.nullcontext():
    return _evaluate_run(workdir, manual_dir=manual_dir, params=params, use_ema=use_ema, tta=tta,
                         batch_size=batch_size)


def _evaluate_run(workdir: Path, *, manual_dir: str | None, params: str | None,
                  use_ema: bool | None, tta: str | None, batch_size: int | None
                  ) -> dict[str, float]:
  cfg = run_lib.run_config(workdir, tta=tta)
  info = setup.RunInfo.load(workdir)
  par = parallel_lib.DataParallel("auto")
  batch_size = batch_size or cfg.eval.batch_size
  par.check_batch_size(batch_size, "eval.batch_size")
  task = setup.make_task(cfg, info)
  model, state, step, which, use_ema = run_lib.restore_state(workdir, cfg, info, params, use_ema,
                                                             par)
  case_step = par.compile_case_step(step_lib.make_case_step(model, task, cfg, use_ema=use_ema))
  with tempfile.TemporaryDirectory(prefix="flaxderm-eval-") as scratch:
    data_cfg, split = _scoring_data(cfg, manual_dir, scratch if manual_dir else None)
    with jax.set_mesh(par.mesh):
      rows, stats = scoring.evaluate_cases(
          case_step, state, scoring.eval_batches(data_cfg, split, batch_size), par, task)
  metrics = task.summarize(stats)
  if task.kind == "classification":
    metrics.update(_auc(rows, task.class_names))
  out = workdir / "evaluation"
  if jax.process_index() == 0:
    write_cases(out / "cases.csv", rows)
    (out / "metrics.json").write_text(json.dumps(
        {"dataset": data_cfg.name, "split": split, "manual_dir": manual_dir, "params": which,
         "ema": use_ema, "tta": cfg.eval.tta, "step": step,
         "metrics": json.loads(json_line(metrics))}, indent=2) + "\n")
  log.info("scored %s params of step %d on %s/%s: %d cases", which, step, data_cfg.name, split,
           len(rows))
  return metrics
