"""The run tools never destroy a user's files and never return a silently wrong result (issue 31):
export and report replace only their own outputs; images of every PIL mode and EXIF orientation
read as viewers show them; clear refusals, warnings and one-line errors for misuse."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from flaxderm import cli
from flaxderm.data import preprocess
from flaxderm.tools import evaluate as evaluate_lib
from flaxderm.tools import explain as explain_lib
from flaxderm.tools import predict as predict_lib
from flaxderm.tools import report as report_lib
from flaxderm.tools import run as run_lib
from flaxderm.train import loop
from tiny_runs import tiny_config, write_image, write_rotated_jpeg

pytestmark = pytest.mark.usefixtures("private_data_dir")


def _tree(folder: Path) -> dict[str, bytes | None]:
  """Every path under ``folder`` with its bytes (None for folders)."""
  return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
          for p in sorted(folder.rglob("*"))}


def _copy(run: Path, destination: Path, *left_out: str) -> Path:
  return Path(shutil.copytree(run, destination, ignore=shutil.ignore_patterns(*left_out)))


# ----------------------------------------------------------------------------------------------
# Data loss.


def test_export_overwrite_replaces_only_its_own_earlier_export(segmentation_run, tmp_path,
                                                               capsys):
  def export(out: Path, *flags: str, fmt: str = "onnx") -> int:
    return cli.main(["export", "--workdir", str(run), "--format", fmt, "--out", str(out),
                     "--overwrite", *flags])

  run = _copy(segmentation_run, tmp_path / "runs" / "seg", "report")
  before = _tree(run)
  assert export(run) == 1  # the run being exported
  assert "run directory" in capsys.readouterr().err
  assert export(tmp_path / "runs") == 1  # a folder holding it
  assert "run directory" in capsys.readouterr().err
  assert _tree(run) == before

  foreign = tmp_path / "mine"
  (foreign / "sub").mkdir(parents=True)
  (foreign / "notes.txt").write_text("keep me")
  (foreign / "sub" / "data.bin").write_bytes(b"\x00\x01")
  mine = _tree(foreign)
  assert export(foreign) == 1 and export(foreign, fmt="savedmodel") == 1
  assert "not an earlier" in capsys.readouterr().err
  assert _tree(foreign) == mine
  lone = tmp_path / "model.onnx"
  lone.write_bytes(b"someone else's model")
  assert export(lone) == 1 and lone.read_bytes() == b"someone else's model"
  capsys.readouterr()

  # An earlier export of the same format is replaced; one of another format is not.
  out = tmp_path / "exports" / "seg.onnx"
  assert export(out) == 0 and export(out) == 0
  assert json.loads(Path(f"{out}.card.json").read_text())["format"] == "onnx"
  written = out.read_bytes()
  assert export(out, fmt="tflite") == 1
  assert "onnx" in capsys.readouterr().err and out.read_bytes() == written


def test_report_removes_only_its_own_figures(segmentation_run, tmp_path):
  run = _copy(segmentation_run, tmp_path / "run", "report")
  (run / "report").mkdir()
  (run / "report" / "my_notes.png").write_bytes(b"not the report's")
  (run / "report" / "confusion.png").write_bytes(b"a figure of an earlier report")
  report_lib.write_report(run, cases=2)
  assert (run / "report" / "my_notes.png").read_bytes() == b"not the report's"
  assert not (run / "report" / "confusion.png").exists()  # the report's own, not redrawn


# ----------------------------------------------------------------------------------------------
# Silently wrong results.


def _gradient(height: int = 6, width: int = 8) -> np.ndarray:
  return np.linspace(0, 1, height * width).reshape(height, width)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I"])
def test_every_pil_mode_reads_as_the_rgb_a_viewer_shows(tmp_path, mode):
  grey = np.uint8(np.round(_gradient() * 255))
  if mode in ("I;16", "I"):  # 16-bit values, scaled by 65535 (full range) to 8 bits
    image = Image.fromarray(np.uint16(np.round(_gradient() * 65535)))
    image = image if mode == "I;16" else image.convert("I")
    path = tmp_path / ("image.png" if mode == "I;16" else "image.tif")
    expected = np.repeat(grey[..., None], 3, axis=-1)
  else:
    image = Image.fromarray(np.stack([grey, grey[::-1], 255 - grey], -1)).convert(mode)
    path = tmp_path / ("image.jpg" if mode == "CMYK" else "image.png")
    expected = None
  image.save(path)
  with Image.open(path) as im:
    assert im.mode == mode
    if expected is None:
      expected = np.asarray(im.convert("RGB"))
  pixels = preprocess.read_image(path)
  assert pixels.dtype == np.uint8 and pixels.shape == (6, 8, 3)
  np.testing.assert_allclose(pixels, expected, atol=1)


def test_float_and_out_of_range_images_are_refused_by_name(tmp_path):
  Image.fromarray(np.float32(_gradient())).save(tmp_path / "float.tif")
  with pytest.raises(ValueError, match="mode F"):
    preprocess.read_image(tmp_path / "float.tif")
  Image.fromarray(np.int32(_gradient() * 100000)).save(tmp_path / "wide.tif")
  with pytest.raises(ValueError, match="outside 0..65535"):
    preprocess.read_image(tmp_path / "wide.tif")


@pytest.mark.parametrize("orientation", [6, 8])
def test_predict_follows_the_exif_orientation(segmentation_run, tmp_path, orientation):
  path = write_rotated_jpeg(tmp_path / "in" / "turned.jpg", orientation)
  shown = cv2.imread(str(path))  # as viewers and OpenCV show it
  assert shown.shape == (40, 24, 3)
  with Image.open(path) as im:
    upright = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
  np.testing.assert_array_equal(preprocess.read_image(path), upright)
  predict_lib.predict_files(segmentation_run, [str(path)], tmp_path / "out", progress=False)
  mask = cv2.imread(str(tmp_path / "out" / "turned_segmentation.png"), cv2.IMREAD_UNCHANGED)
  assert mask.shape == shown.shape[:2]


def test_predict_refuses_to_write_into_a_folder_it_reads(segmentation_run, tmp_path, capsys):
  write_image(tmp_path / "in" / "a.jpg", 30, 30)
  base = ["predict", "--workdir", str(segmentation_run), "--no-progress", "--out"]
  assert cli.main(base + [str(tmp_path / "in"), str(tmp_path / "in")]) == 1
  assert "read back as inputs" in capsys.readouterr().err
  assert cli.main(base + [str(tmp_path / "in"), str(tmp_path / "in" / "*.jpg")]) == 1
  assert "read back as inputs" in capsys.readouterr().err
  assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["a.jpg"]
  # A named file may sit beside the outputs: it is never picked up again by name.
  assert cli.main(base + [str(tmp_path / "in"), str(tmp_path / "in" / "a.jpg")]) == 0


@pytest.mark.slow  # trains a run of its own
def test_evaluating_on_the_training_folder_warns_and_earlier_evaluations_are_kept(tmp_path,
                                                                                   caplog):
  from fakes import write_ph2  # pylint: disable=g-import-not-at-top

  train_cases = {f"IMD00{i}": "common_nevus" for i in range(1, 5)}
  train_dir = write_ph2(tmp_path / "train", train_cases, list(train_cases))
  other_dir = write_ph2(tmp_path / "other", {"IMD101": "melanoma"}, ["IMD101"])
  cfg = tiny_config(**{"data.name": "ph2", "data.split": "all", "num_steps": 1,
                       "eval.every_steps": 1})
  cfg.data.builder_kwargs = {}
  cfg.data.manual_dir = str(train_dir)
  run = tmp_path / "run"
  loop.train(cfg, run)
  with caplog.at_level(logging.WARNING):
    evaluate_lib.evaluate_run(run, manual_dir=str(train_dir))
  overlap = [r.getMessage() for r in caplog.records if "training split" in r.getMessage()]
  assert len(overlap) == 1 and "4 of the 4 cases" in overlap[0] and "IMD001" in overlap[0]
  first = (run / "evaluation" / "cases.csv").read_text()

  caplog.clear()
  with caplog.at_level(logging.WARNING):
    evaluate_lib.evaluate_run(run, manual_dir=str(other_dir))
  assert not [r for r in caplog.records if "training split" in r.getMessage()]
  assert "IMD101" in (run / "evaluation" / "cases.csv").read_text()
  kept = [p.parent for p in (run / "evaluation").glob("*/metrics.json")]
  assert len(kept) == 1 and (kept[0] / "cases.csv").read_text() == first
  assert json.loads((kept[0] / "metrics.json").read_text())["manual_dir"] == str(train_dir)


def test_report_with_other_options_rescores_and_keeps_the_stored_evaluation(segmentation_run,
                                                                            tmp_path):
  run = _copy(segmentation_run, tmp_path / "run", "report", "evaluation")
  page = report_lib.write_report(run, cases=2)
  assert "TTA none" in page.read_text()
  page = report_lib.write_report(run, cases=2, tta="flips", params="best")
  assert "TTA flips" in page.read_text() and "best parameters" in page.read_text()
  stored = json.loads((run / "evaluation" / "metrics.json").read_text())
  assert (stored["tta"], stored["params"]) == ("flips", "best")
  kept = [json.loads(p.read_text()) for p in (run / "evaluation").glob("*/metrics.json")]
  assert [(k["tta"], k["params"]) for k in kept] == [("none", "last")]


def test_runlocal_refuses_a_data_folder_it_would_never_read(tmp_path, capsys):
  (tmp_path / "isic").mkdir()
  argv = ["default:runlocal", "--workdir", str(tmp_path / "run"),
          f"--config.data.manual_dir={tmp_path / 'isic'}"]
  assert cli.main(argv) == 1
  err = capsys.readouterr().err
  assert "synthetic_lesions" in err and "manual_dir" in err and str(tmp_path / "isic") in err
  assert not (tmp_path / "run" / "config.json").exists()


def test_report_without_a_training_log_says_why_it_has_no_curves(segmentation_run, tmp_path):
  run = _copy(segmentation_run, tmp_path / "run", "report", "metrics.jsonl")
  page = report_lib.write_report(run, cases=2)
  assert "no metrics.jsonl" in page.read_text()
  assert not (run / "report" / "curves.png").exists()


def test_an_image_far_below_the_model_input_is_predicted_with_a_warning(segmentation_run,
                                                                        caplog):
  run = run_lib.load_run(segmentation_run)
  floor = run.min_image_side
  assert floor == run.cfg.data.image_size * run_lib.MIN_SIDE_FRACTION
  with caplog.at_level(logging.WARNING, logger=run_lib.__name__):
    run.predict(np.zeros((int(floor), int(floor), 3), np.uint8))
    assert not [r for r in caplog.records if r.name == run_lib.__name__]
    assert run.predict(np.zeros((1, 1, 3), np.uint8)).shape == (1, 1)
  warned = [r.getMessage() for r in caplog.records if r.name == run_lib.__name__]
  assert len(warned) == 1 and "1x1" in warned[0] and f"below {floor:g} px" in warned[0]


# ----------------------------------------------------------------------------------------------
# Unclear errors.


def test_file_system_errors_are_one_line_naming_the_path(segmentation_run, tmp_path, capsys):
  write_image(tmp_path / "in" / "a.jpg", 30, 30)
  (tmp_path / "taken").write_text("a file")
  assert cli.main(["predict", "--workdir", str(segmentation_run), "--out",
                   str(tmp_path / "taken"), str(tmp_path / "in"), "--no-progress"]) == 1
  err = capsys.readouterr().err
  assert err.startswith("error: ") and str(tmp_path / "taken") in err
  assert len(err.strip().splitlines()) == 1


def test_predict_batch_and_predict_say_what_they_expected(segmentation_run):
  run = run_lib.load_run(segmentation_run)
  image = np.zeros((20, 30, 3), np.uint8)
  with pytest.raises(ValueError, match=r"a list of images .* one array of shape \(20, 30, 3\)"):
    run.predict_batch(image)
  assert [m.shape for m in run.predict_batch(np.stack([image, image]))] == [(20, 30)] * 2
  with pytest.raises(ValueError, match=r"image 0: empty \(0x30 pixels\)"):
    run.predict(image[:0])


def test_explain_target_names_and_no_empty_folder_after_an_error(classification_run, tmp_path,
                                                                 capsys):
  write_image(tmp_path / "in" / "a.jpg", 30, 30)
  base = ["explain", "--workdir", str(classification_run), str(tmp_path / "in"), "--out"]
  assert cli.main(base + [str(tmp_path / "bad"), "--target", "eczema"]) == 1
  assert "classes: common_nevus" in capsys.readouterr().err
  assert not (tmp_path / "bad").exists()
  # The names predict prints (predictions.csv's header), whatever their case.
  assert cli.main(base + [str(tmp_path / "out"), "--target", "MELANOMA"]) == 0
  assert (tmp_path / "out" / "a_gradcam.png").is_file()
  run = run_lib.load_run(classification_run, tta="none")
  assert explain_lib.class_index(run, "Melanoma") == run.class_names.index("melanoma")


def test_predict_fails_when_every_input_was_skipped(segmentation_run, tmp_path, capsys):
  (tmp_path / "in").mkdir()
  (tmp_path / "in" / "broken.jpg").write_bytes(b"not an image")
  assert cli.main(["predict", "--workdir", str(segmentation_run), "--out", str(tmp_path / "out"),
                   str(tmp_path / "in"), "--no-progress"]) == 1
  err = capsys.readouterr().err
  assert "no input could be read" in err and "skipped.txt" in err
