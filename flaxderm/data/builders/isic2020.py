"""``isic2020``: the SIIM-ISIC 2020 melanoma challenge training set (33,126 images, 2,056 patients).

Layout of the official download (ISIC archive)::

    ISIC_2020_Training_JPEG/train/ISIC_nnnnnnn.jpg     (or train/ISIC_nnnnnnn.jpg)
    ISIC_2020_Training_GroundTruth.csv     image_name,patient_id,sex,age_approx,
                                           anatom_site_general_challenge,diagnosis,
                                           benign_malignant,target
    ISIC_2020_Training_GroundTruth_v2.csv  the same with lesion_id (read instead when present)
    ISIC_2020_Training_Duplicates.csv      image_name_1,image_name_2: images that show the same
                                           lesion at the same time

Everything goes to "train". ``group`` is the ``patient_id``: a patient has up to ~100 images, and
grouped splits must keep a patient on one side. Of each official duplicate pair the second image
(``image_name_2``) is left out (counted in ``bad_examples.json`` under ``left_out``); without the
duplicates list every image is kept and a warning says so.

Two label sets (``common.LabelSetConfig``): config ``default`` (``label="malignant"``) stores the
binary target (``benign``/``malignant``, from ``target``), config ``diagnosis``
(``label="diagnosis"``) the 9 diagnoses of ``DIAGNOSES``. Either way every record also carries
both as text, ``malignant`` and ``diagnosis``, for audits (never inputs: ``clinical.NEVER_INPUTS``).

Clinical fields (``flaxderm.data.clinical``): ``age`` (``age_approx``), ``sex``, ``site``
(``anatom_site_general_challenge``), ``lesion_id`` (v2 ground truth only, else empty).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import ClassVar

import tensorflow_datasets as tfds

from flaxderm.data.builders import common

log = logging.getLogger(__name__)

# The `diagnosis` values of the release, most frequent first ("unknown" is a benign lesion whose
# diagnosis the release does not give).
DIAGNOSES = ("unknown", "nevus", "melanoma", "seborrheic keratosis", "lentigo NOS",
             "lichenoid keratosis", "solar lentigo", "cafe-au-lait macule",
             "atypical melanocytic proliferation")
BINARY = ("benign", "malignant")
IMAGE_FOLDERS = ("ISIC_2020_Training_JPEG", "train")
GROUND_TRUTHS = ("ISIC_2020_Training_GroundTruth_v2.csv", "ISIC_2020_Training_GroundTruth.csv")
DUPLICATES = "ISIC_2020_Training_Duplicates.csv"
CLINICAL_COLUMNS = {"age": "age_approx", "sex": "sex", "site": "anatom_site_general_challenge",
                    "lesion_id": "lesion_id", "diagnosis": "diagnosis",
                    "malignant": "benign_malignant"}
_URL = "https://isic-challenge-data.s3.amazonaws.com/2020/"


@dataclasses.dataclass(eq=False)
class Isic2020Config(common.LabelSetConfig):
  LABEL_SETS: ClassVar[dict[str, tuple[str, ...]]] = {"malignant": BINARY, "diagnosis": DIAGNOSES}


class Isic2020(common.Builder, skip_registration=True):
  """SIIM-ISIC 2020 dermoscopic images: benign/malignant or diagnosis, patient ids, age/sex/site."""

  BUILDER_CONFIGS = Isic2020Config.presets()
  CLINICAL_FIELDS = tuple(CLINICAL_COLUMNS)
  HOMEPAGE = "https://challenge.isic-archive.com/data/#2020"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Download {IMAGE_FOLDERS[0]}.zip, {GROUND_TRUTHS[0]} (or {GROUND_TRUTHS[1]}) and "
      f"{DUPLICATES} from {HOMEPAGE} ({_URL}<name>) and extract them in manual_dir, giving "
      f"{IMAGE_FOLDERS[0]}/train/ISIC_nnnnnnn.jpg beside the CSVs.")
  CITATION = """@article{rotemberg2021patient,
  title={A patient-centric dataset of images and metadata for identifying melanomas using
         clinical context},
  author={Rotemberg, Veronica and Kurtansky, Nicholas and Betz-Stablein, Brigid and others},
  journal={Scientific Data}, volume={8}, pages={34}, year={2021}}"""

  def official_files(self) -> dict[str, str | None]:
    return {IMAGE_FOLDERS[0]: f"{_URL}{IMAGE_FOLDERS[0]}.zip", IMAGE_FOLDERS[1]: None,
            **{name: _URL + name for name in (*GROUND_TRUTHS, DUPLICATES)}}

  def _sources(self, dl_manager: tfds.download.DownloadManager) -> dict[str, list[common.Source]]:
    found = self._locate(dl_manager)
    folder = next((found[f] for f in IMAGE_FOLDERS if found[f]), None)
    truth = next((found[f] for f in GROUND_TRUTHS if found[f]), None)
    if folder is None or truth is None:
      raise ValueError(f"{self.name}: need one of {IMAGE_FOLDERS} and one of {GROUND_TRUTHS}\n"
                       f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    images = {f.stem: f for f in folder.rglob("ISIC_*.jpg")}
    duplicates = set()
    if found[DUPLICATES]:
      duplicates = {r["image_name_2"] for r in common.read_csv(
          found[DUPLICATES], ("image_name_1", "image_name_2"))}
    else:
      log.warning("%s: no %s; the official duplicates stay in", self.name, DUPLICATES)
    label = self.builder_config.label
    rows = common.read_csv(truth, ("image_name", "patient_id", "target",
                                   *(c for c in CLINICAL_COLUMNS.values() if c != "lesion_id")))
    sources = []
    for row in rows:
      image_id = row["image_name"]
      if image_id in duplicates:
        continue
      binary = {"0": BINARY[0], "1": BINARY[1]}.get(row["target"])
      problem = ""
      if binary is None or binary != row["benign_malignant"].lower():
        problem = (f"{image_id}: target {row['target']!r} and benign_malignant "
                   f"{row['benign_malignant']!r} disagree (expected 0/benign or 1/malignant)")
      sources.append(common.Source(
          id=image_id, group=row["patient_id"],
          image=images.get(image_id, folder / f"{image_id}.jpg"),
          label=binary if label == "malignant" else row["diagnosis"], label_file=truth,
          problem=problem, problem_file=truth if problem else None,
      ).read_clinical(row, CLINICAL_COLUMNS, truth))
    self._leave_out(f"official duplicates ({DUPLICATES}: image_name_2)", len(rows) - len(sources))
    listed = {row["image_name"] for row in rows}
    return {"train": sources + common.unlisted(images, listed, truth)}
