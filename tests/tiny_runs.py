"""Tiny trained runs shared by the tests of the run tools (predict, calibrate, explain, report,
compare): the configs and the fixtures' training, seconds on a CPU."""
from __future__ import annotations

from pathlib import Path

import ml_collections
import numpy as np
from PIL import Image

from flaxderm.train import config as config_lib
from flaxderm.train import loop


def tiny_config(**changes) -> ml_collections.ConfigDict:
  c = config_lib.default_config()
  c.model.kwargs = {"base_width": 4, "depth": 2}
  c.data.image_size = 32
  c.data.builder_kwargs = {"num_train": 16, "num_validation": 8, "num_test": 4, "image_size": 48}
  c.batch_size = 4
  c.num_epochs = 0
  c.num_steps = 4
  c.eval.every_steps = 4
  c.eval.batch_size = 8
  c.progress_bar = False
  c.visualize_images = 0
  for key, value in changes.items():
    config_lib.apply_override(c, key, str(value))
  return c


def train_segmentation_run(workdir: Path) -> Path:
  loop.train(tiny_config(), workdir)
  return workdir


def train_classification_run(workdir: Path) -> Path:
  """A one-block-per-stage resnet18 at 64 px (its last stage a 2x2 map, so Grad-CAM has a map),
  with dataset normalisation statistics recorded in the run."""
  cfg = tiny_config(**{"model.name": "resnet18", "data.task": "classification",
                       "loss.name": "cross_entropy", "data.normalization": "dataset",
                       "data.image_size": 64})
  cfg.model.kwargs = {"depths": (1, 1, 1, 1)}
  loop.train(cfg, workdir)
  return workdir


METADATA_FIELDS = ("age", "sex", "site")


def metadata_config(fusion: str) -> ml_collections.ConfigDict:
  """A one-block-per-stage resnet18 at 64 px that takes the synthetic lesions' age, sex and site
  through the ``fusion`` head."""
  cfg = tiny_config(**{"model.name": "resnet18", "data.task": "classification",
                       "loss.name": "cross_entropy", "data.image_size": 64,
                       "model.metadata_fusion": fusion})
  cfg.model.kwargs = {"depths": (1, 1, 1, 1)}
  cfg.data.metadata = METADATA_FIELDS
  return cfg


def write_image(path: Path, height: int, width: int, seed: int = 0) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(path)
  return path


def write_rotated_jpeg(path: Path, orientation: int, width: int = 40, height: int = 24) -> Path:
  """A JPEG stored ``width`` x ``height`` whose EXIF orientation turns it upright for viewers."""
  path.parent.mkdir(parents=True, exist_ok=True)
  pixels = np.zeros((height, width, 3), np.uint8)
  pixels[:, : width // 4] = 255  # a bright band along one short side, to see where it goes
  exif = Image.Exif()
  exif[0x0112] = orientation
  Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=95)
  return path
