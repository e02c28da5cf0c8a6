"""Scoring inside the engine: evaluation batches, summed metric statistics and per-case rows.

The training loop validates with these; the run-level tools (``flaxderm.tools.evaluate``,
``flaxderm.tools.predict``) build on them. Nothing here imports above ``flaxderm.train``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from flaxderm import metrics as metrics_lib
from flaxderm.data import pipeline
from flaxderm.train import parallel as parallel_lib
from flaxderm.train import step as step_lib
from flaxderm.train.state import TrainState

Batch = Mapping[str, np.ndarray]
# Per-case columns of a segmentation result table: the per-image reductions of one image.
SEGMENTATION_COLUMNS = ("dice/per_image", "jaccard/per_image", "jaccard/isic_thresholded",
                        "sensitivity/per_image", "specificity/per_image",
                        "pixel_accuracy/per_image")


def eval_batches(data_cfg: ml_collections.ConfigDict, split: str | None, batch_size: int
                 ) -> Iterable[dict[str, np.ndarray]]:
  """This process's padded evaluation batches of ``split`` (default ``data_cfg.eval_split``)."""
  return pipeline.make_eval_iterator(data_cfg, split, global_batch_size=batch_size,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count())


def evaluate_stats(eval_step: Callable, state: TrainState, batches: Iterable[Batch],
                   par: parallel_lib.DataParallel) -> dict[str, np.ndarray]:
  """Summed metric statistics of a compiled ``eval_step`` over ``batches`` (host accumulation,
  64-bit, so large sets cannot overflow pixel counts)."""
  total = None
  for batch in batches:
    batch = {k: v for k, v in batch.items() if k != "id"}
    total = metrics_lib.merge(total, par.fetch(eval_step(state, par.shard_batch(batch))))
  if total is None:
    raise ValueError("evaluation split is empty")
  return total


def _scored_batches(case_step: Callable, state: TrainState, batches: Iterable[Batch],
                    par: parallel_lib.DataParallel, task: step_lib.Task
                    ) -> Iterator[tuple[np.ndarray, dict[str, Any], np.ndarray]]:
  """Per batch, (ids, ``case_step`` outputs, labels) of its real examples (padding dropped)."""
  for batch in batches:
    ids = par.gather(np.asarray(batch.pop("id")))
    out = par.gather(case_step(state, par.shard_batch(batch)))
    keep = np.flatnonzero(par.gather(np.asarray(batch["valid"])) > 0)
    labels = par.gather(np.asarray(batch[task.label_key]))
    yield ids[keep], jax.tree.map(lambda v, keep=keep: np.asarray(v)[keep], out), labels[keep]


def evaluate_cases(case_step: Callable, state: TrainState, batches: Iterable[Batch],
                   par: parallel_lib.DataParallel, task: step_lib.Task
                   ) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
  """(one row per real example, summed stats) of a compiled ``case_step`` over ``batches``."""
  rows, total = [], None
  for ids, out, labels in _scored_batches(case_step, state, batches, par, task):
    total = metrics_lib.merge(total, step_lib.sum_stats(out["stats"]))
    for i, case_id in enumerate(ids):
      one = {k: v[i] for k, v in out["stats"].items()}
      probs = out["probs"][i] if "probs" in out else None
      rows.append(_case_row(task, str(case_id), one, labels[i], probs))
  if total is None:
    raise ValueError("evaluation split is empty")
  return rows, total


def evaluate_groups(case_step: Callable, state: TrainState, batches: Iterable[Batch],
                    par: parallel_lib.DataParallel, task: step_lib.Task,
                    group_of: Mapping[str, str]) -> dict[str, tuple[int, dict[str, np.ndarray]]]:
  """Group -> (its number of cases, their summed stats) of a compiled ``case_step`` over
  ``batches``, each case in its group ``group_of[id]``: the set metrics of each subgroup."""
  groups: dict[str, tuple[int, dict[str, np.ndarray]]] = {}
  for ids, out, _ in _scored_batches(case_step, state, batches, par, task):
    names = np.array([group_of[str(i)] for i in ids], dtype=object)
    for name in set(names):
      chosen = names == name
      count, total = groups.get(name, (0, None))
      stats = step_lib.sum_stats({k: v[chosen] for k, v in out["stats"].items()})
      groups[name] = (count + int(chosen.sum()), metrics_lib.merge(total, stats))
  if not groups:
    raise ValueError("evaluation split is empty")
  return groups


def _case_row(task: step_lib.Task, case_id: str, stats: Mapping[str, np.ndarray], label: Any,
              probs: np.ndarray | None) -> dict[str, Any]:
  row: dict[str, Any] = {"id": case_id}
  if task.kind == "segmentation":
    summary = task.summarize(stats)
    row.update({k: summary[k] for k in SEGMENTATION_COLUMNS})
    row["lesion_pixels"] = int(np.asarray(stats["tp"])[1] + np.asarray(stats["fn"])[1])
    return row
  names = task.class_names
  if probs.shape[-1] == 1:  # sigmoid output of a binary classifier
    probs = np.concatenate([1 - probs, probs])
  row["label"] = names[int(label)]
  row["prediction"] = names[step_lib.decided_class(probs, task.decision_bias)]
  row.update({f"prob/{n}": float(p) for n, p in zip(names, probs)})
  return row
