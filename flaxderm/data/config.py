"""``data`` config: every input-pipeline option with its default, and its validation.

The training config embeds ``default_data_config()`` as ``config.data``; experiments override
fields (``config.data.image_size = 224``, ``config.data.augment.rotate.p = 0.5``). Defaults of
preprocessing and augmentation parameters come from the functions that use them, so the two can
never disagree.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from flaxderm.data import augment as augment_lib
from flaxderm.data import metadata as metadata_lib
from flaxderm.data import preprocess as preprocess_lib
from flaxderm.data import splits as splits_lib

TASKS = ("", "segmentation", "classification")
TRAIN_CROPS = ("center", "random")


def _keyword_defaults(fn: Callable[..., Any], *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
  return {name: p.default for name, p in inspect.signature(fn).parameters.items()
          if p.kind is p.KEYWORD_ONLY and name not in skip}


def default_preprocess_config() -> dict[str, Any]:
  """``data.preprocess``: black-frame and hair removal switches and parameters (paper 004)."""
  skip = ("reference_size",)
  return {
      "remove_black_frame": False,
      "black_frame": _keyword_defaults(preprocess_lib.remove_black_frame, skip=skip),
      "remove_hair": False,
      "hair": {**_keyword_defaults(preprocess_lib.hair_mask, skip=skip),
               **_keyword_defaults(preprocess_lib.remove_hair, skip=skip)},
      # Pixel sizes above are for images whose short side is this many pixels; they scale with
      # the image (0: absolute pixels).
      "reference_size": 300,
  }


def default_data_config() -> ml_collections.ConfigDict:
  """Every data option with its default; see the comments for each group."""
  c = ml_collections.ConfigDict()
  # Dataset (flaxderm.data.builders.prepare arguments). data_dir None: $FLAXDERM_DATA_DIR or
  # ~/tensorflow_datasets.
  c.name = "synthetic_lesions"
  c.builder_config = None
  c.builder_kwargs = ml_collections.ConfigDict()
  c.data_dir = None
  c.manual_dir = None
  c.skip_bad_examples = False
  # Processes that decode, downscale and encode the images while the dataset is prepared (once);
  # None: one per core, 1: the training process only. The prepared copy does not depend on it.
  c.prepare_workers = None
  # "" = segmentation when the dataset has masks, else classification. Batches carry `mask` and
  # `label` whenever the dataset has them.
  c.task = ""

  # Splits. split: one of splits.SPLIT_MODES. "official" reads train_split/eval_split as the
  # dataset's own splits; "hashed" / "kfold" derive "train" and "validation" from source_split by
  # `group` (other names still read official splits); "all" trains on all of source_split.
  c.split = "official"
  c.source_split = "train"  # "a+b" concatenates official splits
  c.num_folds = 10
  c.fold = 0
  c.split_seed = 0  # k-fold group shuffling
  c.train_split = "train"
  c.eval_split = "validation"

  # Geometry and values. resize: preprocess.RESIZE_MODES ("crop" = center crop of crop_fraction
  # of the short side, then proportional resize). normalization: preprocess.NORMALIZATIONS;
  # "dataset" uses mean/std (computed from train_split when left empty).
  c.image_size = 64
  c.resize = "crop"
  c.crop_fraction = 1.0
  # Training window (TRAIN_CROPS; resize="crop" only): "center" trains on the square evaluation
  # sees; "random" keeps the image around it at the same scale and trains on a random image_size
  # window of it each time (the reference's short-side resize + random crop; evaluation unchanged).
  c.train_crop = "center"
  c.normalization = "imagenet"
  c.mean = ()
  c.std = ()

  # Clinical metadata as a model input (flaxderm.data.metadata): the fields encoded into each
  # batch's `metadata` vector, e.g. ("age", "sex", "site"); () = images only. The vocabulary
  # (number fields' mean/std, category fields' categories) is computed from train_split when
  # left empty, and a run records it in its config.json.
  c.metadata = ()
  c.metadata_vocabulary = ml_collections.ConfigDict()

  c.preprocess = ml_collections.ConfigDict(default_preprocess_config())
  c.augment = ml_collections.ConfigDict(augment_lib.default_augment_config())

  # Sampling and input throughput.
  c.class_balanced = False  # equal share of every label per batch (oversamples rare classes)
  c.shuffle = True
  c.cache = False  # keep decoded+preprocessed+resized images in memory (small datasets)
  c.num_workers = 0  # grain worker processes; 0 = threads in this process
  c.read_threads = 2  # threads that prepare examples (OpenCV releases the GIL)
  c.prefetch = 16  # examples buffered ahead per thread pool
  return c


def _check_keys(cfg: Mapping[str, Any], reference: Mapping[str, Any], prefix: str) -> None:
  for key in cfg:
    if key not in reference:
      raise ValueError(f"{prefix}.{key}: unknown option; expected one of {sorted(reference)}")


def validate_data_config(cfg: Mapping[str, Any]) -> None:
  """ValueError naming the first bad key: unknown options, presets, modes or out-of-range values."""
  reference = default_data_config()
  _check_keys(cfg, reference, "data")
  _check_keys(cfg["preprocess"], reference.preprocess, "data.preprocess")
  for step in ("black_frame", "hair"):
    _check_keys(cfg["preprocess"][step], reference.preprocess[step], f"data.preprocess.{step}")
  augment_lib.validate_augment_config(cfg["augment"])
  metadata_lib.check_inputs(tuple(cfg["metadata"]))
  if cfg["metadata"] and cfg["task"] == "segmentation":
    raise ValueError("data.metadata: metadata inputs are for classification; data.task is "
                     "'segmentation'")
  if not isinstance(cfg["image_size"], int) or cfg["image_size"] <= 0:
    raise ValueError(f"data.image_size must be a positive int, got {cfg['image_size']!r}")
  if cfg["normalization"] not in preprocess_lib.NORMALIZATIONS:
    raise ValueError(f"data.normalization: unknown preset {cfg['normalization']!r}; expected one "
                     f"of {preprocess_lib.NORMALIZATIONS}")
  if cfg["resize"] not in preprocess_lib.RESIZE_MODES:
    raise ValueError(f"data.resize: unknown mode {cfg['resize']!r}; expected one of "
                     f"{preprocess_lib.RESIZE_MODES}")
  if cfg["train_crop"] not in TRAIN_CROPS:
    raise ValueError(f"data.train_crop: unknown {cfg['train_crop']!r}; expected one of "
                     f"{TRAIN_CROPS}")
  if cfg["train_crop"] == "random" and cfg["resize"] != "crop":
    raise ValueError(f"data.train_crop='random' needs data.resize='crop', got "
                     f"{cfg['resize']!r}")
  if not 0 < cfg["crop_fraction"] <= 1:
    raise ValueError(f"data.crop_fraction must be in (0, 1], got {cfg['crop_fraction']}")
  if cfg["task"] not in TASKS:
    raise ValueError(f"data.task: unknown task {cfg['task']!r}; expected one of {TASKS}")
  if cfg["split"] not in splits_lib.SPLIT_MODES:
    raise ValueError(f"data.split: unknown mode {cfg['split']!r}; expected one of "
                     f"{splits_lib.SPLIT_MODES}")
  if cfg["split"] == "kfold":
    if cfg["num_folds"] < 2:
      raise ValueError(f"data.num_folds must be at least 2, got {cfg['num_folds']}")
    if not 0 <= cfg["fold"] < cfg["num_folds"]:
      raise ValueError(f"data.fold must be in [0, data.num_folds={cfg['num_folds']}), got "
                       f"{cfg['fold']}")
  workers = cfg["prepare_workers"]
  if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                              or workers < 1):
    raise ValueError(f"data.prepare_workers must be None (one per core) or an int >= 1, got "
                     f"{workers!r}")
  for key in ("num_workers", "read_threads", "prefetch"):
    if cfg[key] < 0:
      raise ValueError(f"data.{key} must be >= 0, got {cfg[key]}")
