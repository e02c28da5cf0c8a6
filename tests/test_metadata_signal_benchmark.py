"""benchmarks/metadata_signal.py: the metadata model is fitted on the other folds' cases and its
product with the image model's probabilities is scored (no training)."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import metadata_signal  # pylint: disable=g-import-not-at-top,wrong-import-position

CLASSES = ("BCC", "MEL", "NEV")
SITES = {"BCC": "face", "MEL": "back", "NEV": "arm"}


def write_fold(keep: Path, fold: int, image_knows: bool) -> None:
  """Cases whose body site gives the label away; the image model is uninformative (uniform) or
  sure and right (``image_knows``)."""
  path = keep / f"flaxderm_{fold}" / "evaluation" / "cases.csv"
  path.parent.mkdir(parents=True)
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, ["id", "label", *(f"prob/{c}" for c in CLASSES), "age", "sex",
                                "site"])
    writer.writeheader()
    for i in range(12):
      label = CLASSES[i % 3]
      probs = [0.9 if c == label else 0.05 for c in CLASSES] if image_knows else [1 / 3] * 3
      writer.writerow({"id": f"{fold}_{i}", "label": label, "age": str(30 + i), "sex": "",
                       "site": SITES[label], **{f"prob/{c}": p for c, p in zip(CLASSES, probs)}})


def test_late_fusion_adds_what_only_the_metadata_knows(tmp_path):
  for fold in range(3):
    write_fold(tmp_path, fold, image_knows=False)
  folds = [metadata_signal.read_fold(tmp_path, k) for k in range(3)]
  scores = metadata_signal.fold_scores(folds[1] + folds[2], folds[0], ("age", "sex", "site"), 1.0)
  assert scores["metadata model"] == (1.0, 1.0)
  assert scores["late fusion"] == (1.0, 1.0)
  assert scores["image model"][1] == 0.5  # uniform probabilities rank nothing
  table = metadata_signal.report([scores] * 3)
  assert "| mean (std) | 0.3333 (0.0000) / 0.5000 (0.0000) |" in table
  assert table.endswith("| 0.6667 (0.0000) |")


def test_main_reads_every_fold_and_refuses_a_missing_one(tmp_path, capsys):
  for fold in range(2):
    write_fold(tmp_path, fold, image_knows=True)
  with pytest.raises(SystemExit, match=r"flaxderm_2/evaluation/cases.csv does not exist"):
    metadata_signal.main([str(tmp_path), "--folds", "3", "--no-append"])
  assert metadata_signal.main([str(tmp_path), "--folds", "2", "--experiment",
                               "isic2018_task3_lite0_metadata_cpu", "--no-append"]) == 0
  assert "| 0 | 1.0000 / 1.0000 |" in capsys.readouterr().out
