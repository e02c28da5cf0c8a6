"""Losses: hand-worked golden values, finiteness on empty/full/random masks, jit, and oracles.

Oracles: MONAI (DiceLoss, TverskyLoss, FocalLoss, DiceCELoss), torch's F.cross_entropy and
segmentation_models_pytorch's reference Lovasz implementation (Berman's code), in torch-marked
tests that skip when the package is absent; scikit-learn's compute_class_weight. Each oracle check
prints "ORACLE <name> max|diff| <value>" (visible with ``pytest -s``).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxderm import losses

N, H, W = 2, 8, 8


def _close(name: str, got, want, atol: float = 1e-6, rtol: float = 1e-6):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  print(f"ORACLE {name} max|diff| {np.max(np.abs(got - want)):.3g}")
  np.testing.assert_allclose(got, want, atol=atol, rtol=rtol, err_msg=name)


def _random_batch(c: int, seed: int = 0, scale: float = 2.0):
  rng = np.random.default_rng(seed)
  logits = (scale * rng.standard_normal((N, H, W, c))).astype(np.float32)
  labels = rng.integers(0, max(c, 2), (N, H, W)).astype(np.int32)
  return logits, labels


# ------------------------------------------------------------------------------------------------
# Golden values.
# ------------------------------------------------------------------------------------------------

# One 2x2 image, lesion in the top-left pixel. Logits +-log 3 give p(lesion) = 0.75 there and 0.25
# elsewhere.
GOLDEN_LABELS = np.array([[[1, 0], [0, 0]]], np.int32)
GOLDEN_LOGITS = np.log(3.0) * np.array([[[[1.0], [-1.0]], [[-1.0], [-1.0]]]], np.float32)


@pytest.mark.parametrize("two_channel", [False, True], ids=["sigmoid_c1", "softmax_c2"])
def test_paper004_weighted_dice_golden(two_channel):
  # Paper 004 §3.2.4: 1 - (2|X∩Y| + 1) / (|X| + |Y| + 1), |X| = sum p^2, |Y| = sum y^2, weights
  # lesion 0.7, background 0.3 (§4.2).
  # Lesion:     I = 0.75, |X| = 0.75^2 + 3 * 0.25^2 = 0.75, |Y| = 1
  #             -> 1 - (1.5 + 1) / (0.75 + 1 + 1) = 1 - 2.5 / 2.75 = 1/11.
  # Background: p = (0.25, 0.75, 0.75, 0.75), y = (0, 1, 1, 1): I = 2.25, |X| = 0.0625 + 3 * 0.5625
  #             = 1.75, |Y| = 3 -> 1 - (4.5 + 1) / (1.75 + 3 + 1) = 1 - 5.5 / 5.75 = 1/23.
  # Weighted: 0.7 / 11 + 0.3 / 23 = 0.0766798...
  logits = GOLDEN_LOGITS
  if two_channel:  # softmax over [0, z] gives the same probabilities
    logits = np.concatenate([np.zeros_like(logits), logits], axis=-1)
  loss = losses.dice_loss(logits, GOLDEN_LABELS, squared_pred=True, smooth_nr=1.0, smooth_dr=1.0,
                          include_background=True, class_weights=(0.3, 0.7))
  np.testing.assert_allclose(loss, 0.7 / 11 + 0.3 / 23, rtol=1e-6)
  lesion_only = losses.dice_loss(logits, GOLDEN_LABELS, squared_pred=True, smooth_nr=1.0,
                                 smooth_dr=1.0, include_background=False)
  np.testing.assert_allclose(lesion_only, 1 / 11, rtol=1e-6)


def test_dice_jaccard_tversky_golden():
  # Lesion channel, no smoothing: I = 0.75, P = 0.75 + 3 * 0.25 = 1.5, G = 1.
  # Dice: 1 - 2 * 0.75 / 2.5 = 0.4.  Jaccard: 1 - 1.5 / (2 * (2.5 - 0.75)) = 1 - 1.5 / 3.5 = 4/7.
  # Tversky(0.3, 0.7): FP = P - I = 0.75, FN = G - I = 0.25
  #   -> 1 - 0.75 / (0.75 + 0.225 + 0.175) = 1 - 0.75 / 1.15 = 8/23.
  kw = dict(smooth_nr=0.0, smooth_dr=0.0)
  np.testing.assert_allclose(losses.dice_loss(GOLDEN_LOGITS, GOLDEN_LABELS, **kw), 0.4, rtol=1e-6)
  np.testing.assert_allclose(losses.dice_loss(GOLDEN_LOGITS, GOLDEN_LABELS, jaccard=True, **kw),
                             4 / 7, rtol=1e-6)
  np.testing.assert_allclose(losses.tversky_loss(GOLDEN_LOGITS, GOLDEN_LABELS, alpha=0.3, beta=0.7, **kw),
                             8 / 23, rtol=1e-6)


def test_cross_entropy_and_focal_golden():
  # Two examples: p = (0.25, 0.75) with label 1, p = (0.5, 0.5) with label 0; weights (1, 3).
  # Weighted CE (torch convention): (3 * -log 0.75 + 1 * -log 0.5) / (3 + 1).
  # Label smoothing 0.1, K = 2: [(0.9) (3 log(4/3) + log 2)
  #   + 0.1/2 (1 * -log .25 + 3 * -log .75 + 1 * -log .5 + 3 * -log .5)] / 4.
  # Focal (gamma 2, no alpha): mean of 0.25^2 * log(4/3) and 0.5^2 * log 2.
  logits = np.array([[0.0, np.log(3.0)], [0.0, 0.0]], np.float32)
  labels = np.array([1, 0], np.int32)
  ce = losses.weighted_cross_entropy(logits, labels, class_weights=(1.0, 3.0))
  np.testing.assert_allclose(ce, (3 * math.log(4 / 3) + math.log(2)) / 4, rtol=1e-6)
  smoothed = losses.weighted_cross_entropy(logits, labels, class_weights=(1.0, 3.0), label_smoothing=0.1)
  want = (0.9 * (3 * math.log(4 / 3) + math.log(2))
          + 0.05 * (math.log(4) + 3 * math.log(4 / 3) + 4 * math.log(2))) / 4
  np.testing.assert_allclose(smoothed, want, rtol=1e-6)
  focal = losses.focal_loss(logits, labels, gamma=2.0)
  np.testing.assert_allclose(focal, (0.0625 * math.log(4 / 3) + 0.25 * math.log(2)) / 2, rtol=1e-6)
  # The sigmoid (C == 1) form is the two-class softmax on [0, z].
  np.testing.assert_allclose(losses.weighted_cross_entropy(logits[:, 1:], labels, class_weights=(1.0, 3.0)),
                             ce, rtol=1e-6)


def test_lovasz_hinge_golden():
  # Pixels z = (2, -1, 0.5), y = (1, 1, 0): hinge errors 1 - z s = (-1, 2, 1.5). Sorted descending:
  # (2 [y=1], 1.5 [y=0], -1 [y=1]). gts = 2; intersection = 2 - cumsum(y) = (1, 1, 0); union = 2 +
  # cumsum(1 - y) = (2, 3, 3); Jaccard loss = (1/2, 2/3, 1); Lovasz gradient = (1/2, 1/6, 1/3).
  # Loss = 2 * 1/2 + 1.5 * 1/6 + relu(-1) * 1/3 = 1.25.
  logits = np.array([[[[2.0], [-1.0], [0.5]]]], np.float32)
  labels = np.array([[[1, 1, 0]]], np.int32)
  np.testing.assert_allclose(losses.lovasz_hinge(logits, labels), 1.25, rtol=1e-6)


def test_class_weights_from_counts():
  # counts (10, 30, 60), N = 100, K = 3: balanced weights N / (K n) = (10/3, 10/9, 5/9).
  counts = np.array([10, 30, 60])
  np.testing.assert_allclose(losses.class_weights_from_counts(counts), [10 / 3, 10 / 9, 5 / 9], rtol=1e-6)
  np.testing.assert_allclose(losses.class_weights_from_counts(counts, power=0.0), np.ones(3), rtol=1e-6)
  half = losses.class_weights_from_counts(counts, power=0.5)
  np.testing.assert_allclose(np.sum(half * counts), counts.sum(), rtol=1e-6)  # average weight 1
  assert half[0] / half[2] == pytest.approx(math.sqrt(6), rel=1e-6)  # sqrt of the full ratio 6
  assert np.isfinite(losses.class_weights_from_counts([5, 0])).all()
  with pytest.raises(ValueError, match="counts"):
    losses.class_weights_from_counts([-1, 3])


def test_logit_adjusted_cross_entropy():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(6, 3)).astype(np.float32)
  labels = np.array([0, 1, 2, 2, 1, 0])
  prior = np.array([0.1, 0.3, 0.6])
  offsets = losses.logit_adjustment_from_counts([10, 30, 60], tau=1.0)
  np.testing.assert_allclose(offsets, np.log(prior), rtol=1e-6)
  np.testing.assert_allclose(losses.logit_adjustment_from_counts([10, 30, 60], tau=0.5),
                             0.5 * np.log(prior), rtol=1e-6)
  # The loss is the cross-entropy of the shifted logits (here by hand, with numpy).
  z = logits + np.log(prior)
  want = np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(6), labels])
  _close("logit-adjusted CE", losses.weighted_cross_entropy(logits, labels, logit_adjustment=offsets), want)
  assert float(losses.weighted_cross_entropy(logits, labels, logit_adjustment=offsets)) != pytest.approx(
      float(losses.weighted_cross_entropy(logits, labels)), rel=1e-3)
  # Binary C == 1: the same as the two-class softmax over [0, z] with the offsets.
  z1 = logits[:, :1]
  y1 = labels % 2
  two = np.concatenate([np.zeros_like(z1), z1], axis=-1)
  _close("logit-adjusted CE, C == 1 vs its two-class softmax",
         losses.weighted_cross_entropy(z1, y1, logit_adjustment=(-0.2, -1.7)),
         losses.weighted_cross_entropy(two, y1, logit_adjustment=(-0.2, -1.7)))
  # Through the registry (lists from configs), and shape errors name the option.
  fn = losses.get_loss("cross_entropy", logit_adjustment=[float(o) for o in offsets])
  _close("get_loss cross_entropy logit_adjustment", fn(logits, labels), want)
  with pytest.raises(ValueError, match="logit_adjustment needs one value per class"):
    losses.weighted_cross_entropy(logits, labels, logit_adjustment=(0.0, 1.0))
  with pytest.raises(ValueError, match="tau"):
    losses.logit_adjustment_from_counts([1, 2], tau=-1.0)
  assert np.isfinite(losses.logit_adjustment_from_counts([5, 0])).all()


def test_class_weights_match_sklearn():
  from sklearn.utils.class_weight import compute_class_weight
  y = np.random.default_rng(0).integers(0, 5, 500)
  want = compute_class_weight("balanced", classes=np.arange(5), y=y)
  _close("class_weights_from_counts vs sklearn balanced", losses.class_weights_from_counts(np.bincount(y)), want)


# ------------------------------------------------------------------------------------------------
# Finiteness, empty masks, jit, registry.
# ------------------------------------------------------------------------------------------------

LOSS_NAMES = sorted(losses.LOSSES)


@pytest.mark.slow
@pytest.mark.parametrize("name,c", [(n, c) for n in LOSS_NAMES for c in (1, 3)
                                    if not (n == "lovasz_hinge" and c == 3)])
def test_finite_values_and_gradients(name, c):
  logits, labels = _random_batch(c, seed=1, scale=4.0)
  logits[0, 0, 0] = 60.0  # saturated probabilities must not produce inf/nan either
  logits[1, 0, 0] = -60.0
  loss = losses.get_loss(name)
  value_and_grad = jax.jit(jax.value_and_grad(lambda z, y, m: loss(z, y, mask=m)))
  everything, padding = np.ones((N,), np.float32), np.zeros((N,), np.float32)
  for masks, y in (("zeros", np.zeros_like(labels)), ("ones", np.ones_like(labels)), ("random", labels)):
    value, grad = value_and_grad(logits, y, everything)
    assert np.isfinite(value), (name, masks, value)
    assert np.isfinite(np.asarray(grad)).all(), (name, masks)
    # A fully masked batch (all padding) is 0 with finite gradients, not 0/0.
    value, grad = value_and_grad(logits, y, padding)
    assert value == 0.0 and np.isfinite(np.asarray(grad)).all(), (name, masks, value)


def test_empty_mask_values_documented():
  # Lesion-free image, constant logit z: p = sigmoid(z) on all 64 pixels.
  z = -3.0
  logits = np.full((1, H, W, 1), z, np.float32)
  labels = np.zeros((1, H, W), np.int32)
  p = 1 / (1 + math.exp(-z))
  # Dice (lesion only): 1 - smooth_nr / (sum p + smooth_dr).
  np.testing.assert_allclose(losses.dice_loss(logits, labels), 1 - 1e-5 / (64 * p + 1e-5), rtol=1e-5)
  # Paper-004 smoothing: 1 - 1 / (sum p^2 + 1).
  np.testing.assert_allclose(losses.dice_loss(logits, labels, squared_pred=True, smooth_nr=1.0,
                                              smooth_dr=1.0), 1 - 1 / (64 * p * p + 1), rtol=1e-5)
  # No smoothing, empty prediction too: a perfect 0 rather than 0/0.
  very_negative = np.full((1, H, W, 1), -200.0, np.float32)
  assert losses.dice_loss(very_negative, labels, smooth_nr=0.0, smooth_dr=0.0) == 0.0
  # Lovasz hinge on a lesion-free image: relu(max(1 + z)).
  np.testing.assert_allclose(losses.lovasz_hinge(logits, labels), max(0.0, 1 + z), rtol=1e-6)
  np.testing.assert_allclose(losses.lovasz_hinge(logits + 5, labels), 1 + z + 5, rtol=1e-6)


@pytest.mark.slow
def test_masks_and_padding():
  logits, labels = _random_batch(3, seed=2)
  padded_logits = np.concatenate([logits, np.random.default_rng(3).normal(size=logits.shape)], 0)
  padded_labels = np.concatenate([labels, np.zeros_like(labels)], 0).astype(np.int32)
  valid = np.array([1.0, 1.0, 0.0, 0.0], np.float32)
  for name in ("cross_entropy", "dice", "focal", "tversky", "lovasz_softmax", "dice_ce"):
    fn = losses.get_loss(name)
    np.testing.assert_allclose(fn(padded_logits, padded_labels, mask=valid), fn(logits, labels),
                               rtol=1e-6, err_msg=name)
  # Per-pixel ignore: label 255 under mask 0 is as if the pixel were absent.
  ignore = np.ones((N, H, W), np.float32)
  ignore[:, :2] = 0
  marked = labels.copy()
  marked[:, :2] = 255
  for name in ("cross_entropy", "dice", "focal", "lovasz_softmax"):
    fn = losses.get_loss(name)
    np.testing.assert_allclose(fn(logits, marked, mask=ignore), fn(logits, labels, mask=ignore),
                               rtol=1e-6, err_msg=name)


def test_tversky_half_is_dice_and_bf16_logits():
  logits, labels = _random_batch(3, seed=4)
  np.testing.assert_allclose(losses.tversky_loss(logits, labels, smooth_nr=0, smooth_dr=0),
                             losses.dice_loss(logits, labels, smooth_nr=0, smooth_dr=0), rtol=1e-6)
  low = jnp.asarray(logits, jnp.bfloat16)
  value = jax.jit(losses.get_loss("dice_ce"))(low, labels)
  assert value.dtype == jnp.float32
  np.testing.assert_allclose(value, losses.dice_ce_loss(low.astype(jnp.float32), labels), rtol=1e-6)


def test_get_loss_errors():
  with pytest.raises(ValueError, match="valid names.*cross_entropy"):
    losses.get_loss("dice_loss")
  with pytest.raises(ValueError, match="unknown option.*smooth.*valid options"):
    losses.get_loss("dice", smooth=1.0)
  logits, labels = _random_batch(3)
  with pytest.raises(ValueError, match="K = max\\(C, 2\\) = 3"):
    losses.get_loss("cross_entropy", class_weights=[1.0, 2.0])(logits, labels)
  with pytest.raises(ValueError, match="labels must have"):
    losses.dice_loss(logits, labels[..., 0])
  with pytest.raises(ValueError, match="C == 1"):
    losses.lovasz_hinge(logits, labels)
  with pytest.raises(ValueError, match="mask shape"):
    losses.weighted_cross_entropy(logits, labels, mask=np.ones((N, 3)))
  assert set(losses.loss_options("focal")) == {"gamma", "alpha"}


# ------------------------------------------------------------------------------------------------
# Oracles: MONAI, torch, the reference Lovasz code.
# ------------------------------------------------------------------------------------------------


def _torch_inputs(logits, labels):
  torch = pytest.importorskip("torch")
  return (torch.from_numpy(np.ascontiguousarray(np.moveaxis(logits, -1, 1))),
          torch.from_numpy(labels.astype(np.int64))[:, None])


DICE_OPTIONS = [
    dict(),
    dict(include_background=False),
    dict(squared_pred=True, smooth_nr=1.0, smooth_dr=1.0),
    dict(jaccard=True),
    dict(batch=True, include_background=False),
    dict(jaccard=True, squared_pred=True, batch=True, smooth_nr=0.0, smooth_dr=1e-6),
]


@pytest.mark.torch
@pytest.mark.parametrize("options", DICE_OPTIONS, ids=lambda o: ",".join(o) or "default")
def test_dice_matches_monai(options):
  monai_losses = pytest.importorskip("monai.losses")
  logits, labels = _random_batch(3, seed=5)
  x, y = _torch_inputs(logits, labels)
  want = monai_losses.DiceLoss(softmax=True, to_onehot_y=True, **options)(x, y)
  _close(f"dice softmax {options} vs MONAI", losses.dice_loss(logits, labels, **options), want.item())
  # Per-channel sigmoid on C >= 2 against one-hot labels.
  want = monai_losses.DiceLoss(sigmoid=True, to_onehot_y=True, **options)(x, y)
  _close(f"dice sigmoid-C3 {options} vs MONAI",
         losses.dice_loss(logits, labels, activation="sigmoid", **options), want.item())


@pytest.mark.torch
def test_binary_and_weighted_dice_match_monai():
  monai_losses = pytest.importorskip("monai.losses")
  logits, labels = _random_batch(1, seed=6)
  labels[0] = 0  # one lesion-free image
  x, y = _torch_inputs(logits, labels)
  want = monai_losses.DiceLoss(sigmoid=True)(x, y.float())
  _close("dice sigmoid-C1 vs MONAI", losses.dice_loss(logits, labels), want.item())
  # MONAI's weighted reduction is mean_c(w_c f_c); ours sum_c w_c f_c / sum_c w_c.
  logits, labels = _random_batch(3, seed=7)
  x, y = _torch_inputs(logits, labels)
  weights = (0.2, 0.5, 1.3)
  want = monai_losses.DiceLoss(softmax=True, to_onehot_y=True, weight=weights)(x, y)
  _close("weighted dice vs MONAI * C / sum(w)", losses.dice_loss(logits, labels, class_weights=weights),
         want.item() * 3 / sum(weights))


@pytest.mark.torch
def test_tversky_focal_dice_ce_match_monai():
  monai_losses = pytest.importorskip("monai.losses")
  logits, labels = _random_batch(3, seed=8)
  x, y = _torch_inputs(logits, labels)
  want = monai_losses.TverskyLoss(softmax=True, to_onehot_y=True, alpha=0.3, beta=0.7)(x, y)
  _close("tversky vs MONAI", losses.tversky_loss(logits, labels, alpha=0.3, beta=0.7), want.item())
  # MONAI's softmax focal loss also averages over the C channels.
  want = monai_losses.FocalLoss(use_softmax=True, to_onehot_y=True, gamma=2.0, alpha=(0.2, 0.3, 0.5))(x, y)
  _close("focal softmax vs MONAI * C",
         losses.focal_loss(logits, labels, gamma=2.0, alpha=(0.2, 0.3, 0.5)), 3 * want.item())
  want = monai_losses.FocalLoss(use_softmax=True, to_onehot_y=True, gamma=1.5, alpha=0.25)(x, y)
  _close("focal softmax scalar alpha vs MONAI * C",
         losses.focal_loss(logits, labels, gamma=1.5, alpha=0.25), 3 * want.item())
  want = monai_losses.DiceCELoss(softmax=True, to_onehot_y=True, lambda_dice=0.7, lambda_ce=1.3)(x, y)
  _close("dice_ce softmax vs MONAI", losses.dice_ce_loss(logits, labels, lambda_dice=0.7, lambda_ce=1.3),
         want.item())

  logits, labels = _random_batch(1, seed=9)
  x, y = _torch_inputs(logits, labels)
  want = monai_losses.FocalLoss(gamma=2.0, alpha=0.25)(x, y.float())
  _close("focal sigmoid-C1 vs MONAI", losses.focal_loss(logits, labels, gamma=2.0, alpha=0.25), want.item())
  want = monai_losses.DiceCELoss(sigmoid=True)(x, y.float())
  _close("dice_ce sigmoid-C1 (BCE) vs MONAI", losses.dice_ce_loss(logits, labels), want.item())


@pytest.mark.torch
def test_weighted_cross_entropy_matches_torch():
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  logits, labels = _random_batch(4, seed=10)
  weights = (0.5, 2.0, 1.0, 3.0)
  ignore = np.random.default_rng(11).random((N, H, W)) < 0.2
  torch_labels = np.where(ignore, -100, labels)
  x = torch.from_numpy(np.moveaxis(logits, -1, 1).copy())
  for smoothing in (0.0, 0.1):
    want = F.cross_entropy(x, torch.from_numpy(torch_labels.astype(np.int64)),
                           weight=torch.tensor(weights), label_smoothing=smoothing)
    got = losses.weighted_cross_entropy(logits, labels, class_weights=weights, label_smoothing=smoothing,
                                        mask=(~ignore).astype(np.float32))
    _close(f"weighted CE (ls={smoothing}, ignore) vs torch F.cross_entropy", got, want.item())
  # Classification shape (N, C), as paper 001's class-weighted softmax loss.
  want = F.cross_entropy(x[:, :, 0, 0], torch.from_numpy(labels[:, 0, 0].astype(np.int64)),
                         weight=torch.tensor(weights))
  _close("weighted CE (N, C) vs torch", losses.weighted_cross_entropy(logits[:, 0, 0], labels[:, 0, 0],
                                                                      class_weights=weights), want.item())
  # Binary: BCEWithLogitsLoss(weight=w_y) divides by the element count, we by sum(w_y).
  z, y = _random_batch(1, seed=12)
  y = (y > 0).astype(np.int32)
  w = np.where(y == 1, 3.0, 0.5)
  want = F.binary_cross_entropy_with_logits(torch.from_numpy(z[..., 0]), torch.from_numpy(y.astype(np.float32)),
                                            weight=torch.from_numpy(w))
  got = losses.weighted_cross_entropy(z, y, class_weights=(0.5, 3.0))
  _close("binary weighted CE * sum(w)/count vs torch BCE(weight)", got * w.sum() / w.size, want.item())


@pytest.mark.torch
@pytest.mark.parametrize("per_image", [True, False])
def test_lovasz_matches_reference(per_image):
  torch = pytest.importorskip("torch")
  lovasz = pytest.importorskip("segmentation_models_pytorch.losses.lovasz")
  rng = np.random.default_rng(13)
  logits, labels = _random_batch(1, seed=14)
  labels = (labels > 0).astype(np.int32)
  labels[1] = 0  # a lesion-free image
  ignore = rng.random((N, H, W)) < 0.15
  want = lovasz._lovasz_hinge(torch.from_numpy(logits[..., 0]),
                              torch.from_numpy(np.where(ignore, 255, labels)), per_image, ignore=255)
  got = losses.lovasz_hinge(logits, labels, per_image=per_image, mask=(~ignore).astype(np.float32))
  _close(f"lovasz_hinge per_image={per_image} vs Berman/smp", got, want.item())

  logits, labels = _random_batch(3, seed=15)
  labels[0][labels[0] == 2] = 1  # class 2 absent from one image: "present" skips it there
  probs = torch.softmax(torch.from_numpy(np.moveaxis(logits, -1, 1).copy()), 1)
  for classes in ("present", "all"):
    want = lovasz._lovasz_softmax(probs, torch.from_numpy(np.where(ignore, 255, labels)),
                                  classes=classes, per_image=per_image, ignore=255)
    got = losses.lovasz_softmax(logits, labels, classes=classes, per_image=per_image,
                                mask=(~ignore).astype(np.float32))
    _close(f"lovasz_softmax {classes} per_image={per_image} vs Berman/smp", got, want.item())
