"""One HTML page per trained run, with its figures::

    python launch.py report --workdir RUN [--cases N] [--params last|best] [--ema | --no-ema]
        [--tta none|hflip|flips]

writes ``RUN/report/index.html`` and its PNGs (matplotlib, Agg canvas; no display needed),
replacing an earlier report's (its ``FIGURES``) and nothing else in that folder:

* training loss and validation metrics over steps, from ``metrics.jsonl`` (one line per fold of a
  cross-validation run; the page says so where it is missing);
* the evaluation's metrics, from ``RUN/evaluation/`` (``flaxderm.tools.evaluate``: run first when the
  run has not been scored yet, or was scored with other ``--params``, ``--ema`` or ``--tta`` than
  those given -- the stored evaluation is then kept in a subfolder; that needs its validation
  split);
* classification: the confusion matrix (counts and row-normalised), ROC and precision-recall
  curves per class (one-vs-rest, with their AUC and average precision, scikit-learn), the
  reliability diagram with its expected calibration error (``metrics.reliability_bins`` and
  ``metrics.calibration``, 15 equal-width bins), and the ``N`` most confident mistakes beside the
  Grad-CAM of the class predicted (``flaxderm.tools.explain``, default layer);
* segmentation: the ``N`` cases with the lowest Dice, the ground truth (green) and the prediction
  (red) outlined on the image at its original size, and the histogram of per-image Dice;
* a cross-validation run (``fold_*/``): the per-fold metrics with their mean and sample standard
  deviation; its cases are the out-of-fold ones, each shown with the fold that held it out;
* subgroups, when the evaluation holds an audit (``launch.py evaluate --by``,
  ``RUN/evaluation/subgroups.json``): per clinical field a forest plot of the headline metric of
  each group with its 95% interval, the value on all cases, and the gap between the worst and
  the best group (dotted lines at both, the gap's interval and the equalized odds in the title).

``--params``, ``--ema`` and ``--tta`` are passed to the evaluation when one is run; the images
show the predictions of the parameters that evaluation scored.
"""
from __future__ import annotations

import argparse
import html
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn import metrics as sk_metrics

from flaxderm.tools import evaluate as evaluate_lib
from flaxderm.tools import explain as explain_lib
from flaxderm import metrics as metrics_lib
from flaxderm.tools import run as run_lib
from flaxderm.data import sources
from flaxderm.data import splits
from flaxderm.data import preprocess
from flaxderm.train import config as config_lib
from flaxderm.train import setup

log = logging.getLogger(__name__)

REPORT_DIR = "report"
TRAINING_LOG = "metrics.jsonl"  # written by flaxderm.train.loop
DEFAULT_CASES = 8
DPI = 100
# Figure sizes in inches (pixels = inches * DPI); the case grids grow with the cases shown.
FIGURE_SIZES = {"curves": (11, 4), "confusion": (11, 4.8), "roc_pr": (11, 4.8),
                "reliability": (6, 6), "dice_histogram": (6, 4)}
# The forest plots: one panel per field, its height growing with the field's groups.
FOREST_WIDTH, FOREST_ROW_INCHES, FOREST_PANEL_INCHES = 10.0, 0.3, 0.9
# Every figure the report draws (``out/<name>.png``): all it removes of an earlier report's.
FIGURES = ("curves", "confusion", "roc_pr", "reliability", "mistakes", "worst_cases",
           "dice_histogram", "subgroups")
PAGE_NAME = "index.html"
TILE_INCHES = 2.6
TITLE_INCHES = 0.6  # three lines of 8-point title
RELIABILITY_BINS = 15
# Validation curves shown beside the headline metric, where the run logged them.
CURVE_METRICS = {"segmentation": ("dice/per_image", "jaccard/per_image",
                                  "jaccard/isic_thresholded"),
                 "classification": ("accuracy", "balanced_accuracy", "f1/macro")}
TRUTH_COLOUR, PREDICTION_COLOUR = "#22dd33", "#ff3311"


# ------------------------------------------------------------------------------------------------
# Reading a run: training logs, evaluation results, case images.


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
  if not path.is_file():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _other_options(workdir: Path, options: Mapping[str, Any]) -> list[str]:
  """The options given (``--params``, ``--ema``, ``--tta``) that the stored evaluation of the run
  (of each fold) was not scored with, as "key: stored -> asked"."""
  asked = {"params": options["params"], "ema": options["use_ema"], "tta": options["tta"]}
  differ = []
  for run_dir in run_lib.run_directories(workdir):
    stored = evaluate_lib.recorded_scoring(run_dir / evaluate_lib.EVALUATION_DIR) or {}
    differ += [f"{key}: {stored[key]} -> {value}" for key, value in asked.items()
               if value is not None and key in stored and stored[key] != value]
  return sorted(set(differ))


def _evaluation(workdir: Path, cv: bool, options: Mapping[str, Any]
                ) -> tuple[list[dict[str, str]], dict[str, Any]]:
  """(case rows, the evaluation's metrics file) of the run, scoring it first when it has none or
  its stored one was scored with other options than those given (the stored one is kept, see
  ``flaxderm.tools.evaluate``)."""
  out = workdir / evaluate_lib.EVALUATION_DIR
  summary = out / (evaluate_lib.CV_METRICS if cv else evaluate_lib.METRICS)
  other = _other_options(workdir, options)
  if other:
    log.info("%s was scored with other options (%s): scoring it again", out, "; ".join(other))
  if other or not ((out / evaluate_lib.CASES).is_file() and summary.is_file()):
    for run_dir in run_lib.run_directories(workdir):
      if not config_lib.has_validation(run_lib.run_config(run_dir)):
        raise ValueError(f"{run_dir} trained on all of its data (data.split='all'): it has no "
                         f"validation split for the report to score and show (python launch.py "
                         f"evaluate --workdir {workdir} --manual-dir DIR scores it on other data)")
    evaluate_lib.evaluate_run(workdir, **options)
  scored = json.loads(summary.read_text())
  if scored.get("manual_dir"):
    raise ValueError(f"{out} holds scores on --manual-dir {scored['manual_dir']}, whose images "
                     f"the report cannot show; score the run's validation split with python "
                     f"launch.py evaluate --workdir {workdir}, then rerun the report")
  return evaluate_lib.read_cases(out / evaluate_lib.CASES), scored


def _case_run(workdir: Path, row: Mapping[str, str]) -> Path:
  """The run that scored a case: the workdir, or the fold that held it out."""
  return workdir / row["fold"] if "fold" in row else workdir


def _case_images(workdir: Path, rows: Sequence[Mapping[str, str]]
                 ) -> list[tuple[np.ndarray, Any]]:
  """Per row, (uint8 RGB image, bool mask or None) at the original size, read from the
  evaluation split of the run that scored it."""
  by_run: dict[Path, set[str]] = {}
  for row in rows:
    by_run.setdefault(_case_run(workdir, row), set()).add(row["id"])
  found = {}
  for run_dir, wanted in by_run.items():
    data_cfg = setup.eval_data_config(run_lib.run_config(run_dir))
    source = sources.open_source(data_cfg)
    split, indices = splits.resolve_split(source, data_cfg, data_cfg.eval_split)
    records = source.split(split)
    for index in indices:
      record = records[int(index)]
      case_id = sources.record_text(record["id"])
      if case_id in wanted:
        mask = None
        if source.has_mask:
          mask = preprocess.decode_image(record["mask"], channels=1, name="mask")[..., 0] > 0
        found[run_dir, case_id] = (preprocess.decode_image(record["image"], channels=3), mask)
    missing = wanted - {case_id for d, case_id in found if d == run_dir}
    if missing:
      raise ValueError(f"{run_dir}: cases {sorted(missing)[:3]} of evaluation/cases.csv are not "
                       f"in its {data_cfg.eval_split!r} split (scored on other data? the report "
                       f"shows the run's own validation cases)")
  return [found[_case_run(workdir, row), row["id"]] for row in rows]


# ------------------------------------------------------------------------------------------------
# Figures.


def _figure(size: tuple[float, float]) -> Figure:
  return Figure(figsize=size, dpi=DPI, layout="constrained")


def _save(fig: Figure, out: Path, name: str) -> dict[str, Any]:
  assert name in FIGURES, name  # so that the next report removes it
  path = out / f"{name}.png"
  fig.savefig(path, dpi=DPI)
  width, height = (round(v * DPI) for v in fig.get_size_inches())
  return {"file": path.name, "width": width, "height": height}


def curves_figure(logs: Mapping[str, list[dict[str, Any]]], task: str, headline: str,
                  out: Path) -> dict[str, Any]:
  """Training loss and validation metrics over steps; one line style per fold."""
  fig = _figure(FIGURE_SIZES["curves"])
  loss_ax, val_ax = fig.subplots(1, 2)
  names = [headline] + [m for m in CURVE_METRICS[task] if m != headline]
  styles = ["-", "--", ":", "-."]
  for f, (fold, records) in enumerate(logs.items()):
    suffix = f" ({fold})" if len(logs) > 1 else ""
    train = [r for r in records if r.get("split") == "train" and "loss" in r]
    loss_ax.plot([r["step"] for r in train], [r["loss"] for r in train], styles[f % 4],
                 marker="o" if len(train) < 30 else None, markersize=3, color="C0",
                 label=f"train loss{suffix}")  # a few logged steps stay visible
    validation = [r for r in records if r.get("split") == "validation"]
    for i, name in enumerate(n for n in names if any(n in r for r in validation)):
      points = [(r["step"], r[name]) for r in validation if r.get(name) is not None]
      val_ax.plot(*zip(*points), styles[f % 4], marker="o", markersize=3, color=f"C{i}",
                  label=f"{name}{suffix}")
  loss_ax.set(title="training loss", xlabel="step", ylabel="loss")
  val_ax.set(title="validation", xlabel="step", ylabel="score")
  for ax in (loss_ax, val_ax):
    ax.grid(alpha=0.3)
    if ax.has_data():
      ax.legend(fontsize=8)
  return _save(fig, out, "curves")


def confusion_figure(labels: np.ndarray, predictions: np.ndarray, class_names: Sequence[str],
                     out: Path) -> dict[str, Any]:
  k = len(class_names)
  counts = np.zeros((k, k), np.int64)
  np.add.at(counts, (labels, predictions), 1)
  with np.errstate(invalid="ignore"):
    rates = counts / counts.sum(axis=1, keepdims=True)
  fig = _figure(FIGURE_SIZES["confusion"])
  for ax, values, title, fmt in zip(fig.subplots(1, 2), (counts, rates),
                                    ("counts", "row-normalised (recall on the diagonal)"),
                                    ("{:d}", "{:.2f}")):
    image = ax.imshow(np.nan_to_num(values), cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, shrink=0.8)
    peak = np.nanmax(values) if np.isfinite(values).any() else 1
    for (i, j), v in np.ndenumerate(values):
      text = "-" if not np.isfinite(v) else fmt.format(v.item())
      ax.text(j, i, text, ha="center", va="center", fontsize=9,
              color="white" if np.isfinite(v) and v > 0.6 * peak else "black")
    ax.set(title=title, xlabel="predicted", ylabel="true", xticks=range(k), yticks=range(k))
    ax.set_xticklabels(class_names, rotation=30, ha="right", fontsize=8)
    ax.set_yticklabels(class_names, fontsize=8)
  return _save(fig, out, "confusion")


def roc_pr_figure(probabilities: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                  out: Path) -> dict[str, Any]:
  """One-vs-rest ROC (AUC) and precision-recall (average precision) per class; a class with no
  positive or no negative case has neither and is named as such."""
  fig = _figure(FIGURE_SIZES["roc_pr"])
  roc_ax, pr_ax = fig.subplots(1, 2)
  for k, name in enumerate(class_names):
    positive = labels == k
    if positive.all() or not positive.any():
      roc_ax.plot([], [], label=f"{name}: undefined ({int(positive.sum())} positives)")
      continue
    fpr, tpr, _ = sk_metrics.roc_curve(positive, probabilities[:, k])
    roc_ax.plot(fpr, tpr, color=f"C{k}", label=f"{name}: AUC {sk_metrics.auc(fpr, tpr):.3f}")
    precision, recall, _ = sk_metrics.precision_recall_curve(positive, probabilities[:, k])
    ap = sk_metrics.average_precision_score(positive, probabilities[:, k])
    pr_ax.step(recall, precision, where="post", color=f"C{k}", label=f"{name}: AP {ap:.3f}")
  roc_ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
  roc_ax.set(title="ROC (one vs rest)", xlabel="false positive rate",
             ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.02))
  pr_ax.set(title="precision-recall (one vs rest)", xlabel="recall", ylabel="precision",
            xlim=(0, 1), ylim=(0, 1.02))
  for ax in (roc_ax, pr_ax):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right" if ax is roc_ax else "lower left")
  return _save(fig, out, "roc_pr")


def reliability_figure(probabilities: np.ndarray, labels: np.ndarray, out: Path
                       ) -> tuple[dict[str, Any], dict[str, float]]:
  """The reliability diagram (accuracy against mean confidence per bin, bin counts below) and the
  calibration numbers."""
  scores = metrics_lib.calibration(probabilities, labels, num_bins=RELIABILITY_BINS)
  confidence, accuracy, count = metrics_lib.reliability_bins(probabilities, labels,
                                                             num_bins=RELIABILITY_BINS)
  edges = np.linspace(0, 1, RELIABILITY_BINS + 1)
  centres, width = (edges[:-1] + edges[1:]) / 2, 1 / RELIABILITY_BINS
  fig = _figure(FIGURE_SIZES["reliability"])
  top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
  filled = count > 0
  top.bar(centres[filled], accuracy[filled], width=width, edgecolor="black", color="C0",
          label="accuracy")
  top.bar(centres[filled], (confidence - accuracy)[filled], bottom=accuracy[filled], width=width,
          color="C3", alpha=0.35, hatch="//", label="gap to mean confidence")
  top.plot([0, 1], [0, 1], color="grey", ls="--", label="perfect calibration")
  top.set(title=f"reliability: ECE {scores['ece']:.3f}, MCE {scores['mce']:.3f} "
          f"({RELIABILITY_BINS} bins)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
  top.legend(fontsize=8, loc="upper left")
  bottom.bar(centres, count, width=width, color="grey", edgecolor="black")
  bottom.set(xlabel="confidence (top-class probability)", ylabel="cases")
  return _save(fig, out, "reliability"), scores


def grid_inches(columns: int, rows: int) -> tuple[float, float]:
  """The size of a figure of ``rows`` x ``columns`` image tiles, each with its title above."""
  return TILE_INCHES * columns, (TILE_INCHES + TITLE_INCHES) * rows


def _grid(columns: int, rows: int) -> Figure:
  return _figure(grid_inches(columns, rows))


def mistakes_figure(images: Sequence[np.ndarray], heat_maps: Sequence[np.ndarray],
                    titles: Sequence[str], out: Path) -> dict[str, Any]:
  """Per mistake, the image above its Grad-CAM overlay."""
  fig = _grid(len(images), 2)
  axes = np.asarray(fig.subplots(2, len(images), squeeze=False))
  for i, (image, heat, title) in enumerate(zip(images, heat_maps, titles)):
    axes[0, i].imshow(image)
    axes[0, i].set_title(title, fontsize=8)
    axes[1, i].imshow(explain_lib.overlay(image, heat))
  for ax in axes.ravel():
    ax.set_axis_off()
  axes[1, 0].text(0, -0.04, "Grad-CAM of the predicted class", transform=axes[1, 0].transAxes,
                  fontsize=7, va="top")
  return _save(fig, out, "mistakes")


def worst_cases_figure(images: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                       predictions: Sequence[np.ndarray], titles: Sequence[str], out: Path
                       ) -> dict[str, Any]:
  """Images with the ground truth (green) and the prediction (red) outlined, 4 per row."""
  columns = min(len(images), 4)
  rows = math.ceil(len(images) / columns)
  fig = _grid(columns, rows)
  axes = np.asarray(fig.subplots(rows, columns, squeeze=False)).ravel()
  for ax, image, truth, prediction, title in zip(axes, images, truths, predictions, titles):
    ax.imshow(image)
    for mask, colour in ((truth, TRUTH_COLOUR), (prediction, PREDICTION_COLOUR)):
      if mask.any() and not mask.all():
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=colour, linewidths=1.5)
    ax.set_title(title, fontsize=8)
  for ax in axes:
    ax.set_axis_off()
  return _save(fig, out, "worst_cases")


def dice_histogram_figure(dice: np.ndarray, out: Path) -> dict[str, Any]:
  fig = _figure(FIGURE_SIZES["dice_histogram"])
  ax = fig.subplots()
  finite = dice[np.isfinite(dice)]
  ax.hist(finite, bins=20, range=(0, 1), color="C0", edgecolor="black")
  for value, style, name in ((np.mean(finite), "-", "mean"), (np.median(finite), "--", "median")):
    ax.axvline(value, color="C3", ls=style, label=f"{name} {value:.3f}")
  ax.set(title=f"per-image Dice ({len(finite)} cases)", xlabel="Dice", ylabel="cases",
         xlim=(0, 1))
  ax.legend(fontsize=8)
  return _save(fig, out, "dice_histogram")


def forest_inches(group_counts: Sequence[int]) -> tuple[float, list[float]]:
  """(width, each panel's height) of the forest plots of fields with these numbers of groups."""
  return FOREST_WIDTH, [FOREST_PANEL_INCHES + FOREST_ROW_INCHES * max(n, 1)
                        for n in group_counts]


def _interval_text(scores: Mapping[str, Any]) -> str:
  low, high = (_number(v) for v in scores["ci95"])
  return f"{_number(scores['value'])} [{low}, {high}]"


def subgroups_figure(audited: Mapping[str, Any], out: Path) -> dict[str, Any]:
  """Per field, a forest plot of the headline metric: each group's value with its 95% interval
  (grey: the cases missing the field; too small groups named with their size), the value on all
  cases (dashed) and the worst and best groups' values (dotted), the gap in the title."""
  headline, fields = audited["headline"], audited["fields"]
  width, heights = forest_inches([len(f["groups"]) for f in fields.values()])
  fig = _figure((width, sum(heights)))
  axes = np.asarray(fig.subplots(len(fields), 1, squeeze=False,
                                 height_ratios=heights))[:, 0]
  overall = audited["overall"][headline]["value"]
  for ax, (field, result) in zip(axes, fields.items()):
    groups = result["groups"]
    rows = np.arange(len(groups))[::-1]  # the first group on top
    for row, group in zip(rows, groups):
      scores = group["metrics"][headline] if group["scored"] else None
      if scores is None or scores["value"] is None:
        reason = "too small" if not group["scored"] else "undefined"
        ax.text(0.01, row, f"{reason} ({group['cases']} cases)", va="center", fontsize=8,
                color="grey")
        continue
      value, (low, high) = scores["value"], scores["ci95"]
      low, high = (value if v is None else v for v in (low, high))
      ax.errorbar(value, row, xerr=[[value - low], [high - value]], fmt="s" if group["missing"]
                  else "o", color="grey" if group["missing"] else "C0", capsize=3, markersize=5)
    if overall is not None:
      ax.axvline(overall, color="black", ls="--", lw=0.8, label=f"all cases {overall:.3f}")
    gap = result["gap"][headline]
    title = f"{field}: {headline} by group"
    if gap is not None:
      by_name = {g["group"]: g["metrics"][headline]["value"] for g in groups if g["scored"]}
      for end, colour in (("worst", "C3"), ("best", "C2")):
        ax.axvline(by_name[gap[end]], color=colour, ls=":", lw=1.2,
                   label=f"{end}: {gap[end]} {by_name[gap[end]]:.3f}")
      title += f"; gap {_interval_text(gap)}"
    odds = result.get("equalized_odds_difference")
    if odds:
      title += f"; equalized odds {_interval_text(odds)}"
    ax.set_title(title, fontsize=9, loc="left")
    ax.set_yticks(rows, [f"{g['group']} ({g['cases']})" for g in groups], fontsize=8)
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.7, len(groups) - 0.3))
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # off the points
  axes[-1].set_xlabel(f"{headline} (95% interval; groups: name (cases))")
  return _save(fig, out, "subgroups")


def _subgroups(workdir: Path, out: Path) -> tuple[str, dict[str, Any] | str]:
  """The subgroup section's figure, or what the page says instead."""
  path = workdir / evaluate_lib.EVALUATION_DIR / evaluate_lib.SUBGROUPS
  if not path.is_file():
    return "Subgroups", (f"No subgroup audit: python launch.py evaluate --workdir {workdir} "
                         "--by FIELD,... (e.g. sex,age,site) writes one.")
  audited = json.loads(path.read_text())
  if not audited["fields"]:
    return "Subgroups", "The subgroup audit names no field."
  scope = f", {audited['pooled']}" if audited["pooled"] else ""
  return (f"Subgroups: {audited['cases']} cases{scope}; groups under {audited['min_cases']} "
          f"cases not scored; intervals resampled by lesion/patient",
          subgroups_figure(audited, out))


# ------------------------------------------------------------------------------------------------
# Sections.


def _short(case_id: str, limit: int = 22) -> str:
  return case_id if len(case_id) <= limit else "..." + case_id[-(limit - 3):]


def _classification(rows: list[dict[str, str]], workdir: Path, class_names: Sequence[str],
                    explainer, cases: int, out: Path) -> tuple[list, dict[str, float]]:
  probabilities = np.array([[float(r[f"prob/{n}"]) for n in class_names] for r in rows])
  labels = np.array([class_names.index(r["label"]) for r in rows])
  predictions = np.array([class_names.index(r["prediction"]) for r in rows])
  figures = [("Confusion matrix", confusion_figure(labels, predictions, class_names, out)),
             ("ROC and precision-recall", roc_pr_figure(probabilities, labels, class_names, out))]
  reliability, scores = reliability_figure(probabilities, labels, out)
  figures.append(("Reliability diagram", reliability))
  wrong = np.flatnonzero(labels != predictions)
  wrong = wrong[np.argsort(-probabilities[wrong, predictions[wrong]], kind="stable")][:cases]
  if len(wrong):
    chosen = [rows[i] for i in wrong]
    images = [image for image, _ in _case_images(workdir, chosen)]
    maps = [explainer(_case_run(workdir, row)).explain([image], int(predictions[i]))[0][0]
            for i, row, image in zip(wrong, chosen, images)]
    titles = [f"{_short(row['id'])}\ntrue {row['label']}\npredicted {row['prediction']} "
              f"({probabilities[i, predictions[i]]:.2f})" for i, row in zip(wrong, chosen)]
    figures.append((f"The {len(wrong)} most confident mistakes",
                    mistakes_figure(images, maps, titles, out)))
  else:
    figures.append(("Most confident mistakes", "None: every case is classified correctly."))
  return figures, scores


def _segmentation(rows: list[dict[str, str]], workdir: Path, load, cases: int, out: Path
                  ) -> list:
  dice = np.array([float(r["dice/per_image"]) if r["dice/per_image"] not in ("", "nan")
                   else math.nan for r in rows])
  order = np.argsort(np.where(np.isfinite(dice), dice, np.inf), kind="stable")[:cases]
  chosen = [rows[i] for i in order]
  images, truths = zip(*_case_images(workdir, chosen))
  predictions = [load(_case_run(workdir, row)).predict(image)
                 for row, image in zip(chosen, images)]
  titles = [f"{_short(row['id'])}\nDice {dice[i]:.3f}" for i, row in zip(order, chosen)]
  return [(f"The {len(order)} cases with the lowest Dice (truth green, prediction red)",
           worst_cases_figure(images, truths, predictions, titles, out)),
          ("Dice distribution", dice_histogram_figure(dice, out))]


def _metrics_table(metrics: Mapping[str, Any]) -> str:
  cells = "".join(f"<tr><td>{html.escape(k)}</td><td>{_number(v)}</td></tr>"
                  for k, v in sorted(metrics.items()))
  return f"<table><tr><th>metric</th><th>value</th></tr>{cells}</table>"


def _number(value: Any) -> str:
  if isinstance(value, float) or value is None:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"
  return html.escape(str(value))


def fold_table(summary: Mapping[str, Any], headline: str) -> str:
  """Metrics as rows, folds as columns, then mean +- sample std (crossval.summarize's numbers)."""
  keys = sorted(summary["mean"], key=lambda k: (k != headline, k))
  folds = summary["folds"]
  head = "".join(f"<th>{html.escape(f['fold'])}</th>" for f in folds)
  body = "".join(
      f"<tr><td>{html.escape(k)}</td>"
      + "".join(f"<td>{_number(f['metrics'].get(k))}</td>" for f in folds)
      + f"<td>{_number(summary['mean'][k])} &plusmn; {_number(summary['std'][k])}</td></tr>"
      for k in keys)
  return f"<table><tr><th>metric</th>{head}<th>mean &plusmn; std</th></tr>{body}</table>"


# ------------------------------------------------------------------------------------------------
# The report.


PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body {{ font-family: sans-serif; margin: 2em; max-width: 1200px; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }} img {{ max-width: 100%; height: auto; }}
</style></head><body>
{body}
</body></html>
"""


def write_report(workdir: str | Path, *, params: str | None = None, use_ema: bool | None = None,
                 tta: str | None = None, cases: int = DEFAULT_CASES) -> Path:
  """Writes ``workdir/report/index.html`` and its figures; returns the page's path."""
  if cases < 1:
    raise ValueError(f"--cases must be >= 1, got {cases}")
  workdir = Path(workdir).resolve()
  runs = run_lib.run_directories(workdir)
  cv = runs != [workdir]
  info = setup.RunInfo.load(runs[0])
  cfg = run_lib.run_config(runs[0])
  rows, evaluation = _evaluation(workdir, cv, dict(params=params, use_ema=use_ema, tta=tta))
  if not rows:
    raise ValueError(f"{workdir}/evaluation/cases.csv holds no cases")
  results = [json.loads(p.read_text()) for p in (r / run_lib.RESULTS for r in runs)
             if p.is_file()]
  headline = (results[0]["best_metric"] if results else cfg.eval.best_metric) or (
      "dice/per_image" if info.task == "segmentation" else "balanced_accuracy")

  loaded: dict[Path, run_lib.Run] = {}

  def load(run_dir: Path) -> run_lib.Run:
    """The run as its evaluation scored it (parameters, EMA, test-time augmentation)."""
    if run_dir not in loaded:
      scored = evaluate_lib.recorded_scoring(run_dir / evaluate_lib.EVALUATION_DIR)
      loaded[run_dir] = run_lib.load_run(run_dir, params=scored["params"], use_ema=scored["ema"],
                                         tta=scored["tta"], batch_size=1)
    return loaded[run_dir]

  out = workdir / REPORT_DIR
  out.mkdir(parents=True, exist_ok=True)
  for name in FIGURES:  # an earlier report's figure this one may not redraw; nothing else
    (out / f"{name}.png").unlink(missing_ok=True)
  logs = {r.name: _read_jsonl(r / TRAINING_LOG) for r in runs}
  unlogged = [str(r / TRAINING_LOG) for r in runs if not logs[r.name]]
  figures = [("Training", curves_figure(logs, info.task, headline, out) if len(unlogged) < len(runs)
              else f"No training curves: no {TRAINING_LOG} records in {', '.join(unlogged)} "
                   "(the run's training log is missing or empty).")]
  explainers: dict[Path, explain_lib.Explainer] = {}

  def explainer(run_dir: Path) -> explain_lib.Explainer:
    if run_dir not in explainers:
      explainers[run_dir] = explain_lib.Explainer(load(run_dir))
    return explainers[run_dir]

  calibration: dict[str, float] = {}
  if info.task == "classification":
    section, calibration = _classification(rows, workdir, list(info.class_names), explainer,
                                           cases, out)
  else:
    section = _segmentation(rows, workdir, load, cases, out)
  figures += [*section, _subgroups(workdir, out)]

  title = f"flaxderm report: {workdir.name}"
  parts = [f"<h1>{html.escape(title)}</h1>",
           f"<p>{html.escape(str(workdir))}: {info.task} with {html.escape(cfg.model.name)}, "
           f"classes {html.escape(', '.join(info.class_names))}; {len(rows)} evaluated cases"
           f"{f' (out of fold, {len(runs)} folds)' if cv else ''}.</p>"]
  if cv:
    parts += ["<h2>Cross-validation</h2>", fold_table(evaluation, headline)]
  else:
    parts += [f"<h2>Evaluation</h2><p>{html.escape(str(evaluation.get('dataset')))} / "
              f"{html.escape(str(evaluation.get('split')))}, {evaluation.get('params')} "
              f"parameters of step {evaluation.get('step')}, EMA {evaluation.get('ema')}, "
              f"TTA {evaluation.get('tta')}</p>",
              _metrics_table(evaluation["metrics"])]
  if calibration:
    parts += [f"<h2>Calibration</h2><p>{RELIABILITY_BINS} equal-width bins"
              f"{', out-of-fold cases' if cv else ''}.</p>", _metrics_table(calibration)]
  for heading, figure in figures:
    parts.append(f"<h2>{html.escape(heading)}</h2>")
    if isinstance(figure, str):  # what the page says instead of a figure it could not draw
      parts.append(f"<p>{html.escape(figure)}</p>")
      continue
    parts.append(f'<img src="{figure["file"]}" width="{figure["width"]}" '
                 f'height="{figure["height"]}" alt="{html.escape(heading)}">')
  page = out / PAGE_NAME
  page.write_text(PAGE.format(title=html.escape(title), body="\n".join(parts)), encoding="utf-8")
  return page


def add_arguments(parser: argparse.ArgumentParser) -> None:
  run_lib.add_run_arguments(parser)
  parser.add_argument("--cases", type=int, default=DEFAULT_CASES,
                      help="how many worst cases / confident mistakes to show")


def main(args: argparse.Namespace) -> None:
  path = write_report(args.workdir, params=args.params, use_ema=args.ema, tta=args.tta,
                      cases=args.cases)
  print(f"report written to {path}", flush=True)
