"""launch.py compare: a paired bootstrap of two runs' per-case tables."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from flaxderm.tools import compare as compare_lib
from flaxderm.tools import evaluate as evaluate_lib

from flaxderm import cli  # pylint: disable=g-import-not-at-top,wrong-import-position

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def segmentation_rows(dice: np.ndarray, prefix: str = "case") -> list[dict[str, str]]:
  return [{"id": f"{prefix}{i}", "dice/per_image": str(d), "jaccard/per_image": str(d / (2 - d)),
           "lesion_pixels": "10"} for i, d in enumerate(dice)]


def classification_rows(labels, predictions) -> list[dict[str, str]]:
  return [{"id": f"c{i}", "label": y, "prediction": p, "prob/a": "0.5", "prob/b": "0.5"}
          for i, (y, p) in enumerate(zip(labels, predictions))]


def write_run(directory: Path, rows: list[dict[str, str]]) -> Path:
  evaluate_lib.write_cases(directory / compare_lib.CASES, rows)
  return directory


def test_a_consistent_gain_excludes_zero_and_no_gain_includes_it():
  rng = np.random.default_rng(0)
  a = rng.uniform(0.5, 0.9, size=60)
  better = np.clip(a + 0.04 + rng.normal(0, 0.01, size=60), 0, 1)
  result = compare_lib.paired_bootstrap(segmentation_rows(a), segmentation_rows(better),
                                        samples=4000)
  assert result["metric"] == "dice/per_image" and result["cases"] == 60
  assert result["difference"] == pytest.approx(better.mean() - a.mean())
  low, high = result["ci95"]
  assert 0 < low < result["difference"] < high and result["p_value"] < 0.001
  assert result["p_value"] == pytest.approx(2 / 4001)  # no resample reaches 0

  # Half the cases gain what the other half lose, case by case: the mean does not move.
  swing = np.repeat(rng.uniform(0.01, 0.1, size=30), 2) * np.tile([1, -1], 30)
  same = compare_lib.paired_bootstrap(segmentation_rows(a), segmentation_rows(a + swing),
                                      samples=4000)
  low, high = same["ci95"]
  assert same["difference"] == pytest.approx(0, abs=1e-12)
  assert low < 0 < high and same["p_value"] > 0.5


def test_pairing_is_what_makes_a_small_gain_significant():
  rng = np.random.default_rng(1)
  a = rng.uniform(0.2, 0.95, size=80)  # cases differ far more than the runs do
  b = a + 0.01
  paired = compare_lib.paired_bootstrap(segmentation_rows(a), segmentation_rows(b), samples=2000)
  assert paired["ci95"][0] == pytest.approx(0.01) and paired["p_value"] < 0.01
  # The same values on unrelated cases (order shuffled) leave a difference that cannot be told
  # from zero: the spread between cases no longer cancels.
  shuffled = segmentation_rows(b[rng.permutation(80)])
  unpaired = compare_lib.paired_bootstrap(segmentation_rows(a), shuffled, samples=2000)
  assert unpaired["ci95"][0] < 0 < unpaired["ci95"][1]


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")  # weight-0 classes
def test_balanced_accuracy_is_recomputed_per_resample():
  rng = np.random.default_rng(2)
  labels = rng.choice(["a", "b", "c"], size=50, p=[0.6, 0.3, 0.1])
  pred_a = np.where(rng.uniform(size=50) < 0.6, labels, rng.choice(["a", "b", "c"], size=50))
  pred_b = np.where(rng.uniform(size=50) < 0.9, labels, pred_a)
  result = compare_lib.paired_bootstrap(classification_rows(labels, pred_a),
                                        classification_rows(labels, pred_b), samples=500, seed=3)
  assert result["metric"] == "balanced_accuracy" and result["task"] == "classification"
  assert result["a"] == pytest.approx(sklearn_metrics.balanced_accuracy_score(labels, pred_a))
  assert result["b"] == pytest.approx(sklearn_metrics.balanced_accuracy_score(labels, pred_b))
  assert result == compare_lib.paired_bootstrap(classification_rows(labels, pred_a),
                                                classification_rows(labels, pred_b),
                                                samples=500, seed=3)  # seeded

  # A resample counts case i w_i times: sklearn with those sample weights.
  weights = rng.multinomial(50, np.full(50, 1 / 50), size=3)
  stat = compare_lib._statistic(classification_rows(labels, pred_a), "classification",
                                "balanced_accuracy", ["a", "b", "c"])
  for w, got in zip(weights, stat(weights)):
    want = sklearn_metrics.balanced_accuracy_score(labels, pred_a, sample_weight=w)
    assert got == pytest.approx(want)
  accuracy = compare_lib.paired_bootstrap(classification_rows(labels, pred_a),
                                          classification_rows(labels, pred_b),
                                          metric="accuracy", samples=100)
  assert accuracy["a"] == pytest.approx(np.mean(labels == pred_a))


def test_cases_undefined_for_the_metric_are_left_out():
  a, b = np.array([0.5, np.nan, 0.7, 0.9]), np.array([0.6, np.nan, 0.8, 0.9])
  result = compare_lib.paired_bootstrap(segmentation_rows(a), segmentation_rows(b), samples=300)
  assert result["a"] == pytest.approx(0.7) and result["b"] == pytest.approx(2.3 / 3)
  assert result["samples"] <= 300 and result["cases"] == 4


def test_tables_that_do_not_pair_are_errors():
  a = segmentation_rows(np.full(8, 0.5))
  with pytest.raises(ValueError, match=r"1 only in A \(case7\); 2 only in B \(x0, x1\)"):
    compare_lib.paired_bootstrap(a, a[:7] + segmentation_rows([0.5, 0.5], prefix="x"))
  with pytest.raises(ValueError, match="case ids repeat in its cases.csv: case0"):
    compare_lib.paired_bootstrap(a, a + a[:1])
  with pytest.raises(ValueError, match="not the same task"):
    compare_lib.paired_bootstrap(a, classification_rows(["a"], ["a"]))
  with pytest.raises(ValueError, match="--metric 'auc'.*'dice/per_image', 'jaccard/per_image'"):
    compare_lib.paired_bootstrap(a, a, metric="auc")
  with pytest.raises(ValueError, match="for classification one of"):
    rows = classification_rows(["a"], ["b"])
    compare_lib.paired_bootstrap(rows, rows, metric="dice/per_image")
  with pytest.raises(ValueError, match="--samples must be >= 1"):
    compare_lib.paired_bootstrap(a, a, samples=0)


def test_compare_command_prints_a_table_then_one_json_line(tmp_path, capsys):
  rng = np.random.default_rng(4)
  a = rng.uniform(0.4, 0.8, size=30)
  run_a = write_run(tmp_path / "a", segmentation_rows(a))
  run_b = write_run(tmp_path / "b", segmentation_rows(a - 0.05))
  assert cli.main(["compare", str(run_a), str(run_b), "--samples", "500", "--seed", "1",
                      "--metric", "jaccard/per_image"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[0].split()[:2] == ["run", "jaccard/per_image"] and lines[3].startswith("B - A")
  result = json.loads(lines[-1])
  assert result["run_a"] == str(run_a) and result["samples"] == 500 and result["seed"] == 1
  assert result["ci95"][1] < 0 and result["difference"] < 0

  assert cli.main(["compare", str(run_a), str(tmp_path / "unscored")]) == 1
  err = capsys.readouterr().err
  assert "has no evaluation/cases.csv" in err and "python launch.py evaluate --workdir" in err


def test_manual_dir_scores_a_run_only_when_its_table_is_missing_or_of_other_data(
    tmp_path, monkeypatch):
  data = tmp_path / "data"
  data.mkdir()
  scored = []

  def fake_evaluate(workdir, *, manual_dir):
    scored.append(Path(workdir).name)
    write_run(Path(workdir), segmentation_rows(np.full(5, 0.5)))
    (Path(workdir) / compare_lib.METRICS_FILE).write_text(json.dumps({"manual_dir": manual_dir}))

  monkeypatch.setattr(evaluate_lib, "evaluate_run", fake_evaluate)
  write_run(tmp_path / "validation_only", segmentation_rows(np.full(5, 0.4)))
  write_run(tmp_path / "same_data", segmentation_rows(np.full(5, 0.6)))
  (tmp_path / "same_data" / compare_lib.METRICS_FILE).write_text(
      json.dumps({"manual_dir": str(data)}))
  for name in ("missing", "validation_only", "same_data"):
    compare_lib.load_cases(tmp_path / name, manual_dir=str(data))
  assert scored == ["missing", "validation_only"]


@pytest.fixture(scope="module")
def two_scorings(segmentation_run):
  """The tiny segmentation run (conftest.py) scored as it is, and a copy scored with flip TTA."""
  plain = segmentation_run
  flips = plain.parent / "flips"
  shutil.copytree(plain, flips)
  evaluate_lib.evaluate_run(plain)
  evaluate_lib.evaluate_run(flips, tta="flips")
  return plain, flips


def test_compare_two_scored_runs(two_scorings, capsys):
  plain, flips = two_scorings
  assert cli.main(["compare", str(plain), str(flips), "--samples", "200"]) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  with open(plain / compare_lib.CASES) as f:
    dice = [float(r["dice/per_image"]) for r in csv.DictReader(f)]
  assert result["cases"] == 8 and result["a"] == pytest.approx(np.nanmean(dice))
  metrics = json.loads((flips / "evaluation" / "metrics.json").read_text())["metrics"]
  assert result["b"] == pytest.approx(metrics["dice/per_image"], abs=1e-6)
  assert result["ci95"][0] <= result["difference"] <= result["ci95"][1]


def described(rows: list[dict[str, str]], sexes, ages, lesions) -> list[dict[str, str]]:
  """``rows`` with the columns evaluate adds: the grouping unit and clinical fields."""
  return [{**row, "group": lesion, "sex": sex, "age": str(age)}
          for row, sex, age, lesion in zip(rows, sexes, ages, lesions)]


def test_compare_by_field_bootstraps_each_group(tmp_path, capsys):
  rng = np.random.default_rng(5)
  n = 90
  sexes = np.array(["female"] * 40 + ["male"] * 44 + [""] * 6)
  ages = rng.choice([25.0, 50.0, 80.0, np.nan], size=n)
  lesions = [f"lesion{i // 2}" for i in range(n)]  # two images per lesion
  a = rng.uniform(0.4, 0.8, size=n)
  b = np.where(sexes == "female", a + 0.05, a) + rng.normal(0, 0.005, size=n)
  run_a = write_run(tmp_path / "a", described(segmentation_rows(a), sexes, ages, lesions))
  run_b = write_run(tmp_path / "b", described(segmentation_rows(b), sexes, ages, lesions))
  assert cli.main(["compare", str(run_a), str(run_b), "--by", "sex", "--samples", "500",
                   "--min-cases", "10"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[0] == f"dice/per_image: A {run_a}, B {run_b}" and "too small (< 10)" in lines[4]
  result = json.loads(lines[-1])
  groups = {g["group"]: g for g in result["groups"]}
  assert list(groups) == ["female", "male", "(missing)"] and result["metric"] == "dice/per_image"
  assert groups["female"]["ci95"][0] > 0 and groups["female"]["cases"] == 40
  assert groups["male"]["ci95"][0] < 0 < groups["male"]["ci95"][1]
  assert not groups["(missing)"]["scored"] and groups["(missing)"]["cases"] == 6
  # Each group's comparison is the paired bootstrap of its own cases, resampled by lesion.
  rows_a, rows_b = (compare_lib.load_cases(run) for run in (run_a, run_b))
  female = [i for i, s in enumerate(sexes) if s == "female"]
  alone = compare_lib.paired_bootstrap([rows_a[i] for i in female], [rows_b[i] for i in female],
                                       samples=500, names=(str(run_a), str(run_b)))
  assert groups["female"]["ci95"] == alone["ci95"] and alone["clusters"] == 20

  by_age = compare_lib.paired_bootstrap_by(rows_a, rows_b, "age", age_bands=(0, 40, 70),
                                           min_cases=1, samples=100)
  assert [g["group"] for g in by_age["groups"]] == ["[0,40)", "[40,70)", "70+", "(missing)"]
  assert sum(g["cases"] for g in by_age["groups"]) == n

  assert cli.main(["compare", str(run_a), str(run_b), "--by", "weight"]) == 1
  assert "clinical fields ['weight'] are not in the vocabulary" in capsys.readouterr().err
  assert cli.main(["compare", str(run_a), str(run_b), "--by", "site"]) == 1
  assert "--by site: the cases carry no such field; they carry ['sex', 'age']" in (
      capsys.readouterr().err)
  assert cli.main(["compare", str(run_a), str(run_b), "--by", "diameter_1"]) == 1
  assert "numbers other than age have no bands" in capsys.readouterr().err
