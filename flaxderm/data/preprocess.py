"""Deterministic per-image preprocessing on the host (numpy + OpenCV).

Everything here maps one decoded example to the same output every time, which is what lets the
pipeline cache it (``data.cache``): decoding, black-frame and hair removal (paper 004, §3.1), the
center crop + proportional resize of paper 003 (§4.2) and normalisation.

Conventions: images are RGB ``uint8`` arrays (H, W, 3); masks are ``uint8`` (H, W) with values 0/1,
or ``None`` for datasets without masks. Functions that change geometry take and return the mask so
it stays aligned with the image; functions that only change colours take the image alone.
"""
from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageOps
import simplejpeg

# Mean and std in [0, 1] pixel units, per preset name. Kept as plain data so that pretrained-weight
# configs can pick the preset their weights were trained with by name.
NORMALIZATION_PRESETS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # [0, 1]
    "symmetric": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # [-1, 1]
}
# "dataset" uses a per-dataset mean/std (data.mean / data.std); "per_image" standardises each image
# by its own statistics (paper 003, Figure 7h), so neither has fixed numbers.
NORMALIZATIONS = (*NORMALIZATION_PRESETS, "dataset", "per_image")
RESIZE_MODES = ("crop", "pad", "stretch")


# ----------------------------------------------------------------------------------------------
# Decoding.


def decode_image(value: Any, *, channels: int, name: str = "image") -> np.ndarray:
  """Returns a uint8 array (H, W, channels) from encoded bytes (PNG/JPEG/BMP) or a decoded array.

  TFDS records read with ``SkipDecoding`` hold the encoded bytes; in-memory records hold arrays.
  EXIF orientation is ignored, as TFDS's own decoder does: the builders store images upright
  (``rgb_pixels``) and without the tag, in the geometry of their masks.
  """
  if isinstance(value, (bytes, np.bytes_)):
    flag = cv2.IMREAD_COLOR if channels == 3 else cv2.IMREAD_GRAYSCALE
    flag |= cv2.IMREAD_IGNORE_ORIENTATION
    array = cv2.imdecode(np.frombuffer(value, np.uint8), flag)
    if array is None:
      raise ValueError(f"feature {name!r}: bytes could not be decoded as an image")
    if channels == 3:
      array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
  else:
    array = np.asarray(value)
  if array.ndim == 2:
    array = array[..., None]
  if array.ndim != 3 or array.shape[-1] != channels or array.dtype != np.uint8:
    raise ValueError(f"feature {name!r}: expected uint8 (H, W, {channels}), got "
                     f"{array.dtype} {array.shape}")
  return array


EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
# Integer pixels (16-bit PNGs and TIFFs) are scaled to 8 bits by their full 16-bit range, as
# viewers show them: 65535 is white, whatever the image's own maximum.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_SIXTEEN_BIT_MAX = 65535


def orientation(im: Image.Image) -> int:
  """The image's EXIF orientation (1: stored upright)."""
  return im.getexif().get(EXIF_ORIENTATION, 1)


def upright_size(im: Image.Image) -> tuple[int, int]:
  """(width, height) of the image as viewers show it, its EXIF orientation applied."""
  return im.size[::-1] if orientation(im) in _TRANSPOSING_ORIENTATIONS else im.size


def rgb_pixels(im: Image.Image, name: str = "image") -> np.ndarray:
  """uint8 RGB pixels of a PIL image as viewers show it: its EXIF orientation applied; modes 1,
  L, LA, P, RGBA, CMYK, ... converted by PIL (alpha dropped); 16-bit integer modes scaled by
  65535 to 8 bits. ValueError naming ``name`` for float pixels (mode F, no defined range) and
  integers outside 0..65535."""
  if orientation(im) != 1:
    im = ImageOps.exif_transpose(im)
  if im.mode == "F":
    raise ValueError(f"{name}: mode F (32-bit float pixels) has no defined range; save it as an "
                     "8- or 16-bit image")
  if im.mode not in _SIXTEEN_BIT_MODES:
    return np.asarray(im.convert("RGB"))
  values = np.asarray(im).astype(np.int64)
  if values.size and (values.min() < 0 or values.max() > _SIXTEEN_BIT_MAX):
    raise ValueError(f"{name}: mode {im.mode} pixels {values.min()}..{values.max()} lie outside "
                     f"0..{_SIXTEEN_BIT_MAX}; save it as an 8- or 16-bit image")
  grey = np.round(values * (255 / _SIXTEEN_BIT_MAX)).astype(np.uint8)
  return np.repeat(grey[..., None], 3, axis=-1)


def read_image(path: str | Path) -> np.ndarray:
  """uint8 RGB pixels of an image file as viewers show it (``rgb_pixels``), decoded completely
  and checked as the dataset builders check theirs (``check_jpeg``)."""
  data = Path(path).read_bytes()
  with Image.open(io.BytesIO(data)) as im:
    im.load()  # decodes everything: a truncated file fails here
    check_jpeg(data, im.format, im.mode)
    return rgb_pixels(im, str(path))


def check_jpeg(data: bytes, image_format: str | None, mode: str) -> None:
  """ValueError when ``data`` is a JPEG (PIL's ``format`` and ``mode`` of it) that libjpeg-turbo
  reports damaged: its warnings (e.g. "Corrupt JPEG data") count as errors, since PIL and OpenCV
  decode damaged entropy-coded data into garbage pixels without complaint. Other files pass."""
  if image_format == "JPEG" and mode in ("RGB", "L"):  # the modes libjpeg-turbo decodes to RGB
    simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)


# ----------------------------------------------------------------------------------------------
# Black-frame and hair removal (paper 004, §3.1.2 and §3.1.3).


def _scaled(pixels: float, shape: Sequence[int], reference_size: int) -> float:
  """``pixels`` given for an image whose short side is ``reference_size``, scaled to ``shape``.

  Hair widths and frame bands scale with resolution, so fixed pixel sizes tuned on ~300 px images
  would miss hair on full-resolution ISIC images. ``reference_size=0`` keeps sizes absolute.
  """
  return pixels * min(shape[:2]) / reference_size if reference_size else pixels


def _odd(size: float) -> int:
  return max(3, int(round(size)) // 2 * 2 + 1)


def black_frame_mask(image: np.ndarray, *, threshold: float = 20.0) -> np.ndarray:
  """Pixels of the dark band around the image: HSL lightness below ``threshold`` (0-255) and
  connected to the image border.

  The lightness is the L of HSL, (max(R, G, B) + min(R, G, B)) / 2 (paper 004, Eq. 1). Requiring
  a border connection keeps dark lesions in the middle of the image out of the frame.
  """
  lightness = cv2.cvtColor(image, cv2.COLOR_RGB2HLS)[..., 1]
  dark = (lightness < threshold).astype(np.uint8)
  count, labels = cv2.connectedComponents(dark, connectivity=8)
  border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
  touches = np.zeros(count, bool)
  touches[border] = True
  touches[0] = False
  return touches[labels]


def remove_black_frame(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    threshold: float = 20.0,
    line_fraction: float = 0.5,
    fill: bool = True,
    margin: float = 8.0,
    inpaint_radius: float = 5.0,
    reference_size: int = 300,
) -> tuple[np.ndarray, np.ndarray | None]:
  """Removes the dark acquisition frame: crops frame bands, then inpaints what is left of it.

  Outer rows and columns whose share of frame pixels is at least ``line_fraction`` are cropped
  (rectangular bands; image and mask alike). With ``fill``, the remaining frame pixels (the corners
  of a circular dermoscope field), grown by ``margin`` pixels to cover the ring's dark gradient,
  are inpainted (Telea, ``inpaint_radius``), so the network never sees a black border. The mask is
  not changed by filling.
  """
  frame = black_frame_mask(image, threshold=threshold)
  if not frame.any():
    return image, mask
  rows = np.flatnonzero(frame.mean(axis=1) < line_fraction)
  cols = np.flatnonzero(frame.mean(axis=0) < line_fraction)
  if rows.size == 0 or cols.size == 0:  # all frame: nothing recognisable to keep
    return image, mask
  window = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
  image, frame = image[window], frame[window]
  if mask is not None:
    mask = mask[window]
  if fill and frame.any():
    grow = _odd(2 * _scaled(margin, image.shape, reference_size) + 1)
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (grow, grow))
    region = cv2.dilate(frame.astype(np.uint8), disk)
    radius = _scaled(inpaint_radius, image.shape, reference_size)
    image = cv2.inpaint(np.ascontiguousarray(image), region, radius, cv2.INPAINT_TELEA)
  return np.ascontiguousarray(image), None if mask is None else np.ascontiguousarray(mask)


def hair_mask(
    image: np.ndarray,
    *,
    kernel_size: float = 9,
    threshold: float = 20.0,
    min_length: float = 25.0,
    max_fill: float = 0.3,
    dilate: float = 1.0,
    reference_size: int = 300,
) -> tuple[np.ndarray, int]:
  """Detects hair (paper 004, §3.1.3 steps 1-4); returns (uint8 0/1 mask, number of hairs N).

  The image is converted to LUV and each channel is closed with a disk of ``kernel_size`` pixels
  (Eq. 2); the closing fills dark structures thinner than the disk, so the difference image
  (Euclidean over L, U, V) peaks on troughs such as hairs. Troughs deeper than ``threshold``
  (0-255 LUV units) are split into connected components. A component counts as a hair when its
  principal-axis length is at least ``min_length`` and it is thin — area / length^2 at most
  ``max_fill`` — which drops the dots, globules and pigment network that the closing also lifts.
  Kept components are grown by ``dilate`` pixels to cover hair edges. Pixel sizes are given for a
  short side of ``reference_size`` and scaled to the image.
  """

  def scale(pixels: float) -> float:
    return _scaled(pixels, image.shape, reference_size)

  luv = cv2.cvtColor(image, cv2.COLOR_RGB2Luv)
  disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (_odd(scale(kernel_size)),) * 2)
  closed = cv2.morphologyEx(luv, cv2.MORPH_CLOSE, disk, borderType=cv2.BORDER_REPLICATE)
  depth = np.linalg.norm(closed.astype(np.float32) - luv, axis=-1)
  troughs = (depth > threshold).astype(np.uint8)
  count, labels, stats, _ = cv2.connectedComponentsWithStats(troughs, connectivity=8)
  # Per-component second moments, vectorised with bincount: the principal-axis length of a line
  # segment of length l is ~1.15 l (4 standard deviations along its axis).
  ys, xs = np.nonzero(labels)
  ids = labels[ys, xs]
  area = np.maximum(stats[:, cv2.CC_STAT_AREA], 1).astype(np.float64)

  def moment(values: np.ndarray) -> np.ndarray:
    return np.bincount(ids, values, count) / area

  mx, my = moment(xs), moment(ys)
  sxx, syy = moment(xs * xs) - mx * mx, moment(ys * ys) - my * my
  sxy = moment(xs * ys) - mx * my
  major_var = (sxx + syy) / 2 + np.sqrt(((sxx - syy) / 2) ** 2 + sxy ** 2)
  length = 4 * np.sqrt(np.maximum(major_var, 0))
  hair = (length >= scale(min_length)) & (area <= max_fill * np.maximum(length, 1) ** 2)
  hair[0] = False
  mask = hair[labels].astype(np.uint8)
  grow = int(round(scale(dilate)))
  if grow > 0 and hair.any():
    mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1,) * 2))
  return mask, int(hair.sum())


def _fill_along_rows(image: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Linear interpolation inside ``region`` between the nearest outside pixels left and right.

  Returns the estimate and its weight: 1 / gap length, so that across a hair (short gap) beats
  along it; one-sided gaps extrapolate the single neighbour with half that weight.
  """
  width = image.shape[1]
  position = np.broadcast_to(np.arange(width), region.shape)
  left = np.maximum.accumulate(np.where(region, -1, position), axis=1)
  right = np.minimum.accumulate(np.where(region, width, position)[:, ::-1], axis=1)[:, ::-1]
  has_left, has_right = left >= 0, right < width

  def take(idx: np.ndarray) -> np.ndarray:
    return np.take_along_axis(image, np.clip(idx, 0, width - 1)[..., None], axis=1)

  gap = np.maximum(right - left, 1).astype(np.float32)
  t = ((position - left) / gap)[..., None]
  both = take(left) * (1 - t) + take(right) * t
  estimate = np.where(has_left[..., None], np.where(has_right[..., None], both, take(left)),
                      take(right))
  one_side = np.where(has_left, position - left, right - position) * 2.0
  weight = np.where(has_left & has_right, 1 / gap,
                    np.where(has_left | has_right, 1 / np.maximum(one_side, 1), 0.0))
  return estimate, weight


def interpolate_fill(image: np.ndarray, region: np.ndarray) -> np.ndarray:
  """Fills ``region`` by bilinear interpolation from its 4 nearest outside pixels (paper 004, Eq 4).

  Each region pixel blends the horizontal interpolation between the nearest non-region pixels to
  its left and right with the vertical one between those above and below. Vectorised over the
  image (running max/min of indices), so its cost does not depend on the amount of hair.
  """
  region = region.astype(bool)
  if not region.any():
    return image
  pixels = image.astype(np.float32)
  est_h, w_h = _fill_along_rows(pixels, region)
  est_v, w_v = _fill_along_rows(pixels.transpose(1, 0, 2), region.T)
  est_v, w_v = est_v.transpose(1, 0, 2), w_v.T
  total = w_h + w_v
  blended = (est_h * w_h[..., None] + est_v * w_v[..., None]) / np.maximum(total, 1e-12)[..., None]
  filled = np.where((region & (total > 0))[..., None], blended, pixels)
  return np.clip(np.rint(filled), 0, 255).astype(image.dtype)


def remove_hair(
    image: np.ndarray,
    *,
    dense_threshold: int = 15,
    dense_coverage: float = 0.05,
    inpaint_radius: float = 5.0,
    reference_size: int = 300,
    **detect: Any,
) -> np.ndarray:
  """Removes hair (paper 004, §3.1.3 steps 5-6); ``detect`` options go to ``hair_mask``.

  With more than ``dense_threshold`` hairs (N > T) the hair pixels are repaired by the
  Navier-Stokes PDE inpainting of OpenCV (``INPAINT_NS``, radius ``inpaint_radius``); with fewer,
  the cheaper bilinear fill of ``interpolate_fill`` is enough. Crossing hairs merge into one
  component, so a dense mat can count as few "hairs": covering more than ``dense_coverage`` of the
  image also selects the PDE repair (bilinear fill across wide gaps leaves a plaid pattern).
  """
  mask, count = hair_mask(image, reference_size=reference_size, **detect)
  if count == 0:
    return image
  if count > dense_threshold or mask.mean() > dense_coverage:
    radius = _scaled(inpaint_radius, image.shape, reference_size)
    return cv2.inpaint(np.ascontiguousarray(image), mask, radius, cv2.INPAINT_NS)
  return interpolate_fill(image, mask)


# ----------------------------------------------------------------------------------------------
# Geometry: center crop + proportional resize (paper 003, §4.2), letterbox, plain resize.


def resize_pair(image: np.ndarray, mask: np.ndarray | None, size: tuple[int, int]
                ) -> tuple[np.ndarray, np.ndarray | None]:
  """Resizes to ``size`` = (height, width): area averaging when shrinking, bilinear when
  enlarging, nearest neighbour for the mask so labels stay 0/1 (the "exact" variant: OpenCV's
  plain INTER_NEAREST samples half a pixel off the grid the image interpolations use)."""
  height, width = size
  if image.shape[:2] == (height, width):
    return image, mask
  shrink = height * width < image.shape[0] * image.shape[1]
  image = cv2.resize(image, (width, height),
                     interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
  if mask is not None:
    mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)
  return image, mask


def _square_side(height: int, width: int, fraction: float) -> int:
  return max(1, int(round(min(height, width) * fraction)))


def center_crop(image: np.ndarray, mask: np.ndarray | None, fraction: float = 1.0
                ) -> tuple[np.ndarray, np.ndarray | None]:
  """The centered square whose side is ``fraction`` of the short side."""
  height, width = image.shape[:2]
  side = _square_side(height, width, fraction)
  top, left = (height - side) // 2, (width - side) // 2
  window = np.s_[top:top + side, left:left + side]
  return image[window], None if mask is None else mask[window]


def pad_to_square(image: np.ndarray, mask: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray | None]:
  """Centers the image on a black square (mask: background), keeping every pixel."""
  height, width = image.shape[:2]
  side = max(height, width)
  top, left = (side - height) // 2, (side - width) // 2
  pad = ((top, side - height - top), (left, side - width - left))
  image = np.pad(image, (*pad, (0, 0)))
  return image, None if mask is None else np.pad(mask, pad)


def resize(image: np.ndarray, mask: np.ndarray | None, size: int, *, mode: str = "crop",
           crop_fraction: float = 1.0, keep_context: bool = False
           ) -> tuple[np.ndarray, np.ndarray | None]:
  """Square ``size`` x ``size`` output. ``mode``: "crop" = center crop then proportional resize
  (no distortion, loses the long side's ends), "pad" = letterbox, "stretch" = plain resize.

  ``keep_context`` (mode "crop" only): the same scale as "crop", but the whole image is kept
  around the centred square (at least ``size`` on each side), so that training can take random
  ``size`` windows of it (``augment.random_window``) where evaluation takes the centred one."""
  if keep_context:
    if mode != "crop":
      raise ValueError(f"keep_context needs data.resize='crop', got {mode!r}")
    height, width = image.shape[:2]
    scale = size / _square_side(height, width, crop_fraction)
    return resize_pair(image, mask, (max(size, int(round(height * scale))),
                                     max(size, int(round(width * scale)))))
  if mode == "crop":
    image, mask = center_crop(image, mask, crop_fraction)
  elif mode == "pad":
    image, mask = pad_to_square(image, mask)
  elif mode != "stretch":
    raise ValueError(f"data.resize: unknown mode {mode!r}; expected one of {RESIZE_MODES}")
  return resize_pair(image, mask, (size, size))


def _fit_axis(positions: np.ndarray, sources: np.ndarray, count: int) -> tuple[int, int]:
  """(start, length) in the original image of a model axis of ``count`` pixels, from the original
  pixel (``sources``) that model pixels ``positions`` show: a least-squares line through pixel
  centres, so nearest-neighbour sampling offsets average out."""
  if positions.size == 1:
    return int(sources[0]) - int(positions[0]), count
  scale, offset = np.polyfit(positions + 0.5, sources + 0.5, 1)
  return int(round(offset)), max(1, int(round(scale * count)))


@dataclasses.dataclass(frozen=True)
class InputWindow:
  """Where a model input lies in its original image: the whole ``size`` x ``size`` input covers
  the original box ``top, left, height, width``, which extends past the image where the input
  was letterboxed (``resize="pad"``) and lies inside it where it was cropped."""

  image_shape: tuple[int, int]
  box: tuple[int, int, int, int]

  @classmethod
  def from_coordinates(cls, coordinates: np.ndarray, image_shape: tuple[int, int]
                       ) -> "InputWindow":
    """From the model-sized map of ``1 + row * width + col`` of the original pixel each model
    pixel shows (0: padding), as the mask path of ``preprocess`` and ``resize`` produces it."""
    rows, cols = np.nonzero(coordinates > 0)
    if rows.size == 0:
      raise ValueError("the model input shows no pixel of the image")
    source = coordinates[rows, cols].astype(np.int64) - 1
    width = image_shape[1]
    top, height = _fit_axis(rows, source // width, coordinates.shape[0])
    left, box_width = _fit_axis(cols, source % width, coordinates.shape[1])
    return cls(tuple(image_shape), (top, left, height, box_width))

  def paste(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """A model-sized float map (e.g. lesion probabilities) at the original image size: resized
    (bilinear) onto the box, ``fill`` where the model saw nothing (cropped away)."""
    top, left, height, width = self.box
    on_box = cv2.resize(np.ascontiguousarray(values, np.float32), (width, height),
                        interpolation=cv2.INTER_LINEAR)
    out = np.full(self.image_shape, fill, np.float32)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + height, self.image_shape[0]), min(left + width, self.image_shape[1])
    if y1 > y0 and x1 > x0:
      out[y0:y1, x0:x1] = on_box[y0 - top:y1 - top, x0 - left:x1 - left]
    return out


# ----------------------------------------------------------------------------------------------
# Normalisation.


def normalization_stats(name: str, mean: Sequence[float] = (), std: Sequence[float] = ()
                        ) -> tuple[np.ndarray, np.ndarray] | None:
  """(mean, std) float32 arrays in [0, 1] units for a preset; ``None`` for "per_image".

  "dataset" takes the given ``mean``/``std`` (the dataset's own statistics).
  """
  if name == "per_image":
    return None
  if name == "dataset":
    if len(mean) != 3 or len(std) != 3:
      raise ValueError("data.normalization='dataset' needs data.mean and data.std (3 values "
                       f"each), got mean={tuple(mean)} std={tuple(std)}")
  elif name in NORMALIZATION_PRESETS:
    mean, std = NORMALIZATION_PRESETS[name]
  else:
    raise ValueError(f"data.normalization: unknown preset {name!r}; expected one of "
                     f"{NORMALIZATIONS}")
  std = np.asarray(std, np.float32)
  if np.any(std <= 0):
    raise ValueError(f"data.std must be positive, got {tuple(std)}")
  return np.asarray(mean, np.float32), std


def normalize(image: np.ndarray, stats: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
  """float32 image from a [0, 1] float or uint8 image; ``stats`` from ``normalization_stats``."""
  if image.dtype == np.uint8:
    image = image.astype(np.float32) / 255.0
  image = image.astype(np.float32, copy=False)
  if stats is None:
    mean = image.mean(axis=(0, 1))
    std = np.maximum(image.std(axis=(0, 1)), 1.0 / np.sqrt(image[..., 0].size))
    return (image - mean) / std
  mean, std = stats
  return (image - mean) / std


# ----------------------------------------------------------------------------------------------
# The config step.


def preprocess(image: np.ndarray, mask: np.ndarray | None, cfg: Mapping[str, Any]
               ) -> tuple[np.ndarray, np.ndarray | None]:
  """Applies ``data.preprocess``: black-frame removal, then hair removal, each when enabled.

  Frame first, as in the paper: the frame's dark edge would otherwise be taken for hair.
  """
  if cfg["remove_black_frame"]:
    image, mask = remove_black_frame(image, mask, reference_size=cfg["reference_size"],
                                     **cfg["black_frame"])
  if cfg["remove_hair"]:
    image = remove_hair(image, reference_size=cfg["reference_size"], **cfg["hair"])
  return image, mask
