"""The held-out pathway scores what the folds score (issue #32, item 1).

A fold of ``isic2018_task3_lite0_cpu`` and of ``ph2_segmentation_cpu`` (their preprocessing,
resize, normalisation, TTA, EMA and parameter choice; a narrow model, a few steps, 32 px, fake
folders in the official layouts) is trained twice: as the fold (``data.split="kfold"``, scored by
in-training validation) and as a user checks a recipe on held-out images (the fold's training
images as a folder of their own, ``data.split="all"``, then ``launch.py evaluate --manual-dir`` on
a folder of the fold's validation images; the folders written by benchmarks/quality.py's
``--heldout-folds``). Both must train the same parameters, feed the model the same inputs and give
every case the same scores.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from flaxderm.data import splits
from flaxderm.models import pretrained
from flaxderm.tools import evaluate as evaluate_lib
from flaxderm.tools import experiment
from flaxderm.tools import run as run_lib
from flaxderm.train import loop
from flaxderm.train import parallel
from flaxderm.train import scoring
from flaxderm.train import setup

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS.parent / "benchmarks"))
# pylint: disable=g-import-not-at-top,wrong-import-position
import quality
from fakes import write_csv, write_image, write_ph2
# pylint: enable=g-import-not-at-top,wrong-import-position

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("private_data_dir")]

DX = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
# EfficientNet-Lite0 narrowed to one block of 8 channels per stride (repeats, kernel, stride,
# expansion, channels): its layers, seconds to compile.
NARROW = ((1, 3, 1, 1, 8), (1, 3, 2, 2, 8), (1, 3, 2, 2, 8), (1, 3, 2, 2, 8), (1, 3, 2, 2, 8))
NARROW_ENDS = {"stem_channels": 8, "head_channels": 16}


def write_isic_t3(root: Path, lesions: int = 14) -> Path:
  """``root/ISIC2018_Task3_Test/``: the HAM-style ground truth (as ../shared/data has it) and
  JPEGs of two sizes, some lesions with two images."""
  test = root / quality.ISIC_T3_TEST
  rows = []
  for k in range(lesions):
    for view in range(1 + k % 2):
      image_id = f"ISIC_{34000 + 2 * k + view:07d}"
      rows.append((f"HAM_{k:07d}", image_id, DX[k % len(DX)], "histo", "50.0", "male", "back",
                   "vidir"))
      write_image(test / quality.ISIC_T3_INPUT / f"{image_id}.jpg", width=48 - 8 * view,
                  height=36, seed=len(rows))
  write_csv(test / quality.ISIC_T3_TRUTH, ["lesion_id", "image_id", "dx", "dx_type", "age", "sex",
                                           "localization", "dataset"], rows)
  return root


def small(name: str, manual_dir: Path, split: str, model_kwargs: dict
          ) -> ml_collections.ConfigDict:
  """Experiment ``name`` on ``manual_dir`` at test size: 32 px, 3 steps of batch 4, fold 0 of 2,
  ``model_kwargs`` narrowing the model, its pretrained weights replaced by the normalisation they
  would bring (``setup.with_input_normalization``)."""
  cfg = experiment.load_experiment(name).get_config()
  tag = pretrained.weight_tag(cfg.model.pretrained)
  cfg.data.update(pretrained.PretrainedInfo(tag.name, tag.name, tag.arch, tag.mean, tag.std,
                                            tag.input_size, None).data_config_updates())
  cfg.model.pretrained = ""
  cfg.model.kwargs.update(model_kwargs)
  cfg.data.update(manual_dir=str(manual_dir), split=split, num_folds=2, fold=0, image_size=32,
                  prepare_workers=1)
  cfg.batch_size = 4
  cfg.eval.batch_size = 8
  cfg.num_steps = 3
  cfg.budget_s = 0.0
  cfg.progress_bar = False
  cfg.visualize_images = 0
  return cfg


def read_cases(path: Path) -> dict[str, dict[str, str]]:
  with open(path, newline="") as f:
    return {row["id"]: row for row in csv.DictReader(f)}


def inputs(data_cfg, split: str | None, batch_size: int) -> dict[str, np.ndarray]:
  """Case id -> the model input its evaluation batch holds."""
  batches = list(scoring.eval_batches(data_cfg, split, batch_size))
  valid = np.concatenate([b["valid"] for b in batches]) > 0
  ids = np.concatenate([b["id"] for b in batches])[valid]
  return dict(zip(map(str, ids), np.concatenate([b["image"] for b in batches])[valid]))


def check_pathways_agree(name: str, data_root: Path, comparison: quality.Comparison,
                         model_kwargs: dict, tmp_path: Path) -> None:
  manual = comparison.manual_dir
  fold_cfg = small(name, data_root / manual, "kfold", model_kwargs)
  fold_cfg.data.data_dir = str(tmp_path / "tfds_fold")
  folders = tmp_path / "folders"
  for part, split in (("train", "train"), ("test", "validation")):
    comparison.subset(data_root / manual, set(splits.split_groups(fold_cfg.data, split)),
                      folders / part / manual)
  train_dir, test_dir = folders / "train" / manual, folders / "test" / manual
  heldout_cfg = small(name, train_dir, "all", model_kwargs)
  heldout_cfg.data.data_dir = str(tmp_path / "tfds_heldout")

  fold_run, heldout_run = tmp_path / "fold", tmp_path / "heldout"
  fold_results = loop.train(fold_cfg, fold_run)
  loop.train(heldout_cfg, heldout_run)

  # Same training: what each run derived from its data, how it scores, then its parameters.
  saved = [json.loads((run / "config.json").read_text()) for run in (fold_run, heldout_run)]
  for key in ("normalization", "mean", "std", "image_size", "resize", "crop_fraction",
              "preprocess", "builder_kwargs"):
    assert saved[0]["data"][key] == saved[1]["data"][key], key
  for key in ("use_ema", "final_params", "eval", "loss", "model"):
    assert saved[0][key] == saved[1][key], key
  par = parallel.DataParallel("auto")
  restored = [run_lib.restore(run, params=None, use_ema=None, tta=None, par=par)
              for run in (fold_run, heldout_run)]
  for a, b in zip(*(jax.tree.leaves(r.state.params) for r in restored), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)

  # Same model inputs: the fold's validation batches and those evaluate --manual-dir reads.
  fold_data = setup.eval_data_config(restored[0].cfg)
  fold_inputs = inputs(fold_data, None, fold_cfg.eval.batch_size)
  heldout_data, split = evaluate_lib._scoring_data(  # pylint: disable=protected-access
      restored[1].cfg, str(test_dir), str(tmp_path / "tfds_scored"))
  heldout_inputs = inputs(heldout_data, split, fold_cfg.eval.batch_size)
  assert sorted(fold_inputs) == sorted(heldout_inputs)
  for case, image in fold_inputs.items():
    np.testing.assert_array_equal(image, heldout_inputs[case], err_msg=case)

  # Same scores, case by case: in-training validation, evaluate, evaluate --manual-dir.
  in_training = fold_results["validation"]
  fold_metrics = evaluate_lib.evaluate_run(fold_run)
  heldout_metrics = evaluate_lib.evaluate_run(heldout_run, manual_dir=str(test_dir))
  for key, value in in_training.items():
    assert fold_metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), key
    assert heldout_metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), key
  fold_cases = read_cases(fold_run / "evaluation" / "cases.csv")
  heldout_cases = read_cases(heldout_run / "evaluation" / "cases.csv")
  assert sorted(fold_cases) == sorted(heldout_cases)
  scores = [k for k in next(iter(fold_cases.values()))
            if k.startswith("prob/") or k in scoring.SEGMENTATION_COLUMNS]
  assert scores
  for case, row in fold_cases.items():
    other = heldout_cases[case]
    assert [row.get("label"), row.get("prediction")] == [other.get("label"),
                                                         other.get("prediction")], case
    np.testing.assert_allclose([float(other[k]) for k in scores], [float(row[k]) for k in scores],
                               rtol=1e-5, atol=1e-6, err_msg=case)


def test_isic2018_task3_heldout_folder_scores_as_the_fold(tmp_path):
  check_pathways_agree("isic2018_task3_lite0_cpu", write_isic_t3(tmp_path / "isic"),
                       quality.COMPARISONS["isic_t3"], {"stages": NARROW[:2], **NARROW_ENDS},
                       tmp_path)


def test_ph2_heldout_folder_scores_as_the_fold(tmp_path):
  cases = {f"IMD{k:03d}": ("common_nevus", "atypical_nevus", "melanoma")[k % 3]
           for k in range(1, 15)}
  write_ph2(tmp_path / "ph2", cases, list(cases))
  check_pathways_agree("ph2_segmentation_cpu", tmp_path / "ph2", quality.COMPARISONS["ph2"],
                       {"decoder_channels": (8,) * 5,
                        "encoder_kwargs": {"stages": NARROW, **NARROW_ENDS}}, tmp_path)
