"""TFDS builders: each one prepared from tiny fake files in its official layout, bad input, options.

Every test prepares into its own tmp_path (ArrayRecord) and reads back with
``builder.as_data_source``, the way the pipeline does.
"""
from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps
import tensorflow_datasets as tfds

from flaxderm.data import builders
from flaxderm.data import preprocess
from flaxderm.data.builders import common
from flaxderm.data.builders import synthetic
from fakes import (DX, HAM_ROWS, lesion, prepare, records, report, text, write_csv, write_ham,
                   write_image, write_mask, write_ph2)

tfds.disable_progress_bar()


# ----------------------------------------------------------------------------------------------
# Fake files.


# ----------------------------------------------------------------------------------------------
# synthetic_lesions.

SMALL = {"image_size": 48, "num_train": 12, "num_validation": 6, "num_test": 3}


def test_synthetic_features_and_splits(tmp_path):
  builder = prepare("synthetic_lesions", tmp_path, builder_kwargs=SMALL)
  assert builder.info.config_name == ("default-image_size-48-num_test-3-num_train-12-"
                                      "num_validation-6")
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
      "train": 12, "validation": 6, "test": 3}
  assert builder.info.features["label"].names == list(synthetic.CLASS_NAMES)
  rows = records(builder, "train")
  for r in rows:
    assert r["image"].shape == (48, 48, 3) and r["image"].dtype == np.uint8
    assert r["mask"].shape == (48, 48, 1) and set(np.unique(r["mask"])) <= {0, 1}
    assert r["mask"].sum() > 0 and text(r["group"]) == text(r["id"])
  assert [text(r["id"]) for r in rows] == [f"synthetic_train_{i:06d}" for i in range(12)]
  assert [int(r["label"]) for r in rows] == [i % 3 for i in range(12)]
  assert {text(r["sex"]) for r in rows} <= {"male", "female", ""}
  assert {text(r["site"]) for r in rows} <= {*synthetic.SITES, ""}
  ages = np.asarray([r["age"] for r in rows])
  assert np.all(np.isnan(ages) | ((ages % 5 == 0) & (ages >= 5) & (ages <= 90)))
  assert report(builder)["num_skipped"] == 0


def test_synthetic_is_deterministic_per_seed():
  config = synthetic.SyntheticConfig(name="t", **SMALL)
  first = list(synthetic.generate(config, "validation"))
  again = list(synthetic.generate(config, "validation"))
  other = list(synthetic.generate(synthetic.SyntheticConfig(name="t", seed=1, **SMALL),
                                  "validation"))
  for (_, a, m, _), (_, b, n, _), (_, c, _, _) in zip(first, again, other):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(m, n)
    assert not np.array_equal(a, c)
  # Example i does not depend on how many examples the split has.
  longer = list(synthetic.generate(synthetic.SyntheticConfig(name="t", **{**SMALL,
                                                                          "num_validation": 9}),
                                   "validation"))
  np.testing.assert_array_equal(first[5][1], longer[5][1])


def test_synthetic_label_follows_visible_properties():
  config = synthetic.SyntheticConfig(name="t", image_size=64, num_train=90, hair_fraction=0,
                                     frame_fraction=0)
  area = {k: [] for k in range(3)}
  spread = {k: [] for k in range(3)}
  for _, image, mask, label in synthetic.generate(config, "train"):
    inside = image[mask.astype(bool)].astype(float)
    outside = image[~mask.astype(bool)].astype(float)
    assert inside.mean() < outside.mean() - 30  # the lesion is clearly darker than the skin
    area[label].append(mask.mean())
    spread[label].append(inside.std(0).mean())
  mean_area = [np.mean(area[k]) for k in range(3)]
  mean_spread = [np.mean(spread[k]) for k in range(3)]
  assert mean_area[0] < mean_area[1] < mean_area[2]
  assert mean_spread[0] < mean_spread[2]


def test_synthetic_default_config_is_canonical(tmp_path):
  cls = builders.BUILDERS["synthetic_lesions"]
  assert cls.resolve_config(None, {"image_size": 128, "seed": 0}).name == "default"
  assert cls.resolve_config("default", {"hair_fraction": 1}).name == "default-hair_fraction-1.0"


@pytest.mark.parametrize("kwargs, message", [
    ({"size": 3}, "unknown builder_kwargs"),
    ({"image_size": "64"}, "must be of type int"),
    ({"image_size": 8}, "image_size must be >= 16"),
    ({"hair_fraction": 2.0}, r"hair_fraction must be in \[0, 1\]"),
])
def test_bad_builder_kwargs(tmp_path, kwargs, message):
  with pytest.raises(ValueError, match=message):
    prepare("synthetic_lesions", tmp_path, builder_kwargs=kwargs)


def test_unknown_dataset_and_config(tmp_path):
  with pytest.raises(ValueError, match="unknown dataset 'nope'"):
    prepare("nope", tmp_path)
  with pytest.raises(ValueError, match="unknown builder_config 'huge'"):
    prepare("ph2", tmp_path, builder_config="huge")


def test_preparing_and_reading_does_not_import_tensorflow(tmp_path):
  # TensorFlow would grab the GPU JAX needs; images are encoded with OpenCV instead.
  code = ("import sys; from flaxderm.data import builders; "
          f"b = builders.prepare('synthetic_lesions', data_dir={str(tmp_path)!r}, "
          "builder_kwargs={'image_size': 32, 'num_train': 2, 'num_validation': 1, 'num_test': 1}); "
          "b.as_data_source('train')[0]; assert 'tensorflow' not in sys.modules, 'TF imported'")
  subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


# ----------------------------------------------------------------------------------------------
# ISIC segmentation (2016, 2017, 2018): the official folder names, per split.

ISIC_LAYOUTS = {
    "isic2018_task1": ("_segmentation", {
        "train": ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
        "validation": ("ISIC2018_Task1-2_Validation_Input",
                       "ISIC2018_Task1_Validation_GroundTruth"),
        "test": ("ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth")}),
    "isic2017_task1": ("_segmentation", {
        "train": ("ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth"),
        "validation": ("ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth"),
        "test": ("ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth")}),
    "isic2016_task1": ("_Segmentation", {
        "train": ("ISBI2016_ISIC_Part1_Training_Data", "ISBI2016_ISIC_Part1_Training_GroundTruth"),
        "test": ("ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth")}),
}


def write_isic(root: Path, name: str, count: int = 2, splits=None) -> dict[str, list[str]]:
  suffix, layout = ISIC_LAYOUTS[name]
  ids = {}
  for k, (split, (images, masks)) in enumerate(layout.items()):
    if splits and split not in splits:
      continue
    ids[split] = [f"ISIC_{1000 * k + i:07d}" for i in range(count)]
    for i, image_id in enumerate(ids[split]):
      write_image(root / images / f"{image_id}.jpg", seed=i)
      write_mask(root / masks / f"{image_id}{suffix}.png")
    # Files of the releases that are not examples.
    (root / images / "LICENSE.txt").write_text("CC-BY-NC")
    write_mask(root / images / f"{ids[split][0]}_superpixels.png")
  return ids


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ISIC_LAYOUTS))
def test_isic_segmentation_layouts(tmp_path, name):
  ids = write_isic(tmp_path / "manual" / "extracted", name)
  builder = prepare(name, tmp_path, tmp_path / "manual")
  assert set(builder.info.splits.keys()) == set(ids)
  assert "label" not in builder.info.features
  for split, split_ids in ids.items():
    rows = records(builder, split)
    assert [text(r["id"]) for r in rows] == split_ids
    for r in rows:
      assert text(r["group"]) == text(r["id"])
      assert r["image"].shape == (30, 40, 3)
      np.testing.assert_array_equal(r["mask"][..., 0], lesion() // 255)


def test_isic_partial_download_builds_the_splits_found(tmp_path):
  write_isic(tmp_path / "manual", "isic2018_task1", splits=("train",))
  builder = prepare("isic2018_task1", tmp_path, tmp_path / "manual")
  assert list(builder.info.splits.keys()) == ["train"]
  (tmp_path / "manual" / "ISIC2018_Task1_Test_GroundTruth").mkdir()
  with pytest.raises(ValueError, match="found ISIC2018_Task1_Test_GroundTruth but not "
                                       "ISIC2018_Task1-2_Test_Input"):
    prepare("isic2018_task1", tmp_path / "again", tmp_path / "manual")


def test_downscaling_keeps_aspect_ratio_and_mask_alignment(tmp_path):
  write_isic(tmp_path / "manual", "isic2016_task1", count=1)
  builder = prepare("isic2016_task1", tmp_path, tmp_path / "manual",
                    builder_kwargs={"max_size": 20})
  assert builder.info.config_name == "default-max_size-20"
  row = records(builder, "train")[0]
  assert row["image"].shape == (15, 20, 3) and row["mask"].shape == (15, 20, 1)
  # The stored mask is the majority vote of 2x2 blocks of the original.
  blocks = lesion().reshape(15, 2, 20, 2).mean((1, 3)) >= 128
  assert np.mean(row["mask"][..., 0] == blocks) > 0.97


def test_jpeg_without_resizing_is_stored_as_is(tmp_path):
  ids = write_isic(tmp_path / "manual", "isic2016_task1", count=1)
  builder = prepare("isic2016_task1", tmp_path, tmp_path / "manual", builder_kwargs={"max_size": 0})
  raw = builder.as_data_source("train", decoders={"image": tfds.decode.SkipDecoding()})[0]
  original = tmp_path / "manual" / "ISBI2016_ISIC_Part1_Training_Data" / f"{ids['train'][0]}.jpg"
  assert raw["image"] == original.read_bytes()


@pytest.mark.parametrize("max_size", [0, 20])
@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_orientation_is_applied_as_predict_applies_it(tmp_path, orientation, max_size):
  """A JPEG stored sideways with an EXIF orientation, its mask drawn on the upright image (as
  viewers show it): the prepared image is the upright one, aligned with its mask."""
  from tiny_runs import write_rotated_jpeg  # pylint: disable=g-import-not-at-top

  ids = write_isic(tmp_path / "manual", "isic2016_task1", count=1)
  case = ids["train"][0]
  path = write_rotated_jpeg(
      tmp_path / "manual" / "ISBI2016_ISIC_Part1_Training_Data" / f"{case}.jpg", orientation)
  with Image.open(path) as im:
    upright = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
  assert upright.shape == (40, 24, 3)
  truth = np.uint8(upright[..., 0] > 128) * 255
  write_mask(tmp_path / "manual" / "ISBI2016_ISIC_Part1_Training_GroundTruth"
             / f"{case}_Segmentation.png", truth)
  builder = prepare("isic2016_task1", tmp_path, tmp_path / "manual",
                    builder_kwargs={"max_size": max_size})
  row = records(builder, "train")[0]
  size = (40, 24) if max_size == 0 else (20, 12)
  assert row["image"].shape == (*size, 3) and row["mask"].shape == (*size, 1)
  expected = cv2.resize(upright, size[::-1], interpolation=cv2.INTER_AREA)
  assert np.abs(row["image"].astype(int) - expected).mean() < 4
  assert np.mean((row["image"][..., 0] > 128) == (row["mask"][..., 0] > 0)) > 0.95
  np.testing.assert_array_equal(preprocess.read_image(path), upright)


def test_downloads_when_manual_dir_has_no_files(tmp_path, monkeypatch):
  # Stands in for TFDS fetching and extracting the official zips: one folder per archive.
  extracted = tmp_path / "extracted"
  write_isic(extracted / "all", "isic2016_task1")
  requested = {}

  def download_and_extract(self, urls):
    requested.update(urls)
    archives = {}
    for name in urls:
      (extracted / name).mkdir(parents=True, exist_ok=True)
      (extracted / "all" / name).rename(extracted / name / name)
      archives[name] = extracted / name
    return archives

  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", download_and_extract)
  builder = prepare("isic2016_task1", tmp_path)
  assert requested["ISBI2016_ISIC_Part1_Test_Data"] == (
      "https://isic-challenge-data.s3.amazonaws.com/2016/ISBI2016_ISIC_Part1_Test_Data.zip")
  assert builder.info.splits["train"].num_examples == 2
  assert builder.info.splits["test"].num_examples == 2


def test_manual_only_dataset_without_files_explains_the_layout(tmp_path):
  (tmp_path / "manual").mkdir()
  with pytest.raises(ValueError, match="PH2_dataset.xlsx"):
    prepare("ph2", tmp_path, tmp_path / "manual")


# ----------------------------------------------------------------------------------------------
# A prepared copy belongs to its source files.


def test_prepared_copy_is_rebuilt_for_another_folder_or_changed_files(tmp_path, caplog):
  first, second = tmp_path / "first", tmp_path / "second"
  write_isic(first, "isic2016_task1", count=2, splits=("train",))
  write_isic(second, "isic2016_task1", count=3, splits=("train",))
  builder = prepare("isic2016_task1", tmp_path, first)
  assert builder.info.splits["train"].num_examples == 2
  recorded = builder.recorded_source()
  assert recorded["manual_dir"] == str(first.resolve()) and recorded["num_files"] > 0
  assert prepare("isic2016_task1", tmp_path, first).recorded_source() == recorded  # reused

  with caplog.at_level("WARNING"):
    builder = prepare("isic2016_task1", tmp_path, second)
  assert builder.info.splits["train"].num_examples == 3
  assert f"prepared from {first.resolve()}, not from {second.resolve()}" in caplog.text

  images = second / ISIC_LAYOUTS["isic2016_task1"][1]["train"][0]
  (images / "ISIC_0000002.jpg").unlink()
  (second / ISIC_LAYOUTS["isic2016_task1"][1]["train"][1] / "ISIC_0000002_Segmentation.png"
   ).unlink()
  caplog.clear()
  with caplog.at_level("WARNING"):
    builder = prepare("isic2016_task1", tmp_path, second)
  assert builder.info.splits["train"].num_examples == 2
  assert f"files in {second.resolve()} changed" in caplog.text


def test_an_open_source_whose_copy_another_folder_replaced_is_prepared_again(tmp_path):
  """One process training on a fold of a folder, then on another folder prepared into the same
  data_dir (the held-out check of issue #32), read the second folder's files as the first's."""
  from flaxderm.data import sources  # pylint: disable=g-import-not-at-top

  first, second = tmp_path / "first", tmp_path / "second"
  write_isic(first, "isic2016_task1", count=3, splits=("train",))
  write_isic(second, "isic2016_task1", count=2, splits=("train",))
  config = {"name": "isic2016_task1", "data_dir": str(tmp_path / "tfds"), "builder_config": None,
            "builder_kwargs": {}, "skip_bad_examples": False, "prepare_workers": 1}
  opened = sources.open_source({**config, "manual_dir": str(first)})
  assert len(opened.split("train")) == 3
  assert len(sources.open_source({**config, "manual_dir": str(second)}).split("train")) == 2
  assert not opened.is_current()
  again = sources.open_source({**config, "manual_dir": str(first)})
  assert again.is_current() and again.key == opened.key
  assert [text(r["id"]) for r in again.split("train")] == [
      text(r["id"]) for r in records(prepare("isic2016_task1", tmp_path, first), "train")]
  assert len(again.split("train")) == 3


def test_missing_manual_dir_is_an_error_even_with_a_prepared_copy(tmp_path):
  write_isic(tmp_path / "manual", "isic2016_task1", count=2, splits=("train",))
  prepare("isic2016_task1", tmp_path, tmp_path / "manual")
  with pytest.raises(ValueError, match=f"manual_dir {tmp_path / 'gone'} does not exist"):
    prepare("isic2016_task1", tmp_path, tmp_path / "gone")


def test_wrong_layout_fails_before_preparation(tmp_path, monkeypatch):
  # A PH2 folder given to an ISIC builder: named expected files, and no download attempt.
  manual = write_ph2(tmp_path / "manual", {"IMD002": "common_nevus"}, ["IMD002"])

  def no_download(self, urls):
    raise AssertionError("downloaded although a manual_dir was given")

  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", no_download)
  monkeypatch.setattr(common.Builder, "_generate_examples", no_download)
  with pytest.raises(ValueError, match=r"none of .*ISIC2018_Task3_Training_Input.* found under"):
    prepare("isic2018_task3", tmp_path, manual)


# ----------------------------------------------------------------------------------------------
# Bad input: an error naming the file and the problem, or skipped and reported.

TRAIN_IMAGES, TRAIN_MASKS = ISIC_LAYOUTS["isic2018_task1"][1]["train"]


def _corrupt(image: Path, mask: Path) -> Path:
  image.write_bytes(b"this is not a JPEG")
  return image


def _truncated(image: Path, mask: Path) -> Path:
  data = io.BytesIO()
  Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(data, "JPEG")
  image.write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
  return image


def _corrupt_middle(image: Path, mask: Path) -> Path:
  # Damaged entropy-coded data: PIL and OpenCV decode it without an error.
  data = bytearray(image.read_bytes())
  middle = len(data) // 2
  data[middle:middle + 16] = bytes(16)
  image.write_bytes(bytes(data))
  Image.open(image).load()
  return image


def _mask_size(image: Path, mask: Path) -> Path:
  return write_mask(mask, lesion(41, 30))


def _grey_mask(image: Path, mask: Path) -> Path:
  return write_mask(mask, np.tile(np.arange(40, dtype=np.uint8) * 6, (30, 1)))


def _missing_mask(image: Path, mask: Path) -> Path:
  mask.unlink()
  return mask


def _missing_image(image: Path, mask: Path) -> Path:
  image.unlink()
  return image


@pytest.mark.slow
@pytest.mark.parametrize("spoil, problem", [
    (_corrupt, "cannot decode image"),
    (_truncated, "cannot decode image .*[Tt]runcated"),
    (_corrupt_middle, "cannot decode image .*Corrupt JPEG data"),
    (_mask_size, "mask is 41x30 but its image is 40x30"),
    (_grey_mask, "mask is not binary"),
    (_missing_mask, "missing mask file"),
    (_missing_image, "missing image file"),
])
def test_bad_example_stops_or_is_skipped_and_reported(tmp_path, spoil, problem):
  manual = tmp_path / "manual"
  ids = write_isic(manual, "isic2018_task1", count=3, splits=("train",))["train"]
  bad_id = ids[1]
  culprit = spoil(manual / TRAIN_IMAGES / f"{bad_id}.jpg",
                  manual / TRAIN_MASKS / f"{bad_id}_segmentation.png")
  with pytest.raises(ValueError, match=f"{culprit.name}.*{problem}.*skip_bad_examples=True"):
    prepare("isic2018_task1", tmp_path, manual)
  builder = prepare("isic2018_task1", tmp_path, manual, skip_bad_examples=True)
  assert [text(r["id"]) for r in records(builder, "train")] == [ids[0], ids[2]]
  skipped = report(builder)
  assert skipped["num_skipped"] == 1 and skipped["skip_bad_examples"]
  entry = skipped["skipped"][0]
  assert entry["id"] == bad_id and entry["split"] == "train"
  assert entry["file"] == str(culprit)
  assert re.search(problem, entry["problem"])
  # The copy that skipped examples is not handed out to a caller who did not ask to skip.
  with pytest.raises(ValueError, match="prepared without 1 bad examples"):
    prepare("isic2018_task1", tmp_path, manual)


@pytest.mark.parametrize("values, mode", [
    (lesion() // 255, "L"),  # 0/1
    (lesion(), "1"),  # 1-bit
    (np.where(lesion() > 0, 251, 3).astype(np.uint8), "L"),  # JPEG-like noise
])
def test_binary_masks_in_any_encoding_are_accepted(tmp_path, values, mode):
  manual = tmp_path / "manual"
  image_id = write_isic(manual, "isic2016_task1", count=1, splits=("train",))["train"][0]
  values = values.copy()
  if values.max() > 1:
    values[0, :3] = 128  # a few ambiguous pixels (ringing along a border)
  write_mask(manual / "ISBI2016_ISIC_Part1_Training_GroundTruth" / f"{image_id}_Segmentation.png",
             values, mode)
  builder = prepare("isic2016_task1", tmp_path, manual)
  mask = records(builder, "train")[0]["mask"][..., 0]
  np.testing.assert_array_equal(mask[1:], (lesion() // 255)[1:])


def test_colour_mask_is_rejected(tmp_path):
  path = write_mask(tmp_path / "m.png", np.stack([lesion(), lesion() // 2, lesion()], -1), "RGB")
  with pytest.raises(common.BadExample, match="mask has colours"):
    common.read_mask(path, image_size=(40, 30), size=(40, 30))


# ----------------------------------------------------------------------------------------------
# PH2.


def test_ph2(tmp_path):
  cases = {"IMD002": "common_nevus", "IMD010": "atypical_nevus", "IMD021": "melanoma"}
  write_ph2(tmp_path / "manual", cases, list(cases))
  builder = prepare("ph2", tmp_path, tmp_path / "manual")
  assert list(builder.info.splits.keys()) == ["train"]
  assert builder.info.features["label"].names == ["common_nevus", "atypical_nevus", "melanoma"]
  rows = records(builder, "train")
  assert [(text(r["id"]), text(r["group"]), int(r["label"])) for r in rows] == [
      ("IMD002", "IMD002", 0), ("IMD010", "IMD010", 1), ("IMD021", "IMD021", 2)]
  np.testing.assert_array_equal(rows[0]["mask"][..., 0], lesion() // 255)
  np.testing.assert_array_equal(  # BMP is lossless and so is the stored PNG
      rows[0]["image"], np.asarray(Image.open(
          tmp_path / "manual/PH2Dataset/PH2 Dataset images/IMD002/IMD002_Dermoscopic_Image/"
          "IMD002.bmp")))


def test_ph2_bad_rows(tmp_path):
  cases = {"IMD002": "common_nevus", "IMD010": "two", "IMD021": "melanoma", "IMD030": "melanoma"}
  write_ph2(tmp_path / "manual", cases, ["IMD002", "IMD010", "IMD021", "IMD099"])
  with pytest.raises(ValueError, match="3 of 5 train examples are unusable"):
    prepare("ph2", tmp_path, tmp_path / "manual")
  builder = prepare("ph2", tmp_path, tmp_path / "manual", skip_bad_examples=True)
  assert [text(r["id"]) for r in records(builder, "train")] == ["IMD002", "IMD021"]
  problems = {e["id"]: e["problem"] for e in report(builder)["skipped"]}
  assert problems == {"IMD010": "IMD010 has 2 diagnoses marked (expected one X)",
                      "IMD030": "missing image file",
                      "IMD099": "no row for IMD099 in PH2_dataset.xlsx"}


# ----------------------------------------------------------------------------------------------
# HAM10000 and ISIC 2018 Task 3.


def test_ham10000(tmp_path):
  write_ham(tmp_path / "manual")
  builder = prepare("ham10000", tmp_path, tmp_path / "manual")
  assert builder.info.features["label"].names == list(DX)
  assert "mask" not in builder.info.features
  rows = records(builder, "train")
  assert [(text(r["id"]), text(r["group"]), DX[r["label"]]) for r in rows] == [
      (image_id, lesion_id, dx) for lesion_id, image_id, dx in HAM_ROWS]


def test_ham10000_paper001_subset_and_masks(tmp_path):
  write_ham(tmp_path / "manual")
  builder = prepare("ham10000", tmp_path, tmp_path / "manual", builder_config="paper001",
                    builder_kwargs={"masks": True})
  assert builder.info.config_name == "paper001-masks-true"
  names = builder.info.features["label"].names
  assert names == ["bkl", "mel", "nv"]
  rows = records(builder, "train")
  assert [(text(r["id"]), names[r["label"]]) for r in rows] == [
      ("ISIC_0024306", "nv"), ("ISIC_0024307", "nv"), ("ISIC_0024308", "mel"),
      ("ISIC_0024309", "bkl")]
  np.testing.assert_array_equal(rows[0]["mask"][..., 0], lesion() // 255)
  assert report(builder)["num_skipped"] == 0  # other diagnoses are left out, not "bad"


def test_ham10000_missing_images_error_or_skip(tmp_path):
  missing = ("ISIC_0024307", "ISIC_0024309")
  write_ham(tmp_path / "manual", missing=missing)
  with pytest.raises(ValueError, match=r"2 of 6 train examples are unusable, e\.g\. "
                                       r".*ISIC_0024307\.jpg: missing image file"):
    prepare("ham10000", tmp_path, tmp_path / "manual")
  builder = prepare("ham10000", tmp_path, tmp_path / "manual", skip_bad_examples=True)
  assert builder.info.splits["train"].num_examples == 4
  assert [e["id"] for e in report(builder)["skipped"]] == list(missing)


def test_unknown_class_in_csv(tmp_path):
  rows = [*HAM_ROWS[:2], ("HAM_0000009", "ISIC_0024399", "lentigo")]
  write_ham(tmp_path / "manual", rows)
  with pytest.raises(ValueError, match="HAM10000_metadata.csv: unknown class 'lentigo'"):
    prepare("ham10000", tmp_path, tmp_path / "manual")
  builder = prepare("ham10000", tmp_path, tmp_path / "manual", skip_bad_examples=True)
  assert builder.info.splits["train"].num_examples == 2
  assert report(builder)["skipped"][0]["id"] == "ISIC_0024399"


def test_isic2018_task3_both_csv_formats(tmp_path):
  manual = tmp_path / "manual"
  # Training: the official one-hot ground truth plus the lesion groupings.
  train = [("ISIC_0000001", "MEL"), ("ISIC_0000002", "NV"), ("ISIC_0000003", "VASC")]
  one_hot = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
  truth = "ISIC2018_Task3_Training_GroundTruth"
  write_csv(manual / truth / f"{truth}.csv", ["image", *one_hot],
            [(i, *[f"{float(c == dx):.1f}" for c in one_hot]) for i, dx in train])
  write_csv(manual / "ISIC2018_Task3_Training_LesionGroupings.csv",
            ["image", "lesion_id", "diagnosis_confirm_type"],
            [("ISIC_0000001", "HAM_1", "histo"), ("ISIC_0000002", "HAM_1", "histo")])
  for k, (image_id, _) in enumerate(train):
    write_image(manual / "ISIC2018_Task3_Training_Input" / f"{image_id}.jpg", seed=k)
  # Test: the HAM-style CSV of the Dataverse release (as in ../shared/data).
  test = manual / "ISIC2018_Task3_Test"
  write_csv(test / "ISIC2018_Task3_Test_GroundTruth.csv",
            ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset"],
            [("HAMTEST_1", "ISIC_0034525", "akiec", "histo", "70.0", "male", "back", "vidir")])
  write_image(test / "ISIC2018_Task3_Test_Input" / "ISIC_0034525.jpg")

  builder = prepare("isic2018_task3", tmp_path, manual)
  assert builder.info.features["label"].names == list(DX)
  assert set(builder.info.splits.keys()) == {"train", "test"}
  assert [(text(r["id"]), text(r["group"]), DX[r["label"]])
          for r in records(builder, "train")] == [
              ("ISIC_0000001", "HAM_1", "mel"), ("ISIC_0000002", "HAM_1", "nv"),
              ("ISIC_0000003", "ISIC_0000003", "vasc")]
  assert [(text(r["id"]), text(r["group"]), DX[r["label"]])
          for r in records(builder, "test")] == [("ISIC_0034525", "HAMTEST_1", "akiec")]


def test_isic2018_task3_one_hot_row_with_two_classes(tmp_path):
  manual = tmp_path / "manual"
  write_csv(manual / "ISIC2018_Task3_Validation_GroundTruth.csv",
            ["image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"],
            [("ISIC_1", 1, 0, 0, 0, 0, 0, 0), ("ISIC_2", 1, 1, 0, 0, 0, 0, 0)])
  for k in (1, 2, 3):  # ISIC_3 has an image but no ground-truth row
    write_image(manual / "ISIC2018_Task3_Validation_Input" / f"ISIC_{k}.jpg")
  with pytest.raises(ValueError, match="row of ISIC_2 marks 2 classes"):
    prepare("isic2018_task3", tmp_path, manual)
  builder = prepare("isic2018_task3", tmp_path, manual, skip_bad_examples=True)
  assert [text(r["id"]) for r in records(builder, "validation")] == ["ISIC_1"]
  assert [e["id"] for e in report(builder)["skipped"]] == ["ISIC_2", "ISIC_3"]


# ----------------------------------------------------------------------------------------------
# DermaMNIST.


def write_dermamnist(path: Path, size: int = 28, **override) -> Path:
  rng = np.random.default_rng(0)
  arrays = {}
  for prefix, n in (("train", 5), ("val", 2), ("test", 3)):
    arrays[f"{prefix}_images"] = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    arrays[f"{prefix}_labels"] = rng.integers(0, 7, (n, 1))
  arrays.update(override)
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez(path, **arrays)
  return path


def test_dermamnist(tmp_path):
  npz = write_dermamnist(tmp_path / "manual" / "dermamnist.npz")
  write_dermamnist(tmp_path / "manual" / "dermamnist_64.npz", size=64)
  builder = prepare("dermamnist", tmp_path, tmp_path / "manual")
  assert builder.info.config_name == "28"
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
      "train": 5, "validation": 2, "test": 3}
  row = records(builder, "validation")[1]
  with np.load(npz) as arrays:
    np.testing.assert_array_equal(row["image"], arrays["val_images"][1])
    assert row["label"] == arrays["val_labels"][1, 0]
  assert text(row["id"]) == "dermamnist_validation_00001"
  builder = prepare("dermamnist", tmp_path, tmp_path / "manual", builder_kwargs={"size": 64})
  assert builder.info.config_name == "64"
  assert records(builder, "test")[0]["image"].shape == (64, 64, 3)


def test_dermamnist_bad_file(tmp_path):
  write_dermamnist(tmp_path / "manual" / "dermamnist.npz",
                   val_images=np.zeros((2, 28, 28), np.uint8))
  with pytest.raises(ValueError, match=r"dermamnist.npz: val_images is uint8 \(2, 28, 28\)"):
    prepare("dermamnist", tmp_path, tmp_path / "manual")


# ----------------------------------------------------------------------------------------------
# The real files in ../shared/data (downscaled so this stays quick).


@pytest.mark.slow
@pytest.mark.real_data
def test_real_datasets_build(tmp_path, shared_data):
  expected = {  # dataset -> (split, files present, needs skip_bad_examples)
      "ph2": ("train", len(list((shared_data / "PH2Dataset" / "PH2 Dataset images").glob(
          "IMD*/IMD*_Dermoscopic_Image/IMD*.bmp"))), True),
      "isic2018_task3": ("test", len(list(
          (shared_data / "ISIC2018_Task3_Test" / "ISIC2018_Task3_Test_Input").glob("*.jpg"))),
                         False),
      "ham10000": ("train", len(list(
          (shared_data / "HAM10000" / "HAM10000_images_part_1").glob("*.jpg"))), True),
  }
  for name, (split, count, skip) in expected.items():
    builder = prepare(name, tmp_path, shared_data, builder_kwargs={"max_size": 64},
                      skip_bad_examples=skip)
    assert builder.info.splits[split].num_examples == count, name
    rows = builder.as_data_source(split)
    for i in (0, len(rows) - 1):
      assert max(rows[i]["image"].shape[:2]) == 64
      assert 0 <= rows[i]["label"] < len(builder.info.features["label"].names)
      if "mask" in builder.info.features:
        assert set(np.unique(rows[i]["mask"])) == {0, 1}
    if skip:  # metadata rows whose images are held back from ../shared/data
      assert {e["problem"] for e in report(builder)["skipped"]} == {"missing image file"}
  masks = prepare("ham10000", tmp_path, shared_data, builder_kwargs={"max_size": 64, "masks": True},
                  skip_bad_examples=True)
  assert masks.info.splits["train"].num_examples == len(list(
      (shared_data / "HAM10000" / "HAM10000_segmentations_lesion_tschandl").glob("*.png")))
