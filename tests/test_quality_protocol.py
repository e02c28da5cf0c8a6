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


def pair_args(tmp_path: Path, *overrides: str) -> argparse.Namespace:
  reference = tmp_path / "reference"
  reference.mkdir(exist_ok=True)
  for name in (T3.reference, "common.py"):
    (reference / name).write_text(f"# {name}\n")
  return argparse.Namespace(comparison="isic_t3", data_dir=str(tmp_path / "data"),
                            reference_dir=str(reference), budget=300.0, folds=None,
                            set=list(overrides), reference_from=None)


def test_pair_settings_follow_the_recipe_and_the_reference_code_not_the_data_path(tmp_path):
  args = pair_args(tmp_path)
  settings = quality.pair_settings(T3, args, 0, None)
  assert settings["flaxderm config"]["data.image_size"] == 192
  assert "data.manual_dir" not in settings["flaxderm config"]
  assert quality.pair_settings(T3, pair_args(tmp_path), 0, None) == settings
  moved = pair_args(tmp_path)
  moved.data_dir = str(tmp_path / "elsewhere")
  assert quality.pair_settings(T3, moved, 0, None) == settings
  changed = quality.pair_settings(T3, pair_args(tmp_path, "data.train_crop=random"), 0, None)
  assert changed["flaxderm config"]["data.train_crop"] == "random"
  (Path(args.reference_dir) / "common.py").write_text("# edited\n")
  assert (quality.pair_settings(T3, args, 0, None)["reference code sha256"]
          != settings["reference code sha256"])


def test_reference_rows_are_reused_from_another_comparisons_pairs(tmp_path):
  """--reference-from a --pairs directory: its reference rows stand in whatever flaxderm config
  the pairs were run with, but not for another budget or reference code."""
  args = pair_args(tmp_path)
  cases = (np.array([0, 1, 2]), np.array([0, 1, 1]))
  stored = quality.pair_settings(T3, pair_args(tmp_path, "data.train_crop=random"), 0, None)
  quality.save_pair(tmp_path / "pairs", 0, stored, row(0.51, 0.88, cases), row(0.6, 0.9, cases))
  args.reference_from = str(tmp_path / "pairs")
  reused = quality.reuse_reference(T3, args, 0, None)
  assert (reused["balanced accuracy"], reused["macro AUC"]) == (0.51, 0.88)
  np.testing.assert_array_equal(reused["cases"][1], [0, 1, 1])
  args.budget = 240.0
  with pytest.raises(SystemExit, match="pair_0.json differs from this comparison in budget"):
    quality.reuse_reference(T3, args, 0, None)
  args.budget = 300.0
  (Path(args.reference_dir) / "common.py").write_text("# edited\n")
  with pytest.raises(SystemExit, match="in reference code sha256"):
    quality.reuse_reference(T3, args, 0, None)


def test_rescoring_scores_kept_runs_with_this_calls_scoring_options_only(tmp_path):
  """--rescore: a kept run whose config differs from this call's only in how it is scored (and
  in what training derives) is scored again with this call's options; any other key refuses."""
  kept_args = pair_args(tmp_path)
  kept = json.loads(quality.flaxderm_config(T3, kept_args, 0, None).to_json_best_effort())
  kept["data"]["mean"] = [0.5, 0.5, 0.5]  # derived by training from the pretrained weights
  run = tmp_path / "kept" / "flaxderm_0"
  run.mkdir(parents=True)
  (run / "config.json").write_text(json.dumps(kept))
  args = pair_args(tmp_path, "eval.logit_adjustment_tau=1", "eval.tta=flips")
  args.rescore = str(tmp_path / "kept")
  workdir, flags = quality.rescored_run(T3, args, 0, None)
  assert workdir == run
  assert flags == ["--tta", "flips", "--logit-adjustment", "1.0", "--params", "last", "--no-ema"]
  assert quality.pair_settings(T3, args, 0, None)["rescored"] is True

  kept["seed"] = 7
  (run / "config.json").write_text(json.dumps(kept))
  with pytest.raises(SystemExit, match=r"trained with other settings: seed=7 \(here 0\)"):
    quality.rescored_run(T3, args, 0, None)
  with pytest.raises(SystemExit, match="flaxderm_1 holds no flaxderm run"):
    quality.rescored_run(T3, args, 1, None)


def test_stored_pairs_read_back_whole_and_refuse_other_settings(tmp_path):
  settings = {"budget": 900.0, "flaxderm config": {"data.image_size": 192}}
  cases = (np.array([0, 1, 2]), np.array([0, 1, 1]))
  assert quality.stored_pair(tmp_path, 0, settings) is None
  quality.save_pair(tmp_path, 0, settings, row(0.5, 0.9, cases), row(0.6, 0.91, cases))
  reference, flaxderm, origin = quality.stored_pair(tmp_path, 0, settings)
  assert (reference["balanced accuracy"], flaxderm["macro AUC"]) == (0.5, 0.91)
  np.testing.assert_array_equal(flaxderm["cases"][1], [0, 1, 1])
  assert " on " in origin
  assert quality.stored_pair(tmp_path, 1, settings) is None
  other = {"budget": 900.0, "flaxderm config": {"data.image_size": 224}}
  with pytest.raises(SystemExit, match=r"pair_0\.json was run with other settings "
                                       r"\(flaxderm config\.data\.image_size\)"):
    quality.stored_pair(tmp_path, 0, other)


@pytest.mark.slow
def test_pooled_bootstrap_pairs_named_cases_across_orders():
  """The same predictions case by case, scored in another order: the paired bootstrap's
  difference is exactly zero, which unpaired resampling cannot show."""
  rng = np.random.default_rng(1)
  rows = []
  for i in range(2):
    ids = [f"ISIC_{i}{k:03d}" for k in range(50)]
    labels = rng.integers(0, 3, 50)
    predictions = np.where(rng.random(50) < 0.6, labels, (labels + 1) % 3)
    flip = np.arange(50)[::-1]
    rows.append((T3.reference, i, {**row(0.5, 0.9, (labels[flip], predictions[flip])),
                                   "case ids": [ids[k] for k in flip]}))
    rows.append(("flaxderm", i, {**row(0.5, 0.9, (labels, predictions)), "case ids": ids}))
  text = quality.paired_table(T3, rows, T3.reference, "flaxderm")
  assert ("difference +0.0000, bootstrap 95% CI +0.0000 to +0.0000 (2000 paired resamples of the "
          "same cases)") in text
  unnamed = [(s, i, {k: v for k, v in r.items() if k != "case ids"}) for s, i, r in rows]
  text = quality.paired_table(T3, unnamed, T3.reference, "flaxderm")
  assert "difference +0.0000" in text and "(2000 unpaired resamples)" in text
  assert "CI +0.0000 to +0.0000" not in text


def test_reference_cases_are_named_only_when_the_labels_agree(tmp_path):
  table = tmp_path / "ISIC2018_Task3_Test" / "ISIC2018_Task3_Test_GroundTruth.csv"
  table.parent.mkdir()
  table.write_text("lesion_id,image_id,dx\nL1,ISIC_1,nv\nL2,ISIC_2,mel\nL1,ISIC_3,nv\n"
                   "L3,ISIC_4,bkl\n")
  held_out = quality.isic_t3_held_out_cases(tmp_path, {"L1", "L3"})
  assert held_out == [("ISIC_1", "nv"), ("ISIC_3", "nv"), ("ISIC_4", "bkl")]
  names = [name for _, name in held_out]
  assert quality._same_labelling(names, [5, 5, 2])
  assert not quality._same_labelling(names, [5, 2, 2])  # nv would be two labels
  assert not quality._same_labelling(names, [5, 5, 5])  # two names, one label
  assert not quality._same_labelling(names, [5, 5])


def test_heldout_folds_train_on_all_of_the_folds_folder_and_split_by_the_kfold(tmp_path):
  args = pair_args(tmp_path)
  args.heldout_folds = 3
  trained = quality.flaxderm_overrides(T3, args, 1, 1, train_root=tmp_path / "heldout_1" / "train")
  assert f"--config.data.manual_dir={tmp_path / 'heldout_1' / 'train'}" in trained
  assert f"--config.data.data_dir={tmp_path / 'heldout_1' / 'tfds'}" in trained
  assert "--config.data.split=all" in trained and not any("num_folds" in o for o in trained)
  split = quality.flaxderm_overrides(T3, args, 1, 1, as_trained=False)
  assert split[-3:] == ["--config.data.split=kfold", "--config.data.num_folds=3",
                        "--config.data.fold=1"]
  assert f"--config.data.manual_dir={Path(args.data_dir).resolve()}" in split
  args.folds = None
  assert quality.flaxderm_config(T3, args, 1, 1).data.split == "all"



def test_an_ensemble_answer_splits_the_budget_over_its_members(tmp_path):
  args = pair_args(tmp_path)
  args.heldout_folds, args.members = 5, 3
  trained = quality.flaxderm_overrides(T3, args, 1, 1, train_root=tmp_path / "heldout_1" / "train")
  assert "--config.budget_s=100.0" in trained and "--config.data.split=all" in trained
  settings = quality.pair_settings(T3, args, 1, None)
  assert settings["ensemble members"] == 3
  assert settings["flaxderm config"]["budget_s"] == 100.0
  args.members = None
  assert "ensemble members" not in quality.pair_settings(T3, args, 1, None)


@pytest.mark.parametrize("options", [["--members", "3"], ["--folds", "5", "--members", "3"],
                                     ["--heldout-folds", "5", "--members", "1"]])
def test_an_ensemble_answer_needs_heldout_folders_and_two_members(options, tmp_path, capsys):
  (tmp_path / "data").mkdir()
  with pytest.raises(SystemExit):
    quality.main(["isic_t3", "--data-dir", str(tmp_path / "data"), "--no-reference", *options])
  assert "--members M: an ensemble of at least 2 members" in capsys.readouterr().err

def test_isic_t3_subset_keeps_the_ground_truth_order_and_links_the_images(tmp_path):
  source = tmp_path / "data" / quality.ISIC_T3_TEST
  (source / quality.ISIC_T3_INPUT).mkdir(parents=True)
  (source / quality.ISIC_T3_TRUTH).write_text(
      "lesion_id,image_id,dx,age\nL1,ISIC_1,nv,50.0\nL2,ISIC_2,mel,\nL1,ISIC_3,nv,50.0\n"
      "L3,ISIC_4,bkl,30.0\n")
  for k in range(1, 5):
    (source / quality.ISIC_T3_INPUT / f"ISIC_{k}.jpg").write_bytes(bytes([k]))
  out = tmp_path / "held_out"
  quality.isic_t3_subset(tmp_path / "data", {"L1", "L3"}, out)
  assert (out / quality.ISIC_T3_TEST / quality.ISIC_T3_TRUTH).read_text().splitlines() == [
      "lesion_id,image_id,dx,age", "L1,ISIC_1,nv,50.0", "L1,ISIC_3,nv,50.0", "L3,ISIC_4,bkl,30.0"]
  images = sorted((out / quality.ISIC_T3_TEST / quality.ISIC_T3_INPUT).iterdir())
  assert [p.name for p in images] == ["ISIC_1.jpg", "ISIC_3.jpg", "ISIC_4.jpg"]
  assert images[1].is_symlink() and images[1].read_bytes() == bytes([3])
  assert quality.isic_t3_held_out_cases(out, {"L1", "L3"}) == quality.isic_t3_held_out_cases(
      tmp_path / "data", {"L1", "L3"})
  with pytest.raises(ValueError, match="no image of the 1 lesions"):
    quality.isic_t3_subset(tmp_path / "data", {"L9"}, tmp_path / "none")


def test_ph2_subset_keeps_the_chosen_cases_files_and_spreadsheet_rows(tmp_path):
  from fakes import write_ph2  # pylint: disable=g-import-not-at-top
  from flaxderm.data.builders import ph2  # pylint: disable=g-import-not-at-top

  cases = {"IMD002": "common_nevus", "IMD010": "atypical_nevus", "IMD021": "melanoma",
           "IMD030": "melanoma"}
  source = write_ph2(tmp_path / "data", cases, list(cases))
  out = tmp_path / "held_out" / "PH2Dataset"
  quality.ph2_subset(source, {"IMD010", "IMD030"}, out)
  assert ph2.read_diagnoses(out / quality.PH2_SHEET) == {
      "IMD010": ("atypical_nevus", ""), "IMD030": ("melanoma", "")}
  assert sorted(p.name for p in (out / quality.PH2_IMAGES).iterdir()) == ["IMD010", "IMD030"]
  image = out / quality.PH2_IMAGES / "IMD010" / "IMD010_Dermoscopic_Image" / "IMD010.bmp"
  assert image.is_symlink() and image.read_bytes() == (
      source / image.relative_to(out)).read_bytes()
  with pytest.raises(ValueError, match=r"no folder for cases \['IMD099'\]"):
    quality.ph2_subset(source, {"IMD099"}, tmp_path / "none")


def test_against_pairs_the_twins_rows_of_the_same_folds_and_budget(tmp_path, monkeypatch):
  pad = quality.COMPARISONS["pad_ufes_metadata"]
  settings = lambda comparison, args, index, fold: {  # what pair_settings compares
      "budget": args.budget, "folds": 2, "held-out lesions sha256": f"fold {fold}"}
  monkeypatch.setattr(quality, "pair_settings", settings)
  twin = tmp_path / "pad_ufes_image_240s"
  for i in range(2):
    quality.save_pair(twin, i, settings(None, argparse.Namespace(budget=240.0), i, i),
                      row(0.50, 0.90), row(0.55 + 0.01 * i, 0.90))
  args = argparse.Namespace(folds=2, budget=240.0)
  rows = quality.against_rows(twin, pad, args)
  assert [(s, i, r["balanced accuracy"]) for s, i, r in rows] == [
      ("pad_ufes_image_240s", 0, 0.55), ("pad_ufes_image_240s", 1, 0.56)]
  ours = [("image + metadata", i, row(0.70, 0.95)) for i in range(2)]
  text = quality.paired_table(pad, ours + rows, "pad_ufes_image_240s", "image + metadata")
  assert "| balanced accuracy | 0.5550 (0.0071) | 0.7000 (0.0000) | +0.1450 (0.0071) | 2 of 2 |" \
         in text
  with pytest.raises(SystemExit, match="differs from this comparison in budget"):
    quality.against_rows(twin, pad, argparse.Namespace(folds=2, budget=300.0))
  with pytest.raises(SystemExit, match=r"pair_2\.json does not exist"):
    quality.against_rows(twin, pad, argparse.Namespace(folds=3, budget=240.0))


def test_pad_ufes_held_out_cases_follow_the_metadata_table(tmp_path):
  (tmp_path / "PAD-UFES-20").mkdir()
  (tmp_path / "PAD-UFES-20" / "metadata.csv").write_text(
      "patient_id,diagnostic,img_id\nPAT_2,NEV,PAT_2_5_1.png\nPAT_1,BCC,PAT_1_3_9.png\n"
      "PAT_3,MEL,PAT_3_7_2.png\nPAT_2,SEK,PAT_2_6_4.png\n")
  assert quality.pad_ufes_held_out_cases(tmp_path, {"PAT_2", "PAT_3"}) == [
      ("PAT_2_5_1", "NEV"), ("PAT_3_7_2", "MEL"), ("PAT_2_6_4", "SEK")]
