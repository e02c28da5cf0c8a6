"""TFDS builders of flaxderm's datasets, prepared in ArrayRecord format.

``prepare(name, ...)`` builds a dataset once into ``data_dir`` and returns its builder; read it
with ``builder.as_data_source(split)``. Records: ``image`` (uint8 HxWx3), ``id``, ``group`` (the
key grouped splits keep whole: the lesion, or the patient for pad_ufes20 and isic2020), ``mask``
(uint8 HxWx1, 0/1) for segmentation datasets, ``label`` (ClassLabel) for datasets with a
diagnosis, and the dataset's clinical fields (``age``, ``sex``, ``site``, ``fitzpatrick``, ...;
their encoding and the fields never to use as inputs are in ``flaxderm.data.clinical``). Splits
are the official ones.

Builder kwargs are config options (e.g. ``max_size``, ``image_size``, ``masks``); a preparation
with non-default options lives under its own config name, e.g. ``ph2/default-max_size-256``.

Interrupted preparations: TFDS writes a copy into ``<config>/incomplete.XXXXXX_<version>/`` and
renames it to ``<config>/<version>/`` as its last step, so the version folder, the only one ever
read, appears complete or not at all (``source.json`` and ``bad_examples.json`` are written before
the rename). ``prepare`` holds ``<config>/.prepare.lock`` while it prepares, so a second process
preparing the same dataset waits and then reuses the copy, and any ``incomplete.*`` folder it finds
was left by a preparation that was killed: it is removed and the preparation starts again.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds
from tensorflow_datasets.core import constants as tfds_constants

from flaxderm.data.builders import common
from flaxderm.data.builders.ddi import Ddi
from flaxderm.data.builders.dermamnist import Dermamnist
from flaxderm.data.builders.fitzpatrick17k import Fitzpatrick17k
from flaxderm.data.builders.ham10000 import Ham10000
from flaxderm.data.builders.isic2018_task3 import Isic2018Task3
from flaxderm.data.builders.isic2019 import Isic2019
from flaxderm.data.builders.isic2020 import Isic2020
from flaxderm.data.builders.isic_task1 import Isic2016Task1, Isic2017Task1, Isic2018Task1
from flaxderm.data.builders.pad_ufes20 import PadUfes20
from flaxderm.data.builders.ph2 import Ph2
from flaxderm.data.builders.synthetic import SyntheticLesions

log = logging.getLogger(__name__)

BUILDERS: dict[str, type[common.Builder]] = {
    cls.name: cls for cls in (SyntheticLesions, Isic2018Task1, Isic2017Task1, Isic2016Task1,
                              Ph2, Ham10000, Isic2018Task3, Dermamnist, Isic2019, Isic2020,
                              PadUfes20, Fitzpatrick17k, Ddi)}


def default_data_dir() -> Path:
  """$FLAXDERM_DATA_DIR, else ~/tensorflow_datasets."""
  return Path(os.environ.get("FLAXDERM_DATA_DIR") or "~/tensorflow_datasets").expanduser()


def check_manual_dir(name: str, manual_dir: str | os.PathLike | None) -> None:
  """ValueError for an unknown dataset, or a manual directory given to a dataset that generates
  its examples (it would be ignored: training on other data than the config records)."""
  if name not in BUILDERS:
    raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(BUILDERS)}")
  if manual_dir is not None and BUILDERS[name].GENERATED:
    raise ValueError(f"data.manual_dir={os.fspath(manual_dir)}: dataset {name!r} generates its "
                     "examples and never reads a folder (a :runlocal smoke run always trains on "
                     "it); set data.name to the dataset in that folder instead")


def prepare(name: str, *, data_dir: str | os.PathLike | None = None,
            manual_dir: str | os.PathLike | None = None, builder_config: str | None = None,
            builder_kwargs: Mapping[str, Any] | None = None, skip_bad_examples: bool = False,
            prepare_workers: int | None = None) -> tfds.core.DatasetBuilder:
  """Builds dataset ``name`` (once; a prepared copy is reused) and returns its builder.

  A prepared copy is reused only for the files it was prepared from: with a ``manual_dir``, its
  official files are fingerprinted (paths, sizes, mtimes; see ``common.SOURCE_NAME``) and a copy
  prepared from another folder, or from files changed since, is prepared again (a warning names
  both). With no ``manual_dir`` a prepared copy is used as it is.

  Args:
    name: a key of ``BUILDERS``.
    data_dir: where prepared datasets live (default ``default_data_dir()``).
    manual_dir: folder holding the official download (searched a few levels deep); it must exist
      and hold some of the official files, checked before anything is prepared.
    builder_config: a predefined config name (default: the builder's first).
    builder_kwargs: config options overriding ``builder_config``'s.
    skip_bad_examples: leave out bad examples (listed in ``bad_examples.json`` next to the
      data) instead of stopping at the first. A copy prepared that way is refused later without
      this flag when it did skip examples, so the flag's meaning never depends on history.
    prepare_workers: processes that read and encode the images (None: one per core); the
      prepared copy does not depend on it.
  """
  check_manual_dir(name, manual_dir)
  cls = BUILDERS[name]
  config = cls.resolve_config(builder_config, builder_kwargs)

  def make_builder() -> common.Builder:
    return cls(data_dir=os.fspath(data_dir or default_data_dir()), config=config,
               skip_bad_examples=skip_bad_examples, prepare_workers=prepare_workers)

  config_dir = Path(os.fspath(make_builder().data_path)).parent
  with _preparing(config_dir):
    builder = make_builder()  # made after the wait: another process may have prepared it
    data_path = Path(os.fspath(builder.data_path))
    if data_path.exists() and not builder.is_prepared():
      log.warning("%s: %s holds no complete copy (no dataset info); preparing it again",
                  builder.info.full_name, data_path)
      _discard(data_path)
      builder = make_builder()
    if manual_dir is not None and builder.official_files():
      wanted = builder.source_record(manual_dir, builder.find_official_files(manual_dir))
      if builder.is_prepared():
        recorded = builder.recorded_source()
        if recorded is None or recorded.get("fingerprint") != wanted["fingerprint"]:
          log.warning("%s in %s: %s; preparing it again from %s", builder.info.full_name,
                      builder.data_dir, _stale_reason(recorded, wanted), wanted["manual_dir"])
          _discard(data_path)
          builder = make_builder()
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(
            manual_dir=os.fspath(manual_dir) if manual_dir else None, try_download_gcs=False))
  report = Path(os.fspath(builder.data_path)) / common.REPORT_NAME
  skipped = json.loads(report.read_text())["num_skipped"] if report.exists() else 0
  if skipped and not skip_bad_examples:
    raise ValueError(f"{builder.info.full_name} in {builder.data_dir} was prepared without "
                     f"{skipped} bad examples (see {report}); pass skip_bad_examples=True to use "
                     "it, or delete it to prepare again")
  return builder


@contextlib.contextmanager
def _preparing(config_dir: Path) -> Iterator[None]:
  """Holds ``config_dir/.prepare.lock`` (waiting while another process prepares this config) and
  removes the ``incomplete.*`` folders that killed preparations left. The kernel releases the
  lock of a process that ends in any way, ``kill -9`` included."""
  config_dir.mkdir(parents=True, exist_ok=True)
  with open(config_dir / ".prepare.lock", "w") as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      log.warning("%s: another process is preparing this dataset; waiting for it", config_dir)
      fcntl.flock(lock, fcntl.LOCK_EX)
    unfinished = sorted(config_dir.glob(tfds_constants.INCOMPLETE_PREFIX + "*"))
    if unfinished:
      log.warning("%s: removing %d unfinished preparation(s) of a process that was killed: %s",
                  config_dir, len(unfinished), [p.name for p in unfinished])
      for path in unfinished:
        shutil.rmtree(path)
    yield


def _discard(data_path: Path) -> None:
  """Removes a prepared copy; renamed first, so an interrupted removal leaves a folder that the
  next preparation removes (``_preparing``), never a partial copy under the version's name."""
  trash = data_path.with_name(f"{tfds_constants.INCOMPLETE_PREFIX}discarded_{uuid.uuid4().hex}")
  data_path.rename(trash)
  shutil.rmtree(trash)


def _stale_reason(recorded: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> str:
  if recorded is None:
    return "the prepared copy does not record which files it was prepared from"
  if recorded.get("manual_dir") != wanted["manual_dir"]:
    origin = recorded.get("manual_dir") or f"downloads {recorded.get('downloaded')}"
    return f"it was prepared from {origin}, not from {wanted['manual_dir']}"
  return (f"the files in {wanted['manual_dir']} changed since it was prepared "
          f"({recorded.get('num_files')} -> {wanted['num_files']} files)")
