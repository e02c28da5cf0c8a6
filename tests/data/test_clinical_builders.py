"""Builders with clinical metadata (issue 30): the clinical fields' encoding, the builders of
PAD-UFES-20, ISIC 2019, ISIC 2020, Fitzpatrick 17k and DDI from tiny fakes in their official
layouts, patient-grouped k-fold splits, and the real PAD-UFES-20 and ISIC 2017 folders."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from flaxderm.data import clinical
from flaxderm.data import splits
from flaxderm.data.builders import common
from fakes import (HAM_ROWS, prepare, records, report, text, write_csv, write_ham,
                   write_image, write_isic2019)

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


# ----------------------------------------------------------------------------------------------
# PAD-UFES-20.

PAD_COLUMNS = ["patient_id", "lesion_id", "smoke", "drink", "background_father",
               "background_mother", "age", "pesticide", "gender", "skin_cancer_history",
               "cancer_history", "has_piped_water", "has_sewage_system", "fitspatrick", "region",
               "diameter_1", "diameter_2", "diagnostic", "itch", "grew", "hurt", "changed", "bleed",
               "elevation", "img_id", "biopsed"]
PAD_PATIENTS = {  # patient -> [(lesion, diagnosis), ...]: several lesions and images per patient
    "PAT_1": [(1, "BCC"), (1, "BCC"), (2, "SCC")], "PAT_2": [(3, "NEV")], "PAT_3": [(4, "MEL")],
    "PAT_4": [(5, "ACK"), (6, "SEK")], "PAT_5": [(7, "BCC")], "PAT_6": [(8, "NEV"), (8, "NEV")],
}


def pad_rows() -> list[list[str]]:
  rows = []
  for p, (patient, lesions) in enumerate(PAD_PATIENTS.items()):
    answered = p % 2 == 0  # the others left the questionnaire empty, as in the release
    for n, (lesion_id, dx) in enumerate(lesions):
      row = dict.fromkeys(PAD_COLUMNS, "")
      row.update(patient_id=patient, lesion_id=str(lesion_id), age=str(40 + p), region="FACE",
                 diagnostic=dx, img_id=f"{patient}_{lesion_id}_{n}.png", itch="UNK",
                 grew="True", hurt="False", changed="False", bleed="False", elevation="True",
                 biopsed=str(dx != "NEV"))
      if answered:
        row.update(smoke="False", drink="True", background_father="POMERANIA",
                   background_mother="ITALY", pesticide="False", gender="FEMALE",
                   skin_cancer_history="True", cancer_history="False", has_piped_water="True",
                   has_sewage_system="True", fitspatrick="2.0", diameter_1="7.0",
                   diameter_2="3.0")
      rows.append([row[c] for c in PAD_COLUMNS])
  return rows


def write_pad(root: Path) -> Path:
  rows = pad_rows()
  write_csv(root / "metadata.csv", PAD_COLUMNS, rows)
  for i, row in enumerate(rows):  # spread over the release's three parts
    write_image(root / "images" / f"imgs_part_{i % 3 + 1}" / row[PAD_COLUMNS.index("img_id")],
                seed=i)
  return root


def test_pad_ufes20(tmp_path):
  write_pad(tmp_path / "manual" / "PAD-UFES-20")
  builder = prepare("pad_ufes20", tmp_path, tmp_path / "manual")
  names = builder.info.features["label"].names
  assert names == ["ACK", "BCC", "MEL", "NEV", "SCC", "SEK"]
  rows = records(builder, "train")
  expected = [(f"{patient}_{lesion_id}_{n}", patient, dx)
              for patient, lesions in PAD_PATIENTS.items()
              for n, (lesion_id, dx) in enumerate(lesions)]
  assert [(text(r["id"]), text(r["group"]), names[r["label"]]) for r in rows] == expected
  assert rows[0]["image"].shape == (30, 40, 3)
  assert fields(rows[0], builder.CLINICAL_FIELDS) == {
      "age": 40.0, "sex": "female", "site": "face", "fitzpatrick": "2", "smoke": "false",
      "drink": "true", "background_father": "pomerania", "background_mother": "italy",
      "pesticide": "false", "skin_cancer_history": "true", "cancer_history": "false",
      "has_piped_water": "true", "has_sewage_system": "true", "diameter_1": 7.0,
      "diameter_2": 3.0, "itch": "", "grew": "true", "hurt": "false", "changed": "false",
      "bleed": "false", "elevation": "true", "lesion_id": "1", "biopsed": "true"}
  unanswered = fields(rows[3], builder.CLINICAL_FIELDS)  # PAT_2
  assert unanswered["age"] == 41.0 and unanswered["site"] == "face"
  assert unanswered["sex"] == unanswered["smoke"] == unanswered["fitzpatrick"] == ""
  assert math.isnan(unanswered["diameter_1"])


def test_pad_ufes20_image_without_row(tmp_path):
  root = write_pad(tmp_path / "manual")
  write_image(root / "images" / "imgs_part_1" / "PAT_9_99_0.png")
  with pytest.raises(ValueError, match="1 of 11 train examples are unusable"):
    prepare("pad_ufes20", tmp_path, root)
  builder = prepare("pad_ufes20", tmp_path, root, skip_bad_examples=True)
  assert report(builder)["skipped"][0]["problem"] == "no row for PAT_9_99_0 in metadata.csv"


@pytest.mark.filterwarnings("ignore:The least populated class")  # a 10-image fake has rare classes
def test_patient_grouped_kfold_keeps_each_patient_on_one_side(tmp_path):
  builder = prepare("pad_ufes20", tmp_path, write_pad(tmp_path / "manual"))
  rows = records(builder, "train")
  groups = [text(r["group"]) for r in rows]
  assert set(groups) == set(PAD_PATIENTS)
  labels = [int(r["label"]) for r in rows]
  seen = []
  for fold in range(3):
    train, validation = splits.kfold_split(groups, labels, num_folds=3, fold=fold)
    assert not {groups[i] for i in train} & {groups[i] for i in validation}
    seen += [groups[i] for i in validation]
  assert sorted(seen) == sorted(groups)  # every image validated once


# ----------------------------------------------------------------------------------------------
# ISIC 2019.


def test_isic2019(tmp_path):
  manual = write_isic2019(
      tmp_path / "manual",
      [("ISIC_0000000", "NV"), ("ISIC_0000001_downsampled", "MEL"), ("ISIC_0060001", "SCC")],
      [("ISIC_0000000", "55.0", "anterior torso", "BCN_0000001", "female"),
       ("ISIC_0000001_downsampled", "", "", "MSK4_0011169", ""),
       ("ISIC_0060001", "70.0", "head/neck", "", "male")])
  builder = prepare("isic2019", tmp_path, manual)
  names = builder.info.features["label"].names
  assert names == ["mel", "nv", "bcc", "ak", "bkl", "df", "vasc", "scc"]
  rows = records(builder, "train")
  assert [(text(r["id"]), text(r["group"]), names[r["label"]]) for r in rows] == [
      ("ISIC_0000000", "BCN_0000001", "nv"), ("ISIC_0000001", "MSK4_0011169", "mel"),
      ("ISIC_0060001", "ISIC_0060001", "scc")]  # no lesion_id: the image is its own group
  assert fields(rows[0], ("age", "sex", "site")) == {"age": 55.0, "sex": "female",
                                                     "site": "anterior torso"}
  assert same(fields(rows[1], ("age", "sex", "site")), {"age": math.nan, "sex": "", "site": ""})


def test_isic2019_bad_rows(tmp_path):
  manual = write_isic2019(
      tmp_path / "manual", [("ISIC_1", "NV"), ("ISIC_2", "UNK"), ("ISIC_3", "DF")],
      [("ISIC_1", "30", "", "", ""), ("ISIC_2", "30", "", "", "")])
  with pytest.raises(ValueError, match="2 of 3 train examples are unusable"):
    prepare("isic2019", tmp_path, manual)
  builder = prepare("isic2019", tmp_path, manual, skip_bad_examples=True)
  assert [text(r["id"]) for r in records(builder, "train")] == ["ISIC_1"]
  assert {e["id"]: e["problem"] for e in report(builder)["skipped"]} == {
      "ISIC_2": "unknown class 'unk' for ISIC_2 (expected one of ('mel', 'nv', 'bcc', 'ak', "
                "'bkl', 'df', 'vasc', 'scc'))",
      "ISIC_3": "no row for ISIC_3 in ISIC_2019_Training_Metadata.csv"}


# ----------------------------------------------------------------------------------------------
# ISIC 2020.

ISIC2020_COLUMNS = ["image_name", "patient_id", "lesion_id", "sex", "age_approx",
                    "anatom_site_general_challenge", "diagnosis", "benign_malignant", "target"]
ISIC2020_ROWS = [
    ("ISIC_0000001", "IP_1", "IL_1", "male", "45.0", "torso", "unknown", "benign", "0"),
    ("ISIC_0000002", "IP_1", "IL_2", "male", "45.0", "lower extremity", "melanoma", "malignant",
     "1"),
    ("ISIC_0000003", "IP_2", "IL_3", "female", "", "", "nevus", "benign", "0"),
    ("ISIC_0000004", "IP_2", "IL_3", "female", "60.0", "head/neck", "nevus", "benign", "0"),
    ("ISIC_0000005", "IP_3", "IL_4", "", "30.0", "torso", "lentigo NOS", "benign", "0"),
    ("ISIC_0000006", "IP_4", "IL_5", "male", "80.0", "torso", "melanoma", "malignant", "1"),
]


def write_isic2020(root: Path, rows=ISIC2020_ROWS) -> Path:
  write_csv(root / "ISIC_2020_Training_GroundTruth_v2.csv", ISIC2020_COLUMNS, rows)
  write_csv(root / "ISIC_2020_Training_Duplicates.csv", ["image_name_1", "image_name_2"],
            [("ISIC_0000003", "ISIC_0000004")])
  for i, row in enumerate(rows):
    write_image(root / "ISIC_2020_Training_JPEG" / "train" / f"{row[0]}.jpg", seed=i)
  return root


def test_isic2020_label_sets_duplicates_and_patients(tmp_path):
  manual = write_isic2020(tmp_path / "manual")
  builder = prepare("isic2020", tmp_path, manual)
  assert builder.info.config_name == "default"
  assert builder.info.features["label"].names == ["benign", "malignant"]
  rows = records(builder, "train")
  kept = [r for r in ISIC2020_ROWS if r[0] != "ISIC_0000004"]  # the duplicate is left out
  assert [(text(r["id"]), text(r["group"]), int(r["label"])) for r in rows] == [
      (r[0], r[1], int(r[8])) for r in kept]
  assert report(builder)["left_out"] == {
      "official duplicates (ISIC_2020_Training_Duplicates.csv: image_name_2)": 1}
  assert report(builder)["num_skipped"] == 0
  assert fields(rows[1], builder.CLINICAL_FIELDS) == {
      "age": 45.0, "sex": "male", "site": "lower extremity", "lesion_id": "IL_2",
      "diagnosis": "melanoma", "malignant": "malignant"}

  by_kwarg = prepare("isic2020", tmp_path, manual, builder_kwargs={"label": "diagnosis"})
  assert by_kwarg.info.config_name == "diagnosis"
  names = by_kwarg.info.features["label"].names
  assert len(names) == 9 and names[:3] == ["unknown", "nevus", "melanoma"]
  assert [names[r["label"]] for r in records(by_kwarg, "train")] == [r[6] for r in kept]
  with pytest.raises(ValueError, match=r"isic2020: label must be one of \['diagnosis', "
                                       r"'malignant'\], got 'stage'"):
    prepare("isic2020", tmp_path, manual, builder_kwargs={"label": "stage"})


def test_isic2020_target_and_benign_malignant_must_agree(tmp_path):
  rows = [*ISIC2020_ROWS[:2], ("ISIC_0000009", "IP_9", "", "", "", "", "nevus", "benign", "1")]
  manual = write_isic2020(tmp_path / "manual", rows)
  with pytest.raises(ValueError, match="ISIC_0000009: target '1' and benign_malignant 'benign' "
                                       "disagree"):
    prepare("isic2020", tmp_path, manual)


def test_isic2020_patient_grouped_kfold(tmp_path):
  builder = prepare("isic2020", tmp_path, write_isic2020(tmp_path / "manual"))
  groups = [text(r["group"]) for r in records(builder, "train")]
  for fold in range(2):
    train, validation = splits.kfold_split(groups, None, num_folds=2, fold=fold)
    assert not {groups[i] for i in train} & {groups[i] for i in validation}


# ----------------------------------------------------------------------------------------------
# Fitzpatrick 17k and DDI (skin-tone analysis).

FITZ_COLUMNS = ["md5hash", "fitzpatrick_scale", "fitzpatrick_centaur", "label",
                "nine_partition_label", "three_partition_label", "qc", "url", "url_alphanum"]
FITZ_ROWS = [
    ("0" * 31 + "a", "3", "4", "psoriasis", "inflammatory", "non-neoplastic", "", "http://a", "a"),
    ("0" * 31 + "b", "-1", "-1", "melanoma", "malignant melanoma", "malignant", "", "http://b",
     "b"),
    ("0" * 31 + "c", "6", "5", "basal cell carcinoma", "malignant epidermal", "malignant", "",
     "http://c", "c"),
]


def test_fitzpatrick17k(tmp_path):
  manual = tmp_path / "manual"
  write_csv(manual / "fitzpatrick17k.csv", FITZ_COLUMNS, FITZ_ROWS)
  for i, row in enumerate(FITZ_ROWS[:2]):  # the third image's URL is dead
    write_image(manual / "images" / f"{row[0]}.jpg", seed=i)
  with pytest.raises(ValueError, match="1 of 3 train examples are unusable"):
    prepare("fitzpatrick17k", tmp_path, manual)
  builder = prepare("fitzpatrick17k", tmp_path, manual, skip_bad_examples=True)
  names = builder.info.features["label"].names
  assert names == ["benign", "malignant", "non-neoplastic"]
  rows = records(builder, "train")
  assert [(text(r["id"]), text(r["group"]), names[r["label"]]) for r in rows] == [
      (FITZ_ROWS[0][0], FITZ_ROWS[0][0], "non-neoplastic"),
      (FITZ_ROWS[1][0], FITZ_ROWS[1][0], "malignant")]
  assert [fields(r, builder.CLINICAL_FIELDS) for r in rows] == [
      {"fitzpatrick": "3", "fitzpatrick_centaur": "4", "diagnosis": "psoriasis"},
      {"fitzpatrick": "", "fitzpatrick_centaur": "", "diagnosis": "melanoma"}]
  nine = prepare("fitzpatrick17k", tmp_path, manual, builder_config="nine",
                 skip_bad_examples=True)
  names = nine.info.features["label"].names
  assert len(names) == 9
  assert [names[r["label"]] for r in records(nine, "train")] == ["inflammatory",
                                                                   "malignant melanoma"]


def test_ddi(tmp_path):
  folder = tmp_path / "manual" / "ddidiversedermatologyimages"
  write_csv(folder / "ddi_metadata.csv", ["", "DDI_ID", "DDI_file", "skin_tone", "malignant",
                                          "disease"],
            [(0, 1, "000001.png", 56, "True", "melanoma-in-situ"),
             (1, 2, "000002.png", 12, "False", "verruca-vulgaris")])
  for i in (1, 2):
    write_image(folder / f"00000{i}.png", seed=i)
  builder = prepare("ddi", tmp_path, tmp_path / "manual")
  names = builder.info.features["label"].names
  rows = records(builder, "train")
  assert [(text(r["id"]), names[r["label"]], *fields(r, ("fitzpatrick", "diagnosis")).values())
          for r in rows] == [("000001", "malignant", "5-6", "melanoma-in-situ"),
                             ("000002", "benign", "1-2", "verruca-vulgaris")]


# ----------------------------------------------------------------------------------------------
# The real folders in ../shared/data.


@pytest.mark.real_data
def test_real_pad_ufes20(tmp_path, shared_data):
  folder = shared_data / "PAD-UFES-20"
  builder = prepare("pad_ufes20", tmp_path, folder, builder_kwargs={"max_size": 64})
  rows = records(builder, "train")
  assert len(rows) == len(list((folder / "images").glob("PAT_*.png"))) == 522
  groups = [text(r["group"]) for r in rows]
  labels = [int(r["label"]) for r in rows]
  assert len(set(groups)) == 411
  assert np.bincount(labels).tolist() == [95, 156, 27, 134, 17, 93]  # ACK BCC MEL NEV SCC SEK
  assert max(rows[0]["image"].shape[:2]) == 64
  assert sum(math.isnan(r["diameter_1"]) for r in rows) == 193  # the unanswered questionnaires
  assert {text(r["sex"]) for r in rows} == {"", "male", "female"}
  for fold in range(5):  # the 5-fold patient-grouped cross-validation
    train, validation = splits.kfold_split(groups, labels, num_folds=5, fold=fold)
    assert not {groups[i] for i in train} & {groups[i] for i in validation}
    assert len(train) + len(validation) == 522


@pytest.mark.real_data
def test_real_isic2017_validation_pairs(tmp_path, shared_data):
  builder = prepare("isic2017_task1", tmp_path, shared_data / "ISIC2017",
                    builder_kwargs={"max_size": 64})
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"validation": 31}
  for r in records(builder, "validation"):
    assert max(r["image"].shape[:2]) == 64 and r["mask"].shape[:2] == r["image"].shape[:2]
    assert set(np.unique(r["mask"])) == {0, 1}
  assert report(builder)["num_skipped"] == 0


@pytest.mark.real_data
def test_real_isic2018_task3_clinical_fields(tmp_path, shared_data):
  builder = prepare("isic2018_task3", tmp_path, shared_data / "ISIC2018_Task3_Test",
                    builder_kwargs={"max_size": 32})
  rows = records(builder, "test")
  assert len(rows) == 1058 and len({text(r["group"]) for r in rows}) == 901
  # The CSV leaves 207 ages empty and writes "unknown" for 215 sexes and 244 sites.
  assert sum(math.isnan(r["age"]) for r in rows) == 207
  assert [sum(text(r[n]) == "" for r in rows) for n in ("sex", "site")] == [215, 244]
  assert {text(r["dx_type"]) for r in rows} == {"histo", "consensus", "confocal", "follow_up"}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The least populated class")
def test_pad_ufes20_metadata_batches_and_a_tiny_training(tmp_path, monkeypatch):
  """Pacheco & Krohling's fields of the fake release become batches' ``metadata`` (the
  questionnaire left empty by half the patients: missing flags and unknown slots), a classifier
  trains on them, and ``biopsed`` is refused as an input."""
  from flaxderm.data import config as data_config  # pylint: disable=g-import-not-at-top
  from flaxderm.data import metadata  # pylint: disable=g-import-not-at-top
  from flaxderm.data import pipeline  # pylint: disable=g-import-not-at-top
  from flaxderm.train import config as config_lib  # pylint: disable=g-import-not-at-top
  from flaxderm.train import loop  # pylint: disable=g-import-not-at-top

  monkeypatch.setenv("FLAXDERM_DATA_DIR", str(tmp_path / "tfds"))
  cfg = config_lib.default_config()
  cfg.data.update({"name": "pad_ufes20", "manual_dir": str(write_pad(tmp_path / "manual")),
                   "split": "kfold", "num_folds": 2, "image_size": 32,
                   "metadata": ("age", "sex", "smoke", "diameter_1", "itch")})
  resolved = pipeline.with_metadata_vocabulary(cfg.data)
  encoder = metadata.encoder_of(resolved)
  assert encoder.names == ("age", "age:missing", "sex=female", "sex:unknown", "smoke=false",
                           "smoke:unknown", "diameter_1", "diameter_1:missing", "itch:unknown")
  batch = next(pipeline.make_eval_iterator(resolved, global_batch_size=8))
  valid = batch["valid"] > 0
  rows = batch["metadata"][valid]
  assert rows.shape[1] == encoder.width and np.all(rows[:, -1] == 1)  # itch is always UNK
  assert set(rows[:, encoder.names.index("sex:unknown")]) == {0.0, 1.0}
  cfg.data.metadata_vocabulary = resolved.metadata_vocabulary
  cfg.model.name, cfg.model.kwargs = "resnet18", {"depths": (1, 1, 1, 1)}
  cfg.model.metadata_fusion = "metablock"
  cfg.loss.name = "cross_entropy"
  cfg.update({"batch_size": 2, "num_epochs": 0, "num_steps": 2, "progress_bar": False,
              "visualize_images": 0})
  cfg.eval.every_steps, cfg.eval.batch_size = 2, 4
  results = loop.train(cfg, tmp_path / "run")
  assert results["step"] == 2 and math.isfinite(results["validation"]["accuracy"])
  cfg.data.metadata = ("age", "biopsed")
  with pytest.raises(ValueError, match="'biopsed' must never be a model input"):
    data_config.validate_data_config(cfg.data)
