"""What every flaxderm TFDS builder shares.

* Configs whose option fields are the builder kwargs; a config built from kwargs gets a name that
  spells them out, so two preparations with different options never share a directory.
* Finding the official files under the manual directory (or downloading them when the dataset
  has public URLs and no manual directory is given). A manual directory that does not exist, or
  holds none of the official files, is an error before preparation starts.
* The source record (``source.json`` next to the prepared data): the manual directory and a
  fingerprint of the official files read (paths, sizes, mtimes) and of the builder config, so a
  prepared copy is only reused for the files it was prepared from.
* Reading and checking images and masks, and downscaling them (``max_size``), in
  ``prepare_workers`` processes (``map_in_order``) whose results are written in the official order.
* Bad-example accounting: a bad example (missing or undecodable file, mask of the wrong size or
  not binary, unknown class, a clinical value that does not parse, ...) stops preparation with a
  ValueError naming the file and the problem, or with ``skip_bad_examples=True`` is left out,
  logged, and listed in ``bad_examples.json`` next to the prepared data. Examples a builder leaves
  out by design (another class subset, an official duplicate) are counted there under
  ``left_out``. Nothing is dropped silently.
* Clinical fields (``flaxderm.data.clinical``): a builder's ``CLINICAL_FIELDS`` become features of
  every record, missing values stored as missing (NaN, ``""``).
* Label sets: a dataset with more than one label (ISIC 2020's benign/malignant and diagnosis)
  has a config option ``label`` choosing the one stored as ``label`` (``LabelSetConfig``).

Images are encoded here (OpenCV) and handed to TFDS as bytes, so preparing a dataset never imports
TensorFlow (nor lets it touch a GPU).
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import csv
import dataclasses
import functools
import hashlib
import inspect
import io
import json
import logging
import multiprocessing
import os
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import cv2
from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds
from tensorflow_datasets.core import shuffle as tfds_shuffle

from flaxderm.data import clinical
from flaxderm.data import preprocess

log = logging.getLogger(__name__)

REPORT_NAME = "bad_examples.json"
SOURCE_NAME = "source.json"
# Problems quoted in an error message; the report lists all of them.
_QUOTED_PROBLEMS = 5

# Mask pixel values: 0/1 masks are taken as they are. 0/255 masks may carry JPEG-like noise: a
# value within MASK_TOLERANCE grey levels of 0 or 255 reads as background or lesion, and up to
# MASK_MAX_AMBIGUOUS of the pixels may lie in between (ringing along the border; they are
# thresholded at 128). Anything else (label-index masks, soft masks, colour masks) is "not binary".
MASK_TOLERANCE = 32
MASK_MAX_AMBIGUOUS = 0.01

# Examples read ahead per preparation process: enough to keep every process busy while the
# writer catches up, few enough that memory does not grow with the dataset.
IN_FLIGHT_PER_WORKER = 4
# TFDS keeps examples in the order of their integer keys (disable_shuffling) and, once a split
# passes IN_MEMORY_SPLIT_BYTES, sorts them into disk buckets by key / KEY_SPACE, reading one bucket
# at a time when it writes the shards. Keys spread over the whole range keep those buckets small;
# keys 0, 1, 2, ... would all land in the first bucket, read back into memory at once.
KEY_SPACE = 2 ** 128
# A split's examples stay in memory until they pass this many bytes, then go to those disk
# buckets. TFDS's own threshold (shuffle.MAX_MEM_BUFFER_SIZE, 1 GB) made a preparation's peak
# memory grow with the dataset up to 1 GB: 896 MiB at 5,000 ISIC 2019-sized images, 1,885 MiB at
# 25,000 (benchmarks/RESULTS.md, "Large dataset"). Spilling sooner costs one more write and read of
# each record on disk.
IN_MEMORY_SPLIT_BYTES = 64 << 20


@contextlib.contextmanager
def _split_memory_bounded(limit: int) -> Iterator[None]:
  """TFDS's in-memory threshold for a split's examples lowered to ``limit`` bytes (never
  raised) while a preparation writes; restored afterwards."""
  previous = tfds_shuffle.MAX_MEM_BUFFER_SIZE
  tfds_shuffle.MAX_MEM_BUFFER_SIZE = min(previous, limit)
  try:
    yield
  finally:
    tfds_shuffle.MAX_MEM_BUFFER_SIZE = previous


class BadExample(Exception):
  """One example cannot be used; ``file`` is the file at fault."""

  def __init__(self, file: Path | str, problem: str):
    super().__init__(f"{file}: {problem}")
    self.file = str(file)
    self.problem = problem

  def __reduce__(self):  # it travels back from the preparation processes
    return BadExample, (self.file, self.problem)


# ----------------------------------------------------------------------------------------------
# Configs.


@dataclasses.dataclass(eq=False)
class Config(tfds.core.BuilderConfig):
  """A builder config; fields added by subclasses are its options (the builder kwargs)."""

  def options(self) -> dict[str, Any]:
    inherited = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
            if f.name not in inherited}

  def validate(self, builder: str) -> None:
    """ValueError naming ``builder`` and the option when an option value is out of range."""

  def class_names(self) -> tuple[str, ...]:
    """The label names this config stores (empty: the builder decides)."""
    return ()


@dataclasses.dataclass(eq=False)
class FileConfig(Config):
  """Options of datasets read from image files."""

  # Longest image side stored (larger images are downscaled, aspect ratio kept); 0 keeps the
  # originals. 1024 keeps preparation of the multi-megapixel ISIC images tractable and stays far
  # above the input sizes the papers train at (224-256 px).
  max_size: int = 1024

  def validate(self, builder: str) -> None:
    if self.max_size < 0:
      raise ValueError(f"{builder}: max_size must be >= 0 (0 keeps the originals), got "
                       f"{self.max_size}")


@dataclasses.dataclass(eq=False)
class LabelSetConfig(FileConfig):
  """Options of a dataset with several label sets: ``label`` (a key of ``LABEL_SETS``) is the one
  stored as the records' ``label``. Each label set has a predefined config (``presets``), so
  ``builder_kwargs={"label": ...}`` and ``builder_config=...`` name the same one. A builder may keep
  the other labels in every record as audit fields (isic2020's ``malignant`` and ``diagnosis``),
  which ``clinical.NEVER_INPUTS`` lists.
  """

  LABEL_SETS: ClassVar[dict[str, tuple[str, ...]]] = {}
  label: str = ""  # set by presets()

  def class_names(self) -> tuple[str, ...]:
    return self.LABEL_SETS[self.label]

  def validate(self, builder: str) -> None:
    super().validate(builder)
    if self.label not in self.LABEL_SETS:
      raise ValueError(f"{builder}: label must be one of {sorted(self.LABEL_SETS)}, got "
                       f"{self.label!r}")

  @classmethod
  def presets(cls) -> list[LabelSetConfig]:
    """One config per label set: "default" for the first, the others named after theirs."""
    return [cls(name=label if i else "default", label=label,
                description=f"label: {label} ({len(names)} classes)")
            for i, (label, names) in enumerate(cls.LABEL_SETS.items())]


def _name_part(key: str, value: Any) -> str:
  text = str(value).lower() if isinstance(value, bool) else str(value)
  if not re.fullmatch(r"[\w.+]+", text):
    raise ValueError(f"builder kwarg {key}={value!r}: only letters, digits, '_', '.', '+' can go "
                     "into a config name")
  return f"{key}-{text}"


def _coerce(builder: str, key: str, value: Any, default: Any) -> Any:
  """``value`` with the type of the option's default (ints accepted for floats)."""
  kind = type(default)
  if kind is float and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
    raise ValueError(f"{builder}: builder kwarg {key}={value!r} must be of type {kind.__name__}")
  return value


# ----------------------------------------------------------------------------------------------
# The base builder.


@dataclasses.dataclass
class Source:
  """One example as the download describes it, before its files are read.

  ``label`` is a class name (checked against the builder's classes); ``label_file`` the file it
  came from. A metadata row that is bad in itself (no diagnosis, two diagnoses, ...) carries its
  ``problem`` and the ``problem_file`` at fault.
  """

  id: str
  image: Path
  group: str = ""
  mask: Path | None = None
  label: str | None = None
  label_file: Path | None = None
  problem: str = ""
  problem_file: Path | None = None
  clinical: dict[str, float | str] = dataclasses.field(default_factory=dict)

  def read_clinical(self, row: Mapping[str, str], columns: Mapping[str, str], file: Path
                    ) -> Source:
    """Sets ``clinical`` from a metadata ``row`` of ``file`` (``columns``: field -> column); a
    value that does not parse makes this source bad, naming the column."""
    try:
      self.clinical = clinical.parse_row(row, columns)
    except ValueError as e:
      if not self.problem:
        self.problem, self.problem_file = f"{self.id}: {e}", file
    return self


def unlisted(files: Mapping[str, Path], listed: Collection[str], metadata: Path) -> list[Source]:
  """Bad sources for the ``files`` (id -> path) that the ``metadata`` file has no row for."""
  return [Source(id=i, image=f, problem=f"no row for {i} in {metadata.name}", problem_file=f)
          for i, f in sorted(files.items()) if i not in listed]


class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the flaxderm builders (ArrayRecord output, records in the official order).

  Subclasses read from files by implementing ``_sources`` (or generate arrays by overriding
  ``_split_generators``, and set ``GENERATED``). Class attributes: ``HAS_MASK``,
  ``IMAGE_FORMAT`` ("jpeg" for photographs, "png" for lossless sources), ``HOMEPAGE``,
  ``CITATION``, ``CLINICAL_FIELDS`` (names from ``clinical.FIELDS``, filled from each
  ``Source.clinical``); ``class_names()`` returns the label names (empty: no label; by default the
  config's).
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "First release."}
  HAS_MASK: ClassVar[bool] = False
  GENERATED: ClassVar[bool] = False  # makes its examples itself: reads no manual directory
  IMAGE_FORMAT: ClassVar[str] = "jpeg"
  CLINICAL_FIELDS: ClassVar[tuple[str, ...]] = ()
  HOMEPAGE: ClassVar[str] = ""
  CITATION: ClassVar[str] = ""
  MANUAL_DOWNLOAD_INSTRUCTIONS = ""

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's own lookup needs the `importlib_resources` backport for builders inside a package.
    return epath.Path(inspect.getfile(cls))

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    clinical.check_fields(cls.CLINICAL_FIELDS, cls.__name__)

  def __init__(self, *, skip_bad_examples: bool = False, prepare_workers: int | None = None,
               **kwargs):
    """``prepare_workers``: processes that read, downscale and encode the images while the
    dataset is prepared (None: one per core; 1: this process only). The prepared records do not
    depend on it."""
    if prepare_workers is not None and (isinstance(prepare_workers, bool) or
                                        not isinstance(prepare_workers, int) or
                                        prepare_workers < 1):
      raise ValueError(f"prepare_workers must be None (one per core) or an int >= 1, got "
                       f"{prepare_workers!r}")
    self.skip_bad_examples = skip_bad_examples
    self.prepare_workers = prepare_workers or available_cores()
    self._bad: list[dict[str, str]] = []
    self._left_out: dict[str, int] = {}
    self._source: dict[str, Any] = {}
    super().__init__(**kwargs)

  def __getstate__(self):
    # Grain worker processes get the data source pickled. TFDS accepts a predefined config only
    # as the class's own object (configs compare by identity), so one travels by its name.
    state = dict(super().__getstate__()["_original_state"])
    if any(state.get("config") is c for c in self.BUILDER_CONFIGS):
      state["config"] = state["config"].name
    return {"_original_state": state}

  @classmethod
  def resolve_config(cls, name: str | None, overrides: Mapping[str, Any] | None) -> Config:
    """The config ``name`` (default: the first) with option ``overrides`` (builder kwargs).

    The result is a predefined config when one has the same options; otherwise a new config
    named ``<base>-<key>-<value>...`` after the options that differ from ``name``'s.
    """
    configs = {c.name: c for c in cls.BUILDER_CONFIGS}
    name = name or cls.BUILDER_CONFIGS[0].name
    if name not in configs:
      raise ValueError(f"{cls.name}: unknown builder_config {name!r}; expected one of "
                       f"{sorted(configs)}")
    base = configs[name]
    defaults = base.options()
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
      raise ValueError(f"{cls.name}: unknown builder_kwargs {unknown}; options are "
                       f"{sorted(defaults)}")
    changed = {k: _coerce(cls.name, k, v, defaults[k]) for k, v in overrides.items()}
    changed = {k: v for k, v in changed.items() if v != defaults[k]}
    options = {**defaults, **changed}
    for config in configs.values():
      if config.options() == options:
        return config
    suffix = "".join("-" + _name_part(k, v) for k, v in sorted(changed.items()))
    description = f"{base.name} with " + ", ".join(f"{k}={v!r}" for k, v in sorted(changed.items()))
    config = dataclasses.replace(base, name=base.name + suffix, description=description, **changed)
    config.validate(cls.name)
    return config

  def class_names(self) -> tuple[str, ...]:
    return self.builder_config.class_names()

  def has_mask(self) -> bool:
    return self.HAS_MASK

  def official_files(self) -> dict[str, str | None]:
    """The official folders/files read from the manual directory: name -> public URL (None when
    the dataset is only distributed by hand). Empty for generated datasets."""
    return {}

  # --- Where the examples come from.

  def find_official_files(self, manual_dir: str | os.PathLike) -> dict[str, Path | None]:
    """name -> path of the ``official_files`` under ``manual_dir`` (searched a few levels deep).

    Reads no image, so a wrong folder fails in seconds: ValueError when ``manual_dir`` does not
    exist or holds none of the official files (naming them and how to get them).
    """
    root = Path(manual_dir).expanduser()
    if not root.is_dir():
      raise ValueError(f"{self.name}: manual_dir {root} does not exist (or is not a folder)")
    wanted = self.official_files()
    found = {name: find(root, name) for name in wanted}
    if not any(found.values()):
      raise ValueError(f"{self.name}: none of {sorted(wanted)} found under the manual directory "
                       f"{root.resolve()} (nor in its subfolders, 3 levels down).\n"
                       f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return found

  def source_record(self, manual_dir: str | os.PathLike, found: Mapping[str, Path | None]
                    ) -> dict[str, Any]:
    """The record of preparing from ``found`` (see ``SOURCE_NAME``): its ``fingerprint`` changes
    when a file is added, removed, resized or touched, or the builder config changes."""
    files = []
    for name, path in sorted(found.items()):
      if path is None:
        continue
      path = path.resolve()
      members = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
      for member in members:
        stat = member.stat()
        files.append((str(member), stat.st_size, stat.st_mtime_ns))
    identity = {"builder": self.name, "version": str(self.version),
                "config": {k: str(v) for k, v in self.builder_config.options().items()},
                "files": files}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return {"manual_dir": str(Path(manual_dir).resolve()), "num_files": len(files),
            "fingerprint": digest}

  def recorded_source(self) -> dict[str, Any] | None:
    """The source record of the prepared copy (None: not prepared, or prepared before records)."""
    path = Path(os.fspath(self.data_path)) / SOURCE_NAME
    return json.loads(path.read_text()) if path.is_file() else None

  def _info(self) -> tfds.core.DatasetInfo:
    features = {
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format=self.IMAGE_FORMAT),
        "id": tfds.features.Text(),
        "group": tfds.features.Text(),
    }
    if self.has_mask():
      features["mask"] = tfds.features.Image(shape=(None, None, 1), encoding_format="png")
    if self.class_names():
      features["label"] = tfds.features.ClassLabel(names=self.class_names())
    for name in self.CLINICAL_FIELDS:
      features[name] = (tfds.features.Scalar(np.float32, doc=clinical.FIELDS[name].meaning)
                        if clinical.FIELDS[name].kind == clinical.NUMBER else
                        tfds.features.Text(doc=clinical.FIELDS[name].meaning))
    return tfds.core.DatasetInfo(
        builder=self, description=(type(self).__doc__ or "").strip(),
        features=tfds.features.FeaturesDict(features), homepage=self.HOMEPAGE or None,
        citation=self.CITATION or None, disable_shuffling=True)

  # --- Bad-example accounting.

  def _download_and_prepare(self, dl_manager, download_config):
    self._bad, self._left_out = [], {}
    with _split_memory_bounded(IN_MEMORY_SPLIT_BYTES):
      super()._download_and_prepare(dl_manager, download_config)
    # Written into the temporary data directory, so the report appears with the data or not at all.
    report = {"dataset": self.info.full_name, "skip_bad_examples": self.skip_bad_examples,
              "num_skipped": len(self._bad), "skipped": self._bad, "left_out": self._left_out}
    data_path = Path(os.fspath(self.data_path))
    (data_path / REPORT_NAME).write_text(json.dumps(report, indent=1))
    if self._source:
      (data_path / SOURCE_NAME).write_text(json.dumps(self._source, indent=1))
    if self._bad:
      log.warning("%s: skipped %d bad examples (listed in %s), e.g. %s", self.info.full_name,
                  len(self._bad), REPORT_NAME, _quote(self._bad))

  def _skip(self, split: str, example_id: str, bad: BadExample) -> None:
    """Records a bad example, or raises when the user did not ask to skip bad examples."""
    if not self.skip_bad_examples:
      raise ValueError(f"{self.name}: example {example_id!r} ({split}): {bad}. Pass "
                       "skip_bad_examples=True to skip bad examples and list them in "
                       f"{REPORT_NAME}.")
    self._bad.append({"split": split, "id": example_id, "file": bad.file, "problem": bad.problem})

  def _leave_out(self, reason: str, count: int) -> None:
    """Counts (log and report) ``count`` examples left out by design, for ``reason``."""
    if count:
      log.info("%s: left out %d images: %s", self.name, count, reason)
      self._left_out[reason] = self._left_out.get(reason, 0) + count

  # --- Reading the official files.

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    splits = self._sources(dl_manager)
    return {split: self._generate_examples(split, self._check_sources(split, sources))
            for split, sources in splits.items()}

  def _sources(self, dl_manager: tfds.download.DownloadManager) -> dict[str, list[Source]]:
    raise NotImplementedError(f"{type(self).__name__} reads no files")

  def _check_sources(self, split: str, sources: Sequence[Source]) -> list[Source]:
    """Sources whose metadata and files look usable; the others are errors or skipped.

    Every problem found without decoding (missing files, unknown classes, duplicate ids, bad
    metadata rows) is collected first, so the error names how many examples are affected.
    """
    names = self.class_names()
    seen: set[str] = set()
    good, bad = [], []
    for s in sources:
      problem = None
      if s.problem:
        problem = BadExample(s.problem_file or s.image, s.problem)
      elif s.id in seen:
        problem = BadExample(s.image, f"duplicate id {s.id!r}")
      elif names and s.label not in names:
        problem = BadExample(s.label_file or s.image,
                             f"unknown class {s.label!r} for {s.id} (expected one of {names})")
      elif not s.image.is_file():
        problem = BadExample(s.image, "missing image file")
      elif self.has_mask() and (s.mask is None or not s.mask.is_file()):
        problem = BadExample(s.mask or s.image, "missing mask file")
      seen.add(s.id)
      (bad if problem else good).append((s, problem))
    if bad and not self.skip_bad_examples:
      listed = [{"file": p.file, "problem": p.problem} for _, p in bad]
      raise ValueError(
          f"{self.name}: {len(bad)} of {len(sources)} {split} examples are unusable, e.g. "
          f"{_quote(listed)}. Pass skip_bad_examples=True to skip them and list them in "
          f"{REPORT_NAME}.")
    for s, problem in bad:
      self._skip(split, s.id, problem)
    if not good:
      raise ValueError(f"{self.name}: no usable {split} example among {len(sources)}")
    return [s for s, _ in good]

  def _generate_examples(self, split: str, sources: Sequence[Source]) -> Iterator[tuple[int, dict]]:
    read = functools.partial(
        read_example, max_size=self.builder_config.max_size, encoding=self.IMAGE_FORMAT,
        with_mask=self.has_mask(), clinical_fields=self.CLINICAL_FIELDS,
        class_names=self.class_names())
    workers = min(self.prepare_workers, len(sources))
    for i, (s, example) in enumerate(zip(sources, map_in_order(read, sources, workers))):
      if isinstance(example, BadExample):
        self._skip(split, s.id, example)
        continue
      yield i * (KEY_SPACE // len(sources)), example

  def _locate(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Path | None]:
    """Paths of the ``official_files`` under the manual directory; with no manual directory and
    public URLs, the archives are downloaded and extracted by TFDS instead."""
    root = manual_root(dl_manager)
    wanted = self.official_files()
    if root is not None:
      found = self.find_official_files(root)
      self._source = self.source_record(root, found)
      return found
    urls = {name: url for name, url in wanted.items() if url}
    if not urls:
      raise ValueError(f"{self.name}: no manual_dir given; it must hold {sorted(wanted)}.\n"
                       f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    log.info("%s: no manual directory; downloading %s", self.name, sorted(urls.values()))
    fetched = dl_manager.download_and_extract(urls)
    self._source = {"manual_dir": None, "downloaded": sorted(urls.values())}
    return {name: _in_download(Path(os.fspath(fetched[name])), name) if name in fetched else None
            for name in wanted}


def read_example(s: Source, *, max_size: int, encoding: str, with_mask: bool,
                 clinical_fields: Sequence[str], class_names: Sequence[str]
                 ) -> dict[str, Any] | BadExample:
  """The record of source ``s`` (image downscaled to ``max_size`` and encoded), or the BadExample
  it is (returned, not raised: it is accounted for in the order of the sources)."""
  try:
    image, original, stored = read_image(s.image, max_size=max_size, encoding=encoding)
    example = {"image": image, "id": s.id, "group": s.group or s.id}
    example.update({name: s.clinical.get(name, clinical.missing(clinical.FIELDS[name].kind))
                    for name in clinical_fields})
    if with_mask:
      example["mask"] = encode_png(read_mask(s.mask, image_size=original, size=stored))
  except BadExample as bad:
    return bad
  if class_names:
    example["label"] = class_names.index(s.label)
  return example


def available_cores() -> int:
  """Cores this process may run on (its CPU affinity where the OS has one)."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def map_in_order(fn: Callable[[Any], Any], items: Iterable[Any], workers: int) -> Iterator[Any]:
  """``fn(item)`` for each item, in order: in this process when ``workers`` is 1, else in
  ``workers`` processes with at most ``IN_FLIGHT_PER_WORKER`` items each in flight, so memory stays
  flat however many items there are.

  The processes are spawned, not forked: a forked copy of a process running JAX or grain threads
  can deadlock. Each watches its parent and exits when the parent is gone (killed), so a killed
  preparation leaves no processes behind.
  """
  if workers == 1:
    yield from map(fn, items)
    return
  pending = collections.deque()
  with concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=multiprocessing.get_context("spawn"), initializer=_exit_with_parent,
      initargs=(os.getpid(),)) as pool:
    for item in items:
      pending.append(pool.submit(fn, item))
      if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


def _exit_with_parent(parent: int) -> None:
  def watch():
    while os.getppid() == parent:
      time.sleep(1)
    os._exit(1)  # pylint: disable=protected-access  (no clean-up to run: the parent is gone)

  threading.Thread(target=watch, daemon=True).start()


def _quote(problems: Sequence[Mapping[str, str]]) -> str:
  shown = "; ".join(f"{p['file']}: {p['problem']}" for p in problems[:_QUOTED_PROBLEMS])
  more = len(problems) - _QUOTED_PROBLEMS
  return shown + (f"; ... and {more} more" if more > 0 else "")


def manual_root(dl_manager: tfds.download.DownloadManager) -> Path | None:
  """The manual directory, or None when it was not given, is absent or is empty."""
  try:
    return Path(os.fspath(dl_manager.manual_dir))
  except AssertionError:  # TFDS asserts the directory exists and is not empty.
    return None


def find(root: Path, name: str, max_depth: int = 3) -> Path | None:
  """``root/.../name`` at most ``max_depth`` folders down: the shallowest; ambiguity is an error."""
  level = [root]
  for _ in range(max_depth + 1):
    matches = [d / name for d in level if (d / name).exists()]
    if len(matches) > 1:
      raise ValueError(f"{name} found in several places: {[str(m) for m in matches]}; point "
                       "manual_dir at one of them")
    if matches:
      return matches[0]
    level = [Path(e.path) for d in level for e in sorted(os.scandir(d), key=lambda e: e.name)
             if e.is_dir() and not e.name.startswith(".")]
  return None


def _in_download(path: Path, name: str) -> Path:
  """Where ``name`` lies in a downloaded file or extracted archive."""
  if path.is_file():
    return path
  return find(path, name) or path


def read_csv(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
  """Rows of a CSV file that must have ``columns`` (ValueError naming the file otherwise)."""
  with open(path, newline="", encoding="utf-8-sig") as f:
    reader = csv.DictReader(f)
    missing = [c for c in columns if c not in (reader.fieldnames or ())]
    if missing:
      raise ValueError(f"{path}: missing columns {missing} (has {reader.fieldnames})")
    return [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]


def one_hot_label(row: Mapping[str, str], columns: Sequence[str], image: str
                  ) -> tuple[str | None, str]:
  """(the one column of ``columns`` marked 1.0 in a one-hot ground-truth ``row``, "") or (None,
  the problem with the row of ``image``)."""
  try:
    marked = [c for c in columns if float(row[c]) >= 0.5]
  except ValueError:
    return None, f"row of {image} marks no valid classes (a value in {list(columns)} is no number)"
  if len(marked) != 1:
    return None, f"row of {image} marks {len(marked)} classes (expected exactly one 1.0)"
  return marked[0], ""


# ----------------------------------------------------------------------------------------------
# Images and masks.


def scaled_size(size: tuple[int, int], max_size: int) -> tuple[int, int]:
  """(width, height) with the longest side at most ``max_size`` (0: unchanged), aspect kept."""
  w, h = size
  if not max_size or max(w, h) <= max_size:
    return w, h
  scale = max_size / max(w, h)
  return max(1, round(w * scale)), max(1, round(h * scale))


def encode_png(array: np.ndarray) -> bytes:
  """PNG bytes of a uint8 (H, W) or RGB (H, W, 3) array."""
  if array.ndim == 3:
    array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
  return cv2.imencode(".png", array)[1].tobytes()


def encode_jpeg(array: np.ndarray) -> bytes:
  return cv2.imencode(".jpg", cv2.cvtColor(array, cv2.COLOR_RGB2BGR),
                      [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def read_image(path: Path, *, max_size: int, encoding: str
               ) -> tuple[bytes, tuple[int, int], tuple[int, int]]:
  """(encoded RGB image, original (w, h), stored (w, h)); BadExample when it cannot be decoded.

  The image is stored upright, as viewers and ``launch.py predict`` show it (its EXIF orientation
  applied, ``preprocess.rgb_pixels``), so its mask is drawn on what the sizes describe. A JPEG
  that needs no resizing is stored as it is (no second lossy encoding); large JPEGs are
  decoded at a reduced scale directly (PIL draft mode), which is what keeps downscaling fast.
  JPEGs are also decoded strictly (``preprocess.check_jpeg``), so damaged data is reported.
  """
  try:
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as im:
      original = preprocess.upright_size(im)
      stored = scaled_size(original, max_size)
      opened_as = (im.format, im.mode)  # draft() below may change the mode
      if (encoding == "jpeg" and im.format == "JPEG" and im.mode == "RGB" and stored == original
          and preprocess.orientation(im) == 1):
        im.load()  # decodes everything: a truncated file fails here
        preprocess.check_jpeg(data, *opened_as)
        return data, original, stored
      if stored != original:
        im.draft("RGB", stored if original == im.size else stored[::-1])  # in stored geometry
      rgb = preprocess.rgb_pixels(im, str(path))
      preprocess.check_jpeg(data, *opened_as)
  # PIL reports broken files with many exception types (OSError, SyntaxError, struct.error, ...).
  except Exception as e:  # pylint: disable=broad-except
    raise BadExample(path, f"cannot decode image ({type(e).__name__}: {e})") from e
  if rgb.shape[1::-1] != stored:
    rgb = cv2.resize(rgb, stored, interpolation=cv2.INTER_AREA)
  return (encode_jpeg(rgb) if encoding == "jpeg" else encode_png(rgb)), original, stored


def read_mask(path: Path, *, image_size: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
  """uint8 (H, W) 0/1 mask at ``size`` (w, h); BadExample when unreadable, of another size than
  its image (``image_size``) or not binary (see MASK_TOLERANCE)."""
  try:
    with Image.open(path) as im:
      im.load()
      mode = im.mode
      if mode in ("RGB", "RGBA"):
        rgb = np.asarray(im.convert("RGB"))
        if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()):
          raise BadExample(path, "mask has colours (RGB channels differ); expected grey levels")
        values = rgb[..., 0]
      elif mode in ("1", "L", "LA", "P"):
        values = np.asarray(im.convert("L"))
      else:
        raise BadExample(path, f"unsupported mask mode {mode!r}")
  except BadExample:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise BadExample(path, f"cannot decode mask ({type(e).__name__}: {e})") from e
  if values.shape[::-1] != tuple(image_size):
    raise BadExample(path, f"mask is {values.shape[1]}x{values.shape[0]} but its image is "
                     f"{image_size[0]}x{image_size[1]}")
  mask = binarize(values, path)
  if tuple(size) != tuple(image_size):
    # Area-average then majority: the stored border follows the full-resolution one.
    mask = (cv2.resize(mask * 255, size, interpolation=cv2.INTER_AREA) >= 128).astype(np.uint8)
  return mask


def binarize(values: np.ndarray, path: Path | str) -> np.ndarray:
  """0/1 uint8 mask from 0/1 or (noisy, see MASK_TOLERANCE) 0/255 grey levels."""
  counts = np.bincount(values.ravel(), minlength=256)
  if not counts[2:].any():
    return values.astype(np.uint8)
  low, high = counts[:MASK_TOLERANCE + 1].sum(), counts[255 - MASK_TOLERANCE:].sum()
  ambiguous = values.size - low - high
  if high == 0 or ambiguous > MASK_MAX_AMBIGUOUS * values.size:
    present = np.flatnonzero(counts)
    shown = ", ".join(map(str, present[:8])) + (", ..." if len(present) > 8 else "")
    raise BadExample(path, f"mask is not binary: values {shown}; expected 0/1 or 0/255 (within "
                     f"{MASK_TOLERANCE} grey levels for up to {MASK_MAX_AMBIGUOUS:.0%} of pixels)")
  return (values >= 128).astype(np.uint8)
