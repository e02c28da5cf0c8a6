"""A PNG grid of validation examples: image | ground truth overlay | prediction overlay, one row
per image, so a run's masks can be eyeballed without a notebook."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

TRUTH_COLOUR = np.array([0.1, 0.9, 0.2], np.float32)  # green
PREDICTION_COLOUR = np.array([1.0, 0.2, 0.1], np.float32)  # red


def displayable(image: np.ndarray) -> np.ndarray:
  """A normalised image (any mean/std, or per-image) stretched back to [0, 1] for display."""
  lo, hi = np.percentile(image, (0.5, 99.5))
  return np.clip((image - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def _edges(mask: np.ndarray) -> np.ndarray:
  padded = np.pad(mask, 1, mode="edge")
  interior = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
  return mask & ~interior


def overlay(image: np.ndarray, mask: np.ndarray, colour: np.ndarray, alpha: float = 0.4
            ) -> np.ndarray:
  """``image`` (H, W, 3) in [0, 1] with ``mask`` (H, W) tinted and outlined in ``colour``."""
  mask = mask.astype(bool)
  out = image.copy()
  out[mask] = (1 - alpha) * out[mask] + alpha * colour
  out[_edges(mask)] = colour
  return out


def save_overlay_grid(path: str | Path, images: np.ndarray, truths: np.ndarray,
                      predictions: np.ndarray, *, gap: int = 2, min_side: int = 128) -> Path:
  """Writes the grid for (N, H, W, 3) normalised images and (N, H, W) 0/1 masks, small images
  enlarged (nearest) to about ``min_side``; returns the path."""
  if not (len(images) == len(truths) == len(predictions)) or len(images) == 0:
    raise ValueError(f"save_overlay_grid: need as many images, truths and predictions (>= 1), got "
                     f"{len(images)}, {len(truths)}, {len(predictions)}")
  zoom = max(1, min_side // images.shape[1])
  images, truths, predictions = (np.repeat(np.repeat(np.asarray(a), zoom, 1), zoom, 2)
                                 for a in (images, truths, predictions))
  n, h, w, _ = images.shape
  grid = np.ones((n * (h + gap) - gap, 3 * (w + gap) - gap, 3), np.float32)
  for i in range(n):
    image = displayable(images[i].astype(np.float32))
    tiles = (image, overlay(image, truths[i], TRUTH_COLOUR),
             overlay(image, predictions[i], PREDICTION_COLOUR))
    for j, tile in enumerate(tiles):
      grid[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = tile
  path = Path(path)
  Image.fromarray((grid * 255).round().astype(np.uint8)).save(path)
  return path
