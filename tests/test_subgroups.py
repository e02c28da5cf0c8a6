"""The subgroup audit (issue 33): per-group metrics and the equalized-odds difference against
fairlearn, the cluster bootstrap's coverage in simulation, the groups of a field, the malignant
classes of each dataset; then ``evaluate --by`` (and ``report``) on tiny runs trained on fakes of
the ISIC 2018 Task 3 (a cross-validation run) and PAD-UFES-20 layouts (checkpoint selection by
the worst group)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from flaxderm import cli
from flaxderm import metrics as metrics_lib
from flaxderm import subgroups
from flaxderm.data.builders import (ddi, fitzpatrick17k, ham10000, isic2019, isic2020,
                                    pad_ufes20, ph2, synthetic)
from flaxderm.tools import case_table
from flaxderm.tools import crossval
from flaxderm.tools import evaluate as evaluate_lib
from flaxderm.tools import report
from flaxderm.train import config as config_lib
from flaxderm.train import loop
from flaxderm.train import scoring
from flaxderm.train import setup
from tiny_runs import tiny_config, write_image

fairlearn_metrics = pytest.importorskip("fairlearn.metrics")
sklearn_metrics = pytest.importorskip("sklearn.metrics")

ALL_CLASSIFICATION = ("accuracy", *subgroups.METRICS["classification"])
MALIGNANT = [1, 2]


def classifier_cases(n: int, seed: int):
  """(probabilities (n, 4), labels, predictions, group labels, clusters) of a classifier that is
  better on group "a" than on "b" and "c"; group "d" has 5 cases, some cases have no group."""
  rng = np.random.default_rng(seed)
  groups = rng.choice(["a", "b", "c", ""], size=n, p=[0.4, 0.3, 0.2, 0.1])
  groups[:5] = "d"
  labels = rng.integers(0, 4, size=n)
  skill = np.where(groups == "a", 3.0, 1.0)[:, None]
  logits = rng.normal(size=(n, 4)) + skill * np.eye(4)[labels]
  probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  clusters = rng.integers(0, n // 2, size=n)  # about two cases per lesion
  return probabilities, labels, probabilities.argmax(axis=1), groups, clusters


def audited(n=400, seed=0, **options):
  probabilities, labels, predictions, groups, clusters = classifier_cases(n, seed)
  statistics = subgroups.classification_statistics(labels, predictions, probabilities,
                                                   MALIGNANT, names=ALL_CLASSIFICATION)
  names, order = subgroups.group_labels(groups)
  result = subgroups.audit(statistics, names, order, clusters, min_cases=10, samples=200,
                           **options)
  return result, (probabilities, labels, predictions, names)


def sklearn_macro_auc(labels, probabilities):
  return np.mean([sklearn_metrics.roc_auc_score(labels == c, probabilities[:, c])
                  for c in range(probabilities.shape[1]) if 0 < np.sum(labels == c) < len(labels)])


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")  # a group's rare class
def test_per_group_metrics_equal_fairlearns_metric_frame():
  result, (probabilities, labels, predictions, names) = audited()
  malignant, called = np.isin(labels, MALIGNANT), np.isin(predictions, MALIGNANT)
  index = np.arange(len(labels))  # y_pred of the metrics that read the probabilities
  frames = {
      "accuracy": (sklearn_metrics.accuracy_score, labels, predictions),
      "balanced_accuracy": (sklearn_metrics.balanced_accuracy_score, labels, predictions),
      "auc/macro_ovr": (lambda y, i: sklearn_macro_auc(y, probabilities[i]), labels, index),
      "ece": (lambda y, i: metrics_lib.calibration(probabilities[i], y)["ece"], labels, index),
      "sensitivity/malignant": (fairlearn_metrics.true_positive_rate, malignant, called),
      "specificity/malignant": (fairlearn_metrics.true_negative_rate, malignant, called),
  }
  groups = {g["group"]: g for g in result["groups"]}
  assert list(groups) == ["a", "b", "c", "d", subgroups.MISSING]
  assert groups["d"]["cases"] == 5 and not groups["d"]["scored"] and groups["d"]["metrics"] is None
  assert groups[subgroups.MISSING]["scored"] and groups[subgroups.MISSING]["missing"]
  for name, (metric, truth, predicted) in frames.items():
    frame = fairlearn_metrics.MetricFrame(metrics=metric, y_true=truth, y_pred=predicted,
                                          sensitive_features=names)
    for group, entry in groups.items():
      if entry["scored"]:
        assert entry["metrics"][name]["value"] == pytest.approx(frame.by_group[group]), (name,
                                                                                         group)
    # The gap is fairlearn's difference between the groups that are populations and scored.
    population = np.isin(names, ["a", "b", "c"])
    kept = fairlearn_metrics.MetricFrame(metrics=metric, y_true=truth[population],
                                         y_pred=predicted[population],
                                         sensitive_features=names[population])
    assert result["gap"][name]["value"] == pytest.approx(kept.difference()), name
  assert result["gap"]["balanced_accuracy"]["best"] == "a"
  assert result["worst_group"] == result["gap"]["balanced_accuracy"]["worst"] != "a"
  assert result["gap"]["ece"]["worst"] == max("abc", key=lambda g: groups[g]["metrics"]["ece"]
                                              ["value"])  # the highest ECE is the worst


def test_equalized_odds_difference_equals_fairlearns():
  result, (_, labels, predictions, names) = audited(seed=1)
  population = np.isin(names, ["a", "b", "c"])  # scored groups, not the missing ones
  want = fairlearn_metrics.equalized_odds_difference(
      np.isin(labels, MALIGNANT)[population], np.isin(predictions, MALIGNANT)[population],
      sensitive_features=names[population])
  odds = result["equalized_odds_difference"]
  assert odds["value"] == pytest.approx(want)
  assert odds["value"] == max(odds["tpr_difference"], odds["fpr_difference"])
  assert odds["ci95"][0] <= odds["value"] + 0.05 and odds["ci95"][1] >= odds["value"] - 0.05


def test_weighted_statistics_count_a_case_as_often_as_its_weight():
  probabilities, labels, predictions, _, _ = classifier_cases(120, 2)
  statistics = subgroups.classification_statistics(labels, predictions, probabilities,
                                                   MALIGNANT, names=ALL_CLASSIFICATION)
  weights = np.random.default_rng(3).multinomial(120, np.full(120, 1 / 120), size=3)
  for w in weights:
    repeated = np.repeat(np.arange(120), w)
    want = {"balanced_accuracy": sklearn_metrics.balanced_accuracy_score(
                labels, predictions, sample_weight=w),
            "auc/macro_ovr": metrics_lib.roc_auc(probabilities[repeated], labels[repeated],
                                                 )["auc/macro_ovr"],
            "ece": metrics_lib.calibration(probabilities[repeated], labels[repeated])["ece"]}
    for name, value in want.items():
      assert statistics[name](w[None])[0] == pytest.approx(value), name
  dice = np.array([0.5, np.nan, 0.9])
  assert subgroups.mean(dice)(np.array([[1, 5, 3]]))[0] == pytest.approx((0.5 + 2.7) / 4)


def simulated_coverage(resample_clusters: bool, simulations: int = 300) -> float:
  """How often the 95% interval of a mean holds the true mean, for clustered data: 80 lesions of
  1-3 images each, images of one lesion alike (intra-class correlation 0.8)."""
  rng = np.random.default_rng(7)
  covered = 0
  for s in range(simulations):
    sizes = rng.integers(1, 4, size=80)
    lesion = np.repeat(np.arange(80), sizes)
    values = (rng.normal(size=80)[lesion] * 2 + rng.normal(size=len(lesion))) + 0.5
    clusters = lesion if resample_clusters else np.arange(len(lesion))
    low, high = subgroups.overall({"mean": subgroups.mean(values)}, clusters, samples=300,
                                  seed=s)["mean"]["ci95"]
    covered += low <= 0.5 <= high
  return covered / simulations


def test_cluster_bootstrap_covers_at_the_nominal_rate():
  coverage = simulated_coverage(resample_clusters=True)
  # 300 simulations: the standard error of a 95% rate is 0.013 (and percentile intervals of a
  # few dozen clusters fall a little short of nominal: 0.92 for 30 independent cases).
  assert 0.91 <= coverage <= 0.99
  # Resampling images as if independent ignores that a lesion's images are alike: too narrow.
  assert simulated_coverage(resample_clusters=False) < coverage - 0.05


def test_group_intervals_cover_each_groups_own_value():
  rng = np.random.default_rng(11)
  covered, simulations = np.zeros(2), 200
  for s in range(simulations):
    groups = rng.choice(["young", "old"], size=60)
    hit = rng.uniform(size=60) < np.where(groups == "young", 0.8, 0.6)
    statistic = {"sensitivity": subgroups.fraction(np.ones(60, bool), hit)}
    labels, order = subgroups.group_labels(groups)
    result = subgroups.audit(statistic, labels, order, np.arange(60), samples=300, seed=s)
    for g, (name, truth) in enumerate((("old", 0.6), ("young", 0.8))):
      low, high = next(e for e in result["groups"] if e["group"] == name)["metrics"][
          "sensitivity"]["ci95"]
      covered[g] += low <= truth <= high
  assert np.all((covered / simulations >= 0.89) & (covered / simulations <= 0.99))


def test_groups_of_categories_and_age_bands():
  labels, order = subgroups.group_labels(["male", "", "female", "male"])
  assert list(labels) == ["male", subgroups.MISSING, "female", "male"]
  assert order == ["female", "male", subgroups.MISSING]
  ages = [5.0, 30.0, 44.9, np.nan, 80.0, 75.0]
  labels, order = subgroups.group_labels(ages, (0, 30, 45, 60, 75))
  assert list(labels) == ["[0,30)", "[30,45)", "[30,45)", subgroups.MISSING, "75+", "75+"]
  assert order == ["[0,30)", "[30,45)", "75+", subgroups.MISSING]
  with pytest.raises(ValueError, match="bands must be increasing"):
    subgroups.group_labels(ages, (0, 45, 30))
  with pytest.raises(ValueError, match="below the first band edge 18"):
    subgroups.group_labels(ages, (18, 65))


def test_too_small_groups_and_bad_options():
  statistic = {"m": subgroups.mean(np.arange(12.0))}
  labels, order = subgroups.group_labels(["a"] * 9 + ["b"] * 3)
  result = subgroups.audit(statistic, labels, order, np.arange(12), min_cases=10, samples=10)
  assert [g["scored"] for g in result["groups"]] == [False, False]
  assert result["gap"] == {"m": None} and result["worst_group"] is None
  with pytest.raises(ValueError, match="--min-cases must be >= 1"):
    subgroups.audit(statistic, labels, order, np.arange(12), min_cases=0)
  with pytest.raises(ValueError, match="unknown classification metric 'f1'"):
    subgroups.classification_statistics(np.zeros(3), np.zeros(3), names=("f1",))
  with pytest.raises(ValueError, match="sensitivity/malignant: no class of the label set"):
    subgroups.classification_statistics(np.zeros(3), np.zeros(3), names=("sensitivity/malignant",))


def test_malignant_classes_name_classes_of_each_dataset():
  label_sets = {"ham10000": ham10000.DX_CLASSES, "isic2018_task3": ham10000.DX_CLASSES,
                "dermamnist": ham10000.DX_CLASSES, "isic2019": isic2019.CLASS_NAMES,
                "pad_ufes20": pad_ufes20.CLASS_NAMES,
                "isic2020": isic2020.BINARY + isic2020.DIAGNOSES, "ddi": ddi.CLASS_NAMES,
                "fitzpatrick17k": fitzpatrick17k.THREE + fitzpatrick17k.NINE,
                "ph2": ph2.CLASS_NAMES, "synthetic_lesions": synthetic.CLASS_NAMES}
  assert set(subgroups.MALIGNANT_CLASSES) == set(label_sets)
  for dataset, malignant in subgroups.MALIGNANT_CLASSES.items():
    assert set(malignant) <= set(label_sets[dataset]), dataset  # no misspelt class
  assert subgroups.malignant_classes("isic2018_task3", ham10000.DX_CLASSES) == ("akiec", "bcc",
                                                                                "mel")
  assert subgroups.malignant_classes("pad_ufes20", pad_ufes20.CLASS_NAMES) == ("BCC", "MEL",
                                                                               "SCC")
  assert subgroups.malignant_classes("ham10000", ham10000.PAPER001_CLASSES) == ("mel",)
  assert subgroups.malignant_classes("somewhere_else", ("a", "b")) == ()


# ----------------------------------------------------------------------------------------------
# evaluate --by on runs trained on tiny fakes of the ISIC 2018 Task 3 and PAD-UFES-20 layouts.

SEXES = ("male", "female", "unknown")


def write_isic2018_task3(root: Path, images: int = 40) -> list[dict[str, str]]:
  """The Task 3 test part in its HAM-style release: 40 images of 28 lesions."""
  rng = np.random.default_rng(0)
  classes = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
  rows = [{"lesion_id": f"HAMTEST_{i * 7 // 10:07d}", "image_id": f"ISIC_{34525 + i:07d}",
           "dx": classes[i % 7], "dx_type": "histo",
           "age": str(rng.choice([20.0, 35.0, 50.0, 65.0, 80.0])) if i % 9 else "",
           "sex": SEXES[i % 3 if i % 5 else 1],
           "localization": rng.choice(["back", "face", "lower extremity"]),
           "dataset": rng.choice(["rosendahl", "vidir_modern"])} for i in range(images)]
  evaluate_lib.write_cases(root / "ISIC2018_Task3_Test_GroundTruth.csv", rows)
  for i, row in enumerate(rows):
    write_image(root / "ISIC2018_Task3_Test_Input" / f"{row['image_id']}.jpg", 30, 40, seed=i)
  return rows


def write_pad_ufes20(root: Path, images: int = 40) -> list[dict[str, str]]:
  """metadata.csv (the release's columns) and PAT_*.png of 40 images of 25 patients."""
  rng = np.random.default_rng(1)
  columns = ["patient_id", "diagnostic", "img_id", *pad_ufes20.CLINICAL_COLUMNS.values()]
  rows = []
  for i in range(images):
    patient = i * 5 // 8
    row = dict.fromkeys(columns, "")
    row.update(patient_id=f"PAT_{patient}", lesion_id=str(i), age=str(30 + patient * 2),
               gender=("MALE", "FEMALE", "")[patient % 3], fitspatrick=f"{patient % 3 + 1}.0",
               region=rng.choice(["FACE", "BACK", "ARM"]),
               diagnostic=pad_ufes20.CLASS_NAMES[i % 6], img_id=f"PAT_{patient}_{i}_0.png",
               biopsed="True")
    rows.append(row)
    write_image(root / "images" / row["img_id"], 30, 40, seed=i)
  evaluate_lib.write_cases(root / "metadata.csv", rows)
  return rows


def tiny_classifier(name: str, manual_dir: Path, source_split: str, **changes):
  cfg = tiny_config(**{"model.name": "resnet18", "data.task": "classification",
                       "loss.name": "cross_entropy", "data.name": name,
                       "data.source_split": source_split, "data.split": "kfold",
                       "data.num_folds": 2, "num_steps": 2, "eval.every_steps": 2, **changes})
  cfg.model.kwargs = {"depths": (1, 1, 1, 1)}
  cfg.data.builder_kwargs = {}
  cfg.data.manual_dir = str(manual_dir)
  return cfg


@pytest.fixture(scope="module")
def isic_cv_run(tmp_path_factory, private_data_dir):
  del private_data_dir
  root = tmp_path_factory.mktemp("isic2018_task3")
  rows = write_isic2018_task3(root / "manual")
  crossval.train_folds(tiny_classifier("isic2018_task3", root / "manual", "test"), root / "cv", 2)
  return root / "cv", rows


@pytest.fixture(scope="module")
def pad_run(tmp_path_factory, private_data_dir):
  """Fold 0 of 2, its best checkpoint chosen by the worst group of sex."""
  del private_data_dir
  root = tmp_path_factory.mktemp("pad_ufes20")
  rows = write_pad_ufes20(root / "manual")
  cfg = tiny_classifier("pad_ufes20", root / "manual", "train", num_steps=4,
                        final_params="best", **{"eval.select_by": "worst_group:sex",
                                                "eval.select_min_cases": 2})
  results = loop.train(cfg, root / "run")
  return root / "run", rows, results


def read_csv(path: Path) -> list[dict[str, str]]:
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The least populated class")  # a 40-image fake of 7 classes
def test_evaluate_by_pools_the_out_of_fold_cases_of_isic2018_task3(isic_cv_run, capsys):
  cv, rows = isic_cv_run
  assert cli.main(["evaluate", "--workdir", str(cv), "--by", "sex,age,site,dataset",
                   "--min-cases", "4", "--samples", "200", "--age-bands", "0,40,60"]) == 0
  printed = capsys.readouterr().out
  assert "subgroups of 40 cases (out-of-fold cases of 2 folds)" in printed
  assert "equalized-odds difference (malignant vs benign)" in printed
  json.loads(printed.strip().splitlines()[-1])  # the metrics' JSON line stays last

  cases = read_csv(cv / "evaluation" / "cases.csv")
  truth = {r["image_id"]: r for r in rows}
  for case in cases:  # each case carries its lesion and clinical fields, read from the records
    row = truth[case["id"]]
    assert case["group"] == row["lesion_id"] and case["site"] == row["localization"]
    assert case["dataset"] == row["dataset"]
    assert case["sex"] == ("" if row["sex"] == "unknown" else row["sex"])
  audited = json.loads((cv / "evaluation" / "subgroups.json").read_text())
  assert audited["cases"] == 40 and audited["pooled"] == "out-of-fold cases of 2 folds"
  assert audited["clusters"] == len({r["lesion_id"] for r in rows})
  assert audited["malignant_classes"] == ["akiec", "bcc", "mel"]
  assert audited["metrics"] == list(subgroups.METRICS["classification"])
  assert audited["age_bands"] == [0, 40, 60] and audited["min_cases"] == 4
  sex = {g["group"]: g for g in audited["fields"]["sex"]["groups"]}
  assert {k: g["cases"] for k, g in sex.items()} == {
      k: sum((r["sex"] if r["sex"] != "unknown" else subgroups.MISSING) == k for r in rows)
      for k in ("female", "male", subgroups.MISSING)}
  assert [g["group"] for g in audited["fields"]["age"]["groups"]] == [
      "[0,40)", "[40,60)", "60+", subgroups.MISSING]
  for field in ("sex", "age", "site", "dataset"):
    assert sum(g["cases"] for g in audited["fields"][field]["groups"]) == 40
  # A group's balanced accuracy is scikit-learn's on its rows of the pooled table.
  female = [c for c in cases if c["sex"] == "female"]
  assert sex["female"]["metrics"]["balanced_accuracy"]["value"] == pytest.approx(
      sklearn_metrics.balanced_accuracy_score([c["label"] for c in female],
                                              [c["prediction"] for c in female]))
  assert sex["female"]["clusters"] == len({c["group"] for c in female})

  page = report.write_report(cv, cases=1)
  assert 'src="subgroups.png"' in page.read_text()


@pytest.mark.slow  # the 2-fold cross-validation it reads takes ~20 s to train
def test_clinical_fields_never_reach_the_model(isic_cv_run):
  cv, _ = isic_cv_run
  data_cfg = setup.eval_data_config(evaluate_lib.run_lib.run_config(cv / "fold_0"))
  batch = next(iter(scoring.eval_batches(data_cfg, None, 8)))
  assert set(batch) == {"image", "label", "valid", "id"}


@pytest.mark.slow  # the 2-fold cross-validation it reads takes ~20 s to train
def test_audit_errors(isic_cv_run, capsys):
  cv, _ = isic_cv_run
  assert cli.main(["evaluate", "--workdir", str(cv), "--by", "fitzpatrick"]) == 1
  assert "--by fitzpatrick: the cases carry no such field; they carry ['age', 'sex', 'site'," in (
      capsys.readouterr().err)
  assert cli.main(["evaluate", "--workdir", str(cv), "--by", "skin"]) == 1  # before scoring
  assert "--by: clinical fields ['skin'] are not in the vocabulary" in capsys.readouterr().err
  with pytest.raises(ValueError, match="--min-cases must be >= 1"):
    evaluate_lib.audit_run(cv, ["sex"], min_cases=0)


@pytest.mark.slow
def test_worst_group_selection_on_pad_ufes20(pad_run, capsys):
  run, rows, results = pad_run
  best = results["best"]
  assert results["select_by"] == "worst_group:sex" and best["select_by"] == "worst_group:sex"
  worst = best["worst_group"]
  assert worst["field"] == "sex" and set(worst["groups"]) <= {"female", "male"}
  assert worst["value"] == min(worst["groups"].values()) == best["value"]
  assert worst["group"] in worst["groups"]
  assert best["mean"] == best["metrics"]["accuracy"]  # the mean beside the worst group
  assert best["metrics"]["worst_group/accuracy"] == worst["value"]
  logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  checked = [r for r in logged if r["split"] == "validation"]
  assert len(checked) == 2 and all("worst_group/accuracy" in r for r in checked)
  assert best["value"] == max(r["worst_group/accuracy"] for r in checked)

  assert cli.main(["evaluate", "--workdir", str(run), "--by", "sex,fitzpatrick,site,age",
                   "--min-cases", "2", "--samples", "100"]) == 0
  capsys.readouterr()
  audited = json.loads((run / "evaluation" / "subgroups.json").read_text())
  assert audited["malignant_classes"] == ["BCC", "MEL", "SCC"] and audited["pooled"] is None
  cases = read_csv(run / "evaluation" / "cases.csv")
  patients = {r["img_id"].removesuffix(".png"): r["patient_id"] for r in rows}
  assert all(c["group"] == patients[c["id"]] for c in cases)  # resampled by patient
  assert {g["group"] for g in audited["fields"]["fitzpatrick"]["groups"]} <= {"1", "2", "3"}
  # The worst sex on the held-out fold is the one the loop saw at the step it kept.
  sexes = [g["group"] for g in audited["fields"]["sex"]["groups"] if not g["missing"]]
  accuracy = {k: np.mean([c["label"] == c["prediction"] for c in cases if c["sex"] == k])
              for k in sexes}
  assert accuracy == pytest.approx(worst["groups"])


def test_select_by_is_validated():
  for value, message in (("worst:sex", "is not '' or 'worst_group:FIELD'"),
                         ("worst_group:skin", "clinical fields \\['skin'\\] are not"),
                         ("worst_group:diameter_1", "a number other than age")):
    with pytest.raises(ValueError, match=message):
      config_lib.validate_config(tiny_config(**{"eval.select_by": value}))
  with pytest.raises(ValueError, match="needs validation data"):
    config_lib.validate_config(tiny_config(**{"eval.select_by": "worst_group:sex",
                                              "data.split": "all"}))
  with pytest.raises(ValueError, match="eval.select_min_cases must be a positive int"):
    config_lib.validate_config(tiny_config(**{"eval.select_min_cases": 0}))


def test_select_by_a_field_the_records_lack(tmp_path, private_data_dir):
  del private_data_dir
  with pytest.raises(ValueError, match="records of synthetic_lesions carry no clinical field "
                                       "'fitzpatrick'; they carry \\['age', 'sex', 'site'\\]"):
    loop.train(tiny_config(**{"eval.select_by": "worst_group:fitzpatrick"}), tmp_path / "run")


def test_segmentation_audit_of_a_per_case_table():
  rng = np.random.default_rng(4)
  sexes = rng.choice(["female", "male"], size=60)
  dice = np.where(sexes == "female", 0.85, 0.7) + rng.normal(0, 0.05, size=60)
  dice[:3] = np.nan  # empty truth: no Dice
  rows = [{"id": f"c{i}", "dice/per_image": str(d), "jaccard/isic_thresholded": str(d - 0.1),
           "group": f"lesion{i // 3}", "sex": s} for i, (d, s) in enumerate(zip(dice, sexes))]
  statistics = case_table.statistics(rows, "segmentation", subgroups.METRICS["segmentation"], ())
  labels, order = case_table.field_groups(rows, "sex")
  result = subgroups.audit(statistics, labels, order, [r["group"] for r in rows], samples=200)
  for group in result["groups"]:
    chosen = sexes == group["group"]
    assert group["metrics"]["dice/per_image"]["value"] == pytest.approx(np.nanmean(dice[chosen]))
  assert result["worst_group"] == "male" and "equalized_odds_difference" not in result
  assert result["gap"]["dice/per_image"]["value"] == pytest.approx(
      np.nanmean(dice[sexes == "female"]) - np.nanmean(dice[sexes == "male"]))


def test_an_earlier_evaluation_keeps_its_subgroup_audit(tmp_path):
  out = tmp_path / "evaluation"
  out.mkdir()
  earlier = dict.fromkeys(evaluate_lib.SCORING_KEYS, "a")
  (out / evaluate_lib.METRICS).write_text(json.dumps(earlier))
  for name in (evaluate_lib.CASES, evaluate_lib.SUBGROUPS):
    (out / name).write_text("earlier")
  evaluate_lib._keep_earlier(out, {**earlier, "tta": "flips"})
  kept = [d for d in out.iterdir() if d.is_dir()]
  assert len(kept) == 1 and not list(out.glob("*.*"))
  assert (kept[0] / evaluate_lib.SUBGROUPS).read_text() == "earlier"
