"""The subgroup audit (issue 33): per-group metrics and the equalized-odds difference against
fairlearn, the cluster bootstrap's coverage in simulation, the groups of a field, and the
malignant classes of each dataset."""
from __future__ import annotations

import numpy as np
import pytest

from flaxderm import metrics as metrics_lib
from flaxderm import subgroups

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
  # pylint: disable=g-import-not-at-top  (the builders import TensorFlow)
  from flaxderm.data.builders import (ddi, fitzpatrick17k, ham10000, isic2019, isic2020,
                                      pad_ufes20, ph2, synthetic)

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
