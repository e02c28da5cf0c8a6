"""The shared part of every encoder-decoder segmentation model (smp's ``SegmentationModel``).

A decoder file imports this module and subclasses ``SegmentationModel``: it declares its own
options as fields and implements ``decode(features, train)`` over the encoder's feature list
(strides 2, 4, 8, 16, 32, as smp's encoders without the input itself). The base builds the encoder
(submodule "encoder", so pretrained weights go to ``params["encoder"]``), checks the input, applies
the segmentation head (conv, then resize to the input size when the decoder ends at a coarser
stride) and smp's optional auxiliary classification head on the deepest features.

Also here: the init constants (smp's ``initialize_decoder``/``initialize_head``) and the option
helpers. The decoder attention selected by name (``decoder_attention``) is in attention.py.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxderm.models import layers
from flaxderm.models.registry import create_model

Dtype = Any

# smp's initialize_decoder: Kaiming-uniform (fan in, ReLU gain) for decoder convs, Xavier-uniform
# for heads. Same variance as Ronneberger's Gaussian sqrt(2 / fan_in): one init serves both forms.
DECODER_INIT = nn.initializers.kaiming_uniform()
HEAD_INIT = nn.initializers.xavier_uniform()
# The encoder of the decoders' test configurations (``test_options``, registry.py): a ResNet-18 with
# one block per stage, which compiles in seconds on a CPU.
TEST_ENCODER = {"encoder_name": "resnet18", "encoder_kwargs": {"depths": (1, 1, 1, 1)}}


# ------------------------------------------------------------------------------------------------
# Options, input checks, encoder and heads.
# ------------------------------------------------------------------------------------------------
def hashable_options(options: dict[str, Any]) -> dict[str, Any]:
  """Lists -> tuples and dicts -> FrozenDicts, recursively, so a module built from user options
  stays hashable (flax compares and hashes module fields)."""
  def freeze(v):
    if isinstance(v, tuple) and hasattr(v, "_fields"):  # a NamedTuple keeps its type
      return type(v)(*(freeze(i) for i in v))
    if isinstance(v, (list, tuple)):
      return tuple(freeze(i) for i in v)
    if isinstance(v, Mapping):
      return flax.core.FrozenDict({k: freeze(i) for k, i in v.items()})
    return v
  return {k: freeze(v) for k, v in options.items()}


def check_choice(model: str, option: str, value: Any, choices: Sequence[Any]):
  """A ValueError naming the model and the option unless ``value`` is one of ``choices`` (the
  layers would reject it too, but without saying which model's option it was)."""
  if value not in choices:
    raise ValueError(f"{model}: {option} must be one of {tuple(choices)}, got {value!r}")


def check_segmentation_input(model: str, x: jax.Array, *, num_classes: int, in_channels: int,
                             multiple_of: int, what: str):
  if num_classes < 1:
    raise ValueError(f"{model}: num_classes must be >= 1 (1 = binary mask with sigmoid), got "
                     f"{num_classes}")
  layers.check_input(model, x, in_channels=in_channels, multiple_of=multiple_of, what=what)


def build_encoder(model: str, encoder_name: str, encoder_kwargs: Mapping[str, Any] | None, *,
                  dtype: Dtype | None, param_dtype: Dtype, **fixed: Any) -> nn.Module:
  """``create_model(encoder_name, num_classes=0, ...)``. ``fixed`` are options the segmentation
  model owns (e.g. DeepLab's ``output_stride``), which ``encoder_kwargs`` may not override."""
  kwargs = dict(encoder_kwargs or {})
  owned = {"dtype", "param_dtype", "num_classes", *fixed} & set(kwargs)
  if owned:
    raise ValueError(f"{model}: set {', '.join(sorted(owned))} on the model itself, not in "
                     f"encoder_kwargs")
  try:
    # An owned option the encoder lacks is the model's requirement, not a typo to correct.
    lacking = [k for k in fixed if not hasattr(create_model(encoder_name, num_classes=0), k)]
    if lacking:
      hint = (" (only the CNN encoders trade stride for dilation)" if "output_stride" in lacking
              else "")
      raise ValueError(f"it has no {', '.join(lacking)} option, which {model} sets to "
                       f"{', '.join(repr(fixed[k]) for k in lacking)}{hint}")
    return create_model(encoder_name, num_classes=0, dtype=dtype, param_dtype=param_dtype, **fixed,
                        **kwargs)
  except ValueError as e:
    raise ValueError(f"{model}: cannot build encoder {encoder_name!r}: {e}") from e


class ClassificationHead(nn.Module):
  """smp's ``aux_params`` head on the deepest features: global pool -> dropout -> linear."""
  num_classes: int
  pooling: str = "avg"
  dropout: float = 0.2
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.pooling not in ("avg", "max"):
      raise ValueError(f"aux_pooling must be 'avg' or 'max', got {self.pooling!r}")
    x = jnp.mean(x, axis=(1, 2)) if self.pooling == "avg" else jnp.max(x, axis=(1, 2))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, kernel_init=HEAD_INIT, dtype=self.dtype,
                    param_dtype=self.param_dtype, name="fc")(x)


# ------------------------------------------------------------------------------------------------
# Resizing.
# ------------------------------------------------------------------------------------------------
def upsample_nearest(x: jax.Array, height: int, width: int) -> jax.Array:
  """Nearest upsampling by the integer factors that reach (height, width) (PyTorch's
  ``F.interpolate(mode="nearest")`` for integer factors; a factor of 1 is a no-op)."""
  return jnp.repeat(jnp.repeat(x, height // x.shape[1], axis=1), width // x.shape[2], axis=2)


# ------------------------------------------------------------------------------------------------
# The base model.
# ------------------------------------------------------------------------------------------------
class SegmentationModel(nn.Module):
  """Encoder -> ``decode`` -> segmentation head (+ auxiliary classification head).

  Attributes shared by every subclass:
    num_classes: output channels per pixel (1 = binary mask with sigmoid).
    encoder_name: a registered classification model used as encoder (``features_only=True``).
    encoder_kwargs: further encoder options (``norm``, ``drop_path_rate`` ...).
    in_channels: input channels (checked, and passed to the encoder).
    aux_classes: > 0 adds smp's auxiliary classification head on the deepest features; the model
      then returns ``(mask_logits, class_logits)``.
    aux_pooling / aux_dropout: that head's global pooling ("avg"/"max") and dropout.
    dtype / param_dtype: compute and parameter dtypes.

  Class attributes a subclass sets: ``model_name`` (its registry name, for messages),
  ``head_kernel_size`` (smp's ``SegmentationHead`` kernel, 3 unless the paper says 1; 0 when
  ``decode`` already returns the class scores, as FCN's score layers) and
  ``head_align_corners`` (the final resize; smp's ``SegmentationHead`` uses
  ``UpsamplingBilinear2d``, i.e. ``align_corners=True``). ``encoder_options()`` returns options
  the model owns for its encoder (e.g. ``output_stride``); ``input_multiple()`` the stride the
  input must be divisible by.
  """
  num_classes: int
  encoder_name: str | None = "resnet34"
  encoder_kwargs: Mapping[str, Any] | None = None
  in_channels: int = 3
  aux_classes: int = 0
  aux_pooling: str = "avg"
  aux_dropout: float = 0.2
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  model_name: ClassVar[str] = "segmentation model"
  head_kernel_size: ClassVar[int] = 3
  head_align_corners: ClassVar[bool] = True

  def encoder_options(self) -> dict[str, Any]:
    return {}

  def input_multiple(self) -> int:
    return 32

  def setup(self):
    # Built in setup so that it is named "encoder": pretrained weights go to params["encoder"].
    if self.encoder_name is not None:
      self.encoder = build_encoder(self.model_name, self.encoder_name, self.encoder_kwargs,
                                   dtype=self.dtype, param_dtype=self.param_dtype,
                                   in_channels=self.in_channels, **self.encoder_options())

  def encode(self, x: jax.Array, train: bool) -> Sequence[jax.Array]:
    """The encoder maps the decoder and the auxiliary head see (the last one is the deepest)."""
    return self.encoder(x, train, features_only=True)

  def decode(self, features: Sequence[jax.Array], train: bool) -> jax.Array:
    """The decoder: the encoder's feature list -> the map the segmentation head sees."""
    raise NotImplementedError(f"{type(self).__name__} must implement decode()")

  def check_input(self, x: jax.Array, multiple_of: int, what: str):
    check_segmentation_input(self.model_name, x, num_classes=self.num_classes,
                             in_channels=self.in_channels, multiple_of=multiple_of, what=what)

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.encoder_name is None:
      raise ValueError(f"{self.model_name}: encoder_name is required")
    self.check_input(x, self.input_multiple(), f"the {self.encoder_name} encoder stride")
    features = self.encode(x, train)
    return self.heads(self.decode(features, train), features[-1], x, train)

  def heads(self, y: jax.Array, deepest: jax.Array, x: jax.Array, train: bool,
            kernel_size: int | None = None):
    """Segmentation head on ``y`` (resized to ``x``'s size), auxiliary head on ``deepest``."""
    k = self.head_kernel_size if kernel_size is None else kernel_size
    masks = y if k == 0 else nn.Conv(self.num_classes, (k, k), padding=layers.conv_padding(k),
                                     kernel_init=HEAD_INIT, dtype=self.dtype,
                                     param_dtype=self.param_dtype, name="segmentation_head")(y)
    if masks.shape[1:3] != x.shape[1:3]:
      masks = layers.resize_bilinear(masks, x.shape[1], x.shape[2],
                                     align_corners=self.head_align_corners)
    if self.aux_classes <= 0:
      return masks
    labels = ClassificationHead(self.aux_classes, self.aux_pooling, self.aux_dropout,
                                dtype=self.dtype, param_dtype=self.param_dtype,
                                name="classification_head")(deepest, train)
    return masks, labels
