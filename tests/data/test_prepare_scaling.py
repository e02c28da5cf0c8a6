"""Preparation in several processes (``prepare_workers``), records in order however TFDS buffers
them, and a preparation killed partway (``kill -9``) that is never read and prepares again."""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
import tensorflow_datasets as tfds
from tensorflow_datasets.core import shuffle as tfds_shuffle

from flaxderm.data import builders
from flaxderm.data import config as config_lib
from flaxderm.data.builders import common

tfds.disable_progress_bar()

ONE_HOT = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
NUM_IMAGES = 16


def write_isic2019(root: Path) -> Path:
  """NUM_IMAGES JPEGs of several sizes (some downscaled to max_size, some stored as they are),
  one of them broken, in the official ISIC 2019 layout."""
  rows = []
  for i in range(NUM_IMAGES):
    image_id = f"ISIC_{i:07d}"
    width, height = (120, 90) if i % 3 else (64, 48)
    pixels = np.random.default_rng(i).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path = root / "ISIC_2019_Training_Input" / f"{image_id}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=90)
    rows.append((image_id, ONE_HOT[i % 8]))
  broken = root / "ISIC_2019_Training_Input" / "ISIC_0000005.jpg"
  broken.write_bytes(broken.read_bytes()[:200])
  (root / "ISIC_2019_Training_GroundTruth.csv").write_text("\n".join(
      [",".join(["image", *ONE_HOT])] +
      [",".join([image, *(f"{float(c == dx):.1f}" for c in ONE_HOT)]) for image, dx in rows]))
  (root / "ISIC_2019_Training_Metadata.csv").write_text("\n".join(
      ["image,age_approx,anatom_site_general,lesion_id,sex"] +
      [f"{image},{30 + i},head/neck,LES_{i // 2},female" for i, (image, _) in enumerate(rows)]))
  return root


def prepare(data_dir: Path, manual: Path, workers: int):
  return builders.prepare("isic2019", data_dir=data_dir, manual_dir=manual,
                          builder_kwargs={"max_size": 100}, skip_bad_examples=True,
                          prepare_workers=workers)


def contents(builder) -> tuple[list[dict], dict]:
  """(every record, with its encoded image, of the train split; the bad-example report)."""
  source = builder.as_data_source("train", decoders={"image": tfds.decode.SkipDecoding()})
  report = json.loads((Path(builder.data_dir) / "bad_examples.json").read_text())
  return [source[i] for i in range(len(source))], report


def assert_same(a: tuple[list[dict], dict], b: tuple[list[dict], dict]) -> None:
  (records_a, report_a), (records_b, report_b) = a, b
  assert report_a == report_b
  assert len(records_a) == len(records_b) == NUM_IMAGES - 1
  for x, y in zip(records_a, records_b):
    assert x.keys() == y.keys()
    for key in x:
      assert np.array_equal(x[key], y[key], equal_nan=key == "age"), key


@pytest.fixture(scope="module")
def manual(tmp_path_factory) -> Path:
  return write_isic2019(tmp_path_factory.mktemp("isic2019"))


@pytest.fixture(scope="module")
def reference(manual, tmp_path_factory):
  """The copy prepared in this process alone."""
  return contents(prepare(tmp_path_factory.mktemp("tfds"), manual, workers=1))


def test_two_workers_prepare_the_same_records(manual, reference, tmp_path):
  records, report = reference
  assert [r["id"].decode() for r in records] == [
      f"ISIC_{i:07d}" for i in range(NUM_IMAGES) if i != 5]
  assert [e["id"] for e in report["skipped"]] == ["ISIC_0000005"]
  assert_same(contents(prepare(tmp_path, manual, workers=2)), reference)


def test_records_stay_in_order_when_tfds_spills_them_to_disk(manual, reference, tmp_path,
                                                             monkeypatch):
  # Past the split's memory bound TFDS sorts examples into disk buckets by key; the keys must
  # spread them over several buckets (each read back whole) and keep the official order.
  monkeypatch.setattr(common, "IN_MEMORY_SPLIT_BYTES", 0)
  tfds_threshold = tfds_shuffle.MAX_MEM_BUFFER_SIZE
  buckets = set()
  add = tfds_shuffle._Bucket.add  # pylint: disable=protected-access

  def spy(bucket, key, data):
    buckets.add(bucket._path)  # pylint: disable=protected-access
    return add(bucket, key, data)

  monkeypatch.setattr(tfds_shuffle._Bucket, "add", spy)  # pylint: disable=protected-access
  assert_same(contents(prepare(tmp_path, manual, workers=2)), reference)
  assert len(buckets) == NUM_IMAGES - 1
  assert tfds_shuffle.MAX_MEM_BUFFER_SIZE == tfds_threshold  # lowered only while preparing


# Prepares with a pause after each example, printing how many it has handed to TFDS.
SLOW_PREPARE = textwrap.dedent("""
    import sys, time
    from flaxderm.data import builders
    from flaxderm.data.builders import common

    generate = common.Builder._generate_examples

    def slowly(self, split, sources):
      for n, example in enumerate(generate(self, split, sources), 1):
        print(f"example {n}", flush=True)
        time.sleep(0.2)
        yield example

    common.Builder._generate_examples = slowly
    builders.prepare("isic2019", data_dir=sys.argv[1], manual_dir=sys.argv[2],
                     builder_kwargs={"max_size": 100}, skip_bad_examples=True, prepare_workers=2)
""")


def children(pid: int) -> list[int]:
  return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def running(pid: int) -> bool:
  try:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
  except FileNotFoundError:
    return False


@pytest.mark.skipif(not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists(),
                    reason="needs Linux's /proc/<pid>/task/<pid>/children")
def test_preparation_killed_halfway_is_never_read_and_prepares_again(manual, reference,
                                                                     tmp_path):
  data_dir = tmp_path / "tfds"
  process = subprocess.Popen([sys.executable, "-c", SLOW_PREPARE, str(data_dir), str(manual)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  try:
    for line in process.stdout:
      if line.strip() == f"example {NUM_IMAGES // 2}":
        break
    else:
      pytest.fail(f"the preparation ended before it was half done (exit {process.wait()})")
    workers = children(process.pid)
    process.send_signal(signal.SIGKILL)
    process.wait()
  finally:
    process.kill()
  assert len(workers) >= 2  # the pool's processes (and its resource tracker)
  deadline = time.monotonic() + 15
  while any(map(running, workers)) and time.monotonic() < deadline:
    time.sleep(0.2)
  assert not any(map(running, workers)), "preparation processes outlived the killed parent"

  config_dir = data_dir / "isic2019" / "default-max_size-100"
  assert [p.name for p in config_dir.iterdir() if not p.name.startswith(".")] == [
      next(config_dir.glob("incomplete.*")).name]  # the half-written copy, under its temp name

  assert_same(contents(prepare(data_dir, manual, workers=2)), reference)
  assert not list(config_dir.glob("incomplete.*"))


def test_copy_without_dataset_info_is_prepared_again(manual, reference, tmp_path):
  # What a removal interrupted before _discard renamed first could leave.
  prepared = prepare(tmp_path, manual, workers=1)
  (Path(prepared.data_dir) / "dataset_info.json").unlink()
  assert_same(contents(prepare(tmp_path, manual, workers=1)), reference)


@pytest.mark.parametrize("kwargs", [{}, {"max_size": 100}])
def test_prepared_builder_travels_to_worker_processes(manual, tmp_path, kwargs):
  # Grain's worker processes (data.num_workers > 0) get the data source pickled.
  builder = builders.prepare("isic2019", data_dir=tmp_path, manual_dir=manual,
                             builder_kwargs=kwargs, skip_bad_examples=True, prepare_workers=2)
  copy = pickle.loads(pickle.dumps(builder))
  assert copy.builder_config.options() == builder.builder_config.options()
  assert copy.info.full_name == builder.info.full_name and copy.prepare_workers == 2
  assert copy.as_data_source("train")[0]["id"] == builder.as_data_source("train")[0]["id"]


@pytest.mark.parametrize("workers", [0, -1, 1.5, "2", True])
def test_prepare_workers_must_be_none_or_positive(workers, tmp_path):
  cfg = config_lib.default_data_config()
  assert cfg.prepare_workers is None
  config_lib.validate_data_config(cfg)
  cfg.prepare_workers = workers
  with pytest.raises(ValueError, match=r"data\.prepare_workers must be None"):
    config_lib.validate_data_config(cfg)
  with pytest.raises(ValueError, match="prepare_workers must be None"):
    builders.prepare("synthetic_lesions", data_dir=tmp_path, prepare_workers=workers)
