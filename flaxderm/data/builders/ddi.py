"""``ddi``: Diverse Dermatology Images (Daneshjou et al. 2022), biopsy-proven, by skin tone.

Layout of the release (Stanford AIMI)::

    ddidiversedermatologyimages/ddi_metadata.csv    ,DDI_ID,DDI_file,skin_tone,malignant,disease
    ddidiversedermatologyimages/000001.png          (the DDI_file of each row, beside the CSV)

Everything goes to "train"; the release records no patient, so ``group`` is the image id (the
``DDI_file`` without its extension). Labels: ``malignant`` (``benign``/``malignant``). Clinical
fields (``flaxderm.data.clinical``): ``fitzpatrick`` from ``skin_tone`` (DDI records pairs of
Fitzpatrick types: 12, 34, 56 read as ``"1-2"``, ``"3-4"``, ``"5-6"``) and for audits
``diagnosis`` (``disease``, e.g. ``melanoma-in-situ``).
"""
from __future__ import annotations

import tensorflow_datasets as tfds

from flaxderm.data.builders import common

CLASS_NAMES = ("benign", "malignant")
METADATA = "ddi_metadata.csv"
IMAGES = "ddidiversedermatologyimages"
CLINICAL_COLUMNS = {"fitzpatrick": "skin_tone", "diagnosis": "disease"}


class Ddi(common.Builder, skip_registration=True):
  """DDI clinical images, benign/malignant, with Fitzpatrick skin-type pairs."""

  BUILDER_CONFIGS = [common.FileConfig(name="default", description="longest side <= 1024")]
  IMAGE_FORMAT = "png"  # PNG originals: keep them lossless
  CLINICAL_FIELDS = tuple(CLINICAL_COLUMNS)
  HOMEPAGE = "https://ddi-dataset.github.io/"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Download DDI from {HOMEPAGE} (Stanford AIMI) and extract it in manual_dir, giving "
      f"{IMAGES}/{METADATA} and the images beside it.")
  CITATION = """@article{daneshjou2022disparities,
  title={Disparities in dermatology AI performance on a diverse, curated clinical image set},
  author={Daneshjou, Roxana and Vodrahalli, Kailas and Novoa, Roberto A and others},
  journal={Science Advances}, volume={8}, number={31}, pages={eabq6147}, year={2022}}"""

  def class_names(self) -> tuple[str, ...]:
    return CLASS_NAMES

  def official_files(self) -> dict[str, str | None]:
    return {METADATA: None, IMAGES: None}

  def _sources(self, dl_manager: tfds.download.DownloadManager) -> dict[str, list[common.Source]]:
    metadata = self._locate(dl_manager)[METADATA]
    if metadata is None:
      raise ValueError(f"{self.name}: {METADATA} not found\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    folder = metadata.parent
    sources = []
    for row in common.read_csv(metadata, ("DDI_file", "malignant", *CLINICAL_COLUMNS.values())):
      label = {"true": "malignant", "false": "benign"}.get(row["malignant"].lower())
      problem = "" if label else (f"row of {row['DDI_file']}: malignant is "
                                    f"{row['malignant']!r} (expected True or False)")
      sources.append(common.Source(
          id=row["DDI_file"].rsplit(".", 1)[0], image=folder / row["DDI_file"], label=label,
          label_file=metadata, problem=problem, problem_file=metadata if problem else None,
      ).read_clinical(row, CLINICAL_COLUMNS, metadata))
    images = {f.stem: f for f in folder.glob("*.png")}
    return {"train": sources + common.unlisted(images, {s.id for s in sources}, metadata)}
