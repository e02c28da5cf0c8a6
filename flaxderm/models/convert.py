"""PyTorch checkpoints <-> flaxderm variables: timm, torchvision, lukemelas and smp naming.

Why a converter and not a re-implementation per checkpoint: every flaxderm family names its
submodules after timm's module paths (``blocks.3.attn.qkv`` -> ``blocks_3/attn/qkv``), so one
mechanical rule plus a short table of exceptions per family converts any checkpoint, both ways.

Pipeline, ``torch -> flax``:

1. ``read_state_dict(path)``: safetensors (read without torch) or a ``.pth``/``.pt``/``.bin`` pickle
   read with ``torch.load(weights_only=True)``, so no code from the file runs. A checkpoint that is
   not a plain ``{name: tensor}`` mapping (or one wrapped under ``"state_dict"``/``"model"``), a
   truncated or corrupt file is a ValueError naming the file.
2. ``timm_names(state_dict)``: other naming schemes are rewritten to timm's: torchvision's
   MobileNetV2 / EfficientNet ``features.*`` and lukemelas' EfficientNet ``_blocks.N`` (its
   stages are recovered from where the blocks' output width changes); torchvision ResNets already
   use timm's names. A DataParallel ``module.`` prefix is stripped; ``num_batches_tracked``
   counters and buffers that are derived constants (Swin's ``relative_position_index``,
   ``attn_mask``) are dropped.
3. ``from_state_dict(state_dict, model)``: each timm module path maps to a flax module path through
   the family's ``NameRules`` (bidirectional templates, first match whose target exists wins; the
   fallback is the mechanical rule), and each tensor to a leaf by kind: ``weight`` -> ``kernel``
   (OIHW -> HWIO, (out, in) -> (in, out)) or ``scale``; ``running_mean``/``running_var`` ->
   ``batch_stats`` ``mean``/``var``; anything else (``cls_token``, ``pos_embed``, bias tables) by
   name. ViT's fused ``qkv`` stays fused: flaxderm's attention keeps timm's (3, heads, head_dim)
   output order, so the kernel is only transposed. Two leaves adapt to another model size:
   ``pos_embed`` is resampled to the model's patch grid (``layers.resample_position_embedding``) and
   Swin's relative position bias table is cropped to a clamped window (the same relative offsets).
   Strict (no ``rng``, for parity and round trips): every checkpoint key must find a leaf of the
   right shape and every leaf a key. Given an ``rng`` (``pretrained.load_pretrained``), the head
   may differ (new ``num_classes``: freshly initialised; ``num_classes=0``: dropped) and a
   segmentation model may take an encoder/classifier checkpoint (everything outside
   ``params["encoder"]`` freshly initialised). Anything else raises one ``CheckpointMismatch``
   (a ValueError) that counts and names the first unexpected, missing and mis-shaped keys and
   carries the full lists.

``to_state_dict(variables, model)`` is the inverse (timm / smp names, torch layouts, numpy arrays,
``num_batches_tracked`` zeros so ``torch.nn.Module.load_state_dict(strict=True)`` accepts it);
``from_state_dict(to_state_dict(v, m), m)`` reproduces ``v`` exactly.

The name tables live beside each family (``naming.register_rules`` at the bottom of its file).
Segmentation models on an encoder (smp's decoders: ``unet``, ``unetplusplus``, ``linknet``,
``manet``, ``fpn``, ``pspnet``, ``pan``, ``upernet``, ``deeplabv3``, ``deeplabv3plus``) use smp's
names: ``encoder.*`` is the encoder family's mapping under ``params["encoder"]``, the decoder has its
own table; models without a PyTorch twin export mechanical names. flaxderm's DeepLabV3+ uses the Xception separable conv (BN + ReLU between the depthwise and
pointwise convs); smp has no such BN, so that one is named ``<separable>.depthwise_bn`` here.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from flaxderm.models import layers, naming
from flaxderm.models.naming import FlaxPath, NameRules, family_rules, flax_path, under
from flaxderm.models.registry import model_entry

StateDict = dict[str, np.ndarray]
Variables = dict[str, Any]
MAX_LISTED = 8  # keys named per category in an error


# ------------------------------------------------------------------------------------------------
# Reading checkpoint files.
# ------------------------------------------------------------------------------------------------
SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# Keys under which training scripts commonly nest the state dict of a full checkpoint.
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")


def read_state_dict(path: str | os.PathLike) -> StateDict:
  """``{name: numpy array}`` from a safetensors or PyTorch file; ValueError naming the file when it
  is missing, truncated, corrupt or not a plain state dict. Pickles are read with torch's
  ``weights_only=True`` unpickler (tensors and plain containers only), so nothing in the file is
  executed; safetensors files need no torch at all."""
  path = Path(path)
  if not path.is_file():
    raise ValueError(f"checkpoint {path}: not a file")
  if path.suffix in SAFETENSORS_SUFFIXES:
    return _read_safetensors(path)
  if path.suffix in PICKLE_SUFFIXES:
    return _read_torch(path)
  raise ValueError(f"checkpoint {path}: unknown extension {path.suffix!r}; expected one of "
                   f"{SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES}")


def _read_safetensors(path: Path) -> StateDict:
  from safetensors import SafetensorError
  from safetensors.numpy import load_file
  try:
    return dict(load_file(str(path)))
  except (SafetensorError, OSError, ValueError) as e:
    raise ValueError(f"checkpoint {path}: not a readable safetensors file (truncated or corrupt?): "
                     f"{e}") from e


def _read_torch(path: Path) -> StateDict:
  try:
    import torch
  except ImportError as e:
    raise ValueError(f"checkpoint {path}: reading PyTorch pickles needs torch (pip install "
                     f"'flaxderm[torch]'), or convert the file to safetensors") from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    # weights_only refuses any global that is not a tensor or plain container: the file holds
    # objects (a pickled module, optimizer, custom class), and none of their code ran.
    first = str(e).strip().splitlines()[0]
    raise ValueError(f"checkpoint {path}: not a plain state dict; its pickle references objects "
                     f"that weights_only loading refuses (nothing from the file was executed): "
                     f"{first}") from e
  except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
    raise ValueError(f"checkpoint {path}: not a readable PyTorch file (truncated or corrupt?): "
                     f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
                     ) from e
  return _plain_state_dict(obj, path, torch)


def _plain_state_dict(obj: Any, path: Path, torch) -> StateDict:
  if isinstance(obj, Mapping) and not _all_tensors(obj, torch):
    nested = [k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
    if nested and _all_tensors(obj[nested[0]], torch):
      obj = obj[nested[0]]
  if not isinstance(obj, Mapping):
    raise ValueError(f"checkpoint {path}: expected a state dict (a mapping of names to tensors), "
                     f"got {type(obj).__name__}")
  bad = [f"{k!r} ({type(v).__name__})" for k, v in obj.items()
         if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
  if bad:
    raise ValueError(f"checkpoint {path}: not a plain state dict; {len(bad)} entries are not "
                     f"named tensors, e.g. {', '.join(bad[:MAX_LISTED])}")
  return {k: _as_numpy(v) for k, v in obj.items()}


def _all_tensors(d: Mapping, torch) -> bool:
  return bool(d) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def _as_numpy(value: Any) -> np.ndarray:
  """numpy from numpy or a torch tensor (without importing torch)."""
  if hasattr(value, "detach"):
    value = value.detach().cpu()
    if str(value.dtype) == "torch.bfloat16":  # numpy has no bfloat16; float32 holds it exactly
      value = value.float()
    value = value.numpy()
  return np.asarray(value)


# ------------------------------------------------------------------------------------------------
# Other naming schemes -> timm's.
# ------------------------------------------------------------------------------------------------
def _split_key(key: str) -> tuple[str, str]:
  module, _, leaf = key.rpartition(".")
  return module, leaf


def _stages_from_widths(widths: list[int]) -> list[tuple[int, int]]:
  """(stage, index) of flat blocks: EfficientNet and MobileNetV2 start a stage exactly where the
  blocks' output width changes (every stage has its own width)."""
  out, stage, index = [], -1, 0
  for i, w in enumerate(widths):
    if i == 0 or w != widths[i - 1]:
      stage, index = stage + 1, 0
    else:
      index += 1
    out.append((stage, index))
  return out


def _rename_modules(state_dict: StateDict, rename: Callable[[str], str | None], what: str,
                    source: str) -> StateDict:
  out = {}
  for key, value in state_dict.items():
    module, leaf = _split_key(key)
    new = rename(module)
    if new is None:
      raise ValueError(f"{source}: key {key!r} has no counterpart in timm's {what} naming")
    out[f"{new}.{leaf}"] = value
  return out


_LUKEMELAS_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
                  "_bn1": "bn2", "_fc": "classifier"}
# Inside a block: (with an expansion conv, without one).
_LUKEMELAS_BLOCK = {"_expand_conv": ("conv_pw", None), "_bn0": ("bn1", None),
                    "_depthwise_conv": ("conv_dw", "conv_dw"), "_bn1": ("bn2", "bn1"),
                    "_se_reduce": ("se.conv_reduce", "se.conv_reduce"),
                    "_se_expand": ("se.conv_expand", "se.conv_expand"),
                    "_project_conv": ("conv_pwl", "conv_pw"), "_bn2": ("bn3", "bn2")}


def _lukemelas_to_timm(sd: StateDict, source: str) -> StateDict:
  """lukemelas ``EfficientNet-PyTorch`` (and its lite variants) -> timm ``efficientnet``."""
  n = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"_blocks\.(\d+)\.", k)))
  widths = [sd[f"_blocks.{i}._project_conv.weight"].shape[0] for i in range(n)]
  where = _stages_from_widths(widths)

  def rename(module):
    if module in _LUKEMELAS_TOP:
      return _LUKEMELAS_TOP[module]
    m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)", module)
    if m is None or m.group(2) not in _LUKEMELAS_BLOCK:
      return None
    i = int(m.group(1))
    expand = f"_blocks.{i}._expand_conv.weight" in sd
    name = _LUKEMELAS_BLOCK[m.group(2)][0 if expand else 1]
    return None if name is None else f"blocks.{where[i][0]}.{where[i][1]}.{name}"

  return _rename_modules(sd, rename, "EfficientNet", source)


def _tv_mobilenet_v2_to_timm(sd: StateDict, source: str) -> StateDict:
  """torchvision ``mobilenet_v2`` -> timm ``mobilenetv2_100``."""
  last = max(int(m.group(1)) for k in sd if (m := re.match(r"features\.(\d+)\.", k)))
  proj = lambda k: f"features.{k}.conv.{1 if k == 1 else 2}.weight"
  where = _stages_from_widths([sd[proj(k)].shape[0] for k in range(1, last)])
  first = {"conv.0.0": "conv_dw", "conv.0.1": "bn1", "conv.1": "conv_pw", "conv.2": "bn2"}
  other = {"conv.0.0": "conv_pw", "conv.0.1": "bn1", "conv.1.0": "conv_dw", "conv.1.1": "bn2",
           "conv.2": "conv_pwl", "conv.3": "bn3"}

  def rename(module):
    fixed = {"features.0.0": "conv_stem", "features.0.1": "bn1", f"features.{last}.0": "conv_head",
             f"features.{last}.1": "bn2", "classifier.1": "classifier"}
    if module in fixed:
      return fixed[module]
    m = re.fullmatch(r"features\.(\d+)\.(.+)", module)
    if m is None or not 1 <= int(m.group(1)) < last:
      return None
    k = int(m.group(1))
    name = (first if k == 1 else other).get(m.group(2))
    return None if name is None else f"blocks.{where[k - 1][0]}.{where[k - 1][1]}.{name}"

  return _rename_modules(sd, rename, "MobileNetV2", source)


def _tv_efficientnet_to_timm(sd: StateDict, source: str) -> StateDict:
  """torchvision ``efficientnet_b*`` -> timm ``efficientnet_b*``."""
  last = max(int(m.group(1)) for k in sd if (m := re.match(r"features\.(\d+)\.", k)))
  expand = {"0.0": "conv_pw", "0.1": "bn1", "1.0": "conv_dw", "1.1": "bn2",
            "2.fc1": "se.conv_reduce", "2.fc2": "se.conv_expand", "3.0": "conv_pwl", "3.1": "bn3"}
  plain = {"0.0": "conv_dw", "0.1": "bn1", "1.fc1": "se.conv_reduce", "1.fc2": "se.conv_expand",
           "2.0": "conv_pw", "2.1": "bn2"}

  def rename(module):
    fixed = {"features.0.0": "conv_stem", "features.0.1": "bn1", f"features.{last}.0": "conv_head",
             f"features.{last}.1": "bn2", "classifier.1": "classifier"}
    if module in fixed:
      return fixed[module]
    m = re.fullmatch(r"features\.(\d+)\.(\d+)\.block\.(.+)", module)
    if m is None:
      return None
    s, i, rest = int(m.group(1)), int(m.group(2)), m.group(3)
    table = expand if f"features.{s}.{i}.block.3.0.weight" in sd else plain
    return f"blocks.{s - 1}.{i}.{table[rest]}" if rest in table else None

  return _rename_modules(sd, rename, "EfficientNet", source)


def timm_names(state_dict: Mapping[str, np.ndarray], *, source: str = "state dict") -> StateDict:
  """The state dict under timm's names (see the module docstring); smp's ``encoder.`` part is
  renamed the same way and keeps its prefix."""
  sd = {k: _as_numpy(v) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
  if sd and all(k.startswith("module.") for k in sd):
    sd = {k[len("module."):]: v for k, v in sd.items()}
  encoder = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
  if encoder:
    rest = {k: v for k, v in sd.items() if not k.startswith("encoder.")}
    return {**{f"encoder.{k}": v for k, v in _rename_scheme(encoder, source).items()}, **rest}
  return _rename_scheme(sd, source)


def _rename_scheme(sd: StateDict, source: str) -> StateDict:
  if "_conv_stem.weight" in sd:
    return _lukemelas_to_timm(sd, source)
  if "features.1.conv.0.0.weight" in sd:
    return _tv_mobilenet_v2_to_timm(sd, source)
  if "features.1.0.block.0.0.weight" in sd:
    return _tv_efficientnet_to_timm(sd, source)
  return sd


# ------------------------------------------------------------------------------------------------
# Leaves: layouts and size adaptation.
# ------------------------------------------------------------------------------------------------
# torch weight -> flax kernel axes, by rank: OIHW -> HWIO, (O, I, K) -> (K, I, O), (O, I) -> (I, O).
_KERNEL_AXES = {4: (2, 3, 1, 0), 3: (2, 1, 0), 2: (1, 0), 1: (0,)}
_TO_FLAX_LEAF = {"running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}
_TO_TORCH_LEAF = {("params", "kernel"): "weight", ("params", "scale"): "weight",
                  ("params", "embedding"): "weight", ("batch_stats", "mean"): "running_mean",
                  ("batch_stats", "var"): "running_var"}


def _flax_leaf(torch_leaf: str, available: Mapping[tuple[str, str], Any]) -> tuple[str, str]:
  """(collection, leaf) for a torch leaf name, given the leaves the target module has."""
  if torch_leaf in _TO_FLAX_LEAF:
    return _TO_FLAX_LEAF[torch_leaf]
  if torch_leaf == "weight":
    for leaf in ("kernel", "scale", "embedding"):
      if ("params", leaf) in available:
        return "params", leaf
  return "params", torch_leaf


def _to_flax_layout(leaf: str, value: np.ndarray) -> np.ndarray:
  return np.transpose(value, _KERNEL_AXES[value.ndim]) if leaf == "kernel" else value


def _to_torch_layout(leaf: str, value: np.ndarray) -> np.ndarray:
  if leaf != "kernel":
    return value
  return np.transpose(value, np.argsort(_KERNEL_AXES[value.ndim]))


def _resample_pos_embed(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
  if value.ndim != 3 or len(shape) != 3 or value.shape[2] != shape[2]:
    return None
  prefix = 1  # the class token
  grid = int(round((shape[1] - prefix) ** 0.5))
  if grid * grid != shape[1] - prefix:
    return None
  try:
    return np.asarray(layers.resample_position_embedding(jnp.asarray(value), grid, prefix))
  except ValueError:
    return None


def _crop_bias_table(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
  """A ``((2t-1)^2, heads)`` table cropped to ``((2u-1)^2, heads)``, u <= t: the entries of the
  relative offsets -(u-1)..(u-1), which are all a clamped u x u window can use."""
  big, small = (int(round(n ** 0.5)) for n in (value.shape[0], shape[0]))
  if (value.ndim != 2 or len(shape) != 2 or value.shape[1] != shape[1]
      or big * big != value.shape[0] or small * small != shape[0] or small > big
      or (big - small) % 2):
    return None
  lo = (big - small) // 2
  table = value.reshape(big, big, -1)[lo:lo + small, lo:lo + small]
  return table.reshape(small * small, -1)


# Leaves whose size depends on a model option (img_size): adapted instead of rejected.
ADAPTERS: dict[str, Callable[[np.ndarray, tuple[int, ...]], np.ndarray | None]] = {
    "pos_embed": _resample_pos_embed,
    "relative_position_bias_table": _crop_bias_table,
}


# ------------------------------------------------------------------------------------------------
# Conversion.
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ModelNaming:
  """Where each part of a model's variables comes from: (flax prefix, checkpoint prefix, rules)."""
  parts: tuple[tuple[FlaxPath, str, NameRules], ...]
  segmentation: bool

  @property
  def encoder(self) -> tuple[FlaxPath, str, NameRules] | None:
    return next((p for p in self.parts if p[0] == ("encoder",)), None)


def model_naming(model: nn.Module, arch: str | None = None) -> ModelNaming:
  """The naming of ``model`` (registry name ``arch``, else its ``model_name`` field or, for a
  segmentation model, its class). Segmentation models: the encoder's family under ``encoder``
  (checkpoint prefix ``encoder.``) and the decoder's own table for the rest."""
  family = _family(model, arch)
  if naming.is_segmentation_family(family):
    encoder_name = getattr(model, "encoder_name", None)
    parts = [((), "", family_rules(family))]
    if encoder_name is not None:
      parts.insert(0, (("encoder",), "encoder.", family_rules(model_entry(encoder_name).family)))
    return ModelNaming(tuple(parts), True)
  return ModelNaming((((), "", family_rules(family)),), False)


def _family(model: nn.Module, arch: str | None) -> str:
  if arch is not None:
    return model_entry(arch).family
  name = getattr(model, "model_name", None)
  if isinstance(name, str):
    try:
      return model_entry(name).family
    except ValueError:
      pass
  raise ValueError(f"cannot tell the registered model of {type(model).__name__}; pass arch= "
                   f"(a name from flaxderm.models.list_models())")


def _init_fn(model: nn.Module, input_size: int | None):
  """``rng -> variables``. Parameter shapes do not depend on the input size here (ViT's grid
  comes from ``img_size``), so the default is the model's ``img_size`` when it has one, else 64,
  or its ``min_input_size`` where that is larger (Inception-v3's unpadded convs)."""
  fallback = max(64, getattr(model, "min_input_size", 0))
  size = input_size or getattr(model, "img_size", None) or fallback
  x = jnp.zeros((1, size, size, getattr(model, "in_channels", 3)), jnp.float32)
  return lambda rng: _unfreeze(model.init({"params": rng, "dropout": rng}, x, train=False))


def abstract_variables(model: nn.Module, input_size: int | None = None) -> Variables:
  """The variables' shapes and dtypes (``jax.eval_shape`` of init: no compute)."""
  return jax.eval_shape(_init_fn(model, input_size), jax.random.key(0))


def init_leaves(model: nn.Module, rng: jax.Array, paths: Iterable[tuple[str, ...]],
                input_size: int | None = None) -> dict[tuple[str, ...], jax.Array]:
  """The initial values of some leaves (``(collection, *module, leaf)`` paths): those of
  ``jax.jit(model.init)(rng, ...)`` exactly (eager init can differ by float rounding). Only the
  selected leaves are returned from the jitted init, so JAX prunes the forward pass and the other
  initialisers before compiling: about a second, where a full init of a large model takes tens
  on a small CPU."""
  paths = list(paths)
  if not paths:
    return {}
  init = _init_fn(model, input_size)

  def select(rng):
    variables = init(rng)
    return [_get(variables, p) for p in paths]

  return dict(zip(paths, jax.jit(select)(rng)))


@dataclasses.dataclass(frozen=True)
class ConversionReport:
  """What ``from_state_dict`` did besides plain copies.

  Attributes:
    loaded: number of leaves taken from the checkpoint.
    initialised: flax paths (``collection/...``) left at their initial values (a resized head,
      a decoder the checkpoint does not have).
    dropped: checkpoint keys not used (a head the model does not have or whose size differs,
      modules the model does not need: see ``NameRules.unused``).
    adapted: flax paths resampled/cropped to the model's size (``pos_embed``, bias tables).
    checkpoint_classes: the outputs of the checkpoint's (first) head, None without one.
  """
  loaded: int
  initialised: tuple[str, ...]
  dropped: tuple[str, ...]
  adapted: tuple[str, ...]
  checkpoint_classes: int | None


def from_state_dict(state_dict: Mapping[str, np.ndarray], model: nn.Module, *,
                    arch: str | None = None, rng: jax.Array | None = None,
                    source: str = "state dict", input_size: int | None = None
                    ) -> tuple[Variables, ConversionReport]:
  """flaxderm variables for ``model`` from a PyTorch state dict (any naming ``timm_names`` reads).

  Args:
    state_dict: ``{name: array}`` (numpy arrays or CPU torch tensors), e.g. from
      ``read_state_dict`` or ``torch_module.state_dict()``.
    model: the flaxderm module to fill.
    arch: its registry name, when the module does not say (see ``model_naming``).
    rng: None: every leaf must come from the checkpoint and every key be used (strict: parity
      tests, round trips). A PRNG key: the head may differ from the checkpoint's (new
      ``num_classes``, or none), and a segmentation model may take an encoder/classifier
      checkpoint; those leaves get ``model.init(rng, ...)``'s values.
    source: the checkpoint's name for error messages (a file path).
    input_size: input side for tracing init (parameter shapes do not depend on it).

  Returns:
    ``({"params": ..., "batch_stats": ...}, ConversionReport)``, arrays in the model's
    ``param_dtype``.
  """
  naming = model_naming(model, arch)
  partial = rng is not None
  flat_target = traverse_util.flatten_dict(abstract_variables(model, input_size))
  sd = timm_names(state_dict, source=source)
  tree_modules = _leaves_by_module(flat_target)
  has_encoder_keys = any(k.startswith("encoder.") for k in sd)
  classifier_checkpoint = naming.encoder is not None and not has_encoder_keys

  filled: dict[tuple[str, ...], np.ndarray] = {}
  unexpected, misshaped, dropped, adapted = [], [], [], []
  checkpoint_classes = None
  for key, value in sd.items():
    module, leaf = _split_key(key)
    flax_prefix, rules, local = _part_for(naming, module, classifier_checkpoint)
    if rules.derived and re.search(rules.derived, key):
      continue
    is_head = rules.is_head(local)
    if under(local, rules.head[:1]) and leaf == "bias" and value.ndim == 1:
      checkpoint_classes = int(value.shape[0])
    candidates = [flax_prefix + flax_path(p) for p in rules.to_flax(local)]
    where = next((c for c in candidates if c in tree_modules), None)
    if where is None:
      if (is_head and partial) or rules.is_unused(local):
        dropped.append(key)  # a head the model lacks (num_classes=0), or an unused module
      else:
        unexpected.append(f"{key} {tuple(value.shape)}")
      continue
    collection, flax_leaf = _flax_leaf(leaf, tree_modules[where])
    path = (collection, *where, flax_leaf)
    if path not in flat_target:
      unexpected.append(f"{key} {tuple(value.shape)}")
      continue
    expected = tuple(flat_target[path].shape)
    converted = _to_flax_layout(flax_leaf, value)
    if converted.shape != expected and flax_leaf in ADAPTERS:
      resized = ADAPTERS[flax_leaf](converted, expected)
      if resized is not None:
        converted = resized
        adapted.append("/".join(path))
    if converted.shape != expected:
      if is_head and partial:
        dropped.append(key)
        continue
      layout = f" (flax layout {converted.shape})" if flax_leaf == "kernel" else ""
      misshaped.append(f"{key} {tuple(value.shape)} -> {'/'.join(path)} expects {expected}{layout}")
      continue
    filled[path] = converted

  missing = [p for p in flat_target if p not in filled]
  initialised = []
  if partial:
    initialised = [p for p in missing if _may_initialise(p, naming, classifier_checkpoint)]
    missing = [p for p in missing if p not in initialised]
  if unexpected or missing or misshaped:
    raise CheckpointMismatch(source, _describe(model, arch), unexpected,
                             ["/".join(p) for p in missing], misshaped)
  fresh = init_leaves(model, rng, initialised, input_size) if partial else {}
  out = {path: jnp.asarray(filled[path] if path in filled else fresh[path], dtype=leaf.dtype)
         for path, leaf in flat_target.items()}
  report = ConversionReport(len(filled), tuple("/".join(p) for p in initialised), tuple(dropped),
                            tuple(adapted), checkpoint_classes)
  return traverse_util.unflatten_dict(out), report


def _part_for(naming: ModelNaming, module: str, classifier_checkpoint: bool
              ) -> tuple[FlaxPath, NameRules, str]:
  """(flax prefix, rules, path within the part) for a checkpoint module path. A classifier
  checkpoint given to a segmentation model goes, whole, to its encoder."""
  if classifier_checkpoint:
    flax_prefix, _, rules = naming.encoder
    return flax_prefix, rules, module
  # The last part has the empty prefix, so some part always matches.
  flax_prefix, prefix, rules = next(p for p in naming.parts if module.startswith(p[1]))
  return flax_prefix, rules, module[len(prefix):]


def _may_initialise(path: tuple[str, ...], naming: ModelNaming, classifier_checkpoint: bool
                    ) -> bool:
  """Leaves that may keep their initial values: everything outside the encoder when a segmentation
  model gets an encoder checkpoint; otherwise only a classifier head."""
  module = path[1:-1]
  if classifier_checkpoint:
    return module[:1] != ("encoder",)
  for flax_prefix, _, rules in naming.parts:
    if module[:len(flax_prefix)] == flax_prefix:
      local = module[len(flax_prefix):]
      if any(local[:len(h)] == h for h in rules.flax_head):
        return True
  return False


def _leaves_by_module(flat: Mapping[tuple[str, ...], Any]) -> dict[FlaxPath, set[tuple[str, str]]]:
  out: dict[FlaxPath, set[tuple[str, str]]] = {}
  for collection, *module, leaf in flat:
    out.setdefault(tuple(module), set()).add((collection, leaf))
  return out


def _get(tree: Mapping, path: tuple[str, ...]):
  for p in path:
    tree = tree[p]
  return tree


def _unfreeze(tree: Mapping) -> dict:
  return {k: _unfreeze(v) if isinstance(v, Mapping) else v for k, v in tree.items()}


def _describe(model: nn.Module, arch: str | None) -> str:
  name = arch or getattr(model, "model_name", None) or type(model).__name__
  enc = getattr(model, "encoder_name", None)
  return f"{name} (encoder {enc})" if enc else str(name)


class CheckpointMismatch(ValueError):
  """A checkpoint that does not fit the model. The message names the first keys of each kind;
  ``unexpected``, ``missing`` and ``misshaped`` list every one."""

  def __init__(self, source: str, model: str, unexpected: list[str], missing: list[str],
               misshaped: list[str]):
    self.source, self.unexpected, self.missing, self.misshaped = (source, unexpected, missing,
                                                                  misshaped)
    super().__init__(_mismatch_message(source, model, unexpected, missing, misshaped))


def _mismatch_message(source: str, model: str, unexpected: list[str], missing: list[str],
                      misshaped: list[str]) -> str:
  lines = [f"{source} does not fit {model}: {len(misshaped)} mis-shaped, {len(unexpected)} "
           f"unexpected and {len(missing)} missing keys (is it a checkpoint for another "
           f"architecture or size?)"]
  for title, items in (("mis-shaped", misshaped),
                       ("unexpected (checkpoint keys with no flaxderm leaf)",
                        _by_module(unexpected, ".")),
                       ("missing (flaxderm leaves the checkpoint lacks)",
                        _by_module(missing, "/"))):
    if items:
      more = f" ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
      lines.append(f"  {title}: {'; '.join(items[:MAX_LISTED])}{more}")
  return "\n".join(lines)


def _by_module(items: list[str], sep: str) -> list[str]:
  """``["a.b.weight (3,)", "a.b.bias (3,)"]`` -> ``["a.b: weight (3,), bias (3,)"]``, so the first
  lines of a message cover several modules."""
  groups: dict[str, list[str]] = {}
  for item in items:
    key, _, shape = item.partition(" ")
    module, _, leaf = key.rpartition(sep)
    groups.setdefault(module, []).append(f"{leaf} {shape}".strip())
  return [f"{m or '<root>'}: {', '.join(leaves)}" for m, leaves in groups.items()]


def to_state_dict(variables: Mapping[str, Any], model: nn.Module, *, arch: str | None = None
                  ) -> StateDict:
  """The PyTorch state dict (timm names; smp names for segmentation models; torch layouts) of
  ``variables``; every BatchNorm gets a ``num_batches_tracked`` zero, as torch modules expect."""
  naming = model_naming(model, arch)
  out: StateDict = {}
  for path, value in traverse_util.flatten_dict(_unfreeze(variables)).items():
    collection, *module, leaf = path
    if collection not in ("params", "batch_stats"):
      continue
    flax_prefix, prefix, rules = next(p for p in naming.parts
                                      if tuple(module[:len(p[0])]) == p[0])
    # A leaf at the part's root (a ViT encoder's cls_token) sits on the prefix itself.
    torch_module = ".".join(filter(None, (prefix.rstrip("."),
                                          rules.to_torch("/".join(module[len(flax_prefix):])))))
    torch_leaf = _TO_TORCH_LEAF.get((collection, leaf), leaf)
    key = f"{torch_module}.{torch_leaf}" if torch_module else torch_leaf
    if key in out:
      raise ValueError(f"{_describe(model, arch)}: flax leaves {'/'.join(path)} and another both "
                       f"map to {key!r}; the family's NameRules are ambiguous")
    out[key] = _to_torch_layout(leaf, np.asarray(value))
    if (collection, leaf) == ("batch_stats", "var"):
      out[f"{torch_module}.num_batches_tracked"] = np.zeros((), np.int64)
  return out
