"""Train/validation splits made from an example's ``group`` (lesion key), and process sharding.

Images of one lesion must never sit on both sides of a split, or validation scores come out
optimistic; every split here therefore assigns whole groups. The hashed split reproduces the
PyTorch reference runs' ``common.is_validation`` exactly, so flaxderm and the references score the
same lesions.
"""
from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from flaxderm.data import clinical
from flaxderm.data import sources

# data.split: "official" = the dataset's own splits; "hashed" = is_validation() on `group` inside
# data.source_split; "kfold" = stratified group k-fold inside data.source_split; "all" = every
# record of data.source_split is training data (no validation part).
SPLIT_MODES = ("official", "hashed", "kfold", "all")


def is_validation(key: str) -> bool:
  """About 30% of lesions go to validation; identical to the reference runs' rule."""
  return int(hashlib.md5(f"val:{key}".encode()).hexdigest()[:8], 16) % 10 < 3


def hashed_split(groups: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """(train indices, validation indices) by ``is_validation(group)``, each in record order."""
  in_validation = np.fromiter((is_validation(g) for g in groups), bool, count=len(groups))
  return np.flatnonzero(~in_validation), np.flatnonzero(in_validation)


def kfold_split(groups: Sequence[str], labels: Sequence[int] | None, *, num_folds: int,
                fold: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(train, validation) indices of fold ``fold`` of ``num_folds`` (paper 002's 10-fold CV).

  Groups are kept whole; with labels, folds are also stratified (scikit-learn's
  StratifiedGroupKFold, groups shuffled with ``seed``), otherwise GroupKFold balances fold sizes.
  The assignment depends on scikit-learn's algorithm, so pin its version to compare runs.
  """
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top  (slow import)

  if num_folds < 2:
    raise ValueError(f"data.num_folds must be at least 2, got {num_folds}")
  if not 0 <= fold < num_folds:
    raise ValueError(f"data.fold must be in [0, {num_folds}), got {fold}")
  num_groups = len(set(groups))
  if num_groups < num_folds:
    raise ValueError(f"data.num_folds={num_folds} exceeds the {num_groups} groups in the split")
  placeholder = np.zeros(len(groups))
  if labels is None:
    splitter = model_selection.GroupKFold(num_folds, shuffle=True, random_state=seed)
  else:
    splitter = model_selection.StratifiedGroupKFold(num_folds, shuffle=True, random_state=seed)
  train, validation = list(splitter.split(placeholder, labels, groups))[fold]
  return np.sort(train), np.sort(validation)


def shard(indices: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
  """This process's records: every ``process_count``-th, starting at ``process_index``."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, process_count={process_count})")
  return np.asarray(indices)[process_index::process_count]


# ----------------------------------------------------------------------------------------------
# A data config's split: official, hashed by group, k-fold by group, all.


@functools.lru_cache(maxsize=32)
def split_metadata(source: sources.DataSource, name: str
                   ) -> tuple[tuple[str, ...], np.ndarray | None]:
  """(groups, labels or None) of every record of a split, in record order."""
  records = source.split(name)
  rows = [records[i] for i in range(len(records))]
  groups = tuple(sources.record_text(r["group"] if "group" in r else r["id"]) for r in rows)
  labels = np.asarray([int(r["label"]) for r in rows], np.int64) if source.class_names else None
  return groups, labels


def resolve_split(source: sources.DataSource, cfg: Mapping[str, Any], name: str
                  ) -> tuple[str, np.ndarray]:
  """(official split that holds the records, indices of the records in it) for split ``name``.

  With data.split "hashed"/"kfold", "train" and "validation" are parts of data.source_split;
  with "all", "train" is all of it. Every other name is the dataset's own split.
  """
  mode = cfg["split"]
  derived = {"hashed": ("train", "validation"), "kfold": ("train", "validation"),
             "all": ("train",)}.get(mode, ())
  if name not in derived:
    return name, np.arange(len(source.split(name)))
  base = cfg["source_split"]
  if mode == "all":
    return base, np.arange(len(source.split(base)))
  groups, labels = split_metadata(source, base)
  if mode == "hashed":
    train, validation = hashed_split(groups)
  else:
    train, validation = kfold_split(groups, labels, num_folds=cfg["num_folds"], fold=cfg["fold"],
                                    seed=cfg["split_seed"])
  indices = train if name == "train" else validation
  if indices.size == 0:
    raise ValueError(f"data.split={mode!r}: split {name!r} of {base!r} is empty")
  return base, indices


# Which records a split reads, not how each image is prepared: the folds of a CV run differ here.
SPLIT_KEYS = ("split", "source_split", "num_folds", "fold", "split_seed", "train_split",
              "eval_split")


def _split_records(cfg: Mapping[str, Any], name: str) -> list[sources.Record]:
  """The records of split ``name``, in order."""
  source = sources.open_source(cfg)
  base, indices = resolve_split(source, cfg, name)
  records = source.split(base)
  return [records[int(i)] for i in indices]


def split_groups(cfg: Mapping[str, Any], name: str) -> list[str]:
  """The group (lesion key) of every record of split ``name`` (e.g. the lesions of a k-fold
  validation part, for another program to train on the same fold)."""
  source = sources.open_source(cfg)
  base, indices = resolve_split(source, cfg, name)
  groups, _ = split_metadata(source, base)
  return [groups[i] for i in indices]


def split_label_counts(cfg: Mapping[str, Any], name: str, num_classes: int) -> np.ndarray:
  """How many records of split ``name`` each class holds (int64, ``num_classes`` long)."""
  source = sources.open_source(cfg)
  base, indices = resolve_split(source, cfg, name)
  _, labels = split_metadata(source, base)
  if labels is None:
    raise ValueError(f"dataset {cfg['name']!r} has no class labels to count")
  return np.bincount(labels[indices], minlength=num_classes).astype(np.int64)


def split_ids(cfg: Mapping[str, Any], name: str) -> list[str]:
  """The case id of every record of split ``name`` (e.g. the cases a run trained on)."""
  return [sources.record_text(r["id"]) for r in _split_records(cfg, name)]


def split_fields(cfg: Mapping[str, Any], name: str) -> dict[str, dict[str, Any]]:
  """Case id -> its ``group`` (the grouping unit: lesion or patient; the id when the records have
  none) and the clinical fields its record carries (``flaxderm.data.clinical``: numbers as float,
  NaN when missing; text as str), for every record of split ``name``: what a subgroup audit
  slices by, read beside the scores and never given to a model."""
  fields = {}
  for record in _split_records(cfg, name):
    values = {"group": sources.record_text(record["group"] if "group" in record
                                           else record["id"])}
    for field, spec in clinical.FIELDS.items():
      if field in record:
        values[field] = (float(record[field]) if spec.kind == clinical.NUMBER
                         else sources.record_text(record[field]))
    fields[sources.record_text(record["id"])] = values
  return fields
