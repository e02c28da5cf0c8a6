"""Exporting a trained run's inference graph for deployment outside JAX::

    python launch.py export --workdir RUN --format onnx|savedmodel|tflite --out PATH
        [--params last|best] [--ema | --no-ema] [--tta none|hflip|flips] [--batch-size N]

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
  card says which).

Beside ``PATH``: ``PATH.card.md`` and ``PATH.card.json``, the model card (architecture, weights,
training data, metrics, input size and normalisation, class names, intended use). A model that a
format cannot express fails with a ValueError naming the layer where the converter stopped.
"""
from __future__ import annotations

import argparse
import datetime
import json
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
from jax._src import source_info_util

from flaxderm.tools import run as run_lib
from flaxderm.data import metadata as metadata_lib
from flaxderm.data import preprocess as preprocess_lib
from flaxderm.train import checkpoint as checkpoint_lib

FORMATS = ("onnx", "savedmodel", "tflite")
INPUT_NAME = "image"
INPUT_NAMES = (INPUT_NAME, "metadata")  # a run with clinical metadata takes the second too
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


def export_function(fn: Callable[..., jax.Array], image_size: int, fmt: str,
                    path: Path, *, name: str, batch_size: int = 1,
                    metadata_width: int | None = None) -> dict[str, Any]:
  """Writes ``fn`` (float32 (N, S, S, 3) [, float32 (N, metadata_width)] -> array) to ``path``
  in ``fmt``; returns what the card records about the graph (input shapes, whether the batch is
  dynamic)."""
  if fmt not in FORMATS:
    raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
  if batch_size < 1:
    raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
  shapes = [(image_size, image_size, 3)] + ([(metadata_width,)] if metadata_width else [])

  def graph(batch: int | None) -> dict[str, Any]:
    described = {"input": [batch, *shapes[0]], "dynamic_batch": batch is None}
    if metadata_width:
      described["metadata_input"] = [batch, metadata_width]
    return described

  try:
    if fmt == "onnx":
      from jax2onnx import to_onnx  # pylint: disable=g-import-not-at-top

      model = to_onnx(fn, [("N", *shape) for shape in shapes], model_name=name)
      path.write_bytes(model.SerializeToString())
      return graph(None)
    tf_function = _tf_function(fn, shapes, None)
    if fmt == "savedmodel":
      _save_tf(tf_function, path)
      return graph(None)
    try:
      path.write_bytes(_tflite(tf_function))
      return graph(None)
    except Exception:  # pylint: disable=broad-except  (e.g. strided slices need a static batch)
      path.write_bytes(_tflite(_tf_function(fn, shapes, batch_size)))
      return graph(batch_size)
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
           for shape, input_name in zip(shapes, INPUT_NAMES)]
  return tf.function(lambda *inputs: converted(*inputs), input_signature=specs, autograph=False)


def _save_tf(tf_function, path: Path) -> None:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  module = tf.Module()
  module.serve = tf_function
  tf.saved_model.save(module, str(path), signatures={"serving_default": tf_function})


def _tflite(tf_function) -> bytes:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [tf_function.get_concrete_function()], tf_function)
  return converter.convert()


def _read_json(path: Path) -> dict[str, Any] | None:
  return json.loads(path.read_text()) if path.is_file() else None


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
      "input": {"name": INPUT_NAME, "shape": graph["input"], "dynamic_batch":
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
      "intended_use": INTENDED_USE,
  }


def _metadata_card(data, graph: dict[str, Any]) -> dict[str, Any] | None:
  """The second input of a run with clinical metadata: its fields, their vocabulary and what
  each of its D columns means (None for an image-only run)."""
  encoder = metadata_lib.encoder_of(data)
  if encoder is None:
    return None
  return {"name": INPUT_NAMES[1], "shape": graph["metadata_input"], "fields": list(encoder.fields),
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
               overwrite: bool = False) -> dict[str, Any]:
  """Exports the run to ``out`` with its model card; returns the card. ``overwrite`` replaces an
  earlier export of the same format only (``_check_out``)."""
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
  out.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as scratch:
    staged = Path(scratch) / out.name  # a failed export leaves no half-written file
    graph = export_function(fn, sizes.pop(), fmt, staged, name=run.cfg.model.name,
                            batch_size=batch_size,
                            metadata_width=encoders[0] and encoders[0].width)
    if out.is_dir():
      shutil.rmtree(out)
    elif out.exists():
      out.unlink()
    staged.rename(out)
  card = model_card(run, fmt, graph)
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


def main(args: argparse.Namespace) -> None:
  card = export_run(args.workdir, args.format, args.out, params=args.params, use_ema=args.ema,
                    tta=args.tta, batch_size=args.batch_size, overwrite=args.overwrite)
  print(f"exported {card['architecture']['name']} ({card['format']}, input "
        f"{card['input']['shape']}) to {args.out}; model card {args.out}.card.md", flush=True)
