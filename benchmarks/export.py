"""TFLite exports for phones: file size, CPU latency and the metric of float32, float16 and int8
against the JAX model, for the PH2 and the ISIC 2018 Task 3 experiments.

Each experiment is trained with a short wall budget into a temporary folder (or a trained run is
reused with ``--ph2-workdir`` / ``--isic-workdir``), exported by ``launch.py export --format
tflite`` as float32, ``--quantize float16`` and ``--quantize int8`` (calibrated on
``--calibration-images`` training images), and every format predicts the same validation cases
(the run's ``eval_split``, prepared as its evaluation prepares them) as the JAX model. The metric
is the run's own: per-image Dice of the lesion (PH2) or balanced accuracy (ISIC 2018 Task 3); the
table gives each format's difference from JAX in points, and how often its decisions (pixels at
0.5, or the class) equal JAX's. Latency: one image per call of the TFLite interpreter on 1 thread,
the median of ``--latency-calls`` calls after a warm-up, the whole graph (test-time augmentation
included). Each ``--float-layer REGEX`` adds an int8 export that keeps the layers it matches float.

  python benchmarks/export.py                                 # appended to RESULTS.md
  python benchmarks/export.py --ph2-workdir RUN --isic-workdir RUN --no-append
"""
from __future__ import annotations

import argparse
import collections
import datetime
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import environment  # benchmarks/environment.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
PACKAGES = ("jax", "jaxlib", "flax", "tensorflow-cpu", "numpy")
EXPERIMENTS = {  # name: (experiment, its data options, metric, what the metric is)
    "ph2": ("ph2_segmentation_cpu", {"manual_dir": DATA / "PH2Dataset", "skip_bad_examples": True},
            "dice/per_image", "per-image Dice"),
    "isic_t3": ("isic2018_task3_lite0_cpu", {"manual_dir": DATA}, "balanced_accuracy",
                "balanced accuracy"),
}
FORMATS = (("float32", None, ()), ("float16", "float16", ()), ("int8", "int8", ()))


def _train(experiment: str, data: dict, budget_s: float, workdir: Path) -> None:
  from flaxderm import cli  # pylint: disable=g-import-not-at-top

  options = [f"--config.data.{key}={value}" for key, value in data.items()]
  code = cli.main([experiment, *options, f"--config.budget_s={budget_s}",
                   "--config.progress_bar=False", "--workdir", str(workdir)])
  if code:
    raise SystemExit(f"training {experiment} failed (exit {code})")


def _validation(run) -> dict[str, np.ndarray]:
  """The run's validation cases as its evaluation prepares them: images, masks or labels."""
  from flaxderm.data import pipeline  # pylint: disable=g-import-not-at-top

  data_cfg = run.members[0].data_cfg
  batches = list(pipeline.make_eval_iterator(data_cfg, global_batch_size=run.cfg.eval.batch_size))
  cases = {key: np.concatenate([b[key] for b in batches])
           for key in ("image", "mask", "label", "valid") if key in batches[0]}
  kept = cases.pop("valid") > 0
  return {key: value[kept] for key, value in cases.items()}


def _jax_probabilities(run, images: np.ndarray, batch_size: int) -> np.ndarray:
  import jax  # pylint: disable=g-import-not-at-top

  forward = jax.jit(run.forward)
  outputs = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    padded = np.concatenate([chunk, np.zeros((batch_size - len(chunk), *chunk.shape[1:]),
                                             np.float32)])
    outputs.append(np.asarray(forward(padded))[:len(chunk)])
  return np.concatenate(outputs)


def _interpreter(path: Path, shape: tuple[int, ...], **options):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=1, **options)
  interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], [1, *shape])
  interpreter.allocate_tensors()
  return interpreter


def _invoke(interpreter, image: np.ndarray) -> np.ndarray:
  interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None])
  interpreter.invoke()
  return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0]


def _latency_ms(interpreter, image: np.ndarray, calls: int) -> float:
  _invoke(interpreter, image)  # warm-up: the first call allocates
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    _invoke(interpreter, image)
    times.append(time.perf_counter() - start)
  return 1000 * statistics.median(times)


def _float_operators(path: Path, shape: tuple[int, ...]) -> str:
  """The operators of the graph that compute in float32, with their counts (for an int8 graph:
  what stayed float), read without the default delegate (which would fuse them away)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  interpreter = _interpreter(path, shape, experimental_op_resolver_type=(
      tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES))
  tensors = {t["index"]: t["dtype"] for t in interpreter.get_tensor_details()}
  found = collections.Counter(
      op["op_name"] for op in interpreter._get_ops_details()  # pylint: disable=protected-access
      if op["op_name"] != "DEQUANTIZE" and any(tensors.get(i) == np.float32 for i in op["outputs"]))
  return ", ".join(f"{name} x{count}" for name, count in sorted(found.items())) or "none"


def _score(run, probabilities: np.ndarray, cases: dict[str, np.ndarray], key: str) -> float:
  from flaxderm import metrics  # pylint: disable=g-import-not-at-top

  if run.task == "segmentation":
    two_class = np.stack([1 - probabilities, probabilities], axis=-1)
    stats = metrics.segmentation_stats(two_class, cases["mask"].astype(np.int32))
    return float(metrics.summarize_segmentation(stats)[key])
  stats = metrics.classification_stats(probabilities, cases["label"],
                                       num_classes=len(run.class_names))
  return float(metrics.summarize_classification(stats)[key])


def _decisions(run, probabilities: np.ndarray) -> np.ndarray:
  return probabilities >= 0.5 if run.task == "segmentation" else probabilities.argmax(-1)


def benchmark(name: str, workdir: Path, scratch: Path, args) -> list[str]:
  """The table rows of experiment ``name``, trained in ``workdir``."""
  from flaxderm.tools import export as export_lib  # pylint: disable=g-import-not-at-top
  from flaxderm.tools import run as run_lib  # pylint: disable=g-import-not-at-top

  _, _, key, _ = EXPERIMENTS[name]
  run = run_lib.load_run(workdir)
  cases = _validation(run)
  images = cases["image"]
  jax_probabilities = _jax_probabilities(run, images, run.cfg.eval.batch_size)
  jax_score = _score(run, jax_probabilities, cases, key)
  jax_decisions = _decisions(run, jax_probabilities)
  rows = [f"| {name} | JAX ({run.cfg.model.name}, float32) | | | {jax_score:.4f} | | | "
          f"{len(images)} validation cases, step {run.members[0].step} |"]
  variants = [*FORMATS, *((f"int8, float `{regex}`".replace("|", "\\|"), "int8", [regex])
                          for regex in args.float_layer)]  # | escaped: a table cell
  for number, (label, quantize, float_layers) in enumerate(variants):
    out = scratch / f"{name}.{number}.tflite"
    started = time.perf_counter()
    card = export_lib.export_run(workdir, "tflite", out, quantize=quantize,
                                 calibration_images=args.calibration_images
                                 if quantize == "int8" else None, float_layers=float_layers)
    export_s = time.perf_counter() - started
    interpreter = _interpreter(out, images.shape[1:])
    latency = _latency_ms(interpreter, images[0], args.latency_calls)
    probabilities = np.stack([_invoke(interpreter, image) for image in images])
    score = _score(run, probabilities, cases, key)
    agreement = float(np.mean(_decisions(run, probabilities) == jax_decisions))
    notes = [f"export {export_s:.0f} s", f"max abs prob diff "
             f"{np.abs(probabilities - jax_probabilities).max():.4f}"]
    if quantize == "int8":
      calibration = card["quantization"]["calibration"]
      notes.append(f"calibrated on {calibration['images']} {calibration['split']} images; float "
                   f"operators: {_float_operators(out, images.shape[1:])}")
    rows.append(f"| {name} | TFLite {label} | {out.stat().st_size / 2**20:.2f} | {latency:.1f} | "
                f"{score:.4f} | {100 * (score - jax_score):+.2f} | {100 * agreement:.2f}% | "
                f"{'; '.join(notes)} |")
    print(rows[-1], flush=True)
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--experiments", default=",".join(EXPERIMENTS))
  parser.add_argument("--ph2-workdir", help="a trained PH2 experiment run (default: train one)")
  parser.add_argument("--isic-workdir", help="a trained ISIC 2018 Task 3 experiment run (default: "
                      "train one)")
  parser.add_argument("--budget-s", type=float, default=180.0, help="training budget of each run "
                      "this script trains")
  parser.add_argument("--calibration-images", type=int, default=200)
  parser.add_argument("--latency-calls", type=int, default=50)
  parser.add_argument("--float-layer", action="append", default=[], metavar="REGEX",
                      help="one more int8 export per REGEX, keeping the layers it matches "
                      "float (export --float-layer)")
  parser.add_argument("--no-append", action="store_true")
  args = parser.parse_args(argv)
  given = {"ph2": args.ph2_workdir, "isic_t3": args.isic_workdir}
  names = args.experiments.split(",")
  unknown = sorted(set(names) - set(EXPERIMENTS))
  if unknown:
    raise SystemExit(f"--experiments: unknown {unknown}; choose from {sorted(EXPERIMENTS)}")
  command = "python " + shlex.join([os.path.relpath(__file__, Path.cwd())] + sys.argv[1:])
  rows, trained = [], []
  with tempfile.TemporaryDirectory(prefix="flaxderm-export-bench-") as scratch:
    for name in names:
      experiment, data, _, _ = EXPERIMENTS[name]
      workdir = Path(given[name]) if given[name] else Path(scratch) / f"{name}-run"
      if not given[name]:
        _train(experiment, data, args.budget_s, workdir)
      trained.append(f"{name}: `{experiment}` {'reused from ' + str(workdir) if given[name] else f'trained {args.budget_s:g} s here'}")
      rows.extend(benchmark(name, workdir, Path(scratch), args))
  metrics_text = "; ".join(f"{n}: {EXPERIMENTS[n][3]} (`{EXPERIMENTS[n][2]}`)" for n in names)
  lines = [
      f"## TFLite export: float32, float16, int8 (#34), {datetime.date.today().isoformat()}", "",
      f"- command: `{command}`",
      f"- machine: {environment.cpu()}; versions: {environment.versions(PACKAGES)}",
      f"- runs: {'; '.join(trained)}",
      f"- metric: {metrics_text}, on the run's validation cases at the model's input size, the "
      "same cases for every format; Δ: points (x100) against JAX; agreement: pixels (at 0.5) or "
      "classes equal to JAX's",
      f"- latency: TFLite interpreter, 1 thread, batch 1, median of {args.latency_calls} calls "
      "after a warm-up, the whole exported graph (test-time augmentation included)", "",
      "| experiment | model | size (MiB) | latency (ms/image) | metric | Δ vs JAX (points) | "
      "agreement | notes |", "|---|---|---:|---:|---:|---:|---:|---|", *rows, ""]
  environment.record("\n".join(lines), append=not args.no_append)


if __name__ == "__main__":
  main()
