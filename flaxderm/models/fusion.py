"""Classifiers that see clinical metadata beside the image: ``MetadataFusion`` wraps any registered
classification model (its ``backbone``, built with ``num_classes=0``) and a metadata vector
``(N, D)``, through one of ``FUSIONS``:

* ``"concat"`` (Gessert et al. 2020, "Skin lesion classification using ensembles of multi-
  resolution EfficientNets with meta data"): the metadata passes through a small MLP (Dense,
  BatchNorm, ReLU, dropout, twice) and is concatenated with the backbone's pooled features before
  the linear classifier.
* ``"metablock"`` (Pacheco & Krohling 2021, "An attention-based mechanism to combine images and
  metadata in deep learning models applied to skin cancer classification", IEEE JBHI): two dense
  layers with BatchNorm map the metadata to ``f`` and ``g`` (one value per channel of the
  backbone's coarsest feature map, ``features_only=True``, which for a family with
  ``features_include_head`` should include its head conv), the map is gated as
  ``sigmoid(tanh(features * f) + g)``, then pooled and classified.
* ``"late"``: a linear classifier of the metadata whose logits add to the image classifier's, so
  the predicted distribution is the normalised product of the two classifiers' evidence: the
  product of an image model and a metadata logistic regression that
  ``benchmarks/metadata_signal.py`` measures, trained jointly. Its weights start at zero, so
  training starts from the image classifier alone.
* ``"product"``: the same two classifiers, but each trained on its own loss (the image classifier
  on the image, the metadata classifier on the metadata), their logits added only to predict: a
  product of experts. Each learns its class evidence alone, so the image branch cannot leave the
  metadata's evidence to the other; with balanced class weights each branch estimates the class
  likelihood of its input, and their product is the balanced posterior of both when image and
  metadata are independent given the class. In training mode the model returns
  ``BranchLogits`` (the prediction and each branch's logits) and the train step sums the branch
  losses (``flaxderm.train.step.training_loss``).

The backbone's parameters sit under ``backbone``, so its pretrained weights load there; the wrapper
works for every classification family through the encoder contract (pooled features at
``num_classes=0``, feature maps with ``features_only=True``).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

FUSIONS = ("concat", "metablock", "late", "product")
BACKBONE = "backbone"  # the field, hence the name of the backbone's parameters
METADATA_HEAD = "metadata_head"  # the parameters of "late" and "product"'s metadata classifier


class BranchLogits(NamedTuple):
  """A training-mode output whose branches each learn on their own loss: ``logits``, the
  prediction, first (``step.main_output``), then each branch's logits."""
  logits: jax.Array
  branches: tuple[jax.Array, ...]


class MetadataFusion(nn.Module):
  """``apply(variables, images, metadata, train)`` -> logits ``(N, num_classes)`` (``"product"``
  in training mode: ``BranchLogits``).

  ``backbone``: a classification model with ``num_classes=0``; ``hidden``: the metadata MLP's
  width (``"concat"``); ``drop_rate``: dropout on the metadata MLP and before the classifier.
  """
  backbone: nn.Module
  num_classes: int
  fusion: str = "concat"
  hidden: int = 64
  drop_rate: float = 0.0
  dtype: Any = None

  def _check(self, x: jax.Array, metadata: jax.Array) -> None:
    if self.fusion not in FUSIONS:
      raise ValueError(f"metadata fusion {self.fusion!r} is not one of {FUSIONS}")
    if getattr(self.backbone, "num_classes", 0) != 0:
      raise ValueError(f"MetadataFusion: the backbone must be built with num_classes=0 (pooled "
                       f"features), got {self.backbone.num_classes}")
    if metadata.ndim != 2 or metadata.shape[0] != x.shape[0]:
      raise ValueError(f"MetadataFusion: metadata must be (N, D) with N = {x.shape[0]} images, "
                       f"got shape {metadata.shape}")

  @nn.compact
  def __call__(self, x: jax.Array, metadata: jax.Array, train: bool = False
               ) -> jax.Array | BranchLogits:
    self._check(x, metadata)
    metadata = metadata.astype(self.dtype or jnp.float32)
    backbone = self.backbone  # a field: its parameters sit under its name, BACKBONE

    def dense_norm(y: jax.Array, features: int, name: str) -> jax.Array:
      y = nn.Dense(features, dtype=self.dtype, name=f"{name}_dense")(y)
      return nn.BatchNorm(use_running_average=not train, dtype=self.dtype, name=f"{name}_norm")(y)

    if self.fusion == "metablock":
      maps = [m for m in backbone(x, train, features_only=True) if m.shape[-1]][-1]
      channels = maps.shape[-1]
      scale = dense_norm(metadata, channels, "metablock_f")[:, None, None, :]
      shift = dense_norm(metadata, channels, "metablock_g")[:, None, None, :]
      gated = nn.sigmoid(nn.tanh(maps * scale) + shift)
      features = jnp.mean(gated, axis=(1, 2))
    else:
      features = backbone(x, train)
    if self.fusion == "concat":
      m = metadata
      for i in range(2):
        m = nn.Dropout(self.drop_rate, deterministic=not train)(
            nn.relu(dense_norm(m, self.hidden, f"metadata_{i}")))
      features = jnp.concatenate([features, m.astype(features.dtype)], axis=-1)
    features = nn.Dropout(self.drop_rate, deterministic=not train)(features)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(features)
    if self.fusion in ("late", "product"):
      metadata_logits = nn.Dense(self.num_classes, dtype=self.dtype,
                                 kernel_init=nn.initializers.zeros,
                                 name=METADATA_HEAD)(metadata).astype(logits.dtype)
      if self.fusion == "product" and train:
        return BranchLogits(logits + metadata_logits, (logits, metadata_logits))
      logits = logits + metadata_logits
    return logits
