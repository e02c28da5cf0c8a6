"""Input-pipeline throughput: images/s of the full grain pipeline at 224 px, with and without hair
removal, and with the in-memory cache of preprocessed images.

Data: the PH2 builder prepared (into a temporary folder unless ``--data_dir``) from the PH2 copy in
../shared/data, so hair removal sees real hair and records come from ArrayRecord files as in
training; without ../shared/data, ``synthetic_lesions``. ``--dataset`` / ``--manual_dir`` pick
another builder. Every setting runs read -> decode -> preprocess -> resize (center crop) ->
augment -> normalise -> batch with ``--threads`` grain threads.

    python benchmarks/input_pipeline.py                       # PH2, 224 px, 2 threads
    python benchmarks/input_pipeline.py --dataset synthetic_lesions --images 256

Prints a table and appends it to benchmarks/RESULTS.md (``--no-record`` to skip) with the date,
machine, versions and command. Machines and load differ: compare rows of one run only.
"""
from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from flaxderm.data import config as config_lib  # noqa: E402
from flaxderm.data import pipeline  # noqa: E402

import environment  # noqa: E402  (benchmarks/environment.py, beside this script)

PACKAGES = ("numpy", "opencv-python-headless", "grain", "tensorflow-datasets")

REPO = Path(__file__).resolve().parents[1]
# Augmentations of a realistic segmentation run (paper 003 Figure 7 / paper 004 §3.1).
AUGMENT = {"hflip": 0.5, "vflip": 0.5, "rot90": 0.5, "rotate": 0.5, "crop": 0.5,
           "color_jitter": 0.5, "elastic": 0.3}


def shared_data_dir() -> Path | None:
  for candidate in (os.environ.get("FLAXDERM_SHARED_DATA"), REPO.parent / "shared" / "data"):
    if candidate and Path(candidate).is_dir():
      return Path(candidate)
  return None


def data_config(args, *, hair: bool, cache: bool):
  cfg = config_lib.default_data_config()
  cfg.name = args.dataset
  cfg.data_dir = args.data_dir
  cfg.manual_dir = args.manual_dir
  # The shared PH2 copy holds some cases back; the builder lists them as bad examples.
  cfg.skip_bad_examples = args.dataset == "ph2"
  cfg.image_size = args.size
  cfg.read_threads = args.threads
  cfg.num_workers = args.workers
  cfg.cache = cache
  cfg.preprocess.remove_hair = hair
  for name, p in AUGMENT.items():
    cfg.augment[name].p = p
  return cfg


def measure(args, *, hair: bool, cache: bool, skip: int, timed: int) -> float:
  """Images/s over ``timed`` batches after ``skip`` untimed ones (thread start-up, or the epoch
  that fills the cache)."""
  pipeline.clear_cache()
  cfg = data_config(args, hair=hair, cache=cache)
  it = pipeline.make_train_iterator(cfg, global_batch_size=args.batch, seed=0)
  for _ in range(skip):
    next(it)
  start = time.perf_counter()
  for _ in range(timed):
    batch = next(it)
  elapsed = time.perf_counter() - start
  assert batch["image"].shape == (args.batch, args.size, args.size, 3)
  return timed * args.batch / elapsed


def machine() -> str:
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  return f"{environment.cpu()} (1-min load average at start {load:.1f})"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dataset", help="builder name (default: ph2 when ../shared/data exists, "
                      "else synthetic_lesions)")
  parser.add_argument("--data_dir", help="prepared datasets (default: a temporary folder)")
  parser.add_argument("--manual_dir", help="official download (default for ph2: ../shared/data)")
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--images", type=int, default=320, help="images timed per setting")
  parser.add_argument("--threads", type=int, default=2, help="grain read threads")
  parser.add_argument("--workers", type=int, default=0, help="grain worker processes")
  parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
  args = parser.parse_args(argv)
  command = "python " + " ".join(shlex.quote(a) for a in [
      "benchmarks/input_pipeline.py", *(sys.argv[1:] if argv is None else argv)])

  shared = shared_data_dir()
  if args.dataset is None:
    args.dataset = "ph2" if shared else "synthetic_lesions"
  if args.dataset == "ph2" and args.manual_dir is None:
    if shared is None:
      sys.exit("ph2 needs --manual_dir (../shared/data is absent)")
    args.manual_dir = str(shared / "PH2Dataset")
  temporary = None
  if args.data_dir is None:
    temporary = tempfile.TemporaryDirectory(prefix="flaxderm_bench_")
    args.data_dir = temporary.name
  info = pipeline.dataset_info(data_config(args, hair=False, cache=False))
  num_records = info.num_examples["train"]
  data = f"TFDS {args.dataset} train split ({num_records} images, ArrayRecord)"

  timed = max(1, args.images // args.batch)
  epoch = max(1, num_records // args.batch)
  # (label, hair removal, cache, untimed batches, timed batches)
  settings = [
      ("no hair removal", False, False, 1, timed),
      ("hair removal", True, False, 1, timed),
      ("hair removal, cache, first epoch (cold)", True, True, 0, epoch),
      ("hair removal, cache, later epochs", True, True, epoch + 1, timed),
      ("no hair removal, cache, later epochs", False, True, epoch + 1, timed),
  ]
  header = machine()
  rows = []
  for label, hair, cache, skip, batches in settings:
    rate = measure(args, hair=hair, cache=cache, skip=skip, timed=batches)
    rows.append((label, rate))
    print(f"{label:42s} {rate:8.1f} images/s", flush=True)

  augment = ", ".join(f"{k} p={p}" for k, p in AUGMENT.items())
  table = ["| setting | images/s | ms/image |", "|---|---:|---:|"]
  table += [f"| {label} | {rate:.1f} | {1000 / rate:.1f} |" for label, rate in rows]
  section = "\n".join([
      f"## Input pipeline, {datetime.date.today().isoformat()}",
      "",
      f"- command: `{command}`",
      f"- machine: {header}",
      f"- versions: {environment.versions(PACKAGES)}",
      f"- data: {data}; {args.size} px center crop + resize, batch {args.batch}, "
      f"{args.threads} grain threads, {args.workers} worker processes; {timed * args.batch} "
      f"images timed per setting after one untimed batch ({epoch * args.batch} from a cold "
      "start for the first epoch)",
      f"- augment: {augment}; normalisation imagenet",
      "",
      *table,
      "",
  ])
  environment.record(section, append=not args.no_record)
  if temporary is not None:
    temporary.cleanup()


if __name__ == "__main__":
  main()
