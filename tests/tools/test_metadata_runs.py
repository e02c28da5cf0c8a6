"""A run with clinical metadata as an input (issue 30 item 2), end to end on the synthetic lesions'
age, sex and site: training records the vocabulary, ``load_run(...).predict(image, metadata=)``,
``predict --metadata FILE``, ONNX export with the metadata as a second input, and Grad-CAM with
the metadata held fixed."""
from __future__ import annotations

import csv
import json

import jax
import numpy as np
import pytest

from flaxderm import cli
from flaxderm.data import metadata as metadata_lib
from flaxderm.tools import predict as predict_lib
from flaxderm.tools import run as run_lib
from flaxderm.train import loop
from tiny_runs import METADATA_FIELDS as FIELDS
from tiny_runs import metadata_config, write_image

pytestmark = pytest.mark.usefixtures("private_data_dir")

CASES = {"a": {"age": "60", "sex": "female", "site": "back"},
         "b": {"age": "", "sex": "male", "site": "scalp"}}  # missing age, a site never seen


@pytest.fixture(scope="module")
def metadata_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("metadata_run")
  loop.train(metadata_config("concat"), workdir)
  return workdir


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  folder = tmp_path_factory.mktemp("images")
  for i, name in enumerate(CASES):
    write_image(folder / f"{name}.png", 70, 90, seed=i)
  return folder


def write_metadata(path, cases=CASES):
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["image", *FIELDS])
    for name, values in cases.items():
      writer.writerow([f"{name}.png", *(values[k] for k in FIELDS)])
  return path


@pytest.mark.slow
def test_the_run_records_the_vocabulary_of_its_training_split(metadata_run):
  saved = json.loads((metadata_run / "config.json").read_text())["data"]
  assert tuple(saved["metadata"]) == FIELDS
  vocabulary = saved["metadata_vocabulary"]
  assert set(vocabulary) == set(FIELDS) and vocabulary["age"]["std"] > 0
  assert vocabulary["sex"]["categories"] == ["female", "male"]
  results = json.loads((metadata_run / "results.json").read_text())
  assert "accuracy" in results["validation"]


def test_load_run_predicts_with_metadata(metadata_run):
  run = run_lib.load_run(metadata_run)
  assert run.metadata_fields == FIELDS
  image = np.random.default_rng(0).integers(0, 256, (70, 90, 3), np.uint8)
  probs = run.predict(image, metadata={"age": 60, "sex": "female", "site": "back"})
  assert probs.shape == (3,) and probs.sum() == pytest.approx(1.0, abs=1e-5)
  other = run.predict(image, metadata={"age": 20, "sex": "male"})
  assert not np.allclose(probs, other)
  with pytest.raises(ValueError, match=r"takes clinical metadata .*\['age', 'sex', 'site'\]"):
    run.predict(image)
  with pytest.raises(ValueError, match="image 0: field 'sex'"):
    run.predict(image, metadata={"sex": "other"})


def test_predict_reads_the_metadata_beside_the_images(metadata_run, images, tmp_path):
  table = write_metadata(tmp_path / "metadata.csv")
  out = tmp_path / "out"
  assert cli.main(["predict", "--workdir", str(metadata_run), "--out", str(out), str(images),
                   "--metadata", str(table), "--no-progress"]) == 0
  with open(out / "predictions.csv") as f:
    rows = {r["image"]: r for r in csv.DictReader(f)}
  assert set(rows) == set(CASES)
  run = run_lib.load_run(metadata_run)
  image = predict_lib.preprocess.read_image(images / "b.png")
  expected = run.predict(image, metadata=CASES["b"])
  got = [float(rows["b"][c]) for c in run.class_names]
  np.testing.assert_allclose(got, expected, atol=1e-5)


def test_predict_names_an_image_without_metadata(metadata_run, images, tmp_path):
  table = write_metadata(tmp_path / "metadata.csv", {"a": CASES["a"]})
  with pytest.raises(ValueError, match=r"metadata.csv: no row for image 'b'"):
    predict_lib.predict_files(metadata_run, [str(images)], tmp_path / "out", metadata=table,
                              progress=False)
  with pytest.raises(ValueError, match="pass --metadata FILE"):
    predict_lib.predict_files(metadata_run, [str(images)], tmp_path / "out", progress=False)


def _onnx(path, images, metadata):
  onnxruntime = pytest.importorskip("onnxruntime")
  session = onnxruntime.InferenceSession(str(path))
  names = [i.name for i in session.get_inputs()]
  return session.run(None, dict(zip(names, (images, metadata))))[0]


def _savedmodel(path, images, metadata):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  serve = tf.saved_model.load(str(path)).signatures["serving_default"]
  return next(iter(serve(image=tf.constant(images), metadata=tf.constant(metadata)).values())
              ).numpy()


def _tflite(path, images, metadata):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  interpreter = tf.lite.Interpreter(model_path=str(path))
  inputs = {d["name"]: d["index"] for d in interpreter.get_input_details()}
  interpreter.allocate_tensors()
  outputs = []
  for image, row in zip(images, metadata):  # the graph's batch is fixed at 1
    interpreter.set_tensor(inputs["image"], image[None])
    interpreter.set_tensor(inputs["metadata"], row[None].astype(np.float32))
    interpreter.invoke()
    outputs.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0])
  return np.stack(outputs)


@pytest.mark.slow
@pytest.mark.parametrize("fmt, read", [("onnx", _onnx), ("savedmodel", _savedmodel)])
def test_export_takes_the_metadata_as_a_second_input(metadata_run, tmp_path, fmt, read):
  from flaxderm.tools import export as export_lib  # pylint: disable=g-import-not-at-top

  out = tmp_path / f"fused.{fmt}"
  card = export_lib.export_run(metadata_run, fmt, out)
  run = run_lib.load_run(metadata_run)
  width = len(card["metadata_input"]["columns"])
  assert card["metadata_input"]["shape"] == [None, width]
  assert card["metadata_input"]["fields"] == list(FIELDS)
  assert "input `metadata`" in out.with_name(out.name + ".card.md").read_text()
  rng = np.random.default_rng(0)
  images = rng.normal(size=(3, 64, 64, 3)).astype(np.float32)
  metadata = np.stack([metadata_lib.encoder_of(run.members[0].data_cfg).encode(v)
                       for v in (*CASES.values(), {})])
  expected = np.asarray(jax.jit(run.forward)(images, metadata))
  np.testing.assert_allclose(read(out, images, metadata), expected, atol=1e-4)


def test_gradcam_explains_the_image_with_the_metadata_held_fixed(metadata_run, images, tmp_path):
  from flaxderm.tools import explain as explain_lib  # pylint: disable=g-import-not-at-top

  run = run_lib.load_run(metadata_run, tta="none")
  explainer = explain_lib.Explainer(run, "gradcam")
  assert explainer.layer.startswith("backbone/layer4")
  image = predict_lib.preprocess.read_image(images / "a.png")
  (heat,), classes = explainer.explain([image], metadata=[CASES["a"]])
  assert heat.shape == image.shape[:2] and np.isfinite(heat).all()
  assert 0 <= heat.min() and heat.max() <= 1 and heat.max() > 0
  assert classes == [int(np.argmax(run.predict(image, metadata=CASES["a"])))]
  summary = explain_lib.explain_files(metadata_run, [str(images)], tmp_path / "maps",
                                      metadata=write_metadata(tmp_path / "metadata.csv"))
  assert [w["file"] for w in summary["written"]] == ["a_gradcam.png", "b_gradcam.png"]


def test_evaluate_and_calibrate_score_the_run_with_its_metadata(metadata_run):
  from flaxderm.tools import evaluate as evaluate_lib  # pylint: disable=g-import-not-at-top

  from flaxderm.tools import calibration  # pylint: disable=g-import-not-at-top

  metrics = evaluate_lib.evaluate_run(metadata_run)
  recorded = json.loads((metadata_run / "results.json").read_text())["validation"]
  assert metrics["accuracy"] == pytest.approx(recorded["accuracy"])
  calibration.calibrate_run(metadata_run)  # validation logits with the metadata
  (metadata_run / run_lib.CALIBRATION).unlink()  # the other tests use the plain run


@pytest.mark.slow
def test_int8_tflite_export_is_calibrated_with_the_metadata(metadata_run, tmp_path):
  from flaxderm.tools import export as export_lib  # pylint: disable=g-import-not-at-top

  out = tmp_path / "fused.tflite"
  card = export_lib.export_run(metadata_run, "tflite", out, quantize="int8", calibration_images=4)
  assert card["quantization"]["calibration"]["images"] == 4
  run = run_lib.load_run(metadata_run)
  images = np.random.default_rng(0).normal(size=(3, 64, 64, 3)).astype(np.float32)
  metadata = np.stack([metadata_lib.encoder_of(run.members[0].data_cfg).encode(v)
                       for v in (*CASES.values(), {})])
  expected = np.asarray(jax.jit(run.forward)(images, metadata))
  got = _tflite(out, images, metadata)
  assert got.shape == expected.shape
  np.testing.assert_allclose(got.sum(axis=-1), 1.0, atol=1e-3)
  assert np.abs(got - expected).mean() < 0.1
