"""DenseNet and VGG against timm (classifiers) and smp (encoders); protocol: torch_reference.py.

densenet169/201 and vgg19_bn share their code with densenet121 and vgg16_bn, so only their
parameter counts are compared (running them would cost minutes of CPU for no new code path).
Inputs are 64 px (the tiny-model tests probe other sizes), where VGG's last map is 2x2 and
timm's ``pre_logits`` pools it up to 7x7.
flaxderm runs jitted: op by op, each of DenseNet's many distinct shapes compiles (5x slower).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from flaxderm.models import convert, create_model  # noqa: E402
from torch_reference import (TOLERANCE, apply_jitted, calibration, check_export,  # noqa: E402
                             images, nchw, randomize, relative_error, state_dict)

pytestmark = [pytest.mark.torch, pytest.mark.usefixtures("torch_seed")]

MODELS = ["densenet121", "densenet169", "densenet201", "vgg16", "vgg16_bn", "vgg19_bn"]


def _count(tree) -> int:
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


@pytest.mark.slow
@pytest.mark.parametrize("num_classes", [1000, 10, 0])
@pytest.mark.parametrize("name", MODELS)
def test_parameter_count_equals_timm(name, num_classes):
  """Trainable parameters, flaxderm (traced at 224 px) against timm's model of the same name
  (built on the meta device: shapes only, no memory, no init)."""
  with torch.device("meta"):
    reference = timm.create_model(name, pretrained=False, num_classes=num_classes)
  expected = sum(p.numel() for p in reference.parameters() if p.requires_grad)
  model = create_model(name, num_classes=num_classes)
  variables = jax.eval_shape(functools.partial(model.init, jax.random.key(0)),
                             jnp.zeros((1, 224, 224, 3)))
  assert _count(variables["params"]) == expected


# vgg16_bn's pre_logits is narrowed (timm's mlp_ratio): vgg16 already checks the full 7x7 fc1,
# whose 103M weights cost about 2 GB of host memory per copy in this test.
CLASSIFIERS = [("densenet121", {}), ("vgg16", {}), ("vgg16_bn", {"mlp_ratio": 1 / 64})]


@pytest.mark.slow
@pytest.mark.parametrize("name,options", CLASSIFIERS, ids=[c[0] for c in CLASSIFIERS])
def test_classifier_matches_timm(name, options):
  x = images(64)
  reference = randomize(timm.create_model(name, num_classes=10, **options), calibration(64))
  model = create_model(name, num_classes=10, **options)
  variables, report = convert.from_state_dict(state_dict(reference), model)
  assert not report.adapted and not report.dropped
  with torch.no_grad():
    expected = reference(nchw(x)).numpy()
  assert relative_error(apply_jitted(model, variables, x), expected) <= TOLERANCE
  check_export(variables, model, reference)


# Sizes a classifier takes that are not multiples of 32 (every pool floors, as torch's), on a
# tiny DenseNet (same code path as the full ones).
@pytest.mark.parametrize("height,width", [(50, 70), (64, 96)])
def test_tiny_densenet_matches_timm_at_any_size(height, width):
  from timm.models.densenet import DenseNet
  reference = randomize(DenseNet(growth_rate=8, block_config=(1, 2, 1, 1), bn_size=2,
                                 num_classes=5), calibration(64))
  model = create_model("densenet121", num_classes=5, growth_rate=8, depths=(1, 2, 1, 1), bn_size=2)
  variables, _ = convert.from_state_dict(state_dict(reference), model)
  x = np.random.default_rng(0).normal(size=(2, height, width, 3)).astype(np.float32)
  with torch.no_grad():
    expected = reference(nchw(x)).numpy()
  assert relative_error(apply_jitted(model, variables, x), expected) <= TOLERANCE


# Odd and non-square inputs around timm's 7x7 pooling rule, on a tiny VGG (same code path): a
# 1x2 last map (pooled to 7x7), 2x8 (pooled to 7x8, along the short side only), 8x8 (no pooling;
# fc1 leaves 2x2 for the global average).
@pytest.mark.parametrize("height,width", [(50, 70), (64, 256), (256, 256)])
def test_vgg_pre_logits_pooling_matches_timm(height, width):
  from timm.models.vgg import VGG
  stages = ((8,), (8, 8), (16,), (16,), (16,))
  reference = VGG([w for stage in stages for w in (*stage, "M")], num_classes=5, mlp_ratio=1 / 256,
                  norm_layer=torch.nn.BatchNorm2d)
  reference = randomize(reference, calibration(64))
  model = create_model("vgg16_bn", num_classes=5, stages=stages, mlp_ratio=1 / 256)
  variables, _ = convert.from_state_dict(state_dict(reference), model)
  x = np.random.default_rng(0).normal(size=(2, height, width, 3)).astype(np.float32)
  with torch.no_grad():
    expected = reference(nchw(x)).numpy()
  assert relative_error(apply_jitted(model, variables, x), expected) <= TOLERANCE


# VGG's pre_logits is not part of the encoder: narrowed, it costs no memory.
ENCODER_OPTIONS = {"vgg16_bn": {"mlp_ratio": 1 / 256}}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["densenet121", "vgg16_bn"])
def test_encoder_matches_smp(name):
  """The five maps of ``features_only=True`` are smp's encoder maps at strides 2..32 (smp's VGG
  also returns a stride-1 map first, outside flaxderm's contract): channels, shapes and values,
  with the timm classifier's weights loaded into both (smp's encoders use the same names)."""
  smp = pytest.importorskip("segmentation_models_pytorch")
  options = ENCODER_OPTIONS.get(name, {})
  reference = randomize(timm.create_model(name, num_classes=0, **options), calibration(64))
  encoder = smp.encoders.get_encoder(name, weights=None)
  trunk = {k: v for k, v in reference.state_dict().items() if k.startswith("features.")}
  encoder.load_state_dict(trunk)
  encoder.eval()
  model = create_model(name, num_classes=0, **options)
  assert tuple(model.feature_channels) == tuple(encoder.out_channels[1:])
  variables, _ = convert.from_state_dict(state_dict(reference), model)
  x = images(64)
  with torch.no_grad():
    expected = [f.permute(0, 2, 3, 1).numpy() for f in encoder(nchw(x))[1:]]
  ours = apply_jitted(model, variables, x, features_only=True)
  for stride, o, e in zip((2, 4, 8, 16, 32), ours, expected, strict=True):
    assert o.shape == e.shape == (2, 64 // stride, 64 // stride, o.shape[-1])
    assert relative_error(o, e) <= TOLERANCE, stride


def test_torchvision_densenet_names_are_timms():
  """torchvision's DenseNet checkpoints (smp's encoder weights too) have timm's keys, so the
  family's name rules cover them."""
  torchvision = pytest.importorskip("torchvision")
  with torch.device("meta"):
    tv = torchvision.models.densenet121(num_classes=10)
    tm = timm.create_model("densenet121", num_classes=10)
  assert list(tv.state_dict()) == list(tm.state_dict())


@pytest.mark.parametrize("name", ["densenet121", "vgg16"])
@pytest.mark.parametrize("option,value", [("output_stride", 16), ("output_stride", 8),
                                          ("drop_path_rate", 0.1), ("zero_init_last", True)])
def test_unsupported_options_are_refused(name, option, value):
  model = create_model(name, num_classes=0, **{option: value})
  with pytest.raises(ValueError, match=rf"{name}: {option}"):
    jax.eval_shape(functools.partial(model.init, jax.random.key(0)), jnp.zeros((1, 64, 64, 3)))



@pytest.mark.parametrize("name,option,value", [("densenet121", "depths", (6, 12, 24)),
                                               ("vgg16", "stages", ((64,), (128,), (256,)))])
def test_stage_count_is_checked(name, option, value):
  """The encoder contract needs one stage per stride level."""
  model = create_model(name, num_classes=0, **{option: value})
  with pytest.raises(ValueError, match=rf"{name}: {option} must list"):
    jax.eval_shape(functools.partial(model.init, jax.random.key(0)), jnp.zeros((1, 64, 64, 3)))



@pytest.mark.slow
def test_vgg_classifier_checkpoint_initialises_an_encoder():
  """A timm VGG classifier's checkpoint fills a U-Net's encoder: ``pre_logits`` (not part of the
  encoder) and the head are dropped, the trunk is copied."""
  from timm.models.vgg import VGG
  stages = ((8,), (8, 8), (16,), (16,), (16,))
  reference = VGG([w for stage in stages for w in (*stage, "M")], num_classes=5, mlp_ratio=1 / 256,
                  norm_layer=torch.nn.BatchNorm2d)
  model = create_model("unet", num_classes=2, encoder_name="vgg16_bn",
                       encoder_kwargs={"stages": stages}, decoder_channels=(16, 8, 8, 8, 8))
  variables, report = convert.from_state_dict(state_dict(reference), model, rng=jax.random.key(0))
  assert {k.rsplit(".", 1)[0] for k in report.dropped} == {"pre_logits.fc1", "pre_logits.fc2",
                                                            "head.fc"}
  np.testing.assert_array_equal(variables["params"]["encoder"]["features_4"]["kernel"],
                                state_dict(reference)["features.4.weight"].transpose(2, 3, 1, 0))


UNETS = ["densenet121", "vgg16_bn"]


@pytest.mark.slow
@pytest.mark.parametrize("encoder", UNETS)
def test_unet_matches_smp(encoder):
  """smp's ``Unet`` with these encoders and flaxderm's ``unet``: weights convert both ways and the
  masks agree. smp adds a centre block (two conv-BN-ReLU on the deepest map) to the U-Net of a
  ``vgg*`` encoder, which flaxderm's ``unet`` does not have: the reference's is removed."""
  smp = pytest.importorskip("segmentation_models_pytorch")
  reference = smp.Unet(encoder, encoder_weights=None, classes=2)
  reference.decoder.center = torch.nn.Identity()
  reference = randomize(reference, calibration(64))
  model = create_model("unet", num_classes=2, encoder_name=encoder)
  variables, report = convert.from_state_dict(state_dict(reference), model)
  x = images(64)
  with torch.no_grad():
    expected = reference(nchw(x)).numpy()
  ours = np.transpose(apply_jitted(model, variables, x), (0, 3, 1, 2))
  assert relative_error(ours, expected) <= TOLERANCE
  check_export(variables, model, reference, skip=report.dropped)
