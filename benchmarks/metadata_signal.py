"""How much a fusion head could gain from the clinical metadata: a logistic regression on the
metadata alone, and its product with an image-only model's probabilities (late fusion), on the same
grouped folds as a kept ``quality.py`` comparison.

  python benchmarks/quality.py pad_ufes --folds 5 --budget 240 --keep /var/tmp/pad_image
  python benchmarks/metadata_signal.py /var/tmp/pad_image --experiment pad_ufes20_metadata_cpu

Reads each fold's held-out cases (``flaxderm_<i>/evaluation/cases.csv``: the image-only run's
probabilities and the cases' clinical fields). For fold ``i`` the metadata model is fitted on the
cases the other folds hold out, which are fold ``i``'s training cases, since the folds partition the
data: the fields of ``--experiment``'s ``data.metadata``, encoded as its runs encode them
(``flaxderm.data.metadata``: a vocabulary fitted on the training cases), scikit-learn's
``LogisticRegression`` with balanced class weights. Late fusion multiplies the two probability
vectors and renormalises (a sum of log-probabilities). Prints, and appends to RESULTS.md, per fold
and as mean (std) over folds: balanced accuracy and macro one-vs-rest AUC of the image model, the
metadata model and their product. Not a flaxderm recipe: the image model never saw the metadata and
the metadata model never saw the image; it estimates what a jointly trained head leaves unused.
Both models carry balanced class weights, so each estimates its input's class likelihood up to a
constant; when image and metadata are independent given the class, their product is the balanced
posterior of both together (two unweighted models' product would count the prior twice). What the
image and the metadata share breaks that independence, so the product estimates, and does not
bound, what a head gains: ``model.metadata_fusion="product"`` is the recipe that trains it.
"""
from __future__ import annotations

import argparse
import datetime
import shlex
import statistics
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

import environment  # benchmarks/environment.py, beside this script
from flaxderm.data import metadata
from flaxderm.tools import evaluate
from flaxderm.tools import experiment

PACKAGES = ("jax", "scikit-learn")
SYSTEMS = ("image model", "metadata model", "late fusion")


def read_fold(keep: Path, fold: int) -> list[dict[str, str]]:
  path = keep / f"flaxderm_{fold}" / evaluate.EVALUATION_DIR / evaluate.CASES
  if not path.is_file():
    raise SystemExit(f"{path} does not exist: give the --keep folder of a quality.py --folds run")
  return evaluate.read_cases(path)


def metadata_fields(name: str) -> tuple[str, ...]:
  fields = tuple(experiment.experiment_config(name, []).data.metadata)
  if not fields:
    raise SystemExit(f"{name} takes no metadata (data.metadata is empty)")
  return fields


def fold_scores(train: list[dict[str, str]], test: list[dict[str, str]],
                fields: tuple[str, ...], regularisation: float) -> dict[str, tuple[float, float]]:
  """(balanced accuracy, macro AUC) of each of ``SYSTEMS`` on ``test``."""
  missing = [f for f in fields if f not in test[0]]
  if missing:
    raise SystemExit(f"cases.csv has no column for the fields {missing}")
  encoder = metadata.MetadataEncoder(fields, metadata.fit_vocabulary(fields, train))
  classes = [k[len("prob/"):] for k in test[0] if k.startswith("prob/")]
  encode = lambda rows: np.stack([encoder.encode({f: r[f] for f in fields}) for r in rows])
  labels = lambda rows: np.array([classes.index(r["label"]) for r in rows])
  model = LogisticRegression(C=regularisation, class_weight="balanced", max_iter=5000)
  model.fit(encode(train), labels(train))
  with_metadata = np.zeros((len(test), len(classes)))  # a class training lacks keeps 0
  with_metadata[:, model.classes_] = model.predict_proba(encode(test))
  image = np.array([[float(r[f"prob/{c}"]) for c in classes] for r in test])
  product = image * with_metadata
  product /= np.maximum(product.sum(axis=1, keepdims=True), 1e-12)
  y = labels(test)
  return {name: (balanced_accuracy_score(y, p.argmax(axis=1)),
                 roc_auc_score(y, p, multi_class="ovr", labels=range(len(classes))))
          for name, p in zip(SYSTEMS, (image, with_metadata, product))}


def _mean_std(values: list[float]) -> str:
  return f"{statistics.fmean(values):.4f} ({statistics.stdev(values):.4f})"


def report(scores: list[dict[str, tuple[float, float]]]) -> str:
  lines = ["| fold | " + " | ".join(f"{s}: balanced accuracy / macro AUC" for s in SYSTEMS)
           + " | late fusion minus image: balanced accuracy |", "|---|" + "---|" * 4]
  for fold, scored in enumerate(scores):
    cells = [f"{scored[s][0]:.4f} / {scored[s][1]:.4f}" for s in SYSTEMS]
    gain = scored[SYSTEMS[2]][0] - scored[SYSTEMS[0]][0]
    lines.append(f"| {fold} | " + " | ".join(cells) + f" | {gain:+.4f} |")
  column = lambda s, m: [f[s][m] for f in scores]
  gains = [a - b for a, b in zip(column(SYSTEMS[2], 0), column(SYSTEMS[0], 0))]
  lines.append("| mean (std) | " + " | ".join(
      f"{_mean_std(column(s, 0))} / {_mean_std(column(s, 1))}" for s in SYSTEMS)
      + f" | {_mean_std(gains)} |")
  return "\n".join(lines)


def main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("keep", help="the --keep folder of an image-only quality.py --folds run")
  p.add_argument("--experiment", default="pad_ufes20_metadata_cpu",
                 help="whose data.metadata fields the metadata model reads")
  p.add_argument("--folds", type=int, default=5)
  p.add_argument("--C", type=float, default=0.3, dest="regularisation",
                 help="inverse L2 strength of the logistic regression")
  p.add_argument("--no-append", action="store_true")
  args = p.parse_args(argv)
  keep = Path(args.keep)
  folds = [read_fold(keep, k) for k in range(args.folds)]
  fields = metadata_fields(args.experiment)
  scores = [fold_scores([r for j, rows in enumerate(folds) if j != k for r in rows], folds[k],
                        fields, args.regularisation) for k in range(args.folds)]
  text = (f"\n## Metadata signal: {args.experiment}'s {len(fields)} fields against the image "
          f"runs of `{keep}` ({datetime.date.today().isoformat()})\n\n"
          f"- machine: {environment.cpu()}; {environment.versions(PACKAGES)}\n"
          f"- command: `python benchmarks/metadata_signal.py {shlex.join(argv)}`\n\n"
          + report(scores) + "\n")
  environment.record(text, append=not args.no_append)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
