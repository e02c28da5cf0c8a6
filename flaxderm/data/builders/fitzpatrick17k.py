"""``fitzpatrick17k``: Fitzpatrick 17k (Groh et al. 2021), clinical atlas images with skin types.

Layout: the release is the CSV ``fitzpatrick17k.csv`` (md5hash, fitzpatrick_scale,
fitzpatrick_centaur, label, nine_partition_label, three_partition_label, qc, url, url_alphanum;
the first release calls ``fitzpatrick_scale`` ``fitzpatrick``) and the images the user fetched from
its URLs, named ``<md5hash>.jpg`` (or .png) anywhere below the CSV's folder (e.g. ``images/``).
Some atlas URLs are dead, so rows whose image is absent are bad examples: prepare with
``skip_bad_examples=True`` to leave them out (they are listed in ``bad_examples.json``).

Everything goes to "train"; the atlases record no patient, so ``group`` is the image id
(``md5hash``). Two label sets (``common.LabelSetConfig``): config ``default`` (``label="three"``:
benign, malignant, non-neoplastic) and config ``nine`` (``label="nine"``: the nine partitions).
Clinical fields (``flaxderm.data.clinical``): ``fitzpatrick`` (``fitzpatrick_scale``; -1 is
missing), ``fitzpatrick_centaur`` (empty with the first release), and for audits ``diagnosis``
(the fine ``label``, one of 114 conditions).
"""
from __future__ import annotations

import dataclasses
import re
from typing import ClassVar

import tensorflow_datasets as tfds

from flaxderm.data.builders import common

THREE = ("benign", "malignant", "non-neoplastic")
NINE = ("benign dermal", "benign epidermal", "benign melanocyte", "genodermatoses", "inflammatory",
        "malignant cutaneous lymphoma", "malignant dermal", "malignant epidermal",
        "malignant melanoma")
METADATA = "fitzpatrick17k.csv"
_LABEL_COLUMNS = {"three": "three_partition_label", "nine": "nine_partition_label"}
_MD5 = re.compile(r"[0-9a-f]{32}")


@dataclasses.dataclass(eq=False)
class Fitzpatrick17kConfig(common.LabelSetConfig):
  LABEL_SETS: ClassVar[dict[str, tuple[str, ...]]] = {"three": THREE, "nine": NINE}


class Fitzpatrick17k(common.Builder, skip_registration=True):
  """Fitzpatrick 17k clinical images: 3 or 9 diagnosis partitions and Fitzpatrick skin types."""

  BUILDER_CONFIGS = Fitzpatrick17kConfig.presets()
  CLINICAL_FIELDS = ("fitzpatrick", "fitzpatrick_centaur", "diagnosis")
  HOMEPAGE = "https://github.com/mattgroh/fitzpatrick17k"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Put {METADATA} from {HOMEPAGE} in manual_dir and the images of its url column below it "
      "(any folder), each named <md5hash>.jpg.")
  CITATION = """@inproceedings{groh2021evaluating,
  title={Evaluating deep neural networks trained on clinical images in dermatology with the
         Fitzpatrick 17k dataset},
  author={Groh, Matthew and Harris, Caleb and Soenksen, Luis and others},
  booktitle={CVPR Workshops}, pages={1820--1828}, year={2021}}"""

  def official_files(self) -> dict[str, str | None]:
    return {METADATA: None}

  def _sources(self, dl_manager: tfds.download.DownloadManager) -> dict[str, list[common.Source]]:
    metadata = self._locate(dl_manager)[METADATA]
    images = {f.stem: f for f in metadata.parent.rglob("*")
              if _MD5.fullmatch(f.stem) and f.suffix.lower() in (".jpg", ".jpeg", ".png")}
    label_column = _LABEL_COLUMNS[self.builder_config.label]
    rows = common.read_csv(metadata, ("md5hash", "label", label_column))
    scale = "fitzpatrick_scale" if rows and "fitzpatrick_scale" in rows[0] else "fitzpatrick"
    columns = {"fitzpatrick": scale, "fitzpatrick_centaur": "fitzpatrick_centaur",
               "diagnosis": "label"}
    sources = [common.Source(
        id=row["md5hash"], label=row[label_column], label_file=metadata,
        image=images.get(row["md5hash"], metadata.parent / f"{row['md5hash']}.jpg"),
    ).read_clinical(row, columns, metadata) for row in rows]
    return {"train": sources + common.unlisted(images, {s.id for s in sources}, metadata)}
