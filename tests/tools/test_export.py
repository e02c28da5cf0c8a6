"""Export: ONNX (onnxruntime), SavedModel (TensorFlow) and TFLite (its interpreter) equal JAX's
output on the same input, float16 and int8 TFLite stay close to it; model cards; a model a format
cannot express names its layer; quantization options that do not fit are refused."""
from __future__ import annotations

import json
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from flaxderm.tools import export as export_lib
from flaxderm.tools import run as run_lib
from flaxderm.train import config as config_lib
from flaxderm.train import loop

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("private_data_dir")]
SIZE = 32


def _config(model: str, kwargs: dict, task: str) -> ml_collections.ConfigDict:
  c = config_lib.default_config()
  c.model.name = model
  c.model.kwargs = kwargs
  c.data.image_size = SIZE
  c.data.builder_kwargs = {"num_train": 8, "num_validation": 4, "num_test": 2, "image_size": 48}
  if task == "classification":
    c.data.task, c.loss.name = "classification", "cross_entropy"
  c.batch_size = 4
  c.num_epochs = 0
  c.num_steps = 2
  c.eval.every_steps = 2
  c.eval.batch_size = 4
  c.eval.tta = "hflip"  # inside the exported graph too
  c.progress_bar = False
  c.visualize_images = 0
  return c


MODELS = {
    "unet": ("unet", {"base_width": 4, "depth": 2}, "segmentation"),
    "resnet": ("resnet18", {"depths": (1, 1, 1, 1)}, "classification"),
    "vit": ("vit_tiny", {"img_size": SIZE}, "classification"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  trained = {}
  for key, (model, kwargs, task) in MODELS.items():
    workdir = tmp_path_factory.mktemp(key)
    loop.train(_config(model, kwargs, task), workdir)
    trained[key] = workdir
  return trained


def _inputs(n: int = 3) -> np.ndarray:
  return np.random.default_rng(0).normal(size=(n, SIZE, SIZE, 3)).astype(np.float32)


def _expected(workdir, inputs):
  return np.asarray(jax.jit(run_lib.load_run(workdir).forward)(jnp.asarray(inputs)))


def _onnx(path, inputs):
  import onnxruntime  # pylint: disable=g-import-not-at-top

  session = onnxruntime.InferenceSession(str(path))
  return session.run(None, {session.get_inputs()[0].name: inputs})[0]


def _savedmodel(path, inputs):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  serve = tf.saved_model.load(str(path)).signatures["serving_default"]
  return next(iter(serve(image=tf.constant(inputs)).values())).numpy()


def _tflite(path, inputs, card):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  interpreter = tf.lite.Interpreter(model_path=str(path))
  given = interpreter.get_input_details()[0]
  batch = len(inputs) if card["input"]["dynamic_batch"] else card["input"]["shape"][0]
  interpreter.resize_tensor_input(given["index"], [batch, SIZE, SIZE, 3])
  interpreter.allocate_tensors()
  outputs = []
  for start in range(0, len(inputs), batch):
    chunk = np.zeros((batch, SIZE, SIZE, 3), np.float32)
    part = inputs[start:start + batch]
    chunk[:len(part)] = part
    interpreter.set_tensor(given["index"], chunk)
    interpreter.invoke()
    outputs.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[:len(part)])
  return np.concatenate(outputs)


@pytest.mark.parametrize("fmt", export_lib.FORMATS)
@pytest.mark.parametrize("key", sorted(MODELS))
def test_exported_model_equals_jax(runs, tmp_path, key, fmt):
  out = tmp_path / f"model.{fmt}"
  card = export_lib.export_run(runs[key], fmt, out)
  inputs = _inputs()
  expected = _expected(runs[key], inputs)
  if fmt == "onnx":
    got = _onnx(out, inputs)
  elif fmt == "savedmodel":
    got = _savedmodel(out, inputs)
  else:
    got = _tflite(out, inputs, card)
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
  if fmt != "tflite":
    assert card["input"]["dynamic_batch"] and card["input"]["shape"][0] is None

  saved = json.loads((tmp_path / f"model.{fmt}.card.json").read_text())
  assert saved["task"] == MODELS[key][2] and saved["architecture"]["name"] == MODELS[key][0]
  assert saved["input"]["image_size"] == SIZE and saved["input"]["mean"]
  assert saved["weights"]["tta"] == "hflip" and saved["metrics"]["validation"]
  text = (tmp_path / f"model.{fmt}.card.md").read_text()
  assert "not a medical device" in text.lower() and MODELS[key][0] in text
  with pytest.raises(ValueError, match="--overwrite"):
    export_lib.export_run(runs[key], fmt, out)


QUANTIZED = ("unet", "resnet")


@pytest.mark.parametrize("quantize", export_lib.QUANTIZATIONS)
@pytest.mark.parametrize("key", QUANTIZED)
def test_quantized_tflite_stays_close_to_jax(runs, tmp_path, key, quantize):
  out = tmp_path / f"model.{quantize}.tflite"
  int8 = quantize == "int8"
  float_layers = ["ResNet/conv1/"] if int8 and key == "resnet" else []  # the stem stays float
  card = export_lib.export_run(runs[key], "tflite", out, quantize=quantize,
                               calibration_images=5 if int8 else None, float_layers=float_layers)
  run = run_lib.load_run(runs[key])
  inputs = np.stack([image for image, in export_lib.CalibrationImages(run, 8)()])  # real range
  expected = _expected(runs[key], inputs)
  got = _tflite(out, inputs, card)
  assert got.dtype == np.float32 and got.shape == expected.shape
  if quantize == "float16":
    np.testing.assert_allclose(got, expected, atol=1e-2)
  else:
    assert np.abs(got - expected).mean() < 0.05
    decided = got >= 0.5 if MODELS[key][2] == "segmentation" else got.argmax(-1)
    agreeing = decided == (expected >= 0.5 if MODELS[key][2] == "segmentation"
                           else expected.argmax(-1))
    assert agreeing.mean() >= 0.75
  saved = json.loads((tmp_path / f"model.{quantize}.tflite.card.json").read_text())
  assert saved["quantization"]["mode"] == quantize and saved["quantization"]["weights"] == quantize
  if int8:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    interpreter = tf.lite.Interpreter(model_path=str(out))
    operators = [op["op_name"] for op in interpreter._get_ops_details()]  # pylint: disable=protected-access
    # every BatchNorm folded into its convolution (a dynamic batch left them as int8 broadcasts)
    assert "BROADCAST_TO" not in operators and not card["input"]["dynamic_batch"], operators
    assert saved["quantization"]["calibration"]["images"] == 5
    assert saved["quantization"]["calibration"]["split"] == "train"
    kept = saved["quantization"]["float_tensors"]
    assert "jit(forward)/log" in kept  # the logits of the test-time augmentation's mean
    assert saved["quantization"]["float_layers"] == float_layers
    in_network = [name for name in kept if re.search(r"jit\(forward\)/[^/;]+/", name)]
    assert all("ResNet/conv1/" in name for name in in_network), in_network
    assert bool(in_network) == bool(float_layers)
  assert f'"mode": "{quantize}"' in (tmp_path / f"model.{quantize}.tflite.card.md").read_text()


@pytest.mark.parametrize("fmt, quantize, calibration, float_layers, message", [
    ("onnx", "int8", None, [], "--quantize int8: only --format tflite"),
    ("savedmodel", "float16", None, [], "--quantize float16: only --format tflite"),
    ("tflite", "int4", None, [], "--quantize must be one of"),
    ("tflite", "float16", 10, [], "--calibration-images applies to --quantize int8 only"),
    ("tflite", None, 10, [], "--calibration-images applies to --quantize int8 only"),
    ("tflite", "int8", 0, [], "--calibration-images must be >= 1"),
    ("tflite", "float16", None, ["stem"], "--float-layer applies to --quantize int8 only"),
    ("tflite", "int8", None, ["("], "--float-layer '\\(' is not a regular expression"),
])
def test_bad_quantization_options_are_refused(tmp_path, fmt, quantize, calibration, float_layers,
                                              message):
  with pytest.raises(ValueError, match=message):
    export_lib.export_run(tmp_path / "run", fmt, tmp_path / "model", quantize=quantize,
                          calibration_images=calibration, float_layers=float_layers)
  assert not (tmp_path / "model").exists()


class _SpectralHead(nn.Module):
  """A layer ONNX has no counterpart for in jax2onnx (an eigen-decomposition)."""

  @nn.compact
  def __call__(self, x):
    y = nn.Dense(4, name="project")(x.mean(axis=(1, 2)))
    gram = y[:, :, None] * y[:, None, :]
    return jnp.linalg.eigh(gram)[0]


class _Net(nn.Module):
  @nn.compact
  def __call__(self, x):
    return _SpectralHead(name="spectral_head")(nn.Conv(4, (3, 3), name="stem")(x))


def test_a_layer_the_format_cannot_express_is_named(tmp_path):
  model = _Net()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  expected = r"onnx: model 'net' cannot be exported at layer _Net/spectral_head \(eigh\)"
  with pytest.raises(export_lib.ExportError, match=expected):
    export_lib.export_function(lambda x: model.apply(variables, x), 8, "onnx",
                               tmp_path / "m.onnx", name="net")
  assert not (tmp_path / "m.onnx").exists()


def test_export_command(runs, tmp_path, capsys):
  from flaxderm import cli  # pylint: disable=g-import-not-at-top

  out = tmp_path / "unet.onnx"
  assert cli.main(["export", "--workdir", str(runs["unet"]), "--format", "onnx",
                   "--out", str(out)]) == 0
  assert "exported unet (onnx" in capsys.readouterr().out and out.is_file()
  assert cli.main(["export", "--workdir", str(runs["unet"]), "--format", "onnx",
                   "--out", str(out)]) == 1
  assert "--overwrite" in capsys.readouterr().err
  assert cli.main(["export", "--workdir", str(runs["unet"]), "--format", "onnx",
                   "--out", str(tmp_path / "int8.onnx"), "--quantize", "int8"]) == 1
  assert "--quantize int8: only --format tflite" in capsys.readouterr().err
