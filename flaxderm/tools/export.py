"""Exporting a trained run's inference graph for deployment outside JAX::

    python launch.py export --workdir RUN --format onnx|savedmodel|tflite --out PATH
        [--params last|best] [--ema | --no-ema] [--tta none|hflip|flips] [--batch-size N]
        [--quantize float16|int8 [--calibration-images N] [--float-layer REGEX ...]]  (tflite)

The graph maps a batch of prepared model inputs, float32 (N, S, S, 3) NHWC normalised as the card
says (input ``image``; a run with clinical metadata takes a second input ``metadata``, float32
(N, D), encoded as ``flaxderm.data.metadata`` does under the vocabulary the card records), to
probabilities: the lesion probability map (N, S, S) of a segmentation run, or the class
probabilities (N, K) of a classifier (BatchNorm in inference mode, the run's test-time
augmentation inside, the mean of the folds for a cross-validation run). Preparing an image
(resize, normalisation) is the caller's, as ``flaxderm.data.pipeline.model_input`` does it.

* ``onnx``: through ``jax2onnx``; the batch dimension is dynamic ("N").
* ``savedmodel``: through ``jax.experimental.jax2tf`` (a ``serving_default`` signature with input
  ``image``); dynamic batch.
* ``tflite``: the same TensorFlow function converted by the TFLite converter; dynamic batch where
  the converter can lower every layer with it, else the batch is fixed to ``--batch-size`` (the
  card says which). ``--quantize float16`` stores the weights as float16 (computed in float32 on
  CPUs). ``--quantize int8`` is full-integer post-training quantization of the network: int8
  weights and activations in every layer, their ranges calibrated on ``--calibration-images``
  images of the run's training split prepared as its evaluation prepares them, on a graph of fixed
  batch ``--batch-size`` (so each BatchNorm folds into its convolution, quantized per channel;
  every format exports depthwise and 1x1 convolutions as such, ``layers.standard_convolutions``).
  Input and output stay float32 (the graph quantizes its input), so a quantized model is called
  exactly as the float one. What follows the network stays float32: the test-time augmentation's
  mean of probabilities and the logits of that mean, which int8 would make infinite at
  probabilities of 0 or 1. ``--float-layer REGEX`` keeps float32 the layers whose TFLite tensor
  names (flax module paths, "jit(forward)/UNet/UNet/UNet.encode/encoder/conv_stem/...") match, for
  a model that loses too much in int8. The card records the quantization under ``quantization``
  (with the tensors kept float).

Beside ``PATH``: ``PATH.card.md`` and ``PATH.card.json``, the model card (architecture, weights,
training data, metrics, input size and normalisation, class names, how a classifier's class is
decided from its probabilities -- with its logit-adjustment bias when the run's
``eval.logit_adjustment_tau`` sets one --, intended use). A model that a
format cannot express fails with a ValueError naming the layer where the converter stopped.
"""
from __future__ import annotations

import argparse
import datetime
import json
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
from jax._src import source_info_util
import numpy as np

from flaxderm.tools import run as run_lib
from flaxderm.data import metadata as metadata_lib
from flaxderm.data import pipeline
from flaxderm.data import preprocess as preprocess_lib
from flaxderm.models import layers
from flaxderm.train import checkpoint as checkpoint_lib

FORMATS = ("onnx", "savedmodel", "tflite")
QUANTIZATIONS = ("float16", "int8")
# Enough to settle the activation ranges of int8 layers; more mostly costs conversion time.
DEFAULT_CALIBRATION_IMAGES = 200
# The exported graph's inputs: the image, and a run with clinical metadata takes the second too.
IMAGE_INPUT, METADATA_INPUT = "image", "metadata"
# What marks a folder as a training run (flaxderm.train.loop writes them), never an export's.
RUN_MARKERS = (run_lib.CONFIG, checkpoint_lib.LATEST)
# What tf.saved_model.save writes into its folder: all that --overwrite may remove there.
SAVEDMODEL_ENTRIES = ("saved_model.pb", "fingerprint.pb", "variables", "assets")
INTENDED_USE = ("Research use only. Not a medical device: not validated for diagnosis or any "
                "clinical decision.")


class ExportError(ValueError):
  """A model that the format (or its converter) cannot express; the message names the layer."""


def _equations(jaxpr, scope: str = "") -> list[tuple[Any, str]]:
  """(equation, its module path) for every equation of ``jaxpr`` and of the jaxprs nested in it
  (jit, scan, cond, ...), whose name stacks are relative to the equation that holds them."""
  found = []
  for eqn in jaxpr.eqns:
    path = "/".join(p for p in (scope, str(eqn.source_info.name_stack)) if p)
    found.append((eqn, path))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          found.extend(_equations(inner, path))
  return found


def _failing_layer(error: BaseException, fn: Callable, shapes: list[tuple[int, ...]]) -> str:
  """The layer (flax module path) where a converter stopped: the MLIR location of a TensorFlow
  converter message, or the first operation of ``fn`` whose primitive the message names."""
  text = str(error)
  located = re.search(r'loc\(callsite\("(?:jit\([^)]*\)/)?([^"]+)"', text)
  if located:
    return located.group(1).rsplit("/", 1)[0]
  try:
    jaxpr = jax.make_jaxpr(fn)(*(jax.ShapeDtypeStruct((1, *shape), jax.numpy.float32)
                                 for shape in shapes)).jaxpr
  except Exception:  # pylint: disable=broad-except  (then there is no layer to name)
    return ""
  words = set(re.findall(r"[a-z_0-9]+", text.lower()))
  for eqn, stack in _equations(jaxpr):
    if eqn.primitive.name in words:
      frame = source_info_util.user_frame(eqn.source_info.traceback)
      line = f", {frame.file_name}:{frame.start_line}" if frame else ""
      return f"{stack or '(top level)'} ({eqn.primitive.name}{line})"
  return ""


def _unexpressible(fmt: str, name: str, error: BaseException, fn: Callable,
                   shapes: list[tuple[int, ...]]) -> ExportError:
  layer = _failing_layer(error, fn, shapes)
  where = f" at layer {layer}" if layer else ""
  message = str(error).strip().splitlines()[0][:400] if str(error).strip() else type(error).__name__
  return ExportError(f"{fmt}: model {name!r} cannot be exported{where}: {type(error).__name__}: "
                     f"{message}")


def check_quantization(fmt: str, quantize: str | None, calibration_images: int | None,
                       float_layers: Sequence[str] = ()) -> None:
  """ValueError naming the option unless ``quantize``, ``calibration_images`` and
  ``float_layers`` suit ``fmt``."""
  if float_layers and quantize != "int8":
    raise ValueError(f"--float-layer applies to --quantize int8 only, got --quantize {quantize}")
  for pattern in float_layers:
    try:
      re.compile(pattern)
    except re.error as e:
      raise ValueError(f"--float-layer {pattern!r} is not a regular expression: {e}") from e
  if quantize is None:
    if calibration_images is not None:
      raise ValueError("--calibration-images applies to --quantize int8 only")
    return
  if quantize not in QUANTIZATIONS:
    raise ValueError(f"--quantize must be one of {QUANTIZATIONS}, got {quantize!r}")
  if fmt != "tflite":
    raise ValueError(f"--quantize {quantize}: only --format tflite is quantized, got --format "
                     f"{fmt}")
  if calibration_images is not None and quantize != "int8":
    raise ValueError(f"--calibration-images applies to --quantize int8 only, got --quantize "
                     f"{quantize}")
  if calibration_images is not None and calibration_images < 1:
    raise ValueError(f"--calibration-images must be >= 1, got {calibration_images}")


def export_function(fn: Callable[..., jax.Array], image_size: int, fmt: str,
                    path: Path, *, name: str, batch_size: int = 1,
                    metadata_width: int | None = None, quantize: str | None = None,
                    calibration: Callable[[], Iterable[tuple[np.ndarray, ...]]] | None = None,
                    float_layers: Sequence[str] = ()) -> dict[str, Any]:
  """Writes ``fn`` (float32 (N, S, S, 3) [, float32 (N, metadata_width)] -> array) to ``path``
  in ``fmt``; returns what the card records about the graph (input shapes, whether the batch is
  dynamic; for int8, the tensors kept float). ``quantize`` (tflite): "float16" or "int8"; int8
  needs ``calibration``, a function that yields prepared examples one by one (a tuple of the
  graph's inputs without the batch axis), and keeps float32 the layers whose tensor names match
  a ``float_layers`` regular expression (besides what it always keeps float,
  ``_float_tensors``)."""
  if fmt not in FORMATS:
    raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
  if batch_size < 1:
    raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
  check_quantization(fmt, quantize, None, float_layers)
  if quantize == "int8" and calibration is None:
    raise ValueError("--quantize int8 needs calibration inputs")
  shapes = [(image_size, image_size, 3)] + ([(metadata_width,)] if metadata_width else [])

  def graph(batch: int | None) -> dict[str, Any]:
    described = {"input": [batch, *shapes[0]], "dynamic_batch": batch is None}
    if metadata_width:
      described["metadata_input"] = [batch, metadata_width]
    return described

  # Traced here, so the graph holds DEPTHWISE_CONV_2D / CONV_2D (layers.standard_convolutions).
  with layers.standard_convolutions():
    try:
      if fmt == "onnx":
        from jax2onnx import to_onnx  # pylint: disable=g-import-not-at-top

        model = to_onnx(fn, [("N", *shape) for shape in shapes], model_name=name)
        path.write_bytes(model.SerializeToString())
        return graph(None)
      if fmt == "savedmodel":
        _save_tf(_tf_function(fn, shapes, None), path)
        return graph(None)
      if quantize != "int8":
        try:
          path.write_bytes(_tflite(_tf_function(fn, shapes, None), quantize, calibration, 1,
                                   float_layers)[0])
          return graph(None)
        except Exception:  # pylint: disable=broad-except  (e.g. strided slices need a static batch)
          pass
      # int8 always takes a fixed batch: with a dynamic one every BatchNorm stays a broadcast to a
      # computed shape, neither folded into its convolution nor quantized per channel (an int8
      # ISIC 2018 Task 3 EfficientNet-Lite0 fell from 0.608 to 0.126 balanced accuracy,
      # benchmarks/RESULTS.md, "TFLite export").
      model, kept_float = _tflite(_tf_function(fn, shapes, batch_size), quantize, calibration,
                                  batch_size, float_layers)
      path.write_bytes(model)
      described = graph(batch_size)
      return {**described, "float_tensors": kept_float} if quantize == "int8" else described
    except ExportError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (converters raise anything)
      raise _unexpressible(fmt, name, e, fn, shapes) from e


def _tf_function(fn, shapes: list[tuple[int, ...]], batch_size: int | None):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top

  polymorphic = (None if batch_size else
                 [f"(n, {', '.join(map(str, shape))})" for shape in shapes])
  converted = jax2tf.convert(fn, polymorphic_shapes=polymorphic, with_gradient=False)
  specs = [tf.TensorSpec([batch_size, *shape], tf.float32, name=input_name)
           for shape, input_name in zip(shapes, (IMAGE_INPUT, METADATA_INPUT))]
  return tf.function(lambda *inputs: converted(*inputs), input_signature=specs, autograph=False)


def _save_tf(tf_function, path: Path) -> None:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  module = tf.Module()
  module.serve = tf_function
  tf.saved_model.save(module, str(path), signatures={"serving_default": tf_function})


def _tflite(tf_function, quantize: str | None,
            calibration: Callable[[], Iterable[np.ndarray]] | None, batch_size: int,
            float_layers: Sequence[str] = ()) -> tuple[bytes, list[str]]:
  """The TFLite model of ``tf_function``, quantized as ``quantize`` says (int8 calibrated on
  ``calibration``'s inputs, fed in batches of the graph's ``batch_size``), and the tensors an
  int8 model keeps in float32 (``_full_integer``)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [tf_function.get_concrete_function()], tf_function)
  if quantize is None:
    return converter.convert(), []
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if quantize == "float16":
    converter.target_spec.supported_types = [tf.float16]
    return converter.convert(), []

  def stacked(examples: list[tuple[np.ndarray, ...]]) -> list[np.ndarray]:
    return [np.stack([np.asarray(e[i], np.float32) for e in examples])
            for i in range(len(examples[0]))]

  def representative_dataset():
    batch = []
    for example in calibration():
      batch.append(example)
      if len(batch) == batch_size:
        yield stacked(batch)
        batch = []
    if batch:  # a fixed-batch graph takes only full batches: the last one is padded by repeats
      yield stacked(batch + batch[-1:] * (batch_size - len(batch)))

  converter.representative_dataset = representative_dataset
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
  return _full_integer(converter, float_layers)


# A TFLite tensor named only by operations of the exported function itself, outside any flax
# module of the network: "jit(forward)/log" (';' joins the operations fused into one tensor).
_OWN_OPERATION = re.compile(r"jit\([^)/]*\)/[^/]+")
# A tensor name holding a module path, "jit(forward)/UNet/...": a layer of the network.
_MODULE_PATH = re.compile(r"jit\([^)/]*\)/[^/;]+/")


def _float_tensors(interpreter, float_layers: Sequence[str]) -> list[str]:
  """The tensors an int8 model keeps float32: those computed by the exported function's own
  operations after the network (``_OWN_OPERATION``: the mean of the test-time augmentation's
  probabilities, the logits of that mean, the probabilities) and the unnamed ones fed by them
  (the output), plus the layers whose names match a ``float_layers`` regular expression."""
  patterns = [re.compile(p) for p in float_layers]
  tensors = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
  kept: set[int] = set()
  for op in interpreter._get_ops_details():  # pylint: disable=protected-access  (in graph order)
    for index in op["outputs"]:
      name = tensors[index]
      own = all(_OWN_OPERATION.fullmatch(part) for part in name.split(";"))
      fed = not _MODULE_PATH.search(name) and any(i in kept for i in op["inputs"])
      if own or fed or any(p.search(name) for p in patterns):
        kept.add(index)
  return sorted(tensors[i] for i in kept)


def _full_integer(converter, float_layers: Sequence[str]) -> tuple[bytes, list[str]]:
  """Full-integer quantization of the network with float32 input and output, except the tensors
  ``_float_tensors`` keeps float32: after the network, the test-time augmentation averages
  probabilities and takes the logits of the mean (``step.mean_probabilities_as_logits``), which
  turns int8 probabilities of exactly 0 or 1 into infinite logits (an int8 PH2 model scored a
  Dice of 0.001). Returns the model and the tensors kept float.

  This is the converter's own int8 quantization split in its two steps, calibration then
  quantization with those tensors denylisted: what the TFLite quantization debugger's selective
  quantization does (``QuantizationDebugger.get_nondebug_quantized_model``), without its
  instrumented debug model."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.lite.python import convert  # pylint: disable=g-import-not-at-top

  converter._experimental_calibrate_only = True  # pylint: disable=protected-access
  calibrated = converter.convert()
  kept_float = _float_tensors(tf.lite.Interpreter(model_content=calibrated), float_layers)
  quantized = convert.mlir_quantize(
      calibrated, disable_per_channel=converter._experimental_disable_per_channel,  # pylint: disable=protected-access
      input_data_type=tf.float32, output_data_type=tf.float32, denylisted_nodes=kept_float)
  return quantized, kept_float


class CalibrationImages:
  """The first ``count`` images of the run's training split (of its first fold), prepared as its
  evaluation prepares them (no augmentation), with their metadata when the run takes it: what int8
  calibration sees. Calling it starts a fresh pass; ``used`` is how many the last pass yielded
  (fewer when the split is smaller)."""

  def __init__(self, run: run_lib.Run, count: int):
    self.data_cfg = run.members[0].data_cfg
    self.batch_size = run.cfg.eval.batch_size
    self.count = count
    self.used = 0

  def __call__(self) -> Iterable[np.ndarray]:
    self.used = 0
    batches = pipeline.make_eval_iterator(self.data_cfg, self.data_cfg.train_split,
                                          global_batch_size=self.batch_size)
    for batch in batches:
      for i, valid in enumerate(batch["valid"]):
        if self.used == self.count:
          return
        if valid:
          self.used += 1
          yield tuple(batch[key][i] for key in ("image", "metadata") if key in batch)


def quantization_card(quantize: str | None, calibration: CalibrationImages | None,
                      graph: dict[str, Any], float_layers: Sequence[str] = ()) -> dict[str, Any]:
  """What the model card records about the quantization of an export."""
  if quantize is None:
    return {"mode": "none", "weights": "float32", "activations": "float32"}
  card = {"mode": quantize, "weights": quantize, "input_output": "float32"}
  if quantize == "float16":
    return {**card, "activations": "float32 (float16 weights dequantized on load)"}
  return {**card, "activations": "int8 in every layer of the network (the graph quantizes its "
          "float32 input) but float_layers; float32 after it: the mean of the test-time "
          "augmentation's probabilities, the logits of that mean, the probabilities",
          "float_layers": list(float_layers), "float_tensors": graph["float_tensors"],
          "calibration": {"images": calibration.used, "requested": calibration.count,
                          "split": calibration.data_cfg.train_split,
                          "dataset": calibration.data_cfg.name,
                          "preparation": "the run's evaluation preparation, no augmentation"}}


def _read_json(path: Path) -> dict[str, Any] | None:
  return json.loads(path.read_text()) if path.is_file() else None


def _decision_card(run: run_lib.Run) -> dict[str, Any] | None:
  """How a classifier's class is decided from the exported probabilities (None: segmentation)."""
  if run.task != "classification":
    return None
  if run.decision_bias is None:
    return {"rule": "argmax of the probabilities", "logit_adjustment_tau": 0.0}
  return {"rule": "argmax of log(probabilities) + bias: post-hoc logit adjustment for the "
          "training prior (Menon et al. 2021), aiming at balanced accuracy",
          "logit_adjustment_tau": run.cfg.eval.logit_adjustment_tau,
          "bias": dict(zip(run.class_names, run.decision_bias))}


def model_card(run: run_lib.Run, fmt: str, graph: dict[str, Any]) -> dict[str, Any]:
  cfg = run.cfg
  data = run.members[0].data_cfg
  results = _read_json(run.members[0].workdir / run_lib.RESULTS) or {}
  evaluation = _read_json(run.members[0].workdir / "evaluation" / "metrics.json")
  stats = preprocess_lib.normalization_stats(data.normalization, data.mean, data.std)
  output = ("lesion probability per pixel, (N, S, S); threshold 0.5 for the mask"
            if run.task == "segmentation" else
            f"class probabilities, (N, {len(run.class_names)}), in class_names order")
  return {
      "format": fmt,
      "created": datetime.datetime.now().isoformat(timespec="seconds"),
      "run": str(run.workdir),
      "folds": [str(m.workdir) for m in run.members] if len(run.members) > 1 else None,
      "architecture": {"name": cfg.model.name, "kwargs": cfg.model.kwargs.to_dict(),
                       "compute_dtype": cfg.compute_dtype},
      "weights": {"initialised_from": cfg.model.pretrained or "random initialisation (trained "
                  "from scratch)", "params": run.params, "ema": run.use_ema,
                  "step": [m.step for m in run.members], "tta": cfg.eval.tta},
      "training_data": {"dataset": cfg.data.name, "manual_dir": cfg.data.manual_dir,
                        "split": cfg.data.split, "train_split": cfg.data.train_split,
                        "fold": cfg.data.get("fold"), "num_folds": cfg.data.get("num_folds")},
      "metrics": {"validation": results.get("validation"), "evaluation": evaluation},
      "input": {"name": IMAGE_INPUT, "shape": graph["input"], "dynamic_batch":
                graph["dynamic_batch"], "layout": "NHWC float32 RGB",
                "image_size": data.image_size, "resize": data.resize,
                "crop_fraction": data.crop_fraction, "preprocess": data.preprocess.to_dict(),
                "normalization": data.normalization,
                "mean": stats and [float(v) for v in stats[0]],
                "std": stats and [float(v) for v in stats[1]],
                "scaling": ("pixels / 255, then (x - mean) / std" if stats else
                            "pixels / 255, then each image standardised by its own channel "
                            "means and standard deviations")},
      "metadata_input": _metadata_card(data, graph),
      "task": run.task,
      "class_names": list(run.class_names),
      "output": output,
      "decision": _decision_card(run),
      "intended_use": INTENDED_USE,
  }


def _metadata_card(data, graph: dict[str, Any]) -> dict[str, Any] | None:
  """The second input of a run with clinical metadata: its fields, their vocabulary and what
  each of its D columns means (None for an image-only run)."""
  encoder = metadata_lib.encoder_of(data)
  if encoder is None:
    return None
  return {"name": METADATA_INPUT, "shape": graph["metadata_input"], "fields": list(encoder.fields),
          "vocabulary": encoder.vocabulary, "columns": list(encoder.names),
          "encoding": "numbers (x - mean) / std and a missing flag (value 0, flag 1 when "
                      "missing); categories one-hot with a last unknown slot (missing or unseen)"}


def _card_markdown(card: dict[str, Any]) -> str:
  metrics = card["metrics"]["evaluation"] or {"metrics": card["metrics"]["validation"]}
  lines = [
      f"# Model card: {card['architecture']['name']} ({card['task']})", "",
      f"**{card['intended_use']}**", "",
      f"- format: {card['format']}; exported {card['created']} from `{card['run']}`",
      f"- architecture: `{card['architecture']['name']}` {card['architecture']['kwargs']}",
      f"- weights: {card['weights']['initialised_from']}; {card['weights']['params']} parameters "
      f"of step {card['weights']['step']}, EMA {card['weights']['ema']}, test-time augmentation "
      f"{card['weights']['tta']}",
      f"- training data: {card['training_data']}",
      f"- metrics: {json.dumps(metrics.get('metrics'), sort_keys=True)}",
      f"- input `{card['input']['name']}`: {card['input']['shape']} "
      f"({card['input']['layout']}, batch {'dynamic' if card['input']['dynamic_batch'] else 'fixed'})"
      f"; resize {card['input']['resize']} to {card['input']['image_size']} px, normalisation "
      f"{card['input']['normalization']} mean {card['input']['mean']} std {card['input']['std']}"
      f" ({card['input']['scaling']}); preprocessing {card['input']['preprocess']}",
      f"- output: {card['output']}",
      *([f"- decision: {json.dumps(card['decision'], sort_keys=True)}"] if card["decision"] else []),
      f"- quantization: {json.dumps(card.get('quantization'), sort_keys=True)}",
      f"- class names: {card['class_names']}", ""]
  extra = card["metadata_input"]
  if extra is not None:
    lines[-1:-1] = [f"- input `{extra['name']}`: {extra['shape']}, the clinical fields "
                    f"{extra['fields']} as columns {extra['columns']} ({extra['encoding']}); "
                    f"vocabulary {json.dumps(extra['vocabulary'], sort_keys=True)}"]
  return "\n".join(lines)


def card_paths(out: Path) -> tuple[Path, Path]:
  """The model card beside the export ``out``: (``out.card.json``, ``out.card.md``)."""
  return Path(f"{out}.card.json"), Path(f"{out}.card.md")


def _is_run_directory(path: Path) -> bool:
  """A training run (its config, its checkpoints) or a cross-validation run (its folds)."""
  return path.is_dir() and (any((path / name).exists() for name in RUN_MARKERS)
                            or any(path.glob(run_lib.FOLD_PATTERN)))


def _check_out(workdir: Path, fmt: str, out: Path, overwrite: bool) -> None:
  """ValueError unless ``out`` (and its cards) may be written: never a run directory or a folder
  holding one (the run exported included), and with ``--overwrite`` only what an earlier export
  of ``fmt`` wrote there, recognised by its model card."""
  if out.resolve() == workdir or out.resolve() in workdir.parents or _is_run_directory(out):
    raise ValueError(f"--out {out} is or holds a run directory (the run {workdir} included?); "
                     "exports go to a file or folder of their own")
  card_json, card_md = card_paths(out)
  existing = [p for p in (out, card_json, card_md) if p.exists()]
  if not existing:
    return
  if not overwrite:
    raise ValueError(f"{', '.join(map(str, existing))} already exist; pass --overwrite to replace "
                     "them")
  try:
    earlier = json.loads(card_json.read_text())["format"]
  except (OSError, ValueError, KeyError, TypeError):
    earlier = None
  foreign = ([p.name for p in out.iterdir() if p.name not in SAVEDMODEL_ENTRIES]
             if out.is_dir() else [])
  if earlier != fmt or out.is_dir() != (fmt == "savedmodel") or foreign:
    what = (f"an export of format {earlier}" if earlier in FORMATS else "no model card")
    raise ValueError(
        f"--overwrite: {out} is not an earlier {fmt} export ({card_json}: {what}"
        f"{'; it holds ' + ', '.join(sorted(foreign)[:5]) if foreign else ''}); --overwrite "
        "replaces only what export wrote, so choose another --out or remove it yourself")


def export_run(workdir: str | Path, fmt: str, out: str | Path, *, params: str | None = None,
               use_ema: bool | None = None, tta: str | None = None, batch_size: int = 1,
               overwrite: bool = False, quantize: str | None = None,
               calibration_images: int | None = None, float_layers: Sequence[str] = ()
               ) -> dict[str, Any]:
  """Exports the run to ``out`` with its model card; returns the card. ``overwrite`` replaces an
  earlier export of the same format only (``_check_out``). ``quantize`` (tflite): "float16" or
  "int8", the latter calibrated on ``calibration_images`` training images
  (default ``DEFAULT_CALIBRATION_IMAGES``)."""
  check_quantization(fmt, quantize, calibration_images, float_layers)
  out = Path(out)
  card_json, card_md = card_paths(out)
  _check_out(Path(workdir).resolve(), fmt, out, overwrite)
  run = run_lib.load_run(workdir, params=params, use_ema=use_ema, tta=tta)
  sizes = {m.data_cfg.image_size for m in run.members}
  if len(sizes) > 1:
    raise ValueError(f"the folds of {workdir} use different image sizes {sorted(sizes)}")
  encoders = [metadata_lib.encoder_of(m.data_cfg) for m in run.members]
  if encoders[0] is not None and len(run.members) > 1:
    # each fold encodes with its own training split's vocabulary: no one metadata input fits all
    raise ValueError(f"{workdir}: the folds of a run with clinical metadata encode it each with "
                     "their own vocabulary; export one fold (--workdir RUN/fold_k)")
  fn = run.forward
  calibration = (CalibrationImages(run, calibration_images or DEFAULT_CALIBRATION_IMAGES)
                 if quantize == "int8" else None)
  out.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as scratch:
    staged = Path(scratch) / out.name  # a failed export leaves no half-written file
    graph = export_function(fn, sizes.pop(), fmt, staged, name=run.cfg.model.name,
                            batch_size=batch_size,
                            metadata_width=encoders[0] and encoders[0].width,
                            quantize=quantize, calibration=calibration, float_layers=float_layers)
    if out.is_dir():
      shutil.rmtree(out)
    elif out.exists():
      out.unlink()
    staged.rename(out)
  card = model_card(run, fmt, graph)
  card["quantization"] = quantization_card(quantize, calibration, graph, float_layers)
  card_json.write_text(json.dumps(card, indent=2, default=str) + "\n")
  card_md.write_text(_card_markdown(card))
  return card


def add_arguments(parser: argparse.ArgumentParser) -> None:
  run_lib.add_run_arguments(parser)
  parser.add_argument("--format", required=True, choices=FORMATS)
  parser.add_argument("--out", required=True, help="file (onnx, tflite) or folder (savedmodel)")
  parser.add_argument("--batch-size", type=int, default=1,
                      help="tflite: the batch when the converter needs a fixed one")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing export")
  parser.add_argument("--quantize", choices=QUANTIZATIONS,
                      help="tflite: float16 weights, or full-integer int8 (default: float32)")
  parser.add_argument("--calibration-images", type=int,
                      help="--quantize int8: training images that calibrate the activation "
                      f"ranges (default {DEFAULT_CALIBRATION_IMAGES})")
  parser.add_argument("--float-layer", action="append", default=[], dest="float_layers",
                      metavar="REGEX", help="--quantize int8: keep float32 the layers whose "
                      "TFLite tensor names (flax module paths) match; repeatable")


def main(args: argparse.Namespace) -> None:
  card = export_run(args.workdir, args.format, args.out, params=args.params, use_ema=args.ema,
                    tta=args.tta, batch_size=args.batch_size, overwrite=args.overwrite,
                    quantize=args.quantize, calibration_images=args.calibration_images,
                    float_layers=args.float_layers)
  quantized = f", {args.quantize}" if args.quantize else ""
  print(f"exported {card['architecture']['name']} ({card['format']}{quantized}, input "
        f"{card['input']['shape']}) to {args.out}; model card {args.out}.card.md", flush=True)
