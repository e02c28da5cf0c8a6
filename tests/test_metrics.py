"""Metrics: golden values, summability (batches, devices, padding), and oracles.

Oracles: scikit-learn (classification metrics, confusion matrix, ROC AUC, ROC curves; F1/Jaccard/
recall on flattened and per-image masks), the ISIC 2024 scorer's pAUC (written out here), scipy's
directed_hausdorff, the ISIC challenge scorer (``isic-challenge-scoring``) and MONAI's DiceMetric /
Hausdorff distance (torch-marked); each skips when its package is absent. Oracle checks print
"ORACLE <name> max|diff| <value>" (``pytest -s``).
"""
from __future__ import annotations

import operator
import warnings

import jax
import numpy as np
import pytest
from sklearn import metrics as skm

from flaxderm import metrics

SEG_KEYS = {"dice/per_image", "dice/micro", "jaccard/per_image", "jaccard/micro",
            "jaccard/isic_thresholded", "pixel_accuracy/micro", "sensitivity/micro", "specificity/micro"}
CLS_KEYS = {"accuracy", "balanced_accuracy", "cohen_kappa", "f1/macro", "precision/macro",
            "sensitivity/macro", "specificity/macro"}


def _close(name: str, got, want, atol: float = 1e-6):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  print(f"ORACLE {name} max|diff| {np.max(np.abs(got - want)):.3g}")
  np.testing.assert_allclose(got, want, atol=atol, rtol=0, err_msg=name)


def _noisy_masks(n: int = 8, size: int = 16, c: int = 1, seed: int = 0):
  """Truth: random rectangles (two lesion-free images); logits: the truth with per-image noise
  rates from 2% to 45%, so per-image Jaccard falls on both sides of ISIC's 0.65."""
  rng = np.random.default_rng(seed)
  k = max(c, 2)
  truth = np.zeros((n, size, size), np.int32)
  for i in range(2, n):
    for cls in range(1, k):
      r, q = rng.integers(0, size - 4, 2)
      truth[i, r:r + rng.integers(3, size - r), q:q + rng.integers(3, size - q)] = cls
  pred = truth.copy()
  for i, rate in enumerate(np.linspace(0.02, 0.45, n)):
    flip = rng.random((size, size)) < rate
    pred[i][flip] = rng.integers(0, k, flip.sum())
  pred[1] = 0  # a lesion-free image predicted lesion-free: the "empty hit" case
  if c == 1:
    logits = np.where(pred == 1, 2.0, -2.0)[..., None]
  else:
    logits = 3.0 * np.eye(c)[pred] + rng.normal(0, 0.1, pred.shape + (c,))
  return logits.astype(np.float32), truth, pred


# ------------------------------------------------------------------------------------------------
# Golden values.
# ------------------------------------------------------------------------------------------------


def test_segmentation_golden():
  # A: truth [[1,1],[0,0]], prediction [[1,0],[0,0]] -> tp 1, fp 0, fn 1, tn 2: Dice 2/3, Jaccard 1/2.
  # B: truth empty, prediction [[0,0],[0,1]] -> fp 1, tn 3.   C: both empty (an "empty hit").
  truth = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [0, 0]]], np.int32)
  pred = np.array([[[1, 0], [0, 0]], [[0, 0], [0, 1]], [[0, 0], [0, 0]]])
  stats = metrics.segmentation_stats(np.where(pred, 5.0, -5.0)[..., None], truth)
  got = metrics.summarize_segmentation(stats)
  assert SEG_KEYS <= set(got)
  assert got["dice/per_image"] == pytest.approx(2 / 3)  # ignore_empty: A only
  assert got["jaccard/per_image"] == pytest.approx(1 / 2)
  assert got["jaccard/isic_thresholded"] == pytest.approx(1 / 3)  # A: 0.5 < 0.65 -> 0, B: 0, C: 1
  # Micro: tp 1, fp 1, fn 1, tn 2 + 3 + 4 = 9.
  assert got["dice/micro"] == pytest.approx(2 / 4)
  assert got["jaccard/micro"] == pytest.approx(1 / 3)
  assert got["sensitivity/micro"] == pytest.approx(1 / 2)
  assert got["specificity/micro"] == pytest.approx(9 / 10)
  assert got["pixel_accuracy/micro"] == pytest.approx(10 / 12)
  # ISIC per-image means (undefined -> 1): sensitivity (1/2, 1, 1), specificity (1, 3/4, 1),
  # accuracy (3/4, 3/4, 1).
  assert got["sensitivity/per_image"] == pytest.approx(5 / 6)
  assert got["specificity/per_image"] == pytest.approx(11 / 12)
  assert got["pixel_accuracy/per_image"] == pytest.approx(5 / 6)
  assert got["count/images"] == 3 and got["count/empty_truth"] == 2
  # ignore_empty=False: B scores 0, C scores 1 -> Dice (2/3 + 0 + 1) / 3, Jaccard (1/2 + 0 + 1) / 3.
  got = metrics.summarize_segmentation(stats, ignore_empty=False)
  assert got["dice/per_image"] == pytest.approx(5 / 9)
  assert got["jaccard/per_image"] == pytest.approx(1 / 2)
  # No lesion anywhere, none predicted: undefined ratios are NaN, not 0 or 1.
  empty = metrics.summarize_segmentation(metrics.segmentation_stats(-np.ones((1, 2, 2, 1)), truth[1:2]))
  assert np.isnan(empty["dice/per_image"]) and np.isnan(empty["dice/micro"])


def test_classification_golden():
  # Truth (0, 0, 0, 1), prediction (0, 0, 1, 1): confusion [[2, 1], [0, 1]].
  # accuracy 3/4; recalls (2/3, 1) -> balanced 5/6; precisions (1, 1/2); F1 (4/5, 2/3);
  # specificity (1, 2/3); kappa: p_o = 3/4, p_e = (3*2 + 1*2) / 16 = 1/2 -> (3/4 - 1/2) / (1/2) = 1/2.
  logits = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], np.float32)
  stats = metrics.classification_stats(logits, np.array([0, 0, 0, 1]), num_classes=2)
  np.testing.assert_array_equal(stats["confusion"], [[2, 1], [0, 1]])
  got = metrics.summarize_classification(stats, class_names=["nevus", "melanoma"])
  assert CLS_KEYS <= set(got)
  assert got["accuracy"] == pytest.approx(3 / 4)
  assert got["balanced_accuracy"] == pytest.approx(5 / 6)
  assert got["precision/macro"] == pytest.approx(3 / 4)
  assert got["f1/macro"] == pytest.approx((4 / 5 + 2 / 3) / 2)
  assert got["specificity/per_class/melanoma"] == pytest.approx(2 / 3)
  assert got["cohen_kappa"] == pytest.approx(1 / 2)
  # The same with (N, 1) sigmoid logits.
  binary = metrics.classification_stats(logits[:, 1:] - logits[:, :1], np.array([0, 0, 0, 1]),
                                        num_classes=2)
  np.testing.assert_array_equal(binary["confusion"], stats["confusion"])
  table = metrics.format_confusion_matrix(stats, ["nevus", "melanoma"])
  assert table.splitlines()[1].split() == ["nevus", "2", "1", "3", "0.667"]


def test_hausdorff_golden():
  # Two 3x3 squares, the second moved 2 pixels right: boundary distances are 0 or 2 each way, with
  # 2 for the 3 pixels of the far column of each square (3 of 8 boundary pixels): HD = 2, and the
  # 95th percentile (linear interpolation) is 2 as well.
  a = np.zeros((8, 8), bool)
  b = np.zeros((8, 8), bool)
  a[2:5, 1:4] = True
  b[2:5, 3:6] = True
  assert metrics.hausdorff_distance(a, b, percentile=None) == pytest.approx(2.0)
  assert metrics.hausdorff_distance(a, b) == pytest.approx(2.0)
  assert metrics.hausdorff_distance(a, a) == 0.0
  both_empty, one_empty = metrics.hausdorff_distance(np.stack([a * 0, a * 0]), np.stack([a * 0, a]))
  assert np.isnan(both_empty) and np.isinf(one_empty)


# ------------------------------------------------------------------------------------------------
# Summability: batches, devices, padding.
# ------------------------------------------------------------------------------------------------


def _assert_stats_equal(a, b):
  for key in a:
    np.testing.assert_allclose(np.asarray(a[key], np.float64), np.asarray(b[key], np.float64),
                               rtol=1e-6, err_msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("c", [1, 3])
def test_segmentation_stats_merge_and_padding(c):
  logits, truth, _ = _noisy_masks(c=c, seed=1)
  whole = metrics.segmentation_stats(logits, truth)
  # Batches, merged on device (tree add) and on the host (numpy, 64-bit).
  parts = [metrics.segmentation_stats(logits[i:i + 3], truth[i:i + 3]) for i in range(0, 8, 3)]
  on_device = parts[0]
  for p in parts[1:]:
    on_device = jax.tree.map(operator.add, on_device, p)
  _assert_stats_equal(on_device, whole)
  _assert_stats_equal(jax.jit(metrics.merge)(parts[0], parts[1]),
                      metrics.segmentation_stats(logits[:6], truth[:6]))
  on_host = None
  for p in parts:
    on_host = metrics.merge(on_host, jax.device_get(p))
  assert on_host["tp"].dtype == np.int64
  _assert_stats_equal(on_host, whole)
  # "Devices": a named-axis psum over 4 shards, as inside pmap / shard_map.
  shards = jax.vmap(lambda z, y: jax.lax.psum(metrics.segmentation_stats(z, y), "d"), axis_name="d")(
      logits.reshape(4, 2, *logits.shape[1:]), truth.reshape(4, 2, *truth.shape[1:]))
  _assert_stats_equal(jax.tree.map(lambda x: x[0], shards), whole)
  # Padding examples (valid 0) contribute nothing, whatever they hold.
  padded = metrics.segmentation_stats(np.concatenate([logits, logits[:3] + 1]),
                                      np.concatenate([truth, truth[:3] * 0]),
                                      valid=np.r_[np.ones(8), np.zeros(3)])
  _assert_stats_equal(padded, whole)
  # Per-pixel valid: invalid pixels (labelled 255 here) are left out.
  pixel_valid = np.ones(truth.shape, np.float32)
  pixel_valid[:, :4] = 0
  marked = np.where(pixel_valid > 0, truth, 255)
  _assert_stats_equal(metrics.segmentation_stats(logits, marked, valid=pixel_valid),
                      metrics.segmentation_stats(logits[:, 4:], truth[:, 4:]))


def test_classification_stats_merge_and_padding():
  rng = np.random.default_rng(2)
  logits, labels = rng.normal(size=(20, 4)).astype(np.float32), rng.integers(0, 4, 20)
  whole = metrics.classification_stats(logits, labels, num_classes=4)
  stats = metrics.classification_stats  # jitted, num_classes static
  merged = metrics.merge(stats(logits[:7], labels[:7], num_classes=4),
                         stats(logits[7:], labels[7:], num_classes=4))
  np.testing.assert_array_equal(merged["confusion"], whole["confusion"])
  padded = stats(np.concatenate([logits, logits[:5]]), np.r_[labels, labels[:5]], num_classes=4,
                 valid=np.r_[np.ones(20), np.zeros(5)])
  np.testing.assert_array_equal(padded["confusion"], whole["confusion"])


def test_bad_inputs():
  with pytest.raises(ValueError, match="labels must have"):
    metrics.segmentation_stats(np.zeros((2, 4, 4, 1)), np.zeros((2, 4, 3), np.int32))
  with pytest.raises(ValueError, match="valid shape"):
    metrics.segmentation_stats(np.zeros((2, 4, 4, 1)), np.zeros((2, 4, 4), np.int32), valid=np.ones(3))
  with pytest.raises(ValueError, match=r"expected logits \(N, 3\)"):
    metrics.classification_stats(np.zeros((2, 4)), np.zeros(2, np.int32), num_classes=3)
  with pytest.raises(ValueError, match="class_names"):
    metrics.summarize_classification({"confusion": np.eye(3)}, class_names=["a", "b"])


# ------------------------------------------------------------------------------------------------
# Oracles: scikit-learn, scipy.
# ------------------------------------------------------------------------------------------------


def test_binary_segmentation_matches_sklearn():
  logits, truth, pred = _noisy_masks(seed=3)
  got = metrics.summarize_segmentation(metrics.segmentation_stats(logits, truth))
  y, p = truth.ravel(), pred.ravel()
  _close("seg dice/micro vs sklearn f1_score", got["dice/micro"], skm.f1_score(y, p))
  _close("seg jaccard/micro vs sklearn jaccard_score", got["jaccard/micro"], skm.jaccard_score(y, p))
  _close("seg sensitivity/micro vs sklearn recall", got["sensitivity/micro"], skm.recall_score(y, p))
  _close("seg specificity/micro vs sklearn recall(pos=0)", got["specificity/micro"],
         skm.recall_score(y, p, pos_label=0))
  _close("seg precision/micro vs sklearn", got["precision/micro"], skm.precision_score(y, p))
  _close("seg pixel_accuracy/micro vs sklearn", got["pixel_accuracy/micro"], skm.accuracy_score(y, p))
  nonempty = [i for i in range(len(truth)) if truth[i].any()]
  _close("seg dice/per_image (ignore_empty) vs sklearn", got["dice/per_image"],
         np.mean([skm.f1_score(truth[i].ravel(), pred[i].ravel()) for i in nonempty]))
  _close("seg jaccard/per_image (ignore_empty) vs sklearn", got["jaccard/per_image"],
         np.mean([skm.jaccard_score(truth[i].ravel(), pred[i].ravel()) for i in nonempty]))
  # ignore_empty=False: an empty-truth image scores 1 iff its prediction is empty (zero_division=1).
  got = metrics.summarize_segmentation(metrics.segmentation_stats(logits, truth), ignore_empty=False)
  _close("seg dice/per_image (all) vs sklearn", got["dice/per_image"],
         np.mean([skm.f1_score(t.ravel(), q.ravel(), zero_division=1.0) for t, q in zip(truth, pred)]))
  per_image = [skm.jaccard_score(t.ravel(), q.ravel(), zero_division=1.0) for t, q in zip(truth, pred)]
  _close("seg jaccard/isic_thresholded vs sklearn per-image", got["jaccard/isic_thresholded"],
         np.mean([j if j >= 0.65 else 0.0 for j in per_image]))
  assert 0 < got["jaccard/isic_thresholded"] < got["jaccard/per_image"]  # the threshold bit


def test_multiclass_segmentation_matches_sklearn():
  logits, truth, pred = _noisy_masks(c=3, seed=4)
  stats = metrics.segmentation_stats(logits, truth)
  got = metrics.summarize_segmentation(stats, class_names=["bg", "a", "b"])
  y, p = truth.ravel(), pred.ravel()
  _close("seg 3-class dice/micro vs sklearn f1 micro labels=[1,2]", got["dice/micro"],
         skm.f1_score(y, p, labels=[1, 2], average="micro"))
  _close("seg 3-class jaccard/micro vs sklearn", got["jaccard/micro"],
         skm.jaccard_score(y, p, labels=[1, 2], average="micro"))
  _close("seg 3-class per-class dice/micro vs sklearn", [got["dice/micro/a"], got["dice/micro/b"]],
         skm.f1_score(y, p, labels=[1, 2], average=None))
  _close("seg 3-class pixel_accuracy vs sklearn", got["pixel_accuracy/micro"], skm.accuracy_score(y, p))
  with_bg = metrics.summarize_segmentation(stats, include_background=True)
  _close("seg 3-class dice/micro with background vs sklearn", with_bg["dice/micro"],
         skm.f1_score(y, p, labels=[0, 1, 2], average="micro"))


def _random_classification(n=300, k=5, seed=5):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, k, n)
  logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[labels]
  return logits.astype(np.float32), labels


@pytest.mark.parametrize("case", ["all_present", "absent_classes"])
def test_classification_matches_sklearn(case):
  logits, labels = _random_classification(seed=6)
  k = logits.shape[1]
  if case == "absent_classes":
    # Class 3 never true but sometimes predicted; class 4 neither true nor predicted.
    labels = np.where(labels >= 3, 0, labels)
    logits[:, 4] = -10.0
  pred = logits.argmax(1)
  got = metrics.summarize_classification(metrics.classification_stats(logits, labels, num_classes=k))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # scikit-learn warns about the absent classes
    _close(f"cls accuracy ({case}) vs sklearn", got["accuracy"], skm.accuracy_score(labels, pred))
    _close(f"cls balanced_accuracy ({case}) vs sklearn", got["balanced_accuracy"],
           skm.balanced_accuracy_score(labels, pred))
    _close(f"cls cohen_kappa ({case}) vs sklearn", got["cohen_kappa"], skm.cohen_kappa_score(labels, pred))
    for ours, theirs in (("precision", skm.precision_score), ("sensitivity", skm.recall_score),
                         ("f1", skm.f1_score)):
      _close(f"cls {ours}/macro ({case}) vs sklearn", got[f"{ours}/macro"],
             theirs(labels, pred, average="macro", zero_division=0))
      _close(f"cls {ours}/per_class ({case}) vs sklearn",
             [got[f"{ours}/per_class/class_{c}"] for c in range(k)],
             theirs(labels, pred, labels=range(k), average=None, zero_division=0))
    mcm = skm.multilabel_confusion_matrix(labels, pred)  # over the classes that occur, as ours
    _close(f"cls specificity/macro ({case}) vs sklearn multilabel_confusion_matrix",
           got["specificity/macro"], np.mean(mcm[:, 0, 0] / (mcm[:, 0, 0] + mcm[:, 0, 1])))
  np.testing.assert_array_equal(metrics.classification_stats(logits, labels, num_classes=k)["confusion"],
                                skm.confusion_matrix(labels, pred, labels=range(k)))


def test_roc_auc_matches_sklearn():
  logits, labels = _random_classification(seed=7)
  probs = np.asarray(jax.nn.softmax(logits))
  got = metrics.roc_auc(probs, labels)
  _close("auc/macro_ovr vs sklearn roc_auc_score(ovr, macro)", got["auc/macro_ovr"],
         skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
  _close("auc/per_class vs sklearn", [got[f"auc/per_class/class_{c}"] for c in range(5)],
         skm.roc_auc_score(labels, probs, multi_class="ovr", average=None))
  # Binary, with ties (scores rounded to 1 decimal) and padding left out through valid.
  y = (labels == 0).astype(int)
  scores = np.round(probs[:, 0], 1)
  valid = np.r_[np.ones(250), np.zeros(50)]
  _close("auc/binary with ties vs sklearn", metrics.roc_auc(scores, y, valid=valid)["auc/binary"],
         skm.roc_auc_score(y[:250], scores[:250]))
  assert np.isnan(metrics.roc_auc(scores, np.zeros_like(y))["auc/binary"])


def _isic2024_pauc(labels: np.ndarray, scores: np.ndarray, min_tpr: float) -> float:
  """The ISIC 2024 (Kaggle) scorer's pAUC: labels and scores flipped, so the band above TPR
  min_tpr becomes the band below FPR 1 - min_tpr, whose area scikit-learn integrates."""
  max_fpr = 1 - min_tpr
  fpr, tpr, _ = skm.roc_curve(1 - labels, -scores)
  stop = np.searchsorted(fpr, max_fpr, "right")
  tpr = np.append(tpr[:stop], np.interp(max_fpr, fpr[stop - 1:stop + 1], tpr[stop - 1:stop + 1]))
  fpr = np.append(fpr[:stop], max_fpr)
  return skm.auc(fpr, tpr)


def _binary_cases():
  """(name, labels, scores): continuous scores, heavy ties, a perfect and a reversed ranking."""
  rng = np.random.default_rng(11)
  labels = (rng.random(400) < 0.2).astype(int)
  scores = rng.normal(labels * 1.2, 1.0)
  return [("continuous", labels, scores), ("ties", labels, np.round(scores)),
          ("perfect", labels, labels + rng.random(400) * 0.5),
          ("reversed", labels, -scores)]


@pytest.mark.parametrize("min_tpr", [0.8, 0.5, 0.95])
def test_partial_auc_above_tpr_matches_isic2024_and_isic_scorer(min_tpr):
  pd = pytest.importorskip("pandas")
  isic_metrics = pytest.importorskip("isic_challenge_scoring.metrics")
  for name, labels, scores in _binary_cases():
    got = metrics.partial_auc_above_tpr(scores, labels, min_tpr=min_tpr)
    _close(f"pAUC above TPR {min_tpr} ({name}) vs the ISIC 2024 scorer", got,
           _isic2024_pauc(labels, scores, min_tpr), atol=1e-12)
    # isic-challenge-scoring integrates the same part of the curve down to TPR 0: the rectangle
    # from its left end (FPR where the curve crosses min_tpr, from scikit-learn's curve) is extra.
    fpr, tpr, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
    i = np.searchsorted(tpr, min_tpr, side="left")
    crossing = np.interp(min_tpr, tpr[i - 1:i + 1], fpr[i - 1:i + 1])
    theirs = isic_metrics.auc_above_sensitivity(pd.Series(labels.astype(float)),
                                                pd.Series(scores), pd.Series(np.ones(len(labels))),
                                                min_tpr)
    _close(f"pAUC above TPR {min_tpr} ({name}) vs isic-challenge-scoring auc_above_sensitivity",
           got, theirs - min_tpr * (1 - crossing), atol=1e-12)
  perfect = _binary_cases()[2]
  assert metrics.partial_auc_above_tpr(perfect[2], perfect[1], min_tpr=min_tpr) == pytest.approx(
      1 - min_tpr)


def test_partial_auc_inputs():
  labels = np.array([0, 1, 0, 1, 1, 0])
  scores = np.array([0.1, 0.9, 0.4, 0.35, 0.8, 0.2])
  two_columns = np.stack([1 - scores, scores], axis=1)
  padded = metrics.partial_auc_above_tpr(np.r_[scores, 0.99], np.r_[labels, 0],
                                         valid=np.r_[np.ones(6), 0])
  assert metrics.partial_auc_above_tpr(two_columns, labels) == padded == pytest.approx(
      _isic2024_pauc(labels, scores, 0.8))
  assert metrics.partial_auc_above_tpr(scores, labels, min_tpr=0) == pytest.approx(
      skm.roc_auc_score(labels, scores))
  assert np.isnan(metrics.partial_auc_above_tpr(scores, np.ones(6)))
  with pytest.raises(ValueError, match=r"min_tpr must be in \[0, 1\), got 1.0"):
    metrics.partial_auc_above_tpr(scores, labels, min_tpr=1.0)
  with pytest.raises(ValueError, match=r"expected binary scores"):
    metrics.partial_auc_above_tpr(np.ones((6, 3)), labels)


@pytest.mark.parametrize("specificity", [0.0, 0.5, 0.8, 0.9, 0.95, 1.0])
def test_sensitivity_at_specificity_matches_sklearn_roc_curve(specificity):
  for name, labels, scores in _binary_cases():
    fpr, tpr, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
    want = tpr[1 - fpr >= specificity - 1e-12].max()
    _close(f"sensitivity at specificity {specificity} ({name}) vs sklearn roc_curve",
           metrics.sensitivity_at_specificity(scores, labels, specificity=specificity), want,
           atol=0)
  # Threshold 0.5 passes 4 of 5 negatives: specificity 1/5 exactly, though 1 - 4/5 < 0.2 in floats.
  labels, scores = np.r_[np.zeros(5), np.ones(2)], np.r_[np.arange(5), 0.5, 9]
  assert metrics.sensitivity_at_specificity(scores, labels, specificity=0.2) == 1.0
  assert metrics.sensitivity_at_specificity(scores, labels, specificity=0.21) == 0.5


def test_hausdorff_matches_scipy():
  from scipy.spatial.distance import directed_hausdorff
  _, truth, pred = _noisy_masks(seed=8)
  hd = metrics.hausdorff_distance(pred[2:] == 1, truth[2:] == 1, percentile=None)
  want = []
  for p, t in zip(pred[2:] == 1, truth[2:] == 1):
    ep, et = np.argwhere(metrics._edges(p)), np.argwhere(metrics._edges(t))
    want.append(max(directed_hausdorff(ep, et)[0], directed_hausdorff(et, ep)[0]))
  _close("hausdorff (max) vs scipy directed_hausdorff on boundaries", hd, want)


# ------------------------------------------------------------------------------------------------
# Oracles: the ISIC challenge scorer, MONAI.
# ------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:The inplace keyword")  # inside the scorer, with pandas 3
def test_segmentation_matches_isic_scorer():
  isic_seg = pytest.importorskip("isic_challenge_scoring.segmentation")
  from isic_challenge_scoring.load_image import ImagePair
  from pathlib import Path
  logits, truth, pred = _noisy_masks(n=10, seed=9)
  pairs = []
  for i, (t, q) in enumerate(zip(truth, pred)):
    pair = ImagePair(truth_file=Path(f"ISIC_{i:07d}_segmentation.png"))
    pair.truth_image, pair.prediction_image = (t * 255).astype(np.uint8), (q * 255).astype(np.uint8)
    pair.image_id = f"ISIC_{i:07d}"
    pairs.append(pair)
  want = isic_seg.SegmentationScore(pairs).macro_average
  got = metrics.summarize_segmentation(metrics.segmentation_stats(logits, truth), ignore_empty=False)
  for ours, theirs in (("jaccard/isic_thresholded", "threshold_jaccard"), ("jaccard/per_image", "jaccard"),
                       ("dice/per_image", "dice"), ("sensitivity/per_image", "sensitivity"),
                       ("specificity/per_image", "specificity"), ("pixel_accuracy/per_image", "accuracy")):
    _close(f"{ours} vs isic-challenge-scoring {theirs}", got[ours], want[theirs])


def test_classification_matches_isic_scorer():
  pd = pytest.importorskip("pandas")
  isic_metrics = pytest.importorskip("isic_challenge_scoring.metrics")
  logits, labels = _random_classification(seed=10)
  probs = np.asarray(jax.nn.softmax(logits))
  names = ["MEL", "NV", "BCC", "AKIEC", "BKL"]
  truth = pd.DataFrame(np.eye(5)[labels], columns=names)
  prediction = pd.DataFrame(probs, columns=names)
  weights = pd.Series(np.ones(len(labels)))
  got = metrics.summarize_classification(metrics.classification_stats(logits, labels, num_classes=5))
  _close("balanced_accuracy vs isic-challenge-scoring", got["balanced_accuracy"],
         isic_metrics.balanced_multiclass_accuracy(truth, prediction, weights))
  _close("auc/macro_ovr vs isic-challenge-scoring mean per-category AUC",
         metrics.roc_auc(probs, labels)["auc/macro_ovr"],
         np.mean([isic_metrics.auc(truth[c], prediction[c], weights) for c in names]))


@pytest.mark.torch
@pytest.mark.parametrize("c,include_background", [(1, False), (3, False), (3, True)])
@pytest.mark.parametrize("ignore_empty", [True, False])
def test_dice_metric_matches_monai(c, include_background, ignore_empty):
  torch = pytest.importorskip("torch")
  monai_metrics = pytest.importorskip("monai.metrics")
  logits, truth, pred = _noisy_masks(c=c, seed=11)
  k = max(c, 2)
  onehot = lambda x: torch.from_numpy(np.moveaxis(np.eye(k)[x], -1, 1))
  dice = monai_metrics.DiceMetric(include_background=include_background, reduction="mean",
                                  ignore_empty=ignore_empty)
  iou = monai_metrics.MeanIoU(include_background=include_background, reduction="mean",
                              ignore_empty=ignore_empty)
  acc = None
  for s in (slice(0, 5), slice(5, 8)):  # two batches, accumulated by both
    dice(y_pred=onehot(pred[s]), y=onehot(truth[s]))
    acc = metrics.merge(acc, jax.device_get(metrics.segmentation_stats(logits[s], truth[s])))
    iou(y_pred=onehot(pred[s]), y=onehot(truth[s]))
  got = metrics.summarize_segmentation(acc, ignore_empty=ignore_empty, include_background=include_background)
  case = f"C={c} bg={include_background} ignore_empty={ignore_empty}"
  _close(f"dice/per_image {case} vs MONAI DiceMetric", got["dice/per_image"], dice.aggregate().item())
  _close(f"jaccard/per_image {case} vs MONAI MeanIoU", got["jaccard/per_image"], iou.aggregate().item())


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:monai.metrics.utils get_mask_edges")
def test_hausdorff95_matches_monai():
  torch = pytest.importorskip("torch")
  monai_metrics = pytest.importorskip("monai.metrics")
  _, truth, pred = _noisy_masks(seed=12, size=24)
  onehot = lambda x: torch.from_numpy(np.moveaxis(np.eye(2)[x], -1, 1))
  want = monai_metrics.compute_hausdorff_distance(onehot(pred[2:]), onehot(truth[2:]), percentile=95)
  got = metrics.hausdorff_distance(pred[2:], truth[2:])
  _close("hausdorff95 vs MONAI compute_hausdorff_distance", got, want.numpy()[:, 0], atol=1e-5)
