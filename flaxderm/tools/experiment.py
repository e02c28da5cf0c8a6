"""Running an experiment: ``flaxderm EXPERIMENT[:ARG] [--config.KEY=VALUE ...]`` (or ``python
launch.py ...``) trains it, its ``sweep()`` or its K cross-validation folds::

    flaxderm EXPERIMENT[:runlocal] [--config.KEY=VALUE ...] [--workdir DIR] [--resume]
    flaxderm EXPERIMENT --sweep               # every run of the experiment's sweep()
    flaxderm EXPERIMENT --folds K [--resume]  # K-fold cross-validation into fold_i/
    flaxderm --list                           # experiments, one line each

EXPERIMENT names a file ``experiments/EXPERIMENT.py`` (installed as ``flaxderm.experiments``)
whose ``get_config(arg)`` returns the config (``:runlocal`` passes "runlocal": a seconds-long
smoke run of the same experiment). Multi-host: ``--coordinator_address HOST:PORT --num_processes
N --process_id I`` on every process, or nothing under SLURM / Open MPI (detected). The work
directory defaults to ``runs/EXPERIMENT``.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.resources
from pathlib import Path
from types import ModuleType

import ml_collections

from flaxderm import experiments as experiments_package
from flaxderm import tools
from flaxderm.hints import did_you_mean
from flaxderm.train import config as config_lib

DEFAULT_EXPERIMENT = "default"


def experiment_names() -> list[str]:
  """Runnable experiments: the modules of ``flaxderm.experiments`` not starting with "_" (those
  hold config pieces that several experiments share)."""
  folder = importlib.resources.files(experiments_package)
  return sorted(Path(p.name).stem for p in folder.iterdir()
                if p.name.endswith(".py") and not p.name.startswith("_"))


def load_experiment(name: str) -> ModuleType:
  """The module ``experiments/<name>.py``; ValueError naming the close matches when absent."""
  if name not in experiment_names():
    hint = did_you_mean(name, experiment_names(), cutoff=0.4)
    raise ValueError(f"unknown experiment {name!r}{hint}; flaxderm --list shows all")
  return importlib.import_module(f"{experiments_package.__name__}.{name}")


def summary(module: ModuleType) -> str:
  return (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""


def experiment_config(spec: str, overrides: list[str]) -> ml_collections.ConfigDict:
  """The config of ``NAME[:ARG]`` with ``--config.key=value`` overrides applied."""
  name, _, arg = spec.partition(":")
  cfg = load_experiment(name).get_config(arg or None)
  for item in overrides:
    key, sep, value = item[len("--config."):].partition("=")
    if not sep:
      raise ValueError(f"{item}: write overrides as --config.KEY=VALUE")
    config_lib.apply_override(cfg, key, value)
  return cfg


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("experiment", nargs="?", default=DEFAULT_EXPERIMENT,
                      help="experiments/NAME.py (optionally NAME:ARG)")
  parser.add_argument("--list", action="store_true", help="list the experiments and exit")
  parser.add_argument("--workdir", help="run directory (default runs/EXPERIMENT)")
  parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
  parser.add_argument("--sweep", action="store_true",
                      help="run every config of the experiment's sweep() into workdir/<name>")
  parser.add_argument("--folds", type=int, metavar="K",
                      help="K-fold cross-validation (lesion-grouped, stratified): every fold into "
                      "workdir/fold_i, then workdir/cv_summary.json (see tools/crossval.py)")
  parser.add_argument("--coordinator_address", help="multi-host: HOST:PORT of process 0")
  parser.add_argument("--num_processes", type=int, help="multi-host: number of processes")
  parser.add_argument("--process_id", type=int, help="multi-host: this process's index")


def _runs(args: argparse.Namespace) -> list[tuple[Path, ml_collections.ConfigDict]]:
  """(run directory, config) of each run the command asks for."""
  name = args.experiment.partition(":")[0]
  workdir = Path(args.workdir or Path("runs") / name)
  if not args.sweep:
    return [(workdir, experiment_config(args.experiment, args.overrides))]
  module = load_experiment(name)
  if not hasattr(module, "sweep"):
    raise ValueError(f"experiment {name!r} defines no sweep()")
  runs = []
  for run_name, changes in module.sweep():
    cfg = experiment_config(args.experiment, args.overrides)
    for key, value in changes.items():
      config_lib.apply_override(cfg, key, str(value))
    runs.append((workdir / run_name, cfg))
  return runs


def main(args: argparse.Namespace) -> int:
  if args.list:
    for name in experiment_names():
      print(f"{name:32s} {summary(load_experiment(name))}")
    return 0
  runs = _runs(args)  # a bad name or key fails here, before the engine's slow imports
  tools.hide_gpus_from_tensorflow()
  _train(args, runs)
  return 0


def _train(args: argparse.Namespace, runs: list[tuple[Path, ml_collections.ConfigDict]]) -> None:
  from flaxderm.tools import crossval  # pylint: disable=g-import-not-at-top
  from flaxderm.train import loop  # pylint: disable=g-import-not-at-top
  from flaxderm.train import parallel  # pylint: disable=g-import-not-at-top

  parallel.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
  for run_dir, cfg in runs:
    if args.folds is not None:
      cv = crossval.train_folds(cfg, run_dir, args.folds, resume=args.resume)
      print(crossval.format_table(cv), flush=True)
      print(f"{run_dir}: {args.folds}-fold summary in {run_dir / crossval.CV_SUMMARY}", flush=True)
      continue
    results = loop.train(cfg, run_dir, resume=args.resume)
    metric = results["best_metric"]
    if not results["validation"]:
      print(f"{run_dir}: trained on all of the data (step {results['step']}); score it with "
            f"python launch.py evaluate --workdir {run_dir} --manual-dir DIR", flush=True)
      continue
    print(f"{run_dir}: validation {metric} = {results['validation'][metric]:.4f} "
          f"({results['params']} params, step {results['params_step']})", flush=True)
