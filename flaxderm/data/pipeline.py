"""grain input pipelines: read -> decode -> preprocess -> resize -> augment -> normalise -> batch.

Per-process batches follow the team contract (``image`` float32 NHWC normalised, ``mask`` int32
0/1, ``label`` int32, ``valid`` float32, ``id`` str; with ``data.metadata``, ``metadata`` float32
(B, D) encoded by ``flaxderm.data.metadata``). The training iterator is infinite,
deterministic given the seed and checkpointable (``get_state()`` / ``set_state()`` restore the
exact next batch); the eval iterator makes one pass, padding the last batch with ``valid=0``.

Layout of a training pipeline::

    records of this process (shard of the split)
      -> MapDataset.source(prepared)        decode + preprocess + resize (optionally cached)
      -> .shuffle(seed).repeat()            or one shuffled stream per class, mixed evenly
      -> .random_map(augment, seed)         per-record generator derived from seed and position
      -> .to_iter_dataset(ReadOptions)      `read_threads` threads prepare examples ahead
      -> .batch(per_process_batch)          (optionally .mp_prefetch for `num_workers` processes)

Records come from a ``flaxderm.data.sources.DataSource`` (images as encoded bytes, decoded here
with OpenCV), the split's records from ``flaxderm.data.splits.resolve_split``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from absl import flags
import grain
import ml_collections
import numpy as np

from flaxderm.data import augment as augment_lib
from flaxderm.data import config as config_lib
from flaxderm.data import metadata as metadata_lib
from flaxderm.data import preprocess as preprocess_lib
from flaxderm.data import sources
from flaxderm.data import splits as splits_lib
from flaxderm.data.sources import DataSource, Record

SEGMENTATION_CLASSES = ("background", "lesion")


def preparation(data_cfg: Mapping[str, Any]) -> str:
  """A key equal for data configs that turn an image into the same model input (e.g. the folds of
  a CV run sharing their normalisation), so such inputs are prepared once."""
  plain = data_cfg.to_dict() if hasattr(data_cfg, "to_dict") else dict(data_cfg)
  return json.dumps({k: v for k, v in plain.items() if k not in splits_lib.SPLIT_KEYS},
                    sort_keys=True, default=str)


# ----------------------------------------------------------------------------------------------
# Deterministic part: decode, preprocess, resize (cacheable).

_CACHES: dict[tuple[str, str], dict[tuple[str, int], Record]] = {}


def clear_cache() -> None:
  """Drops every in-memory cache of prepared examples (``data.cache``)."""
  _CACHES.clear()


_PREPARE_KEYS = ("preprocess", "image_size", "resize", "crop_fraction")
_METADATA_KEYS = ("metadata", "metadata_vocabulary")


def _prepare_key(cfg: Mapping[str, Any], keep_context: bool = False) -> str:
  return json.dumps({**{k: sources.plain(cfg[k]) for k in (*_PREPARE_KEYS, *_METADATA_KEYS)},
                     "keep_context": keep_context}, sort_keys=True, default=list)


def prepare_pair(image: np.ndarray, mask: np.ndarray | None, cfg: Mapping[str, Any], *,
                 keep_context: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
  """The deterministic geometry and pixel steps of every example (training, evaluation and
  prediction): ``data.preprocess`` (black frame, hair), then ``resize`` to ``image_size``
  (``keep_context``: at that scale, with the image around the square; ``data.train_crop``)."""
  image, mask = preprocess_lib.preprocess(image, mask, sources.plain(cfg["preprocess"]))
  return preprocess_lib.resize(image, mask, cfg["image_size"], mode=cfg["resize"],
                               crop_fraction=cfg["crop_fraction"], keep_context=keep_context)


def model_input(image: np.ndarray, data_cfg: Mapping[str, Any]
                ) -> tuple[np.ndarray, preprocess_lib.InputWindow]:
  """(normalised float32 model input, where it lies in the image) of one uint8 RGB image,
  prepared exactly as evaluation batches are. ``normalization="dataset"`` needs ``data.mean`` and
  ``data.std`` set (a training run records them in its config.json)."""
  cfg = _checked(data_cfg)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(f"expected a uint8 RGB image of shape (H, W, 3), got {image.dtype} "
                     f"{image.shape}")
  height, width = image.shape[:2]
  coordinates = np.arange(1, height * width + 1, dtype=np.int32).reshape(height, width)
  prepared, shown = prepare_pair(image, coordinates, cfg)
  stats = preprocess_lib.normalization_stats(cfg["normalization"], cfg["mean"], cfg["std"])
  return (preprocess_lib.normalize(prepared, stats),
          preprocess_lib.InputWindow.from_coordinates(shown, (height, width)))


class PreparedSplit(Sequence):
  """Random access to the prepared records ``indices`` of one official split.

  A prepared record holds ``image`` uint8 (S, S, 3) (with ``keep_context``: at least S on each
  side, the image around the S square), ``mask`` uint8 of the image's height and width when the
  dataset has masks, ``label`` int when it has labels, ``metadata`` float32 (D,) with
  ``metadata`` (the vocabulary must be resolved: ``with_metadata_vocabulary``), and ``id``. With
  ``cache``, prepared records are kept in a process-wide dict keyed by (data, preprocessing
  config, size), so hair removal runs once per image across epochs, folds and iterators rather
  than once per step.
  """

  def __init__(self, source: DataSource, cfg: Mapping[str, Any], split: str,
               indices: np.ndarray, *, keep_context: bool = False):
    self._records = source.split(split)
    self.split = split
    self.indices = np.asarray(indices, np.int64)
    self._has_mask = source.has_mask
    self._has_label = source.class_names is not None
    self._cfg = {k: sources.plain(cfg[k]) for k in _PREPARE_KEYS}
    self._keep_context = keep_context
    self._encoder = metadata_lib.encoder_of(cfg)
    self._cache = (_CACHES.setdefault((source.key, _prepare_key(cfg, keep_context)), {})
                   if cfg["cache"] else None)

  def __len__(self) -> int:
    return len(self.indices)

  @property
  def metadata_width(self) -> int | None:
    return None if self._encoder is None else self._encoder.width

  def subset(self, positions: np.ndarray) -> "PreparedSplit":
    """The same split restricted to ``positions`` (sharing the cache)."""
    other = object.__new__(PreparedSplit)
    other.__dict__.update(self.__dict__)
    other.indices = self.indices[positions]
    return other

  def __getitem__(self, position: int) -> Record:
    index = int(self.indices[position])
    if self._cache is not None:
      hit = self._cache.get((self.split, index))
      if hit is not None:
        return hit
    prepared = self._prepare(self._records[index])
    if self._cache is not None:
      self._cache[(self.split, index)] = prepared
    return prepared

  def _prepare(self, record: Record) -> Record:
    image = preprocess_lib.decode_image(record["image"], channels=3)
    mask = None
    if self._has_mask:
      mask = (preprocess_lib.decode_image(record["mask"], channels=1, name="mask")[..., 0] > 0)
      mask = mask.astype(np.uint8)
      if mask.shape != image.shape[:2]:
        raise ValueError(f"example {sources.record_text(record['id'])!r}: mask {mask.shape} does "
                         f"not match image {image.shape[:2]}")
    image, mask = prepare_pair(image, mask, self._cfg, keep_context=self._keep_context)
    prepared = {"image": image, "id": sources.record_text(record["id"])}
    if mask is not None:
      prepared["mask"] = mask
    if self._has_label:
      prepared["label"] = int(record["label"])
    if self._encoder is not None:
      prepared["metadata"] = self._encoder.encode_record(record, f"example {prepared['id']!r}")
    return prepared


# ----------------------------------------------------------------------------------------------
# Random part and batch assembly.


class _ToBatchRecord:
  """Prepared record -> contract record (optionally a random ``window`` of it, then augmented); a
  class so grain can pickle it into worker processes."""

  def __init__(self, stats: tuple[np.ndarray, np.ndarray] | None,
               augment: augment_lib.Augmenter | None = None, window: int | None = None):
    self._stats = stats
    self._augment = augment
    self._window = window

  def __call__(self, record: Record, rng: np.random.Generator | None = None) -> Record:
    image, mask = record["image"], record.get("mask")
    if self._window is not None:
      image, mask = augment_lib.random_window(image, mask, rng, self._window)
    image = image.astype(np.float32) / 255.0
    if self._augment is not None:
      image, mask = self._augment(image, mask, rng)
    out = {"image": preprocess_lib.normalize(image, self._stats),
           "valid": np.float32(record.get("valid", 1.0)), "id": record["id"]}
    if mask is not None:
      out["mask"] = mask.astype(np.int32)
    if "label" in record:
      out["label"] = np.int32(record["label"])
    if "metadata" in record:
      out["metadata"] = record["metadata"]
    return out


def _stack(records: Sequence[Record]) -> dict[str, np.ndarray]:
  return {key: np.asarray([r[key] for r in records]) for key in records[0]}


class _Padded(Sequence):
  """A prepared split followed by blank ``valid=0`` records up to ``length``."""

  def __init__(self, prepared: PreparedSplit, length: int, blank: Record):
    self._prepared, self._length, self._blank = prepared, length, blank

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, position: int) -> Record:
    return self._prepared[position] if position < len(self._prepared) else self._blank


def _seed(*parts: int) -> int:
  """An independent 32-bit seed per (seed, process, stream), so streams never share draws."""
  return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def _per_process_batch(global_batch_size: int, process_count: int) -> int:
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} must be a positive multiple of "
                     f"process_count={process_count}")
  return global_batch_size // process_count


def _read_options(cfg: Mapping[str, Any]) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=cfg["read_threads"],
                           prefetch_buffer_size=max(cfg["prefetch"], 1))


def _finish(dataset: grain.MapDataset, cfg: Mapping[str, Any], batch_size: int, *,
            drop_remainder: bool) -> grain.DatasetIterator:
  iter_ds = dataset.to_iter_dataset(_read_options(cfg)).batch(
      batch_size, drop_remainder=drop_remainder, batch_fn=_stack)
  if cfg["num_workers"] > 0:
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; outside an absl app
      flags.FLAGS.mark_as_parsed()  # (notebooks, pytest) their defaults are what we want
    iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg["num_workers"]))
  return iter(iter_ds)


def _checked(data_cfg: Mapping[str, Any]) -> Mapping[str, Any]:
  config_lib.validate_data_config(data_cfg)
  return data_cfg


def _source(data_cfg: Mapping[str, Any], source: DataSource | None) -> DataSource:
  return sources.open_source(data_cfg) if source is None else source


def _prepared(source: DataSource, cfg: Mapping[str, Any], name: str, *,
              keep_context: bool = False) -> PreparedSplit:
  split, indices = splits_lib.resolve_split(source, cfg, name)
  return PreparedSplit(source, with_metadata_vocabulary(cfg, source=source), split, indices,
                       keep_context=keep_context)


_STATS_CACHE: dict[tuple[str, str, str], tuple[tuple[float, ...], tuple[float, ...]]] = {}


def dataset_statistics(data_cfg: Mapping[str, Any], *, source: DataSource | None = None
                       ) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel (mean, std) in [0, 1] units of the prepared ``train_split`` images (for
  ``normalization="dataset"``), computed once per process."""
  cfg = _checked(data_cfg)
  source = _source(cfg, source)
  key = (source.key, _prepare_key(cfg), json.dumps(
      [cfg[k] for k in ("split", "source_split", "train_split", "fold", "num_folds",
                        "split_seed")]))
  if key not in _STATS_CACHE:
    prepared = _prepared(source, cfg, cfg["train_split"])
    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0
    for i in range(len(prepared)):
      pixels = prepared[i]["image"].reshape(-1, 3).astype(np.float64) / 255.0
      total += pixels.sum(0)
      total_sq += (pixels ** 2).sum(0)
      count += len(pixels)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 1e-12))
    logging.info("data: %s mean %s std %s", cfg["train_split"], mean, std)
    _STATS_CACHE[key] = (tuple(mean.tolist()), tuple(std.tolist()))
  return _STATS_CACHE[key]


def metadata_vocabulary(data_cfg: Mapping[str, Any], *, source: DataSource | None = None
                        ) -> metadata_lib.Vocabulary:
  """The vocabulary of ``data.metadata`` from the ``train_split`` records (no image is decoded)."""
  cfg = _checked(data_cfg)
  source = _source(cfg, source)
  split, indices = splits_lib.resolve_split(source, cfg, cfg["train_split"])
  records = source.split(split)
  return metadata_lib.fit_vocabulary(tuple(cfg["metadata"]),
                                     (records[int(i)] for i in indices),
                                     owner=f"dataset {cfg['name']!r} split {cfg['train_split']!r}")


def with_metadata_vocabulary(data_cfg: Mapping[str, Any], *, source: DataSource | None = None
                             ) -> Mapping[str, Any]:
  """``data_cfg``, or a copy with ``metadata_vocabulary`` computed from its training split when
  it has ``metadata`` and no vocabulary yet."""
  if not data_cfg["metadata"] or data_cfg["metadata_vocabulary"]:
    return data_cfg
  resolved = ml_collections.ConfigDict(sources.plain(data_cfg))
  resolved.metadata_vocabulary = metadata_vocabulary(data_cfg, source=source)
  return resolved


def _normalization_stats(source: DataSource, cfg: Mapping[str, Any]):
  mean, std = cfg["mean"], cfg["std"]
  if cfg["normalization"] == "dataset" and not mean and not std:
    mean, std = dataset_statistics(cfg, source=source)
  return preprocess_lib.normalization_stats(cfg["normalization"], mean, std)


# ----------------------------------------------------------------------------------------------
# Public API.


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the trainer needs to size its model and metrics.

  ``task`` is "segmentation" (classes background/lesion) or "classification" (the label names);
  ``label_names`` lists the dataset's labels whatever the task (empty when it has none);
  ``num_examples`` counts every split name the config can read (derived splits included).
  """
  task: str
  num_classes: int
  class_names: tuple[str, ...]
  num_examples: dict[str, int]
  label_names: tuple[str, ...] = ()


def _task(source: DataSource, cfg: Mapping[str, Any]) -> str:
  task = cfg["task"] or ("segmentation" if source.has_mask else "classification")
  if task == "segmentation" and not source.has_mask:
    raise ValueError(f"data.task='segmentation' but dataset {cfg['name']!r} has no masks")
  if task == "classification" and source.class_names is None:
    raise ValueError(f"data.task='classification' but dataset {cfg['name']!r} has no labels")
  return task


def dataset_info(data_cfg: Mapping[str, Any], *, source: DataSource | None = None
                 ) -> DatasetInfo:
  """Task, classes and split sizes of the configured dataset."""
  cfg = _checked(data_cfg)
  source = _source(cfg, source)
  task = _task(source, cfg)
  names = list(source.split_names())
  names += [n for n in ("train", "validation") if n not in names]
  num_examples = {}
  for name in names:
    try:
      num_examples[name] = len(splits_lib.resolve_split(source, cfg, name)[1])
    except ValueError:  # e.g. "validation" of a dataset with a single official part
      continue
  labels = source.class_names or ()
  class_names = SEGMENTATION_CLASSES if task == "segmentation" else labels
  return DatasetInfo(task=task, num_classes=len(class_names), class_names=tuple(class_names),
                     num_examples=num_examples, label_names=tuple(labels))


def make_train_iterator(data_cfg: Mapping[str, Any], *, global_batch_size: int, seed: int,
                        process_index: int = 0, process_count: int = 1,
                        source: DataSource | None = None) -> grain.DatasetIterator:
  """Infinite iterator of augmented per-process training batches of ``data_cfg.train_split``.

  Each process reads records ``process_index::process_count`` of the split, so hosts never see
  the same record in an epoch. Shuffling reshuffles every epoch; with ``class_balanced`` every
  label gets an equal share of the stream (one reshuffled, repeated stream per class, mixed by
  grain), which oversamples rare classes. Deterministic in (seed, process_index); checkpoint with
  ``get_state()`` / ``set_state()``.
  """
  cfg = _checked(data_cfg)
  source = _source(cfg, source)
  batch_size = _per_process_batch(global_batch_size, process_count)
  random_crop = cfg["train_crop"] == "random"
  prepared = _prepared(source, cfg, cfg["train_split"], keep_context=random_crop)
  local = splits_lib.shard(np.arange(len(prepared)), process_index, process_count)
  if local.size == 0:
    raise ValueError(f"split {cfg['train_split']!r} has no records for process {process_index} "
                     f"of {process_count}")

  def stream(positions: np.ndarray, stream_id: int) -> grain.MapDataset:
    dataset = grain.MapDataset.source(prepared.subset(positions))
    if cfg["shuffle"]:
      dataset = dataset.shuffle(seed=_seed(seed, process_index, stream_id))
    return dataset.repeat()

  if cfg["class_balanced"]:
    if source.class_names is None:
      raise ValueError(f"data.class_balanced needs labels; dataset {cfg['name']!r} has none")
    _, labels = splits_lib.split_metadata(source, prepared.split)
    local_labels = labels[prepared.indices[local]]
    classes = np.unique(local_labels)
    dataset = grain.MapDataset.mix(
        [stream(local[local_labels == c], 2 + int(c)) for c in classes],
        weights=[1.0] * len(classes))
  else:
    dataset = stream(local, 0)
  transform = _ToBatchRecord(_normalization_stats(source, cfg),
                             augment_lib.Augmenter(sources.plain(cfg["augment"])),
                             window=cfg["image_size"] if random_crop else None)
  dataset = dataset.random_map(transform, seed=_seed(seed, process_index, 1))
  return _finish(dataset, cfg, batch_size, drop_remainder=True)


def make_eval_iterator(data_cfg: Mapping[str, Any], split: str | None = None, *,
                       global_batch_size: int, process_index: int = 0, process_count: int = 1,
                       source: DataSource | None = None) -> grain.DatasetIterator:
  """One pass over ``split`` (default ``data_cfg.eval_split``) without augmentation.

  Every process yields the same number of full batches; the tail is padded with blank records
  (``valid=0``, ``id=""``), so shapes stay static and padding never counts in metrics.
  """
  cfg = _checked(data_cfg)
  source = _source(cfg, source)
  batch_size = _per_process_batch(global_batch_size, process_count)
  prepared = _prepared(source, cfg, split or cfg["eval_split"])
  local = prepared.subset(splits_lib.shard(np.arange(len(prepared)), process_index,
                                           process_count))
  num_batches = math.ceil(math.ceil(len(prepared) / process_count) / batch_size)
  size = cfg["image_size"]
  blank = {"image": np.zeros((size, size, 3), np.uint8), "id": "", "valid": 0.0}
  if source.has_mask:
    blank["mask"] = np.zeros((size, size), np.uint8)
  if source.class_names is not None:
    blank["label"] = 0
  if prepared.metadata_width is not None:
    blank["metadata"] = np.zeros((prepared.metadata_width,), np.float32)
  dataset = grain.MapDataset.source(_Padded(local, num_batches * batch_size, blank))
  dataset = dataset.map(_ToBatchRecord(_normalization_stats(source, cfg)))
  return _finish(dataset, cfg, batch_size, drop_remainder=False)
