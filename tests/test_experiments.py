"""Every experiment file and the launch.py command line.

Each experiment's full config validates and names its command; its ``runlocal`` form (same
architecture and recipe with fewer blocks and narrower widths, synthetic data, 32 px) trains and
is scored. The command line turns a bad
experiment name, config key or value, and a missing dataset into one clear error line.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
from flaxderm import cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from flaxderm.tools import experiment  # pylint: disable=g-import-not-at-top,wrong-import-position
from flaxderm.train import config as config_lib  # pylint: disable=wrong-import-position
from flaxderm.train import loop  # pylint: disable=wrong-import-position

EXPERIMENTS = experiment.experiment_names()


@pytest.fixture(autouse=True)
def private_data_dir(tmp_path_factory, monkeypatch):
  monkeypatch.setenv("FLAXDERM_DATA_DIR", str(tmp_path_factory.getbasetemp() / "tfds"))


def test_the_papers_experiments_are_all_there():
  assert {"default", "paper001_resnet101_ham10000", "paper004_codec_isic2018",
          "paper004_unet_isic2018", "deeplabv3plus_isic2018", "vit_ham10000", "swin_ham10000",
          "ph2_unet_cpu", "ph2_segmentation_cpu", "isic2018_task3_lite0_cpu", "pad_ufes20_cpu",
          "pad_ufes20_metadata_cpu", "isic2018_task3_lite0_metadata_cpu"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_full_config_validates_and_docstring_gives_the_command(name):
  module = experiment.load_experiment(name)
  config_lib.validate_config(module.get_config())
  assert f"python launch.py {name}" in module.__doc__


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_trains_one_step_at_tiny_size(name, tmp_path):
  cfg = experiment.experiment_config(f"{name}:runlocal", ["--config.num_steps=1"])
  results = loop.train(cfg, tmp_path)
  assert results["step"] == 1
  metric = results["best_metric"]
  assert math.isfinite(results["validation"][metric]), results["validation"]
  assert (tmp_path / "results.json").is_file() and (tmp_path / "config.json").is_file()


def _error_of(argv, capsys) -> str:
  assert cli.main(argv) == 1
  return capsys.readouterr().err


def test_unknown_experiment_names_the_close_ones(capsys):
  err = _error_of(["ph2_unet_cp"], capsys)
  assert "unknown experiment 'ph2_unet_cp'" in err and "ph2_unet_cpu" in err


def test_bad_key_and_bad_value_are_named(capsys):
  err = _error_of(["default", "--config.optimizer.lrr=0.1"], capsys)
  assert "optimizer.lrr" in err and "did you mean lr" in err
  err = _error_of(["default", "--config.optimizer.name=adamm"], capsys)
  assert "optimizer.name" in err and "adam" in err
  err = _error_of(["default", "--config.batch_size=eight"], capsys)
  assert "batch_size" in err


def test_missing_dataset_says_where_to_put_it(capsys, tmp_path):
  err = _error_of(["ph2_unet_cpu", "--workdir", str(tmp_path / "run"),
                   f"--config.data.manual_dir={tmp_path / 'nowhere'}"], capsys)
  assert "ph2" in err and "manual_dir" in err
  assert "Traceback" not in err


@pytest.mark.slow
def test_diverging_training_is_one_error_line(capsys, tmp_path):
  err = _error_of(["default:runlocal", "--workdir", str(tmp_path / "run"),
                   "--config.optimizer.name=sgd", "--config.optimizer.lr=1e30",
                   "--config.loss.name=cross_entropy", "--config.num_steps=4"], capsys)
  assert "non-finite loss" in err and "Traceback" not in err
