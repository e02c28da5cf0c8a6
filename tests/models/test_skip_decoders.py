"""U-Net++, LinkNet and MA-Net without torch: structure (head kernels and widths, the nodes a
zero-channel encoder map leaves out), decoder norm options, and bad options naming the model.
Everything is traced with ``jax.eval_shape``, so nothing compiles. Numerical parity with smp is in
test_parity_skip_decoders.py."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from flaxderm.models import create_model

SIZE = 64
NAMES = ("unetplusplus", "linknet", "manet")


def shapes(name, x_size=SIZE, **options):
  """(abstract variables, abstract output) of ``name`` on a (1, x_size, x_size, 3) input."""
  model = create_model(name, num_classes=2, **options)
  x = jnp.zeros((1, x_size, x_size, 3))
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  return variables, jax.eval_shape(model.apply, variables, x)


def decoder_modules(variables, collection="params"):
  return sorted(k for k in variables.get(collection, {}) if k.startswith("decoder"))


@pytest.mark.parametrize("name,head_kernel", [("unetplusplus", (3, 3, 4, 2)),
                                              ("linknet", (1, 1, 32, 2)),
                                              ("manet", (3, 3, 4, 2))])
def test_head_sees_the_last_decoder_width(name, head_kernel):
  """smp's heads: 3x3 on the last decoder width, LinkNet's 1x1 on its fixed 32 channels."""
  options = {} if name == "linknet" else {"decoder_channels": (32, 16, 8, 8, 4)}
  variables, out = shapes(name, encoder_name="resnet18", **options)
  assert out.shape == (1, SIZE, SIZE, 2)
  assert variables["params"]["segmentation_head"]["kernel"].shape == head_kernel


def test_unetplusplus_nodes_and_widths():
  """Ten nested nodes x_{d}_{j} plus x_0_4; the top row has decoder_channels, the nested ones the
  width of the encoder map at their stride (resnet18: 64, 64, 128, 256 at strides 2..16)."""
  variables, _ = shapes("unetplusplus", encoder_name="resnet18",
                        decoder_channels=(40, 30, 20, 10, 5))
  params = variables["params"]
  nodes = {(d, j) for j in range(4) for d in range(j + 1)} | {(0, 4)}
  assert decoder_modules(variables) == sorted(f"decoder_blocks_x_{d}_{j}" for d, j in nodes)
  skip_widths = {0: 256, 1: 128, 2: 64, 3: 64}
  for d, j in nodes:
    width = (40, 30, 20, 10, 5)[j] if d == 0 else skip_widths[j]
    assert params[f"decoder_blocks_x_{d}_{j}"]["conv2"]["conv"]["kernel"].shape[-1] == width


@pytest.mark.parametrize("name,absent", [
    ("unetplusplus", {"decoder_blocks_x_1_3", "decoder_blocks_x_2_3", "decoder_blocks_x_3_3"}),
    ("manet", {"decoder_blocks_3_fusion"}),
    ("linknet", set())])
def test_zero_channel_stride2_map(name, absent):
  """Swin has no stride-2 map (zero channels): smp's empty U-Net++ nodes and plain MA-Net block
  there; LinkNet keeps the previous width (Swin's 96 at stride 4) and adds nothing."""
  variables, out = shapes(name, encoder_name="swin_tiny")
  assert out.shape == (1, SIZE, SIZE, 2)
  modules = set(decoder_modules(variables))
  assert modules and not modules & absent
  if name == "linknet":
    block = variables["params"]["decoder_blocks_3"]
    assert block["expand"]["conv"]["kernel"].shape[-1] == 96


# One conv-norm-ReLU of each decoder.
CONV_NORM = {"unetplusplus": ("decoder_blocks_x_0_0", "conv1"),
             "linknet": ("decoder_blocks_0", "reduce"), "manet": ("decoder_blocks_0", "conv1")}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("norm", ["group", "none"])
def test_decoder_norm(name, norm):
  """``norm`` (smp's decoder_use_norm) applies to the decoder only: no BatchNorm statistics
  outside the encoder; without a norm the convs get biases, as smp's Conv2dReLU."""
  variables, out = shapes(name, encoder_name="resnet18", norm=norm)
  assert out.shape == (1, SIZE, SIZE, 2)
  assert decoder_modules(variables, "batch_stats") == []
  block, layer = CONV_NORM[name]
  conv_norm = variables["params"][block][layer]
  assert ("bias" in conv_norm["conv"]) == (norm == "none")
  assert ("gn" in conv_norm.get("norm", {})) == (norm == "group")


BAD_OPTIONS = [
    ("unetplusplus", {"decoder_channels": (64, 32, 16, 8)}, "decoder_channels"),
    ("unetplusplus", {"decoder_attention": "sce"}, "decoder_attention"),
    ("unetplusplus", {"norm": "bn"}, "norm"),
    ("linknet", {"norm": "bn"}, "norm"),
    ("manet", {"decoder_channels": (64, 32, 16, 8)}, "decoder_channels"),
    ("manet", {"decoder_pab_channels": 0}, "decoder_pab_channels"),
    ("manet", {"norm": "bn"}, "norm"),
]


@pytest.mark.parametrize("name,options,option", BAD_OPTIONS,
                         ids=[f"{n}-{o}" for n, _, o in BAD_OPTIONS])
def test_bad_option_names_model_and_option(name, options, option):
  with pytest.raises(ValueError, match=rf"^{name}: {option}\b"):
    shapes(name, encoder_name="resnet18", **options)


@pytest.mark.parametrize("name", NAMES)
def test_input_not_divisible_by_encoder_stride(name):
  with pytest.raises(ValueError, match=rf"{name}.*\b48x48\b.*32"):
    shapes(name, x_size=48, encoder_name="resnet18")
