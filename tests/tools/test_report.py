"""The run report: every figure a valid PNG of the size the page declares, linked from the page,
for tiny runs of both tasks and a cross-validation run; clear errors for runs lacking data."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flaxderm.tools import crossval
from flaxderm.tools import report
from tiny_runs import tiny_config

from flaxderm import cli  # pylint: disable=g-import-not-at-top,wrong-import-position

pytestmark = pytest.mark.usefixtures("private_data_dir")






def linked_images(page: Path) -> dict[str, tuple[int, int]]:
  """{file: (width, height)} of the page's <img> tags, each checked to be a PNG of that size."""
  text = page.read_text()
  images = {m[1]: (int(m[2]), int(m[3])) for m in re.finditer(
      r'<img src="([^"]+)" width="(\d+)" height="(\d+)"', text)}
  for name, size in images.items():
    with Image.open(page.parent / name) as im:
      assert im.format == "PNG" and im.size == size, name
      im.load()  # the whole file decodes
  assert set(images) == {p.name for p in page.parent.glob("*.png")}  # every figure is linked
  return images


def fixed_size(name: str) -> tuple[int, int]:
  width, height = report.FIGURE_SIZES[name]
  return round(width * report.DPI), round(height * report.DPI)


def grid_pixels(columns: int, rows: int) -> tuple[int, int]:
  width, height = report.grid_inches(columns, rows)
  return round(width * report.DPI), round(height * report.DPI)


@pytest.mark.slow
def test_classification_report(classification_run, capsys):
  assert cli.main(["report", "--workdir", str(classification_run), "--cases", "3"]) == 0
  page = classification_run / "report" / "index.html"
  assert str(page) in capsys.readouterr().out
  images = linked_images(page)
  for name in ("curves", "confusion", "roc_pr", "reliability"):
    assert images[f"{name}.png"] == fixed_size(name)
  text = page.read_text()
  assert "<h2>Calibration</h2>" in text and ">ece<" in text and ">brier<" in text
  assert "balanced_accuracy" in text and "auc/macro_ovr" in text
  if "mistakes.png" in images:  # 3 mistakes at most, each image above its Grad-CAM
    shown = int(re.search(r"The (\d) most confident mistakes", text)[1])
    assert 1 <= shown <= 3 and images["mistakes.png"] == grid_pixels(shown, 2)
  else:
    assert "every case is classified correctly" in text


def test_segmentation_report_and_its_worst_cases(segmentation_run):
  page = report.write_report(segmentation_run, cases=5)
  images = linked_images(page)
  assert images["curves.png"] == fixed_size("curves")
  assert images["dice_histogram.png"] == fixed_size("dice_histogram")
  assert images["worst_cases.png"] == grid_pixels(4, 2)  # 5 cases, 4 per row
  text = page.read_text()
  assert "lowest Dice" in text and "dice/per_image" in text
  # The 5 worst by the evaluation's own per-case Dice, in order.
  cases = (segmentation_run / "evaluation" / "cases.csv").read_text().splitlines()[1:]
  dice = sorted(float(line.split(",")[1]) for line in cases)[:5]
  assert dice[0] <= dice[-1]


@pytest.mark.slow
def test_cross_validation_report_has_the_fold_table(tmp_path):
  cv = tmp_path / "cv"
  crossval.train_folds(tiny_config(), cv, 2)
  page = report.write_report(cv, cases=2)
  linked_images(page)
  text = page.read_text()
  assert "Cross-validation" in text and "fold_0" in text and "fold_1" in text
  assert "mean &plusmn; std" in text
  summary = json.loads((cv / "evaluation" / "cv_metrics.json").read_text())
  dice = [f["metrics"]["dice/per_image"] for f in summary["folds"]]
  assert f"{np.mean(dice):.4f} &plusmn; {np.std(dice, ddof=1):.4f}" in text


def test_report_errors(segmentation_run, tmp_path):
  with pytest.raises(ValueError, match="not a training run directory"):
    report.write_report(tmp_path)
  no_checkpoint = tmp_path / "fresh"
  no_checkpoint.mkdir()
  for name in ("config.json", "run_info.json"):
    shutil.copy(segmentation_run / name, no_checkpoint / name)
  with pytest.raises(ValueError, match="checkpoint"):
    report.write_report(no_checkpoint)
  all_data = tmp_path / "all"
  shutil.copytree(segmentation_run, all_data, ignore=shutil.ignore_patterns("evaluation",
                                                                             "report"))
  cfg = json.loads((all_data / "config.json").read_text())
  cfg["data"]["split"] = "all"
  (all_data / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ValueError, match="no validation split for the report"):
    report.write_report(all_data)
  elsewhere = tmp_path / "elsewhere"
  shutil.copytree(all_data, elsewhere)
  (elsewhere / "evaluation").mkdir()
  (elsewhere / "evaluation" / "cases.csv").write_text("id,dice/per_image\nx,0.5\n")
  (elsewhere / "evaluation" / "metrics.json").write_text(json.dumps({"manual_dir": "/data/b"}))
  with pytest.raises(ValueError, match="scores on --manual-dir /data/b"):
    report.write_report(elsewhere)
  with pytest.raises(ValueError, match="--cases must be >= 1"):
    report.write_report(segmentation_run, cases=0)


def test_subgroups_figure_has_one_forest_plot_per_field(tmp_path):
  from flaxderm import subgroups  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, size=300)
  probabilities = rng.dirichlet(np.ones(3), size=300)
  probabilities[np.arange(300), labels] += np.where(np.arange(300) < 150, 1.0, 0.2)
  probabilities /= probabilities.sum(axis=1, keepdims=True)
  statistics = subgroups.classification_statistics(
      labels, probabilities.argmax(axis=1), probabilities, [2],
      names=subgroups.METRICS["classification"])
  clusters = np.arange(300) // 2
  fields = {"sex": rng.choice(["female", "male", ""], size=300, p=[0.5, 0.45, 0.05]),
            "site": np.where(np.arange(300) < 150, "face", rng.choice(["back", "leg", "sole"],
                                                                      size=300, p=[.5, .47, .03]))}
  audited = {"headline": "balanced_accuracy", "cases": 300, "pooled": None, "min_cases": 10,
             "overall": subgroups.overall(statistics, clusters, samples=100), "fields": {}}
  for field, values in fields.items():
    names, order = subgroups.group_labels(values)
    audited["fields"][field] = subgroups.audit(statistics, names, order, clusters, samples=100)
  figure = report.subgroups_figure(audited, tmp_path)
  width, heights = report.forest_inches([3, 4])
  with Image.open(tmp_path / figure["file"]) as im:
    assert im.size == (figure["width"], figure["height"]) == (round(width * report.DPI),
                                                              round(sum(heights) * report.DPI))
  assert audited["fields"]["site"]["gap"]["balanced_accuracy"]["best"] == "face"
