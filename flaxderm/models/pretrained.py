"""Pretrained weights: loading a weight tag or checkpoint file into any model, and the
encoder/decoder labels fine-tuning uses.

  model, variables, info = create_pretrained("efficientnet_lite0", "efficientnet_lite0.imagenet",
                                             num_classes=7)
  data_cfg.update(info.data_config_updates())   # normalization="symmetric": inputs in [-1, 1]

The tags themselves (``WeightTag``, ``list_tags``, ``weight_tag``, ``resolve``) live in
``weights.py``, which imports no converter; they are importable from here too. Everything is
offline. A path to a ``.safetensors``/``.pth`` file works everywhere a tag does (ImageNet mean/std
unless ``mean``/``std`` are given).

Segmentation models take the same sources: the weights fill ``params["encoder"]`` and
``batch_stats["encoder"]``; the decoder keeps its fresh initialisation.

Fine-tuning: ``param_labels(tree, model)`` is ``"encoder"`` for pretrained parts (a segmentation
model's ``encoder``, a classifier's body) and ``"decoder"`` for the rest (decoder, heads), on
``params`` or ``batch_stats``: the groups the training engine's ``optimizer.encoder_lr_scale``
acts on (flaxderm/train/optim.py).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax

from flaxderm.models import convert
from flaxderm.models.registry import create_model, model_entry
# The tag lookups are part of this module's public API (``pretrained.list_tags()``).
from flaxderm.models.weights import (IMAGENET_MEAN, IMAGENET_STD, SYMMETRIC,  # noqa: F401
                                     WeightTag, list_tags, resolve, tag_of, weight_tag)

# data.normalization presets (flaxderm.data.preprocess.NORMALIZATION_PRESETS) by (mean, std).
_PRESETS = {(IMAGENET_MEAN, IMAGENET_STD): "imagenet", (SYMMETRIC, SYMMETRIC): "symmetric",
            ((0.0,) * 3, (1.0,) * 3): "unit"}


# ------------------------------------------------------------------------------------------------
# Loading.
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PretrainedInfo:
  """Where a model's weights came from and what inputs they expect.

  ``mean``/``std`` are in [0, 1] pixel units (the data pipeline's convention); ``report`` says
  which leaves were left at their initial values (a new head, a decoder) or adapted."""
  source: str
  tag: str | None
  arch: str
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  input_size: int
  report: convert.ConversionReport

  @property
  def normalization(self) -> str:
    """The data pipeline's preset with these statistics, or "dataset" (then use mean/std)."""
    return _PRESETS.get((tuple(self.mean), tuple(self.std)), "dataset")

  def data_config_updates(self) -> dict[str, Any]:
    """What to set in the data config (``flaxderm.data.config``) so inputs match the weights."""
    if self.normalization != "dataset":
      return {"normalization": self.normalization}
    return {"normalization": "dataset", "mean": tuple(self.mean), "std": tuple(self.std)}


class Pretrained(NamedTuple):
  model: nn.Module
  variables: dict[str, Any]
  info: PretrainedInfo


def _weights_arch(model: nn.Module, arch: str | None) -> str | None:
  """The classifier the weights must be for: the model itself, or a segmentation model's encoder."""
  name = arch or getattr(model, "model_name", None)
  if name and model_entry(name).task == "classification":
    return name
  return getattr(model, "encoder_name", None)


def load_pretrained(model: nn.Module, source: str | os.PathLike, *, arch: str | None = None,
                    rng: jax.Array | None = None, input_size: int | None = None,
                    mean: Sequence[float] | None = None, std: Sequence[float] | None = None
                    ) -> tuple[dict[str, Any], PretrainedInfo]:
  """Variables for ``model`` with pretrained weights from a tag or a file.

  A classifier takes the whole checkpoint; its head is kept when ``num_classes`` equals the
  checkpoint's and otherwise left at its fresh initialisation (``num_classes=0``: no head). A
  segmentation model takes a classifier/encoder checkpoint into ``params["encoder"]`` and
  ``batch_stats["encoder"]`` (decoder freshly initialised), or a full smp checkpoint.

  Args:
    model: a flaxderm module (e.g. from ``create_model``).
    source: a tag (``list_tags()``) or a ``.safetensors``/``.pth`` path.
    arch: the model's registry name when the module does not record it (``model_name``).
    rng: initialises what the checkpoint does not cover (default ``jax.random.key(0)``).
    input_size: input side used to initialise (parameter shapes do not depend on it).
    mean, std: the preprocessing of a file given by path (default ImageNet's); a tag fixes its
      own, so passing them with a tag is a ValueError.
  """
  tag = tag_of(source)
  expected = _weights_arch(model, arch)
  if tag is not None and expected is not None and tag.arch != expected:
    raise ValueError(f"weight tag {tag.name!r} holds {tag.arch} weights, but the model needs "
                     f"{expected} weights; tags for {expected}: {list_tags(expected) or 'none'}")
  if tag is not None and (mean is not None or std is not None):
    raise ValueError(f"weight tag {tag.name!r} fixes its preprocessing (mean {tag.mean}, std "
                     f"{tag.std}); mean/std apply to checkpoint files given by path")
  path = Path(source) if tag is None else tag.locate()
  variables, report = convert.from_state_dict(
      convert.read_state_dict(path), model, arch=arch,
      rng=jax.random.key(0) if rng is None else rng, source=str(path), input_size=input_size)
  if tag is not None:
    mean, std, size = tag.mean, tag.std, tag.input_size
  else:
    mean, std, size = mean or IMAGENET_MEAN, std or IMAGENET_STD, 224
  info = PretrainedInfo(str(path), tag.name if tag else None, expected or "", tuple(mean),
                        tuple(std), size, report)
  return variables, info


def create_pretrained(name: str, source: str | os.PathLike, *, num_classes: int,
                      rng: jax.Array | None = None, mean: Sequence[float] | None = None,
                      std: Sequence[float] | None = None, **kwargs: Any) -> Pretrained:
  """``create_model(name, num_classes=..., **kwargs)`` plus ``load_pretrained``: the module, its
  variables and the ``PretrainedInfo`` (whose ``data_config_updates()`` the data pipeline uses)."""
  model = create_model(name, num_classes=num_classes, **kwargs)
  variables, info = load_pretrained(model, source, arch=name, rng=rng, mean=mean, std=std)
  return Pretrained(model, variables, info)


# ------------------------------------------------------------------------------------------------
# Fine-tuning pieces.
# ------------------------------------------------------------------------------------------------
ENCODER, DECODER = "encoder", "decoder"


def encoder_prefixes(model: nn.Module, tree: Mapping[str, Any], *, arch: str | None = None
                     ) -> tuple[str, ...]:
  """Top-level module names of ``tree`` (params or batch_stats) that hold pretrained encoder
  weights: ``("encoder",)`` for a segmentation model, every top-level name but the classifier
  head for a classifier."""
  naming = convert.model_naming(model, arch)
  if naming.segmentation:
    return tuple(k for k in tree if k == "encoder")
  head = {h[0] for _, _, rules in naming.parts for h in rules.flax_head if h}
  return tuple(k for k in tree if k not in head)


def param_labels(tree: Mapping[str, Any], model: nn.Module, *, arch: str | None = None):
  """``"encoder"``/``"decoder"`` per leaf of ``tree`` (params or batch_stats): the labels for
  ``optax.multi_transform``."""
  encoder = set(encoder_prefixes(model, tree, arch=arch))
  return jax.tree_util.tree_map_with_path(
      lambda path, _: ENCODER if path[0].key in encoder else DECODER, tree)
