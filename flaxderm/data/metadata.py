"""Clinical metadata as a model input: ``data.metadata = ("age", "sex", "site")`` becomes one
float32 vector per example, the batches' ``metadata`` (B, D).

Encoding, field by field in the order of ``data.metadata``:

* a ``number`` field (``clinical.NUMBER``): two entries, ``(value - mean) / std`` (0 when missing)
  and a missing flag (1 when missing);
* a ``category`` field: a one-hot over the categories the training split holds, plus a last
  "unknown" slot for a missing value or one training never saw.

The vocabulary (per number field its ``mean``/``std``, per category field its ``categories``) is
computed from the training split once, recorded in the run's config (``data.metadata_vocabulary``)
and reused by evaluation, prediction and export, so an example is encoded the same everywhere.
Fields of ``clinical.NEVER_INPUTS`` (they derive from the label or the collection) and free text
are refused.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from flaxderm.data import clinical

Vocabulary = dict[str, dict[str, Any]]


def check_inputs(fields: Sequence[str], owner: str = "data.metadata") -> None:
  """ValueError naming ``owner`` and the field when one of ``fields`` cannot be a model input:
  not a clinical field, a field of ``clinical.NEVER_INPUTS`` (with the reason), free text, or
  given twice."""
  for name in fields:
    if name in clinical.NEVER_INPUTS:
      raise ValueError(f"{owner}: {name!r} must never be a model input: "
                       f"{clinical.NEVER_INPUTS[name]}")
  clinical.check_fields(tuple(fields), owner)
  for name in fields:
    if clinical.FIELDS[name].kind == clinical.TEXT:
      raise ValueError(f"{owner}: {name!r} is free text ({clinical.FIELDS[name].meaning}); only "
                       "number and category fields can be model inputs")
  repeated = sorted({n for n in fields if list(fields).count(n) > 1})
  if repeated:
    raise ValueError(f"{owner}: fields {repeated} are given more than once")


def value_of(name: str, raw: Any) -> float | str:
  """The record value of field ``name`` from a record's value (TFDS gives bytes and float32), a
  CSV cell or a caller's value (None: missing); ValueError saying what is wrong."""
  if raw is None:
    return clinical.missing(clinical.FIELDS[name].kind)
  if isinstance(raw, (bytes, np.bytes_)):
    raw = raw.decode("utf-8")
  if isinstance(raw, str):
    return clinical.parse(name, raw)
  if clinical.FIELDS[name].kind != clinical.NUMBER:
    raise ValueError(f"{raw!r} is not text; field {name!r} is a category")
  value = float(raw)
  return value if math.isfinite(value) else math.nan


def _is_missing(value: float | str) -> bool:
  return value == "" if isinstance(value, str) else math.isnan(value)


def fit_vocabulary(fields: Sequence[str], records: Iterable[Mapping[str, Any]],
                   owner: str = "the training split") -> Vocabulary:
  """The vocabulary of ``fields`` from ``records`` (the training split's): mean and standard
  deviation of each number field's present values (0 and 1 when there are none; std 1 when they
  are all equal), the sorted categories of each category field."""
  check_inputs(fields)
  values: dict[str, list[float | str]] = {name: [] for name in fields}
  for record in records:
    for name in fields:
      if name not in record:
        raise ValueError(f"{owner}: records carry no clinical field {name!r} (data.metadata); "
                         f"they carry {sorted(k for k in record if k in clinical.FIELDS)}")
      value = value_of(name, record[name])
      if not _is_missing(value):
        values[name].append(value)
  vocabulary = {}
  for name in fields:
    if clinical.FIELDS[name].kind == clinical.NUMBER:
      present = np.asarray(values[name], np.float64)
      mean = float(present.mean()) if present.size else 0.0
      std = float(present.std()) if present.size else 1.0
      vocabulary[name] = {"mean": mean, "std": std if std > 0 else 1.0}
    else:
      vocabulary[name] = {"categories": sorted(set(values[name]))}
  return vocabulary


class MetadataEncoder:
  """Field values -> the model's metadata vector, under a fixed vocabulary."""

  def __init__(self, fields: Sequence[str], vocabulary: Mapping[str, Mapping[str, Any]]):
    check_inputs(fields)
    missing = [n for n in fields if n not in vocabulary]
    if missing:
      raise ValueError(f"data.metadata_vocabulary has no entry for {missing}; it covers "
                       f"{sorted(vocabulary)}")
    self.fields = tuple(fields)
    self.vocabulary = {name: dict(vocabulary[name]) for name in fields}
    self.names = tuple(self._names())

  def _names(self) -> Iterable[str]:
    for name in self.fields:
      if clinical.FIELDS[name].kind == clinical.NUMBER:
        yield from (name, f"{name}:missing")
      else:
        yield from (f"{name}={c}" for c in self.vocabulary[name]["categories"])
        yield f"{name}:unknown"

  @property
  def width(self) -> int:
    return len(self.names)

  def encode(self, values: Mapping[str, Any], owner: str = "metadata") -> np.ndarray:
    """The float32 vector (width,) of one example's ``values`` (field -> value as ``value_of``
    reads it; an absent field is missing). ValueError naming ``owner`` and the field for a value
    that does not parse or a field the vector does not have."""
    unknown = sorted(set(values) - set(self.fields))
    if unknown:
      raise ValueError(f"{owner}: fields {unknown} are not inputs of this model; it takes "
                       f"{list(self.fields)}")
    out = []
    for name in self.fields:
      try:
        value = value_of(name, values.get(name))
      except ValueError as e:
        raise ValueError(f"{owner}: field {name!r}: {e}") from None
      entry = self.vocabulary[name]
      if clinical.FIELDS[name].kind == clinical.NUMBER:
        absent = _is_missing(value)
        out += [0.0 if absent else (value - entry["mean"]) / entry["std"], float(absent)]
      else:
        categories = list(entry["categories"])
        hot = [0.0] * (len(categories) + 1)
        hot[categories.index(value) if value in categories else -1] = 1.0
        out += hot
    return np.asarray(out, np.float32)

  def encode_record(self, record: Mapping[str, Any], owner: str) -> np.ndarray:
    """``encode`` of a dataset record (which carries other features too)."""
    absent = [n for n in self.fields if n not in record]
    if absent:
      raise ValueError(f"{owner}: the record carries no clinical field {absent} "
                       "(data.metadata)")
    return self.encode({n: record[n] for n in self.fields}, owner)


def encoder_of(data_cfg: Mapping[str, Any]) -> MetadataEncoder | None:
  """The encoder of a data config whose vocabulary is recorded; None without ``data.metadata``."""
  fields = tuple(data_cfg["metadata"])
  if not fields:
    return None
  vocabulary = data_cfg["metadata_vocabulary"]
  if not vocabulary:
    raise ValueError("data.metadata_vocabulary is empty: a run records it in config.json when it "
                     "starts (computed from data.train_split)")
  plain = vocabulary.to_dict() if hasattr(vocabulary, "to_dict") else vocabulary
  return MetadataEncoder(fields, plain)
