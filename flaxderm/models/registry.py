"""One registry for every architecture: ``create_model(name, *, num_classes, **kwargs)``.

A family file registers each variant with ``@register_model``; the decorated function receives the
keyword arguments and returns a ``flax.linen.Module``. Keyword arguments are checked against the
variant's signature and against the module's fields, so a typo is a ValueError naming the model and
the closest valid keywords instead of a silently ignored option.

Besides what a variant is (task, family, input sizes), its registration declares what the rest of
flaxderm needs to know about it, so that a new architecture is its file alone:

* ``test_options``: the small configuration tests/models/test_models.py compiles, runs and
  differentiates for the family, and tests/tools/test_explain.py explains (``{}``: the defaults).
  One variant per family declares it; the others are traced only.
* ``gradcam_layer``: a regex over module paths inside the model (inside the encoder, when the
  model is a segmentation model's encoder) naming the default Grad-CAM layers, the last match
  winning; None: the default rule (the coarsest top-level map) suits it.
"""
from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any, Callable, Mapping

import flax.linen as nn

from flaxderm.hints import did_you_mean

_REGISTRY: dict[str, "ModelEntry"] = {}


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  name: str
  factory: Callable[..., nn.Module]
  task: str  # "classification" or "segmentation"
  family: str
  default_input_size: int
  description: str
  # The smallest input side the classifier accepts, where unpadded convolutions set one
  # (Inception-v3); None: any size the model's stride allows.
  min_input_size: int | None = None
  # See the module docstring.
  test_options: Mapping[str, Any] | None = None
  gradcam_layer: str | None = None


def register_model(*, task: str, family: str, default_input_size: int = 224,
                   min_input_size: int | None = None,
                   test_options: Mapping[str, Any] | None = None,
                   gradcam_layer: str | None = None):
  """Decorator: registers ``fn`` under its own name. ``fn(**kwargs) -> nn.Module``. See the
  module docstring for ``test_options`` and ``gradcam_layer``."""
  if task not in ("classification", "segmentation"):
    raise ValueError(f"task must be 'classification' or 'segmentation', got {task!r}")
  if gradcam_layer is not None:
    re.compile(gradcam_layer)  # a bad pattern fails here, not when someone explains a prediction

  def wrap(fn):
    if fn.__name__ in _REGISTRY:
      raise ValueError(f"model {fn.__name__!r} is registered twice")
    doc = (fn.__doc__ or "").strip().splitlines()
    _REGISTRY[fn.__name__] = ModelEntry(fn.__name__, fn, task, family, default_input_size,
                                        doc[0] if doc else "", min_input_size, test_options,
                                        gradcam_layer)
    return fn

  return wrap


def list_models(task: str | None = None, family: str | None = None) -> list[str]:
  """Sorted registered names, optionally filtered by task ("classification"/"segmentation") or family."""
  return sorted(n for n, e in _REGISTRY.items()
                if (task is None or e.task == task) and (family is None or e.family == family))


def model_entry(name: str) -> ModelEntry:
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}{did_you_mean(name, _REGISTRY, n=5)}; "
                     f"flaxderm.models.list_models() lists all {len(_REGISTRY)}")
  return _REGISTRY[name]


def _accepted_keywords(entry: ModelEntry, module: nn.Module | None = None) -> set[str]:
  params = inspect.signature(entry.factory).parameters
  names = {p for p, v in params.items() if v.kind is not inspect.Parameter.VAR_KEYWORD}
  if module is not None:
    names |= {f.name for f in dataclasses.fields(module) if f.name not in ("parent", "name")}
  return names


def create_model(name: str, *, num_classes: int, **kwargs: Any) -> nn.Module:
  """Builds the registered model ``name``.

  Args:
    name: a name from ``list_models()``.
    num_classes: classifier outputs, or per-pixel output channels for segmentation models
      (1 for a binary lesion mask with sigmoid, 2+ for softmax). ``0`` for a classification model
      drops its head, which is how segmentation models use it as an encoder.
    **kwargs: options of that family (``dtype``, ``param_dtype``, ``norm``, ``output_stride``,
      ``encoder_name`` ...). Unknown keywords raise ValueError.
  """
  entry = model_entry(name)
  if not isinstance(num_classes, int) or num_classes < 0:
    raise ValueError(f"{name}: num_classes must be a non-negative int, got {num_classes!r}")
  try:
    sig_params = inspect.signature(entry.factory).parameters
    takes_var_kw = any(v.kind is inspect.Parameter.VAR_KEYWORD for v in sig_params.values())
    if not takes_var_kw:
      unknown = set(kwargs) - _accepted_keywords(entry)
      if unknown:
        _raise_unknown(name, unknown, _accepted_keywords(entry))
    module = entry.factory(num_classes=num_classes, **kwargs)
  except TypeError as e:
    # A factory that forwards **kwargs to a module constructor reports unknown fields as TypeError.
    probe = entry.factory(num_classes=num_classes)
    unknown = set(kwargs) - _accepted_keywords(entry, probe)
    if unknown:
      _raise_unknown(name, unknown, _accepted_keywords(entry, probe))
    raise ValueError(f"{name}: invalid arguments {kwargs}: {e}") from e
  return module


def _raise_unknown(name: str, unknown: set[str], accepted: set[str]):
  parts = []
  for u in sorted(unknown):
    parts.append(f"{u!r}" + did_you_mean(u, sorted(accepted)))
  raise ValueError(f"{name}: unknown keyword argument(s) {', '.join(parts)}; accepted: "
                   f"{', '.join(sorted(accepted))}")
