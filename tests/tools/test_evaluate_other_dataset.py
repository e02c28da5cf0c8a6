"""``evaluate --dataset``: a run scored on another builder's folder, the task agreeing and the
classes matched by name or mapped (``--class-map``)."""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import pytest

from fakes import write_ham, write_image, write_isic2019, write_mask, write_ph2
from flaxderm import cli
from flaxderm.tools import evaluate as evaluate_lib
from flaxderm.train import loop
from tiny_runs import tiny_config

pytestmark = pytest.mark.usefixtures("private_data_dir")

ISIC2019_CASES = [("ISIC_0000001", "NV"), ("ISIC_0000002", "MEL"), ("ISIC_0000003", "AK"),
                  ("ISIC_0000004", "SCC"), ("ISIC_0000005", "DF")]


def _cases(run: Path) -> dict[str, str]:
  with open(run / "evaluation" / "cases.csv", newline="") as f:
    return {row["id"]: row.get("label", "") for row in csv.DictReader(f)}


def _scored(run: Path) -> dict:
  return json.loads((run / "evaluation" / "metrics.json").read_text())


@pytest.fixture(scope="module")
def ham_run(tmp_path_factory, private_data_dir) -> Path:  # pylint: disable=unused-argument
  """A tiny HAM10000 classifier (7 diagnoses) trained on all of a fake download."""
  tmp = tmp_path_factory.mktemp("ham")
  cfg = tiny_config(**{"data.name": "ham10000", "data.split": "all", "data.task": "classification",
                       "loss.name": "cross_entropy", "model.name": "resnet18", "num_steps": 1,
                       "eval.every_steps": 1})
  cfg.data.builder_kwargs = {}
  cfg.data.manual_dir = str(write_ham(tmp / "ham"))
  cfg.model.kwargs = {"depths": (1, 1, 1, 1)}
  loop.train(cfg, tmp / "run")
  return tmp / "run"


@pytest.fixture(scope="module")
def isic2019_dir(tmp_path_factory) -> Path:
  return write_isic2019(tmp_path_factory.mktemp("isic2019"), ISIC2019_CASES,
                        [(image, "50", "anterior torso", f"BCN_{i}", "male")
                         for i, (image, _) in enumerate(ISIC2019_CASES)])


@pytest.mark.slow
def test_classes_of_the_same_name_score_and_the_others_need_a_map(ham_run, isic2019_dir):
  with pytest.raises(ValueError, match=r"classes \['ak', 'scc'\] are not among the run's classes "
                                       r"\(akiec, bcc, .*--class-map ak=,scc="):
    evaluate_lib.evaluate_run(ham_run, manual_dir=str(isic2019_dir), dataset="isic2019")

  evaluate_lib.evaluate_run(ham_run, manual_dir=str(isic2019_dir), dataset="isic2019",
                            class_map={"AK": "akiec", "scc": ""})
  assert _cases(ham_run) == {"ISIC_0000001": "nv", "ISIC_0000002": "mel",
                             "ISIC_0000003": "akiec", "ISIC_0000005": "df"}
  scored = _scored(ham_run)
  assert (scored["dataset"], scored["class_map"], scored["left_out"]) == (
      "isic2019", {"AK": "akiec", "scc": ""}, {"scc": 1})

  # Another map is another evaluation: the first moves aside rather than being replaced.
  evaluate_lib.evaluate_run(ham_run, manual_dir=str(isic2019_dir), dataset="isic2019",
                            class_map={"ak": "akiec", "scc": "akiec"})
  assert _cases(ham_run)["ISIC_0000004"] == "akiec" and _scored(ham_run)["left_out"] is None
  kept = [json.loads(p.read_text()) for p in (ham_run / "evaluation").glob("*/metrics.json")]
  assert [k["class_map"] for k in kept] == [{"AK": "akiec", "scc": ""}]


ISIC2019_CLASSES = ("mel", "nv", "bcc", "ak", "bkl", "df", "vasc", "scc")
HAM10000_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")


@pytest.mark.parametrize("class_map, message", [
    ({"xx": "nv"}, r"\['xx'\] is not a class of dataset 'isic2019' \(its classes: mel, nv"),
    ({"ak": "akiec", "scc": "squamous"}, r"\['scc=squamous'\] name no class of the run"),
    (dict.fromkeys(ISIC2019_CLASSES, ""), "leaves every class of dataset 'isic2019' out"),
])
def test_a_wrong_class_map_is_refused_by_name(class_map, message):
  with pytest.raises(ValueError, match=message):
    evaluate_lib.class_mapping("isic2019", ISIC2019_CLASSES, HAM10000_CLASSES, class_map)


def test_class_map_matches_names_case_insensitively():
  mapping = evaluate_lib.class_mapping("isic2019", ISIC2019_CLASSES, HAM10000_CLASSES,
                                       {"AK": "AKIEC", "scc": ""})
  assert mapping.tolist() == [4, 5, 1, 0, 2, 3, 6, -1]


def test_class_map_option_parses_and_refuses_what_is_not_from_to():
  assert evaluate_lib.parse_class_map("ak=akiec, scc=,UNK=") == {"ak": "akiec", "scc": "",
                                                                 "UNK": ""}
  for bad in ("ak", "=akiec", "ak=akiec,,scc="):
    with pytest.raises(argparse.ArgumentTypeError, match="is not FROM=TO"):
      evaluate_lib.parse_class_map(bad)


def test_the_command_scores_another_dataset(ham_run, isic2019_dir, capsys):
  assert cli.main(["evaluate", "--workdir", str(ham_run), "--manual-dir", str(isic2019_dir),
                   "--dataset", "isic2019", "--class-map", "ak=akiec,scc="]) == 0
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["count/examples"] == 4
  assert cli.main(["evaluate", "--workdir", str(ham_run), "--dataset", "isic2019"]) == 1
  assert "--dataset isic2019: give --manual-dir" in capsys.readouterr().err


@pytest.mark.slow
def test_a_segmentation_run_scores_the_isic2017_pairs_not_a_dataset_without_masks(tmp_path):
  cases = {f"IMD00{i}": "common_nevus" for i in range(1, 5)}
  cfg = tiny_config(**{"data.name": "ph2", "data.split": "all", "num_steps": 1,
                       "eval.every_steps": 1})
  cfg.data.builder_kwargs = {}
  cfg.data.manual_dir = str(write_ph2(tmp_path / "ph2", cases, list(cases)))
  loop.train(cfg, tmp_path / "run")
  isic2017 = tmp_path / "isic2017"
  for i, image_id in enumerate(("ISIC_0001769", "ISIC_0001852")):
    write_image(isic2017 / "ISIC-2017_Validation_Data" / f"{image_id}.jpg", seed=i)
    write_mask(isic2017 / "ISIC-2017_Validation_Part1_GroundTruth" /
               f"{image_id}_segmentation.png")
  metrics = evaluate_lib.evaluate_run(tmp_path / "run", manual_dir=str(isic2017),
                                      dataset="isic2017_task1")
  assert metrics["count/images"] == 2
  assert sorted(_cases(tmp_path / "run")) == ["ISIC_0001769", "ISIC_0001852"]
  assert _scored(tmp_path / "run")["dataset"] == "isic2017_task1"
  with pytest.raises(ValueError, match=r"as ham10000: .*data.task='segmentation' but dataset "
                                       r"'ham10000' has no masks"):
    evaluate_lib.evaluate_run(tmp_path / "run", manual_dir=str(write_ham(tmp_path / "ham")),
                              dataset="ham10000")
