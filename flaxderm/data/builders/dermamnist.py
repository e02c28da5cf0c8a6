"""``dermamnist``: MedMNIST's DermaMNIST (HAM10000 images shrunk to squares), 7 classes.

Files: ``dermamnist.npz`` (28 px) and ``dermamnist_{64,128,224}.npz``, each with
``{train,val,test}_images`` (N, S, S, 3) uint8 and ``{train,val,test}_labels`` (N, 1). Labels are
MedMNIST's, in the same alphabetical order as HAM10000's codes. One config per image size
("28", "64", "128", "224"); the files are downloaded from Zenodo when the manual directory lacks
them. MedMNIST keeps no HAM10000 lesion ids, so ``group`` is the example id.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from flaxderm.data.builders import common
from flaxderm.data.builders import ham10000

SIZES = (28, 64, 128, 224)
_SPLITS = {"train": "train", "validation": "val", "test": "test"}
_URL = "https://zenodo.org/records/10519652/files/"


def file_name(size: int) -> str:
  return "dermamnist.npz" if size == 28 else f"dermamnist_{size}.npz"


@dataclasses.dataclass(eq=False)
class DermamnistConfig(common.Config):
  size: int = 28

  def validate(self, builder: str) -> None:
    if self.size not in SIZES:
      raise ValueError(f"{builder}: size must be one of {SIZES}, got {self.size}")


def load(path: Path, size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """split -> (images (N, size, size, 3) uint8, labels (N,) int); ValueError naming the key."""
  with np.load(path, allow_pickle=False) as npz:
    out = {}
    for split, prefix in _SPLITS.items():
      for key in (f"{prefix}_images", f"{prefix}_labels"):
        if key not in npz:
          raise ValueError(f"{path}: missing array {key!r} (has {sorted(npz.keys())})")
      images, labels = npz[f"{prefix}_images"], npz[f"{prefix}_labels"].reshape(-1)
      if images.dtype != np.uint8 or images.shape[1:] != (size, size, 3):
        raise ValueError(f"{path}: {prefix}_images is {images.dtype} {images.shape}, expected "
                         f"uint8 (N, {size}, {size}, 3)")
      if len(labels) != len(images):
        raise ValueError(f"{path}: {len(images)} {prefix}_images but {len(labels)} labels")
      out[split] = images, labels
  return out


class Dermamnist(common.Builder, skip_registration=True):
  """DermaMNIST (MedMNIST v2) square dermoscopic images with 7 diagnoses."""

  BUILDER_CONFIGS = [DermamnistConfig(name=str(s), size=s, description=f"{s}x{s} px")
                     for s in SIZES]
  IMAGE_FORMAT = "png"
  HOMEPAGE = "https://medmnist.com/"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Put {', '.join(file_name(s) for s in SIZES)} (any of them, from {_URL}) in manual_dir, "
      "or give no manual_dir to download them.")
  CITATION = """@article{yang2023medmnist,
  title={MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image
         classification},
  author={Yang, Jiancheng and Shi, Rui and Wei, Donglai and others},
  journal={Scientific Data}, volume={10}, pages={41}, year={2023}}"""

  def class_names(self) -> tuple[str, ...]:
    return ham10000.DX_CLASSES

  def official_files(self) -> dict[str, str | None]:
    name = file_name(self.builder_config.size)
    return {name: f"{_URL}{name}?download=1"}

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    name = file_name(self.builder_config.size)
    path = self._locate(dl_manager)[name]
    if path is None:
      raise ValueError(f"{self.name}: {name} not found\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return {split: self._generate_examples(split, arrays)
            for split, arrays in load(path, self.builder_config.size).items()}

  def _generate_examples(self, split, arrays):
    images, labels = arrays
    num_classes = len(self.class_names())
    for i, (image, label) in enumerate(zip(images, labels)):
      example_id = f"dermamnist_{split}_{i:05d}"
      if not 0 <= label < num_classes:
        self._skip(split, example_id,
                   common.BadExample(f"{_SPLITS[split]}_labels[{i}]", f"label {label} is not in "
                                     f"[0, {num_classes})"))
        continue
      yield example_id, {"image": common.encode_png(image), "label": int(label),
                         "id": example_id, "group": example_id}
