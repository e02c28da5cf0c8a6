"""From a config to the pieces a run is made of: what the data is, the task, the model, its
initial variables. Shared by training (``loop``) and scoring (``flaxderm.tools.evaluate``).

What a run learnt about its data (task, classes, output channels, the training split's class
counts) is saved with it as ``run_info.json``, so a run can be scored later on another copy of the
data without reading the training set again.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flaxderm import losses
from flaxderm.data import pipeline
from flaxderm.data import sources
from flaxderm.data import splits
from flaxderm.data import metadata as metadata_lib
from flaxderm.models import create_model, fusion, pretrained
from flaxderm.train import config as config_lib
from flaxderm.train.step import Task

log = logging.getLogger(__name__)

RUN_INFO = "run_info.json"


@dataclasses.dataclass(frozen=True)
class RunInfo:
  """task: "segmentation"/"classification"; class_names: the classes metrics report;
  output_channels: the model's num_classes (1 = sigmoid for binary segmentation); class_counts:
  a classifier's training examples per class (the prior that class weights and logit adjustment
  are computed from), None for segmentation and for runs saved before it was recorded."""
  task: str
  class_names: tuple[str, ...]
  output_channels: int
  class_counts: tuple[int, ...] | None = None

  def save(self, workdir: Path) -> None:
    (workdir / RUN_INFO).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

  @classmethod
  def load(cls, workdir: Path) -> "RunInfo":
    path = workdir / RUN_INFO
    if not path.exists():
      raise ValueError(f"{path} does not exist: {workdir} is not a flaxderm training run")
    saved = json.loads(path.read_text())
    counts = saved.get("class_counts")
    return cls(saved["task"], tuple(saved["class_names"]), saved["output_channels"],
               None if counts is None else tuple(counts))


def dataset_info(data_cfg: ml_collections.ConfigDict) -> pipeline.DatasetInfo:
  """``pipeline.dataset_info``, with a dataset that cannot be prepared reported as what to do."""
  from flaxderm.data import builders  # pylint: disable=g-import-not-at-top  (pulls in TF)

  if data_cfg.name not in builders.BUILDERS:
    raise ValueError(f"config.data.name: unknown dataset {data_cfg.name!r}; expected one of "
                     f"{sorted(builders.BUILDERS)}")
  builders.check_manual_dir(data_cfg.name, data_cfg.manual_dir)
  try:
    source = sources.open_source(data_cfg)
  except Exception as e:  # any failure to prepare: say how to get the files, keep the cause
    raise ValueError(
        f"dataset {data_cfg.name!r} is not prepared and could not be prepared from "
        f"data.manual_dir={data_cfg.manual_dir!r} (data.data_dir={data_cfg.data_dir!r}): {e}\n"
        f"Put the official download in a folder and pass --config.data.manual_dir=FOLDER; it is "
        f"prepared once into data.data_dir (default $FLAXDERM_DATA_DIR or "
        f"~/tensorflow_datasets).") from e
  return pipeline.dataset_info(data_cfg, source=source)


def run_info(cfg: ml_collections.ConfigDict) -> RunInfo:
  """Task, classes, model outputs and (classification) training class counts for ``cfg`` from
  the training dataset."""
  info = dataset_info(cfg.data)
  channels = cfg.model.num_classes or (1 if info.task == "segmentation" and info.num_classes == 2
                                       else info.num_classes)
  counts = None
  if info.task == "classification":
    counts = splits.split_label_counts(cfg.data, cfg.data.train_split, len(info.class_names))
    log.info("training class counts: %s", dict(zip(info.class_names, counts.tolist())))
    counts = tuple(int(n) for n in counts)
  return RunInfo(info.task, tuple(info.class_names), channels, counts)


def training_class_counts(cfg: ml_collections.ConfigDict, info: RunInfo) -> np.ndarray:
  """The classifier's training examples per class: ``info.class_counts``, or -- for a run saved
  before they were recorded -- counted again from ``cfg``'s training split."""
  if info.class_counts is not None:
    return np.asarray(info.class_counts, np.int64)
  try:
    counts = splits.split_label_counts(cfg.data, cfg.data.train_split, len(info.class_names))
  except Exception as e:  # its training data may be gone: say what is missing
    raise ValueError(f"{RUN_INFO} of this run holds no class_counts (saved before they were "
                     f"recorded) and its training split ({cfg.data.name}, "
                     f"data.manual_dir={cfg.data.manual_dir!r}) could not be read to count them: "
                     f"{e}") from e
  log.info("%s holds no class_counts: counted them again from the training split: %s",
           RUN_INFO, counts.tolist())
  return counts


# loss option -> (the config.loss key that turns it on when > 0, how the counts become the option)
_COUNT_OPTIONS = {
    "class_weights": ("class_weight_power",
                      lambda counts, power: losses.class_weights_from_counts(counts, power=power)),
    "logit_adjustment": ("logit_adjustment_tau",
                         lambda counts, tau: losses.logit_adjustment_from_counts(counts, tau=tau)),
}


def count_loss_options(cfg: ml_collections.ConfigDict, info: RunInfo) -> dict[str, tuple[float, ...]]:
  """Loss options computed from the training label counts: ``class_weights`` when
  ``loss.class_weight_power`` > 0, ``logit_adjustment`` when ``loss.logit_adjustment_tau`` > 0."""
  wanted = {option: (key, from_counts) for option, (key, from_counts) in _COUNT_OPTIONS.items()
            if cfg.loss[key] > 0}
  if not wanted:
    return {}
  if info.task != "classification":
    key = next(iter(wanted.values()))[0]
    raise ValueError(f"config.loss.{key}: for classification only; for "
                     "segmentation set config.loss.kwargs.class_weights (background, lesion)")
  for option, (key, _) in wanted.items():
    if option in cfg.loss.kwargs:
      raise ValueError(f"config.loss: give either loss.kwargs.{option} or loss.{key}, not both")
  counts = training_class_counts(cfg, info)
  options = {}
  for option, (key, from_counts) in wanted.items():
    values = from_counts(counts, cfg.loss[key])
    log.info("loss %s %s from training counts %s", option, values.round(4).tolist(),
             counts.tolist())
    options[option] = tuple(float(v) for v in values)
  return options


def decision_bias(tau: float, counts: np.ndarray | None) -> tuple[float, ...] | None:
  """Post-hoc logit adjustment (Menon et al. 2021, "Long-tail learning via logit adjustment"):
  ``-tau * log(prior)`` of the training class ``counts``, added to the logits before the argmax
  so that the decision aims at balanced accuracy; None when ``tau`` is 0."""
  if tau == 0:
    return None
  if counts is None:
    raise ValueError("eval.logit_adjustment_tau: for classification only (it needs the training "
                     "class counts)")
  return tuple(float(v) for v in -losses.logit_adjustment_from_counts(counts, tau=tau))


def make_task(cfg: ml_collections.ConfigDict, info: RunInfo, *,
              loss_options: dict[str, Any] | None = None,
              class_counts: np.ndarray | None = None) -> Task:
  """The run's task; its decisions are logit-adjusted by ``eval.logit_adjustment_tau`` for the
  prior of ``class_counts`` (default: the run's ``training_class_counts``; a fold ensemble gives
  its members' summed counts)."""
  kwargs = {**cfg.loss.kwargs, **(loss_options or {})}
  try:
    loss_fn = losses.get_loss(cfg.loss.name, **kwargs)
  except ValueError as e:
    raise ValueError(f"config.loss: {e}") from None
  num_classes = max(len(info.class_names), 2)
  tau = cfg.eval.logit_adjustment_tau
  if tau and info.task != "classification":
    raise ValueError("config.eval.logit_adjustment_tau: for classification only")
  if tau and class_counts is None:
    class_counts = training_class_counts(cfg, info)
  return Task(info.task, num_classes, info.class_names, loss_fn,
              decision_bias=decision_bias(tau, class_counts))


def make_model(cfg: ml_collections.ConfigDict, info: RunInfo) -> nn.Module:
  """``cfg.model`` with ``info``'s outputs. A model whose parameters depend on its input size
  (``img_size``: a ViT's position embedding, a Swin's bias tables) is built for
  ``data.image_size`` unless ``model.kwargs`` names its own. With ``data.metadata`` the model is
  a ``MetadataFusion`` of ``model.metadata_fusion`` around it (built without its head)."""
  kwargs = dict(cfg.model.kwargs)
  if cfg.compute_dtype != "float32":
    kwargs["dtype"] = jnp.dtype(cfg.compute_dtype)
  fused = bool(cfg.data.metadata)
  if fused and info.task != "classification":
    raise ValueError(f"config.data.metadata: metadata inputs are for classification; this run "
                     f"is {info.task}")
  outputs = 0 if fused else info.output_channels
  try:
    model = create_model(cfg.model.name, num_classes=outputs, **kwargs)
    if "img_size" not in kwargs and hasattr(model, "img_size"):
      model = model.clone(img_size=cfg.data.image_size)
  except ValueError as e:
    raise ValueError(f"config.model: {e}") from None
  if not fused:
    return model
  if cfg.model.metadata_fusion == "metablock" and hasattr(model, "features_include_head"):
    # MetaBlock gates the maps the classifier pools: an EfficientNet's after its 1x1 head conv
    # (whose pretrained weights then load too), not its last block's
    model = model.clone(features_include_head=True)
  return fusion.MetadataFusion(backbone=model, num_classes=info.output_channels,
                               fusion=cfg.model.metadata_fusion, dtype=kwargs.get("dtype"))


def uses_metadata(model: nn.Module) -> bool:
  """Whether ``model`` takes a metadata vector beside the images."""
  return isinstance(model, fusion.MetadataFusion)


def dummy_inputs(model: nn.Module, cfg: ml_collections.ConfigDict) -> tuple[jax.Array, ...]:
  """One zero example of what ``model`` takes: the image, and the metadata when it uses it."""
  size = cfg.data.image_size
  image = jnp.zeros((1, size, size, 3), jnp.float32)
  if not uses_metadata(model):
    return (image,)
  return image, jnp.zeros((1, metadata_lib.encoder_of(cfg.data).width), jnp.float32)


def with_metadata_vocabulary(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of ``cfg`` whose data (and validation data) carry the metadata vocabulary of its
  training split (``data.metadata``), which the run records in config.json; ``cfg`` itself when
  there is no metadata or the vocabulary is given."""
  if not cfg.data.metadata or cfg.data.metadata_vocabulary:
    return cfg
  vocabulary = pipeline.metadata_vocabulary(cfg.data)
  log.info("metadata vocabulary from %s: %s", cfg.data.train_split, vocabulary)
  resolved = ml_collections.ConfigDict(cfg.to_dict())
  resolved.data.metadata_vocabulary = vocabulary
  if resolved.eval_data:
    resolved.eval_data.metadata_vocabulary = vocabulary
  return resolved


def init_variables(model: nn.Module, cfg: ml_collections.ConfigDict
                   ) -> tuple[dict[str, Any], Any, dict[str, Any]]:
  """(initial variables, encoder/decoder labels of the params or None, the data normalisation the
  weights expect): fresh (no normalisation of their own: {}), or from ``model.pretrained``
  (``with_input_normalization`` puts its normalisation into the run's config)."""
  if cfg.model.pretrained:
    fused = uses_metadata(model)
    variables, weights_info = pretrained.load_pretrained(
        model.backbone if fused else model, cfg.model.pretrained, arch=cfg.model.name,
        rng=jax.random.key(cfg.seed), input_size=cfg.data.image_size)
    updates = weights_info.data_config_updates()
    log.info("pretrained %s: data normalisation %s", weights_info.source, updates)
    if not fused:
      labels = pretrained.param_labels(variables["params"], model, arch=cfg.model.name)
      return dict(variables), labels, updates
    fresh = _fresh_variables(model, cfg)
    backbone = fusion.BACKBONE
    fresh = {collection: {**tree, backbone: _overlay(tree[backbone], variables[collection])}
             if backbone in tree else tree for collection, tree in fresh.items()}
    labels = {name: (pretrained.param_labels(tree, model.backbone, arch=cfg.model.name)
                     if name == backbone else jax.tree.map(lambda _: pretrained.DECODER, tree))
              for name, tree in fresh["params"].items()}
    return fresh, labels, updates
  return _fresh_variables(model, cfg), None, {}


def _fresh_variables(model: nn.Module, cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  # Initial values are drawn with the "rbg" generator: XLA:CPU compiles a model's initialiser
  # about 5-10x faster with it than with threefry (seconds per run), and any seeded draw will do.
  rngs = {"params": jax.random.key(cfg.seed, impl="rbg"),
          "dropout": jax.random.key(cfg.seed + 1, impl="rbg")}
  dummy = dummy_inputs(model, cfg)
  return dict(jax.jit(lambda: model.init(rngs, *dummy, train=False))())


def _overlay(fresh: Mapping[str, Any], loaded: Mapping[str, Any]) -> dict[str, Any]:
  """``fresh`` with the leaves ``loaded`` holds at the same paths: the pretrained backbone
  weights the fused model uses (the MetaBlock path skips what follows the last feature map)."""
  return {key: (_overlay(value, loaded[key]) if isinstance(value, Mapping) else loaded[key])
          if key in loaded else value for key, value in fresh.items()}


def with_input_normalization(cfg: ml_collections.ConfigDict,
                             weights_normalization: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A copy of ``cfg`` whose data (and validation data) carry the normalisation the run trains
  with: the pretrained weights' (``init_variables``), else for ``normalization="dataset"`` without
  given statistics the training set's. ``cfg`` itself is not changed; the copy is what the run
  records in config.json, so prediction and export prepare images without the training data."""
  updates = dict(weights_normalization)
  if not updates and cfg.data.normalization == "dataset" and not (cfg.data.mean and cfg.data.std):
    updates["mean"], updates["std"] = pipeline.dataset_statistics(cfg.data)
  if not updates:
    return cfg
  resolved = ml_collections.ConfigDict(cfg.to_dict())
  resolved.data.update(updates)
  if resolved.eval_data:
    resolved.eval_data.update(updates)
  return resolved


def eval_data_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  return config_lib.merged_data_config(cfg.data, cfg.eval_data)


def weights_of(variables: Mapping[str, Any], ema: bool) -> dict[str, Any]:
  """A variables dict shaped as the checkpoints' ``weights`` item."""
  params = variables["params"]
  return {"params": params, "batch_stats": variables.get("batch_stats", {}),
          "ema_params": params if ema else None}
