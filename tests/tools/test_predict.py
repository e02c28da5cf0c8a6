"""Using a trained run: input geometry back to the original image, load_run, the predict command."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from flaxderm.tools import predict as predict_lib
from flaxderm.tools import run as run_lib
from flaxderm.data import config as data_config
from flaxderm.data import pipeline
from flaxderm.data import sources
from flaxderm.data import preprocess
from flaxderm.data.builders import ham10000
from flaxderm.train import loop

from flaxderm import cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from tiny_runs import tiny_config, write_image  # noqa: E402


pytestmark = pytest.mark.usefixtures("private_data_dir")


# ----------------------------------------------------------------------------------------------
# Where the model input lies in the image.


@pytest.mark.parametrize("mode", preprocess.RESIZE_MODES)
@pytest.mark.parametrize("shape", [(560, 768), (287, 383), (64, 64), (30, 200), (200, 30)])
def test_input_window_is_the_box_the_model_sees(mode, shape):
  cfg = data_config.default_data_config()
  cfg.resize, cfg.image_size = mode, 128
  image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
  x, window = pipeline.model_input(image, cfg)
  assert x.shape == (128, 128, 3) and x.dtype == np.float32
  height, width = shape
  side = {"crop": min(shape), "pad": max(shape)}.get(mode)
  expected = ((0, 0, height, width) if mode == "stretch" else
              ((height - side) // 2, (width - side) // 2, side, side))
  np.testing.assert_allclose(window.box, expected, atol=1)  # nearest sampling: within a pixel
  pasted = window.paste(np.ones((128, 128)))
  assert pasted.shape == shape
  top, left, box_h, box_w = expected
  inside = np.zeros(shape, bool)
  inside[max(top, 0):top + box_h, max(left, 0):left + box_w] = True
  outside = pasted[~inside]
  assert (pasted[inside] > 0).mean() > 0.99
  assert outside.size == 0 or (outside == 0).mean() > 0.99


def test_input_window_follows_black_frame_cropping():
  image = np.zeros((100, 160, 3), np.uint8)
  image[10:90, 30:130] = 180  # a bright field inside black bands
  cfg = data_config.default_data_config()
  cfg.image_size, cfg.resize = 40, "stretch"
  cfg.preprocess["remove_black_frame"] = True
  _, window = pipeline.model_input(image, cfg)
  np.testing.assert_allclose(window.box, (10, 30, 80, 100), atol=1)


def test_model_input_is_what_evaluation_batches_hold(segmentation_run):
  cfg = run_lib.run_config(segmentation_run)
  data_cfg = sources.open_source(cfg.data)
  records = data_cfg.split("validation")
  batch = next(iter(pipeline.make_eval_iterator(cfg.data, "validation", global_batch_size=4)))
  for i in range(4):
    image = preprocess.decode_image(records[i]["image"], channels=3)
    x, _ = pipeline.model_input(image, cfg.data)
    np.testing.assert_array_equal(x, batch["image"][i])


# ----------------------------------------------------------------------------------------------
# load_run.


def test_load_run_predicts_masks_at_the_original_size(segmentation_run):
  run = run_lib.load_run(segmentation_run, params="last", batch_size=2)
  assert run.task == "segmentation" and run.params == "last"
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, shape, dtype=np.uint8)
            for shape in [(50, 70, 3), (32, 32, 3), (90, 40, 3)]]
  masks = run.predict_batch(images)
  assert [m.shape for m in masks] == [(50, 70), (32, 32), (90, 40)]
  assert all(m.dtype == bool for m in masks)
  probs = run.probabilities(images)
  assert all(0 <= p.min() and p.max() <= 1 for p in probs)
  np.testing.assert_array_equal(run.predict(images[0]), probs[0] >= 0.5)
  with pytest.raises(ValueError, match=r"image 0: expected uint8 RGB .*\(50, 70\)"):
    run.predict(images[0][..., 0])


def test_flaxderm_load_run_and_bad_directories(segmentation_run, tmp_path):
  import flaxderm  # pylint: disable=g-import-not-at-top

  assert flaxderm.load_run is run_lib.load_run
  with pytest.raises(ValueError, match="not a training run directory"):
    run_lib.load_run(tmp_path)
  with pytest.raises(ValueError, match="--tta must be one of"):
    run_lib.load_run(segmentation_run, tta="rot90")
  with pytest.raises(ValueError, match="kept no EMA"):
    run_lib.load_run(segmentation_run, use_ema=True)


@pytest.mark.slow  # trains a run of its own
def test_cross_validation_run_averages_its_folds(segmentation_run, tmp_path):
  other = tmp_path / "other"
  loop.train(tiny_config(seed=7), other)
  cv = tmp_path / "cv"
  shutil.copytree(segmentation_run, cv / "fold_0")
  shutil.copytree(other, cv / "fold_1")
  image = np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)
  folds = [run_lib.load_run(d).probabilities([image])[0] for d in (segmentation_run, other)]
  ensemble = run_lib.load_run(cv)
  assert len(ensemble.members) == 2
  np.testing.assert_allclose(ensemble.probabilities([image])[0], (folds[0] + folds[1]) / 2,
                             atol=1e-6)
  assert not np.allclose(folds[0], folds[1], atol=1e-3)


# ----------------------------------------------------------------------------------------------
# The predict command.


def test_predict_command_writes_isic_masks_overlays_and_probabilities(segmentation_run,
                                                                      tmp_path, capsys):
  inputs = tmp_path / "in"
  write_image(inputs / "ISIC_0000001.jpg", 45, 60)
  write_image(inputs / "case_b.png", 33, 33, seed=1)
  write_image(tmp_path / "loose.bmp", 20, 50, seed=2)
  (inputs / "broken.jpg").write_bytes(b"not an image")
  damaged = bytearray(write_image(inputs / "damaged.jpg", 30, 40, seed=3).read_bytes())
  damaged[len(damaged) // 2:len(damaged) // 2 + 16] = bytes(16)  # PIL still decodes it
  (inputs / "damaged.jpg").write_bytes(bytes(damaged))
  out = tmp_path / "out"
  argv = ["predict", "--workdir", str(segmentation_run), "--out", str(out), str(inputs),
          str(tmp_path / "*.bmp"), "--save-probabilities", "--largest-component", "--fill-holes",
          "--no-progress"]
  assert cli.main(argv) == 0
  assert "3 images predicted" in capsys.readouterr().out
  for image_id, shape in [("ISIC_0000001", (45, 60)), ("case_b", (33, 33)), ("loose", (20, 50))]:
    mask = cv2.imread(str(out / f"{image_id}_segmentation.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == shape and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    with Image.open(out / f"{image_id}_segmentation.png") as im:
      assert im.mode == "L"
    probability = cv2.imread(str(out / f"{image_id}_probability.png"), cv2.IMREAD_UNCHANGED)
    assert probability.shape == shape and probability.dtype == np.uint16
    overlay = cv2.imread(str(out / f"{image_id}_overlay.jpg"))
    assert overlay.shape == (*shape, 3)
  skipped = (out / predict_lib.SKIPPED).read_text()
  assert "broken.jpg" in skipped and "cannot read image" in skipped
  assert "damaged.jpg" in skipped and "Corrupt JPEG data" in skipped

  # Never overwritten silently; --overwrite replaces.
  assert cli.main(argv) == 1
  assert "already holds" in capsys.readouterr().err
  assert cli.main(argv + ["--overwrite"]) == 0


def test_predict_command_errors(segmentation_run, tmp_path, capsys):
  assert cli.main(["predict", "--workdir", str(segmentation_run), "--out", str(tmp_path),
                      str(tmp_path / "missing.jpg")]) == 1
  assert "missing.jpg" in capsys.readouterr().err
  write_image(tmp_path / "a" / "x.png", 20, 20)
  write_image(tmp_path / "b" / "x.jpg", 20, 20)
  with pytest.raises(ValueError, match="image id 'x'"):
    predict_lib.expand_inputs([str(tmp_path / "a"), str(tmp_path / "b")])


def test_predict_classification_writes_probability_and_label_tables(classification_run,
                                                                    tmp_path):
  saved = run_lib.run_config(classification_run)
  assert len(saved.data.mean) == 3 and len(saved.data.std) == 3  # recorded for prediction
  for i in range(3):
    write_image(tmp_path / "in" / f"img{i}.jpg", 40 + 10 * i, 50, seed=i)
  summary = predict_lib.predict_files(classification_run, [str(tmp_path / "in")],
                                      tmp_path / "out", progress=False)
  assert summary["predicted"] == 3 and summary["images_per_s"] > 0
  with open(tmp_path / "out" / predict_lib.PREDICTIONS) as f:
    rows = list(csv.reader(f))
  run = run_lib.load_run(classification_run)
  assert rows[0] == ["image", *run.class_names]
  assert [r[0] for r in rows[1:]] == ["img0", "img1", "img2"]
  for row in rows[1:]:
    assert sum(float(v) for v in row[1:]) == pytest.approx(1.0, abs=1e-5)
  with open(tmp_path / "out" / predict_lib.LABELS) as f:
    labels = list(csv.DictReader(f))
  for row, label in zip(rows[1:], labels):
    assert label["label"] == run.class_names[int(np.argmax([float(v) for v in row[1:]]))]
  with pytest.raises(ValueError, match="for segmentation runs"):
    predict_lib.predict_files(classification_run, [str(tmp_path / "in")], tmp_path / "o2",
                              largest_component=True)


def test_isic_task3_columns_and_postprocessing():
  header, order = predict_lib.class_columns(ham10000.DX_CLASSES)
  assert header == ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
  assert [ham10000.DX_CLASSES[i].upper() for i in order] == header
  assert predict_lib.class_columns(("a", "b")) == (["a", "b"], [0, 1])

  mask = np.zeros((20, 20), bool)
  mask[2:12, 2:12] = True
  mask[5:8, 5:8] = False  # a hole
  mask[15:18, 15:18] = True  # a smaller second region
  kept = predict_lib.postprocess(mask, largest_component=True, fill_holes=False)
  assert not kept[15:18, 15:18].any() and not kept[6, 6]
  filled = predict_lib.postprocess(mask, largest_component=True, fill_holes=True)
  assert filled[2:12, 2:12].all() and filled.sum() == 100


def test_readme_examples_run(segmentation_run, tmp_path, monkeypatch):
  readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
  section = readme[readme.index("## Applying a trained run"):]
  snippet = section[section.index("```python\n") + 10:section.index("```", section.index(
      "```python\n") + 10)]
  run_dir = str(segmentation_run)
  namespace = {"image": np.random.default_rng(0).integers(0, 256, (37, 51, 3), dtype=np.uint8)}
  exec(snippet.replace("runs/default", run_dir), namespace)  # pylint: disable=exec-used
  assert namespace["mask"].shape == (37, 51) and namespace["mask"].dtype == bool

  monkeypatch.chdir(tmp_path)
  export_line = next(line.strip() for line in section.splitlines()
                     if line.strip().startswith("python launch.py export"))
  argv = export_line.replace("runs/default", run_dir).split()[2:]
  assert cli.main(argv) == 0
  assert (tmp_path / "default.onnx").is_file() and (tmp_path / "default.onnx.card.md").is_file()
  write_image(tmp_path / "images" / "a.jpg", 40, 30)
  predict_line = next(line.strip() for line in section.splitlines()
                      if line.strip().startswith("python launch.py predict"))
  argv = predict_line.replace("runs/default", run_dir).rstrip("\\").split()[2:]
  argv = [a if a != "IMAGES_OR_FOLDERS..." else "images" for a in argv]
  assert cli.main(argv + ["--no-progress"]) == 0
  assert (tmp_path / "predictions" / "a_segmentation.png").is_file()
