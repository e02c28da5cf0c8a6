"""Builders with clinical metadata (issue 30): the clinical fields' encoding and the fields of
HAM10000 and ISIC 2018 Task 3."""
from __future__ import annotations

import math

import numpy as np
import pytest

from flaxderm.data import clinical
from flaxderm.data.builders import common
from test_builders import (HAM_ROWS, prepare, records, report, text, write_csv, write_ham,
                           write_image)

NUMBERS = [name for name, f in clinical.FIELDS.items() if f.kind == clinical.NUMBER]


def fields(row: dict, names) -> dict:
  """The clinical fields of a record as plain values (text decoded, numbers as float)."""
  return {n: float(row[n]) if n in NUMBERS else text(row[n]) for n in names}


def same(a: dict, b: dict) -> bool:
  """Dicts equal with NaN equal to NaN."""
  return a.keys() == b.keys() and all(
      (isinstance(a[k], float) and math.isnan(a[k]) and isinstance(b[k], float)
       and math.isnan(b[k])) or a[k] == b[k] for k in a)


# ----------------------------------------------------------------------------------------------
# The vocabulary.


@pytest.mark.parametrize("name, raw, value", [
    ("age", "55", 55.0), ("age", "", math.nan), ("age", "NaN", math.nan),
    ("sex", "MALE", "male"), ("sex", "unknown", ""), ("site", "Upper Extremity", "upper extremity"),
    ("site", "head/neck", "head/neck"), ("smoke", "False", "false"), ("itch", "UNK", ""),
    ("fitzpatrick", "3.0", "3"), ("fitzpatrick", "-1", ""), ("fitzpatrick", "56", "5-6"),
    ("diameter_1", "7.0", 7.0),
])
def test_clinical_values_parse_to_one_encoding(name, raw, value):
  got = clinical.parse(name, raw)
  assert same({name: got}, {name: value})


@pytest.mark.parametrize("name, raw, message", [
    ("age", "old", "'old' is not a number"), ("age", "-3", "not a finite number >= 0"),
    ("sex", "m", "'m' is not male, female or unknown"), ("fitzpatrick", "7", "not a Fitzpatrick"),
])
def test_bad_clinical_values_are_errors(name, raw, message):
  with pytest.raises(ValueError, match=message):
    clinical.parse(name, raw)


def test_every_builder_field_is_in_the_vocabulary():
  from flaxderm.data import builders  # pylint: disable=g-import-not-at-top

  for cls in builders.BUILDERS.values():
    assert set(cls.CLINICAL_FIELDS) <= set(clinical.FIELDS), cls.name
  assert set(clinical.NEVER_INPUTS) >= {"dx_type", "dataset", "biopsed", "diagnostic"}
  with pytest.raises(ValueError, match=r"Bad: clinical fields \['weight'\] are not in"):
    type("Bad", (common.Builder,), {"CLINICAL_FIELDS": ("weight",)}, skip_registration=True)


# ----------------------------------------------------------------------------------------------
# HAM10000 and ISIC 2018 Task 3 (their CSVs carry age, sex, localization).


def test_ham10000_clinical_fields(tmp_path):
  manual = write_ham(tmp_path / "manual")
  write_csv(manual / "HAM10000_metadata.csv",  # the first Dataverse release: no `dataset`
            ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"],
            [(*HAM_ROWS[0], "histo", "45.0", "female", "back"),
             *[(*r, "follow_up", "", "unknown", "unknown") for r in HAM_ROWS[1:]]])
  builder = prepare("ham10000", tmp_path, manual)
  assert builder.version == "1.1.0"  # copies prepared without the fields are prepared again
  features = builder.info.features
  assert features["age"].dtype == np.float32 and features["site"].dtype == np.str_
  rows = records(builder, "train")
  names = ("age", "sex", "site", "dx_type", "dataset")
  assert fields(rows[0], names) == {"age": 45.0, "sex": "female", "site": "back",
                                    "dx_type": "histo", "dataset": ""}
  assert same(fields(rows[1], names), {"age": math.nan, "sex": "", "site": "",
                                       "dx_type": "follow_up", "dataset": ""})


def test_bad_clinical_value_names_file_and_column(tmp_path):
  manual = write_ham(tmp_path / "manual")
  write_csv(manual / "HAM10000_metadata.csv", ["lesion_id", "image_id", "dx", "age", "sex"],
            [(*r, "forty" if i == 2 else "40", "male") for i, r in enumerate(HAM_ROWS)])
  with pytest.raises(ValueError, match=r"HAM10000_metadata.csv: ISIC_0024308: column 'age': "
                                       "'forty' is not a number"):
    prepare("ham10000", tmp_path, manual)


def test_isic2018_task3_clinical_fields(tmp_path):
  manual = tmp_path / "manual"
  write_csv(manual / "ISIC2018_Task3_Test_GroundTruth.csv",
            ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset"],
            [("HAMTEST_1", "ISIC_0034525", "akiec", "histo", "70.0", "male", "back",
              "vidir_modern")])
  write_image(manual / "ISIC2018_Task3_Test_Input" / "ISIC_0034525.jpg")
  one_hot = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
  write_csv(manual / "ISIC2018_Task3_Training_GroundTruth.csv", ["image", *one_hot],
            [("ISIC_0000001", 1, 0, 0, 0, 0, 0, 0)])
  write_csv(manual / "ISIC2018_Task3_Training_LesionGroupings.csv",
            ["image", "lesion_id", "diagnosis_confirm_type"],
            [("ISIC_0000001", "HAM_1", "histopathology")])
  write_image(manual / "ISIC2018_Task3_Training_Input" / "ISIC_0000001.jpg")
  builder = prepare("isic2018_task3", tmp_path, manual)
  names = ("age", "sex", "site", "dx_type", "dataset")
  assert fields(records(builder, "test")[0], names) == {
      "age": 70.0, "sex": "male", "site": "back", "dx_type": "histo", "dataset": "vidir_modern"}
  assert same(fields(records(builder, "train")[0], names), {  # one-hot: only the groupings' type
      "age": math.nan, "sex": "", "site": "", "dx_type": "histopathology", "dataset": ""})
