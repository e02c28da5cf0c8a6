"""Large-data benchmark: preparing and reading an ISIC 2019-sized dataset on one machine (#34).

Writes a synthetic copy of the official ISIC 2019 download (``ISIC_2019_Training_Input/
ISIC_nnnnnnn.jpg``, ``ISIC_2019_Training_GroundTruth.csv``, ``ISIC_2019_Training_Metadata.csv``,
read by the ``isic2019`` builder) of ``--images`` JPEGs: 1024x768, and a ``--large-share`` at
4000x3000, each made from a real image of ../shared/data (resized, recoloured, flipped, with
sensor-like noise, so decoding costs what real photographs cost; deterministic in ``--seed``).
Labels follow ISIC 2019's class frequencies. Then, each part in a fresh process whose memory
(resident set of the process and all its descendants: grain and preparation workers) is sampled:

* prepare: ``flaxderm.data.builders.prepare`` with 1 and 2 processes (``data.prepare_workers``):
  wall time, images/s, peak RSS, and the prepared copy's size on disk against the source's;
* input: ``flaxderm.data.pipeline.make_train_iterator`` at 224, 384 and 512 px with 0, 1 and 2
  grain worker processes (classification augmentations, batch ``--batch``): images/s, peak RSS;
* step: the ResNet-50 train step of benchmarks/train_step.py (``bench_flax``: jitted, state
  donated, median step time) at the same sizes and batch, the images/s a trainer consumes.

The source folder is kept under ``--workdir`` and reused by a later run with the same
``--images``, ``--large-share`` and ``--seed`` (its manifest, written last, says it is complete);
prepared copies are written again every run. Results are printed and appended to
benchmarks/RESULTS.md (``--no-record`` to skip) with the command, machine and date.

Memory flat in N: run N=5,000 and N=25,000 and compare the peak RSS columns (bar: within 20%).
Full-size commands (machine alone; N=25,000 needs about 15 GB of disk: a 5.7 GB download, a
3 GB prepared copy and TFDS's temporary copy of it; the ResNet-50 step at 384-512 px and batch
32 more than 6 GB of memory, else lower --batch). The step does not depend on N, so the second run
leaves it out:

  python benchmarks/large_dataset.py --images 5000 --workdir /var/tmp/flaxderm_large
  python benchmarks/large_dataset.py --images 25000 --workdir /var/tmp/flaxderm_large \
      --only prepare,input

A short trial, or parts only:

  python benchmarks/large_dataset.py --images 200 --sizes 224 --no-record
  python benchmarks/large_dataset.py --images 5000 --only prepare --prepare-workers 2
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import json
import multiprocessing
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from flaxderm.data.builders import common  # noqa: E402
from flaxderm.data.builders import isic2019  # noqa: E402

import environment  # noqa: E402  (benchmarks/environment.py, beside this script)
import input_pipeline  # noqa: E402  (its machine() line and ../shared/data lookup)

PACKAGES = ("jax", "jaxlib", "numpy", "opencv-python-headless", "pillow", "grain",
            "tensorflow-datasets", "array-record")
PARTS = ("prepare", "input", "step")
REGULAR, LARGE = (1024, 768), (4000, 3000)
# ISIC 2019 training images per class (ISIC_2019_Training_GroundTruth.csv), in CLASS_NAMES order.
CLASS_COUNTS = (4522, 12875, 3323, 867, 2624, 239, 253, 628)
SITES = ("anterior torso", "posterior torso", "lower extremity", "upper extremity", "head/neck",
         "palms/soles", "")
# A classification run's augmentations (hflip and vflip are on by default).
AUGMENT = {"rot90": 0.5, "crop": 0.5, "color_jitter": 0.5}
MANIFEST = "large_dataset.json"
RSS_INTERVAL_S = 0.1
STEP_MODEL = "resnet50"


# ------------------------------------------------------------------------------------------------
# The synthetic download.


def real_images(shared: Path) -> list[Path]:
  """The photographs of ../shared/data (masks and superpixel maps left out)."""
  masks = ("segmentation", "lesion", "superpixels", "roi")
  return sorted(p for p in shared.rglob("*") if p.suffix.lower() in (".jpg", ".bmp", ".png")
                and not any(m in p.stem.lower() for m in masks))


def synthetic_image(bases: list[Path], index: int, seed: int, large_share: float
                    ) -> tuple[bytes, tuple[int, int]]:
  """(JPEG, (w, h)) of image ``index``: a real image at REGULAR (or LARGE) size, recoloured, maybe
  flipped."""
  rng = np.random.default_rng([seed, index])
  base = cv2.imread(str(bases[rng.integers(len(bases))]), cv2.IMREAD_COLOR)
  size = LARGE if rng.random() < large_share else REGULAR
  image = cv2.resize(base, size, interpolation=cv2.INTER_CUBIC)
  levels = np.arange(256) / 255
  curves = [np.clip(255 * gain * levels ** gamma, 0, 255).astype(np.uint8)
            for gain, gamma in zip(rng.uniform(0.85, 1.15, 3), rng.uniform(0.8, 1.25, 3))]
  image = cv2.merge([cv2.LUT(channel, curve) for channel, curve in zip(cv2.split(image), curves)])
  for axis in (0, 1):
    if rng.random() < 0.5:
      image = cv2.flip(image, axis)
  # Sensor-like noise: an upscaled image alone would be smoother, smaller and quicker to decode
  # than a photograph of its size. One random tile repeated keeps writing N=25,000 affordable.
  tile = rng.normal(0, 3, (256, 256, 3)).astype(np.float32)
  reps = (-(-size[1] // 256), -(-size[0] // 256), 1)
  noise = np.tile(tile, reps)[:size[1], :size[0]]
  image = cv2.add(image.astype(np.float32), noise).clip(0, 255).astype(np.uint8)
  return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes(), size


def _write_image(job: tuple[list[Path], Path, int, int, float]) -> bool:
  """Writes one image; whether it is LARGE."""
  bases, folder, index, seed, large_share = job
  data, size = synthetic_image(bases, index, seed, large_share)
  (folder / f"ISIC_{index:07d}.jpg").write_bytes(data)
  return size == LARGE


def write_download(root: Path, *, images: int, large_share: float, seed: int, shared: Path,
                   workers: int) -> dict:
  """The ISIC 2019 layout under ``root`` (reused when its manifest matches); its manifest."""
  wanted = {"images": images, "large_share": large_share, "seed": seed}
  manifest = root / MANIFEST
  if manifest.exists():
    recorded = json.loads(manifest.read_text())
    if {k: recorded.get(k) for k in wanted} == wanted:
      print(f"reusing the synthetic download in {root}", flush=True)
      return recorded
  if root.exists():
    shutil.rmtree(root)
  bases = real_images(shared)
  if not bases:
    sys.exit(f"no images under {shared}")
  folder = root / isic2019.INPUTS
  folder.mkdir(parents=True)
  print(f"writing {images} images into {folder} from {len(bases)} real images ...", flush=True)
  started = time.perf_counter()
  jobs = ((bases, folder, i, seed, large_share) for i in range(images))
  with concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=multiprocessing.get_context("spawn")) as pool:
    large = sum(pool.map(_write_image, jobs, chunksize=64))
  write_csvs(root, images, seed)
  written = {**wanted, "real_images": len(bases), "bytes": directory_bytes(root), "large": large,
             "seconds": round(time.perf_counter() - started, 1)}
  manifest.write_text(json.dumps(written, indent=1))  # last: a folder without it is rewritten
  return written


def write_csvs(root: Path, images: int, seed: int) -> None:
  """Ground truth (one-hot, ISIC 2019 class frequencies) and metadata (two images per lesion)."""
  rng = np.random.default_rng(seed)
  labels = rng.choice(len(CLASS_COUNTS), images, p=np.array(CLASS_COUNTS) / sum(CLASS_COUNTS))
  columns = [c.upper() for c in (*isic2019.CLASS_NAMES, "unk")]
  truth = [",".join(["image", *columns])]
  metadata = ["image,age_approx,anatom_site_general,lesion_id,sex"]
  for i, label in enumerate(labels):
    image = f"ISIC_{i:07d}"
    truth.append(",".join([image] + [f"{float(c == label):.1f}" for c in range(len(columns))]))
    age = "" if rng.random() < 0.02 else f"{5 * rng.integers(2, 18)}.0"
    metadata.append(f"{image},{age},{SITES[rng.integers(len(SITES))]},BCN_{i // 2:07d},"
                    f"{('male', 'female', '')[rng.integers(3)]}")
  (root / isic2019.GROUND_TRUTH).write_text("\n".join(truth) + "\n")
  (root / isic2019.METADATA).write_text("\n".join(metadata) + "\n")


def directory_bytes(path: Path) -> int:
  return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------------
# Measuring a part in its own process.


def tree_rss(pid: int) -> int:
  """Resident bytes of process ``pid`` and all its descendants (Linux /proc); pages shared
  between them count once per process, so this over-counts a little."""
  page = os.sysconf("SC_PAGE_SIZE")
  total, todo = 0, [pid]
  while todo:
    current = todo.pop()
    try:
      total += int(Path(f"/proc/{current}/statm").read_text().split()[1]) * page
      for task in Path(f"/proc/{current}/task").iterdir():
        todo += [int(c) for c in (task / "children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
      continue  # ended while being read
  return total


def _run_part(connection, part, args) -> None:
  connection.send(part(*args))
  connection.close()


class PartDied(RuntimeError):
  """A measured part's process ended without a result (exit code -9: killed, e.g. out of
  memory)."""


def measured(part, *args) -> tuple[dict, int]:
  """(``part(*args)`` run in a spawned process, that process tree's peak RSS in bytes)."""
  context = multiprocessing.get_context("spawn")
  receiver, sender = context.Pipe(duplex=False)
  process = context.Process(target=_run_part, args=(sender, part, args))
  process.start()
  sender.close()
  peak = 0
  while not receiver.poll(RSS_INTERVAL_S):  # True on a result, or on EOF when the process died
    peak = max(peak, tree_rss(process.pid))
  try:
    result = receiver.recv()
  except EOFError:
    process.join()
    raise PartDied(f"{part.__name__}{args} failed with exit code {process.exitcode} (-9: "
                   "killed, e.g. out of memory)") from None
  process.join()
  return result, peak


def prepare_part(data_dir: str, manual_dir: str, workers: int) -> dict:
  from flaxderm.data import builders  # pylint: disable=g-import-not-at-top
  started = time.perf_counter()
  builder = builders.prepare("isic2019", data_dir=data_dir, manual_dir=manual_dir,
                             prepare_workers=workers)
  seconds = time.perf_counter() - started
  return {"seconds": seconds, "records": builder.info.splits["train"].num_examples,
          "bytes": directory_bytes(Path(os.fspath(builder.data_path)))}


def input_part(data_dir: str, manual_dir: str, size: int, workers: int, batch: int,
               batches: int) -> dict:
  from flaxderm.data import config as config_lib  # pylint: disable=g-import-not-at-top
  from flaxderm.data import pipeline  # pylint: disable=g-import-not-at-top
  cfg = config_lib.default_data_config()
  cfg.name, cfg.data_dir, cfg.manual_dir = "isic2019", data_dir, manual_dir
  cfg.image_size, cfg.num_workers = size, workers
  for name, p in AUGMENT.items():
    cfg.augment[name].p = p
  iterator = pipeline.make_train_iterator(cfg, global_batch_size=batch, seed=0)
  for _ in range(2):  # start-up: threads, worker processes, first reads
    next(iterator)
  started = time.perf_counter()
  for _ in range(batches):
    images = next(iterator)["image"]
  assert images.shape == (batch, size, size, 3), images.shape
  return {"images_per_s": batches * batch / (time.perf_counter() - started)}


def fitting_step(size: int, batch: int, steps: int) -> dict:
  """``step_part`` at ``batch``, or at the largest halving of it whose step is not killed (the
  ResNet-50 step at 512 px and batch 32 needs more than 24 GiB); its ``batch`` says which."""
  while True:
    try:
      return {**measured(step_part, size, batch, steps)[0], "batch": batch}
    except PartDied as died:
      if batch == 1:
        raise SystemExit(str(died)) from None
      print(f"{died}; the step again at batch {batch // 2}", flush=True)
      batch //= 2


def step_part(size: int, batch: int, steps: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import train_step  # pylint: disable=g-import-not-at-top  (benchmarks/train_step.py)
  from flaxderm.train import parallel  # pylint: disable=g-import-not-at-top
  spec = dataclasses.replace(train_step.SPECS[STEP_MODEL], size=size)
  result = train_step.bench_flax(spec, batch, warmup=1, steps=steps, dtype=None,
                                 compiler_options=parallel.compiler_options(
                                     jax.devices()[0].platform))
  return {"images_per_s": batch / result["step_s"], "compile_s": result["compile_s"]}


# ------------------------------------------------------------------------------------------------
# The run.


def int_list(text: str) -> list[int]:
  return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--images", type=int, default=25_000, help="N, images in the synthetic download")
  p.add_argument("--large-share", type=float, default=0.1,
                 help="share of the images at 4000x3000 (the others are 1024x768)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--workdir", help="where the download and the prepared copies go (default: a "
                 "temporary folder, removed at the end); the download is reused from here")
  p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {PARTS}")
  p.add_argument("--prepare-workers", default="1,2", help="data.prepare_workers settings")
  p.add_argument("--sizes", default="224,384,512", help="input sizes (px) of input and step")
  p.add_argument("--input-workers", default="0,1,2", help="grain worker processes settings")
  p.add_argument("--batch", type=int, default=32, help="batch of the pipeline and the step")
  p.add_argument("--batches", type=int, default=20, help="timed pipeline batches per setting")
  p.add_argument("--steps", type=int, default=2, help="timed train steps per size (median)")
  p.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
  args = p.parse_args(argv)
  args.only = [part.strip() for part in args.only.split(",") if part.strip()]
  unknown = sorted(set(args.only) - set(PARTS))
  if unknown:
    p.error(f"--only: unknown parts {unknown}; choose from {PARTS}")
  if not 0 <= args.large_share <= 1 or args.images < 1:
    p.error("--images must be >= 1 and --large-share in [0, 1]")
  args.prepare_workers = int_list(args.prepare_workers)
  args.sizes, args.input_workers = int_list(args.sizes), int_list(args.input_workers)
  return args


def mib(n: int) -> str:
  return f"{n / 2 ** 20:.0f}"


def main(argv=None):
  args = parse_args(argv)
  command = "python " + " ".join(shlex.quote(a) for a in [
      "benchmarks/large_dataset.py", *(sys.argv[1:] if argv is None else argv)])
  shared = input_pipeline.shared_data_dir()
  if shared is None:
    sys.exit("needs ../shared/data (or $FLAXDERM_SHARED_DATA): its images are the sources")
  temporary = None if args.workdir else tempfile.TemporaryDirectory(prefix="flaxderm_large_")
  workdir = Path(args.workdir or temporary.name)
  machine = input_pipeline.machine()
  started = time.perf_counter()

  manual = workdir / f"isic2019-{args.images}-{args.large_share}-{args.seed}"
  download = write_download(manual, images=args.images, large_share=args.large_share,
                            seed=args.seed, shared=shared, workers=common.available_cores())
  lines = [
      f"- source: {args.images} images ({args.images - download['large']} at "
      f"{REGULAR[0]}x{REGULAR[1]}, {download['large']} at {LARGE[0]}x{LARGE[1]}, JPEG q90) made "
      f"from {download['real_images']} real images of ../shared/data, seed {args.seed}: "
      f"{download['bytes'] / 1e9:.2f} GB, written in {download['seconds']:.0f} s",
      "- RSS: peak resident memory of the measured process and all its descendants (preparation "
      f"or grain workers), sampled every {RSS_INTERVAL_S} s, each part in a fresh process; shared "
      "pages count once per process"]

  data_dir = workdir / "tfds"
  if "prepare" in args.only:
    table = ["| preparation processes | wall s | images/s | peak RSS MiB | prepared GB | "
             "prepared / source |", "|---:|---:|---:|---:|---:|---:|"]
    for workers in args.prepare_workers:
      shutil.rmtree(data_dir, ignore_errors=True)
      result, peak = measured(prepare_part, str(data_dir), str(manual), workers)
      rate = result["records"] / result["seconds"]
      table.append(f"| {workers} | {result['seconds']:.0f} | {rate:.1f} | {mib(peak)} | "
                   f"{result['bytes'] / 1e9:.2f} | {result['bytes'] / download['bytes']:.2f} |")
      print(table[-1], flush=True)
    lines += ["", *table]

  if "input" in args.only and "prepare" not in args.only:
    measured(prepare_part, str(data_dir), str(manual), common.available_cores())  # or reused
  if "input" in args.only or "step" in args.only:
    table = ["| px | grain worker processes | pipeline images/s | peak RSS MiB | "
             f"{STEP_MODEL} train step images/s | pipeline / step |",
             "|---:|---:|---:|---:|---:|---:|"]
    for size in args.sizes:
      step = fitting_step(size, args.batch, args.steps) if "step" in args.only else None
      step_text = "-" if step is None else f"{step['images_per_s']:.1f}" + (
          f" (batch {step['batch']})" if step["batch"] != args.batch else "")
      for workers in args.input_workers if "input" in args.only else [None]:
        if workers is None:
          table.append(f"| {size} | - | - | - | {step_text} | - |")
          continue
        result, peak = measured(input_part, str(data_dir), str(manual), size, workers,
                                args.batch, args.batches)
        ratio = f"{result['images_per_s'] / step['images_per_s']:.1f}" if step else "-"
        table.append(f"| {size} | {workers} | {result['images_per_s']:.1f} | {mib(peak)} | "
                     f"{step_text} | {ratio} |")
        print(table[-1], flush=True)
    lines += [
        "", f"- input: `make_train_iterator`, batch {args.batch}, center crop + resize, hflip, "
        "vflip, " + ", ".join(f"{k} p={p}" for k, p in AUGMENT.items()) + "; 2 grain read "
        f"threads; {args.batches} batches timed after 2 untimed",
        f"- step: benchmarks/train_step.py's {STEP_MODEL} step (`bench_flax`, float32, 1000 "
        f"classes) at batch {args.batch} (or the batch in brackets, halved until its process "
        f"was not killed for memory), median of {args.steps} after 1 warm-up; it runs alone "
        "here, while in training it shares the cores with the pipeline", "", *table]

  section = "\n".join([
      f"## Large dataset (ISIC 2019 layout, N={args.images}), {datetime.date.today().isoformat()}",
      "", f"- command: `{command}`", f"- machine: {machine}",
      f"- versions: {environment.versions(PACKAGES)}", *lines,
      "", f"Runtime of the whole run: {time.perf_counter() - started:.0f} s.", ""])
  environment.record(section, append=not args.no_record)
  if temporary is not None:
    temporary.cleanup()


if __name__ == "__main__":
  try:
    main()
  except PartDied as died:
    sys.exit(str(died))
