"""Scoring a trained run on a dataset split, as set metrics and as one row per case::

    python launch.py evaluate --workdir RUN [--manual-dir DIR [--dataset NAME]
        [--class-map FROM=TO,...]] [--params last|best] [--ema | --no-ema] [--tta none|hflip|flips]
        [--logit-adjustment TAU]
        [--by sex,age,site,... [--age-bands 0,30,45,60,75] [--min-cases 10] [--samples 2000]
         [--seed 0]]

which loads the run's config and its final parameters (``config.final_params``,
``config.use_ema``, ``config.eval.tta`` and ``config.eval.logit_adjustment_tau`` unless the flags
say otherwise: one run scored with and without its EMA, test-time augmentation or post-hoc logit
adjustment is how those ingredients are ablated) and scores them on
the run's validation set, or -- with ``--manual-dir`` -- on all of the dataset found in DIR (same
layout as the official release), prepared into a temporary folder so no other prepared copy is
read. ``--dataset NAME`` reads DIR with another builder than the run trained on (a PH2
segmentation run scored on the ISIC 2017 pairs, ``isic2017_task1``; a HAM10000 run on ISIC 2019):
the task must agree, and each class of that dataset is scored as the run's class of the same name
(case-insensitive) or as ``--class-map`` says (``ak=akiec,scc=akiec,unk=``: FROM=TO, an empty TO
leaves FROM's cases out, counted in a warning and in metrics.json); a class with neither is an
error naming it. It writes ``RUN/evaluation/cases.csv`` (per case: its scores, then its
``group`` -- the split's grouping unit, lesion or patient -- and the clinical fields its record
carries, ``flaxderm.data.clinical``, read from the records beside the scores, never given to the
model) and ``RUN/evaluation/metrics.json``, and prints the metrics as one JSON line, last.
Batches and per-case rows come from ``flaxderm.train.scoring``, the code the training loop
validates with.

``--by`` audits the scored cases by subgroup (``flaxderm.subgroups``; a CV run: its out-of-fold
cases pooled): for each clinical field named and each of its groups (ages in ``--age-bands``), the
headline metrics with 95% bootstrap intervals resampled by ``group`` -- classification: balanced
accuracy, macro AUC, the sensitivity and specificity of the malignant-vs-benign decision at the
run's operating point (the predicted class; ``subgroups.MALIGNANT_CLASSES``) and ECE;
segmentation: per-image Dice and the ISIC thresholded Jaccard -- and the group sizes; per field,
each metric's gap between the best and the worst group, the worst group, and the equalized-odds
difference of the malignant-vs-benign decision. A group of fewer than ``--min-cases`` cases is
reported as too small, not scored. It prints a table per field and writes
``RUN/evaluation/subgroups.json``: ``{<what was scored>, "task", "cases", "clusters", "pooled",
"headline", "metrics", "malignant_classes", "min_cases", "samples", "seed", "confidence",
"age_bands", "overall": {metric: {"value", "ci95"}}, "fields": {field: ``subgroups.audit``'s
result}}`` (null where a value is undefined).

An earlier evaluation of other data, options or parameters' step is never replaced: it moves into
``RUN/evaluation/<what it scored>/`` first (a warning names it). Cases of ``--manual-dir`` that
were in the run's training split (same ids) are named in a warning: their scores are not held out.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import logging
import math
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from flaxderm import metrics as metrics_lib
from flaxderm import subgroups
from flaxderm.tools import calibration
from flaxderm.tools import case_table
from flaxderm.tools import run as run_lib
from flaxderm.data import pipeline
from flaxderm.data import sources
from flaxderm.data import splits
from flaxderm.train import config as config_lib
from flaxderm.train import parallel as parallel_lib
from flaxderm.train import scoring
from flaxderm.train import setup
from flaxderm.train import step as step_lib
from flaxderm.train.lock import RunLock

log = logging.getLogger(__name__)

EVALUATION_DIR = "evaluation"
CASES, METRICS, CV_METRICS = "cases.csv", "metrics.json", "cv_metrics.json"
SUBGROUPS = "subgroups.json"
# What an evaluation scored, as its metrics file records it: another value is another evaluation.
SCORING_KEYS = ("dataset", "split", "manual_dir", "class_map", "params", "ema", "tta",
                "logit_adjustment", "step")
# What an evaluation recorded before a scoring key existed scored with its default.
SCORING_DEFAULTS = {"logit_adjustment": 0.0}


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
  return json.dumps(_finite(metrics), sort_keys=True)


def recorded_scoring(out: Path) -> dict[str, Any] | None:
  """What the evaluation in folder ``out`` scored (``SCORING_KEYS``), None when it holds none."""
  for name in (METRICS, CV_METRICS):
    if (out / name).is_file():
      saved = json.loads((out / name).read_text())
      return {key: saved.get(key, SCORING_DEFAULTS.get(key)) for key in SCORING_KEYS}
  return None


def _scoring_name(identity: Mapping[str, Any]) -> str:
  """A folder name spelling out what an evaluation scored."""
  where = []
  if identity["manual_dir"]:  # the folder's name, and a digest telling same-named folders apart
    digest = hashlib.sha1(str(identity["manual_dir"]).encode()).hexdigest()[:6]
    where = [Path(identity["manual_dir"]).name, digest]
  if identity.get("class_map"):
    where.append("map-" + hashlib.sha1(json.dumps(identity["class_map"], sort_keys=True)
                                       .encode()).hexdigest()[:6])
  steps = np.atleast_1d(identity["step"] if identity["step"] is not None else [])
  parts = [identity["dataset"], identity["split"], *where, identity["params"],
           f"ema-{identity['ema']}", f"tta-{identity['tta']}",
           *([f"la-{identity['logit_adjustment']}"] if identity.get("logit_adjustment") else []),
           "step-" + "-".join(map(str, steps))]
  return re.sub(r"[^\w.+-]", "-", "_".join(map(str, parts)))


def _keep_earlier(out: Path, identity: Mapping[str, Any]) -> None:
  """Moves the evaluation in ``out`` into ``out/<what it scored>/`` when it scored other data,
  options or step than ``identity`` (``SCORING_KEYS``), so that no evaluation replaces another
  silently."""
  earlier = recorded_scoring(out)
  if earlier is None or earlier == dict(identity):
    return
  kept = out / _scoring_name(earlier)
  kept.mkdir(exist_ok=True)
  for name in (CASES, METRICS, CV_METRICS, SUBGROUPS):
    if (out / name).is_file():
      (out / name).replace(kept / name)
  log.warning("%s held an evaluation of %s; kept it in %s", out, earlier, kept)


def _warn_of_training_cases(cfg: ml_collections.ConfigDict, rows: list[dict[str, Any]],
                            manual_dir: str) -> None:
  """A warning naming the cases of ``manual_dir`` that the run trained on (same ids)."""
  try:
    trained = set(splits.split_ids(cfg.data, cfg.data.train_split))
  except Exception as e:  # pylint: disable=broad-except  (its training data may be elsewhere)
    log.info("could not read the run's training split to compare its cases: %s", e)
    return
  overlap = sorted({str(row["id"]) for row in rows} & trained)
  if overlap:
    log.warning("%d of the %d cases scored in --manual-dir %s are in the run's training split "
                "(%s of %s), e.g. %s: their scores are not held-out estimates", len(overlap),
                len(rows), manual_dir, cfg.data.train_split, cfg.data.name,
                ", ".join(overlap[:5]))


# ------------------------------------------------------------------------------------------------
# Scoring another dataset's labels as the run's classes.


def parse_class_map(text: str) -> dict[str, str]:
  """``--class-map "ak=akiec,scc=akiec,unk="`` as {FROM: TO} (TO "": leave FROM's cases out)."""
  mapping = {}
  for item in (part.strip() for part in text.split(",")):
    source, equals, target = item.partition("=")
    if not equals or not source.strip():
      raise argparse.ArgumentTypeError(f"--class-map: {item!r} is not FROM=TO (an empty TO leaves "
                                       "FROM's cases out)")
    mapping[source.strip()] = target.strip()
  return mapping


def class_mapping(dataset: str, names: tuple[str, ...], run_classes: tuple[str, ...],
                  class_map: Mapping[str, str] | None) -> np.ndarray:
  """Per class of ``dataset`` (``names``), the index of the run's class its cases are scored as,
  -1 to leave them out: ``class_map``'s entry, else the run's class of the same name (both
  case-insensitive). ValueError naming a class that has neither, or a map entry that names no
  class."""
  class_map = {k.lower(): v.lower() for k, v in (class_map or {}).items()}
  run = {c.lower(): i for i, c in enumerate(run_classes)}
  stray = sorted(set(class_map) - {n.lower() for n in names})
  if stray:
    raise ValueError(f"--class-map: {stray} {'is' if len(stray) == 1 else 'are'} not a class of "
                     f"dataset {dataset!r} (its classes: {', '.join(names)})")
  wrong = sorted(f"{k}={v}" for k, v in class_map.items() if v and v not in run)
  if wrong:
    raise ValueError(f"--class-map: {wrong} name no class of the run (its classes: "
                     f"{', '.join(run_classes)})")
  unmatched = [n for n in names if n.lower() not in class_map and n.lower() not in run]
  if unmatched:
    raise ValueError(
        f"dataset {dataset!r}: classes {unmatched} are not among the run's classes "
        f"({', '.join(run_classes)}); say what each is scored as with --class-map, e.g. "
        f"--class-map {','.join(f'{n}=' for n in unmatched)} to leave their cases out")
  mapping = np.array([run.get(class_map.get(n.lower(), n.lower()), -1) for n in names])
  if (mapping < 0).all():
    raise ValueError(f"--class-map leaves every class of dataset {dataset!r} out: nothing to score")
  return mapping


def _relabelled(batches: Iterable[Mapping[str, np.ndarray]], mapping: np.ndarray,
                left_out: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
  """``batches`` with each ``label`` as the run's class (``class_mapping``); the cases of a class
  mapped to none become padding (``valid`` 0), counted per class into ``left_out``."""
  for batch in batches:
    labels = np.asarray(batch["label"])
    target = mapping[labels]
    real = np.asarray(batch["valid"]) > 0
    np.add.at(left_out, labels[real & (target < 0)], 1)
    yield {**batch, "label": np.maximum(target, 0).astype(labels.dtype),
           "valid": (real & (target >= 0)).astype(np.asarray(batch["valid"]).dtype)}


# ------------------------------------------------------------------------------------------------
# Scoring a run directory.


def _scoring_data(cfg: ml_collections.ConfigDict, manual_dir: str | None, scratch: str | None,
                  dataset: str | None = None, task: str = ""
                  ) -> tuple[ml_collections.ConfigDict, str]:
  """(data config, split) to score on: the run's validation set, or all of ``manual_dir``'s
  dataset (the run's, or the builder ``dataset`` read for the run's ``task``) prepared into
  ``scratch``."""
  data_cfg = setup.eval_data_config(cfg)
  if manual_dir is None:
    if not config_lib.has_validation(cfg):
      raise ValueError("this run trained on all of its data (data.split='all'): pass "
                       "--manual-dir DIR to score it on another dataset folder")
    return data_cfg, data_cfg.eval_split
  if not Path(manual_dir).is_dir():
    raise ValueError(f"--manual-dir {manual_dir}: no such directory")
  if dataset is not None and dataset != data_cfg.name:  # another builder: none of its options
    data_cfg.update(name=dataset, builder_config=None, task=task)
    data_cfg.builder_kwargs = ml_collections.ConfigDict()
  data_cfg.manual_dir = str(Path(manual_dir).resolve())
  data_cfg.data_dir = scratch
  data_cfg.split = "official"
  try:
    setup.dataset_info(data_cfg)  # prepares it, or says how to get the files
  except ValueError as e:
    raise ValueError(f"--manual-dir {manual_dir} as {data_cfg.name}: {e}") from e
  return data_cfg, "+".join(sources.open_source(data_cfg).split_names())


def evaluate_run(workdir: str | Path, *, manual_dir: str | None = None,
                 dataset: str | None = None, class_map: Mapping[str, str] | None = None,
                 params: str | None = None, use_ema: bool | None = None,
                 tta: str | None = None, logit_adjustment: float | None = None,
                 batch_size: int | None = None) -> dict[str, float]:
  """Scores a training run's final parameters, or a cross-validation run's folds; see the module
  docstring. Returns the metrics.

  Holds the run directories (``RunLock``) throughout: scoring a run that a live process is still
  training fails at once, naming that process, rather than after the scoring.
  """
  if dataset is not None and manual_dir is None:
    raise ValueError(f"--dataset {dataset}: give --manual-dir, the folder holding that dataset")
  workdir = Path(workdir).resolve()
  runs = run_lib.run_directories(workdir)
  options = dict(dataset=dataset, class_map=class_map, params=params, use_ema=use_ema, tta=tta,
                 logit_adjustment=logit_adjustment, batch_size=batch_size)
  if runs == [workdir]:
    return _score(runs, workdir / EVALUATION_DIR, manual_dir=manual_dir, **options)
  return _evaluate_cross_validation(workdir, runs, manual_dir=manual_dir, **options)


def _evaluate_cross_validation(workdir: Path, folds: list[Path], *, manual_dir: str | None,
                               **options) -> dict[str, float]:
  """Each fold on its own validation split (the cross-validation estimate: mean, std and 95% CI
  over folds, and the out-of-fold cases), or -- with ``manual_dir`` -- each fold and the fold
  ensemble (the mean of their probabilities) on that dataset."""
  from flaxderm.tools import crossval  # pylint: disable=g-import-not-at-top  (it imports this module)

  per_fold = [_score([fold], fold / EVALUATION_DIR, manual_dir=manual_dir, **options)
              for fold in folds]
  summary = crossval.summarize(per_fold, [f.name for f in folds])
  out = workdir / EVALUATION_DIR
  headline = (summary["mean"] if manual_dir is None else
              _score(folds, out, manual_dir=manual_dir, **options))
  if jax.process_index() == 0:
    if manual_dir is None:  # out of fold: each case scored by the fold that held it out
      rows = [{"fold": fold.name, **row} for fold in folds
              for row in read_cases(fold / EVALUATION_DIR / CASES)]
      scored = [recorded_scoring(fold / EVALUATION_DIR) for fold in folds]
      identity = {**scored[0], "step": [s["step"] for s in scored]}
      _keep_earlier(out, identity)
      write_cases(out / CASES, rows)
    else:
      identity = recorded_scoring(out)
    (out / CV_METRICS).write_text(json.dumps(
        {"scored": "fold ensemble" if manual_dir else "each fold on its validation split",
         **identity, "metrics": json.loads(json_line(headline)), **summary},
        indent=2, default=str) + "\n")
    print(crossval.format_table(summary), flush=True)
  return {**headline, **crossval.flatten(summary)}


def read_cases(path: Path) -> list[dict[str, str]]:
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


def _score(runs: list[Path], out: Path, *, manual_dir: str | None, params: str | None,
           use_ema: bool | None, tta: str | None, batch_size: int | None,
           logit_adjustment: float | None = None, dataset: str | None = None,
           class_map: Mapping[str, str] | None = None) -> dict[str, float]:
  """Scores one run, or the ensemble of ``runs`` (the folds of a CV run: the mean of their
  probabilities, each fold's input prepared as it was in training), and writes
  ``out/cases.csv`` and ``out/metrics.json``."""
  with contextlib.ExitStack() as locks:
    if jax.process_index() == 0:
      for run in runs:
        locks.enter_context(RunLock(run, "evaluation"))
    par = parallel_lib.DataParallel("auto")
    restored = [run_lib.restore(run, params=params, use_ema=use_ema, tta=tta, par=par,
                                logit_adjustment=logit_adjustment) for run in runs]
    _check_ensemble(restored)
    first = restored[0]
    cfg, which, use_ema = first.cfg, first.params, first.use_ema
    batch_size = batch_size or cfg.eval.batch_size
    par.check_batch_size(batch_size, "eval.batch_size")
    task = setup.make_task(cfg, first.info, class_counts=run_lib.pooled_class_counts(restored))
    ensemble = len(runs) > 1
    state = tuple(r.state for r in restored) if ensemble else first.state
    case_step = par.compile_case_step(step_lib.make_case_step(
        first.model, task, cfg, use_ema=use_ema, members=len(runs) if ensemble else 0))
    with tempfile.TemporaryDirectory(prefix="flaxderm-eval-") as scratch:
      scored = [_scoring_data(r.cfg, manual_dir, scratch if manual_dir else None, dataset,
                              r.info.task) for r in restored]
      data_cfg, split = scored[0]
      batches = (scoring.eval_batches(data_cfg, split, batch_size) if not ensemble else
                 _ensemble_batches([d for d, _ in scored], split, batch_size))
      label_names, unmapped = task.class_names, None
      if task.kind == "classification":
        if manual_dir:  # the scored dataset's own labels
          label_names = sources.open_source(data_cfg).class_names
        mapping = class_mapping(data_cfg.name, label_names, task.class_names, class_map)
        if not np.array_equal(mapping, np.arange(len(task.class_names))):
          unmapped = np.zeros(len(label_names), np.int64)
          batches = _relabelled(batches, mapping, unmapped)
      with jax.set_mesh(par.mesh):
        rows, stats = scoring.evaluate_cases(case_step, state, batches, par, task)
      fields = splits.split_fields(data_cfg, split)
  rows = [{**row, **fields[row["id"]]} for row in rows]
  metrics = task.summarize(stats)
  if task.kind == "classification":
    metrics.update(_auc(rows, task.class_names))
  if manual_dir is not None and not ensemble:  # the folds of an ensemble were scored alone first
    _warn_of_training_cases(first.cfg, rows, manual_dir)
  left_out = ({} if unmapped is None else
              {name: int(n) for name, n in zip(label_names, unmapped) if n})
  if left_out:
    log.warning("left out %d cases of %s whose class --class-map maps to none: %s",
                sum(left_out.values()), data_cfg.name, left_out)
  if jax.process_index() == 0:
    identity = {"dataset": data_cfg.name, "split": split, "manual_dir": manual_dir,
                "class_map": dict(class_map) if class_map else None,
                "params": which, "ema": use_ema, "tta": cfg.eval.tta,
                "logit_adjustment": cfg.eval.logit_adjustment_tau,
                "step": first.step if not ensemble else [r.step for r in restored]}
    _keep_earlier(out, identity)
    write_cases(out / CASES, rows)
    (out / METRICS).write_text(json.dumps(
        {**identity, "runs": [str(r) for r in runs] if ensemble else None,
         "left_out": left_out or None, "metrics": json.loads(json_line(metrics))},
        indent=2) + "\n")
  log.info("scored %s params of %s on %s/%s: %d cases", which,
           f"{len(runs)} folds" if ensemble else f"step {first.step}", data_cfg.name, split,
           len(rows))
  return metrics


def _check_ensemble(restored: list[run_lib.Restored]) -> None:
  """The members of an ensemble must be one architecture (one compiled step) predicting the same
  classes."""
  run_lib.check_members(restored, restored[0].workdir.parent)
  for r in restored[1:]:
    if r.cfg.model.to_dict() != restored[0].cfg.model.to_dict():
      raise ValueError(f"{r.workdir}: its model config differs from {restored[0].workdir}'s; a "
                       "fold ensemble needs one architecture")


def _ensemble_batches(data_cfgs: list[ml_collections.ConfigDict], split: str, batch_size: int):
  """One stream of batches for every member: the same cases in the same order, ``image`` of
  shape (N, members, H, W, C) (and ``metadata`` (N, members, D)) when members prepare inputs
  differently (e.g. each fold's own dataset normalisation or metadata vocabulary), else the one
  shared (N, H, W, C)."""
  first = pipeline.preparation(data_cfgs[0])
  if all(pipeline.preparation(d) == first for d in data_cfgs[1:]):
    yield from scoring.eval_batches(data_cfgs[0], split, batch_size)
    return
  streams = [scoring.eval_batches(d, split, batch_size) for d in data_cfgs]
  for batches in zip(*streams, strict=True):
    if any(not np.array_equal(b["id"], batches[0]["id"]) for b in batches[1:]):
      raise ValueError("the folds' evaluation batches hold different cases")
    yield {**batches[0], **{key: np.stack([b[key] for b in batches], axis=1)
                            for key in ("image", "metadata") if key in batches[0]}}


# ------------------------------------------------------------------------------------------------
# Subgroup audit.


def audit_run(workdir: str | Path, fields: list[str], *,
              age_bands: tuple[float, ...] = subgroups.AGE_BANDS,
              min_cases: int = subgroups.MIN_CASES, samples: int = subgroups.SAMPLES,
              seed: int = 0) -> dict[str, Any]:
  """The subgroup audit of the run's stored evaluation by clinical ``fields`` (module docstring);
  writes it to ``RUN/evaluation/subgroups.json`` and returns it."""
  case_table.check_fields(fields)
  workdir = Path(workdir).resolve()
  runs = run_lib.run_directories(workdir)
  out = workdir / EVALUATION_DIR
  scored = recorded_scoring(out)
  if scored is None or not (out / CASES).is_file():
    raise ValueError(f"{out} holds no evaluation: run python launch.py evaluate --workdir "
                     f"{workdir} first")
  rows = read_cases(out / CASES)
  if not rows or "group" not in rows[0]:
    raise ValueError(f"{out / CASES} has no group column (scored before the cases carried their "
                     "grouping unit and clinical fields): evaluate the run again")
  info = setup.RunInfo.load(runs[0])
  malignant = (subgroups.malignant_classes(scored["dataset"], info.class_names)
               if info.task == "classification" else ())
  names = [m for m in subgroups.METRICS[info.task]
           if malignant or m not in (subgroups.SENSITIVITY, subgroups.SPECIFICITY)]
  if info.task == "classification" and not malignant:
    log.warning("no malignant classes known for %s (flaxderm.subgroups.MALIGNANT_CLASSES): no "
                "sensitivity, specificity or equalized odds", scored["dataset"])
  statistics = case_table.statistics(rows, info.task, names, info.class_names, malignant)
  clusters = [row["group"] for row in rows]
  options = dict(samples=samples, seed=seed)
  result = {**scored, "task": info.task, "cases": len(rows), "clusters": len(set(clusters)),
            "pooled": (f"out-of-fold cases of {len(runs)} folds"
                       if len(runs) > 1 and scored["manual_dir"] is None else None),
            "headline": names[0], "metrics": names,
            "malignant_classes": list(malignant) or None, "min_cases": min_cases, **options,
            "confidence": subgroups.CONFIDENCE, "age_bands": list(age_bands),
            "overall": subgroups.overall(statistics, clusters, **options), "fields": {}}
  for field in fields:
    labels, order = case_table.field_groups(rows, field, age_bands)
    result["fields"][field] = subgroups.audit(statistics, labels, order, clusters,
                                              min_cases=min_cases, **options)
  result = _finite(result)
  if jax.process_index() == 0:
    (out / SUBGROUPS).write_text(json.dumps(result, indent=2, default=str) + "\n")
  return result


def _finite(value: Any) -> Any:
  """``value`` with every NaN or infinite float, however deep, as None (JSON's null)."""
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, Mapping):
    return {k: _finite(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite(v) for v in value]
  return value


def _interval(scores: Mapping[str, Any] | None) -> str:
  """"value [low, high]", "n/a" where undefined."""
  if scores is None or scores["value"] is None:
    return "n/a"
  low, high = ("n/a" if v is None else f"{v:.3f}" for v in scores["ci95"])
  return f"{scores['value']:.3f} [{low}, {high}]"


def format_audit(result: Mapping[str, Any]) -> str:
  """One table per field: its groups' sizes and metrics, then its gaps and equalized odds."""
  names = result["metrics"]
  parts = [f"subgroups of {result['cases']} cases"
           + (f" ({result['pooled']})" if result["pooled"] else "") + ", 95% intervals by "
           f"group, groups under {result['min_cases']} cases not scored"]
  for field, audited in result["fields"].items():
    rows = [[field, "cases", "clusters", *names],
            ["all", str(result["cases"]), str(result["clusters"]),
             *(_interval(result["overall"][m]) for m in names)]]
    for g in audited["groups"]:
      scores = (["too small"] + [""] * (len(names) - 1) if not g["scored"] else
                [_interval(g["metrics"][m]) for m in names])
      rows.append([g["group"], str(g["cases"]), str(g["clusters"]), *scores])
    gaps = ["gap (worst)", "", "", *(
        "n/a" if audited["gap"][m] is None else
        f"{_interval(audited['gap'][m])} ({audited['gap'][m]['worst']})" for m in names)]
    parts += ["", case_table.render_table(rows + [gaps])]
    if "equalized_odds_difference" in audited:
      parts.append(f"equalized-odds difference (malignant vs benign): "
                   f"{_interval(audited['equalized_odds_difference'])}")
  return "\n".join(parts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
  run_lib.add_run_arguments(parser)
  parser.add_argument("--manual-dir", help="score all of the dataset in this folder")
  parser.add_argument("--dataset", help="read --manual-dir with this builder (default: the "
                      "run's dataset), e.g. isic2017_task1 for a PH2 segmentation run")
  parser.add_argument("--class-map", type=parse_class_map, metavar="FROM=TO,...",
                      help="score the dataset's class FROM as the run's class TO (TO empty: "
                      "leave its cases out), e.g. ak=akiec,scc=akiec,unk=")
  parser.add_argument("--logit-adjustment", type=float, metavar="TAU",
                      help="decide each case's class by argmax(logits - TAU * log(training "
                      "prior)), aiming at balanced accuracy (0: the plain argmax; default: the "
                      "run's config.eval.logit_adjustment_tau); probabilities and AUC unchanged")
  parser.add_argument("--calibrate", action="store_true", help="first fit the temperature on "
                      "the validation split into RUN/calibration.json (tools/calibration.py)")
  case_table.add_group_arguments(parser, by_help="audit by these clinical fields, separated by "
                                  "commas (sex,age,site,fitzpatrick,dataset,...)")
  parser.add_argument("--samples", type=int, default=subgroups.SAMPLES,
                      help="bootstrap resamples of the subgroup audit")
  parser.add_argument("--seed", type=int, default=0, help="of the subgroup audit's bootstrap")


def main(args: argparse.Namespace) -> None:
  fields = args.by.split(",") if args.by else []
  case_table.check_fields(fields)  # before the scoring, which takes a while
  if args.calibrate:
    fitted = calibration.calibrate_run(args.workdir, params=args.params, use_ema=args.ema,
                                       tta=args.tta)
    print(calibration.format_results(fitted), flush=True)
  metrics = evaluate_run(args.workdir, manual_dir=args.manual_dir, dataset=args.dataset,
                         class_map=args.class_map, params=args.params, use_ema=args.ema,
                         tta=args.tta, logit_adjustment=args.logit_adjustment)
  if fields:
    audited = audit_run(args.workdir, fields, age_bands=args.age_bands,
                        min_cases=args.min_cases, samples=args.samples, seed=args.seed)
    print(format_audit(audited), flush=True)
  print(json_line(metrics), flush=True)
