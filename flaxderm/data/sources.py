"""Where records come from: a ``DataSource`` is random-access records split by name, in the
builders' feature layout (``image``, ``id``, ``group``, ``mask``, ``label``, and the clinical
fields of ``flaxderm.data.clinical``).

``TfdsSource`` reads a dataset prepared by ``flaxderm.data.builders`` (images as encoded bytes,
decoded by the pipeline); ``InMemorySource`` holds lists of feature dicts (tests, notebooks).
"""
from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import ml_collections
import numpy as np

Record = dict[str, Any]



class DataSource(Protocol):
  """Random-access records split by name (the builders' feature layout)."""

  key: str  # identifies the data for the in-memory cache
  has_mask: bool
  class_names: tuple[str, ...] | None  # label names; None when records carry no label

  def split_names(self) -> tuple[str, ...]: ...

  def split(self, name: str) -> Sequence[Record]: ...


class _Concat(Sequence):
  """Several random-access sources read as one ("train+validation")."""

  def __init__(self, parts: Sequence[Sequence[Record]]):
    self._parts = list(parts)
    self._starts = np.cumsum([0] + [len(p) for p in self._parts])

  def __len__(self) -> int:
    return int(self._starts[-1])

  def __getitem__(self, index: int) -> Record:
    part = int(np.searchsorted(self._starts, index, side="right")) - 1
    return self._parts[part][index - int(self._starts[part])]


def _unknown_split(name: str, known: Sequence[str]) -> ValueError:
  return ValueError(f"split {name!r} does not exist; the dataset has {tuple(known)}")


class InMemorySource:
  """Records held in Python lists: ``{split name: [feature dict, ...]}``.

  Images/masks may be arrays or encoded bytes; ``class_names`` names the labels (inferred as
  "0", "1", ... from the largest label when omitted).
  """
  _ids = itertools.count()

  def __init__(self, splits: Mapping[str, Sequence[Record]],
               class_names: Sequence[str] | None = None):
    self._splits = {name: list(records) for name, records in splits.items()}
    first = next((r[0] for r in self._splits.values() if r), None)
    if first is None:
      raise ValueError("InMemorySource: every split is empty")
    self.key = f"memory:{next(self._ids)}"
    self.has_mask = "mask" in first
    if "label" in first and class_names is None:
      top = max(int(r["label"]) for rs in self._splits.values() for r in rs)
      class_names = tuple(str(i) for i in range(top + 1))
    self.class_names = tuple(class_names) if "label" in first else None

  def split_names(self) -> tuple[str, ...]:
    return tuple(self._splits)

  def split(self, name: str) -> Sequence[Record]:
    parts = name.split("+")
    for part in parts:
      if part not in self._splits:
        raise _unknown_split(part, self._splits)
    return _Concat([self._splits[p] for p in parts]) if len(parts) > 1 else self._splits[name]


class TfdsSource:
  """A dataset prepared by ``flaxderm.data.builders.prepare`` in ArrayRecord format.

  Images and masks are read undecoded (``tfds.decode.SkipDecoding``): decoding happens in the
  pipeline with OpenCV, and scanning a split for its groups/labels does not decode any pixels.
  """

  def __init__(self, data_cfg: Mapping[str, Any]):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow import)
    from flaxderm.data import builders  # pylint: disable=g-import-not-at-top  (pulls in TF)

    self.builder = builders.prepare(
        data_cfg["name"], data_dir=data_cfg["data_dir"], manual_dir=data_cfg["manual_dir"],
        builder_config=data_cfg["builder_config"],
        builder_kwargs=dict(data_cfg["builder_kwargs"]) or None,
        skip_bad_examples=data_cfg["skip_bad_examples"],
        prepare_workers=data_cfg["prepare_workers"])
    features = self.builder.info.features
    # The source fingerprint: a copy prepared again from other files is other data to the caches.
    self._fingerprint = self._recorded_fingerprint()
    self.key = (f"tfds:{self.builder.info.full_name}@{self.builder.data_dir}"
                f"#{self._fingerprint}")
    self.has_mask = "mask" in features
    self.class_names = tuple(features["label"].names) if "label" in features else None
    self._decoders = {k: tfds.decode.SkipDecoding() for k in ("image", "mask") if k in features}

  def _recorded_fingerprint(self) -> str:
    return (self.builder.recorded_source() or {}).get("fingerprint", "")

  def is_current(self) -> bool:
    """Whether the prepared copy is still the one this source opened: preparing another folder
    into the same ``data_dir`` (same dataset and config) replaces it."""
    return self._recorded_fingerprint() == self._fingerprint

  def split_names(self) -> tuple[str, ...]:
    return tuple(self.builder.info.splits.keys())

  def split(self, name: str) -> Sequence[Record]:
    parts = name.split("+")
    for part in parts:
      if part not in self.builder.info.splits:
        raise _unknown_split(part, self.split_names())
    sources = [self.builder.as_data_source(p, decoders=self._decoders) for p in parts]
    return _Concat(sources) if len(sources) > 1 else sources[0]


@functools.lru_cache(maxsize=8)
def _tfds_source(frozen_cfg: str) -> TfdsSource:
  return TfdsSource(json.loads(frozen_cfg))


def open_source(data_cfg: Mapping[str, Any]) -> DataSource:
  """The TFDS dataset named by ``data_cfg`` (prepared on first use, then reused while its prepared
  copy stays the same: a copy that another folder's preparation replaced is prepared again, never
  read as this folder's)."""
  keys = ("name", "data_dir", "manual_dir", "builder_config", "builder_kwargs",
          "skip_bad_examples", "prepare_workers")
  frozen = json.dumps({k: plain(data_cfg[k]) for k in keys}, sort_keys=True)
  source = _tfds_source(frozen)
  if not source.is_current():
    _tfds_source.cache_clear()
    source = _tfds_source(frozen)
  return source


def plain(value: Any) -> Any:
  """A config value as plain Python (a ConfigDict as a dict), for JSON keys."""
  return value.to_dict() if isinstance(value, (ml_collections.ConfigDict,
                                               ml_collections.FrozenConfigDict)) else value


def record_text(value: Any) -> str:
  """A record's string feature (TFDS gives bytes) as str."""
  return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)
