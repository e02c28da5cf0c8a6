"""flaxderm's entry point: parses the command line, then hands over to the engine.

    python launch.py                                  # the default experiment (a few CPU minutes)
    python launch.py EXPERIMENT[:runlocal] [--config.KEY=VALUE ...] [--workdir DIR] [--resume]
    python launch.py EXPERIMENT --sweep               # every run of the experiment's sweep()
    python launch.py EXPERIMENT --folds K [--resume]  # K-fold cross-validation into fold_i/
    python launch.py --list                           # experiments, one line each
    python launch.py evaluate --workdir RUN [--manual-dir DIR] [--params last|best]
        [--ema | --no-ema] [--tta none|hflip|flips] [--calibrate]  # see flaxderm/calibration.py
    python launch.py compare RUN_A RUN_B [--manual-dir DIR] [--metric KEY] [--samples N]
        [--seed S]                                    # paired bootstrap, see flaxderm/compare.py
    python launch.py predict --workdir RUN --out DIR INPUT... [--params ...] [--ema | --no-ema]
        [--tta ...] [--batch-size N] [--largest-component] [--fill-holes] [--save-probabilities]
        [--overwrite]                                 # see flaxderm/predict.py
    python launch.py export --workdir RUN --format onnx|savedmodel|tflite --out PATH
        [--params ...] [--ema | --no-ema] [--tta ...]  # see flaxderm/export.py
    python launch.py explain --workdir RUN --out DIR INPUT... [--method gradcam|gradcampp|
        integrated_gradients|saliency] [--target CLASS] [--layer NAME]  # see flaxderm/explain.py
    python launch.py report --workdir RUN [--cases N]  # RUN/report/index.html, flaxderm/report.py

EXPERIMENT names a file ``experiments/EXPERIMENT.py`` whose ``get_config(arg)`` returns the config
(``:runlocal`` passes "runlocal": a seconds-long smoke run of the same experiment). Multi-host:
``--coordinator_address HOST:PORT --num_processes N --process_id I`` on every process, or nothing
under SLURM / Open MPI (detected). The work directory defaults to ``runs/EXPERIMENT``.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import json
import logging
import os
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent
EXPERIMENTS = ROOT / "experiments"
DEFAULT_EXPERIMENT = "default"


def experiment_names() -> list[str]:
  return sorted(p.stem for p in EXPERIMENTS.glob("*.py") if not p.stem.startswith("_"))


def load_experiment(name: str) -> ModuleType:
  """The module ``experiments/<name>.py``; ValueError naming the close matches when absent."""
  path = EXPERIMENTS / f"{name}.py"
  if not path.is_file():
    close = difflib.get_close_matches(name, experiment_names(), n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown experiment {name!r}{hint} (python launch.py --list shows all)")
  if str(ROOT) not in sys.path:  # experiments import their shared pieces as experiments.*
    sys.path.insert(0, str(ROOT))
  return importlib.import_module(f"experiments.{name}")


def summary(module: ModuleType) -> str:
  return (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""


def experiment_config(spec: str, overrides: list[str]):
  """The config of ``NAME[:ARG]`` with ``--config.key=value`` overrides applied."""
  from flaxderm.train import config as config_lib  # pylint: disable=g-import-not-at-top

  name, _, arg = spec.partition(":")
  cfg = load_experiment(name).get_config(arg or None)
  for item in overrides:
    key, sep, value = item[len("--config."):].partition("=")
    if not sep:
      raise ValueError(f"{item}: write overrides as --config.KEY=VALUE")
    config_lib.apply_override(cfg, key, value)
  return cfg


def _hide_gpus_from_tensorflow() -> None:
  """TFDS imports TensorFlow, which would reserve GPU memory JAX needs; it only reads files."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  tf.config.set_visible_devices([], "GPU")


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("experiment", nargs="?", default=DEFAULT_EXPERIMENT,
                      help="experiments/NAME.py (optionally NAME:ARG), or a run tool: "
                      f"{', '.join(RUN_TOOLS)} (launch.py TOOL --help)")
  parser.add_argument("--list", action="store_true", help="list the experiments and exit")
  parser.add_argument("--workdir", help="run directory (default runs/EXPERIMENT)")
  parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
  parser.add_argument("--sweep", action="store_true",
                      help="run every config of the experiment's sweep() into workdir/<name>")
  parser.add_argument("--folds", type=int, metavar="K",
                      help="K-fold cross-validation (lesion-grouped, stratified): every fold into "
                      "workdir/fold_i, then workdir/cv_summary.json (see flaxderm/crossval.py)")
  parser.add_argument("--coordinator_address", help="multi-host: HOST:PORT of process 0")
  parser.add_argument("--num_processes", type=int, help="multi-host: number of processes")
  parser.add_argument("--process_id", type=int, help="multi-host: this process's index")
  return parser


def _train(args, overrides: list[str]) -> None:
  from flaxderm.train import config as config_lib  # pylint: disable=g-import-not-at-top
  from flaxderm.train import loop  # pylint: disable=g-import-not-at-top

  name = args.experiment.partition(":")[0]
  workdir = Path(args.workdir or Path("runs") / name)
  cfg = experiment_config(args.experiment, overrides)
  runs = [(workdir, cfg)]
  if args.sweep:
    module = load_experiment(name)
    if not hasattr(module, "sweep"):
      raise ValueError(f"experiment {name!r} defines no sweep()")
    runs = []
    for run_name, changes in module.sweep():
      run_cfg = experiment_config(args.experiment, overrides)
      for key, value in changes.items():
        config_lib.apply_override(run_cfg, key, str(value))
      runs.append((workdir / run_name, run_cfg))
  for run_dir, run_cfg in runs:
    if args.folds is not None:
      from flaxderm import crossval  # pylint: disable=g-import-not-at-top

      summary = crossval.train_folds(run_cfg, run_dir, args.folds, resume=args.resume)
      print(crossval.format_table(summary), flush=True)
      print(f"{run_dir}: {args.folds}-fold summary in {run_dir / crossval.CV_SUMMARY}", flush=True)
      continue
    results = loop.train(run_cfg, run_dir, resume=args.resume)
    metric = results["best_metric"]
    if not results["validation"]:
      print(f"{run_dir}: trained on all of the data (step {results['step']}); score it with "
            f"python launch.py evaluate --workdir {run_dir} --manual-dir DIR", flush=True)
      continue
    print(f"{run_dir}: validation {metric} = {results['validation'][metric]:.4f} "
          f"({results['params']} params, step {results['params_step']})", flush=True)


def _tool_parser(name: str, module: ModuleType) -> argparse.ArgumentParser:
  """The parser of a run tool, with the options they all share: which run and which of its
  parameters."""
  parser = argparse.ArgumentParser(prog=f"launch.py {name}", description=module.__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="the training run (or CV run) directory")
  parser.add_argument("--params", choices=("last", "best"),
                      help="which parameters (default: the run's config.final_params)")
  parser.add_argument("--ema", action=argparse.BooleanOptionalAction,
                      help="use the EMA of the parameters, or not (default: config.use_ema)")
  parser.add_argument("--tta", help="test-time augmentation, none|hflip|flips (default: the "
                      "run's config.eval.tta)")
  return parser


def _evaluate(argv: list[str]) -> None:
  from flaxderm import evaluate  # pylint: disable=g-import-not-at-top

  parser = _tool_parser("evaluate", evaluate)
  parser.add_argument("--manual-dir", help="score all of the dataset in this folder")
  parser.add_argument("--calibrate", action="store_true", help="first fit the temperature on "
                      "the validation split into RUN/calibration.json (flaxderm/calibration.py)")
  args = parser.parse_args(argv)
  if args.calibrate:
    from flaxderm import calibration  # pylint: disable=g-import-not-at-top

    fitted = calibration.calibrate_run(args.workdir, params=args.params, use_ema=args.ema,
                                       tta=args.tta)
    print(calibration.format_results(fitted), flush=True)
  metrics = evaluate.evaluate_run(args.workdir, manual_dir=args.manual_dir, params=args.params,
                                  use_ema=args.ema, tta=args.tta)
  print(evaluate.json_line(metrics), flush=True)


def _predict(argv: list[str]) -> None:
  from flaxderm import predict  # pylint: disable=g-import-not-at-top

  parser = _tool_parser("predict", predict)
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, globs")
  parser.add_argument("--batch-size", type=int, default=8)
  parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
  parser.add_argument("--largest-component", action="store_true",
                      help="segmentation: keep the largest connected lesion region")
  parser.add_argument("--fill-holes", action="store_true", help="segmentation: fill mask holes")
  parser.add_argument("--save-probabilities", action="store_true",
                      help="segmentation: also write <id>_probability.png (16-bit)")
  parser.add_argument("--no-progress", action="store_true", help="no progress bar")
  args = parser.parse_args(argv)
  summary = predict.predict_files(
      args.workdir, args.inputs, args.out, params=args.params, use_ema=args.ema, tta=args.tta,
      batch_size=args.batch_size, overwrite=args.overwrite,
      largest_component=args.largest_component, fill_holes=args.fill_holes,
      save_probabilities=args.save_probabilities, progress=not args.no_progress)
  print(f"{summary['predicted']} images predicted into {summary['out']} "
        f"({summary['skipped']} skipped) in {summary['seconds']:.1f} s: "
        f"{summary['images_per_s']:.2f} images/s including decoding", flush=True)


def _export(argv: list[str]) -> None:
  from flaxderm import export  # pylint: disable=g-import-not-at-top

  parser = _tool_parser("export", export)
  parser.add_argument("--format", required=True, choices=export.FORMATS)
  parser.add_argument("--out", required=True, help="file (onnx, tflite) or folder (savedmodel)")
  parser.add_argument("--batch-size", type=int, default=1,
                      help="tflite: the batch when the converter needs a fixed one")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing export")
  args = parser.parse_args(argv)
  card = export.export_run(args.workdir, args.format, args.out, params=args.params,
                           use_ema=args.ema, tta=args.tta, batch_size=args.batch_size,
                           overwrite=args.overwrite)
  print(f"exported {card['architecture']['name']} ({card['format']}, input "
        f"{card['input']['shape']}) to {args.out}; model card {args.out}.card.md", flush=True)


def _compare(argv: list[str]) -> None:
  from flaxderm import compare  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(prog="launch.py compare", description=compare.__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("runs", nargs=2, metavar="RUN", help="the two run (or CV run) directories")
  parser.add_argument("--manual-dir", help="score both runs on all of the dataset in this folder "
                      "first (when their evaluation is missing or of other data)")
  parser.add_argument("--metric", help="default: dice/per_image (segmentation), "
                      "balanced_accuracy (classification)")
  parser.add_argument("--samples", type=int, default=10000, help="bootstrap resamples")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  result = compare.compare_runs(*args.runs, manual_dir=args.manual_dir, metric=args.metric,
                                samples=args.samples, seed=args.seed)
  print(compare.format_table(result), flush=True)
  print(json.dumps(result, sort_keys=True), flush=True)


def _explain(argv: list[str]) -> None:
  from flaxderm import explain  # pylint: disable=g-import-not-at-top

  parser = _tool_parser("explain", explain)
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, globs")
  parser.add_argument("--method", choices=explain.METHODS, default="gradcam")
  parser.add_argument("--target", help="classification: the class explained, a name or index "
                      "(default: the predicted class)")
  parser.add_argument("--layer", help="gradcam/gradcampp: the module path whose map is used")
  parser.add_argument("--steps", type=int, default=explain.DEFAULT_STEPS,
                      help="integrated_gradients: points on the path")
  parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
  args = parser.parse_args(argv)
  if args.tta not in (None, "none"):
    raise ValueError("--tta: explanations follow one view of each image (--tta none)")
  summary = explain.explain_files(
      args.workdir, args.inputs, args.out, method=args.method, target=args.target,
      layer=args.layer, steps=args.steps, params=args.params, use_ema=args.ema,
      overwrite=args.overwrite)
  layer = f" at layer {summary['layer']}" if summary["layer"] else ""
  print(f"{len(summary['written'])} {summary['method']} maps{layer} written to {summary['out']}",
        flush=True)


def _report(argv: list[str]) -> None:
  from flaxderm import report  # pylint: disable=g-import-not-at-top

  parser = _tool_parser("report", report)
  parser.add_argument("--cases", type=int, default=report.DEFAULT_CASES,
                      help="how many worst cases / confident mistakes to show")
  args = parser.parse_args(argv)
  path = report.write_report(args.workdir, params=args.params, use_ema=args.ema, tta=args.tta,
                             cases=args.cases)
  print(f"report written to {path}", flush=True)


# Tools applied to trained runs: ``launch.py TOOL --workdir RUN ...`` (compare: RUN_A RUN_B).
RUN_TOOLS = {"evaluate": _evaluate, "predict": _predict, "export": _export, "compare": _compare,
             "explain": _explain, "report": _report}


def _quiet_logging() -> None:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "jax._src", "orbax", "tensorflow"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  # TensorFlow (under TFDS) only reads files: quiet, and away from the GPUs JAX uses.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def main(argv: list[str]) -> int:
  if argv and argv[0] in RUN_TOOLS:
    _quiet_logging()
    _hide_gpus_from_tensorflow()
    try:
      RUN_TOOLS[argv[0]](argv[1:])
    except ValueError as e:
      print(f"error: {e}", file=sys.stderr)
      return 1
    except KeyboardInterrupt:
      return 130
    return 0
  args, rest = _parser().parse_known_args(argv)
  overrides = [a for a in rest if a.startswith("--config.")]
  unknown = [a for a in rest if not a.startswith("--config.")]
  if unknown:
    print(f"launch.py: unrecognised arguments {unknown}; see python launch.py --help",
          file=sys.stderr)
    return 2
  if args.list:
    for name in experiment_names():
      print(f"{name:32s} {summary(load_experiment(name))}")
    return 0
  _quiet_logging()
  try:  # a bad name or key fails before the slow imports
    experiment_config(args.experiment, overrides)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  _hide_gpus_from_tensorflow()
  from flaxderm.train import loop  # pylint: disable=g-import-not-at-top
  from flaxderm.train import parallel  # pylint: disable=g-import-not-at-top

  try:
    parallel.initialize_distributed(args.coordinator_address, args.num_processes,
                                    args.process_id)
    _train(args, overrides)
  except (ValueError, loop.NonFiniteLossError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    return 130
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
