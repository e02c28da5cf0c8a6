"""Tiny fake downloads in the official layouts (PH2, HAM10000, ...) and the helpers that prepare
and read them back, shared by the builder, training, tool and protocol tests (importable as
``fakes`` through pyproject's ``pythonpath = ["tests"]``)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from flaxderm.data import builders
from flaxderm.data.builders import common

DX = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")


def write_image(path: Path, width: int = 40, height: int = 30, seed: int = 0) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(path)
  return path


def lesion(width: int = 40, height: int = 30) -> np.ndarray:
  """0/255 mask: an ellipse in the middle."""
  yy, xx = np.mgrid[:height, :width]
  inside = ((xx - width / 2) / (width / 4)) ** 2 + ((yy - height / 2) / (height / 4)) ** 2 <= 1
  return inside.astype(np.uint8) * 255


def write_mask(path: Path, values: np.ndarray | None = None, mode: str = "L") -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  values = lesion() if values is None else values
  Image.fromarray(values).convert(mode).save(path)
  return path


def prepare(name: str, tmp_path: Path, manual: Path | None = None, **kwargs):
  return builders.prepare(name, data_dir=tmp_path / "tfds", manual_dir=manual, **kwargs)


def records(builder, split: str) -> list[dict]:
  source = builder.as_data_source(split)
  return [source[i] for i in range(len(source))]


def text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def report(builder) -> dict:
  return json.loads((Path(builder.data_dir) / common.REPORT_NAME).read_text())


def write_ph2(root: Path, diagnoses: dict[str, str], folders: list[str]) -> Path:
  import openpyxl  # pylint: disable=g-import-not-at-top

  base = root / "PH2Dataset"
  for i, case in enumerate(folders):
    folder = base / "PH2 Dataset images" / case
    write_image(folder / f"{case}_Dermoscopic_Image" / f"{case}.bmp", seed=i)
    write_mask(folder / f"{case}_lesion" / f"{case}_lesion.bmp", mode="1")
  sheet = openpyxl.Workbook()
  rows = sheet.active
  rows.cell(2, 6, "Legends")
  rows.cell(12, 3, "Clinical Diagnosis")
  header = ["Image Name", "Histological Diagnosis", "Common Nevus", "Atypical Nevus", "Melanoma",
            "Asymmetry\n(0/1/2)"]
  for c, value in enumerate(header, 1):
    rows.cell(13, c, value)
  columns = {"common_nevus": 3, "atypical_nevus": 4, "melanoma": 5, "two": (3, 5)}
  for r, (case, diagnosis) in enumerate(diagnoses.items(), 14):
    rows.cell(r, 1, case)
    for c in np.atleast_1d(columns[diagnosis]):
      rows.cell(r, int(c), "X")
  sheet.save(base / "PH2_dataset.xlsx")
  return base


HAM_ROWS = [  # lesion_id, image_id, dx
    ("HAM_0000001", "ISIC_0024306", "nv"), ("HAM_0000001", "ISIC_0024307", "nv"),
    ("HAM_0000002", "ISIC_0024308", "mel"), ("HAM_0000003", "ISIC_0024309", "bkl"),
    ("HAM_0000004", "ISIC_0024310", "bcc"), ("HAM_0000005", "ISIC_0024311", "vasc"),
]


def write_csv(path: Path, header: list[str], rows: list) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", newline="") as f:
    csv.writer(f).writerows([header, *rows])
  return path


def write_ham(root: Path, rows=HAM_ROWS, missing=()) -> Path:
  write_csv(root / "HAM10000_metadata.csv",
            ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"],
            [(*r, "histo", "50.0", "male", "back") for r in rows])
  for i, (_, image_id, _) in enumerate(rows):
    if image_id not in missing:
      part = "HAM10000_images_part_1" if i % 2 else "HAM10000_images_part_2"
      write_image(root / part / f"{image_id}.jpg", seed=i)
      write_mask(root / "HAM10000_segmentations_lesion_tschandl" / f"{image_id}_segmentation.png")
  return root


# ISIC 2019: the one-hot columns of its ground truth, in the official order.
ISIC2019_ONE_HOT = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]


def write_isic2019(root: Path, truth_rows, metadata_rows) -> Path:
  """ISIC 2019's layout: ``truth_rows`` (image, diagnosis), ``metadata_rows`` (image, age_approx,
  anatom_site_general, lesion_id, sex), an image per truth row."""
  write_csv(root / "ISIC_2019_Training_GroundTruth.csv", ["image", *ISIC2019_ONE_HOT],
            [(image, *[f"{float(c == dx):.1f}" for c in ISIC2019_ONE_HOT])
             for image, dx in truth_rows])
  write_csv(root / "ISIC_2019_Training_Metadata.csv",
            ["image", "age_approx", "anatom_site_general", "lesion_id", "sex"], metadata_rows)
  for i, (image, _) in enumerate(truth_rows):
    write_image(root / "ISIC_2019_Training_Input" / f"{image}.jpg", seed=i)
  return root
