"""benchmarks/quality.py's paired statistics and its reuse of kept reference runs (no training)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("scipy")
pytest.importorskip("sklearn")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import quality  # pylint: disable=g-import-not-at-top,wrong-import-position

T3 = quality.COMPARISONS["isic_t3"]


def row(balanced_accuracy: float, auc: float, cases=None) -> dict:
  out = {"balanced accuracy": balanced_accuracy, "accuracy": 0.5, "macro AUC": auc, "steps": 10}
  if cases is not None:
    out["cases"] = cases
  return out


def test_paired_table_counts_folds_ahead_and_applies_the_bar():
  reference = [0.50, 0.55, 0.60, 0.52, 0.58]
  rows = []
  for i, value in enumerate(reference):
    rows.append((T3.reference, i, row(value, 0.90)))
    rows.append(("flaxderm", i, row(value + 0.10 + 0.01 * i, 0.91)))
  text = quality.paired_table(T3, rows, T3.reference, "flaxderm")
  assert "| balanced accuracy | 0.5500 (0.0412) | 0.6700 (0.0510) | +0.1200 (0.0158) | 5 of 5 | " \
         "0.062 | 0.062 |" in text
  assert "Bar (balanced accuracy ahead by more than one fold std of flaxderm's, macro AUC not " \
         "lower): met." in text

  lower_auc = [(s, i, {**r, "macro AUC": 0.89}) if s == "flaxderm" else (s, i, r)
               for s, i, r in rows]
  assert "not lower): not met." in quality.paired_table(T3, lower_auc, T3.reference, "flaxderm")


def test_pooled_bootstrap_uses_every_fold_case():
  rng = np.random.default_rng(0)
  rows = []
  for i in range(3):
    labels = rng.integers(0, 3, 40)
    wrong = (labels + 1) % 3
    rows.append((T3.reference, i, row(0.5, 0.9, (labels, np.where(rng.random(40) < 0.5, labels,
                                                                    wrong)))))
    rows.append(("flaxderm", i, row(0.6, 0.9, (labels, labels))))
  text = quality.paired_table(T3, rows, T3.reference, "flaxderm")
  assert "flaxderm 1.0000 (120 cases)" in text
  assert "(120 cases); difference +" in text


def kept_reference(directory: Path, seconds: int, index: int = 0) -> Path:
  directory.mkdir(exist_ok=True)
  (directory / f"reference_{index}.log").write_text(
      f"train 800 test 200\n    91s step 80 loss 0.900\n   {seconds}s step 160 loss 0.437\n"
      "RESULT steps 160 images 200 balanced-accuracy 0.5100 accuracy 0.6000 macro-AUC 0.8800\n")
  (directory / f"reference_{index}_cases.json").write_text(
      json.dumps({"label": [0, 1, 2], "prediction": [0, 1, 1]}))
  return directory


def test_reused_reference_rows_are_read_back(tmp_path):
  args = argparse.Namespace(reference_from=str(kept_reference(tmp_path, 181)), budget=180.0,
                            folds=None)
  reused = quality.reuse_reference(T3, args, 0, None)
  assert (reused["balanced accuracy"], reused["macro AUC"], reused["steps"]) == (0.51, 0.88, 160)
  np.testing.assert_array_equal(reused["cases"][1], [0, 1, 1])


def test_reused_reference_of_another_budget_or_missing_run_is_refused(tmp_path):
  args = argparse.Namespace(reference_from=str(kept_reference(tmp_path, 300)), budget=180.0,
                            folds=None)
  with pytest.raises(SystemExit, match="reference_0.log trained for 300.0 s, not the --budget "
                                       "of 180 s"):
    quality.reuse_reference(T3, args, 0, None)
  with pytest.raises(SystemExit, match="reference_1.log does not exist"):
    quality.reuse_reference(T3, args, 1, None)
