"""``ph2``: the PH2 dermoscopy database (Mendonça et al. 2013): image, lesion mask, diagnosis.

Layout of the official release::

    PH2Dataset/PH2 Dataset images/IMDnnn/IMDnnn_Dermoscopic_Image/IMDnnn.bmp
    PH2Dataset/PH2 Dataset images/IMDnnn/IMDnnn_lesion/IMDnnn_lesion.bmp     (1-bit masks)
    PH2Dataset/PH2_dataset.xlsx     clinical diagnosis: an "X" under Common Nevus, Atypical
                                    Nevus or Melanoma (header row "Image Name", ..., row 13)

All 200 cases go to "train" (PH2 has no official split); ``id`` and ``group`` are the case id.
"""
from __future__ import annotations

import re
from pathlib import Path

import tensorflow_datasets as tfds

from flaxderm.data.builders import common

CLASS_NAMES = ("common_nevus", "atypical_nevus", "melanoma")
_COLUMNS = ("Common Nevus", "Atypical Nevus", "Melanoma")  # in CLASS_NAMES order
IMAGES = "PH2 Dataset images"
SHEET = "PH2_dataset.xlsx"
_CASE = re.compile(r"IMD\d+")


def read_diagnoses(path: Path) -> dict[str, tuple[str | None, str]]:
  """case id -> (class name, "") or (None, problem) from the PH2 spreadsheet."""
  import openpyxl  # pylint: disable=g-import-not-at-top  (only PH2 needs it)

  workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
  try:
    rows = workbook.worksheets[0].iter_rows(values_only=True)
    header = None
    for row in rows:
      cells = [" ".join(str(c).split()) if c is not None else "" for c in row]
      if cells and cells[0] == "Image Name":
        header = cells
        break
    if header is None or not all(c in header for c in _COLUMNS):
      raise ValueError(f"{path}: no header row with 'Image Name' and {_COLUMNS}")
    columns = [header.index(c) for c in _COLUMNS]
    diagnoses = {}
    for row in rows:
      case = str(row[0] or "").strip()
      if not _CASE.fullmatch(case):
        continue
      marked = [name for name, c in zip(CLASS_NAMES, columns)
                if str(row[c] or "").strip().upper() == "X"]
      diagnoses[case] = ((marked[0], "") if len(marked) == 1 else
                         (None, f"{case} has {len(marked)} diagnoses marked (expected one X)"))
    return diagnoses
  finally:
    workbook.close()


class Ph2(common.Builder, skip_registration=True):
  """PH2 dermoscopic images with lesion masks and a 3-class clinical diagnosis."""

  BUILDER_CONFIGS = [common.FileConfig(name="default", description="longest side <= 1024")]
  HAS_MASK = True
  IMAGE_FORMAT = "png"  # BMP originals: keep them lossless
  HOMEPAGE = "https://www.fc.up.pt/addi/ph2%20database.html"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Download PH2Dataset.rar from {HOMEPAGE} and extract it in manual_dir, giving "
      f"PH2Dataset/{IMAGES}/IMDnnn/... and PH2Dataset/{SHEET}.")
  CITATION = """@inproceedings{mendonca2013ph2,
  title={PH2 - A dermoscopic image database for research and benchmarking},
  author={Mendon{\\c{c}}a, Teresa and Ferreira, Pedro M and Marques, Jorge S and Marcal, Andre RS
          and Rozeira, Jorge},
  booktitle={EMBC}, pages={5437--5440}, year={2013}}"""

  def class_names(self) -> tuple[str, ...]:
    return CLASS_NAMES

  def official_files(self) -> dict[str, str | None]:
    return {IMAGES: None, SHEET: None}

  def _sources(self, dl_manager: tfds.download.DownloadManager) -> dict[str, list[common.Source]]:
    found = self._locate(dl_manager)
    images, sheet = found[IMAGES], found[SHEET]
    if images is None or sheet is None:
      raise ValueError(f"{self.name}: need both '{IMAGES}' and {SHEET}\n"
                       f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    diagnoses = read_diagnoses(sheet)
    folders = {d.name: d for d in images.iterdir() if d.is_dir() and _CASE.fullmatch(d.name)}
    sources = []
    for case in sorted(diagnoses):
      folder = images / case
      label, problem = diagnoses[case]
      sources.append(common.Source(
          id=case, group=case, label=label, label_file=sheet, problem=problem,
          problem_file=sheet if problem else None,
          image=folder / f"{case}_Dermoscopic_Image" / f"{case}.bmp",
          mask=folder / f"{case}_lesion" / f"{case}_lesion.bmp"))
    return {"train": sources + common.unlisted(folders, diagnoses, sheet)}
