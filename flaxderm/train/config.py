"""The training config: every option with its default, validation, command-line overrides, I/O.

An experiment (``experiments/<name>.py``) starts from ``default_config()`` and changes fields; the
command line then overrides single keys (``--config.optimizer.lr=0.01``). Keys are checked
against this schema, so a misspelt key is a ValueError naming it (with the closest valid keys)
instead of an option silently ignored. Free-form option groups -- ``model.kwargs`` (the model
family's options, checked by ``create_model``), ``loss.kwargs`` (checked by ``get_loss``),
``data.builder_kwargs`` and ``eval_data`` (overrides of ``data``, checked against its schema) --
accept new keys.
"""
from __future__ import annotations

import ast
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections

from flaxderm.hints import did_you_mean
from flaxderm.data import clinical
from flaxderm.data import config as data_config_lib

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "step", "one_cycle")
PARALLEL_MODES = ("auto", "pmap")
COMPUTE_DTYPES = ("float32", "bfloat16")
FINAL_PARAMS = ("last", "best")
TTA_MODES = ("none", "hflip", "flips")
METADATA_FUSIONS = ("concat", "metablock", "late", "product")  # flaxderm.models.fusion.FUSIONS (jax-free here)
WORST_GROUP = "worst_group:"  # eval.select_by = "worst_group:FIELD"
# Option groups whose keys are not fixed by this schema (validated by their consumers).
OPEN_GROUPS = ("model.kwargs", "loss.kwargs", "data.builder_kwargs", "data.metadata_vocabulary",
               "eval_data")


def default_config() -> ml_collections.ConfigDict:
  """Every training option with its default (the default experiment's values)."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Model: flaxderm.models.create_model(name, num_classes=..., **kwargs). num_classes 0 derives
  # it from the dataset: 1 (sigmoid) for binary segmentation, the label count for classification.
  # pretrained: a weight tag (flaxderm.models.pretrained.list_tags()) or a checkpoint path; its
  # normalisation is then applied to the data configs.
  c.model = ml_collections.ConfigDict()
  c.model.name = "unet"
  c.model.num_classes = 0
  c.model.kwargs = ml_collections.ConfigDict()
  c.model.pretrained = ""
  # With data.metadata: how a classifier takes the metadata beside the image
  # (flaxderm.models.fusion.FUSIONS): "concat" (an MLP's output joined to the pooled features),
  # "metablock" (the metadata gates the last feature maps), "late" (a linear classifier of the
  # metadata whose logits add to the image classifier's) or "product" (the same two classifiers,
  # each trained on its own loss, their logits added to predict).
  c.model.metadata_fusion = "concat"

  c.data = data_config_lib.default_data_config()
  # Overrides of `data` for the validation set, e.g. another dataset (paper 004 trains on ISIC
  # 2018 and validates on PH2). Empty: the validation split of `data`.
  c.eval_data = ml_collections.ConfigDict()

  # Loss: flaxderm.losses.get_loss(name, **kwargs). From the training label counts
  # (classification, cross_entropy): class_weight_power > 0 gives class weights
  # (losses.class_weights_from_counts), logit_adjustment_tau > 0 the logit-adjusted loss
  # (losses.logit_adjustment_from_counts): two ways to aim at balanced accuracy.
  c.loss = ml_collections.ConfigDict()
  c.loss.name = "dice_ce"
  c.loss.kwargs = ml_collections.ConfigDict()
  c.loss.class_weight_power = 0.0
  c.loss.logit_adjustment_tau = 0.0

  # Optimiser (optax). weight_decay: decoupled for adamw, L2 added to the gradient otherwise
  # (PyTorch's convention for each). Norm scales and biases are not decayed unless
  # decay_norms_and_biases. grad_clip_norm 0 = no clipping. accumulate_steps > 1 averages the
  # gradients of that many batches per update. ema_decay > 0 keeps an EMA of the parameters.
  # encoder_lr_scale multiplies the learning rate of pretrained encoder parameters (0 freezes
  # them).
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"
  c.optimizer.lr = 1e-3
  c.optimizer.momentum = 0.9  # sgd
  c.optimizer.nesterov = False  # sgd
  c.optimizer.b1 = 0.9  # adam, adamw
  c.optimizer.b2 = 0.999  # adam, adamw
  c.optimizer.eps = 1e-8  # adam, adamw, rmsprop
  c.optimizer.decay = 0.9  # rmsprop (PyTorch's alpha 0.99, Keras' rho 0.9)
  c.optimizer.weight_decay = 0.0
  c.optimizer.decay_norms_and_biases = False
  c.optimizer.grad_clip_norm = 0.0
  c.optimizer.accumulate_steps = 1
  c.optimizer.ema_decay = 0.0
  c.optimizer.encoder_lr_scale = 1.0

  # Learning-rate schedule: a multiplier of optimizer.lr as a function of training progress in
  # [0, 1] (step / total steps, or elapsed / budget_s when a budget is set). Fractions below are
  # of that progress. "step": times decay_factor at each boundary. "one_cycle": from
  # lr / div_factor up to lr over warmup_fraction, then cosine down to lr / final_div_factor.
  c.schedule = ml_collections.ConfigDict()
  c.schedule.name = "constant"
  c.schedule.warmup_fraction = 0.0  # warmup_cosine, one_cycle (0.3 if left 0)
  c.schedule.final_fraction = 0.0  # cosine, warmup_cosine: the multiplier at the end
  c.schedule.boundaries = (0.5, 0.75)  # step
  c.schedule.decay_factor = 0.1  # step
  c.schedule.div_factor = 25.0  # one_cycle
  c.schedule.final_div_factor = 1e4  # one_cycle

  # Length: num_steps, else num_epochs; budget_s > 0 (wall-clock seconds of training; compilation
  # and evaluation excluded) stops earlier and lays the schedule over the budget.
  c.batch_size = 8  # global, over all devices and processes
  c.num_epochs = 10
  c.num_steps = 0
  c.budget_s = 0.0

  # Validation: every eval.every_steps steps if > 0, else every eval.every_epochs epochs, and at
  # the end. best_metric: a key of the metrics module's summaries ("" = dice/per_image for
  # segmentation, accuracy for classification); best_mode "max" or "min".
  c.eval = ml_collections.ConfigDict()
  c.eval.every_steps = 0
  c.eval.every_epochs = 1
  c.eval.batch_size = 16
  c.eval.best_metric = ""
  c.eval.best_mode = "max"
  # Which validation counts for the best checkpoint: "" = best_metric over all cases;
  # "worst_group:FIELD" = best_metric of the worst group of clinical field FIELD (the lowest for
  # best_mode "max"; ages in flaxderm.subgroups.AGE_BANDS; the cases missing the field and groups
  # of fewer than select_min_cases cases left out). Both numbers go to the logs and results.
  c.eval.select_by = ""
  c.eval.select_min_cases = 10
  # Test-time augmentation of every scoring: "none", "hflip" (image + its mirror) or "flips"
  # (+ vertical and both); the views' class probabilities are averaged.
  c.eval.tta = "none"
  # Post-hoc logit adjustment (Menon et al. 2021; flaxderm.train.setup.decision_bias): > 0 decides
  # a classifier's class by argmax(logits - tau * log(training prior)), aiming the decision at
  # balanced accuracy; the probabilities (AUC, calibration) stay the model's. 1 is the theory's
  # value for a model trained without class weights.
  c.eval.logit_adjustment_tau = 0.0

  # Checkpoints (orbax): the latest `keep`, plus the best by eval.best_metric. every_steps 0 =
  # at each evaluation. Final scoring uses the last or the best parameters, or their EMA.
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.keep = 2
  c.checkpoint.every_steps = 0
  c.final_params = "last"
  c.use_ema = False

  c.compute_dtype = "float32"  # "bfloat16": bf16 compute, float32 params, loss and optimizer
  c.parallel = "auto"  # "auto": jit over a device mesh; "pmap": per-device code with pmean

  c.log_every_steps = 50
  c.progress_bar = True
  c.visualize_images = 8  # validation overlays in the run's PNG grid (segmentation)
  return c


# ------------------------------------------------------------------------------------------------
# Validation.


def _is_group(value: Any) -> bool:
  return isinstance(value, (ml_collections.ConfigDict, Mapping))


def _unknown_key(path: str, parent: Mapping[str, Any]) -> ValueError:
  key = path.rsplit(".", 1)[-1]
  return ValueError(f"unknown config key {path!r}{did_you_mean(key, parent)}; valid keys "
                    f"there: {sorted(parent)}")


def _check_known(cfg: Mapping[str, Any], reference: Mapping[str, Any], prefix: str = "") -> None:
  for key, value in cfg.items():
    path = f"{prefix}{key}"
    if path in OPEN_GROUPS:
      continue
    if key not in reference:
      raise _unknown_key(path, reference)
    if _is_group(reference[key]) and _is_group(value):
      _check_known(value, reference[key], path + ".")


def _one_of(path: str, value: Any, options: tuple[str, ...]) -> None:
  if value not in options:
    raise ValueError(f"config.{path}: {value!r} is not one of {options}{did_you_mean(str(value), options)}")


def merged_data_config(data: ml_collections.ConfigDict, overrides: Mapping[str, Any]
                       ) -> ml_collections.ConfigDict:
  """A copy of ``data`` with ``overrides`` applied recursively (the validation data config)."""
  merged = ml_collections.ConfigDict(data.to_dict())
  _check_known(overrides, merged, "eval_data.")
  merged.update_from_flattened_dict(_flatten(overrides))
  return merged


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if _is_group(value) and value:
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def has_validation(cfg: ml_collections.ConfigDict) -> bool:
  """False when the run trains on all of its data (``data.split="all"``) with no ``eval_data``."""
  return cfg.data.split != "all" or bool(cfg.eval_data)


def selection_field(cfg: ml_collections.ConfigDict) -> str | None:
  """The clinical field of ``eval.select_by = "worst_group:FIELD"``, None for ""; ValueError for
  another value, an unknown field, a number other than age, or a run without validation."""
  select_by = cfg.eval.select_by
  if not select_by:
    return None
  field = select_by[len(WORST_GROUP):] if select_by.startswith(WORST_GROUP) else None
  if not field:
    raise ValueError(f"config.eval.select_by: {select_by!r} is not '' or '{WORST_GROUP}FIELD'")
  clinical.check_fields((field,), "config.eval.select_by")
  if clinical.FIELDS[field].kind == clinical.NUMBER and field != "age":
    raise ValueError(f"config.eval.select_by: {field!r} is a number other than age, which has no "
                     "bands to group it by")
  if not has_validation(cfg):
    raise ValueError(f"config.eval.select_by={select_by!r} needs validation data, but "
                     "data.split='all' trains on every case")
  return field


def validate_config(cfg: ml_collections.ConfigDict) -> None:
  """ValueError naming the first unknown key or bad value; dataset-dependent checks happen later."""
  _check_known(cfg, default_config())
  data_config_lib.validate_data_config(cfg.data)
  data_config_lib.validate_data_config(merged_data_config(cfg.data, cfg.eval_data))
  _one_of("optimizer.name", cfg.optimizer.name, OPTIMIZERS)
  _one_of("schedule.name", cfg.schedule.name, SCHEDULES)
  _one_of("parallel", cfg.parallel, PARALLEL_MODES)
  _one_of("compute_dtype", cfg.compute_dtype, COMPUTE_DTYPES)
  _one_of("final_params", cfg.final_params, FINAL_PARAMS)
  _one_of("eval.best_mode", cfg.eval.best_mode, ("max", "min"))
  _one_of("eval.tta", cfg.eval.tta, TTA_MODES)
  _one_of("model.metadata_fusion", cfg.model.metadata_fusion, METADATA_FUSIONS)
  selection_field(cfg)
  if cfg.final_params == "best" and not has_validation(cfg):
    raise ValueError("config.final_params='best' needs validation data, but data.split='all' "
                     "trains on every case: use final_params='last', or name validation data "
                     "in config.eval_data")
  positive = {"batch_size": cfg.batch_size, "eval.batch_size": cfg.eval.batch_size,
              "eval.select_min_cases": cfg.eval.select_min_cases,
              "checkpoint.keep": cfg.checkpoint.keep,
              "optimizer.accumulate_steps": cfg.optimizer.accumulate_steps}
  for path, value in positive.items():
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"config.{path} must be a positive int, got {value!r}")
  for path in ("num_epochs", "num_steps", "eval.every_steps", "eval.every_epochs",
               "checkpoint.every_steps", "log_every_steps", "visualize_images"):
    value = cfg
    for part in path.split("."):
      value = value[part]
    if not isinstance(value, int) or value < 0:
      raise ValueError(f"config.{path} must be a non-negative int, got {value!r}")
  if cfg.num_steps == 0 and cfg.num_epochs == 0 and cfg.budget_s <= 0:
    raise ValueError("config: set num_steps, num_epochs or budget_s to say how long to train")
  for path in ("loss.class_weight_power", "loss.logit_adjustment_tau",
               "eval.logit_adjustment_tau"):
    group, key = path.split(".")
    if not cfg[group][key] >= 0:
      raise ValueError(f"config.{path} must be >= 0, got {cfg[group][key]}")
  if not 0.0 <= cfg.optimizer.ema_decay < 1.0:
    raise ValueError(f"config.optimizer.ema_decay must be in [0, 1), got {cfg.optimizer.ema_decay}")
  if cfg.use_ema and cfg.optimizer.ema_decay == 0.0:
    raise ValueError("config.use_ema needs config.optimizer.ema_decay > 0")
  if not cfg.optimizer.lr > 0:
    raise ValueError(f"config.optimizer.lr must be > 0, got {cfg.optimizer.lr}")
  if not cfg.optimizer.encoder_lr_scale >= 0:
    raise ValueError("config.optimizer.encoder_lr_scale must be >= 0, got "
                     f"{cfg.optimizer.encoder_lr_scale}")
  for path in ("schedule.warmup_fraction", "schedule.final_fraction"):
    value = cfg.schedule[path.split(".")[1]]
    if not 0.0 <= value <= 1.0:
      raise ValueError(f"config.{path} must be in [0, 1], got {value}")
  if list(cfg.schedule.boundaries) != sorted(cfg.schedule.boundaries):
    raise ValueError(f"config.schedule.boundaries must be increasing, got {cfg.schedule.boundaries}")


# ------------------------------------------------------------------------------------------------
# Command-line overrides: --config.key.sub=value.


def _parse_value(path: str, text: str, current: Any) -> Any:
  """``text`` read as the type of the key's current value."""
  try:
    if isinstance(current, bool):
      lowered = text.strip().lower()
      if lowered not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"expected true or false, got {text!r}")
      return lowered in ("true", "1", "yes")
    if isinstance(current, int):
      return int(text)
    if isinstance(current, float):
      return float(text)
    if isinstance(current, str):
      return text
    if isinstance(current, (tuple, list)):
      value = ast.literal_eval(text)
      return tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if _is_group(current):
      value = ast.literal_eval(text)
      if not isinstance(value, dict):
        raise ValueError(f"expected a dict literal, got {text!r}")
      return value
    try:  # None or a new key of a free-form group: a Python literal, else the text itself
      return ast.literal_eval(text)
    except (ValueError, SyntaxError):
      return text
  except (ValueError, SyntaxError) as e:
    raise ValueError(f"--config.{path}={text}: cannot read the value as "
                     f"{type(current).__name__}: {e}") from None


def apply_override(cfg: ml_collections.ConfigDict, path: str, text: str) -> None:
  """Sets ``cfg.<path>`` from command-line text, typed like the current value."""
  parts = path.split(".")
  node = cfg
  for i, part in enumerate(parts):
    so_far = ".".join(parts[:i + 1])
    parent = ".".join(parts[:i])
    is_open = any(parent == g or parent.startswith(g + ".") for g in OPEN_GROUPS)
    if not _is_group(node):
      raise ValueError(f"--config.{path}: config.{parent} is a value, not a group")
    if part not in node and not is_open:
      raise _unknown_key(so_far, node)
    if i == len(parts) - 1:
      value = _parse_value(path, text, node.get(part))
      try:
        node[part] = value
      except TypeError as e:
        raise ValueError(f"--config.{path}={text}: {e}") from None
    else:
      if part not in node:
        node[part] = ml_collections.ConfigDict()
      node = node[part]


def save_config(cfg: ml_collections.ConfigDict, path: Path) -> None:
  path.write_text(cfg.to_json_best_effort(indent=2, sort_keys=True) + "\n")


def load_config(path: Path) -> ml_collections.ConfigDict:
  """A config saved by ``save_config``, merged onto the defaults so every key has its type."""
  if not path.exists():
    raise ValueError(f"{path} does not exist: is {path.parent} a training run directory?")
  saved = json.loads(path.read_text())
  cfg = default_config()
  _check_known(saved, cfg)
  for key, value in _flatten(saved).items():
    group = key.split(".")[0]
    if any(key == g or key.startswith(g + ".") for g in OPEN_GROUPS) or group == "eval_data":
      _set_path(cfg, key, value)
    else:
      _set_path(cfg, key, tuple(value) if isinstance(value, list) else value)
  return cfg


def _set_path(cfg: ml_collections.ConfigDict, key: str, value: Any) -> None:
  parts = key.split(".")
  node = cfg
  for part in parts[:-1]:
    if part not in node:
      node[part] = ml_collections.ConfigDict()
    node = node[part]
  node[parts[-1]] = value


# ------------------------------------------------------------------------------------------------
# Smoke runs.


def runlocal(cfg: ml_collections.ConfigDict, *, image_size: int = 32, **model_kwargs: Any
             ) -> ml_collections.ConfigDict:
  """Shrinks an experiment to a seconds-long smoke run of the same architecture and recipe: the
  package's synthetic dataset (no download; its labels stand in for a classification dataset's),
  ``image_size`` pixels, batch 2, 2 steps, one evaluation, and ``model_kwargs`` (narrower
  widths, fewer blocks per stage: the same code at a fraction of the compile time). big_vision's
  ``runlocal`` switch.

  Its data is always ``synthetic_lesions`` (``flaxderm.data.builders.synthetic``, generated by the
  package), whatever dataset the experiment names: ``data.manual_dir`` is cleared, and setting it
  again (``--config.data.manual_dir=...``) is an error when the run starts, since that folder
  would never be read. The synthetic images carry both a lesion mask and a label; the task is the
  model's (a segmentation architecture segments, a classifier classifies), so the smoke run trains
  the experiment's task whatever its loss. An experiment that takes clinical fields
  (``data.metadata``) takes the synthetic lesions' (age, sex, site) instead."""
  # pylint: disable=g-import-not-at-top  (jax, TFDS: slow to import, and needed only here)
  from flaxderm.data.builders.synthetic import SyntheticLesions
  from flaxderm.models import model_entry

  task = model_entry(cfg.model.name).task
  cfg.data.name = "synthetic_lesions"
  cfg.data.manual_dir = None
  cfg.data.builder_config = None
  cfg.data.builder_kwargs = ml_collections.ConfigDict()
  cfg.data.task = task
  cfg.data.split = "official"
  cfg.data.train_split, cfg.data.eval_split = "train", "validation"
  cfg.data.class_balanced = False
  cfg.data.image_size = image_size
  if cfg.data.metadata:
    cfg.data.metadata = SyntheticLesions.CLINICAL_FIELDS
  cfg.eval_data = ml_collections.ConfigDict()
  cfg.model.kwargs.update(model_kwargs)
  cfg.model.pretrained = ""
  cfg.batch_size = 2
  cfg.optimizer.accumulate_steps = 1
  cfg.num_steps = 2
  cfg.budget_s = 0.0
  cfg.eval.every_steps = 0
  cfg.eval.batch_size = 64
  cfg.checkpoint.every_steps = 0
  cfg.log_every_steps = 1
  cfg.progress_bar = False
  cfg.visualize_images = 2
  return cfg
