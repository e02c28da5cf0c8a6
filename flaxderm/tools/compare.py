"""Two runs scored on the same cases: is B better than A? A paired bootstrap over the cases::

    python launch.py compare RUN_A RUN_B [--manual-dir DIR] [--metric KEY] [--samples 10000]
        [--seed 0] [--by FIELD [--age-bands 0,30,45,60,75] [--min-cases 10]]

reads each run's per-case table ``RUN/evaluation/cases.csv`` (written by ``launch.py evaluate``;
with ``--manual-dir`` a run is scored on that dataset first when its table is missing or was
scored on another one), pairs the rows by case id, and resamples the cases' clusters -- the
split's grouping unit, lesion or patient, in the table's ``group`` column (each case its own when
the table has none) -- with replacement ``--samples`` times (the same resample for both runs, so
what the cases share cancels; Efron & Tibshirani, "An Introduction to the Bootstrap", 1993, ch.
16; ``flaxderm.subgroups.cluster_weights``). On each resample the headline metric of both runs is
recomputed from the per-case rows -- segmentation: the mean over cases of a per-case column
(default ``dice/per_image``; cases where it is undefined, NaN, are left out); classification:
``balanced_accuracy`` (default), ``accuracy``, ``auc/macro_ovr`` or ``ece`` of the per-case
predictions and probabilities -- and the difference B - A is kept. It prints a small table, then
one JSON line: both values, the difference, its 95% percentile interval and a two-sided p-value
for "no difference", ``p = min(1, 2 min(#(d* <= 0) + 1, #(d* >= 0) + 1) / (samples + 1))`` over
the resampled differences d*, the test the percentile interval inverts (p < 0.05 about when the
interval excludes 0).

``--by FIELD`` (a clinical field of the cases, ``flaxderm.data.clinical``; ages in the bands
``--age-bands``) does the same within each group of the field -- "the metadata model narrows the
gap for women" becomes a claim with an interval -- printing one row per group and one JSON line
``{"by", "run_a", "run_b", "metric", "min_cases", "age_bands", "groups": [{"group", "cases",
"scored", and the fields above when scored}]}``; a group of fewer than ``--min-cases`` cases is
reported, not compared.
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

from flaxderm import subgroups
from flaxderm.tools import case_table

CASES = Path("evaluation") / "cases.csv"
METRICS_FILE = Path("evaluation") / "metrics.json"
HEADLINE = {"segmentation": "dice/per_image", "classification": "balanced_accuracy"}


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


def _statistic(rows: list[dict[str, str]], task: str, metric: str, classes: list[str]
               ) -> subgroups.Statistic:
  return case_table.statistics(rows, task, (metric,), classes)[metric]


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
  clusters = (subgroups.cluster_codes([row["group"] for row in rows_a]) if "group" in rows_a[0]
              else np.arange(n))
  observed = np.ones((1, n))
  value_a, value_b = float(stat_a(observed)[0]), float(stat_b(observed)[0])
  rng = np.random.default_rng(seed)
  d = np.concatenate([stat_b(weights) - stat_a(weights)
                      for weights in subgroups.cluster_weights(clusters, samples, rng)])
  d = d[~np.isnan(d)]  # a resample without any case where the metric is defined
  if not len(d):
    raise ValueError(f"{metric} is undefined on every case")
  p_value = min(1.0, 2 * (min(np.sum(d <= 0), np.sum(d >= 0)) + 1) / (len(d) + 1))
  return {"metric": metric, "task": task, "run_a": names[0], "run_b": names[1], "a": value_a,
          "b": value_b, "difference": value_b - value_a, "ci95": subgroups.percentile_interval(d),
          "p_value": float(p_value), "cases": n, "clusters": int(clusters.max()) + 1,
          "samples": int(len(d)), "seed": seed}


def paired_bootstrap_by(rows_a: list[dict[str, str]], rows_b: list[dict[str, str]], field: str,
                        *, age_bands: Sequence[float] = subgroups.AGE_BANDS,
                        min_cases: int = subgroups.MIN_CASES, names: tuple[str, str] = ("A", "B"),
                        **options) -> dict[str, Any]:
  """``paired_bootstrap`` within each group of clinical ``field`` (A's values; ages in
  ``age_bands``); a group of fewer than ``min_cases`` cases is reported, not compared."""
  if min_cases < 1:
    raise ValueError(f"--min-cases must be >= 1, got {min_cases}")
  rows_a, rows_b = _paired(rows_a, rows_b, names)
  labels, order = case_table.field_groups(rows_a, field, age_bands)
  metric = options.pop("metric", None) or HEADLINE[_task(rows_a, Path(names[0]))]
  groups = []
  for group in order:
    cases = np.flatnonzero(labels == group)
    entry = {"group": group, "cases": int(len(cases)), "scored": len(cases) >= min_cases}
    if entry["scored"]:
      entry.update(paired_bootstrap([rows_a[i] for i in cases], [rows_b[i] for i in cases],
                                    metric=metric, names=names, **options))
    groups.append(entry)
  return {"by": field, "run_a": names[0], "run_b": names[1], "metric": metric,
          "min_cases": min_cases,
          "age_bands": list(age_bands), "groups": groups}


def compare_runs(run_a: str | Path, run_b: str | Path, *, manual_dir: str | None = None,
                 metric: str | None = None, samples: int = 10000, seed: int = 0
                 ) -> dict[str, Any]:
  rows = [load_cases(run, manual_dir=manual_dir) for run in (run_a, run_b)]
  return paired_bootstrap(*rows, metric=metric, samples=samples, seed=seed,
                          names=(str(run_a), str(run_b)))


def _number(x: float) -> str:
  return "nan" if math.isnan(x) else f"{x:.4f}"


def format_table(result: dict[str, Any]) -> str:
  low, high = result["ci95"]
  return case_table.render_table([
      ["run", result["metric"], "95% CI", "p"],
      ["A " + result["run_a"], _number(result["a"]), "", ""],
      ["B " + result["run_b"], _number(result["b"]), "", ""],
      ["B - A", _number(result["difference"]), f"[{_number(low)}, {_number(high)}]",
       f"{result['p_value']:.4g}"]])


def format_groups_table(result: dict[str, Any]) -> str:
  rows = [[result["by"], "cases", "A", "B", "B - A", "95% CI", "p"]]
  for g in result["groups"]:
    if not g["scored"]:
      rows.append([g["group"], str(g["cases"]), f"too small (< {result['min_cases']})", *[""] * 4])
      continue
    low, high = g["ci95"]
    rows.append([g["group"], str(g["cases"]), _number(g["a"]), _number(g["b"]),
                 _number(g["difference"]), f"[{_number(low)}, {_number(high)}]",
                 f"{g['p_value']:.4g}"])
  return (f"{result['metric']}: A {result['run_a']}, B {result['run_b']}\n"
          + case_table.render_table(rows))


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("runs", nargs=2, metavar="RUN", help="the two run (or CV run) directories")
  parser.add_argument("--manual-dir", help="score both runs on all of the dataset in this folder "
                      "first (when their evaluation is missing or of other data)")
  parser.add_argument("--metric", help="default: dice/per_image (segmentation), "
                      "balanced_accuracy (classification)")
  parser.add_argument("--samples", type=int, default=10000, help="bootstrap resamples")
  parser.add_argument("--seed", type=int, default=0)
  case_table.add_group_arguments(
      parser, by_help="compare within each group of this clinical field (sex, age, site, ...)")


def main(args: argparse.Namespace) -> None:
  if args.by is None:
    result = compare_runs(*args.runs, manual_dir=args.manual_dir, metric=args.metric,
                          samples=args.samples, seed=args.seed)
    print(format_table(result), flush=True)
  else:
    case_table.check_fields([args.by])
    rows = [load_cases(run, manual_dir=args.manual_dir) for run in args.runs]
    result = paired_bootstrap_by(*rows, args.by, age_bands=args.age_bands,
                                 min_cases=args.min_cases, names=tuple(map(str, args.runs)),
                                 metric=args.metric, samples=args.samples, seed=args.seed)
    print(format_groups_table(result), flush=True)
  print(json.dumps(result, sort_keys=True), flush=True)
