"""Two runs scored on the same cases: is B better than A? A paired bootstrap over the cases::

    python launch.py compare RUN_A RUN_B [--manual-dir DIR] [--metric KEY] [--samples 10000]
        [--seed 0]

reads each run's per-case table ``RUN/evaluation/cases.csv`` (written by ``launch.py evaluate``;
with ``--manual-dir`` a run is scored on that dataset first when its table is missing or was
scored on another one), pairs the rows by case id, and resamples the cases with replacement
``--samples`` times (the same resample for both runs, so what the cases share cancels; Efron &
Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 16). On each resample the headline
metric of both runs is recomputed from the per-case rows -- segmentation: the mean over cases of
a per-case column (default ``dice/per_image``; cases where it is undefined, NaN, are left out);
classification: ``balanced_accuracy`` (default) or ``accuracy`` of the per-case predictions --
and the difference B - A is kept. It prints a small table, then one JSON line: both values, the
difference, its 95% percentile interval and a two-sided p-value for "no difference",
``p = min(1, 2 min(#(d* <= 0) + 1, #(d* >= 0) + 1) / (samples + 1))`` over the resampled
differences d*, the test the percentile interval inverts (p < 0.05 about when the interval
excludes 0).
"""
from __future__ import annotations

import argparse
import collections
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

CASES = Path("evaluation") / "cases.csv"
METRICS_FILE = Path("evaluation") / "metrics.json"
HEADLINE = {"segmentation": "dice/per_image", "classification": "balanced_accuracy"}
CLASSIFICATION_METRICS = ("balanced_accuracy", "accuracy")
CHUNK = 1000  # resamples drawn and scored at once: bounds the (chunk, cases) weight matrix


def _task(rows: Sequence[dict[str, str]], path: Path) -> str:
  if rows and {"label", "prediction"} <= set(rows[0]):
    return "classification"
  if rows and HEADLINE["segmentation"] in rows[0]:
    return "segmentation"
  raise ValueError(f"{path}: not a per-case table of flaxderm (no label/prediction or "
                   f"{HEADLINE['segmentation']} columns, or no rows)")


def _scored_elsewhere(workdir: Path, manual_dir: str) -> bool:
  saved = workdir / METRICS_FILE
  if not saved.is_file():
    return True
  scored = json.loads(saved.read_text()).get("manual_dir")
  return scored is None or Path(scored).resolve() != Path(manual_dir).resolve()


def load_cases(workdir: str | Path, *, manual_dir: str | None = None) -> list[dict[str, str]]:
  """The rows of ``workdir/evaluation/cases.csv``; with ``manual_dir``, scores the run on that
  dataset first unless its table already is of that dataset."""
  from flaxderm.tools import evaluate  # pylint: disable=g-import-not-at-top  (jax, only when scoring)

  workdir = Path(workdir)
  if manual_dir is not None and (not (workdir / CASES).is_file()
                                 or _scored_elsewhere(workdir, manual_dir)):
    evaluate.evaluate_run(workdir, manual_dir=manual_dir)
  if not (workdir / CASES).is_file():
    raise ValueError(f"{workdir} has no {CASES}: score it first with python launch.py evaluate "
                     f"--workdir {workdir} [--manual-dir DIR], or pass --manual-dir DIR here")
  return evaluate.read_cases(workdir / CASES)


def _paired(rows_a: list[dict[str, str]], rows_b: list[dict[str, str]], names: tuple[str, str]
            ) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
  """Both tables in A's case order; ValueError naming the cases only one of them has."""
  tables = []
  for rows, name in zip((rows_a, rows_b), names):
    by_id = {row["id"]: row for row in rows}
    if len(by_id) != len(rows):
      repeated = sorted(i for i, count in collections.Counter(r["id"] for r in rows).items()
                        if count > 1)
      raise ValueError(f"{name}: case ids repeat in its cases.csv: {', '.join(repeated[:5])}")
    tables.append(by_id)
  only = [sorted(set(tables[0]) - set(tables[1])), sorted(set(tables[1]) - set(tables[0]))]
  if any(only):
    shown = "; ".join(f"{len(o)} only in {name} ({', '.join(o[:5])}{', ...' if len(o) > 5 else ''})"
                      for o, name in zip(only, names) if o)
    raise ValueError(f"the runs were scored on different cases: {shown}; score both on the same "
                     "data (e.g. both with --manual-dir DIR)")
  order = [row["id"] for row in rows_a]
  return [tables[0][i] for i in order], [tables[1][i] for i in order]


def _statistic(rows: list[dict[str, str]], task: str, metric: str, classes: list[str]):
  """``weights (S, N) -> (S,)``: the metric of the rows with case i counted ``weights[:, i]``
  times (a bootstrap resample, or all ones for the observed value)."""
  if task == "segmentation":
    if metric not in rows[0] or metric == "id":
      columns = [k for k in rows[0] if k not in ("id", "fold")]
      raise ValueError(f"--metric {metric!r}: not a per-case column; expected one of {columns}")
    values = np.array([float(row[metric]) for row in rows])
    defined = ~np.isnan(values)
    values = np.where(defined, values, 0.0)

    def mean(w):
      with np.errstate(invalid="ignore"):  # NaN: a resample without a defined case
        return (w @ values) / (w @ defined)

    return mean
  if metric not in CLASSIFICATION_METRICS:
    raise ValueError(f"--metric {metric!r}: for classification one of {CLASSIFICATION_METRICS}")
  truth = np.array([classes.index(row["label"]) for row in rows])
  correct = np.array([row["label"] == row["prediction"] for row in rows], np.float64)
  if metric == "accuracy":
    return lambda w: (w @ correct) / w.sum(axis=1)
  one_hot = np.eye(len(classes))[truth]

  def balanced_accuracy(w):
    support, hits = w @ one_hot, w @ (one_hot * correct[:, None])
    present = support > 0
    recall = np.divide(hits, support, out=np.zeros_like(hits), where=present)
    return recall.sum(axis=1) / present.sum(axis=1)  # sklearn: over classes in the truth

  return balanced_accuracy


def paired_bootstrap(rows_a: list[dict[str, str]], rows_b: list[dict[str, str]], *,
                     metric: str | None = None, samples: int = 10000, seed: int = 0,
                     names: tuple[str, str] = ("A", "B")) -> dict[str, Any]:
  """The comparison of two per-case tables; see the module docstring. Returns the JSON fields."""
  if samples < 1:
    raise ValueError(f"--samples must be >= 1, got {samples}")
  task = _task(rows_a, Path(names[0]))
  if _task(rows_b, Path(names[1])) != task:
    raise ValueError(f"{names[0]} and {names[1]} are not the same task")
  rows_a, rows_b = _paired(rows_a, rows_b, names)
  metric = metric or HEADLINE[task]
  classes = sorted({row[k] for row in rows_a + rows_b for k in ("label", "prediction")}
                   if task == "classification" else set())
  stat_a, stat_b = (_statistic(rows, task, metric, classes) for rows in (rows_a, rows_b))
  n = len(rows_a)
  observed = np.ones((1, n))
  value_a, value_b = float(stat_a(observed)[0]), float(stat_b(observed)[0])
  rng = np.random.default_rng(seed)
  differences = []
  for start in range(0, samples, CHUNK):
    weights = rng.multinomial(n, np.full(n, 1 / n), size=min(CHUNK, samples - start))
    differences.append(stat_b(weights) - stat_a(weights))
  d = np.concatenate(differences)
  d = d[~np.isnan(d)]  # a resample without any case where the metric is defined
  if not len(d):
    raise ValueError(f"{metric} is undefined on every case")
  low, high = np.percentile(d, [2.5, 97.5])
  p_value = min(1.0, 2 * (min(np.sum(d <= 0), np.sum(d >= 0)) + 1) / (len(d) + 1))
  return {"metric": metric, "task": task, "run_a": names[0], "run_b": names[1], "a": value_a,
          "b": value_b, "difference": value_b - value_a, "ci95": [float(low), float(high)],
          "p_value": float(p_value), "cases": n, "samples": int(len(d)), "seed": seed}


def compare_runs(run_a: str | Path, run_b: str | Path, *, manual_dir: str | None = None,
                 metric: str | None = None, samples: int = 10000, seed: int = 0
                 ) -> dict[str, Any]:
  rows = [load_cases(run, manual_dir=manual_dir) for run in (run_a, run_b)]
  return paired_bootstrap(*rows, metric=metric, samples=samples, seed=seed,
                          names=(str(run_a), str(run_b)))


def format_table(result: dict[str, Any]) -> str:
  def number(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.4f}"

  low, high = result["ci95"]
  rows = [["run", result["metric"], "95% CI", "p"],
          ["A " + result["run_a"], number(result["a"]), "", ""],
          ["B " + result["run_b"], number(result["b"]), "", ""],
          ["B - A", number(result["difference"]), f"[{number(low)}, {number(high)}]",
           f"{result['p_value']:.4g}"]]
  widths = [max(len(row[i]) for row in rows) for i in range(4)]
  return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(row, widths))) for row in rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("runs", nargs=2, metavar="RUN", help="the two run (or CV run) directories")
  parser.add_argument("--manual-dir", help="score both runs on all of the dataset in this folder "
                      "first (when their evaluation is missing or of other data)")
  parser.add_argument("--metric", help="default: dice/per_image (segmentation), "
                      "balanced_accuracy (classification)")
  parser.add_argument("--samples", type=int, default=10000, help="bootstrap resamples")
  parser.add_argument("--seed", type=int, default=0)


def main(args: argparse.Namespace) -> None:
  result = compare_runs(*args.runs, manual_dir=args.manual_dir, metric=args.metric,
                        samples=args.samples, seed=args.seed)
  print(format_table(result), flush=True)
  print(json.dumps(result, sort_keys=True), flush=True)
