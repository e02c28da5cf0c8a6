"""Random training augmentations on the host (numpy + OpenCV), mask kept aligned with the image.

The list follows paper 003 (Figure 7: flip, random crop, rotation, shift, colour jitter, noise,
paste; standardisation is the "per_image" normalisation) and paper 004 (rotation and elastic
deformation). Every op has the signature ``op(image, mask, rng, **params) -> (image, mask)`` with
``image`` float32 (H, W, 3) in [0, 1], ``mask`` uint8 (H, W) or ``None`` and ``rng`` a
``np.random.Generator``; geometric ops move image and mask with the same parameters (bilinear for
the image, nearest neighbour for the mask), colour ops leave the mask alone. Output shape equals
input shape, so batches stay static.

``AUGMENTATIONS`` is the registry: op name -> (function, default parameters). ``data.augment`` in
the config holds one entry per op with its probability ``p`` and those parameters; ops run in the
registry's order (geometry first, so colour ops see the final pixels).
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import cv2
import numpy as np

Mask = np.ndarray | None
Pair = tuple[np.ndarray, Mask]

BORDERS = {"reflect": cv2.BORDER_REFLECT_101, "constant": cv2.BORDER_CONSTANT,
           "replicate": cv2.BORDER_REPLICATE}


def hflip(image: np.ndarray, mask: Mask, rng: np.random.Generator) -> Pair:
  """Mirror left-right."""
  del rng
  return image[:, ::-1], None if mask is None else mask[:, ::-1]


def vflip(image: np.ndarray, mask: Mask, rng: np.random.Generator) -> Pair:
  """Mirror top-bottom."""
  del rng
  return image[::-1], None if mask is None else mask[::-1]


def rot90(image: np.ndarray, mask: Mask, rng: np.random.Generator) -> Pair:
  """Rotate by 90, 180 or 270 degrees (lossless; square images keep their shape)."""
  k = int(rng.integers(1, 4))
  return np.rot90(image, k), None if mask is None else np.rot90(mask, k)


def _warp(image: np.ndarray, mask: Mask, matrix: np.ndarray, border: str) -> Pair:
  """Applies a 2x3 affine ``matrix`` to image (bilinear) and mask (nearest), same border rule."""
  height, width = image.shape[:2]
  mode = BORDERS[border]
  image = cv2.warpAffine(np.ascontiguousarray(image), matrix, (width, height),
                         flags=cv2.INTER_LINEAR, borderMode=mode)
  if mask is not None:
    mask = cv2.warpAffine(np.ascontiguousarray(mask), matrix, (width, height),
                          flags=cv2.INTER_NEAREST, borderMode=mode)
  return image, mask


def rotate(image: np.ndarray, mask: Mask, rng: np.random.Generator, *, degrees: float = 180.0,
           border: str = "reflect") -> Pair:
  """Rotate about the center by an angle uniform in [-degrees, degrees]; lesions have no
  canonical orientation, hence the full-circle default."""
  height, width = image.shape[:2]
  angle = rng.uniform(-degrees, degrees)
  matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle, 1.0)
  return _warp(image, mask, matrix, border)


def shift(image: np.ndarray, mask: Mask, rng: np.random.Generator, *, fraction: float = 0.1,
          border: str = "reflect") -> Pair:
  """Translate by up to ``fraction`` of the height/width along each axis."""
  height, width = image.shape[:2]
  dx, dy = rng.uniform(-fraction, fraction, size=2) * (width, height)
  return _warp(image, mask, np.float32([[1, 0, dx], [0, 1, dy]]), border)


def crop(image: np.ndarray, mask: Mask, rng: np.random.Generator, *,
         scale: tuple[float, float] = (0.5, 1.0),
         ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Pair:
  """Random resized crop: a window of ``scale`` of the area and aspect ``ratio`` (log-uniform),
  resized back to the input size."""
  height, width = image.shape[:2]
  area = rng.uniform(*scale) * height * width
  aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
  crop_w = int(np.clip(round(math.sqrt(area * aspect)), 1, width))
  crop_h = int(np.clip(round(math.sqrt(area / aspect)), 1, height))
  top = int(rng.integers(0, height - crop_h + 1))
  left = int(rng.integers(0, width - crop_w + 1))
  window = np.s_[top:top + crop_h, left:left + crop_w]
  image = cv2.resize(np.ascontiguousarray(image[window]), (width, height),
                     interpolation=cv2.INTER_LINEAR)
  if mask is not None:
    mask = cv2.resize(np.ascontiguousarray(mask[window]), (width, height),
                      interpolation=cv2.INTER_NEAREST_EXACT)
  return image, mask


def elastic(image: np.ndarray, mask: Mask, rng: np.random.Generator, *, alpha: float = 0.05,
            sigma: float = 0.08, border: str = "reflect") -> Pair:
  """Elastic deformation (Simard et al. 2003): a random displacement field, smoothed by a Gaussian
  of std ``sigma`` and scaled so its largest displacement is ``alpha`` (both as fractions of the
  image side, so the look does not depend on resolution)."""
  height, width = image.shape[:2]
  side = min(height, width)
  field = rng.uniform(-1, 1, size=(2, height, width)).astype(np.float32)
  field = np.stack([cv2.GaussianBlur(f, (0, 0), max(sigma * side, 0.5)) for f in field])
  field *= alpha * side / max(float(np.abs(field).max()), 1e-12)
  grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32),
                               np.arange(height, dtype=np.float32))
  map_x, map_y = grid_x + field[0], grid_y + field[1]
  mode = BORDERS[border]
  image = cv2.remap(np.ascontiguousarray(image), map_x, map_y, cv2.INTER_LINEAR, borderMode=mode)
  if mask is not None:
    mask = cv2.remap(np.ascontiguousarray(mask), map_x, map_y, cv2.INTER_NEAREST, borderMode=mode)
  return image, mask


def paste(image: np.ndarray, mask: Mask, rng: np.random.Generator, *,
          size: tuple[float, float] = (0.1, 0.3)) -> Pair:
  """Copies a random square patch (side ``size`` of the short side) to another random place;
  the mask's patch moves with it, so pasted lesion pieces stay labelled."""
  height, width = image.shape[:2]
  side = max(1, int(round(rng.uniform(*size) * min(height, width))))
  src_y, dst_y = rng.integers(0, height - side + 1, size=2)
  src_x, dst_x = rng.integers(0, width - side + 1, size=2)
  src = np.s_[src_y:src_y + side, src_x:src_x + side]
  dst = np.s_[dst_y:dst_y + side, dst_x:dst_x + side]
  image = image.copy()
  image[dst] = image[src]
  if mask is not None:
    mask = mask.copy()
    mask[dst] = mask[src]
  return image, mask


def color_jitter(image: np.ndarray, mask: Mask, rng: np.random.Generator, *,
                 brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2,
                 hue: float = 0.02) -> Pair:
  """Brightness, contrast, saturation factors uniform in [1 - s, 1 + s] and a hue shift uniform
  in [-hue, hue] of the colour circle, applied in that order (torchvision's definitions)."""
  b, c, s = (rng.uniform(1 - v, 1 + v) for v in (brightness, contrast, saturation))
  h = rng.uniform(-hue, hue)
  image = image * b
  gray = image @ np.float32([0.299, 0.587, 0.114])
  image = (image - gray.mean()) * c + gray.mean()
  gray = image @ np.float32([0.299, 0.587, 0.114])
  image = np.clip((image - gray[..., None]) * s + gray[..., None], 0, 1).astype(np.float32)
  if h:
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)  # float input: hue in degrees [0, 360)
    hsv[..., 0] = np.mod(hsv[..., 0] + h * 360.0, 360.0)
    image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
  return np.clip(image, 0, 1), mask


def noise(image: np.ndarray, mask: Mask, rng: np.random.Generator, *, std: float = 0.03) -> Pair:
  """Additive Gaussian noise of standard deviation ``std`` (in [0, 1] pixel units), clipped."""
  image = image + rng.normal(0.0, std, size=image.shape).astype(np.float32)
  return np.clip(image, 0, 1), mask


def random_window(image: np.ndarray, mask: Mask, rng: np.random.Generator, size: int) -> Pair:
  """A ``size`` x ``size`` window at a uniformly random position (torchvision's RandomCrop after
  a short-side Resize): the translation that a centred square never shows. Not in the registry:
  it changes the shape, so the pipeline runs it before the registered ops."""
  height, width = image.shape[:2]
  if height < size or width < size:
    raise ValueError(f"random_window: image {image.shape[:2]} is smaller than the {size} px window")
  top = int(rng.integers(0, height - size + 1))
  left = int(rng.integers(0, width - size + 1))
  window = np.s_[top:top + size, left:left + size]
  return image[window], None if mask is None else mask[window]


class Augmentation(NamedTuple):
  fn: Callable[..., Pair]
  p: float  # default probability
  params: dict[str, Any]  # default parameters (the op's keyword arguments)


def _entry(fn: Callable[..., Pair], p: float) -> Augmentation:
  params = {name: param.default for name, param in inspect.signature(fn).parameters.items()
            if param.kind is param.KEYWORD_ONLY and name != "border"}
  return Augmentation(fn, p, params)


# Registry order is application order. Flips are on by default (free, label-preserving for
# dermoscopy); the rest are opt-in per experiment.
AUGMENTATIONS: dict[str, Augmentation] = {
    "hflip": _entry(hflip, 0.5),
    "vflip": _entry(vflip, 0.5),
    "rot90": _entry(rot90, 0.0),
    "rotate": _entry(rotate, 0.0),
    "shift": _entry(shift, 0.0),
    "crop": _entry(crop, 0.0),
    "elastic": _entry(elastic, 0.0),
    "paste": _entry(paste, 0.0),
    "color_jitter": _entry(color_jitter, 0.0),
    "noise": _entry(noise, 0.0),
}
_USES_BORDER = ("rotate", "shift", "elastic")


def default_augment_config() -> dict[str, Any]:
  """``data.augment`` defaults: ``border`` plus one ``{p, **params}`` dict per op."""
  config: dict[str, Any] = {"border": "reflect"}
  for name, entry in AUGMENTATIONS.items():
    config[name] = {"p": entry.p, **entry.params}
  return config


def validate_augment_config(cfg: Mapping[str, Any]) -> None:
  """ValueError naming the first unknown op / parameter or out-of-range probability."""
  for name in cfg:
    if name == "border":
      if cfg[name] not in BORDERS:
        raise ValueError(f"data.augment.border: unknown {cfg[name]!r}; expected one of "
                         f"{tuple(BORDERS)}")
      continue
    if name not in AUGMENTATIONS:
      raise ValueError(f"data.augment.{name}: unknown augmentation; known: "
                       f"{('border', *AUGMENTATIONS)}")
    allowed = {"p", *AUGMENTATIONS[name].params}
    for key in cfg[name]:
      if key not in allowed:
        raise ValueError(f"data.augment.{name}.{key}: unknown parameter; expected one of "
                         f"{sorted(allowed)}")
    p = cfg[name].get("p", AUGMENTATIONS[name].p)
    if not 0.0 <= p <= 1.0:
      raise ValueError(f"data.augment.{name}.p must be in [0, 1], got {p}")


class Augmenter:
  """The augmentation of ``data.augment``: ops with p > 0, in registry order.

  One uniform draw per enabled op decides whether it runs, then the op draws its own parameters,
  so the result is a pure function of the generator's state. A class (not a closure) so grain
  can pickle it into worker processes.
  """

  def __init__(self, cfg: Mapping[str, Any]):
    validate_augment_config(cfg)
    border = cfg.get("border", "reflect")
    self.ops: list[tuple[str, float, dict[str, Any]]] = []
    for name, entry in AUGMENTATIONS.items():
      options = dict(cfg.get(name, {}))
      p = options.pop("p", entry.p)
      if p <= 0:
        continue
      params = {**entry.params, **options}
      if name in _USES_BORDER:
        params["border"] = border
      self.ops.append((name, p, params))

  def __call__(self, image: np.ndarray, mask: Mask, rng: np.random.Generator) -> Pair:
    for name, p, params in self.ops:
      if rng.random() < p:
        image, mask = AUGMENTATIONS[name].fn(image, mask, rng, **params)
    return np.ascontiguousarray(image), None if mask is None else np.ascontiguousarray(mask)
