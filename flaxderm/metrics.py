"""Evaluation metrics: one jit-friendly core of counts, then named reductions on the host.

Device side (pure, jit-friendly): ``segmentation_stats`` and ``classification_stats`` turn a batch
into a dict of int32/float32 arrays ("stats") that is *summable*: stats of different batches, hosts
or devices combine with ``jax.tree.map(operator.add, a, b)`` (``merge``), with ``jax.lax.psum``
inside ``pmap``/``shard_map``, and under ``jit`` on a sharded global batch the sums are global
already. Per-image scores are kept as sums plus counts, so the merged stats give exactly the
per-image mean over the whole set. Padding examples (``valid == 0``) contribute nothing.

Host side: ``summarize_segmentation`` / ``summarize_classification`` turn stats into
``dict[str, float]`` whose keys name the reduction ("dice/per_image", "jaccard/micro", ...);
``roc_auc``, ``partial_auc_above_tpr`` (ISIC 2024's pAUC), ``sensitivity_at_specificity``,
``hausdorff_distance``, ``calibration``, ``reliability_bins`` and ``format_confusion_matrix`` work
on numpy arrays outside jit (they need sorting, binning or distance transforms over the whole
set).

Counts are int32: one set may hold up to 2^31 pixels per class (about 8000 images of 512x512).
``merge`` promotes numpy (host) inputs to int64/float64, so accumulate on the host
(``merge(acc, jax.device_get(stats))``) for larger sets.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage, stats as scipy_stats

Array = jax.Array
Stats = dict[str, Any]

# ISIC 2018 Task 1 score: per-image Jaccard, set to 0 below this value, then averaged.
ISIC_JACCARD_THRESHOLD = 0.65


def merge(a: Stats | None, b: Stats) -> Stats:
  """Sum of two stats pytrees (``None`` acts as zero, to start an accumulator).

  Device arrays add as they are (usable under jit); numpy inputs are promoted to int64 / float64
  first, so host-side accumulation over a large set cannot overflow int32 pixel counts.
  """
  if a is None:
    return b

  def add(x, y):
    if isinstance(x, jax.Array) and isinstance(y, jax.Array):
      return x + y
    x, y = np.asarray(x), np.asarray(y)
    return x.astype(np.promote_types(x.dtype, np.int64)) + y

  return jax.tree.map(add, a, b)


def _valid_mask(fn: str, valid: Array | None, labels: Array) -> Array:
  """``valid`` (``(N,)`` per example or a per-pixel prefix shape of ``labels``) as a bool mask."""
  if valid is None:
    return jnp.ones(labels.shape, bool)
  valid = jnp.asarray(valid)
  if valid.ndim > labels.ndim or valid.shape != labels.shape[:valid.ndim]:
    raise ValueError(f"{fn}: valid shape {tuple(valid.shape)} must be (N,) or a per-pixel prefix of "
                     f"the labels' shape {tuple(labels.shape)}")
  valid = valid.reshape(valid.shape + (1,) * (labels.ndim - valid.ndim)) > 0
  return jnp.broadcast_to(valid, labels.shape)


def _ratio(num: Array, den: Array, empty: float) -> Array:
  """``num / den`` in float32, ``empty`` where ``den == 0``."""
  num, den = num.astype(jnp.float32), den.astype(jnp.float32)
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), empty)


# ------------------------------------------------------------------------------------------------
# Segmentation.
# ------------------------------------------------------------------------------------------------


def predict_masks(logits: Array, *, threshold: float = 0.5) -> Array:
  """Predicted class index per pixel: ``sigmoid(z) > threshold`` for C == 1, argmax otherwise."""
  if logits.shape[-1] == 1:
    return (jax.nn.sigmoid(logits[..., 0].astype(jnp.float32)) > threshold).astype(jnp.int32)
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


@jax.jit
def segmentation_stats(logits: Array, labels: Array, *, valid: Array | None = None,
                       threshold: float = 0.5) -> Stats:
  """Summable per-class segmentation counts and per-image score sums for one batch.

  logits: ``(N, H, W, C)``; C == 1 is a sigmoid output thresholded at ``threshold`` (probability),
    C >= 2 a softmax output (argmax). Stats cover every class id ``0..K-1``, ``K = max(C, 2)``
    (background included); which are reported is chosen in ``summarize_segmentation``.
  labels: int ``(N, H, W)`` class ids. A label outside ``0..K-1`` on a valid pixel counts as no
    class (only its prediction counts, as a false positive); mark such pixels invalid instead.
  valid: ``(N,)`` example weights (> 0 means counted; padding = 0) or a per-pixel ``(N, H, W)`` mask;
    an image counts when any of its pixels is valid.

  Returns arrays (``(K,)`` unless noted): ``tp fp fn tn`` pixel totals (int32, micro); ``num_images``
  (scalar); ``num_nonempty`` images whose truth has the class; ``num_empty_hits`` images where the
  class is absent from truth and prediction; ``dice_sum``, ``jaccard_sum``,
  ``jaccard_thresholded_sum`` per-image scores summed over the non-empty images;
  ``sensitivity_sum``, ``specificity_sum`` per-image values summed over all images (1 where
  undefined, as the ISIC scorer); ``pixel_accuracy_sum`` (scalar) per-image pixel accuracy summed;
  ``dice_image_mean_sum``, ``jaccard_image_mean_sum`` ``(2,)`` sums over images of each image's mean
  over the classes present in its truth, and ``num_scored_images`` ``(2,)`` the number of images with
  any (index 0: foreground classes, 1: all classes).
  """
  if logits.ndim < 2 or labels.shape != logits.shape[:-1]:
    raise ValueError(f"segmentation_stats: labels must have the logits' shape without the class "
                     f"axis: logits {tuple(logits.shape)}, labels {tuple(labels.shape)}")
  k = max(logits.shape[-1], 2)
  v = _valid_mask("segmentation_stats", valid, labels)
  pred = jax.nn.one_hot(predict_masks(logits, threshold=threshold), k, dtype=bool) & v[..., None]
  true = jax.nn.one_hot(labels, k, dtype=bool) & v[..., None]
  axes = tuple(range(1, labels.ndim))

  def count(x):
    return jnp.sum(x, axis=axes, dtype=jnp.int32)  # (N, K)

  tp, fp, fn = count(pred & true), count(pred & ~true), count(~pred & true)
  tn = count(~pred & ~true & v[..., None])
  image = jnp.any(v, axis=axes)  # (N,)
  nonempty = (tp + fn > 0) & image[:, None]
  empty_hit = (tp + fn + fp == 0) & image[:, None]
  dice = _ratio(2 * tp, 2 * tp + fp + fn, 0.0)
  jaccard = _ratio(tp, tp + fp + fn, 0.0)
  thresholded = jnp.where(jaccard >= ISIC_JACCARD_THRESHOLD, jaccard, 0.0)
  accuracy = _ratio(jnp.sum(tp, axis=1), jnp.sum(v, axis=axes), 0.0)

  def over(x, where):
    return jnp.sum(jnp.where(where, x, 0), axis=0)

  def image_means(score):
    # MONAI's "mean" with ignore_empty: each image's mean over the classes its truth has, then a
    # mean over images having any. Kept for both class selections (foreground only, all classes),
    # since the choice is made at summary time and an image mean cannot be rebuilt from class sums.
    sums, counts = [], []
    for first in (1, 0):
      has = nonempty[:, first:]
      n_has = jnp.sum(has, axis=1)
      mean = _ratio(jnp.sum(jnp.where(has, score[:, first:], 0.0), axis=1), n_has, 0.0)
      sums.append(jnp.sum(jnp.where(n_has > 0, mean, 0.0)))
      counts.append(jnp.sum(n_has > 0, dtype=jnp.int32))
    return jnp.stack(sums), jnp.stack(counts)

  dice_image_means, num_scored_images = image_means(dice)
  img = image[:, None]
  return {
      "tp": jnp.sum(tp, axis=0), "fp": jnp.sum(fp, axis=0),
      "fn": jnp.sum(fn, axis=0), "tn": jnp.sum(tn, axis=0),
      "num_images": jnp.sum(image, dtype=jnp.int32),
      "num_nonempty": jnp.sum(nonempty, axis=0, dtype=jnp.int32),
      "num_empty_hits": jnp.sum(empty_hit, axis=0, dtype=jnp.int32),
      "dice_sum": over(dice, nonempty),
      "jaccard_sum": over(jaccard, nonempty),
      "jaccard_thresholded_sum": over(thresholded, nonempty),
      "sensitivity_sum": over(_ratio(tp, tp + fn, 1.0), img),
      "specificity_sum": over(_ratio(tn, tn + fp, 1.0), img),
      "pixel_accuracy_sum": over(accuracy, image),
      "dice_image_mean_sum": dice_image_means,
      "jaccard_image_mean_sum": image_means(jaccard)[0],
      "num_scored_images": num_scored_images,
  }


def _div(num, den) -> float:
  """Host division that reports an undefined ratio as NaN instead of warning."""
  num, den = float(num), float(den)
  return num / den if den > 0 else float("nan")


def summarize_segmentation(stats: Mapping[str, Any], *, ignore_empty: bool = True,
                           include_background: bool = False,
                           class_names: Sequence[str] | None = None) -> dict[str, float]:
  """Named reductions of (merged) ``segmentation_stats``; host side.

  Classes: the foreground classes (ids 1..K-1; the lesion in the binary case) unless
  ``include_background``. With several scored classes each key pools them -- "micro" sums the
  counts over classes (scikit-learn's ``average="micro"`` over those labels), "per_image" averages
  each image's mean over its classes, then over images (MONAI's "mean" reduction) -- and per-class
  values are added under ``<metric>/<reduction>/<class name>``.

  Keys: ``dice/micro``, ``jaccard/micro``, ``sensitivity/micro``, ``specificity/micro``,
  ``precision/micro`` (pixel counts pooled over the set; NaN when undefined), ``pixel_accuracy/micro``
  (all classes), ``dice/per_image``, ``jaccard/per_image``, ``jaccard/isic_thresholded``,
  ``sensitivity/per_image``, ``specificity/per_image``, ``pixel_accuracy/per_image``,
  ``count/images``, ``count/empty_truth`` (scored (image, class) pairs with an empty truth).

  ignore_empty: as MONAI's ``DiceMetric``. True (the default): an image whose truth lacks the class
    is skipped by ``dice/per_image`` and ``jaccard/per_image`` (NaN if no image is left). False: it
    scores 1 when the prediction lacks the class too, else 0 -- MONAI's ``ignore_empty=False`` and
    the ISIC scorer's rule.
  ``jaccard/isic_thresholded`` and the per-image sensitivity/specificity/accuracy always follow the
  ISIC 2018 scorer (``isic-challenge-scoring``): every image counts, an undefined value scores 1, and
  a per-image Jaccard below 0.65 scores 0.
  """
  s = {key: np.asarray(value, np.float64) for key, value in stats.items()}
  k = s["tp"].shape[0]
  first = 0 if include_background else 1
  names = list(class_names) if class_names is not None else [f"class_{c}" for c in range(k)]
  if len(names) != k:
    raise ValueError(f"summarize_segmentation: {len(names)} class_names for stats of K = {k} classes")
  n = s["num_images"]
  empties = n - s["num_nonempty"]

  def reductions(sel: slice, single: bool) -> dict[str, float]:
    tp, fp, fn, tn = (s[key][sel].sum() for key in ("tp", "fp", "fn", "tn"))
    pairs = n * np.size(s["tp"][sel])
    if ignore_empty and single:
      per_image = lambda key: _div(s[key][sel].sum(), s["num_nonempty"][sel].sum())
    elif ignore_empty:
      variant = 1 - first
      per_image = lambda key: _div(s[key.replace("_sum", "_image_mean_sum")][variant],
                                   s["num_scored_images"][variant])
    else:  # every (image, class) pair is defined, so pooling them is the mean of image means
      per_image = lambda key: _div(s[key][sel].sum() + s["num_empty_hits"][sel].sum(), pairs)
    return {
        "dice/micro": _div(2 * tp, 2 * tp + fp + fn),
        "jaccard/micro": _div(tp, tp + fp + fn),
        "sensitivity/micro": _div(tp, tp + fn),
        "specificity/micro": _div(tn, tn + fp),
        "precision/micro": _div(tp, tp + fp),
        "dice/per_image": per_image("dice_sum"),
        "jaccard/per_image": per_image("jaccard_sum"),
        "jaccard/isic_thresholded": _div(s["jaccard_thresholded_sum"][sel].sum()
                                         + s["num_empty_hits"][sel].sum(), pairs),
        "sensitivity/per_image": _div(s["sensitivity_sum"][sel].sum(), pairs),
        "specificity/per_image": _div(s["specificity_sum"][sel].sum(), pairs),
    }

  out = reductions(slice(first, None), k - first == 1)
  out["pixel_accuracy/micro"] = _div(s["tp"].sum(), s["tp"].sum() + s["fn"].sum())
  out["pixel_accuracy/per_image"] = _div(s["pixel_accuracy_sum"], n)
  out["count/images"] = float(n)
  out["count/empty_truth"] = float(empties[first:].sum())
  if k - first > 1:
    for c in range(first, k):
      out.update({f"{key}/{names[c]}": value for key, value in reductions(slice(c, c + 1), True).items()})
  return out


# ------------------------------------------------------------------------------------------------
# Classification.
# ------------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames="num_classes")
def classification_stats(logits: Array, labels: Array, *, num_classes: int,
                         valid: Array | None = None) -> Stats:
  """``{"confusion": (K, K) int32}``, rows = true class, columns = predicted (scikit-learn's layout).

  logits: ``(N, num_classes)`` (argmax), or ``(N, 1)`` sigmoid logits when ``num_classes == 2``
  (predicted positive when ``z > 0``). Examples with ``valid == 0`` or a label outside
  ``0..num_classes-1`` are not counted.
  """
  if logits.ndim != 2 or labels.shape != logits.shape[:1] or logits.shape[1] not in (
      num_classes, 1 if num_classes == 2 else num_classes):
    raise ValueError(f"classification_stats: expected logits (N, {num_classes}) (or (N, 1) for 2 "
                     f"classes) and labels (N,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
  if logits.shape[1] == 1:
    pred = (logits[:, 0] > 0).astype(jnp.int32)
  else:
    pred = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  labels = labels.astype(jnp.int32)
  counted = _valid_mask("classification_stats", valid, labels) & (labels >= 0) & (labels < num_classes)
  index = jnp.where(counted, labels * num_classes + pred, 0)
  flat = jnp.zeros((num_classes * num_classes,), jnp.int32).at[index].add(counted.astype(jnp.int32))
  return {"confusion": flat.reshape(num_classes, num_classes)}


def summarize_classification(stats: Mapping[str, Any], *,
                             class_names: Sequence[str] | None = None) -> dict[str, float]:
  """Named reductions of a (merged) confusion matrix; host side. Matches scikit-learn's defaults.

  ``accuracy`` (micro: correct / all), ``balanced_accuracy`` (mean recall over the classes present
  in the truth: scikit-learn's ``balanced_accuracy_score`` and the ISIC 2018 Task 3 score),
  ``cohen_kappa`` (unweighted; NaN when chance agreement is 1), ``precision/macro``,
  ``sensitivity/macro`` (recall), ``specificity/macro`` (one-vs-rest), ``f1/macro``: unweighted means
  over the classes that occur in the truth or the predictions (scikit-learn's default ``labels``),
  a 0/0 per-class value counting as 0 (``zero_division=0``). Per-class values are under
  ``<metric>/per_class/<class name>`` (all classes), with ``support/per_class/<name>``;
  ``count/examples`` is the total.
  """
  cm = np.asarray(stats["confusion"], np.float64)
  k = cm.shape[0]
  names = list(class_names) if class_names is not None else [f"class_{c}" for c in range(k)]
  if len(names) != k:
    raise ValueError(f"summarize_classification: {len(names)} class_names for a {k}-class confusion matrix")
  n = cm.sum()
  tp, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
  fp, fn = predicted - tp, support - tp
  tn = n - tp - fp - fn

  def ratio(num, den):
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)

  per_class = {"precision": ratio(tp, predicted), "sensitivity": ratio(tp, support),
               "specificity": ratio(tn, tn + fp), "f1": ratio(2 * tp, support + predicted)}
  present = (support + predicted) > 0
  chance = float(np.sum(support * predicted)) / n**2 if n > 0 else float("nan")
  accuracy = _div(tp.sum(), n)
  out = {
      "accuracy": accuracy,
      "balanced_accuracy": (float(np.mean(per_class["sensitivity"][support > 0]))
                            if (support > 0).any() else float("nan")),
      "cohen_kappa": _div(accuracy - chance, 1.0 - chance) if chance < 1 else float("nan"),
      "count/examples": float(n),
  }
  for metric, values in per_class.items():
    out[f"{metric}/macro"] = float(np.mean(values[present])) if present.any() else float("nan")
    out.update({f"{metric}/per_class/{names[c]}": float(values[c]) for c in range(k)})
  out.update({f"support/per_class/{names[c]}": float(support[c]) for c in range(k)})
  return out


# ------------------------------------------------------------------------------------------------
# Host-side metrics (numpy / scipy, outside jit).
# ------------------------------------------------------------------------------------------------


def _binary_auc(scores: np.ndarray, positives: np.ndarray) -> float:
  """Mann-Whitney form of the ROC AUC (ties count 1/2): scikit-learn's trapezoidal AUC exactly."""
  n_pos, n_neg = int(positives.sum()), int((~positives).sum())
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  ranks = scipy_stats.rankdata(scores)
  return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _scored(scores, labels, valid) -> tuple[np.ndarray, np.ndarray]:
  """(scores, labels) as float64 / numpy without the padding (``valid == 0``); ``(N, 1)`` and
  ``(N, 2)`` scores become the positive class's ``(N,)``."""
  scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
  if valid is not None:
    keep = np.asarray(valid) > 0
    scores, labels = scores[keep], labels[keep]
  if scores.ndim == 2 and scores.shape[1] <= 2:
    scores = scores[:, -1]
  return scores, labels


def _binary_roc(fn: str, scores, labels, valid) -> tuple[np.ndarray, np.ndarray] | None:
  """(FPR, TPR) at every distinct threshold, from (0, 0) up, of binary scores (label 1 is
  positive); None when the set lacks positives or negatives."""
  scores, labels = _scored(scores, labels, valid)
  if scores.ndim != 1 or scores.shape != labels.shape:
    raise ValueError(f"{fn}: expected binary scores (N,), (N, 1) or (N, 2) and labels (N,), got "
                     f"{scores.shape} and {labels.shape}")
  positives = labels == 1
  n_pos = int(positives.sum())
  if n_pos in (0, len(positives)):
    return None
  order = np.argsort(-scores, kind="stable")
  ends = np.r_[np.flatnonzero(np.diff(scores[order])), len(order) - 1]  # last of each tie
  true_pos = np.cumsum(positives[order])[ends]
  false_pos = ends + 1 - true_pos
  return (np.r_[0, false_pos] / (len(positives) - n_pos), np.r_[0, true_pos] / n_pos)


def partial_auc_above_tpr(scores: np.ndarray, labels: np.ndarray, *, min_tpr: float = 0.8,
                          valid: np.ndarray | None = None) -> float:
  """ISIC 2024's pAUC: the area between the ROC curve and the line TPR = ``min_tpr``.

  Only operating points with a sensitivity of at least ``min_tpr`` count, so the score is in
  [0, 1 - min_tpr] (0.2 for a perfect ranking at the default 80%). The crossing of the line is
  interpolated linearly on the ROC curve, as the ISIC 2024 scorer does. (isic-challenge-scoring's
  ``auc_above_sensitivity`` is the area under the same part of the curve down to TPR 0, which adds
  the rectangle below the line.) Scores and labels as ``roc_auc``'s binary case; NaN without
  both positives and negatives.
  """
  if not 0 <= min_tpr < 1:
    raise ValueError(f"partial_auc_above_tpr: min_tpr must be in [0, 1), got {min_tpr}")
  roc = _binary_roc("partial_auc_above_tpr", scores, labels, valid)
  if roc is None:
    return float("nan")
  fpr, tpr = roc
  i = int(np.searchsorted(tpr, min_tpr, side="left"))  # the first point at or above the line
  start = fpr[i]
  if i > 0 and tpr[i] > min_tpr:
    start = np.interp(min_tpr, tpr[i - 1:i + 1], fpr[i - 1:i + 1])
  x, y = np.r_[start, fpr[i:]], np.r_[0.0, tpr[i:] - min_tpr]
  return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))  # trapezoids


def sensitivity_at_specificity(scores: np.ndarray, labels: np.ndarray, *, specificity: float,
                               valid: np.ndarray | None = None) -> float:
  """The highest sensitivity of a threshold whose specificity is at least ``specificity``.

  Only thresholds the scores allow count (no interpolation between ROC points), so the
  sensitivity is one a deployed threshold reaches. Scores and labels as ``roc_auc``'s binary
  case; NaN without both positives and negatives.
  """
  if not 0 <= specificity <= 1:
    raise ValueError(f"sensitivity_at_specificity: specificity must be in [0, 1], got "
                     f"{specificity}")
  roc = _binary_roc("sensitivity_at_specificity", scores, labels, valid)
  if roc is None:
    return float("nan")
  fpr, tpr = roc
  # 1e-12 absorbs the rounding of fractions like 9/10 >= 0.9.
  return float(tpr[1 - fpr >= specificity - 1e-12].max())


def roc_auc(scores: np.ndarray, labels: np.ndarray, *, valid: np.ndarray | None = None,
            class_names: Sequence[str] | None = None) -> dict[str, float]:
  """ROC AUC on the host: binary, or one-vs-rest per class with the macro mean.

  scores: ``(N,)`` or ``(N, 1)`` positive-class scores (binary), ``(N, 2)`` (column 1 is used), or
    ``(N, C)`` class probabilities for C > 2. Any monotone score gives the same AUC; for the
    multi-class case pass probabilities (softmax) to match scikit-learn's ``roc_auc_score(...,
    multi_class="ovr")``, which requires them.
  Returns ``{"auc/binary": v}`` or ``{"auc/macro_ovr": v, "auc/per_class/<name>": ...}``; the macro
  mean is over the classes with both positive and negative examples (scikit-learn raises instead;
  ISIC 2018 Task 3 reports this mean), a class without both is NaN.
  """
  scores, labels = _scored(scores, labels, valid)
  if scores.ndim == 1:
    return {"auc/binary": _binary_auc(scores, labels == 1)}
  k = scores.shape[1]
  names = list(class_names) if class_names is not None else [f"class_{c}" for c in range(k)]
  per_class = [_binary_auc(scores[:, c], labels == c) for c in range(k)]
  defined = [v for v in per_class if not np.isnan(v)]
  out = {"auc/macro_ovr": float(np.mean(defined)) if defined else float("nan")}
  out.update({f"auc/per_class/{names[c]}": per_class[c] for c in range(k)})
  return out


def _edges(mask: np.ndarray) -> np.ndarray:
  """Boundary pixels: the mask minus its erosion (pixels on the image border are boundary)."""
  return mask & ~ndimage.binary_erosion(mask)


def _hausdorff_one(pred: np.ndarray, true: np.ndarray, percentile: float | None) -> float:
  pred_edges, true_edges = _edges(pred), _edges(true)
  if not pred_edges.any() and not true_edges.any():
    return float("nan")
  if not pred_edges.any() or not true_edges.any():
    return float("inf")
  # Distance from each boundary pixel of one mask to the nearest boundary pixel of the other.
  to_true = ndimage.distance_transform_edt(~true_edges)[pred_edges]
  to_pred = ndimage.distance_transform_edt(~pred_edges)[true_edges]
  if percentile is None:
    return float(max(to_true.max(), to_pred.max()))
  return float(max(np.percentile(to_true, percentile), np.percentile(to_pred, percentile)))


def hausdorff_distance(pred: np.ndarray, true: np.ndarray, *,
                       percentile: float | None = 95.0) -> np.ndarray:
  """Symmetric (percentile) Hausdorff distance between binary masks, in pixels; host side.

  ``pred``, ``true``: bool/0-1 ``(H, W)`` or ``(N, H, W)`` masks (e.g. ``predict_masks(...) == 1``
  and ``labels == 1``). Per image: the larger of the two directed ``percentile``-th percentiles of
  boundary-to-boundary Euclidean distances -- MONAI's ``compute_hausdorff_distance(percentile=95)``;
  ``percentile=None`` gives the classic maximum, which equals
  ``max(directed_hausdorff(A, B), directed_hausdorff(B, A))`` of ``scipy.spatial.distance`` on the
  boundary pixel sets. Both masks empty: NaN; exactly one empty: inf (as MONAI). Returns a float
  array of shape ``(N,)`` (or ``()`` for one image); report e.g. the mean over finite values as
  "hausdorff95/per_image" with the number of images left out.
  """
  pred, true = np.asarray(pred).astype(bool), np.asarray(true).astype(bool)
  if pred.shape != true.shape or pred.ndim not in (2, 3):
    raise ValueError(f"hausdorff_distance: masks must both be (H, W) or (N, H, W), got "
                     f"{pred.shape} and {true.shape}")
  if pred.ndim == 2:
    return np.asarray(_hausdorff_one(pred, true, percentile))
  return np.asarray([_hausdorff_one(p, t, percentile) for p, t in zip(pred, true)])


def format_confusion_matrix(confusion: np.ndarray | Mapping[str, Any],
                            class_names: Sequence[str] | None = None) -> str:
  """A plain-text table: rows = true class, columns = predicted, with row totals and recall."""
  cm = np.asarray(confusion["confusion"] if isinstance(confusion, Mapping) else confusion)
  k = cm.shape[0]
  names = [str(n) for n in class_names] if class_names is not None else [str(c) for c in range(k)]
  if cm.shape != (k, k) or len(names) != k:
    raise ValueError(f"format_confusion_matrix: need a square matrix and one name per class, got "
                     f"shape {cm.shape} and {len(names)} names")
  header = ["true \\ pred", *names, "total", "recall"]
  rows = [[names[r], *(str(int(v)) for v in cm[r]), str(int(cm[r].sum())),
           f"{cm[r, r] / cm[r].sum():.3f}" if cm[r].sum() else "-"] for r in range(k)]
  rows.append(["total", *(str(int(v)) for v in cm.sum(axis=0)), str(int(cm.sum())), ""])
  widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
  return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in [header, *rows])


# ------------------------------------------------------------------------------------------------
# Calibration (host side, numpy).
# ------------------------------------------------------------------------------------------------


def _calibration_inputs(fn: str, probabilities, labels
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """(confidence (M,), hit (M,) 0/1, class probabilities (M, C), label (M,)) of one prediction set.

  Multi-class: ``probabilities`` (..., C), C >= 2, with integer ``labels`` of the leading shape;
  binary: ``probabilities`` of the positive class with 0/1 ``labels`` of the same shape (pixels:
  any shape, flattened), stored as the two columns (1 - p, p).
  """
  p, y = np.asarray(probabilities, np.float64), np.asarray(labels)
  if p.ndim >= 2 and p.shape[-1] >= 2 and p.shape[:-1] == y.shape:
    p = p.reshape(-1, p.shape[-1])
    y = y.reshape(-1)
    if y.size and (not np.all(y == np.round(y)) or y.min() < 0 or y.max() >= p.shape[1]):
      raise ValueError(f"{fn}: labels must be class ids 0..{p.shape[1] - 1} for probabilities "
                       f"of shape {tuple(np.shape(probabilities))}")
    y = y.astype(np.int64)
    confidence, hit = p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)
  elif p.shape == y.shape:
    p, y = p.reshape(-1), y.reshape(-1)
    if not np.isin(y, (0, 1)).all():
      raise ValueError(f"{fn}: binary labels must be 0 or 1 (probabilities and labels both of "
                       f"shape {y.shape})")
    y = y.astype(np.int64)
    confidence, hit = p, y.astype(np.float64)
    p = np.stack([1 - p, p], axis=1)
  else:
    raise ValueError(f"{fn}: expected probabilities (..., C) with labels (...), or positive-class "
                     f"probabilities and 0/1 labels of one shape; got probabilities "
                     f"{tuple(np.shape(probabilities))} and labels {tuple(y.shape)}")
  if y.size == 0:
    raise ValueError(f"{fn}: no predictions")
  if not np.all((p >= 0) & (p <= 1)):
    raise ValueError(f"{fn}: probabilities must lie in [0, 1] (NaN is not allowed)")
  return confidence, hit, p, y


def bin_index(confidence: np.ndarray, edges: np.ndarray) -> np.ndarray:
  """The bin ``b`` of each confidence, ``edges[b] <= c < edges[b + 1]`` (the last bin closed):
  numpy's ``histogram`` rule, which netcal's binning follows."""
  return np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, len(edges) - 2)


def _binned(confidence: np.ndarray, hit: np.ndarray, edges: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(mean confidence, accuracy, count) per bin of ``bin_index``, NaN in an empty bin."""
  num_bins = len(edges) - 1
  index = bin_index(confidence, edges)
  count = np.bincount(index, minlength=num_bins)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean_confidence = np.bincount(index, confidence, num_bins) / count
    accuracy = np.bincount(index, hit, num_bins) / count
  return mean_confidence, accuracy, count


def _check_bins(fn: str, num_bins: int) -> None:
  if not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
    raise ValueError(f"{fn}: num_bins must be a positive integer, got {num_bins!r}")


def reliability_bins(probabilities, labels, *, num_bins: int = 15
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(mean confidence, accuracy, count), each ``(num_bins,)``, over equal-width confidence bins
  ``[b / B, (b + 1) / B)`` (the last one closed): the data of a reliability diagram.

  Inputs as ``calibration``. Multi-class: the confidence is the top-label probability and the
  accuracy the fraction of argmax predictions that are right (Guo et al., 2017); binary/pixel: the
  positive-class probability and the fraction of positives (netcal's binary convention). Empty bins
  hold NaN confidence and accuracy and count 0.
  """
  _check_bins("reliability_bins", num_bins)
  confidence, hit, _, _ = _calibration_inputs("reliability_bins", probabilities, labels)
  return _binned(confidence, hit, np.linspace(0.0, 1.0, num_bins + 1))


def _expected_error(confidence: np.ndarray, hit: np.ndarray, edges: np.ndarray
                    ) -> tuple[float, float]:
  """(count-weighted mean, max) over the non-empty bins of |accuracy - confidence|."""
  mean_confidence, accuracy, count = _binned(confidence, hit, edges)
  gap = np.abs(accuracy - mean_confidence)[count > 0]
  return float(np.sum(gap * count[count > 0]) / count.sum()), float(gap.max())


def calibration(probabilities, labels, *, num_bins: int = 15) -> dict[str, float]:
  """Calibration of predicted probabilities: ``{"ece", "mce", "adaptive_ece", "brier", "nll"}``.

  probabilities, labels: class probabilities ``(..., C)`` (C >= 2; rows summing to 1) with integer
    class ids of shape ``(...)`` -- classification ``(N, C)``, or softmax pixels ``(N, H, W, C)``;
    or positive-class probabilities of any shape with 0/1 labels of the same shape (a binary
    classifier's ``(N,)``, sigmoid pixel maps ``(N, H, W)``), flattened.

  Binned errors (Naeini et al., 2015; Guo et al., 2017) over the confidence of each prediction --
  the top-label probability for multi-class input (correct = argmax is the label), the
  positive-class probability for binary input (correct = label is 1) -- in ``num_bins`` bins
  ``[lo, hi)`` (the last one closed), each bin's gap being |accuracy - mean confidence|:

  * ``ece``: the gaps of equal-width bins weighted by their share of the predictions; equals
    ``netcal.metrics.ECE(num_bins)`` (netcal 1.4);
  * ``mce``: the largest gap of an equal-width bin holding any prediction; ``netcal.metrics.MCE``;
  * ``adaptive_ece``: ``ece`` over equal-mass bins whose edges are the confidence quantiles
    ``b / B`` (the first and last set to 0 and 1) -- Nixon et al. (2019) / Mukhoti et al.
    (2020); equals ``netcal.metrics.ECE(num_bins, equal_intervals=False)``. It is not netcal's
    ``ACE`` (Neumann et al., 2018), which is the unweighted mean gap over the non-empty
    equal-width bins (computable from ``reliability_bins``).

  netcal treats (N, 2) probabilities with labels of at most two distinct values as binary input
  (the positive-class probability); here (N, 2) with class ids is multi-class (top-label
  confidence): pass ``probabilities[:, 1]`` for netcal's binary numbers. netcal also clips the
  probabilities to [eps, 1 - eps] before binning, which moves nothing between bins.

  * ``brier``: mean over predictions of the squared error summed over classes (Brier, 1950),
    halved for two classes so binary input gives mean (p - y)^2: scikit-learn's
    ``brier_score_loss`` (``scale_by_half="auto"``).
  * ``nll``: mean negative log-probability of the true class, probabilities clipped to
    [eps, 1] (eps of float64): scikit-learn's ``log_loss``.
  """
  _check_bins("calibration", num_bins)
  confidence, hit, p, y = _calibration_inputs("calibration", probabilities, labels)
  ece, mce = _expected_error(confidence, hit, np.linspace(0.0, 1.0, num_bins + 1))
  quantiles = np.quantile(confidence, np.linspace(0.0, 1.0, num_bins + 1))
  quantiles[0], quantiles[-1] = 0.0, 1.0
  adaptive_ece, _ = _expected_error(confidence, hit, quantiles)
  rows = np.arange(len(y))
  squared = np.sum(p**2, axis=1) - 2 * p[rows, y] + 1  # sum over classes of (p - one_hot)^2
  brier = float(np.mean(squared) * (0.5 if p.shape[1] == 2 else 1.0))
  nll = float(-np.mean(np.log(np.clip(p[rows, y], np.finfo(np.float64).eps, 1.0))))
  return {"ece": ece, "mce": mce, "adaptive_ece": adaptive_ece, "brier": brier, "nll": nll}
