"""``isic2019``: ISIC 2019 Task 1 training set (BCN20000 + HAM10000 + MSK), 8 diagnoses.

Layout of the official download (ISIC archive)::

    ISIC_2019_Training_Input/ISIC_nnnnnnn.jpg        (some ISIC_nnnnnnn_downsampled.jpg)
    ISIC_2019_Training_GroundTruth.csv               image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK
    ISIC_2019_Training_Metadata.csv                  image,age_approx,anatom_site_general,
                                                     lesion_id,sex

Everything goes to "train" (the test ground truth is not part of this download). Labels are the
one-hot columns, lower case, in the official order (``CLASS_NAMES``); ``UNK`` ("none of the
others") marks no training image, so a row marking it is a bad row. ``group`` is the
``lesion_id`` (the image id where the metadata leaves it empty).

Image ids: the MSK images of the release are named ``ISIC_nnnnnnn_downsampled`` (in the files and
the CSVs). The suffix names the file's resolution, not another image, so ``id`` is the plain ISIC
id, the one HAM10000 and the ISIC archive use for the same image; a CSV row is matched to its file
with or without the suffix.

Clinical fields (``flaxderm.data.clinical``): ``age`` (``age_approx``), ``sex``, ``site``
(``anatom_site_general``).
"""
from __future__ import annotations

from pathlib import Path

import tensorflow_datasets as tfds

from flaxderm.data.builders import common

CLASS_NAMES = ("mel", "nv", "bcc", "ak", "bkl", "df", "vasc", "scc")
INPUTS = "ISIC_2019_Training_Input"
GROUND_TRUTH = "ISIC_2019_Training_GroundTruth.csv"
METADATA = "ISIC_2019_Training_Metadata.csv"
DOWNSAMPLED = "_downsampled"
CLINICAL_COLUMNS = {"age": "age_approx", "sex": "sex", "site": "anatom_site_general"}
_URL = "https://isic-challenge-data.s3.amazonaws.com/2019/"


class Isic2019(common.Builder, skip_registration=True):
  """ISIC 2019 dermoscopic images with one of 8 diagnoses, lesion ids and age, sex, site."""

  BUILDER_CONFIGS = [common.FileConfig(name="default", description="longest side <= 1024")]
  CLINICAL_FIELDS = tuple(CLINICAL_COLUMNS)
  HOMEPAGE = "https://challenge.isic-archive.com/data/#2019"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Download {INPUTS}.zip, {GROUND_TRUTH} and {METADATA} from {HOMEPAGE} ({_URL}<name>) and "
      f"extract them in manual_dir, giving {INPUTS}/ISIC_nnnnnnn.jpg, {GROUND_TRUTH} and "
      f"{METADATA}.")
  CITATION = """@article{combalia2019bcn20000,
  title={BCN20000: Dermoscopic Lesions in the Wild},
  author={Combalia, Marc and Codella, Noel CF and Rotemberg, Veronica and others},
  journal={arXiv:1908.02288}, year={2019}}"""

  def class_names(self) -> tuple[str, ...]:
    return CLASS_NAMES

  def official_files(self) -> dict[str, str | None]:
    return {INPUTS: f"{_URL}{INPUTS}.zip", GROUND_TRUTH: _URL + GROUND_TRUTH,
            METADATA: _URL + METADATA}

  def _sources(self, dl_manager: tfds.download.DownloadManager) -> dict[str, list[common.Source]]:
    found = self._locate(dl_manager)
    lacking = [name for name, path in found.items() if path is None]
    if lacking:
      raise ValueError(f"{self.name}: {lacking} not found\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    truth, metadata = found[GROUND_TRUTH], found[METADATA]
    images = {f.stem.removesuffix(DOWNSAMPLED): f for f in found[INPUTS].glob("ISIC_*.jpg")}
    columns = tuple(c.upper() for c in (*CLASS_NAMES, "unk"))
    clinical_rows = {r["image"].removesuffix(DOWNSAMPLED): r for r in common.read_csv(
        metadata, ("image", "lesion_id", *CLINICAL_COLUMNS.values()))}
    sources = []
    for row in common.read_csv(truth, ("image", *columns)):
      image_id = row["image"].removesuffix(DOWNSAMPLED)
      label, problem = common.one_hot_label(row, columns, row["image"])
      source = common.Source(id=image_id, image=images.get(image_id, Path(found[INPUTS],
                                                                           f"{image_id}.jpg")),
                             label=label and label.lower(), label_file=truth, problem=problem,
                             problem_file=truth if problem else None)
      if image_id in clinical_rows:
        source.group = clinical_rows[image_id]["lesion_id"]
        source.read_clinical(clinical_rows[image_id], CLINICAL_COLUMNS, metadata)
      elif not problem:
        source.problem, source.problem_file = f"no row for {row['image']} in {METADATA}", metadata
      sources.append(source)
    return {"train": sources + common.unlisted(images, {s.id for s in sources}, truth)}
