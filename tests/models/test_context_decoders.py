"""FPN, PSPNet, PAN, UPerNet and DeepLabV3 without torch: output shapes per option, the layers
their options change, bad options and inputs, adaptive average pooling, and the smp naming round
trip. Everything is traced (``jax.eval_shape``), not compiled, on resnet18 encoders with narrow
decoders; numerical parity with smp is test_parity_context_decoders.py.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxderm.models import convert, create_model, layers
from flaxderm.models.pan import max_pool2x2

# Narrow decoders on resnet18, per model.
SMALL = {
    "fpn": dict(pyramid_channels=16, segmentation_channels=8),
    "pspnet": dict(psp_out_channels=16),
    "pan": dict(decoder_channels=8),
    "upernet": dict(decoder_channels=16),
    "deeplabv3": dict(decoder_channels=16),
}
NAMES = sorted(SMALL)


def _model(name, num_classes=2, **options):
  return create_model(name, num_classes=num_classes, encoder_name="resnet18",
                      **{**SMALL[name], **options})


def _init(model, x):
  keys = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  return model.init(keys, x)


def _variables(model, size=64):
  x = jnp.zeros((1, size, size, 3))
  return jax.eval_shape(lambda x: _init(model, x), x)


def _output_shapes(model, x, train=False):
  def run(x):
    variables = _init(model, x)
    if not train:
      return model.apply(variables, x)
    return model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)},
                       mutable=["batch_stats"])[0]
  return jax.tree.map(lambda a: a.shape, jax.eval_shape(run, x))


def _x(height=64, width=None, batch=2, channels=3):
  return jnp.zeros((batch, height, width or height, channels))


# ------------------------------------------------------------------------------------------------
# Shapes and options.
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_shapes_with_auxiliary_head(name):
  model = _model(name, num_classes=3, aux_classes=4)
  assert _output_shapes(model, _x(64, 96)) == ((2, 64, 96, 3), (2, 4))


@pytest.mark.parametrize("name", NAMES)
def test_train_mode_traces(name):
  assert _output_shapes(_model(name), _x(64), train=True) == (2, 64, 64, 2)


@pytest.mark.parametrize("name", NAMES)
def test_default_encoder_is_smps_resnet34(name):
  model = create_model(name, num_classes=1)
  assert model.encoder_name == "resnet34"


@pytest.mark.parametrize("merge_policy,head_inputs", [("add", 8), ("cat", 32)])
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_fpn_merge_policy(merge_policy, head_inputs, interpolation):
  model = _model("fpn", merge_policy=merge_policy, interpolation=interpolation)
  assert _output_shapes(model, _x(64)) == (2, 64, 64, 2)
  params = _variables(model)["params"]
  assert params["segmentation_head"]["kernel"].shape == (1, 1, head_inputs, 2)
  # P5 needs three conv + x2 upsampling steps to reach stride 4, P2 one conv and none.
  assert sorted(k for k in params if k.startswith("decoder_seg_blocks_0")) == [
      f"decoder_seg_blocks_0_block_{j}" for j in range(3)]
  assert "gn" in params["decoder_seg_blocks_3_block_0"]["norm"]


@pytest.mark.parametrize("encoder_depth,channels", [(3, 128), (4, 256), (5, 512)])
def test_pspnet_pools_the_map_at_stride_2_to_the_depth(encoder_depth, channels):
  model = _model("pspnet", encoder_depth=encoder_depth, aux_classes=3)
  assert _output_shapes(model, _x(64)) == ((2, 64, 64, 2), (2, 3))
  params = _variables(model)["params"]
  assert params["decoder_psp_blocks_1"]["conv"]["kernel"].shape == (1, 1, channels, channels // 4)
  assert params["decoder_conv"]["conv"]["kernel"].shape == (1, 1, 2 * channels, 16)
  assert params["classification_head"]["fc"]["kernel"].shape == (channels, 3)
  assert params["segmentation_head"]["kernel"].shape == (3, 3, 16, 2)
  # Bin size 1 has no BatchNorm (a 1x1 map), so its conv has a bias.
  assert set(params["decoder_psp_blocks_0"]) == {"conv"}
  assert "bias" in params["decoder_psp_blocks_0"]["conv"]


@pytest.mark.parametrize("output_stride,size", [(16, 64), (16, 96), (32, 128)])
@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_pan_output_strides(output_stride, size, interpolation):
  model = _model("pan", output_stride=output_stride, interpolation=interpolation)
  assert _output_shapes(model, _x(size)) == (2, size, size, 2)


def test_pan_max_pool_keeps_a_single_pixel():
  x = jax.random.normal(jax.random.key(0), (2, 4, 1, 3))
  np.testing.assert_array_equal(max_pool2x2(x), x.reshape(2, 2, 2, 1, 3).max(axis=2))
  np.testing.assert_array_equal(max_pool2x2(x[:, :3]), x[:, :2].max(axis=1, keepdims=True))


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_upernet_norm(norm):
  model = _model("upernet", norm=norm)
  assert _output_shapes(model, _x(64)) == (2, 64, 64, 2)
  params = _variables(model)["params"]
  assert ("bias" in params["decoder_fusion_block"]["conv"]) == (norm == "none")
  assert "norm" in params["decoder_psp_out_conv"]  # smp's pyramid fusion always has BatchNorm
  assert params["decoder_feature_norms_3"]["scale"].shape == (512,)


@pytest.mark.parametrize("output_stride,size", [(8, 72), (16, 80)])
def test_deeplabv3_output_strides(output_stride, size):
  """The input only needs to be divisible by the output stride (8 by default, as smp)."""
  model = _model("deeplabv3", output_stride=output_stride, aux_classes=2)
  assert _output_shapes(model, _x(size)) == ((2, size, size, 2), (2, 2))


def test_deeplabv3_defaults_follow_smp():
  model = create_model("deeplabv3", num_classes=1)
  assert (model.output_stride, model.separable, model.aspp_dropout) == (8, False, 0.5)
  params = _variables(_model("deeplabv3"))["params"]
  assert params["decoder_aspp"]["branch_rate2"]["conv"]["kernel"].shape == (3, 3, 512, 16)
  assert params["decoder_conv"]["conv"]["kernel"].shape == (3, 3, 16, 16)
  assert params["segmentation_head"]["kernel"].shape == (1, 1, 16, 2)


def test_deeplabv3_separable_aspp():
  params = _variables(_model("deeplabv3", separable=True))["params"]
  assert set(params["decoder_aspp"]["branch_rate0"]) == {"depthwise", "pointwise"}


# ------------------------------------------------------------------------------------------------
# Bad options and inputs.
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,options,multiple", [
    ("fpn", {}, 32), ("pspnet", {}, 32), ("pan", {}, 16), ("upernet", {}, 32),
    ("deeplabv3", {}, 8), ("deeplabv3", dict(output_stride=16), 16)])
def test_bad_input_names_model_and_shape(name, options, multiple):
  model = _model(name, **options)
  bad = 4 * multiple + multiple // 2
  with pytest.raises(ValueError, match=rf"{name}: input {bad}x{bad} is not divisible .*{multiple}"):
    _variables(model, bad)
  with pytest.raises(ValueError, match=rf"{name}: expected 3 input channels .* got 1"):
    jax.eval_shape(lambda x: _init(model, x), _x(64, channels=1))
  with pytest.raises(ValueError, match=rf"{name}: expected an NHWC batch"):
    jax.eval_shape(lambda x: _init(model, x), jnp.zeros((64, 64, 3)))


@pytest.mark.parametrize("name,options,match", [
    ("fpn", dict(merge_policy="mean"), r"fpn: merge_policy must be one of \('add', 'cat'\)"),
    ("fpn", dict(interpolation="bicubic"), r"fpn: interpolation must be one of"),
    ("fpn", dict(encoder_kwargs={"output_stride": 16}), r"fpn: needs encoder maps that halve"),
    ("pspnet", dict(encoder_depth=2), r"pspnet: encoder_depth must be one of \(3, 4, 5\), got 2"),
    ("pan", dict(output_stride=8), r"pan: output_stride must be one of \(16, 32\), got 8"),
    ("pan", dict(interpolation="area"), r"pan: interpolation must be one of"),
    ("pan", dict(encoder_kwargs={"output_stride": 8}), r"pan: set output_stride on the model"),
    ("deeplabv3", dict(output_stride=32), r"deeplabv3: output_stride must be 16 or 8, got 32"),
    ("deeplabv3", dict(atrous_rates=(6, 12)), r"deeplabv3: atrous_rates needs 3 rates"),
    ("deeplabv3", dict(encoder_kwargs={"output_stride": 16}),
     r"deeplabv3: set output_stride on the model itself"),
    ("upernet", dict(norm="layer"), r"norm must be one of"),
    ("upernet", dict(num_classes=0), r"upernet: num_classes must be >= 1"),
])
def test_bad_options_raise(name, options, match):
  options = {"num_classes": 2, **options}
  with pytest.raises(ValueError, match=match):
    _variables(_model(name, **options))


def test_pan_needs_a_4x4_deepest_map():
  with pytest.raises(ValueError, match=r"pan: .*at least 4x4, got 2x2 \(input side >= 64 at "
                                       r"output_stride 16\)"):
    _variables(_model("pan"), 32)


def test_unknown_option_is_named():
  with pytest.raises(ValueError, match=r"pspnet: unknown keyword.*'psp_out_channel'.*"
                                       r"psp_out_channels"):
    create_model("pspnet", num_classes=2, psp_out_channel=8)


# ------------------------------------------------------------------------------------------------
# Adaptive average pooling.
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,size", [((6, 6), 3), ((5, 7), 3), ((2, 2), 3), ((3, 13), 6),
                                        ((4, 4), 1)])
def test_adaptive_avg_pool_bins(shape, size):
  """PyTorch's bins: start floor(i * n / size), end ceil((i + 1) * n / size)."""
  x = np.asarray(jax.random.normal(jax.random.key(0), (2, *shape, 3)))
  bins = [[(i * n // size, -(-(i + 1) * n // size)) for i in range(size)] for n in shape]
  expected = np.stack([np.stack([x[:, r0:r1, c0:c1].mean(axis=(1, 2)) for c0, c1 in bins[1]], 1)
                       for r0, r1 in bins[0]], 1)
  np.testing.assert_allclose(layers.adaptive_avg_pool(jnp.asarray(x), size), expected, rtol=1e-6,
                             atol=1e-6)


# ------------------------------------------------------------------------------------------------
# smp naming.
# ------------------------------------------------------------------------------------------------
# A few of smp's keys per model (its module paths), beside the encoder's and the heads'.
SMP_KEYS = {
    "fpn": ["decoder.p5.weight", "decoder.p3.skip_conv.bias",
            "decoder.seg_blocks.0.block.2.block.1.weight",
            "decoder.seg_blocks.3.block.0.block.0.weight"],
    "pspnet": ["decoder.psp.blocks.0.pool.1.0.bias", "decoder.psp.blocks.3.pool.1.1.running_var",
               "decoder.conv.0.weight", "decoder.conv.1.num_batches_tracked"],
    "pan": ["decoder.fpa.branch1.1.conv.bias", "decoder.fpa.down3.2.bn.running_mean",
            "decoder.fpa.conv1.conv.weight", "decoder.gau3.conv1.1.bn.weight",
            "decoder.gau1.conv2.conv.weight"],
    "upernet": ["decoder.feature_norms.0.weight", "decoder.psp.blocks.2.1.0.weight",
                "decoder.psp.out_conv.1.running_mean",
                "decoder.fpn_lateral_blocks.2.conv_norm_relu.0.weight",
                "decoder.fpn_conv_blocks.0.1.bias", "decoder.fusion_block.0.weight"],
    "deeplabv3": ["decoder.aspp.convs.0.0.weight", "decoder.aspp.convs.3.1.running_var",
                  "decoder.aspp.convs.4.1.weight", "decoder.aspp.project.0.weight",
                  "decoder.conv.weight", "decoder.bn.bias"],
}


@pytest.mark.parametrize("name", NAMES)
def test_smp_names_round_trip(name):
  model = _model(name, aux_classes=3)
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(a.dtype), _variables(model))
  exported = convert.to_state_dict(variables, model)
  assert set(SMP_KEYS[name]) <= set(exported)
  assert {"encoder.layer4.1.bn2.weight", "segmentation_head.0.weight",
          "classification_head.3.weight"} <= set(exported)
  assert not [k for k in exported if not k.startswith(("encoder.", "decoder.", "segmentation_head.",
                                                        "classification_head."))]
  restored, report = convert.from_state_dict(exported, model)
  assert not report.dropped
  jax.tree.map(np.testing.assert_array_equal, restored, variables)
