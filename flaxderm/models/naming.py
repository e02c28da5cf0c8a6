"""How a family's PyTorch (timm / smp) module paths map to its flax module paths.

Every family file registers its rules beside its modules (timm keeps checkpoint filters in the
model file too): ``register_rules("resnet", NameRules(head=("fc",)))``. ``convert.py`` applies
them; a family without rules cannot be converted, and says so.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Iterable, Mapping

FlaxPath = tuple[str, ...]  # module path, without collection and leaf

# ------------------------------------------------------------------------------------------------
# Bidirectional name templates.
# ------------------------------------------------------------------------------------------------
_FIELD = re.compile(r"\{(\w+)([+-]\d+)?\}")


class Template:
  """A module path with integer fields, e.g. ``"decoder.blocks.{i}.conv{j}.0"``; ``{k+1}`` stores
  ``k`` but reads and writes ``k + 1`` (torchvision's stage 1 is timm's stage 0)."""

  def __init__(self, text: str):
    self.text = text
    pattern, pos, seen = [], 0, set()
    for m in _FIELD.finditer(text):
      pattern.append(re.escape(text[pos:m.start()]))
      name = m.group(1)
      pattern.append(f"(?P={name})" if name in seen else f"(?P<{name}>\\d+)")
      seen.add(name)
      pos = m.end()
    pattern.append(re.escape(text[pos:]))
    self._regex = re.compile("".join(pattern))
    self._offsets = {m.group(1): int(m.group(2) or 0) for m in _FIELD.finditer(text)}

  def match(self, path: str) -> dict[str, int] | None:
    m = self._regex.fullmatch(path)
    if m is None:
      return None
    return {k: int(v) - self._offsets[k] for k, v in m.groupdict().items()}

  def format(self, values: Mapping[str, int]) -> str:
    return _FIELD.sub(lambda m: str(values[m.group(1)] + int(m.group(2) or 0)), self.text)


def _translate(path: str, rules: Iterable[tuple[Template, Template]]) -> list[str]:
  """All translations of ``path`` by the rules (source side first), in rule order."""
  out = []
  for src, dst in rules:
    values = src.match(path)
    if values is not None:
      out.append(dst.format(values))
  return out


def _compile(rules: Iterable[tuple[str, str]]) -> tuple[tuple[Template, Template], ...]:
  return tuple((Template(a), Template(b)) for a, b in rules)


def mechanical_to_flax(torch_path: str) -> str:
  """``blocks.3.attn.qkv`` -> ``blocks_3/attn/qkv``: numeric parts join their parent with ``_``."""
  out: list[str] = []
  for part in torch_path.split("."):
    if part.isdigit() and out:
      out[-1] += f"_{part}"
    else:
      out.append(part)
  return "/".join(out)


def flax_path(text: str) -> FlaxPath:
  return tuple(text.split("/")) if text else ()


def mechanical_to_torch(flax_path: str) -> str:
  """Inverse of ``mechanical_to_flax``: ``layer1_0/conv1`` -> ``layer1.0.conv1``."""
  parts = []
  for seg in flax_path.split("/"):
    m = re.fullmatch(r"(.*?)((?:_\d+)*)", seg)
    parts.append(".".join([m.group(1)] + [d for d in m.group(2).split("_") if d]))
  return ".".join(parts)


# ------------------------------------------------------------------------------------------------
# Per-family naming.
# ------------------------------------------------------------------------------------------------
# ``layers.Norm`` puts the norm one level down (``bn1`` -> ``bn1/bn``); a torch norm module maps
# to the flax path itself (a bare ``nn.BatchNorm``) or to one of these children.
NORM_CHILDREN = ("bn", "gn")


@dataclasses.dataclass(frozen=True)
class NameRules:
  """How one family's timm module paths map to its flax module paths.

  Attributes:
    rules: ``(timm template, flax template)`` pairs, tried in order before the mechanical rule.
    head: timm module paths of the classifier head (not in encoders; resized or dropped when
      ``num_classes`` differs from the checkpoint's).
    unused: templates of module paths the flax model may lack because they do not affect its
      output there, dropped when it does (EfficientNet's ``conv_head`` in an encoder; the
      attention smp creates, but never calls, in the last U-Net block, which has no skip).
    derived: regex of checkpoint keys that are derived constants (buffers), dropped on import.
  """
  rules: tuple[tuple[str, str], ...] = ()
  head: tuple[str, ...] = ()
  unused: tuple[str, ...] = ()
  derived: str | None = None

  @functools.cached_property
  def compiled(self) -> tuple[tuple[Template, Template], ...]:
    return _compile(self.rules)

  @functools.cached_property
  def _reverse(self) -> tuple[tuple[Template, Template], ...]:
    return tuple((b, a) for a, b in self.compiled)

  @functools.cached_property
  def _unused(self) -> tuple[Template, ...]:
    return tuple(Template(t) for t in self.unused)

  def to_flax(self, torch_path: str) -> list[str]:
    """Candidate flax module paths, best first; the caller takes the first the model has."""
    mech = mechanical_to_flax(torch_path)
    return (_translate(torch_path, self.compiled) + [mech]
            + [f"{mech}/{c}" if mech else c for c in NORM_CHILDREN])

  def to_torch(self, flax_path: str) -> str:
    found = _translate(flax_path, self._reverse)
    if found:
      return found[0]
    parts = flax_path.split("/")
    if len(parts) > 1 and parts[-1] in NORM_CHILDREN:
      parts = parts[:-1]
    return mechanical_to_torch("/".join(parts))

  @property
  def flax_head(self) -> tuple[FlaxPath, ...]:
    return tuple(flax_path(self.to_flax(h)[0]) for h in self.head)

  def is_head(self, torch_path: str) -> bool:
    return under(torch_path, self.head)

  def is_unused(self, torch_path: str) -> bool:
    parts = torch_path.split(".")
    prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(t.match(p) is not None for t in self._unused for p in prefixes)


def under(torch_path: str, prefixes: Iterable[str]) -> bool:
  return any(torch_path == p or torch_path.startswith(p + ".") for p in prefixes)


def conv_norm(torch_tmpl: str, flax_tmpl: str, conv: str = "0", norm: str = "1"):
  """A torch ``Sequential(conv, BatchNorm, act)`` <-> ``layers.ConvNormAct`` (conv, norm/bn)."""
  return ((f"{torch_tmpl}.{conv}", f"{flax_tmpl}/conv"),
          (f"{torch_tmpl}.{norm}", f"{flax_tmpl}/norm/bn"))


def separable(torch_tmpl: str, flax_tmpl: str, norm: str):
  """smp's ``SeparableConv2d`` (``.0`` depthwise, ``.1`` pointwise) followed by the BatchNorm at
  ``norm`` <-> ``layers.SeparableConv``; its extra depthwise BN is ``<separable>.depthwise_bn``."""
  return ((f"{torch_tmpl}.0", f"{flax_tmpl}/depthwise/conv"),
          (f"{torch_tmpl}.depthwise_bn", f"{flax_tmpl}/depthwise/norm/bn"),
          (f"{torch_tmpl}.1", f"{flax_tmpl}/pointwise/conv"),
          (norm, f"{flax_tmpl}/pointwise/norm/bn"))


# smp's per-pixel and auxiliary heads: re-initialised when the number of classes changes.
SEGMENTATION_HEADS = ("segmentation_head", "classification_head")
# smp's SegmentationHead conv and ClassificationHead linear, the same in every smp decoder.
SEGMENTATION_HEAD_RULES = (("segmentation_head.0", "segmentation_head"),
                           ("classification_head.3", "classification_head/fc"))

_FAMILIES: dict[str, NameRules] = {}
_SEGMENTATION_FAMILIES: set[str] = set()


def register_rules(family: str, rules: NameRules, *, segmentation: bool = False) -> NameRules:
  """Registers ``family``'s rules; ``segmentation``: its models hold an encoder under
  ``params["encoder"]`` (checkpoint prefix ``encoder.``) named by the encoder's own family."""
  if family in _FAMILIES:
    raise ValueError(f"name rules for family {family!r} are registered twice")
  _FAMILIES[family] = rules
  if segmentation:
    _SEGMENTATION_FAMILIES.add(family)
  return rules


def family_rules(family: str) -> NameRules:
  if family not in _FAMILIES:
    raise ValueError(f"no PyTorch name mapping for model family {family!r}; families with one: "
                     f"{sorted(_FAMILIES)}")
  return _FAMILIES[family]


def is_segmentation_family(family: str) -> bool:
  return family in _SEGMENTATION_FAMILIES
