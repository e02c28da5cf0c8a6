"""The clinical fields a builder stores beside each image, under one vocabulary for all datasets.

Each record of a builder with clinical metadata carries the fields that builder lists (its
``clinical_fields()``); a field the dataset does not have is absent from its records, never
filled in. A field's kind fixes its encoding in the records:

* ``number``: float32, NaN when missing (``age`` in years; ISIC's ``age_approx`` is rounded to
  5 years).
* ``category``: text, lower case, ``""`` when missing; the releases' own words for "unknown"
  (``unknown``, ``UNK``, ...) read as missing. Booleans are ``"true"``/``"false"``.
* ``text``: text as the release writes it (identifiers, diagnoses), ``""`` when missing.

Shared fields (``FIELDS`` lists the dataset-specific ones too):

* ``sex``: ``"male"`` or ``"female"``.
* ``site``: the anatomical site in the dataset's own words (HAM10000 ``upper extremity``, ISIC
  2019/2020 ``anterior torso``, PAD-UFES-20 ``forearm``); the sets are not merged.
* ``fitzpatrick``: the Fitzpatrick skin type ``"1"`` ... ``"6"``, or a pair ``"1-2"``, ``"3-4"``,
  ``"5-6"`` where the dataset only records the pair (DDI).

``NEVER_INPUTS`` names the fields (and metadata columns) that must never feed a model, with the
reason; a model input built from the metadata refuses them, and a subgroup audit may still slice
by them.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping

NUMBER = "number"
CATEGORY = "category"
TEXT = "text"

MISSING_WORDS = frozenset({"", "unknown", "unk", "nan", "na", "n/a", "none"})
_FITZPATRICK = {"1", "2", "3", "4", "5", "6", "1-2", "3-4", "5-6"}


@dataclasses.dataclass(frozen=True)
class Field:
  kind: str  # NUMBER, CATEGORY or TEXT
  meaning: str


FIELDS: dict[str, Field] = {
    "age": Field(NUMBER, "age in years"),
    "sex": Field(CATEGORY, "male / female"),
    "site": Field(CATEGORY, "anatomical site, in the dataset's own words"),
    "fitzpatrick": Field(CATEGORY, "Fitzpatrick skin type 1-6, or 1-2 / 3-4 / 5-6"),
    # Fitzpatrick17k: the type estimated by the Centaur Labs annotators besides the scale's.
    "fitzpatrick_centaur": Field(CATEGORY, "Fitzpatrick skin type 1-6 from Centaur Labs"),
    # PAD-UFES-20: the patient's answers and the lesion's measurements (Pacheco et al. 2020).
    "smoke": Field(CATEGORY, "smokes (true/false)"),
    "drink": Field(CATEGORY, "drinks alcohol (true/false)"),
    "background_father": Field(CATEGORY, "father's country of origin"),
    "background_mother": Field(CATEGORY, "mother's country of origin"),
    "pesticide": Field(CATEGORY, "works with pesticides (true/false)"),
    "skin_cancer_history": Field(CATEGORY, "had skin cancer before (true/false)"),
    "cancer_history": Field(CATEGORY, "family history of cancer (true/false)"),
    "has_piped_water": Field(CATEGORY, "home has piped water (true/false)"),
    "has_sewage_system": Field(CATEGORY, "home has a sewage system (true/false)"),
    "diameter_1": Field(NUMBER, "lesion's larger diameter in mm"),
    "diameter_2": Field(NUMBER, "lesion's smaller diameter in mm"),
    "itch": Field(CATEGORY, "lesion itches (true/false)"),
    "grew": Field(CATEGORY, "lesion grew (true/false)"),
    "hurt": Field(CATEGORY, "lesion hurts (true/false)"),
    "changed": Field(CATEGORY, "lesion changed (true/false)"),
    "bleed": Field(CATEGORY, "lesion bled (true/false)"),
    "elevation": Field(CATEGORY, "lesion is elevated (true/false)"),
    "biopsed": Field(CATEGORY, "diagnosis confirmed by biopsy (true/false)"),
    "lesion_id": Field(TEXT, "lesion identifier (images of one lesion share it)"),
    # HAM10000 and ISIC 2018 Task 3.
    "dx_type": Field(CATEGORY, "how the diagnosis was confirmed: histo, follow_up, ..."),
    "dataset": Field(CATEGORY, "the collection an image comes from: vidir_modern, rosendahl, ..."),
    # The other label set of a builder whose `label` is one of two (isic2020, ddi).
    "diagnosis": Field(TEXT, "the diagnosis in the release's own words"),
    "malignant": Field(CATEGORY, "benign / malignant"),
}

# Fields and metadata columns that must never be a model input, and why. They are there to audit
# a model (slice its scores by them), not to feed it: each one is known only from the label or
# from how the data was collected, so a model fed with it learns the collection, not the lesion.
NEVER_INPUTS: dict[str, str] = {
    "dx_type": ("HAM10000: how the diagnosis was confirmed; histopathology is done for the "
                "suspicious lesions, so it encodes the label"),
    "dataset": "HAM10000: the collection site, whose class mix differs; it encodes the label",
    "biopsed": ("PAD-UFES-20: biopsied lesions are the suspected cancers (and every SCC, BCC and "
                "MEL is biopsied), so it encodes the label"),
    "diagnostic": "PAD-UFES-20's diagnosis column: the label itself",
    "diagnosis": "the diagnosis (ISIC 2020's second label set, DDI's disease): the label itself",
    "malignant": "benign / malignant: derives from the diagnosis, the label",
    "lesion_id": "an identifier of the lesion: it names examples, it does not describe them",
}


def check_fields(names: tuple[str, ...], owner: str) -> None:
  """ValueError naming ``owner`` when one of ``names`` is not in ``FIELDS``."""
  unknown = [n for n in names if n not in FIELDS]
  if unknown:
    raise ValueError(f"{owner}: clinical fields {unknown} are not in the vocabulary "
                     "flaxderm.data.clinical.FIELDS")


def missing(kind: str) -> float | str:
  """The value of a missing field of ``kind``."""
  return math.nan if kind == NUMBER else ""


def parse(name: str, text: str) -> float | str:
  """The record value of field ``name`` from its metadata text; ValueError saying what is wrong
  (the caller names the file and the column)."""
  text = text.strip()
  if text.lower() in MISSING_WORDS:
    return missing(FIELDS[name].kind)
  if FIELDS[name].kind == NUMBER:
    try:
      value = float(text)
    except ValueError:
      raise ValueError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
      raise ValueError(f"{text!r} is not a finite number >= 0")
    return value
  if FIELDS[name].kind == TEXT:
    return text
  if name.startswith("fitzpatrick"):
    return _fitzpatrick(text)
  value = " ".join(text.lower().split())
  if name == "sex" and value not in ("male", "female"):
    raise ValueError(f"{text!r} is not male, female or unknown")
  return value


def _fitzpatrick(text: str) -> str:
  """"1".."6" from "1" or PAD-UFES-20's "1.0"; "1-2"/"3-4"/"5-6" from DDI's "12"/"34"/"56"; ""
  from Fitzpatrick17k's -1 (no estimate)."""
  value = re.sub(r"\.0$", "", text)
  if value == "-1":
    return ""
  if re.fullmatch(r"[1-6]{2}", value):
    value = f"{value[0]}-{value[1]}"
  if value not in _FITZPATRICK:
    raise ValueError(f"{text!r} is not a Fitzpatrick skin type (1-6, or DDI's 12/34/56)")
  return value


def parse_row(row: Mapping[str, str], columns: Mapping[str, str]) -> dict[str, float | str]:
  """field -> value of a metadata row; ``columns`` maps each field to its column (a column the
  row lacks reads as missing). ValueError naming the column of a value that does not parse."""
  values = {}
  for name, column in columns.items():
    try:
      values[name] = parse(name, row.get(column) or "")
    except ValueError as e:
      raise ValueError(f"column {column!r}: {e}") from None
  return values
