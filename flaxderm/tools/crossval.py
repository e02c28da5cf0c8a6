"""Cross-validation as a run: K lesion-grouped, stratified folds trained into one directory.

    python launch.py EXPERIMENT --folds K [--workdir DIR] [--resume]

trains fold ``i`` of ``data.split="kfold"`` (``data.num_folds=K``, ``data.fold=i``, groups kept
whole, see ``flaxderm.data.splits.kfold_split``) into ``DIR/fold_i/``, then writes
``DIR/cv_summary.json`` and prints one table: each fold's validation metrics, their mean, sample
standard deviation and a 95% confidence interval of the mean (Student's t with K - 1 degrees of
freedom). ``--resume`` skips the folds that finished (their ``results.json``) and continues an
interrupted one from its checkpoint. The directory is then also a model: ``load_run``, predict
and export average the folds' probabilities, and ``launch.py evaluate --workdir DIR`` scores each
fold on its own validation split (the cross-validation estimate, with the out-of-fold cases), or,
with ``--manual-dir``, each fold and the fold ensemble on that dataset.
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from scipy import stats as scipy_stats

from flaxderm.tools import run as run_lib
from flaxderm.train import config as config_lib

log = logging.getLogger(__name__)

CV_SUMMARY = "cv_summary.json"


def fold_directory(workdir: Path, fold: int) -> Path:
  return workdir / run_lib.FOLD_PATTERN.replace("*", str(fold))


def fold_config(cfg: ml_collections.ConfigDict, num_folds: int, fold: int
                ) -> ml_collections.ConfigDict:
  """``cfg`` training on fold ``fold`` of ``num_folds`` of its ``data.source_split``."""
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  cfg.data.split, cfg.data.num_folds, cfg.data.fold = "kfold", num_folds, fold
  return cfg


def train_folds(cfg: ml_collections.ConfigDict, workdir: str | Path, num_folds: int, *,
                resume: bool = False) -> dict[str, Any]:
  """Trains every fold into ``workdir/fold_i/``; returns (and writes) the CV summary."""
  from flaxderm.train import loop  # pylint: disable=g-import-not-at-top  (slow import)

  if num_folds < 2:
    raise ValueError(f"--folds must be at least 2, got {num_folds}")
  workdir = Path(workdir).resolve()
  if (workdir / run_lib.CONFIG).is_file():
    raise ValueError(f"{workdir} holds a single training run; give the cross-validation run "
                     f"its own --workdir")
  expected = {fold_directory(workdir, i).name for i in range(num_folds)}
  beyond = sorted(p.name for p in workdir.glob(run_lib.FOLD_PATTERN) if p.name not in expected)
  if beyond:
    raise ValueError(f"{workdir} holds folds {beyond} beyond --folds {num_folds}")
  names, metrics, best = [], [], None
  for fold in range(num_folds):
    fold_cfg = fold_config(cfg, num_folds, fold)
    directory = fold_directory(workdir, fold)
    results = _finished(directory, fold_cfg) if resume else None
    if results is None:
      results = loop.train(fold_cfg, directory, resume=resume)
      results.pop("state")
    else:
      print(f"{directory}: finished earlier (step {results['step']}), skipped", flush=True)
    if not results["validation"]:
      raise ValueError(f"{directory}: the fold has no validation metrics")
    best = results["best_metric"]
    print(f"{directory}: validation {best} = {results['validation'][best]:.4f}", flush=True)
    names.append(directory.name)
    metrics.append(results["validation"])
  summary = {"num_folds": num_folds, "headline": best, **summarize(metrics, names)}
  (workdir / CV_SUMMARY).write_text(json.dumps(summary, indent=2, default=str) + "\n")
  return summary


def _finished(directory: Path, cfg: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """The results of a fold that completed, checked to be this fold of this CV; None otherwise."""
  if not (directory / run_lib.RESULTS).is_file():
    return None
  saved = config_lib.load_config(directory / run_lib.CONFIG).data
  if (saved.num_folds, saved.fold) != (cfg.data.num_folds, cfg.data.fold):
    raise ValueError(f"{directory} holds fold {saved.fold} of {saved.num_folds}, not fold "
                     f"{cfg.data.fold} of {cfg.data.num_folds}")
  return json.loads((directory / run_lib.RESULTS).read_text())


# ------------------------------------------------------------------------------------------------
# Statistics over folds.


def summarize(fold_metrics: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, Any]:
  """Per fold, and over folds: mean, sample std (ddof 1) and the t-based 95% CI of the mean of
  every scalar metric the folds share (NaN folds, e.g. an AUC of a fold lacking a class, are left
  out of that metric's statistics)."""
  keys = [k for k, v in fold_metrics[0].items() if _is_number(v)
          and all(_is_number(m.get(k)) for m in fold_metrics)]
  mean, std, ci95 = {}, {}, {}
  for key in keys:
    values = np.array([float(m[key]) for m in fold_metrics])
    values = values[np.isfinite(values)]
    mean[key] = float(values.mean()) if len(values) else math.nan
    std[key] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
    half = (scipy_stats.t.ppf(0.975, len(values) - 1) * std[key] / math.sqrt(len(values))
            if len(values) > 1 else math.nan)
    ci95[key] = [mean[key] - half, mean[key] + half]
  folds = [{"fold": n, "metrics": {k: float(m[k]) for k in keys}}
           for n, m in zip(names, fold_metrics)]
  return {"folds": folds, "mean": mean, "std": std, "ci95": ci95}


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)


def flatten(summary: Mapping[str, Any]) -> dict[str, float]:
  """``fold_0/dice``, ``std/dice``, ``ci95_low/dice`` ... for a one-line JSON."""
  out = {f"{f['fold']}/{k}": v for f in summary["folds"] for k, v in f["metrics"].items()}
  out.update({f"std/{k}": v for k, v in summary["std"].items()})
  out.update({f"ci95_low/{k}": lo for k, (lo, _) in summary["ci95"].items()})
  out.update({f"ci95_high/{k}": hi for k, (_, hi) in summary["ci95"].items()})
  return out


def format_table(summary: Mapping[str, Any], *, max_columns: int = 8) -> str:
  """Folds as rows, metrics as columns (the headline first), then mean, std and 95% CI."""
  keys = list(summary["mean"])
  headline = summary.get("headline")
  if headline in keys:
    keys.remove(headline)
    keys.insert(0, headline)
  keys = keys[:max_columns]
  widths = [max(12, len(k)) + 2 for k in keys]

  def row(label: str, cells: Sequence[str]) -> str:
    return f"{label:>8s}" + "".join(f"{c:>{w}s}" for c, w in zip(cells, widths))

  lines = [row("", keys)]
  lines += [row(f["fold"], [f"{f['metrics'][k]:.4f}" for k in keys]) for f in summary["folds"]]
  lines.append(row("mean", [f"{summary['mean'][k]:.4f}" for k in keys]))
  lines.append(row("std", [f"{summary['std'][k]:.4f}" for k in keys]))
  lines.append(row("95% CI", [f"{lo:.3f}..{hi:.3f}" for lo, hi in
                              (summary["ci95"][k] for k in keys)]))
  return "\n".join(lines)
