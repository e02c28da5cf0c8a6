"""The training loop: ``train(config, workdir, resume=...)``.

One readable function, in the order a run happens: mesh -> data and model -> state (fresh or
restored) -> compiled steps -> loop (update, log, evaluate, checkpoint) -> final scoring.

Run directory (``workdir``)::

    config.json        the full config of the run (``launch.py evaluate`` reads it)
    run_info.json      task, classes and model outputs found from the data
    .lock              held while a process trains or evaluates here (see train/lock.py)
    metrics.jsonl      one JSON object per log/eval event; tensorboard/ the same as event files
    checkpoints/       the latest N resumable checkpoints; best/ the best validation weights
    predictions.png    validation image | truth | prediction overlays (segmentation)
    results.json       the final validation metrics and where they came from
    nonfinite_batch.json   written when a non-finite loss stops the run: step and example ids

Timing: ``budget_s`` counts training time only (input, update and logging), not compilation,
evaluation or checkpoint writing, and the schedule follows ``elapsed / budget_s``. Ctrl-C (or
SIGTERM) stops after the current step and saves a checkpoint; a second Ctrl-C aborts at once.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from flaxderm import metrics as metrics_lib
from flaxderm import subgroups
from flaxderm.data import clinical
from flaxderm.data import pipeline
from flaxderm.data import sources
from flaxderm.data import splits
from flaxderm.train import checkpoint as checkpoint_lib
from flaxderm.train import config as config_lib
from flaxderm.train import logs
from flaxderm.train import optim
from flaxderm.train import parallel as parallel_lib
from flaxderm.train import scoring
from flaxderm.train import setup
from flaxderm.train import step as step_lib
from flaxderm.train import visualize
from flaxderm.train.lock import RunLock
from flaxderm.train.state import TrainState, create_train_state

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
  """The loss or the gradient became NaN/inf; the message says at which step (flaxderm/cli.py
  reports a FloatingPointError in one line, like a ValueError)."""


class _StopOnSignal:
  """SIGINT/SIGTERM set ``requested`` so the loop can save and stop between steps; a second
  SIGINT raises KeyboardInterrupt at once. Only the main thread can install handlers."""

  def __init__(self):
    self.requested = False
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = True
    print(f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint "
          "(Ctrl-C again to abort without saving)", flush=True)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGINT, signal.SIGTERM):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


@dataclasses.dataclass
class _Schedule:
  """When things happen, in steps (0 = never, but for the end of training)."""
  steps_per_epoch: int
  total_steps: int  # 0: only the time budget ends the run
  eval_every: int
  checkpoint_every: int
  log_every: int
  budget_s: float

  def done(self, step: int, elapsed_s: float) -> bool:
    return ((self.total_steps > 0 and step >= self.total_steps)
            or (self.budget_s > 0 and elapsed_s >= self.budget_s))

  def progress(self, step: int, elapsed_s: float) -> float:
    """Schedule position in [0, 1]: over the budget when there is one, else over the steps."""
    if self.budget_s > 0:
      return min(elapsed_s / self.budget_s, 1.0)
    return min(step / self.total_steps, 1.0)

  @staticmethod
  def due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def _make_schedule(cfg: ml_collections.ConfigDict, num_train: int) -> _Schedule:
  steps_per_epoch = num_train // cfg.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"config.batch_size={cfg.batch_size} is larger than the {num_train} training "
                     "examples")
  total = cfg.num_steps or cfg.num_epochs * steps_per_epoch
  eval_every = cfg.eval.every_steps or cfg.eval.every_epochs * steps_per_epoch
  return _Schedule(steps_per_epoch, total, eval_every, cfg.checkpoint.every_steps or eval_every,
                   cfg.log_every_steps, cfg.budget_s)


def _num_examples(data_cfg: ml_collections.ConfigDict, split: str) -> int:
  source = sources.open_source(data_cfg)
  return len(splits.resolve_split(source, data_cfg, split)[1])


def _better(value: float, best: float | None, mode: str) -> bool:
  if not np.isfinite(value):
    return False
  return best is None or (value > best if mode == "max" else value < best)


def train(cfg: ml_collections.ConfigDict, workdir: str | Path, *, resume: bool = False
          ) -> dict[str, Any]:
  """Trains ``cfg`` into ``workdir``; returns the final summary (also in ``results.json``) and,
  under "state", the final ``TrainState`` (holding the scored parameters: last or best).

  Raises ValueError for a bad config or a missing dataset (RunDirectoryBusyError when another
  process uses ``workdir``), NonFiniteLossError when the loss diverges, and KeyboardInterrupt
  after saving when interrupted.
  """
  cfg = ml_collections.ConfigDict(cfg.to_dict())  # never modify the caller's config
  config_lib.validate_config(cfg)
  workdir = Path(workdir).resolve()
  is_main = jax.process_index() == 0
  # Every process of a multi-host run shares the directory; process 0 holds it for all of them.
  with RunLock(workdir, "training") if is_main else contextlib.nullcontext():
    return _train(cfg, workdir, is_main=is_main, resume=resume)


def _train(cfg: ml_collections.ConfigDict, workdir: Path, *, is_main: bool, resume: bool
           ) -> dict[str, Any]:
  workdir.mkdir(parents=True, exist_ok=True)

  # ---------------------------------------------------------------------------- mesh and inputs
  par = parallel_lib.DataParallel(cfg.parallel)
  par.check_batch_size(cfg.batch_size, "batch_size")
  par.check_batch_size(cfg.eval.batch_size, "eval.batch_size")
  info = setup.run_info(cfg)
  cfg = setup.with_metadata_vocabulary(cfg)
  model = setup.make_model(cfg, info)
  variables, labels, weights_normalization = setup.init_variables(model, cfg)
  cfg = setup.with_input_normalization(cfg, weights_normalization)
  task = setup.make_task(cfg, info, loss_options=setup.count_loss_options(cfg, info))
  eval_data = setup.eval_data_config(cfg)
  validating = config_lib.has_validation(cfg)  # False: trains on all, scored by launch.py evaluate
  if validating:
    setup.dataset_info(eval_data)  # a missing validation dataset fails now, not after training
  best_metric = cfg.eval.best_metric or task.default_metric
  select_field = config_lib.selection_field(cfg)
  schedule = _make_schedule(cfg, _num_examples(cfg.data, cfg.data.train_split))

  # ------------------------------------------------------------------------------------- state
  tx = optim.make_optimizer(cfg.optimizer, variables["params"], labels=labels)
  state = par.replicate(create_train_state(variables, tx, seed=cfg.seed,
                                           ema=cfg.optimizer.ema_decay > 0))
  del variables
  checkpoints = checkpoint_lib.Checkpointer(workdir, keep=cfg.checkpoint.keep)
  latest = checkpoints.latest_step()
  if latest is not None and not resume:
    raise ValueError(f"{workdir} already holds a run (checkpoint at step {latest}): pass --resume "
                     "to continue it, or choose another --workdir")

  def train_iterator(seed):
    return pipeline.make_train_iterator(cfg.data, global_batch_size=cfg.batch_size, seed=seed,
                                        process_index=jax.process_index(),
                                        process_count=jax.process_count())

  batches = train_iterator(cfg.seed)
  meta = {"elapsed_s": 0.0, "best": None}
  if latest is not None:
    state, meta, data_restored = checkpoints.restore(state, batches, par.replicated)
    if not data_restored:  # another process count: a fresh stream, not a replay of seen batches
      batches = train_iterator(cfg.seed + latest)
    log.info("resumed from step %d of %s", latest, workdir)
  elif resume:
    log.warning("--resume: no checkpoint in %s, starting from scratch", workdir)
  if is_main:
    config_lib.save_config(cfg, workdir / "config.json")
    info.save(workdir)

  # ----------------------------------------------------------------------------- update steps
  train_step = par.compile_train_step(step_lib.make_train_step(
      model, tx, task, cfg, axis_name=parallel_lib.AXIS if cfg.parallel == "pmap" else None))
  eval_step = par.compile_eval_step(step_lib.make_eval_step(model, task, cfg,
                                                            use_ema=cfg.use_ema))
  writer = logs.MetricWriter(workdir)
  step = int(par.fetch(state.step))
  elapsed = float(meta["elapsed_s"])
  progress_bar = logs.Progress(total_steps=schedule.total_steps or None, initial=step,
                               budget_s=cfg.budget_s, enabled=cfg.progress_bar)

  if select_field is not None:
    group_of = _validation_groups(eval_data, select_field)
    case_step = par.compile_case_step(step_lib.make_case_step(model, task, cfg,
                                                              use_ema=cfg.use_ema))

  def evaluate(state_now: TrainState) -> tuple[dict[str, float], dict[str, Any] | None]:
    """(validation metrics, the worst group of ``select_field`` or None)."""
    batches_now = scoring.eval_batches(eval_data, None, cfg.eval.batch_size)
    if select_field is None:
      return task.summarize(scoring.evaluate_stats(eval_step, state_now, batches_now, par)), None
    groups = scoring.evaluate_groups(case_step, state_now, batches_now, par, task, group_of)
    metrics = task.summarize(functools.reduce(metrics_lib.merge, (s for _, s in groups.values())))
    if best_metric not in metrics:  # _evaluate_and_keep_best says so
      return metrics, None
    worst = _worst_group(groups, task, best_metric, select_field, cfg)
    return {**metrics, f"worst_group/{best_metric}": worst["value"]}, worst

  def save(state_now: TrainState) -> None:
    checkpoints.save(state_now, batches, {**meta, "elapsed_s": elapsed})

  def check(pending) -> dict[str, float]:
    """Fetches a dispatched step's metrics; stops the run if its loss was not finite."""
    done_step, metrics, ids = pending
    values = par.fetch(metrics)
    if bool(values["finite"]):
      return values
    path = workdir / "nonfinite_batch.json"
    if is_main:
      path.write_text(json.dumps({"step": done_step, "loss": str(values["loss"]),
                                  "grad_norm": str(values["grad_norm"]),
                                  "ids": [str(i) for i in ids]}, indent=2) + "\n")
    checkpoints.wait()
    raise NonFiniteLossError(
        f"non-finite loss ({values['loss']}) at step {done_step}: that update was not applied; "
        f"the last good checkpoint (step {checkpoints.latest_step()}) is kept in "
        f"{workdir / checkpoint_lib.LATEST}; the batch's example ids are in {path}. Lower "
        "config.optimizer.lr, set config.optimizer.grad_clip_norm, or inspect those examples.")

  # ------------------------------------------------------------------------------------- loop
  pending = None
  window: list[dict[str, float]] = []
  last_eval = None
  with _StopOnSignal() as stop, jax.set_mesh(par.mesh):
    upcoming = None
    if not schedule.done(step, elapsed):
      # Compiled on the first batch before the clock starts: compilation, like reading the data,
      # is setup, not training time (the reference runs' budgets do not count their setup either).
      compile_started = time.perf_counter()
      upcoming = next(batches)
      example = par.train_batch({k: v for k, v in upcoming.items() if k != "id"})
      train_step = par.ahead_of_time(train_step, state, example, np.float32(0))
      log.info("train step compiled in %.1f s (not counted in budget_s)",
               time.perf_counter() - compile_started)
    window_start = time.perf_counter()
    try:
      while not schedule.done(step, elapsed):
        started = time.perf_counter()
        batch, upcoming = (upcoming if upcoming is not None else next(batches)), None
        ids = batch.pop("id")
        progress = np.float32(schedule.progress(step, elapsed))
        state, metrics = train_step(state, par.train_batch(batch), progress)
        step += 1
        if pending is not None:  # one step behind, so the host never waits on the device
          window.append(check(pending))
        pending = (step, metrics, ids)
        evaluating = validating and schedule.due(step, schedule.eval_every)
        saving = schedule.due(step, schedule.checkpoint_every) or stop.requested
        logging_now = schedule.due(step, schedule.log_every) or evaluating or saving
        if logging_now:
          window.append(check(pending))
          pending = None
          now = time.perf_counter()
          seen = len(window) * cfg.batch_size
          scalars = {k: float(np.mean([w[k] for w in window])) for k in ("loss", "grad_norm")}
          scalars.update(lr=float(window[-1]["lr"]), epoch=step / schedule.steps_per_epoch,
                         images_per_s=seen / max(now - window_start, 1e-9), elapsed_s=elapsed)
          writer.write(step, "train", scalars)
          progress_bar.update(step, loss=scalars["loss"], images_per_s=scalars["images_per_s"],
                              elapsed_s=elapsed)
          window = []
        elapsed += time.perf_counter() - started
        if evaluating:
          last_eval = _evaluate_and_keep_best(evaluate, state, step, best_metric, cfg, meta,
                                              checkpoints, writer, progress_bar)
        if saving:
          save(state)
        if stop.requested:
          checkpoints.wait()
          progress_bar.write(f"interrupted at step {step}; checkpoint saved in "
                             f"{workdir / checkpoint_lib.LATEST}; continue with --resume")
          raise KeyboardInterrupt
        if logging_now:  # throughput counts training only, not evaluation or checkpointing
          window_start = time.perf_counter()
      if pending is not None:
        check(pending)
    finally:
      progress_bar.close()

    # -------------------------------------------------------------------------- final scoring
    if validating and (last_eval is None or last_eval[0] != step):
      last_eval = _evaluate_and_keep_best(evaluate, state, step, best_metric, cfg, meta,
                                          checkpoints, writer, progress_bar)
    save(state)
    checkpoints.wait()
    final_state, final_step = state, step
    final_metrics = last_eval[1] if validating else {}
    if cfg.final_params == "best" and meta["best"] is not None:
      weights, final_step = checkpoints.restore_weights(
          "best", checkpoint_lib.split_state(state)[0], par.replicated)
      final_state = checkpoint_lib.join_state(weights, checkpoint_lib.split_state(state)[1])
      final_metrics = meta["best"]["metrics"]
    grid = None
    if validating and task.kind == "segmentation" and cfg.visualize_images > 0:
      grid = _save_predictions(workdir / "predictions.png", model, final_state, eval_data, cfg,
                               par)
  writer.close()
  results = {"step": step, "params": cfg.final_params, "params_step": final_step,
             "ema": cfg.use_ema, "best_metric": best_metric, "select_by": cfg.eval.select_by,
             "validation": final_metrics,
             "best": meta["best"], "train_elapsed_s": elapsed, "workdir": str(workdir),
             "predictions": str(grid) if grid else None}
  if is_main:
    (workdir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
  checkpoints.close()
  return {**results, "state": final_state}


def _validation_groups(eval_data: ml_collections.ConfigDict, field: str) -> dict[str, str]:
  """Case id -> its group of clinical ``field`` (``subgroups.group_labels``; ages in
  ``subgroups.AGE_BANDS``) for every validation case."""
  fields = splits.split_fields(eval_data, eval_data.eval_split)
  carried = next(iter(fields.values()), {})
  if field not in carried:
    raise ValueError(f"config.eval.select_by: the validation records of {eval_data.name} carry "
                     f"no clinical field {field!r}; they carry "
                     f"{sorted(k for k in carried if k != 'group')}")
  numeric = clinical.FIELDS[field].kind == clinical.NUMBER
  labels, _ = subgroups.group_labels([values[field] for values in fields.values()],
                                     subgroups.AGE_BANDS if numeric else None)
  return dict(zip(fields, labels))


def _worst_group(groups: dict[str, tuple[int, dict[str, Any]]], task: step_lib.Task,
                 metric: str, field: str, cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """{"field", "group", "value", "groups": {group: value}}: ``metric`` of each group of ``field``
  with at least ``eval.select_min_cases`` cases (the missing ones left out), and the worst one."""
  values = {name: task.summarize(stats)[metric] for name, (count, stats) in sorted(groups.items())
            if count >= cfg.eval.select_min_cases and name != subgroups.MISSING}
  defined = {name: v for name, v in values.items() if np.isfinite(v)}
  if not defined:
    sizes = {name: count for name, (count, _) in sorted(groups.items())}
    raise ValueError(f"config.eval.select_by={cfg.eval.select_by!r}: no group of {field} has "
                     f"{cfg.eval.select_min_cases} validation cases (eval.select_min_cases) with "
                     f"{metric} defined; group sizes {sizes}")
  pick = min if cfg.eval.best_mode == "max" else max
  group = pick(defined, key=defined.get)
  return {"field": field, "group": group, "value": defined[group], "groups": values}


def _evaluate_and_keep_best(evaluate, state, step, best_metric, cfg, meta, checkpoints, writer,
                            progress_bar) -> tuple[int, dict[str, float]]:
  """Validation metrics at ``step``; saves the weights as the best when they are: by
  ``best_metric`` over all cases, or over the worst group (``eval.select_by``)."""
  metrics, worst = evaluate(state)
  if best_metric not in metrics:
    raise ValueError(f"config.eval.best_metric={best_metric!r} is not a validation metric; "
                     f"available: {sorted(metrics)}")
  writer.write(step, "validation", metrics)
  value = metrics[best_metric] if worst is None else worst["value"]
  best = meta["best"]
  if _better(value, None if best is None else best["value"], cfg.eval.best_mode):
    meta["best"] = {"step": step, "metric": best_metric, "select_by": cfg.eval.select_by,
                    "value": value, "mean": metrics[best_metric], "worst_group": worst,
                    "metrics": metrics}
    checkpoints.save_best(state, meta["best"])
  shown = ", ".join(f"{k} {metrics[k]:.4f}" for k in sorted(metrics)
                    if k.count("/") <= 1 and not k.startswith(("count/", "support/")))
  progress_bar.write(f"step {step} validation: {shown}")
  return step, metrics


def _save_predictions(path: Path, model, state: TrainState, eval_data, cfg, par
                      ) -> Path | None:
  """The first validation images with their true and predicted masks, as a PNG grid."""
  predict = par.compile_case_step(step_lib.make_predict_step(model, cfg, use_ema=cfg.use_ema))
  batch = next(iter(scoring.eval_batches(eval_data, None, cfg.eval.batch_size)))
  logits = par.gather(predict(state, par.shard_batch({"image": batch["image"]})["image"]))
  images = par.gather(np.asarray(batch["image"]))
  truths = par.gather(np.asarray(batch["mask"]))
  valid = par.gather(np.asarray(batch["valid"])) > 0
  predicted = np.asarray(metrics_lib.predict_masks(logits))
  keep = np.flatnonzero(valid)[:cfg.visualize_images]
  if jax.process_index() != 0 or keep.size == 0:
    return None
  return visualize.save_overlay_grid(path, images[keep], truths[keep], predicted[keep])
