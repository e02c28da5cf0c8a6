"""Checkpoints (orbax ``CheckpointManager``): the latest N to resume from, and the best weights.

``<workdir>/checkpoints/<step>/`` holds everything a run needs to continue exactly:

* ``weights``: params, batch_stats, EMA params (what evaluation loads);
* ``train``: step, optimiser state, base PRNG key;
* ``data``: each process's input-iterator position (grain, one file per process);
* ``meta``: host-side progress (epoch, elapsed training seconds, best validation score so far).

``<workdir>/best/<step>/`` keeps only the ``weights`` and ``meta`` of the evaluation with the best
configured validation metric. Arrays are restored onto the current mesh (replicated), so a run
saved on 8 devices resumes on 1 and vice versa.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from flaxderm.train.state import TrainState

log = logging.getLogger(__name__)

LATEST, BEST = "checkpoints", "best"


def split_state(state: TrainState) -> tuple[dict[str, Any], dict[str, Any]]:
  """(weights, train) parts of the state, as checkpointed."""
  weights = {"params": state.params, "batch_stats": state.batch_stats,
             "ema_params": state.ema_params}
  train = {"step": state.step, "opt_state": state.opt_state, "rng": state.rng}
  return weights, train


def join_state(weights: dict[str, Any], train: dict[str, Any]) -> TrainState:
  return TrainState(step=train["step"], params=weights["params"],
                    batch_stats=weights["batch_stats"], opt_state=train["opt_state"],
                    rng=train["rng"], ema_params=weights["ema_params"])


def abstract_like(tree: Any, sharding: jax.sharding.Sharding) -> Any:
  """Shape/dtype placeholders of ``tree`` placed with ``sharding`` (the restore target)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _options(name: str, *, max_to_keep: int, read_only: bool) -> ocp.CheckpointManagerOptions:
  # Both managers save the same step when an evaluation improves the best score, and orbax names
  # its cross-process barriers after the step folder ("4.orbax-checkpoint-tmp"): without a prefix
  # per manager, one manager's barrier on one process pairs with the other's on another, and
  # process 0 finalises a checkpoint that process 1 is still writing (tests/train/
  # test_train_parallel.py::test_two_processes_train_together_like_one failed so, under load).
  return ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
      multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name))


class Checkpointer:
  """The run's two checkpoint managers. ``keep``: how many latest checkpoints to keep."""

  def __init__(self, workdir: str | Path, *, keep: int = 2, read_only: bool = False):
    workdir = Path(workdir).resolve()
    self.latest = ocp.CheckpointManager(
        workdir / LATEST, item_names=("weights", "train", "data", "meta"),
        options=_options(LATEST, max_to_keep=keep, read_only=read_only))
    self.best = ocp.CheckpointManager(
        workdir / BEST, item_names=("weights", "meta"),
        options=_options(BEST, max_to_keep=1, read_only=read_only))

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def best_step(self) -> int | None:
    return self.best.latest_step()

  def save(self, state: TrainState, data_iterator: Any, meta: dict[str, Any]) -> None:
    """Saves the resumable state at ``state.step`` (the iterator position is read now, so it
    must be the one after the batches that produced ``state``)."""
    weights, train = split_state(state)
    step = int(jax.device_get(state.step.addressable_data(0)))
    if step in self.latest.all_steps():
      return
    self.latest.save(step, args=ocp.args.Composite(
        weights=ocp.args.StandardSave(weights), train=ocp.args.StandardSave(train),
        data=grain.checkpoint.CheckpointSave(data_iterator), meta=ocp.args.JsonSave(meta)))

  def save_best(self, state: TrainState, meta: dict[str, Any]) -> None:
    weights, _ = split_state(state)
    step = int(jax.device_get(state.step.addressable_data(0)))
    self.best.save(step, args=ocp.args.Composite(weights=ocp.args.StandardSave(weights),
                                                 meta=ocp.args.JsonSave(meta)), force=True)

  def restore(self, target: TrainState, data_iterator: Any, sharding: jax.sharding.Sharding,
              step: int | None = None) -> tuple[TrainState, dict[str, Any], bool]:
    """(state, meta, whether the data position was restored) from the latest (or ``step``)
    checkpoint. The data position is per process: with a different process count the iterator
    is left as given (a warning says so)."""
    step = self.latest.latest_step() if step is None else step
    weights, train = split_state(target)
    restored = self.latest.restore(step, args=ocp.args.Composite(
        weights=ocp.args.StandardRestore(abstract_like(weights, sharding)),
        train=ocp.args.StandardRestore(abstract_like(train, sharding)),
        meta=ocp.args.JsonRestore()))
    data_file = (Path(self.latest.directory) / str(step) / "data" /
                 f"process_{jax.process_index()}-of-{jax.process_count()}.json")
    data_restored = data_file.exists()
    if data_restored:
      self.latest.restore(step, args=ocp.args.Composite(
          data=grain.checkpoint.CheckpointRestore(data_iterator)))
    else:
      log.warning("checkpoint %d has no input position for %d process(es); the input stream "
                  "restarts", step, jax.process_count())
    return join_state(restored.weights, restored.train), dict(restored.meta), data_restored

  def restore_weights(self, which: str, target: dict[str, Any],
                      sharding: jax.sharding.Sharding) -> tuple[dict[str, Any], int]:
    """(weights, step) of the "last" or "best" checkpoint; ``target`` is a weights dict (or its
    abstract shapes) that fixes the structure."""
    manager = self.best if which == "best" else self.latest
    step = manager.latest_step()
    if step is None:
      raise ValueError(f"no {which!r} checkpoint in {manager.directory}: the run saved none "
                       "(did it train, and evaluate at least once for 'best'?)")
    restored = manager.restore(step, args=ocp.args.Composite(
        weights=ocp.args.StandardRestore(abstract_like(target, sharding))))
    return restored.weights, step

  def best_meta(self) -> dict[str, Any] | None:
    step = self.best.latest_step()
    if step is None:
      return None
    return dict(self.best.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()
