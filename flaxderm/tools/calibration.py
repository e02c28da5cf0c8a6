"""Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017)::

    python launch.py evaluate --workdir RUN --calibrate [--params last|best] [--ema | --no-ema]
        [--tta none|hflip|flips]

fits one scalar T > 0 on the run's validation split -- the T minimising the negative
log-likelihood of ``softmax(logits / T)`` (``sigmoid`` for one output channel) -- and writes it
to ``RUN/calibration.json`` with the calibration (``metrics.calibration``: ECE, MCE, adaptive ECE,
Brier, NLL) on that split before and after; for a cross-validation run, each fold on its own
validation split into ``fold_i/calibration.json``. ``flaxderm.load_run`` (and so ``launch.py
predict`` and ``export``) then divides the logits by T. Dividing by T keeps every argmax and
the sign of every sigmoid logit, so masks, predicted classes and the thresholded metrics are
unchanged: only the probabilities move. ``launch.py evaluate`` scores the model as trained (the
probabilities of its ``cases.csv`` are before scaling).

Segmentation fits on the pixels of a regular grid of at most ``MAX_GRID`` x ``MAX_GRID`` per
image (neighbouring pixels carry nearly the same information), so a large validation set fits in
host memory; the before/after numbers are over the same pixels.

Fitting is exact and deterministic: the NLL is convex in 1 / T (a log-sum-exp of functions
linear in it), so a Newton iteration on 1 / T, safeguarded by bisecting (on a log scale) the
bracket where the derivative changes sign, finds the minimum to machine precision in a few
steps. T is kept in ``TEMPERATURE_RANGE``;
a validation set the model separates perfectly drives T to its lower end.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import jax
import numpy as np
from scipy import special

from flaxderm import metrics as metrics_lib
from flaxderm.tools import run as run_lib
from flaxderm.train import config as config_lib
from flaxderm.train import parallel as parallel_lib
from flaxderm.train import scoring
from flaxderm.train import setup
from flaxderm.train import step as step_lib
from flaxderm.train.lock import RunLock

log = logging.getLogger(__name__)

TEMPERATURE_RANGE = (0.01, 100.0)
MAX_GRID = 128
NUM_BINS = 15


def _checked_logits(logits, labels) -> tuple[np.ndarray, np.ndarray]:
  z, y = np.asarray(logits, np.float64), np.asarray(labels)
  if z.ndim < 1 or z.shape[:-1] != y.shape or z.shape[-1] < 1 or y.size == 0:
    raise ValueError(f"fit_temperature: expected logits (..., C) and labels (...), got "
                     f"{tuple(z.shape)} and {tuple(y.shape)}")
  z, y = z.reshape(-1, z.shape[-1]), y.reshape(-1)
  classes = max(z.shape[1], 2)
  if not np.all(np.isfinite(z)) or not np.isin(y, np.arange(classes)).all():
    raise ValueError(f"fit_temperature: logits must be finite and labels class ids "
                     f"0..{classes - 1}")
  return z, y.astype(np.int64)


def _nll_slope(z: np.ndarray, y: np.ndarray, beta: float) -> tuple[float, float]:
  """(first, second) derivative in ``beta`` = 1 / T of the mean NLL of the logits scaled by
  ``beta``. One channel: sigmoid with 0/1 labels; else softmax, where they are the mean of
  E[z] - z_label and of Var[z] under softmax(beta z)."""
  if z.shape[1] == 1:
    z = z[:, 0]
    p = special.expit(beta * z)
    return float(np.mean(z * (p - y))), float(np.mean(z * z * p * (1 - p)))
  scaled = beta * z
  p = np.exp(scaled - special.logsumexp(scaled, axis=1, keepdims=True))
  mean = np.sum(p * z, axis=1)
  true = z[np.arange(len(y)), y]
  return float(np.mean(mean - true)), float(np.mean(np.sum(p * z * z, axis=1) - mean**2))


def fit_temperature(logits, labels, *, max_iterations: int = 100) -> float:
  """The temperature T in ``TEMPERATURE_RANGE`` minimising the mean NLL of ``logits / T``.

  logits: ``(..., C)``; C == 1 is a sigmoid output with 0/1 ``labels``, C >= 2 a softmax one
  with class ids; ``labels`` has the logits' shape without the class axis.
  """
  z, y = _checked_logits(logits, labels)
  lo, hi = 1 / TEMPERATURE_RANGE[1], 1 / TEMPERATURE_RANGE[0]  # the bracket on beta = 1 / T
  if _nll_slope(z, y, lo)[0] >= 0:
    return TEMPERATURE_RANGE[1]
  if _nll_slope(z, y, hi)[0] <= 0:
    return TEMPERATURE_RANGE[0]
  beta = 1.0
  for _ in range(max_iterations):
    slope, curvature = _nll_slope(z, y, beta)
    if slope < 0:
      lo = beta
    else:
      hi = beta
    newton = beta - slope / curvature if curvature > 0 else math.nan
    if abs(newton - beta) <= 1e-12 * beta:
      break
    beta = newton if lo < newton < hi else math.sqrt(lo * hi)  # bisect on the log scale of T
  return 1 / beta


def scaled_probabilities(logits: np.ndarray, task: str, temperature: float) -> np.ndarray:
  """What ``Run.probabilities`` reports for ``logits / temperature``, as float64 numpy."""
  return np.asarray(run_lib.probabilities_of(np.asarray(logits) / temperature, task), np.float64)


# ------------------------------------------------------------------------------------------------
# A run directory.


def _validation_logits(workdir: Path, cfg, task: step_lib.Task, model, state, use_ema: bool,
                       batch_size: int, par: parallel_lib.DataParallel
                       ) -> tuple[np.ndarray, np.ndarray, int]:
  """(logits (M, C), labels (M,), number of cases) of the run's validation split; M is the cases
  for classification, the grid pixels of every case for segmentation."""
  predict_step = step_lib.make_predict_step(model, cfg, use_ema=use_ema)
  predict = par.compile_case_step(
      lambda state, inputs: predict_step(state, inputs["image"], *step_lib.metadata_of(inputs)))
  data_cfg = setup.eval_data_config(cfg)
  logits, labels, cases = [], [], 0
  with jax.set_mesh(par.mesh):
    for batch in scoring.eval_batches(data_cfg, data_cfg.eval_split, batch_size):
      inputs = {k: batch[k] for k in ("image", "metadata") if k in batch}
      out = par.gather(predict(state, par.shard_batch(inputs)))
      valid = par.gather(np.asarray(batch["valid"])) > 0
      truth = par.gather(np.asarray(batch[task.label_key]))
      out, truth = out[valid], truth[valid]
      if task.kind == "segmentation":
        stride = math.ceil(max(out.shape[1:3]) / MAX_GRID)
        out, truth = out[:, ::stride, ::stride], truth[:, ::stride, ::stride]
      logits.append(out.reshape(-1, out.shape[-1]))
      labels.append(truth.reshape(-1))
      cases += int(valid.sum())
  if not cases:
    raise ValueError(f"{workdir}: the validation split is empty")
  return np.concatenate(logits), np.concatenate(labels), cases


def _calibrate_one(workdir: Path, *, params: str | None, use_ema: bool | None, tta: str | None,
                   batch_size: int | None) -> dict[str, Any]:
  if not config_lib.has_validation(run_lib.run_config(workdir)):  # before reading checkpoints
    raise ValueError(f"{workdir} trained on all of its data (data.split='all'): it has no "
                     "validation split to fit a temperature on")
  par = parallel_lib.DataParallel("auto")
  run = run_lib.restore(workdir, params=params, use_ema=use_ema, tta=tta, par=par)
  cfg = run.cfg
  batch_size = batch_size or cfg.eval.batch_size
  par.check_batch_size(batch_size, "eval.batch_size")
  task = setup.make_task(cfg, run.info)
  logits, labels, cases = _validation_logits(workdir, cfg, task, run.model, run.state,
                                             run.use_ema, batch_size, par)
  temperature = fit_temperature(logits, labels)

  def scores(t: float) -> dict[str, float]:
    return metrics_lib.calibration(scaled_probabilities(logits, task.kind, t), labels,
                                   num_bins=NUM_BINS)

  result = {"temperature": temperature, "run": str(workdir), "dataset": cfg.data.name,
            "split": setup.eval_data_config(cfg).eval_split, "params": run.params,
            "ema": run.use_ema, "tta": cfg.eval.tta, "step": run.step, "cases": cases,
            "predictions": int(len(labels)),
            "num_bins": NUM_BINS, "before": scores(1.0), "after": scores(temperature)}
  log.info("%s: temperature %.4f on %d validation predictions (NLL %.4f -> %.4f)", workdir,
           temperature, len(labels), result["before"]["nll"], result["after"]["nll"])
  return result


def calibrate_run(workdir: str | Path, *, params: str | None = None, use_ema: bool | None = None,
                  tta: str | None = None, batch_size: int | None = None) -> list[dict[str, Any]]:
  """Fits and stores the temperature of the run in ``workdir`` (or of each of its folds); see
  the module docstring. Returns what was written, one dict per run."""
  results = []
  for directory in run_lib.run_directories(workdir):
    with RunLock(directory, "calibration") if jax.process_index() == 0 else (
        contextlib.nullcontext()):
      result = _calibrate_one(directory, params=params, use_ema=use_ema, tta=tta,
                              batch_size=batch_size)
      if jax.process_index() == 0:
        (directory / run_lib.CALIBRATION).write_text(json.dumps(result, indent=2) + "\n")
    results.append(result)
  return results


def format_results(results: list[dict[str, Any]]) -> str:
  """One table row per run: its temperature and each calibration score before -> after."""
  keys = ("ece", "mce", "adaptive_ece", "brier", "nll")
  header = ["run", "T", *keys]
  rows = [[Path(r["run"]).name, f"{r['temperature']:.4f}",
           *(f"{r['before'][k]:.4f} -> {r['after'][k]:.4f}" for k in keys)] for r in results]
  widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
  return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths))
                   for row in [header, *rows])
