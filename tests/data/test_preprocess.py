"""Preprocessing ops: decoding, black-frame and hair removal, resize modes, normalisation."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from flaxderm.data import config as config_lib
from flaxderm.data import preprocess as P


def skin_with_lesion(height=64, width=80, seed=0):
  """Textured skin (L ~ 200) with a dark round lesion in the middle; returns (image, mask)."""
  rng = np.random.default_rng(seed)
  image = np.empty((height, width, 3), np.uint8)
  image[:] = (215, 175, 160)
  image = np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)
  mask = np.zeros((height, width), np.uint8)
  cv2.circle(mask, (width // 2, height // 2), min(height, width) // 5, 1, -1)
  image[mask > 0] = (120, 80, 60)
  return image, mask


def draw_hairs(image, count, seed=0, thickness=2):
  """``count`` parallel, slanted dark hairs that do not touch (so each is one component)."""
  rng = np.random.default_rng(seed)
  hairs = np.zeros(image.shape[:2], np.uint8)
  height, width = image.shape[:2]
  slant = int(rng.integers(-width // 8, width // 8 + 1))
  for i in range(count):
    x = int((i + 0.5) * width / count)
    cv2.line(hairs, (x, 0), (x + slant, height - 1), 1, thickness)
  out = image.copy()
  out[hairs > 0] = (30, 20, 15)
  return out, hairs


# ------------------------------------------------------------------------------------------------
# Decoding.


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp"])
def test_decode_image_bytes_and_arrays(ext):
  image, mask = skin_with_lesion()
  encoded = cv2.imencode(ext, image[..., ::-1])[1].tobytes()
  decoded = P.decode_image(encoded, channels=3)
  assert decoded.shape == image.shape and decoded.dtype == np.uint8
  tolerance = 0 if ext != ".jpg" else 12
  assert np.abs(decoded.astype(int) - image).mean() <= tolerance  # RGB order kept
  assert P.decode_image(image, channels=3) is image or np.array_equal(
      P.decode_image(image, channels=3), image)
  png_mask = cv2.imencode(".png", mask)[1].tobytes()
  np.testing.assert_array_equal(P.decode_image(png_mask, channels=1)[..., 0], mask)
  np.testing.assert_array_equal(P.decode_image(mask[..., None], channels=1)[..., 0], mask)


def test_decode_image_rejects_bad_input():
  with pytest.raises(ValueError, match="'image'"):
    P.decode_image(b"not an image", channels=3)
  with pytest.raises(ValueError, match="'mask'"):
    P.decode_image(np.zeros((4, 4, 3), np.float32), channels=1, name="mask")


# ------------------------------------------------------------------------------------------------
# Black frame.


def test_black_frame_mask_ignores_dark_lesion_away_from_border():
  image, mask = skin_with_lesion()
  image[mask > 0] = 5  # a black lesion, but not touching the border
  image[:, :6] = 0
  frame = P.black_frame_mask(image)
  assert frame[:, :6].all()
  assert not frame[mask > 0].any()
  assert not frame[:, 6:][mask[:, 6:] == 0].any()


def test_remove_black_frame_crops_bands_and_keeps_mask_aligned():
  image, mask = skin_with_lesion(70, 90)
  framed = image.copy()
  framed[:5] = 0
  framed[:, -7:] = 3
  out, out_mask = P.remove_black_frame(framed, mask)
  assert out.shape == (65, 83, 3) and out_mask.shape == (65, 83)
  np.testing.assert_array_equal(out, image[5:, :-7])  # nothing left to fill: pixels untouched
  np.testing.assert_array_equal(out_mask, mask[5:, :-7])
  assert out_mask.sum() == mask.sum()


def test_remove_black_frame_fills_circular_field_corners():
  image, mask = skin_with_lesion(80, 80)
  field = np.zeros((80, 80), np.uint8)
  cv2.circle(field, (40, 40), 50, 1, -1)
  framed = np.where(field[..., None] > 0, image, 0).astype(np.uint8)
  out, out_mask = P.remove_black_frame(framed, mask)
  assert out.shape == framed.shape  # corners only: no full band to crop
  np.testing.assert_array_equal(out_mask, mask)
  lightness = cv2.cvtColor(out, cv2.COLOR_RGB2HLS)[..., 1]
  assert lightness[field == 0].min() > 100  # corners now look like skin
  assert np.array_equal(out[mask > 0], image[mask > 0])  # lesion untouched
  unfilled, _ = P.remove_black_frame(framed, mask, fill=False)
  np.testing.assert_array_equal(unfilled, framed)


def test_remove_black_frame_without_frame_is_identity():
  image, mask = skin_with_lesion()
  out, out_mask = P.remove_black_frame(image, mask)
  assert out is image and out_mask is mask
  assert P.remove_black_frame(image)[1] is None


# ------------------------------------------------------------------------------------------------
# Hair.


def test_hair_mask_finds_thin_lines_not_lesion_or_dots():
  image, mask = skin_with_lesion(96, 128)
  hairy, hairs = draw_hairs(image, 5)
  for x, y in [(15, 15), (110, 80), (20, 80)]:  # dark dots: not hair
    cv2.circle(hairy, (x, y), 2, (30, 20, 15), -1)
  detected, count = P.hair_mask(hairy, reference_size=0)
  assert count == 5
  recall = detected[hairs > 0].mean()
  assert recall > 0.9
  near_hair = cv2.dilate(hairs, np.ones((5, 5), np.uint8))
  core = cv2.erode(mask, np.ones((5, 5), np.uint8)) & (near_hair == 0)
  assert detected[core > 0].mean() < 0.02  # the lesion itself is not taken for hair
  for x, y in [(15, 15), (110, 80), (20, 80)]:
    if hairs[y - 4:y + 5, x - 4:x + 5].sum() == 0:
      assert detected[y, x] == 0
  clean_detected, clean_count = P.hair_mask(image, reference_size=0)
  assert clean_count == 0 and clean_detected.sum() == 0


def test_hair_mask_sizes_scale_with_resolution():
  image, _ = skin_with_lesion(96, 128)
  hairy, _ = draw_hairs(image, 3, thickness=2)
  big = cv2.resize(hairy, None, fx=3, fy=3, interpolation=cv2.INTER_NEAREST)
  # 6 px wide hairs: a 9 px disk at reference scale cannot close them, a scaled one can.
  _, absolute = P.hair_mask(big, reference_size=0)
  _, scaled = P.hair_mask(big, reference_size=96)
  assert absolute == 0 and scaled >= 1


def test_interpolate_fill_reproduces_linear_images():
  height, width = 20, 30
  yy, xx = np.mgrid[:height, :width]
  ramp = np.stack([2 * xx + 3 * yy, 5 * xx, 4 * yy + 10], -1).astype(np.uint8)
  region = np.zeros((height, width), bool)
  region[5:9, 3:25] = True  # a horizontal band
  region[:, 14:16] = True  # a vertical band touching the border: one-sided along columns
  filled = P.interpolate_fill(ramp, region)
  assert filled.dtype == np.uint8
  np.testing.assert_array_equal(filled[~region], ramp[~region])
  assert np.abs(filled.astype(int) - ramp)[region].max() <= 1  # exact up to rounding


def test_remove_hair_paths_dense_and_sparse():
  image, _ = skin_with_lesion(96, 128)
  for count, dense in [(2, False), (12, True)]:
    hairy, hairs = draw_hairs(image, count, seed=count)
    detected, n = P.hair_mask(hairy, reference_size=0)
    cleaned = P.remove_hair(hairy, reference_size=0, dense_threshold=3, dense_coverage=1.0)
    expected = (cv2.inpaint(hairy, detected, 5, cv2.INPAINT_NS) if dense
                else P.interpolate_fill(hairy, detected))
    assert (n > 3) == dense
    np.testing.assert_array_equal(cleaned, expected)
    error_before = np.abs(hairy.astype(int) - image)[hairs > 0].mean()
    error_after = np.abs(cleaned.astype(int) - image)[hairs > 0].mean()
    assert error_after < 0.25 * error_before
    np.testing.assert_array_equal(cleaned[detected == 0], hairy[detected == 0])


def test_remove_hair_coverage_selects_pde():
  image, _ = skin_with_lesion(96, 128)
  hairy, _ = draw_hairs(image, 2)
  detected, n = P.hair_mask(hairy, reference_size=0)
  cleaned = P.remove_hair(hairy, reference_size=0, dense_threshold=100, dense_coverage=0.0)
  np.testing.assert_array_equal(cleaned, cv2.inpaint(hairy, detected, 5, cv2.INPAINT_NS))


def test_remove_hair_is_deterministic_and_identity_without_hair():
  image, _ = skin_with_lesion()
  assert P.remove_hair(image, reference_size=0) is image
  hairy, _ = draw_hairs(image, 6)
  np.testing.assert_array_equal(P.remove_hair(hairy), P.remove_hair(hairy))


# ------------------------------------------------------------------------------------------------
# Geometry.


def test_resize_modes_shapes_and_alignment():
  image, mask = skin_with_lesion(60, 100)
  for mode in P.RESIZE_MODES:
    out, out_mask = P.resize(image, mask, 32, mode=mode)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert out_mask.shape == (32, 32) and set(np.unique(out_mask)) <= {0, 1}
    # An image that draws the mask must still match the mask after the resize.
    drawn, _ = P.resize(np.repeat(mask[..., None] * 200 + 30, 3, -1).astype(np.uint8), None, 32,
                        mode=mode)
    assert ((drawn[..., 0] > 130) == (out_mask > 0)).mean() > 0.97
  cropped, _ = P.resize(image, mask, 60, mode="crop")
  np.testing.assert_array_equal(cropped, image[:, 20:80])
  padded, padded_mask = P.resize(image, mask, 100, mode="pad")
  np.testing.assert_array_equal(padded[20:80], image)
  assert padded[:20].max() == 0 and padded_mask.sum() == mask.sum()
  half, _ = P.resize(image, None, 30, mode="crop", crop_fraction=0.5)
  np.testing.assert_array_equal(half, image[15:45, 35:65])
  with pytest.raises(ValueError, match="data.resize"):
    P.resize(image, mask, 32, mode="zoom")


def test_resize_upscales_bilinear_and_mask_nearest():
  image, mask = skin_with_lesion(20, 20)
  out, out_mask = P.resize(image, mask, 60, mode="stretch")
  np.testing.assert_array_equal(out_mask, np.repeat(np.repeat(mask, 3, 0), 3, 1))
  assert out.shape == (60, 60, 3)


# ------------------------------------------------------------------------------------------------
# Normalisation.


def test_normalization_presets_ranges():
  image = np.array([[[0, 128, 255]]], np.uint8)
  unit = P.normalize(image, P.normalization_stats("unit"))
  np.testing.assert_allclose(unit, [[[0, 128 / 255, 1]]], atol=1e-6)
  symmetric = P.normalize(image, P.normalization_stats("symmetric"))
  np.testing.assert_allclose(symmetric, [[[-1, 128 / 127.5 - 1, 1]]], atol=1e-6)
  imagenet = P.normalize(image, P.normalization_stats("imagenet"))
  np.testing.assert_allclose(imagenet[0, 0, 0], -0.485 / 0.229, rtol=1e-6)
  assert imagenet.dtype == np.float32
  rng = np.random.default_rng(0)
  per_image = P.normalize(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
                          P.normalization_stats("per_image"))
  np.testing.assert_allclose(per_image.mean((0, 1)), 0, atol=1e-5)
  np.testing.assert_allclose(per_image.std((0, 1)), 1, atol=1e-4)
  assert np.isfinite(P.normalize(np.zeros((4, 4, 3), np.uint8), None)).all()
  dataset = P.normalization_stats("dataset", (0.5, 0.4, 0.3), (0.1, 0.2, 0.3))
  np.testing.assert_allclose(P.normalize(image, dataset)[0, 0, 0], -5, rtol=1e-6)


def test_normalization_errors_name_the_key():
  with pytest.raises(ValueError, match="data.normalization"):
    P.normalization_stats("caffe")
  with pytest.raises(ValueError, match="data.mean"):
    P.normalization_stats("dataset")
  with pytest.raises(ValueError, match="data.std"):
    P.normalization_stats("dataset", (0, 0, 0), (1, 0, 1))
  assert set(P.NORMALIZATION_PRESETS) <= set(P.NORMALIZATIONS)


# ------------------------------------------------------------------------------------------------
# The config step.


def test_preprocess_config_step():
  cfg = config_lib.default_preprocess_config()
  image, mask = skin_with_lesion(70, 90)
  framed, _ = draw_hairs(image, 4)
  framed[:6] = 0
  out, out_mask = P.preprocess(framed, mask, cfg)  # both off by default
  assert out is framed and out_mask is mask
  cfg["remove_black_frame"] = True
  out, out_mask = P.preprocess(framed, mask, cfg)
  assert out.shape[0] == 64 and out_mask.shape == (64, 90)
  cfg["remove_hair"] = True
  cfg["reference_size"] = 0
  out_hair, _ = P.preprocess(framed, mask, cfg)
  assert out_hair.shape == out.shape and not np.array_equal(out_hair, out)
  assert P.hair_mask(out_hair, reference_size=0)[1] == 0


# ------------------------------------------------------------------------------------------------
# Real data: hair removal on PH2.


def _lesion_segmentation(image):
  """Otsu on blurred grey, largest dark component: a stand-in for 'the lesion mask'."""
  grey = cv2.GaussianBlur(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), (0, 0), 2)
  _, dark = cv2.threshold(grey, 0, 1, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
  dark = cv2.morphologyEx(dark, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
  _, labels, stats, _ = cv2.connectedComponentsWithStats(dark)
  return labels == 1 + np.argmax(stats[1:, cv2.CC_STAT_AREA])


def _dark_ridge_fraction(image):
  """Share of pixels on dark thin ridges (Sato tubeness, independent of the hair detector)."""
  filters = pytest.importorskip("skimage.filters")
  grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float64) / 255
  return (filters.sato(grey, sigmas=[1, 2], black_ridges=True) > 0.05).mean()


# IMD003: a hair mat (PDE path); IMD154: a few hairs (bilinear path).
@pytest.mark.real_data
@pytest.mark.parametrize("case", ["IMD003", "IMD154"])
def test_hair_removal_on_ph2(shared_data, case):
  folder = shared_data / "PH2Dataset" / "PH2 Dataset images" / case
  image_path = folder / f"{case}_Dermoscopic_Image" / f"{case}.bmp"
  if not image_path.exists():
    pytest.skip(f"{image_path} is absent")
  image = cv2.imread(str(image_path))[..., ::-1].copy()
  truth = cv2.imread(str(folder / f"{case}_lesion" / f"{case}_lesion.bmp"), 0) > 0
  cleaned = P.remove_hair(image)

  # Dark thin structures drop by more than half ...
  assert _dark_ridge_fraction(cleaned) < 0.5 * _dark_ridge_fraction(image)
  # ... while the lesion keeps its area (tolerance 10%) and its overlap with the ground truth.
  before, after = _lesion_segmentation(image), _lesion_segmentation(cleaned)
  assert abs(after.sum() - before.sum()) / before.sum() < 0.10
  iou = lambda a: (a & truth).sum() / (a | truth).sum()  # noqa: E731
  assert iou(after) > iou(before) - 0.02
  detected, _ = P.hair_mask(image)
  np.testing.assert_array_equal(cleaned[detected == 0], image[detected == 0])
