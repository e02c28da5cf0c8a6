"""``isic2018_task3``: ISIC 2018 Task 3 lesion diagnosis, 7 classes (HAM10000 images).

Layout: ``ISIC2018_Task3_{Training,Validation,Test}_Input/ISIC_nnnnnnn.jpg`` and the ground truth
``ISIC2018_Task3_{Training,Validation,Test}_GroundTruth.csv`` (anywhere a few folders below the
manual directory, e.g. inside its ``..._GroundTruth/`` folder). The ground truth is read in either
format:

* the official one-hot CSV: ``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC`` (exactly one 1 per row);
* the HAM10000-style CSV of the Dataverse release: ``lesion_id,image_id,dx,...``.

``group`` is the ``lesion_id``: from a HAM-style CSV, or for training images from the official
``ISIC2018_Task3_Training_LesionGroupings.csv`` when present; otherwise the image id. Splits are
built for the parts found; with none there, all are downloaded from the ISIC archive.

Clinical fields as ``ham10000``'s (``age``, ``sex``, ``site``; audit-only ``dx_type``, ``dataset``),
read from a HAM-style CSV; the one-hot CSVs carry none, so they are missing there, except
``dx_type`` of training images, read from the groupings' ``diagnosis_confirm_type``.
"""
from __future__ import annotations

import csv
from pathlib import Path

import tensorflow_datasets as tfds

from flaxderm.data.builders import common
from flaxderm.data.builders import ham10000

_URL = "https://isic-challenge-data.s3.amazonaws.com/2018/"
_PARTS = {"train": "Training", "validation": "Validation", "test": "Test"}
GROUPINGS = "ISIC2018_Task3_Training_LesionGroupings.csv"


def _inputs(part: str) -> str:
  return f"ISIC2018_Task3_{part}_Input"


def _ground_truth(part: str) -> str:
  return f"ISIC2018_Task3_{part}_GroundTruth.csv"


def read_ground_truth(path: Path) -> list[common.Source]:
  """Sources (image paths still unset) of either ground-truth format; bad rows carry a problem."""
  with open(path, newline="", encoding="utf-8-sig") as f:
    columns = set(next(csv.reader(f), []))
  if {"image_id", "dx"} <= columns:
    return [common.Source(id=r["image_id"], image=Path(), label=r["dx"], label_file=path,
                          group=r.get("lesion_id", "")
                          ).read_clinical(r, ham10000.CLINICAL_COLUMNS, path)
            for r in common.read_csv(path, ("image_id", "dx"))]
  one_hot = [c.upper() for c in ham10000.DX_CLASSES]
  sources = []
  for r in common.read_csv(path, ("image", *one_hot)):
    label, problem = common.one_hot_label(r, one_hot, r["image"])
    sources.append(common.Source(id=r["image"], image=Path(), label=label and label.lower(),
                                 label_file=path, problem=problem,
                                 problem_file=path if problem else None))
  return sources


class Isic2018Task3(common.Builder, skip_registration=True):
  """ISIC 2018 Task 3 dermoscopic images with one of 7 diagnoses."""

  BUILDER_CONFIGS = [common.FileConfig(name="default", description="longest side <= 1024")]
  VERSION = ham10000.Ham10000.VERSION
  RELEASE_NOTES = ham10000.Ham10000.RELEASE_NOTES
  CLINICAL_FIELDS = ham10000.Ham10000.CLINICAL_FIELDS
  HOMEPAGE = "https://challenge.isic-archive.com/data/#2018"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Download the Task 3 zips from {HOMEPAGE} ({_URL}<name>.zip) and extract them in "
      "manual_dir, giving for each split found (Training, Validation, Test) "
      f"{_inputs('<Split>')}/ISIC_nnnnnnn.jpg and {_ground_truth('<Split>')} (optionally "
      f"{GROUPINGS}).")
  CITATION = ham10000.Ham10000.CITATION

  def class_names(self) -> tuple[str, ...]:
    return ham10000.DX_CLASSES

  def official_files(self) -> dict[str, str | None]:
    wanted = {GROUPINGS: _URL + GROUPINGS}
    for part in _PARTS.values():
      wanted[_inputs(part)] = f"{_URL}{_inputs(part)}.zip"
      wanted[_ground_truth(part)] = f"{_URL}{_ground_truth(part)[:-4]}.zip"
    return wanted

  def _sources(self, dl_manager: tfds.download.DownloadManager) -> dict[str, list[common.Source]]:
    found = self._locate(dl_manager)
    groupings = {}
    if found[GROUPINGS]:
      groupings = {r["image"]: r for r in common.read_csv(found[GROUPINGS], ("image", "lesion_id"))}
    splits = {}
    for split, part in _PARTS.items():
      inputs, truth = found[_inputs(part)], found[_ground_truth(part)]
      if inputs is None and truth is None:
        continue
      if inputs is None or truth is None:
        have, lack = ((_inputs(part), _ground_truth(part)) if inputs
                      else (_ground_truth(part), _inputs(part)))
        raise ValueError(f"{self.name}: found {have} but not {lack} ({split} split)\n"
                         f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
      sources = read_ground_truth(truth)
      for s in sources:
        s.image = inputs / f"{s.id}.jpg"
        grouping = groupings.get(s.id, {})
        s.group = s.group or grouping.get("lesion_id", "")
        if grouping and not s.clinical:  # one-hot ground truth: dx_type from the groupings
          s.read_clinical(grouping, {"dx_type": "diagnosis_confirm_type"}, found[GROUPINGS])
      files = {f.stem: f for f in inputs.glob("ISIC_*.jpg")}
      splits[split] = sources + common.unlisted(files, {s.id for s in sources}, truth)
    return splits
