"""``ham10000``: the HAM10000 release (Tschandl et al. 2018), 7 diagnoses, grouped by lesion.

Layout (Harvard Dataverse / ISIC release)::

    HAM10000_metadata.csv                         lesion_id,image_id,dx,dx_type,age,sex,...
    HAM10000_images_part_1/ISIC_nnnnnnn.jpg       (and HAM10000_images_part_2/)
    HAM10000_segmentations_lesion_tschandl/ISIC_nnnnnnn_segmentation.png   (optional masks)

The release has one part, so everything goes to "train"; ``group`` is the ``lesion_id`` (images of
one lesion share it), from which the pipeline makes grouped train/validation splits.

Configs:

* ``default``: the 7 diagnoses ``DX_CLASSES`` (alphabetical, as the ISIC 2018 Task 3 scripts).
* ``paper001``: the 3-class subset of paper 001 (melanoma / nevus / seborrheic keratosis), i.e.
  HAM10000's ``mel``, ``nv`` and ``bkl``. HAM10000 has no seborrheic-keratosis class of its own:
  ``bkl`` ("benign keratosis-like lesions") gathers seborrheic keratoses, solar lentigines and
  lichen-planus-like keratoses, and is the class the paper's "seborrheic keratosis" images can
  only have come from. Labels keep the HAM10000 codes (bkl, mel, nv, in the 7-class order) so
  nobody mistakes bkl for pure seborrheic keratosis. Images of the other diagnoses are left out
  by design (counted in the log, not reported as bad).

Option ``masks=True`` adds each image's lesion mask (every kept image must then have one).

Clinical fields (``flaxderm.data.clinical``): ``age``, ``sex``, ``site`` (``localization``), and
for audits only ``dx_type`` and ``dataset`` (in ``clinical.NEVER_INPUTS``; ``dataset`` is empty
when the CSV has no such column, as in the first Dataverse release).
"""
from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from flaxderm.data.builders import common

# akiec: actinic keratoses / intraepithelial carcinoma, bcc: basal cell carcinoma, bkl: benign
# keratosis-like, df: dermatofibroma, mel: melanoma, nv: melanocytic nevi, vasc: vascular lesions.
DX_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
PAPER001_CLASSES = ("bkl", "mel", "nv")

METADATA = "HAM10000_metadata.csv"
IMAGE_FOLDERS = ("HAM10000_images_part_1", "HAM10000_images_part_2", "HAM10000_images")
MASK_FOLDER = "HAM10000_segmentations_lesion_tschandl"
# Clinical field -> column of the HAM10000 CSVs (HAM10000_metadata.csv, ISIC 2018 Task 3's).
CLINICAL_COLUMNS = {"age": "age", "sex": "sex", "site": "localization", "dx_type": "dx_type",
                    "dataset": "dataset"}


@dataclasses.dataclass(eq=False)
class HamConfig(common.FileConfig):
  classes: str = "all"  # "all" (DX_CLASSES) or "paper001" (PAPER001_CLASSES)
  masks: bool = False  # add the lesion masks of HAM10000_segmentations_lesion_tschandl

  def class_names(self) -> tuple[str, ...]:
    return PAPER001_CLASSES if self.classes == "paper001" else DX_CLASSES

  def validate(self, builder: str) -> None:
    super().validate(builder)
    if self.classes not in ("all", "paper001"):
      raise ValueError(f"{builder}: classes must be 'all' or 'paper001', got {self.classes!r}")


class Ham10000(common.Builder, skip_registration=True):
  """HAM10000 dermoscopic images with their diagnosis and lesion id (optional lesion masks)."""

  BUILDER_CONFIGS = [
      HamConfig(name="default", description="7 diagnoses"),
      HamConfig(name="paper001", classes="paper001",
                description="paper 001's 3 classes: bkl (seborrheic keratosis), mel, nv"),
  ]
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "First release.",
                   "1.1.0": "Clinical fields age, sex, site, dx_type, dataset."}
  CLINICAL_FIELDS = tuple(CLINICAL_COLUMNS)
  HOMEPAGE = "https://doi.org/10.7910/DVN/DBW86T"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Download HAM10000 from {HOMEPAGE} and extract it in manual_dir, giving {METADATA}, "
      f"{IMAGE_FOLDERS[0]}/ISIC_nnnnnnn.jpg and {IMAGE_FOLDERS[1]}/ (and, for masks=True, "
      f"{MASK_FOLDER}/ISIC_nnnnnnn_segmentation.png).")
  CITATION = """@article{tschandl2018ham10000,
  title={The HAM10000 dataset, a large collection of multi-source dermatoscopic images of common
         pigmented skin lesions},
  author={Tschandl, Philipp and Rosendahl, Cliff and Kittler, Harald},
  journal={Scientific Data}, volume={5}, pages={180161}, year={2018}}"""

  def class_names(self) -> tuple[str, ...]:
    return self.builder_config.class_names()

  def has_mask(self) -> bool:
    return self.builder_config.masks

  def official_files(self) -> dict[str, str | None]:
    return dict.fromkeys((METADATA, *IMAGE_FOLDERS, *((MASK_FOLDER,) if self.has_mask() else ())))

  def _sources(self, dl_manager: tfds.download.DownloadManager) -> dict[str, list[common.Source]]:
    found = self._locate(dl_manager)
    folders = [found[f] for f in IMAGE_FOLDERS if found[f]]
    if found[METADATA] is None or not folders:
      raise ValueError(f"{self.name}: need {METADATA} and at least one of {IMAGE_FOLDERS}\n"
                       f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    masks = found.get(MASK_FOLDER)
    if self.has_mask() and masks is None:
      raise ValueError(f"{self.name}: masks=True needs the {MASK_FOLDER} folder")
    images = {f.stem: f for folder in folders for f in folder.glob("*.jpg")}
    sources, left_out = [], 0
    rows = common.read_csv(found[METADATA], ("lesion_id", "image_id", "dx"))
    for row in rows:
      if row["dx"] in DX_CLASSES and row["dx"] not in self.class_names():
        left_out += 1
        continue
      image_id = row["image_id"]
      sources.append(common.Source(
          id=image_id, group=row["lesion_id"], label=row["dx"], label_file=found[METADATA],
          image=images.get(image_id, folders[0] / f"{image_id}.jpg"),
          mask=masks / f"{image_id}_segmentation.png" if masks else None,
      ).read_clinical(row, CLINICAL_COLUMNS, found[METADATA]))
    self._leave_out(f"diagnoses outside {self.class_names()}", left_out)
    listed = {row["image_id"] for row in rows}
    return {"train": sources + common.unlisted(images, listed, found[METADATA])}
