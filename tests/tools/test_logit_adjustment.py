"""Post-hoc logit adjustment (``eval.logit_adjustment_tau``, ``launch.py evaluate
--logit-adjustment``): the run records its training class counts, and every decision -- the
evaluation's confusion matrix and cases, ``predict``'s labels, ``explain``'s default target, the
exported model card -- is ``argmax(log p - tau * log prior)`` while the probabilities stay the
model's. Oracles: the formula written out here, and scikit-learn's balanced accuracy and AUC."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flaxderm.data import splits
from flaxderm.tools import evaluate as evaluate_lib
from flaxderm.tools import explain
from flaxderm.tools import export as export_lib
from flaxderm.tools import predict as predict_lib
from flaxderm.tools import run as run_lib
from flaxderm.train import setup
from tiny_runs import write_image

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def _cases(run_dir: Path) -> list[dict[str, str]]:
  return evaluate_lib.read_cases(run_dir / evaluate_lib.EVALUATION_DIR / evaluate_lib.CASES)


def _probabilities(rows, names) -> np.ndarray:
  return np.array([[float(r[f"prob/{n}"]) for n in names] for r in rows])


def _adjusted(probs: np.ndarray, counts, tau: float) -> np.ndarray:
  prior = np.maximum(np.asarray(counts, np.float64), 1)
  prior /= prior.sum()
  with np.errstate(divide="ignore"):
    return np.argmax(np.log(probs) - tau * np.log(prior), axis=1)


def _record_counts(run_dir: Path, counts) -> None:
  path = run_dir / setup.RUN_INFO
  saved = json.loads(path.read_text())
  saved["class_counts"] = None if counts is None else [int(n) for n in counts]
  path.write_text(json.dumps(saved))


def test_the_run_records_its_training_class_counts(classification_run):
  info = setup.RunInfo.load(classification_run)
  cfg = run_lib.run_config(classification_run)
  want = splits.split_label_counts(cfg.data, cfg.data.train_split, len(info.class_names))
  assert info.class_counts == tuple(want.tolist()) and sum(info.class_counts) == 16


@pytest.mark.slow
def test_evaluate_adjusts_the_decisions_and_keeps_the_probabilities(classification_run, tmp_path):
  run_dir = tmp_path / "run"
  shutil.copytree(classification_run, run_dir)
  info = setup.RunInfo.load(run_dir)
  names = info.class_names
  plain = evaluate_lib.evaluate_run(run_dir)
  rows = _cases(run_dir)
  probs = _probabilities(rows, names)
  labels = np.array([names.index(r["label"]) for r in rows])
  # A prior that makes the class the model predicts most the commonest by far, so the adjustment
  # must move some of its cases to another class.
  modal = np.bincount(probs.argmax(1), minlength=len(names)).argmax()
  counts = np.ones(len(names), np.int64)
  counts[modal] = 1000
  _record_counts(run_dir, counts)

  adjusted = evaluate_lib.evaluate_run(run_dir, logit_adjustment=1.0)
  moved = _cases(run_dir)
  np.testing.assert_array_equal(_probabilities(moved, names), probs)  # the model's, unchanged
  decided = np.array([names.index(r["prediction"]) for r in moved])
  np.testing.assert_array_equal(decided, _adjusted(probs, counts, 1.0))
  assert (decided != probs.argmax(1)).any()
  assert adjusted["balanced_accuracy"] == pytest.approx(
      sklearn_metrics.balanced_accuracy_score(labels, decided))
  assert adjusted["accuracy"] == pytest.approx(np.mean(decided == labels))
  for key in (k for k in plain if k.startswith("auc")):
    assert adjusted[key] == pytest.approx(plain[key], nan_ok=True), key

  out = run_dir / evaluate_lib.EVALUATION_DIR
  assert json.loads((out / evaluate_lib.METRICS).read_text())["logit_adjustment"] == 1.0
  kept = [d.name for d in out.iterdir() if d.is_dir()]
  assert len(kept) == 1 and "la-" not in kept[0]  # the plain evaluation, kept aside

  # A run saved before class_counts were recorded counts them again from its training split.
  _record_counts(run_dir, None)
  evaluate_lib.evaluate_run(run_dir, logit_adjustment=4.0)
  cfg = run_lib.run_config(run_dir)
  training = splits.split_label_counts(cfg.data, cfg.data.train_split, len(names))
  np.testing.assert_array_equal([names.index(r["prediction"]) for r in _cases(run_dir)],
                                _adjusted(probs, training, 4.0))


@pytest.mark.slow
def test_a_run_configured_to_adjust_decides_so_in_predict_explain_and_export(
    classification_run, tmp_path):
  run_dir = tmp_path / "run"
  shutil.copytree(classification_run, run_dir)
  names = setup.RunInfo.load(run_dir).class_names
  for i in range(4):
    write_image(tmp_path / "in" / f"img{i}.png", 48, 40 + 8 * i, seed=i)
  images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((tmp_path / "in").iterdir())]
  probs = np.stack(run_lib.load_run(run_dir).probabilities(images))
  counts = np.ones(len(names), np.int64)
  counts[np.bincount(probs.argmax(1), minlength=len(names)).argmax()] = 1000
  _record_counts(run_dir, counts)
  config = json.loads((run_dir / run_lib.CONFIG).read_text())
  config["eval"]["logit_adjustment_tau"] = 1.0
  (run_dir / run_lib.CONFIG).write_text(json.dumps(config))

  run = run_lib.load_run(run_dir)
  np.testing.assert_allclose(np.stack(run.probabilities(images)), probs, atol=1e-7)
  want = _adjusted(probs, counts, 1.0)
  assert [run.decide(p) for p in probs] == want.tolist() and (want != probs.argmax(1)).any()
  np.testing.assert_allclose(run.decision_bias, -np.log(counts / counts.sum()), rtol=1e-6)

  predict_lib.predict_files(run_dir, [str(tmp_path / "in")], tmp_path / "out", progress=False)
  with open(tmp_path / "out" / predict_lib.LABELS) as f:
    assert [r["label"] for r in csv.DictReader(f)] == [names[i] for i in want]

  card = export_lib._decision_card(run)  # pylint: disable=protected-access
  assert card["logit_adjustment_tau"] == 1.0
  assert list(card["bias"]) == list(names)
  _, targets = explain.Explainer(run_lib.load_run(run_dir, tta="none")).explain(images)
  assert targets == want.tolist()  # the tiny run's own test-time augmentation is none
