"""Augmentation ops: shapes, value ranges, mask alignment, determinism under a seed."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from flaxderm.data import augment as A

GEOMETRIC = ("hflip", "vflip", "rot90", "rotate", "shift", "crop", "elastic", "paste")
PHOTOMETRIC = ("color_jitter", "noise")
STRONG = {"rotate": {"degrees": 45.0}, "shift": {"fraction": 0.2}, "crop": {"scale": (0.3, 0.6)},
          "elastic": {"alpha": 0.08, "sigma": 0.05}, "paste": {"size": (0.3, 0.4)},
          "color_jitter": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1},
          "noise": {"std": 0.1}}


def sample(size=48, seed=0):
  """Float image in [0, 1] and an off-center lesion mask (asymmetric, so flips show)."""
  rng = np.random.default_rng(seed)
  image = rng.uniform(0.3, 0.9, (size, size, 3)).astype(np.float32)
  mask = np.zeros((size, size), np.uint8)
  cv2.ellipse(mask, (size // 3, size // 2), (size // 5, size // 8), 30, 0, 360, 1, -1)
  return image, mask


def mask_drawing(mask):
  """An image whose pixels are the mask, to check geometric ops move both the same way."""
  return np.repeat(mask[..., None].astype(np.float32), 3, -1)


def run(name, image, mask, seed=0, **params):
  params = {**A.AUGMENTATIONS[name].params, **STRONG.get(name, {}), **params}
  return A.AUGMENTATIONS[name].fn(image, mask, np.random.default_rng(seed), **params)


@pytest.mark.parametrize("name", list(A.AUGMENTATIONS))
def test_op_shapes_ranges_and_determinism(name):
  image, mask = sample()
  out, out_mask = run(name, image, mask)
  assert out.shape == image.shape and out.dtype == np.float32
  assert out.min() >= 0 and out.max() <= 1
  assert out_mask.shape == mask.shape and out_mask.dtype == np.uint8
  assert set(np.unique(out_mask)) <= {0, 1}
  again, again_mask = run(name, image, mask)
  np.testing.assert_array_equal(out, again)
  np.testing.assert_array_equal(out_mask, again_mask)
  no_mask_out, no_mask = run(name, image, None)
  assert no_mask is None
  np.testing.assert_array_equal(no_mask_out, out)  # the mask never changes the image's draws


@pytest.mark.parametrize("name", ["rot90", "rotate", "shift", "crop", "elastic", "paste",
                                  "color_jitter", "noise"])
def test_random_ops_vary_with_the_seed(name):
  image, mask = sample()
  outputs = {run(name, image, mask, seed=s)[0].tobytes() for s in range(4)}
  assert len(outputs) > 1


@pytest.mark.parametrize("name", GEOMETRIC)
def test_geometric_ops_keep_mask_aligned(name):
  image, mask = sample()
  for seed in range(3):
    drawn, _ = run(name, mask_drawing(mask), None, seed=seed)
    _, out_mask = run(name, image, mask, seed=seed)
    agreement = ((drawn[..., 0] > 0.5) == (out_mask > 0)).mean()
    exact = name in ("hflip", "vflip", "rot90", "paste")
    assert agreement == 1.0 if exact else agreement > 0.97, (name, seed, agreement)


@pytest.mark.parametrize("name", PHOTOMETRIC)
def test_photometric_ops_leave_mask_alone(name):
  image, mask = sample()
  out, out_mask = run(name, image, mask)
  assert out_mask is mask
  assert not np.array_equal(out, image)


def test_flips_and_rot90_are_exact():
  image, mask = sample()
  out, out_mask = run("hflip", image, mask)
  np.testing.assert_array_equal(out, image[:, ::-1])
  np.testing.assert_array_equal(out_mask, mask[:, ::-1])
  out, out_mask = run("vflip", image, mask)
  np.testing.assert_array_equal(out, image[::-1])
  k = int(np.random.default_rng(0).integers(1, 4))
  out, out_mask = run("rot90", image, mask)
  np.testing.assert_array_equal(out, np.rot90(image, k))
  np.testing.assert_array_equal(out_mask, np.rot90(mask, k))


@pytest.mark.parametrize("name,params", [
    ("rotate", {"degrees": 0.0}), ("shift", {"fraction": 0.0}),
    ("crop", {"scale": (1.0, 1.0), "ratio": (1.0, 1.0)}), ("elastic", {"alpha": 0.0}),
    ("color_jitter", {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0}),
    ("noise", {"std": 0.0})])
def test_zero_strength_is_identity(name, params):
  image, mask = sample()
  out, out_mask = run(name, image, mask, **params)
  np.testing.assert_allclose(out, image, atol=1e-5)
  np.testing.assert_array_equal(out_mask, mask)


def test_strength_parameters_bound_the_change():
  image, mask = sample(64)
  # Shift: the lesion's centroid moves by at most fraction * side.
  _, moved = run("shift", image, mask, fraction=0.1, border="constant")
  centroid = lambda m: np.argwhere(m).mean(0)  # noqa: E731
  assert np.abs(centroid(moved) - centroid(mask)).max() <= 0.1 * 64 + 1
  # Elastic: no pixel moves more than alpha * side.
  yy, xx = np.mgrid[:64, :64].astype(np.float32)
  coords = np.stack([xx / 64, yy / 64, np.zeros_like(xx)], -1)
  warped, _ = run("elastic", coords, None, alpha=0.05, sigma=0.1)
  inner = np.s_[8:-8, 8:-8]
  displacement = np.abs(warped[inner][..., :2] - coords[inner][..., :2]) * 64
  assert displacement.max() <= 0.05 * 64 + 1e-3 and displacement.max() > 0.5
  # Noise: the sample std matches the requested one.
  flat = np.full((64, 64, 3), 0.5, np.float32)
  noisy, _ = run("noise", flat, None, std=0.05)
  assert abs(noisy.std() - 0.05) < 0.005
  # Rotation keeps the lesion's area (reflect border, lesion away from the edges).
  _, rotated = run("rotate", image, mask, degrees=90.0)
  assert abs(int(rotated.sum()) - int(mask.sum())) / mask.sum() < 0.05


def test_augmenter_runs_enabled_ops_deterministically():
  cfg = A.default_augment_config()
  for name in A.AUGMENTATIONS:
    cfg[name]["p"] = 1.0
  augmenter = A.Augmenter(cfg)
  assert [name for name, _, _ in augmenter.ops] == list(A.AUGMENTATIONS)
  image, mask = sample()
  out1 = augmenter(image, mask, np.random.default_rng(5))
  out2 = augmenter(image, mask, np.random.default_rng(5))
  out3 = augmenter(image, mask, np.random.default_rng(6))
  np.testing.assert_array_equal(out1[0], out2[0])
  np.testing.assert_array_equal(out1[1], out2[1])
  assert not np.array_equal(out1[0], out3[0])
  assert out1[0].flags.c_contiguous and out1[1].flags.c_contiguous
  assert out1[0].min() >= 0 and out1[0].max() <= 1


def test_augmenter_probability_zero_is_identity_and_p_is_respected():
  cfg = {name: {"p": 0.0} for name in A.AUGMENTATIONS}
  augmenter = A.Augmenter(cfg)
  image, mask = sample()
  out, out_mask = augmenter(image, mask, np.random.default_rng(0))
  np.testing.assert_array_equal(out, image)
  np.testing.assert_array_equal(out_mask, mask)
  flips = A.Augmenter({"hflip": {"p": 0.3}, "vflip": {"p": 0.0}})
  flipped = [not np.array_equal(flips(image, mask, np.random.default_rng(s))[0], image)
             for s in range(400)]
  assert 0.22 < np.mean(flipped) < 0.38


@pytest.mark.parametrize("cfg,key", [
    ({"blur": {"p": 0.5}}, "data.augment.blur"),
    ({"rotate": {"p": 0.5, "angle": 3}}, "data.augment.rotate.angle"),
    ({"noise": {"p": 1.5}}, "data.augment.noise.p"),
    ({"border": "wrap"}, "data.augment.border")])
def test_bad_augment_config_names_the_key(cfg, key):
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    A.Augmenter(cfg)
