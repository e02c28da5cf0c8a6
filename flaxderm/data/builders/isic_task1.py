"""ISIC lesion segmentation challenges (2016 Part 1, 2017 Part 1, 2018 Task 1).

The three releases share one layout, up to folder names: for each official split, a folder of
``ISIC_nnnnnnn.jpg`` images and a folder of ``ISIC_nnnnnnn<suffix>.png`` 0/255 masks. Each builder
is that table. Splits are built for the parts found under the manual directory (e.g. only the
training part); with no part there, all are downloaded from the ISIC archive.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import ClassVar

import tensorflow_datasets as tfds

from flaxderm.data.builders import common

_ID = re.compile(r"ISIC_\d+")


@dataclasses.dataclass(frozen=True)
class Part:
  split: str
  images: str  # official folder of the images
  masks: str  # official folder of the masks


class IsicSegmentation(common.Builder, skip_registration=True):
  """Base of the ISIC segmentation builders: image, lesion mask, no label."""

  BUILDER_CONFIGS = [common.FileConfig(name="default", description="longest side <= 1024")]
  HAS_MASK = True
  HOMEPAGE = "https://challenge.isic-archive.com/data/"
  PARTS: ClassVar[tuple[Part, ...]] = ()
  MASK_SUFFIX: ClassVar[str] = "_segmentation"
  URL: ClassVar[str] = ""  # folder of the official zips: <URL><folder>.zip

  @classmethod
  def instructions(cls) -> str:
    folders = "\n".join(f"  {p.images}/ISIC_nnnnnnn.jpg and {p.masks}/ISIC_nnnnnnn"
                        f"{cls.MASK_SUFFIX}.png  ({p.split})" for p in cls.PARTS)
    return (f"Download the official zips from {cls.HOMEPAGE} ({cls.URL}<folder>.zip) and "
            f"extract them in manual_dir, giving (any subset of the splits):\n{folders}")

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    if cls.PARTS:
      cls.MANUAL_DOWNLOAD_INSTRUCTIONS = cls.instructions()

  def official_files(self) -> dict[str, str | None]:
    return {folder: f"{self.URL}{folder}.zip" for p in self.PARTS for folder in (p.images, p.masks)}

  def _sources(self, dl_manager: tfds.download.DownloadManager) -> dict[str, list[common.Source]]:
    found = self._locate(dl_manager)
    splits = {}
    for p in self.PARTS:
      images, masks = found[p.images], found[p.masks]
      if images is None and masks is None:
        continue
      if images is None or masks is None:
        have, lack = (p.images, p.masks) if images else (p.masks, p.images)
        raise ValueError(f"{self.name}: found {have} but not {lack} ({p.split} split)\n"
                         f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
      splits[p.split] = self._pair(images, masks)
    return splits

  def _pair(self, images: Path, masks: Path) -> list[common.Source]:
    """One source per id found among the images or the masks (either may be missing)."""
    image_files = {f.stem: f for f in images.glob("ISIC_*.jpg") if _ID.fullmatch(f.stem)}
    mask_files = {f.stem[:-len(self.MASK_SUFFIX)]: f
                  for f in masks.glob(f"ISIC_*{self.MASK_SUFFIX}.png")
                  if _ID.fullmatch(f.stem[:-len(self.MASK_SUFFIX)])}
    return [common.Source(id=i, image=image_files.get(i, images / f"{i}.jpg"),
                          mask=mask_files.get(i, masks / f"{i}{self.MASK_SUFFIX}.png"))
            for i in sorted(image_files.keys() | mask_files.keys())]


class Isic2018Task1(IsicSegmentation, skip_registration=True):
  """ISIC 2018 Task 1 lesion boundary segmentation (2594 / 100 / 1000 images)."""

  URL = "https://isic-challenge-data.s3.amazonaws.com/2018/"
  PARTS = (Part("train", "ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
           Part("validation", "ISIC2018_Task1-2_Validation_Input",
                "ISIC2018_Task1_Validation_GroundTruth"),
           Part("test", "ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth"))
  CITATION = """@article{codella2019skin,
  title={Skin Lesion Analysis Toward Melanoma Detection 2018: A Challenge Hosted by the
         International Skin Imaging Collaboration (ISIC)},
  author={Codella, Noel and Rotemberg, Veronica and Tschandl, Philipp and others},
  journal={arXiv:1902.03368}, year={2019}}"""


class Isic2017Task1(IsicSegmentation, skip_registration=True):
  """ISIC 2017 Part 1 lesion segmentation (2000 / 150 / 600 images)."""

  URL = "https://isic-challenge-data.s3.amazonaws.com/2017/"
  PARTS = (Part("train", "ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth"),
           Part("validation", "ISIC-2017_Validation_Data",
                "ISIC-2017_Validation_Part1_GroundTruth"),
           Part("test", "ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth"))
  CITATION = """@inproceedings{codella2018skin,
  title={Skin lesion analysis toward melanoma detection: A challenge at the 2017 ISBI},
  author={Codella, Noel CF and Gutman, David and Celebi, M Emre and others},
  booktitle={ISBI}, year={2018}}"""


class Isic2016Task1(IsicSegmentation, skip_registration=True):
  """ISIC 2016 (ISBI) Part 1 lesion segmentation (900 / 379 images; no validation split)."""

  URL = "https://isic-challenge-data.s3.amazonaws.com/2016/"
  MASK_SUFFIX = "_Segmentation"
  PARTS = (Part("train", "ISBI2016_ISIC_Part1_Training_Data",
                "ISBI2016_ISIC_Part1_Training_GroundTruth"),
           Part("test", "ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth"))
  CITATION = """@article{gutman2016skin,
  title={Skin lesion analysis toward melanoma detection: A challenge at ISBI 2016},
  author={Gutman, David and Codella, Noel CF and Celebi, Emre and others},
  journal={arXiv:1605.01397}, year={2016}}"""
