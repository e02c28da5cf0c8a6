"""Subgroup audit: a run's metrics per group of a clinical field, with cluster-bootstrap intervals.

Pure functions on numpy arrays (host side), used by ``launch.py evaluate --by``, ``launch.py
compare --by`` and the training loop's ``eval.select_by = "worst_group:FIELD"``.

Weighted statistics. Every metric here is a function ``weights (S, N) -> (S,)``: its value on the
N cases with case i counted ``weights[s, i]`` times. All ones gives the observed value; a bootstrap
resample is a matrix of counts; a group is the weights of the other cases set to 0. Counting a
case w times is the same as repeating it w times, so each statistic equals its unweighted
definition (``flaxderm.metrics``, scikit-learn) on the repeated cases: ``balanced_accuracy``,
``macro_auc`` (one-vs-rest, the macro mean over classes with positives and negatives, as
``metrics.roc_auc``), ``expected_calibration_error`` (``metrics.calibration``'s ``ece``),
``fraction`` (a sensitivity or specificity) and ``mean`` (of a per-case column, NaN left out).

The cluster bootstrap (``cluster_weights``). Cases of one cluster -- the split's grouping unit,
a lesion or a patient (the records' ``group``) -- are not independent, so a resample draws
clusters with replacement, each case counted as often as its cluster is drawn (Field & Welsh,
"Bootstrapping clustered data", JRSS B 2007). Intervals are percentile intervals.

``audit`` scores one field: per group, its size (cases, clusters) and, when it has at least
``min_cases`` cases, each metric with its interval; a smaller group is reported as too small,
not scored. Each group resamples its own clusters (a stratified bootstrap: every resample keeps
the groups' sizes in clusters); one resample of every group gives one value of the field-level
numbers, whose intervals come from the same resamples:

* ``gap``: per metric, the best group's value minus the worst group's (worst: lowest, or highest
  for ``LOWER_IS_BETTER`` metrics), with both named. A largest-minus-smallest is biased upward
  on resamples (noise only widens it), so its interval reaches higher than its value does;
* ``equalized_odds_difference`` of the malignant-vs-benign decision (Hardt et al. 2016; the
  definition of fairlearn's ``equalized_odds_difference``): the larger of the spread over groups
  of the true-positive rate (sensitivity) and of the false-positive rate (1 - specificity).

Cases whose field is missing form the group ``MISSING``: sized and scored, but left out of the
gap, the worst group and the equalized odds (they are not a population). A group where a metric
is undefined (no malignant case for a sensitivity) is left out of that metric's numbers.

Malignant classes (``MALIGNANT_CLASSES``, one table per dataset): the decision "malignant" is a
prediction of any of them at the run's operating point (the predicted class, argmax), "benign"
any other class.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from flaxderm import metrics as metrics_lib

Statistic = Callable[[np.ndarray], np.ndarray]  # weights (S, N) -> (S,)

# The classes of each dataset's label sets that are malignant (the builders' class names):
# * HAM10000, ISIC 2018 Task 3, DermaMNIST: melanoma, basal cell carcinoma, and akiec, which
#   gathers actinic keratoses with intraepithelial carcinoma (Bowen's disease) and is scored as
#   malignant in the ISIC 2018 papers; ISIC 2019: mel, bcc, scc (its ak is actinic keratosis
#   alone, a precursor, not a cancer); PAD-UFES-20: MEL, BCC, SCC (ACK, actinic keratosis, as ISIC
#   2019's ak).
# * ISIC 2020 (binary or diagnosis), DDI, Fitzpatrick 17k (three or nine partitions): the
#   "malignant" class, melanoma, and the nine partitions' malignant ones.
# * PH2 and the synthetic lesions: melanoma.
MALIGNANT_CLASSES: dict[str, tuple[str, ...]] = {
    "ham10000": ("akiec", "bcc", "mel"),
    "isic2018_task3": ("akiec", "bcc", "mel"),
    "dermamnist": ("akiec", "bcc", "mel"),
    "isic2019": ("bcc", "mel", "scc"),
    "pad_ufes20": ("BCC", "MEL", "SCC"),
    "isic2020": ("malignant", "melanoma"),
    "ddi": ("malignant",),
    "fitzpatrick17k": ("malignant", "malignant cutaneous lymphoma", "malignant dermal",
                       "malignant epidermal", "malignant melanoma"),
    "ph2": ("melanoma",),
    "synthetic_lesions": ("melanoma",),
}

# Headline metrics of an audit, the first one the headline (forest plots, worst group).
METRICS = {
    "classification": ("balanced_accuracy", "auc/macro_ovr", "sensitivity/malignant",
                       "specificity/malignant", "ece"),
    "segmentation": ("dice/per_image", "jaccard/isic_thresholded"),
}
SENSITIVITY, SPECIFICITY = "sensitivity/malignant", "specificity/malignant"
LOWER_IS_BETTER = frozenset({"ece"})
AGE_BANDS = (0.0, 30.0, 45.0, 60.0, 75.0)
MIN_CASES = 10
SAMPLES = 2000
CONFIDENCE = 0.95
ECE_BINS = 15  # as the report's reliability diagram
CHUNK = 1000  # resamples drawn and scored at once: bounds the (chunk, cases) weight matrices
MISSING = "(missing)"


def malignant_classes(dataset: str, class_names: Sequence[str]) -> tuple[str, ...]:
  """The classes of ``class_names`` that are malignant in ``dataset`` (``MALIGNANT_CLASSES``);
  empty when the table does not know the dataset."""
  known = MALIGNANT_CLASSES.get(dataset, ())
  return tuple(name for name in class_names if name in known)


# ------------------------------------------------------------------------------------------------
# Groups.


def band_label(low: float, high: float | None) -> str:
  """``[30,45)`` for ages 30 <= age < 45, ``75+`` for the last band."""
  return f"{low:g}+" if high is None else f"[{low:g},{high:g})"


def group_labels(values: Sequence[Any], bands: Sequence[float] | None = None
                 ) -> tuple[np.ndarray, list[str]]:
  """(the group of each case, the groups in display order).

  Without ``bands`` the values are categories (text; ``""`` is ``MISSING``), ordered by name;
  with increasing ``bands`` ``[b0, b1, ...]`` they are numbers in the bands ``[b0, b1)``, ...,
  ``[b_last, inf)`` (``band_label``), in that order, NaN being ``MISSING`` and a value below
  ``b0`` an error. ``MISSING`` comes last.
  """
  if bands is None:
    labels = np.array([str(v) if str(v) else MISSING for v in values], dtype=object)
    order = sorted(set(labels) - {MISSING})
  else:
    edges = np.asarray(bands, np.float64)
    if edges.ndim != 1 or not len(edges) or np.any(np.diff(edges) <= 0):
      raise ValueError(f"bands must be increasing numbers, got {list(bands)}")
    numbers = np.asarray(values, np.float64)
    known = ~np.isnan(numbers)
    if np.any(numbers[known] < edges[0]):
      raise ValueError(f"values below the first band edge {edges[0]:g}: "
                       f"{sorted(set(numbers[known & (numbers < edges[0])]))[:5]}")
    names = [band_label(lo, hi) for lo, hi in zip(edges, [*edges[1:], None])]
    index = np.searchsorted(edges, np.where(known, numbers, edges[0]), side="right") - 1
    labels = np.where(known, np.array(names, dtype=object)[index], MISSING)
    order = [name for name in names if name in set(labels)]
  return labels, order + ([MISSING] if MISSING in set(labels) else [])


# ------------------------------------------------------------------------------------------------
# Weighted statistics: weights (S, N) -> (S,).


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  """num / den, NaN where den == 0."""
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def mean(values: np.ndarray) -> Statistic:
  """The mean of a per-case value over the cases where it is defined (not NaN)."""
  values = np.asarray(values, np.float64)
  defined = ~np.isnan(values)
  filled = np.where(defined, values, 0.0)
  return lambda w: _ratio(w @ filled, w @ defined)


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> Statistic:
  correct = (np.asarray(labels) == np.asarray(predictions)).astype(np.float64)
  return lambda w: _ratio(w @ correct, w.sum(axis=1))


def fraction(among: np.ndarray, hit: np.ndarray) -> Statistic:
  """The share of the cases ``among`` that are ``hit``: a sensitivity (among the positives, the
  predicted positives) or a specificity."""
  among = np.asarray(among, bool)
  both = (among & np.asarray(hit, bool)).astype(np.float64)
  return lambda w: _ratio(w @ both, w @ among.astype(np.float64))


def balanced_accuracy(labels: np.ndarray, predictions: np.ndarray) -> Statistic:
  """The mean recall over the classes present in the (weighted) truth: scikit-learn's
  ``balanced_accuracy_score`` with the weights as ``sample_weight``."""
  labels, predictions = np.asarray(labels), np.asarray(predictions)
  classes = np.unique(labels)
  one_hot = (labels[:, None] == classes[None, :]).astype(np.float64)
  correct = (labels == predictions).astype(np.float64)

  def value(w):
    support, hits = w @ one_hot, w @ (one_hot * correct[:, None])
    present = support > 0
    recall = np.divide(hits, support, out=np.zeros_like(hits), where=present)
    return _ratio(recall.sum(axis=1), present.sum(axis=1))

  return value


def _binary_auc(scores: np.ndarray, positive: np.ndarray) -> Statistic:
  """Mann-Whitney AUC with weights (ties count 1/2); NaN without positives or negatives."""
  order = np.argsort(scores, kind="stable")
  ranked, positive = scores[order], positive[order]
  starts = np.r_[0, np.flatnonzero(np.diff(ranked)) + 1]  # first case of each tied score

  def value(w):
    w = w[:, order]
    pos = np.add.reduceat(w * positive, starts, axis=1)
    neg = np.add.reduceat(w * ~positive, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    return _ratio(np.sum(pos * (below + neg / 2), axis=1), pos.sum(axis=1) * neg.sum(axis=1))

  return value


def macro_auc(probabilities: np.ndarray, labels: np.ndarray) -> Statistic:
  """One-vs-rest ROC AUC per class, averaged over the classes with positive and negative
  (weighted) cases: ``metrics.roc_auc``'s ``auc/macro_ovr``. ``labels`` index the columns."""
  probabilities, labels = np.asarray(probabilities, np.float64), np.asarray(labels)
  per_class = [_binary_auc(probabilities[:, c], labels == c)
               for c in range(probabilities.shape[1])]

  def value(w):
    aucs = np.stack([auc(w) for auc in per_class], axis=1)
    defined = ~np.isnan(aucs)
    return _ratio(np.where(defined, aucs, 0).sum(axis=1), defined.sum(axis=1))

  return value


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, *,
                               num_bins: int = ECE_BINS) -> Statistic:
  """ECE over equal-width bins of the top-class probability (``metrics.calibration``'s ``ece``):
  the count-weighted mean of |accuracy - confidence| per bin, i.e. the sum over bins of
  |hits - summed confidence| over the number of cases."""
  probabilities, labels = np.asarray(probabilities, np.float64), np.asarray(labels)
  confidence = probabilities.max(axis=1)
  hit = (probabilities.argmax(axis=1) == labels).astype(np.float64)
  bins = metrics_lib.bin_index(confidence, np.linspace(0.0, 1.0, num_bins + 1))
  one_hot = (bins[:, None] == np.arange(num_bins)[None, :]).astype(np.float64)
  return lambda w: _ratio(np.abs(w @ (one_hot * hit[:, None])
                                 - w @ (one_hot * confidence[:, None])).sum(axis=1),
                          w.sum(axis=1))


def classification_statistics(labels: np.ndarray, predictions: np.ndarray,
                              probabilities: np.ndarray | None = None,
                              malignant: Sequence[int] = (),
                              names: Sequence[str] = METRICS["classification"]
                              ) -> dict[str, Statistic]:
  """The statistics ``names`` of true ``labels`` and ``predictions`` (class indices; the
  predictions are the run's operating point): ``accuracy``, ``balanced_accuracy``, and with the
  class ``probabilities`` (N, K) ``auc/macro_ovr`` and ``ece``; with the ``malignant`` class
  indices, the sensitivity and specificity of the malignant-vs-benign decision."""
  truly, called = np.isin(labels, malignant), np.isin(predictions, malignant)
  builders = {
      "accuracy": lambda: accuracy(labels, predictions),
      "balanced_accuracy": lambda: balanced_accuracy(labels, predictions),
      "auc/macro_ovr": lambda: macro_auc(probabilities, labels),
      "ece": lambda: expected_calibration_error(probabilities, labels),
      SENSITIVITY: lambda: fraction(truly, called),
      SPECIFICITY: lambda: fraction(~truly, ~called),
  }
  for name in names:
    if name not in builders:
      raise ValueError(f"unknown classification metric {name!r}; expected one of "
                       f"{list(builders)}")
    if name in (SENSITIVITY, SPECIFICITY) and not len(malignant):
      raise ValueError(f"{name}: no class of the label set is malignant (MALIGNANT_CLASSES)")
  return {name: builders[name]() for name in names}


# ------------------------------------------------------------------------------------------------
# The cluster bootstrap.


def cluster_codes(clusters: Sequence[Any]) -> np.ndarray:
  """Each case's cluster as an index 0..C-1."""
  return np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)[1]


def cluster_weights(codes: np.ndarray, samples: int, rng: np.random.Generator,
                    chunk: int = CHUNK) -> Iterator[np.ndarray]:
  """Bootstrap weights (at most ``chunk`` resamples, N) at a time, ``samples`` in all: the C
  clusters of ``codes`` (``cluster_codes``) drawn C times with replacement, each case weighted by
  how often its cluster was drawn. One cluster per case resamples the cases."""
  codes = np.asarray(codes)
  count = int(codes.max()) + 1
  for start in range(0, samples, chunk):
    draws = rng.multinomial(count, np.full(count, 1 / count), size=min(chunk, samples - start))
    yield draws[:, codes]


def percentile_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> list[float]:
  """[low, high]: the percentile interval of the defined (not NaN) resampled ``values``; NaNs
  when none is."""
  values = np.asarray(values, np.float64)
  values = values[~np.isnan(values)]
  if not values.size:
    return [float("nan"), float("nan")]
  tail = (1 - confidence) / 2 * 100
  return [float(v) for v in np.percentile(values, [tail, 100 - tail])]


def _scored_groups(statistics: Mapping[str, Statistic], members: Sequence[np.ndarray],
                   clusters: np.ndarray, num_cases: int, samples: int, seed: int
                   ) -> tuple[np.ndarray, np.ndarray]:
  """(observed (G, M), resampled (G, M, samples)) values of each statistic on each group of case
  indices ``members``, each group resampling its own clusters."""
  names = list(statistics)

  def values(weights_by_group):
    out = []
    for weights, cases in zip(weights_by_group, members):
      full = np.zeros((len(weights), num_cases))
      full[:, cases] = weights
      out.append([statistics[name](full) for name in names])
    return np.asarray(out)  # (G, M, S)

  observed = values([np.ones((1, len(cases))) for cases in members])[..., 0]
  rng = np.random.default_rng(seed)
  draws = [cluster_weights(cluster_codes(clusters[cases]), samples, rng) for cases in members]
  resampled = np.concatenate([values(chunk) for chunk in zip(*draws)], axis=-1)
  return observed, resampled


def overall(statistics: Mapping[str, Statistic], clusters: Sequence[Any], *,
            samples: int = SAMPLES, seed: int = 0, confidence: float = CONFIDENCE
            ) -> dict[str, dict[str, Any]]:
  """Each statistic on all cases: {name: {"value", "ci95"}} (cluster bootstrap)."""
  clusters = np.asarray(clusters, dtype=object)
  observed, resampled = _scored_groups(statistics, [np.arange(len(clusters))], clusters,
                                       len(clusters), samples, seed)
  return {name: {"value": float(observed[0, m]),
                 "ci95": percentile_interval(resampled[0, m], confidence)}
          for m, name in enumerate(statistics)}


def _spread(values: np.ndarray) -> np.ndarray:
  """max - min over axis 0, leaving NaN out; NaN where fewer than two values are defined."""
  defined = ~np.isnan(values)
  with np.errstate(invalid="ignore"):
    spread = np.nanmax(np.where(defined, values, -np.inf), axis=0) - np.nanmin(
        np.where(defined, values, np.inf), axis=0)
  return np.where(defined.sum(axis=0) >= 2, spread, np.nan)


def audit(statistics: Mapping[str, Statistic], labels: Sequence[str], order: Sequence[str],
          clusters: Sequence[Any], *, min_cases: int = MIN_CASES, samples: int = SAMPLES,
          seed: int = 0, confidence: float = CONFIDENCE) -> dict[str, Any]:
  """The audit of one field (module docstring): ``labels`` name each case's group
  (``group_labels``), ``order`` the groups, ``clusters`` each case's grouping unit; the first
  statistic is the headline (``worst_group``).

  Returns ``{"groups": [{"group", "cases", "clusters", "missing", "scored", "metrics": {name:
  {"value", "ci95"}} or None}, ...], "gap": {name: {"value", "ci95", "worst", "best"} or None},
  "worst_group", "equalized_odds_difference": {"value", "ci95", "tpr_difference",
  "fpr_difference"} or None}`` (no such key without both malignant statistics).
  """
  if min_cases < 1:
    raise ValueError(f"--min-cases must be >= 1, got {min_cases}")
  if samples < 1:
    raise ValueError(f"--samples must be >= 1, got {samples}")
  labels, clusters = np.asarray(labels, dtype=object), np.asarray(clusters, dtype=object)
  names = list(statistics)
  groups, members = [], []
  for name in order:
    cases = np.flatnonzero(labels == name)
    entry = {"group": name, "cases": int(len(cases)),
             "clusters": int(len(set(clusters[cases]))), "missing": name == MISSING,
             "scored": len(cases) >= min_cases, "metrics": None}
    groups.append(entry)
    if entry["scored"]:
      members.append(cases)
  scored = [g for g in groups if g["scored"]]
  result: dict[str, Any] = {"groups": groups, "gap": dict.fromkeys(names),
                            "worst_group": None}
  if SENSITIVITY in statistics and SPECIFICITY in statistics:
    result["equalized_odds_difference"] = None
  if not scored:
    return result
  observed, resampled = _scored_groups(statistics, members, clusters, len(labels), samples,
                                       seed)
  for g, entry in enumerate(scored):
    entry["metrics"] = {name: {"value": float(observed[g, m]),
                               "ci95": percentile_interval(resampled[g, m], confidence)}
                        for m, name in enumerate(names)}
  population = np.array([not entry["missing"] for entry in scored])
  observed, resampled = observed[population], resampled[population]
  kept = [entry["group"] for entry in scored if not entry["missing"]]
  for m, name in enumerate(names):
    values = observed[:, m]
    if np.sum(~np.isnan(values)) < 2:
      continue
    sign = -1 if name in LOWER_IS_BETTER else 1
    ranked = sorted((v * sign, k) for k, v in zip(kept, values) if not np.isnan(v))
    result["gap"][name] = {"value": float(_spread(values[:, None])[0]),
                           "ci95": percentile_interval(_spread(resampled[:, m]), confidence),
                           "worst": ranked[0][1], "best": ranked[-1][1]}
  if result["gap"][names[0]] is not None:
    result["worst_group"] = result["gap"][names[0]]["worst"]
  if "equalized_odds_difference" in result:
    rates = [names.index(SENSITIVITY), names.index(SPECIFICITY)]
    both = ~np.isnan(observed[:, rates]).any(axis=1)  # groups with positives and negatives
    if both.sum() >= 2:
      tpr, tnr = (_spread(observed[both][:, r, None])[0] for r in rates)
      resampled_odds = np.fmax(*(_spread(resampled[both][:, r]) for r in rates))
      result["equalized_odds_difference"] = {
          "value": float(max(tpr, tnr)), "ci95": percentile_interval(resampled_odds, confidence),
          "tpr_difference": float(tpr), "fpr_difference": float(tnr)}
  return result
