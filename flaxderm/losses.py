"""Segmentation and classification losses: pure, jit- and grad-safe functions with MONAI's option names.

Shapes. ``logits`` are ``(N, ..., C)`` (NHWC for segmentation, ``(N, C)`` for classification) in any
float dtype (the loss is computed in float32); ``labels`` are integer class indices ``(N, ...)``.
``C == 1`` means a binary sigmoid output whose classes are {0: background, 1: lesion} with
``p(lesion) = sigmoid(z)``; ``C >= 2`` means a softmax over ``C`` classes. Class-indexed options
(``class_weights``, ``alpha`` sequences) therefore always have ``K = max(C, 2)`` entries, indexed by
class id, for every loss: ``(w_background, w_lesion)`` in the binary case.

``mask`` is an optional weight broadcastable to ``labels``: ``(N,)`` per example (e.g. the batch's
``valid``) or ``(N, ...)`` per pixel. Zero excludes an element; use it for padding examples and for
"ignore" pixels (whose label may then be any value, e.g. 255: out-of-range labels one-hot to zeros).

Reductions, and what each loss is when the ground truth is empty (a random crop with no lesion):

- ``weighted_cross_entropy``: torch's convention -- sum of per-element losses weighted by the weight
  of the target class, divided by the sum of those weights (``F.cross_entropy(weight=w,
  label_smoothing=e, ignore_index=...)``, mean reduction). Empty masks are nothing special for it.
  Difference from torch: when every element is masked out the result is 0 (torch gives NaN). For
  ``C == 1`` it is the two-class softmax on ``[0, z]``, i.e. binary cross-entropy with the same
  weight normalisation (unlike ``BCEWithLogitsLoss(weight=...)``, whose mean divides by the element
  count).
- ``dice_loss`` / ``tversky_loss``: per image and class (``batch=False``) ``1 - (2I + smooth_nr) /
  (P + G + smooth_dr)``, then a class-weighted mean (see ``dice_loss`` for how that differs from
  MONAI's). An image with an empty class scores ``1 - smooth_nr / (sum(p) + smooth_dr)`` (Tversky:
  ``sum(p)`` times alpha), near 1 until ``sum(p)`` is small next to ``smooth_dr``, so it keeps pushing
  false positives down. With both smooths 0 an empty-empty term counts as a perfect 0, not 0/0.
- ``focal_loss``: mean over unmasked elements (per-class ``alpha`` multiplies, but does not
  normalise). Empty masks: the ordinary background term.
- ``lovasz_hinge`` (per image) / ``lovasz_softmax``: an image with no lesion scores
  ``relu(max_i (1 + z_i))`` (hinge: the largest margin violation) and, for ``lovasz_softmax`` with
  ``classes="present"``, absent classes are skipped (an image with only background is scored on the
  background class).

Every loss is finite with finite gradients for all-zero, all-one and random masks
(tests/test_losses.py checks it).
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ClassValues = Sequence[float] | np.ndarray | Array | None

# Keeps every normalising division finite when all weights are zero (fully masked batches).
_TINY = 1e-12


# ------------------------------------------------------------------------------------------------
# Shared preparation.
# ------------------------------------------------------------------------------------------------


def _check_shapes(fn: str, logits: Array, labels: Array):
  if logits.ndim < 2 or labels.shape != logits.shape[:-1]:
    raise ValueError(f"{fn}: labels must have the logits' shape without the class axis: logits "
                     f"{tuple(logits.shape)} (N, ..., C), labels {tuple(labels.shape)}")


def _num_classes(logits: Array) -> int:
  return max(logits.shape[-1], 2)


def _log_probs(logits: Array, offsets: Array | None = None) -> Array:
  """Class log-probabilities ``(..., K)``: log-softmax, or ``[log(1-p), log p]`` for C == 1, of the
  logits plus per-class ``offsets`` ``(K,)`` if given."""
  z = logits.astype(jnp.float32)
  if offsets is not None:  # C == 1: the softmax over [o_0, z + o_1] is the sigmoid of z + o_1 - o_0
    z = z + (offsets[1] - offsets[0] if z.shape[-1] == 1 else offsets)
  if z.shape[-1] == 1:
    # Identical to a softmax over [0, z]; built from log_sigmoid so both terms stay finite.
    return jnp.concatenate([jax.nn.log_sigmoid(-z), jax.nn.log_sigmoid(z)], axis=-1)
  return jax.nn.log_softmax(z, axis=-1)


def _pixel_mask(fn: str, mask: Array | None, labels: Array) -> Array:
  """``mask`` broadcast to ``labels``' shape as float32 (ones when None)."""
  if mask is None:
    return jnp.ones(labels.shape, jnp.float32)
  mask = jnp.asarray(mask, jnp.float32)
  if mask.ndim > labels.ndim or mask.shape != labels.shape[:mask.ndim]:
    raise ValueError(f"{fn}: mask shape {tuple(mask.shape)} must be a leading part of the labels' "
                     f"shape {tuple(labels.shape)}, e.g. (N,) per example or (N, H, W) per pixel")
  return jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (labels.ndim - mask.ndim)), labels.shape)


def _class_vector(fn: str, name: str, values: ClassValues, k: int, *,
                  nonnegative: bool = True) -> Array | None:
  """A per-class option as a float32 ``(K,)`` array, validated when its values are concrete."""
  if values is None:
    return None
  if not isinstance(values, jax.core.Tracer):
    concrete = np.asarray(values, np.float64)
    if concrete.shape != (k,):
      raise ValueError(f"{fn}: {name} needs one value per class, K = max(C, 2) = {k} (indexed by "
                       f"class id, background first), got shape {concrete.shape}")
    if nonnegative and (concrete < 0).any():
      raise ValueError(f"{fn}: {name} must be non-negative, got {concrete.tolist()}")
  return jnp.asarray(values, jnp.float32)


def _image_weights(pixel_mask: Array) -> Array:
  """Per-example weight ``(N,)``: the largest pixel weight (the example weight for (N,) masks)."""
  return jnp.max(pixel_mask.reshape(pixel_mask.shape[0], -1), axis=1)


def _weighted_mean(values: Array, weights: Array) -> Array:
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), _TINY)


# ------------------------------------------------------------------------------------------------
# Cross-entropy and focal loss.
# ------------------------------------------------------------------------------------------------


def weighted_cross_entropy(logits: Array, labels: Array, *, class_weights: ClassValues = None,
                           label_smoothing: float = 0.0, logit_adjustment: ClassValues = None,
                           mask: Array | None = None) -> Array:
  """Class-weighted (softmax, or sigmoid for C == 1) cross-entropy with torch's normalisation.

  ``loss = [(1-e) sum_i w_{y_i} l_i(y_i) + e/K sum_i sum_c w_c l_i(c)] / sum_i w_{y_i}`` with
  ``l_i(c) = -log p_i(c)`` and element weights multiplied by ``mask``: exactly
  ``torch.nn.functional.cross_entropy(weight=w, label_smoothing=e)`` (mask 0 acting like
  ``ignore_index``). Dividing by the summed target weights, not by N, keeps the loss scale
  independent of the weights (paper 001's class-weighted softmax loss; see
  ``class_weights_from_counts``). A fully masked batch gives 0 where torch gives NaN.

  ``logit_adjustment``: per-class offsets ``(K,)`` added to the logits inside the loss only -- the
  logit-adjusted loss of Menon et al. (ICLR 2021) with ``tau * log(prior)`` (see
  ``logit_adjustment_from_counts``). The network then learns ``log p(x|y)`` up to a constant, so the
  argmax of its raw logits targets the balanced error instead of the error, without reweighting
  (and so without the gradient noise of large weights on rare classes).
  """
  _check_shapes("weighted_cross_entropy", logits, labels)
  if not 0.0 <= label_smoothing <= 1.0:
    raise ValueError(f"weighted_cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
  k = _num_classes(logits)
  lp = _log_probs(logits, _class_vector("weighted_cross_entropy", "logit_adjustment",
                                        logit_adjustment, k, nonnegative=False))
  onehot = jax.nn.one_hot(labels, k, dtype=jnp.float32)
  weights = _class_vector("weighted_cross_entropy", "class_weights", class_weights, k)
  weights = jnp.ones((k,), jnp.float32) if weights is None else weights
  m = _pixel_mask("weighted_cross_entropy", mask, labels)
  target_weight = jnp.sum(onehot * weights, axis=-1) * m
  nll = -jnp.sum(onehot * lp, axis=-1)
  smooth = -jnp.sum(weights * lp, axis=-1) * m
  total = (1.0 - label_smoothing) * jnp.sum(target_weight * nll) + label_smoothing / k * jnp.sum(smooth)
  return total / jnp.maximum(jnp.sum(target_weight), _TINY)


def _alpha_factors(alpha: float | ClassValues, k: int) -> Array | None:
  if alpha is None:
    return None
  if isinstance(alpha, (int, float)):
    if not 0.0 <= alpha <= 1.0:
      raise ValueError(f"focal_loss: a scalar alpha must be in [0, 1], got {alpha}")
    # RetinaNet / MONAI: alpha for the foreground classes, 1 - alpha for the background.
    return jnp.asarray([1.0 - alpha] + [alpha] * (k - 1), jnp.float32)
  return _class_vector("focal_loss", "alpha", alpha, k)


def focal_loss(logits: Array, labels: Array, *, gamma: float = 2.0,
               alpha: float | ClassValues = None, mask: Array | None = None) -> Array:
  """Focal loss ``-alpha_y (1 - p_y)^gamma log p_y`` (Lin et al.), mean over unmasked elements.

  ``alpha``: None (no class factor), a scalar (``alpha`` for foreground classes, ``1 - alpha`` for
  background: for C == 1 this is MONAI's / torchvision's sigmoid focal loss exactly), or one value
  per class. The mean divides by the (mask-weighted) number of elements; MONAI's softmax focal loss
  also averages over the C channels, so it is this value divided by C. ``gamma = 0`` with no alpha is
  plain (unweighted) cross-entropy.
  """
  _check_shapes("focal_loss", logits, labels)
  if gamma < 0:
    raise ValueError(f"focal_loss: gamma must be >= 0, got {gamma}")
  k = _num_classes(logits)
  lp = _log_probs(logits)
  onehot = jax.nn.one_hot(labels, k, dtype=jnp.bool_)
  lp_target = jnp.sum(jnp.where(onehot, lp, 0.0), axis=-1)
  # log(1 - p_y) from the other classes' log-probabilities: finite (and so is its gradient) even
  # where p_y rounds to 1, which (1 - exp(lp))**gamma is not.
  log_not_target = jax.nn.logsumexp(jnp.where(onehot, -jnp.inf, lp), axis=-1)
  loss = -jnp.exp(gamma * log_not_target) * lp_target
  factors = _alpha_factors(alpha, k)
  if factors is not None:
    loss = loss * jnp.sum(jnp.where(onehot, factors, 0.0), axis=-1)
  return _weighted_mean(loss, _pixel_mask("focal_loss", mask, labels))


# ------------------------------------------------------------------------------------------------
# Overlap losses: Dice, Jaccard, Tversky.
# ------------------------------------------------------------------------------------------------


def _probabilities(fn: str, logits: Array, activation: str | None) -> Array:
  """Class probabilities ``(..., K)``; for C == 1 ``[1 - p, p]``."""
  z = logits.astype(jnp.float32)
  c = z.shape[-1]
  activation = activation or ("sigmoid" if c == 1 else "softmax")
  if activation == "softmax":
    if c == 1:
      raise ValueError(f"{fn}: activation='softmax' needs C >= 2 channels; C == 1 is the sigmoid case")
    return jax.nn.softmax(z, axis=-1)
  if activation == "sigmoid":
    p = jax.nn.sigmoid(z)
    return jnp.concatenate([1.0 - p, p], axis=-1) if c == 1 else p
  raise ValueError(f"{fn}: activation must be 'sigmoid', 'softmax' or None, got {activation!r}")


def _scored_classes(fn: str, c: int, include_background: bool | None) -> slice:
  """Which of the K classes an overlap loss scores (MONAI's behaviour when None)."""
  if include_background is None:
    include_background = c > 1  # MONAI scores every output channel: the lesion alone when C == 1.
  return slice(0 if include_background else 1, None)


def _overlap_loss(fn: str, logits: Array, labels: Array, *, activation: str | None,
                  include_background: bool | None, squared_pred: bool, batch: bool,
                  class_weights: ClassValues, mask: Array | None,
                  score: Callable[[Array, Array, Array], Array]) -> Array:
  """Shared body: soft overlap sums per (image, class), ``score`` -> loss terms, weighted mean.

  ``score(intersection, pred_sum, target_sum)`` returns the per-term loss. Sums run over the spatial
  axes (and the batch axis when ``batch``); ``mask`` multiplies predictions and targets, as MONAI
  does for ignored voxels.
  """
  _check_shapes(fn, logits, labels)
  k = _num_classes(logits)
  probs = _probabilities(fn, logits, activation)
  target = jax.nn.one_hot(labels, k, dtype=jnp.float32)
  m = _pixel_mask(fn, mask, labels)
  probs, target = probs * m[..., None], target * m[..., None]
  axes = tuple(range(0 if batch else 1, probs.ndim - 1))
  intersection = jnp.sum(probs * target, axis=axes)
  pred_sum = jnp.sum(probs * probs if squared_pred else probs, axis=axes)
  target_sum = jnp.sum(target, axis=axes)
  terms = score(intersection, pred_sum, target_sum)  # (N, K), or (K,) when batch

  scored = _scored_classes(fn, logits.shape[-1], include_background)
  weights = _class_vector(fn, "class_weights", class_weights, k)
  weights = jnp.ones((k,), jnp.float32) if weights is None else weights
  weights, terms = weights[scored], terms[..., scored]
  per_item = jnp.sum(terms * weights, axis=-1) / jnp.maximum(jnp.sum(weights), _TINY)
  if batch:
    return per_item
  return _weighted_mean(per_item, _image_weights(m))


def _ratio_loss(numerator: Array, denominator: Array) -> Array:
  """``1 - numerator / denominator``, with 0/0 (empty prediction and target, no smoothing) -> 0."""
  safe = jnp.where(denominator > 0, denominator, 1.0)
  return 1.0 - jnp.where(denominator > 0, numerator / safe, 1.0)


def dice_loss(logits: Array, labels: Array, *, activation: str | None = None,
              include_background: bool | None = None, squared_pred: bool = False,
              jaccard: bool = False, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
              batch: bool = False, class_weights: ClassValues = None,
              mask: Array | None = None) -> Array:
  """Soft Dice (or Jaccard) loss with MONAI ``DiceLoss`` options.

  Per image and class: ``1 - (2I + smooth_nr) / (P + G + smooth_dr)`` where ``I = sum(p g)``,
  ``P = sum(p)`` (``sum(p^2)`` when ``squared_pred``), ``G = sum(g)``; with ``jaccard`` the
  denominator is ``2 (P + G - I) + smooth_dr``. ``batch=True`` sums over the whole batch first (one
  term per class). Paper 004's loss ``1 - (2|X∩Y| + 1) / (|X| + |Y| + 1)`` with squared sums and
  lesion/background weights 0.7/0.3 is ``squared_pred=True, smooth_nr=1, smooth_dr=1,
  include_background=True, class_weights=(0.3, 0.7)``.

  activation: None picks sigmoid for C == 1 and softmax otherwise; "sigmoid" with C >= 2 scores
    each channel's sigmoid against the one-hot labels (MONAI ``sigmoid=True, to_onehot_y=True``).
  include_background: None is MONAI's behaviour, scoring every output channel: all C classes for
    C >= 2, the lesion alone for C == 1. True with C == 1 also scores the background as ``1 - p``
    against ``1 - y`` (what paper 004's weighting needs; MONAI would ignore it); False drops class 0.
  class_weights: ``K = max(C, 2)`` values by class id; the terms of the scored classes are averaged
    with these weights, ``sum_c w_c f_c / sum_c w_c``, so 0.7/0.3 weights give ``0.7 f_lesion + 0.3
    f_background``. MONAI instead multiplies and takes the plain mean, ``mean_c w_c f_c``: the same
    when all weights are 1, a factor ``sum(w) / n_scored`` apart otherwise.
  mask: multiplies probabilities and one-hot labels (MONAI's ignore handling); examples whose mask
    is all zero are left out of the mean over images.
  """
  def score(i, p, g):
    if jaccard:
      return _ratio_loss(2.0 * i + smooth_nr, 2.0 * (p + g - i) + smooth_dr)
    return _ratio_loss(2.0 * i + smooth_nr, p + g + smooth_dr)

  return _overlap_loss("dice_loss", logits, labels, activation=activation,
                       include_background=include_background, squared_pred=squared_pred,
                       batch=batch, class_weights=class_weights, mask=mask, score=score)


def tversky_loss(logits: Array, labels: Array, *, alpha: float = 0.5, beta: float = 0.5,
                 activation: str | None = None, include_background: bool | None = None,
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = False,
                 class_weights: ClassValues = None, mask: Array | None = None) -> Array:
  """Tversky loss ``1 - (I + smooth_nr) / (I + alpha FP + beta FN + smooth_dr)`` (MONAI ``TverskyLoss``).

  ``FP = sum(p (1 - g))`` weighs false positives, ``FN = sum((1 - p) g)`` false negatives; beta > alpha
  favours recall of small lesions. alpha = beta = 0.5 is ``dice_loss`` and alpha = beta = 1 its
  ``jaccard`` form, each with both smooths doubled (identical without smoothing). The other options
  are ``dice_loss``'s.
  """
  if alpha < 0 or beta < 0:
    raise ValueError(f"tversky_loss: alpha and beta must be >= 0, got {alpha}, {beta}")

  def score(i, p, g):
    return _ratio_loss(i + smooth_nr, i + alpha * (p - i) + beta * (g - i) + smooth_dr)

  return _overlap_loss("tversky_loss", logits, labels, activation=activation,
                       include_background=include_background, squared_pred=False, batch=batch,
                       class_weights=class_weights, mask=mask, score=score)


def dice_ce_loss(logits: Array, labels: Array, *, lambda_dice: float = 1.0, lambda_ce: float = 1.0,
                 activation: str | None = None, include_background: bool | None = None,
                 squared_pred: bool = False, jaccard: bool = False, smooth_nr: float = 1e-5,
                 smooth_dr: float = 1e-5, batch: bool = False, class_weights: ClassValues = None,
                 label_smoothing: float = 0.0, mask: Array | None = None) -> Array:
  """``lambda_dice * dice_loss + lambda_ce * weighted_cross_entropy`` (MONAI ``DiceCELoss``).

  ``class_weights`` go to both terms, ``label_smoothing`` to the cross-entropy, the rest to the Dice
  term. With no class weights this equals MONAI's DiceCELoss (BCE-with-logits for C == 1).
  """
  if lambda_dice < 0 or lambda_ce < 0:
    raise ValueError(f"dice_ce_loss: lambda_dice and lambda_ce must be >= 0, got {lambda_dice}, {lambda_ce}")
  dice = dice_loss(logits, labels, activation=activation, include_background=include_background,
                   squared_pred=squared_pred, jaccard=jaccard, smooth_nr=smooth_nr,
                   smooth_dr=smooth_dr, batch=batch, class_weights=class_weights, mask=mask)
  ce = weighted_cross_entropy(logits, labels, class_weights=class_weights,
                              label_smoothing=label_smoothing, mask=mask)
  return lambda_dice * dice + lambda_ce * ce


# ------------------------------------------------------------------------------------------------
# Lovasz losses (Berman et al. 2018).
# ------------------------------------------------------------------------------------------------


def _lovasz_flat(errors: Array, positives: Array, valid: Array) -> Array:
  """Lovasz extension of the Jaccard loss for one flat set: ``dot(sorted errors, lovasz_grad)``.

  Ignored elements sort last (key -inf) and contribute zero, so the cumulative sums before them are
  those of the valid elements alone: the same value as removing them, with static shapes.
  """
  order = jnp.argsort(jnp.where(valid, -errors, jnp.inf))
  errors_sorted = (errors * valid)[order]
  gt_sorted = (positives * valid)[order]
  gts = jnp.sum(gt_sorted)
  intersection = gts - jnp.cumsum(gt_sorted)
  union = gts + jnp.cumsum(1.0 - gt_sorted)  # >= 1 everywhere, so never 0/0
  jac = 1.0 - intersection / union
  grad = jnp.concatenate([jac[:1], jac[1:] - jac[:-1]])
  return jnp.dot(errors_sorted, grad)


def _per_image_or_batch(fn: Callable[[Array, Array, Array], Array], per_image: bool, *args: Array,
                        valid: Array) -> Array:
  """Applies ``fn`` to each image (valid-weighted mean) or to the whole flattened batch."""
  n = valid.shape[0]
  if per_image:
    flat = [a.reshape(n, -1, *a.shape[valid.ndim:]) for a in args]
    values = jax.vmap(fn)(*flat, valid.reshape(n, -1))
    return _weighted_mean(values, _image_weights(valid))
  flat = [a.reshape(-1, *a.shape[valid.ndim:]) for a in args]
  return fn(*flat, valid.reshape(-1))


def lovasz_hinge(logits: Array, labels: Array, *, per_image: bool = True,
                 mask: Array | None = None) -> Array:
  """Binary Lovasz hinge loss on C == 1 logits (Berman et al.; the APC-UNet choice in paper 004 §2).

  Hinge errors ``1 - z s`` (``s = ±1``), sorted, dotted with the Lovasz gradient of the Jaccard loss;
  ``per_image`` (the reference default) averages per-image losses over examples with any unmasked
  pixel. ``mask`` > 0 marks pixels to score (the reference's ``ignore`` removes the rest).
  """
  _check_shapes("lovasz_hinge", logits, labels)
  if logits.shape[-1] != 1:
    raise ValueError(f"lovasz_hinge: needs binary C == 1 logits, got C = {logits.shape[-1]}; use "
                     "lovasz_softmax for multi-class outputs")
  z = logits[..., 0].astype(jnp.float32)
  positives = (labels == 1).astype(jnp.float32)
  valid = _pixel_mask("lovasz_hinge", mask, labels) > 0

  def hinge(z, y, v):
    return _lovasz_flat(jax.nn.relu(1.0 - z * (2.0 * y - 1.0)), y, v)

  return _per_image_or_batch(hinge, per_image, z, positives, valid=valid)


def lovasz_softmax(logits: Array, labels: Array, *, classes: str = "present",
                   per_image: bool = False, mask: Array | None = None) -> Array:
  """Multi-class Lovasz-softmax loss (Berman et al.); C == 1 uses the probabilities ``[1 - p, p]``.

  Per class: errors ``|1[y == c] - p_c|`` through the Lovasz extension; averaged over the classes
  present in the (unmasked) labels (``classes="present"``, the reference default) or over all K
  (``"all"``). ``per_image`` averages per-image values over examples with any unmasked pixel
  (the reference also counts fully ignored images, as 0).
  """
  _check_shapes("lovasz_softmax", logits, labels)
  if classes not in ("present", "all"):
    raise ValueError(f"lovasz_softmax: classes must be 'present' or 'all', got {classes!r}")
  k = _num_classes(logits)
  probs = _probabilities("lovasz_softmax", logits, None)
  onehot = jax.nn.one_hot(labels, k, dtype=jnp.float32)
  valid = _pixel_mask("lovasz_softmax", mask, labels) > 0

  def per_set(p, g, v):  # (P, K), (P, K), (P,)
    losses = jax.vmap(_lovasz_flat, in_axes=(1, 1, None))(jnp.abs(g - p), g, v)
    counted = (jnp.sum(g * v[:, None], axis=0) > 0) if classes == "present" else jnp.ones((k,), bool)
    return _weighted_mean(losses, counted.astype(jnp.float32))

  return _per_image_or_batch(per_set, per_image, probs, onehot, valid=valid)


# ------------------------------------------------------------------------------------------------
# Class weights and the name -> loss registry.
# ------------------------------------------------------------------------------------------------


def _label_counts(fn: str, counts: Sequence[float] | np.ndarray, **exponent: float) -> np.ndarray:
  """``counts`` as float64 after checking them, and each keyword option (power, tau) >= 0."""
  counts = np.asarray(counts, np.float64)
  if counts.ndim != 1 or counts.size < 2 or (counts < 0).any() or counts.sum() <= 0:
    raise ValueError(f"{fn}: counts must be a 1-D array of >= 2 non-negative counts with a "
                     f"positive total, got {counts.tolist()}")
  for name, value in exponent.items():
    if value < 0:
      raise ValueError(f"{fn}: {name} must be >= 0, got {value}")
  return counts


def class_weights_from_counts(counts: Sequence[float] | np.ndarray, *, power: float = 1.0) -> np.ndarray:
  """Class weights from label (pixel or example) counts: inverse frequency raised to ``power``.

  ``w_c ∝ (N / (K n_c))^power``, scaled so that ``sum_c n_c w_c = N`` (the average example weight is
  1, so the loss scale is kept). ``power`` is the rebalancing factor: 0 gives all ones (no
  rebalancing), 1 full inverse frequency -- scikit-learn's ``compute_class_weight("balanced")`` and
  the reference ``N / (K n_c)`` -- and values in between interpolate (0.5: inverse square root).
  A class with count 0 is treated as count 1 (as the reference's ``clamp(min=1)``), so its weight is
  large but finite.
  """
  counts = _label_counts("class_weights_from_counts", counts, power=power)
  total, k = counts.sum(), counts.size
  weights = (total / (k * np.maximum(counts, 1.0))) ** power
  return (weights * total / np.sum(counts * weights)).astype(np.float32)


def logit_adjustment_from_counts(counts: Sequence[float] | np.ndarray, *, tau: float = 1.0
                                 ) -> np.ndarray:
  """``tau * log(n_c / N)``: the training label prior as ``weighted_cross_entropy``'s
  ``logit_adjustment`` (Menon et al. 2021 found tau = 1 best on balanced error). A class with count
  0 is treated as count 1, as in ``class_weights_from_counts``."""
  counts = np.maximum(_label_counts("logit_adjustment_from_counts", counts, tau=tau), 1.0)
  return (tau * np.log(counts / counts.sum())).astype(np.float32)


LOSSES: dict[str, Callable[..., Array]] = {
    "cross_entropy": weighted_cross_entropy,
    "dice": dice_loss,
    "dice_ce": dice_ce_loss,
    "focal": focal_loss,
    "tversky": tversky_loss,
    "lovasz_hinge": lovasz_hinge,
    "lovasz_softmax": lovasz_softmax,
}


def loss_options(name: str) -> dict[str, Any]:
  """The options ``get_loss(name, ...)`` accepts, with their defaults."""
  if name not in LOSSES:
    raise ValueError(f"unknown loss {name!r}; valid names: {sorted(LOSSES)}")
  params = inspect.signature(LOSSES[name]).parameters.values()
  return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name != "mask"}


def get_loss(name: str, **options: Any) -> Callable[..., Array]:
  """``fn(logits, labels, *, mask=None) -> scalar`` for a loss name with its options bound.

  Names: cross_entropy, dice, dice_ce, focal, tversky, lovasz_hinge, lovasz_softmax. A misspelt
  name or option is a ValueError listing the valid ones.
  """
  valid = loss_options(name)
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise ValueError(f"loss {name!r}: unknown option(s) {unknown}; valid options: {sorted(valid)}")
  # Lists from configs become hashable, jit-constant tuples.
  for key in ("class_weights", "alpha", "logit_adjustment"):
    if isinstance(options.get(key), list):
      options[key] = tuple(options[key])
  return functools.partial(LOSSES[name], **options)
