"""Train/validation splits made from an example's ``group`` (lesion key), and process sharding.

Images of one lesion must never sit on both sides of a split, or validation scores come out
optimistic; every split here therefore assigns whole groups. The hashed split reproduces the
PyTorch reference runs' ``common.is_validation`` exactly, so flaxderm and the references score the
same lesions.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

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
