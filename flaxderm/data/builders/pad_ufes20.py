"""``pad_ufes20``: PAD-UFES-20 (Pacheco et al. 2020), smartphone clinical images, 6 diagnoses.

Layout of the release (Mendeley Data)::

    metadata.csv                       patient_id,lesion_id,...,diagnostic,...,img_id,biopsed
    images/imgs_part_{1,2,3}/PAT_<patient>_<lesion>_<n>.png

Images are found anywhere below the folder of ``metadata.csv`` by their ``img_id``, so one
folder of all images works as well as the release's three parts. Everything goes to "train" (the
release has no split); ``group`` is the ``patient_id``: one patient can have several lesions and
images, and grouped splits must keep a patient on one side.

Labels: ``diagnostic`` (``CLASS_NAMES``: actinic keratosis, basal cell carcinoma, melanoma, nevus,
squamous cell carcinoma, seborrheic keratosis). Clinical fields (``flaxderm.data.clinical``):
``age``, ``sex`` (``gender``), ``site`` (``region``), ``fitzpatrick`` (``fitspatrick``), and the
release's own columns under their names (``smoke``, ..., ``diameter_1``, ``diameter_2``, ``itch``,
..., ``elevation``); ``lesion_id`` and ``biopsed`` are for audits only (``clinical.NEVER_INPUTS``).
About a third of the rows leave the patient's answers empty: those fields are missing there.
"""
from __future__ import annotations

import tensorflow_datasets as tfds

from flaxderm.data.builders import common

CLASS_NAMES = ("ACK", "BCC", "MEL", "NEV", "SCC", "SEK")
METADATA = "metadata.csv"
IMAGE_FOLDERS = ("images", "imgs_part_1", "imgs_part_2", "imgs_part_3")
_OWN_COLUMNS = ("smoke", "drink", "background_father", "background_mother", "pesticide",
                "skin_cancer_history", "cancer_history", "has_piped_water", "has_sewage_system",
                "diameter_1", "diameter_2", "itch", "grew", "hurt", "changed", "bleed", "elevation",
                "lesion_id", "biopsed")
CLINICAL_COLUMNS = {"age": "age", "sex": "gender", "site": "region", "fitzpatrick": "fitspatrick",
                    **{c: c for c in _OWN_COLUMNS}}


class PadUfes20(common.Builder, skip_registration=True):
  """PAD-UFES-20 smartphone images of skin lesions with 6 diagnoses and the patients' answers."""

  BUILDER_CONFIGS = [common.FileConfig(name="default", description="longest side <= 1024")]
  IMAGE_FORMAT = "png"  # PNG originals: keep them lossless
  CLINICAL_FIELDS = tuple(CLINICAL_COLUMNS)
  HOMEPAGE = "https://data.mendeley.com/datasets/zr7vgbcyr2/1"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Download PAD-UFES-20 from {HOMEPAGE} and extract it (with the zips inside) in manual_dir, "
      f"giving {METADATA} and images/imgs_part_1..3/PAT_*.png below its folder.")
  CITATION = """@article{pacheco2020padufes20,
  title={PAD-UFES-20: A skin lesion dataset composed of patient data and clinical images collected
         from smartphones},
  author={Pacheco, Andre GC and Lima, Gustavo R and Salom{\\~a}o, Amanda S and others},
  journal={Data in Brief}, volume={32}, pages={106221}, year={2020}}"""

  def class_names(self) -> tuple[str, ...]:
    return CLASS_NAMES

  def official_files(self) -> dict[str, str | None]:
    return dict.fromkeys((METADATA, *IMAGE_FOLDERS))

  def _sources(self, dl_manager: tfds.download.DownloadManager) -> dict[str, list[common.Source]]:
    metadata = self._locate(dl_manager)[METADATA]
    if metadata is None:
      raise ValueError(f"{self.name}: {METADATA} not found\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    images = {f.stem: f for f in metadata.parent.rglob("PAT_*.png")}
    rows = common.read_csv(metadata, ("patient_id", "img_id", "diagnostic",
                                      *CLINICAL_COLUMNS.values()))
    sources = []
    for row in rows:
      image_id = row["img_id"].removesuffix(".png")
      sources.append(common.Source(
          id=image_id, group=row["patient_id"], label=row["diagnostic"], label_file=metadata,
          image=images.get(image_id, metadata.parent / row["img_id"]),
      ).read_clinical(row, CLINICAL_COLUMNS, metadata))
    listed = {s.id for s in sources}
    return {"train": sources + common.unlisted(images, listed, metadata)}
