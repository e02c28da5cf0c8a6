"""Cross-validation as a product feature: ``launch.py EXPERIMENT --folds K``, its summary,
``--resume`` fold by fold, and evaluation of a CV directory (per fold and as a fold ensemble)."""
from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest

from flaxderm.tools import crossval, evaluate
from flaxderm.train import config as config_lib

from flaxderm import cli  # pylint: disable=g-import-not-at-top,wrong-import-position

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("private_data_dir")]

NUM_TRAIN = 16
TINY = ["--config.model.kwargs.base_width=4", "--config.model.kwargs.depth=2",
        f"--config.data.builder_kwargs.num_train={NUM_TRAIN}",
        "--config.data.builder_kwargs.num_validation=4", "--config.data.builder_kwargs.num_test=4",
        "--config.data.builder_kwargs.image_size=40", "--config.eval.batch_size=4",
        "--config.progress_bar=False", "--config.visualize_images=0"]


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("cv") / "run"
  assert cli.main(["default:runlocal", "--folds", "2", "--workdir", str(workdir), *TINY]) == 0
  return workdir


def test_folds_train_into_their_directories_and_summarize(cv_run):
  summary = json.loads((cv_run / crossval.CV_SUMMARY).read_text())
  headline = summary["headline"]
  assert summary["num_folds"] == 2 and headline.startswith("dice")
  folds = [json.loads((cv_run / f"fold_{i}" / "results.json").read_text())["validation"]
           for i in range(2)]
  dice = np.array([f[headline] for f in folds])
  assert [f["fold"] for f in summary["folds"]] == ["fold_0", "fold_1"]
  assert summary["mean"][headline] == pytest.approx(dice.mean())
  assert summary["std"][headline] == pytest.approx(dice.std(ddof=1))
  half = 12.706205 * dice.std(ddof=1) / math.sqrt(2)  # Student's t, 1 degree of freedom
  assert summary["ci95"][headline] == pytest.approx([dice.mean() - half, dice.mean() + half])
  for i in range(2):
    saved = config_lib.load_config(cv_run / f"fold_{i}" / "config.json").data
    assert (saved.split, saved.num_folds, saved.fold) == ("kfold", 2, i)


def test_evaluate_scores_each_fold_on_its_held_out_cases(cv_run, capsys):
  assert cli.main(["evaluate", "--workdir", str(cv_run)]) == 0
  out = capsys.readouterr().out
  assert "mean" in out and "95% CI" in out
  metrics = json.loads(out.strip().splitlines()[-1])
  assert {"dice/micro", "fold_0/dice/micro", "fold_1/dice/micro", "std/dice/micro",
          "ci95_low/dice/micro"} <= set(metrics)
  with open(cv_run / "evaluation" / "cases.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  ids = [r["id"] for r in rows]
  assert len(ids) == len(set(ids)) == NUM_TRAIN  # every training case held out exactly once
  assert {r["fold"] for r in rows} == {"fold_0", "fold_1"}
  fold_dice = [json.loads((cv_run / f"fold_{i}" / "evaluation" / "metrics.json").read_text())
               ["metrics"]["dice/micro"] for i in range(2)]
  assert metrics["dice/micro"] == pytest.approx(np.mean(fold_dice))


def test_fold_ensemble_averages_probabilities(cv_run, tmp_path):
  """Two copies of one fold score as that fold; the two folds score as neither one alone."""
  twins = tmp_path / "twins"
  for name in ("fold_0", "fold_1"):
    shutil.copytree(cv_run / "fold_0", twins / name)
  options = dict(manual_dir=None, params=None, use_ema=None, tta=None, batch_size=None)
  single = evaluate._score([cv_run / "fold_0"], tmp_path / "single", **options)
  doubled = evaluate._score([twins / "fold_0", twins / "fold_1"], tmp_path / "doubled", **options)
  assert doubled["dice/micro"] == pytest.approx(single["dice/micro"], abs=1e-5)
  both = evaluate._score([cv_run / "fold_0", cv_run / "fold_1"], tmp_path / "both", **options)
  metadata = json.loads((tmp_path / "both" / "metrics.json").read_text())
  assert len(metadata["runs"]) == 2 and both["dice/micro"] != single["dice/micro"]


def test_resume_skips_finished_folds_and_retrains_the_rest(cv_run, tmp_path, capsys):
  workdir = tmp_path / "resumed"
  shutil.copytree(cv_run / "fold_0", workdir / "fold_0")
  argv = ["default:runlocal", "--folds", "2", "--workdir", str(workdir), *TINY]
  assert cli.main(argv + ["--resume"]) == 0
  out = capsys.readouterr().out
  assert "fold_0: finished earlier" in out and (workdir / "fold_1" / "results.json").is_file()
  summary = json.loads((workdir / crossval.CV_SUMMARY).read_text())
  assert summary["folds"][0]["metrics"]["dice/micro"] == pytest.approx(
      json.loads((cv_run / "fold_0" / "results.json").read_text())["validation"]["dice/micro"])
  assert cli.main(argv) == 1  # without --resume, finished folds are not overwritten
  assert "--resume" in capsys.readouterr().err


def test_bad_fold_requests_name_the_problem(cv_run, tmp_path, capsys):
  argv = ["default:runlocal", "--workdir", str(cv_run), *TINY]
  assert cli.main(argv + ["--folds", "3", "--resume"]) == 1
  assert "fold 0 of 2, not fold 0 of 3" in capsys.readouterr().err
  assert cli.main(["default:runlocal", "--folds", "1", "--workdir", str(tmp_path)]) == 1
  assert "at least 2" in capsys.readouterr().err


def test_summary_statistics_leave_out_missing_values():
  summary = crossval.summarize([{"auc": 0.8, "n": 1}, {"auc": float("nan"), "n": 2},
                                {"auc": 0.6, "n": 3}], ["a", "b", "c"])
  assert summary["mean"]["auc"] == pytest.approx(0.7)
  assert summary["mean"]["n"] == pytest.approx(2.0)
  table = crossval.format_table({**summary, "headline": "n"})
  assert table.splitlines()[0].split() == ["n", "auc"]
