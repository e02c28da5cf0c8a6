"""Applying a trained run to new images (``flaxderm.tools.run.Run`` in a loop over files)::

    python launch.py predict --workdir RUN --out DIR INPUT... [--params last|best]
        [--ema | --no-ema] [--tta none|hflip|flips] [--batch-size N] [--overwrite]
        [--largest-component] [--fill-holes] [--save-probabilities] [--metadata FILE]

INPUT: image files (JPEG, PNG, BMP; any size), folders (their images, not recursing) or glob
patterns. Outputs in DIR, per image id (the file name without its extension):

* segmentation runs: ``<id>_segmentation.png`` (ISIC 2018 Task 1 layout: single channel, 0/255,
  at the image's original size), ``<id>_overlay.jpg`` (the outline and a tint of the mask on the
  image) and, with ``--save-probabilities``, ``<id>_probability.png`` (16-bit, 65535 = 1).
  ``--largest-component`` keeps the largest connected lesion region, ``--fill-holes`` fills holes
  inside it (OpenCV / SciPy).
* classification runs: ``predictions.csv`` (``image`` then one probability column per class,
  rows summing to 1; the seven ISIC 2018 Task 3 diagnoses are written as its submission header
  ``MEL,NV,BCC,AKIEC,BKL,DF,VASC``) and ``labels.csv`` (``image,label``: the decided class, the
  most probable one unless the run's ``eval.logit_adjustment_tau`` adjusts it for the training
  prior: ``flaxderm.tools.run``).

A run trained with clinical metadata (``data.metadata``) needs ``--metadata FILE``: a CSV with an
image id column (``image``, ``image_id``, ``img_id`` or ``id``; the file name, with or without
its extension) and one column per field the run takes (``age``, ``sex``, ``site``, ...; an empty
cell or "unknown" is a missing value). Every input needs its row: a missing one is an error naming
the image, before anything is predicted.

Probabilities are those of ``flaxderm.load_run``: of the logits divided by the run's temperature
when it holds ``calibration.json`` (``launch.py evaluate --calibrate``); masks and labels are the
same either way.

An input that cannot be read is named on stderr, listed in ``DIR/skipped.txt`` and left out; the
others are still written (none left: the command fails, exit 1). Existing outputs are never
replaced without ``--overwrite``, and DIR may not be a folder that an input folder or pattern
reads (the outputs would come back as inputs). Images are read as viewers show them
(``flaxderm.data.preprocess.read_image``: EXIF orientation applied, 16-bit scaled to 8 bits).
"""
from __future__ import annotations

import argparse
import csv
import glob
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage
import tqdm

from flaxderm.tools import run as run_lib
from flaxderm.data import preprocess

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
SKIPPED = "skipped.txt"
PREDICTIONS, LABELS = "predictions.csv", "labels.csv"
# ISIC 2018 Task 3's submission columns, for runs whose classes are its seven diagnoses.
ISIC_TASK3_COLUMNS = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")


def expand_inputs(inputs: Sequence[str], out: str | Path | None = None) -> list[Path]:
  """Image files named by ``inputs`` (files, folders, glob patterns), in order, without repeats.
  ValueError naming an input that is neither an existing path nor a pattern matching images, or
  a folder or pattern that reads the output folder ``out`` (the tool's outputs would be read back
  as inputs on the next run)."""
  found: list[Path] = []
  for item in inputs:
    path = Path(item)
    if path.is_dir():
      matches = sorted(p for p in path.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
      folders = {path.resolve()}
    elif path.is_file():
      matches, folders = [path], set()
    else:
      matches = sorted(Path(p) for p in glob.glob(item) if Path(p).is_file())
      folders = {p.parent.resolve() for p in matches}
    if not matches:
      raise ValueError(f"input {item!r}: no such file, or no image in that folder or pattern "
                       f"(images: {', '.join(IMAGE_SUFFIXES)})")
    if out is not None and Path(out).resolve() in folders:
      raise ValueError(f"--out {out} is a folder that input {item!r} reads: the outputs written "
                       "there would be read back as inputs on the next run; choose another --out")
    found.extend(matches)
  unique = list(dict.fromkeys(p.resolve() for p in found))
  stems: dict[str, Path] = {}
  for p in unique:
    if p.stem in stems:
      raise ValueError(f"two inputs have the image id {p.stem!r}: {stems[p.stem]} and {p}; "
                       "outputs are named by id")
    stems[p.stem] = p
  return unique


ID_COLUMNS = ("image", "image_id", "img_id", "id")


def read_metadata(path: str | Path, fields: Sequence[str]) -> dict[str, dict[str, str]]:
  """Image id -> {field: cell} of a metadata CSV (see the module docstring); ValueError naming the
  file for a missing id or field column, or an image given two rows."""
  path = Path(path)
  with open(path, newline="", encoding="utf-8-sig") as f:
    reader = csv.DictReader(f)
    header = reader.fieldnames or []
    id_column = next((c for c in ID_COLUMNS if c in header), None)
    if id_column is None:
      raise ValueError(f"--metadata {path}: no image id column (one of {ID_COLUMNS}); its "
                       f"columns are {header}")
    absent = [name for name in fields if name not in header]
    if absent:
      raise ValueError(f"--metadata {path}: no column for the run's fields {absent}; its columns "
                       f"are {header}")
    table: dict[str, dict[str, str]] = {}
    for row in reader:
      named = Path(row[id_column].strip())
      image_id = named.stem if named.suffix.lower() in IMAGE_SUFFIXES else named.name
      if image_id in table:
        raise ValueError(f"--metadata {path}: image {image_id!r} has two rows")
      table[image_id] = {name: row[name] for name in fields}
  return table


def metadata_rows(table: dict[str, dict[str, str]], paths: Sequence[Path], source: str | Path
                  ) -> list[dict[str, str]]:
  """The metadata row of each image of ``paths``; ValueError naming the first image without one."""
  missing = [p for p in paths if p.stem not in table]
  if missing:
    raise ValueError(f"--metadata {source}: no row for image {missing[0].stem!r} ({missing[0]})"
                     + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
  return [table[p.stem] for p in paths]


def run_metadata(run: run_lib.Run, paths: Sequence[Path], metadata: str | Path | None,
                 workdir: str | Path) -> dict[Path, dict[str, str]] | None:
  """Image path -> its metadata row from the CSV ``metadata`` for a run that takes clinical
  metadata (None for an image-only run); ValueError when the run and ``metadata`` disagree (one
  given without the other) or an image has no row."""
  if run.metadata_fields and metadata is None:
    raise ValueError(f"{workdir}: this run takes clinical metadata beside each image (fields "
                     f"{list(run.metadata_fields)}): pass --metadata FILE (see predict's help)")
  if metadata is not None and not run.metadata_fields:
    raise ValueError(f"--metadata {metadata}: the run in {workdir} takes images only")
  if metadata is None:
    return None
  table = read_metadata(metadata, run.metadata_fields)
  return dict(zip(paths, metadata_rows(table, paths, metadata)))


def postprocess(mask: np.ndarray, *, largest_component: bool, fill_holes: bool) -> np.ndarray:
  """The bool mask with only its largest connected region (8-connectivity) and/or its holes
  filled."""
  if largest_component and mask.any():
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), 8)
    if count > 2:
      mask = labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
  if fill_holes:
    mask = ndimage.binary_fill_holes(mask)
  return mask


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """RGB image with the mask tinted green and outlined."""
  out = image.copy()
  tint = np.array([0, 255, 0], np.float32)
  out[mask] = (0.7 * out[mask] + 0.3 * tint).astype(np.uint8)
  contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
  thickness = max(1, round(max(image.shape[:2]) / 300))
  cv2.drawContours(out, contours, -1, (0, 255, 0), thickness)
  return out


def class_columns(class_names: Sequence[str]) -> tuple[list[str], list[int]]:
  """(CSV header names, index of each column's class in ``class_names``)."""
  lower = [n.lower() for n in class_names]
  if sorted(lower) == sorted(c.lower() for c in ISIC_TASK3_COLUMNS):
    return list(ISIC_TASK3_COLUMNS), [lower.index(c.lower()) for c in ISIC_TASK3_COLUMNS]
  return list(class_names), list(range(len(class_names)))


def _outputs(task: str, ids: Sequence[str], save_probabilities: bool) -> list[str]:
  if task == "classification":
    return [PREDICTIONS, LABELS]
  suffixes = ["_segmentation.png", "_overlay.jpg"] + (["_probability.png"]
                                                       if save_probabilities else [])
  return [f"{i}{s}" for i in ids for s in suffixes]


def _write(path: Path, image: np.ndarray, *params: int) -> None:
  if image.ndim == 3:
    image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
  if not cv2.imwrite(str(path), image, list(params)):
    raise OSError(f"could not write {path}")


def _chunks(paths: Sequence[Path], size: int) -> Iterator[list[Path]]:
  for start in range(0, len(paths), size):
    yield list(paths[start:start + size])


def predict_files(workdir: str | Path, inputs: Sequence[str], out: str | Path, *,
                  params: str | None = None, use_ema: bool | None = None, tta: str | None = None,
                  batch_size: int = 8, overwrite: bool = False, largest_component: bool = False,
                  fill_holes: bool = False, save_probabilities: bool = False,
                  metadata: str | Path | None = None, progress: bool = True) -> dict:
  """Predicts every input image into ``out``; see the module docstring. Returns a summary
  (counts, skipped inputs, images/s)."""
  paths = expand_inputs(inputs, out)
  run = run_lib.load_run(workdir, params=params, use_ema=use_ema, tta=tta, batch_size=batch_size)
  rows_of = run_metadata(run, paths, metadata, workdir)
  if run.task == "classification" and (largest_component or fill_holes or save_probabilities):
    raise ValueError("--largest-component, --fill-holes and --save-probabilities are for "
                     "segmentation runs; this run classifies")
  out = Path(out)
  planned = _outputs(run.task, [p.stem for p in paths], save_probabilities) + [SKIPPED]
  existing = [name for name in planned if (out / name).exists()]
  if existing and not overwrite:
    shown = ", ".join(existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5
                                        else "")
    raise ValueError(f"{out} already holds {shown}; pass --overwrite to replace them")
  out.mkdir(parents=True, exist_ok=True)

  started = time.perf_counter()
  skipped: list[tuple[Path, str]] = []
  rows: list[tuple[str, np.ndarray]] = []
  done = 0
  bar = tqdm.tqdm(total=len(paths), unit="img", disable=not progress, file=sys.stderr)
  for chunk in _chunks(paths, batch_size):
    images, read = [], []
    for path in chunk:
      try:
        images.append(preprocess.read_image(path))
        read.append(path)
      except Exception as e:  # pylint: disable=broad-except  (PIL raises many types)
        problem = f"cannot read image ({type(e).__name__}: {e})"
        skipped.append((path, problem))
        bar.write(f"skipped {path}: {problem}", file=sys.stderr)
    if images:
      probabilities = run.probabilities(
          images, [str(path) for path in read],
          None if rows_of is None else [rows_of[path] for path in read])
      for image_id, image, probs in zip((path.stem for path in read), images, probabilities):
        if run.task == "classification":
          rows.append((image_id, probs))
          continue
        mask = postprocess(probs >= run_lib.THRESHOLD, largest_component=largest_component,
                           fill_holes=fill_holes)
        _write(out / f"{image_id}_segmentation.png", mask.astype(np.uint8) * 255)
        _write(out / f"{image_id}_overlay.jpg", overlay(image, mask),
               cv2.IMWRITE_JPEG_QUALITY, 90)
        if save_probabilities:
          _write(out / f"{image_id}_probability.png",
                 np.round(np.clip(probs, 0, 1) * 65535).astype(np.uint16))
      done += len(images)
    bar.update(len(chunk))
  bar.close()
  if run.task == "classification":
    _write_class_tables(out, rows, run)
  (out / SKIPPED).write_text("".join(f"{p}\t{why}\n" for p, why in skipped))
  elapsed = time.perf_counter() - started
  summary = {"predicted": done, "skipped": len(skipped), "out": str(out),
             "seconds": round(elapsed, 3), "images_per_s": round(done / max(elapsed, 1e-9), 3)}
  log.info("predicted %d images (%d skipped) in %.1f s: %.2f images/s including decoding",
           done, len(skipped), elapsed, summary["images_per_s"])
  return summary


def _write_class_tables(out: Path, rows: Sequence[tuple[str, np.ndarray]],
                        run: run_lib.Run) -> None:
  class_names = run.class_names
  header, order = class_columns(class_names)
  with open(out / PREDICTIONS, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["image", *header])
    for image_id, probs in rows:
      probs = np.asarray(probs, np.float64)
      probs = probs / probs.sum()
      writer.writerow([image_id, *(f"{probs[i]:.6f}" for i in order)])
  with open(out / LABELS, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["image", "label"])
    for image_id, probs in rows:
      writer.writerow([image_id, class_names[run.decide(probs)]])


def add_arguments(parser: argparse.ArgumentParser) -> None:
  run_lib.add_run_arguments(parser)
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, globs")
  parser.add_argument("--batch-size", type=int, default=8)
  parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
  parser.add_argument("--largest-component", action="store_true",
                      help="segmentation: keep the largest connected lesion region")
  parser.add_argument("--fill-holes", action="store_true", help="segmentation: fill mask holes")
  parser.add_argument("--save-probabilities", action="store_true",
                      help="segmentation: also write <id>_probability.png (16-bit)")
  parser.add_argument("--metadata", metavar="FILE",
                      help="runs with clinical metadata: a CSV of image id and field columns")
  parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> None:
  summary = predict_files(
      args.workdir, args.inputs, args.out, params=args.params, use_ema=args.ema, tta=args.tta,
      batch_size=args.batch_size, overwrite=args.overwrite,
      largest_component=args.largest_component, fill_holes=args.fill_holes,
      save_probabilities=args.save_probabilities, metadata=args.metadata,
      progress=not args.no_progress)
  print(f"{summary['predicted']} images predicted into {summary['out']} "
        f"({summary['skipped']} skipped) in {summary['seconds']:.1f} s: "
        f"{summary['images_per_s']:.2f} images/s including decoding", flush=True)
  if not summary["predicted"]:
    raise ValueError(f"no input could be read: all {summary['skipped']} were skipped (see "
                     f"{Path(summary['out']) / SKIPPED})")
