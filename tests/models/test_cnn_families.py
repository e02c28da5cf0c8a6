"""CNN classification families (resnet.py, efficientnet.py, mobilenet.py): exact parameter counts,
output_stride/dilation, the encoder maps, GroupNorm, stochastic depth, bad-input errors, and
(with torch installed) numerical parity with torchvision/timm after a mechanical weight copy.

Full-size models are only traced (``jax.eval_shape``); models that run use tiny stages."""
from __future__ import annotations

import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxderm.models import create_model, list_models, model_entry
from flaxderm.models.efficientnet import Stage
from rng import rbg_key

# torchvision / timm at 224 px, 1000 classes (trainable parameters; batch statistics excluded).
PARAM_COUNTS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "efficientnet_b0": 5_288_548,
    "efficientnet_lite0": 4_652_008,
    "efficientnet_lite1": 5_416_680,
    "efficientnet_lite2": 6_092_072,
    "mobilenet_v2": 3_504_872,
}
FEATURE_CHANNELS = {
    "resnet18": (64, 64, 128, 256, 512),
    "resnet50": (64, 256, 512, 1024, 2048),
    "efficientnet_b0": (16, 24, 40, 112, 320),
    "efficientnet_lite0": (16, 24, 40, 112, 320),
    "efficientnet_lite2": (16, 24, 48, 120, 352),
    "mobilenet_v2": (16, 24, 32, 96, 1280),
}
HEADS = {"resnet": "fc", "efficientnet": "classifier", "mobilenet": "classifier"}
# Stages of the models that really run: the depthwise-separable block, inverted residuals with and
# without a shortcut, 3x3 and 5x5 depthwise kernels, every stride level, a few channels.
TINY_STAGES = (Stage(1, 3, 1, 1, 8), Stage(1, 3, 2, 4, 8), Stage(2, 5, 2, 2, 16),
               Stage(1, 3, 2, 2, 16), Stage(1, 3, 2, 2, 24))


def _count(tree) -> int:
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def _shapes(model, x, **kwargs):
  """Variables and outputs as shapes only: full-size models are traced, never run."""
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, **kwargs), x)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, **kwargs), variables, x)
  return variables, out


def test_families_registered():
  assert set(PARAM_COUNTS) <= set(list_models(task="classification"))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_parameter_count_matches_reference(name):
  model = create_model(name, num_classes=1000)
  variables, logits = _shapes(model, jnp.zeros((1, 224, 224, 3)))
  assert logits.shape == (1, 1000)
  assert _count(variables["params"]) == PARAM_COUNTS[name]


@pytest.mark.slow
@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("name", sorted(FEATURE_CHANNELS))
def test_encoder_maps_and_output_stride(name, output_stride):
  model = create_model(name, num_classes=0, output_stride=output_stride)
  assert model.feature_channels == FEATURE_CHANNELS[name]
  x = jnp.zeros((2, 64, 64, 3))
  variables, feats = _shapes(model, x, features_only=True)
  expected = [(2, 64 // min(s, output_stride), 64 // min(s, output_stride), c)
              for s, c in zip((2, 4, 8, 16, 32), FEATURE_CHANNELS[name])]
  assert [f.shape for f in feats] == expected
  # No classifier on the encoder path; num_classes=0 pools the last features.
  assert HEADS[model_entry(name).family] not in variables["params"]
  _, pooled = _shapes(model, x)
  assert pooled.shape[0] == 2 and pooled.ndim == 2


def test_output_stride_dilates_like_torchvision():
  """output_stride changes no parameter shape (pretrained weights still load); resnet50 at
  output_stride 8 dilates layer3 by 2 and layer4 by 4, the first block of each keeping the
  previous dilation on its strided conv (torchvision's replace_stride_with_dilation)."""
  x = jnp.zeros((1, 64, 64, 3))
  base, _ = _shapes(create_model("resnet50", num_classes=10), x)
  dilated_model = create_model("resnet50", num_classes=10, output_stride=8)
  dilated, _ = _shapes(dilated_model, x)
  assert jax.tree.map(lambda a: a.shape, base) == jax.tree.map(lambda a: a.shape, dilated)
  # Dilation is not a parameter: read it from the modules the forward pass builds.
  convs = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, flax.linen.Conv):
      convs["/".join(context.module.scope.path)] = context.module.kernel_dilation
    return next_fun(*args, **kwargs)

  with flax.linen.intercept_methods(record):
    jax.eval_shape(lambda v, x: dilated_model.apply(v, x), dilated, x)
  assert convs["layer2_0/conv2"] == 1
  assert convs["layer3_0/conv2"] == 1 and convs["layer3_1/conv2"] == 2
  assert convs["layer4_0/conv2"] == 2 and convs["layer4_1/conv2"] == 4


def _tiny(name, **options):
  if name.startswith("resnet"):
    return create_model(name, depths=(1, 1, 1, 1), **options)
  return create_model(name, stages=TINY_STAGES, stem_channels=8, head_channels=32, **options)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "efficientnet_b0"])
def test_group_norm_runs_without_batch_stats(name):
  model = _tiny(name, num_classes=3, norm="group")
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  variables = jax.jit(model.init)(rbg_key(1), x)
  assert "batch_stats" not in variables
  assert any("gn" in path for path in flax.traverse_util.flatten_dict(variables["params"]))
  out = jax.jit(lambda v, x: model.apply(v, x, train=True, rngs={"dropout": rbg_key(2)}))(
      variables, x)
  assert out.shape == (2, 3) and np.isfinite(out).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "efficientnet_b0"])
def test_zero_init_last(name):
  """Each residual block's last norm starts at gamma 0 (the block starts as its shortcut); the
  other norms, the shortcut projection's included, start at 1."""
  model = _tiny(name, num_classes=2, zero_init_last=True)
  params = jax.jit(model.init)(rbg_key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  blocks = [v for k, v in params.items() if re.fullmatch(r"(layer|blocks_)\d+_\d+", k)]
  assert len(blocks) == (4 if name.startswith("resnet") else sum(s.repeats for s in TINY_STAGES))
  for block in blocks:
    norms = sorted(k for k in block if re.fullmatch(r"bn\d", k))
    assert float(jnp.abs(block[norms[-1]]["bn"]["scale"]).max()) == 0
    assert all(float(block[k]["bn"]["scale"].min()) == 1 for k in norms[:-1])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0"])
def test_drop_path_is_stochastic_only_in_training(name):
  model = _tiny(name, num_classes=0, drop_path_rate=0.5)
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  variables = jax.jit(model.init)(rbg_key(1), x)

  @jax.jit
  def train(seed):
    return model.apply(variables, x, train=True, rngs={"dropout": rbg_key(seed)},
                       mutable=["batch_stats"])[0]

  assert not np.allclose(train(0), train(1))
  np.testing.assert_array_equal(train(0), train(0))
  evaluate = jax.jit(model.apply)
  np.testing.assert_array_equal(evaluate(variables, x), evaluate(variables, x))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_bad_input_raises_with_model_name(name):
  model = create_model(name, num_classes=2)
  init = lambda x: model.init(jax.random.key(0), x)
  with pytest.raises(ValueError, match=rf"{name}: expected 3 input channels.*got 4"):
    jax.eval_shape(init, jnp.zeros((1, 64, 64, 4)))
  assert jax.eval_shape(lambda x: model.apply(init(x), x), jnp.zeros((1, 48, 48, 3))).shape == (1, 2)
  with pytest.raises(ValueError, match=rf"{name}: input 48x48 is not divisible by the encoder "
                                       "stride 32"):
    jax.eval_shape(lambda x: model.init(jax.random.key(0), x, features_only=True),
                   jnp.zeros((1, 48, 48, 3)))
  with pytest.raises(ValueError, match=rf"{name}: output_stride must be one of"):
    jax.eval_shape(lambda x: create_model(name, num_classes=2, output_stride=4).init(
        jax.random.key(0), x), jnp.zeros((1, 64, 64, 3)))
  # At output_stride 16 the remaining downsampling is 16: 48 px is fine.
  _, out = _shapes(create_model(name, num_classes=2, output_stride=16), jnp.zeros((1, 48, 48, 3)))
  assert out.shape == (1, 2)


def test_in_channels_option():
  model = _tiny("efficientnet_b0", num_classes=2, in_channels=1)
  _, out = _shapes(model, jnp.zeros((1, 32, 32, 1)))
  assert out.shape == (1, 2)


def test_efficientnet_stages_read_back_from_a_json_config_build_the_same_model():
  """A run's config.json gives ``model.kwargs.stages`` back as lists of numbers."""
  x = jnp.zeros((1, 32, 32, 3))
  as_lists = [list(stage) for stage in TINY_STAGES]
  variables, out = _shapes(create_model("efficientnet_lite0", num_classes=2, stages=as_lists), x)
  expected, expected_out = _shapes(create_model("efficientnet_lite0", num_classes=2,
                                                stages=TINY_STAGES), x)
  assert jax.tree.map(lambda a: a.shape, variables) == jax.tree.map(lambda a: a.shape, expected)
  assert out.shape == expected_out.shape == (1, 2)


def test_depth_multiplier_scales_every_stages_repeats_up():
  """timm's rule, repeats times the multiplier rounded up: at 0.3, B0's 1-2-2-3-3-4-1 blocks
  become 1-1-1-1-1-2-1, one stage keeping a block with a shortcut."""
  variables, _ = _shapes(create_model("efficientnet_b0", num_classes=2, depth_multiplier=0.3),
                         jnp.zeros((1, 32, 32, 3)))
  blocks = sorted(k for k in variables["params"] if k.startswith("blocks_"))
  assert blocks == ["blocks_0_0", "blocks_1_0", "blocks_2_0", "blocks_3_0", "blocks_4_0",
                    "blocks_5_0", "blocks_5_1", "blocks_6_0"]
  full, _ = _shapes(create_model("efficientnet_b0", num_classes=2), jnp.zeros((1, 32, 32, 3)))
  assert len([k for k in full["params"] if k.startswith("blocks_")]) == 16


# ---------------------------------------------------------------------------------------------
# Parity with the PyTorch reference implementations (same weights, eval mode).
# ---------------------------------------------------------------------------------------------


def _flax_path(torch_module_path: str) -> str:
  """``blocks.1.0.se.conv_reduce`` -> ``blocks_1_0/se/reduce`` (the rule the docstrings state)."""
  path = re.sub(r"\.(\d+)", r"_\1", torch_module_path).replace(".", "/")
  return path.replace("se/conv_reduce", "se/reduce").replace("se/conv_expand", "se/expand")


def _torch_to_flax(state_dict, variables):
  """Copies a timm-named state dict into ``variables`` by name, checking full coverage."""
  params = flax.traverse_util.flatten_dict(variables["params"], sep="/")
  stats = flax.traverse_util.flatten_dict(variables["batch_stats"], sep="/")
  new_params, new_stats = {}, {}
  for key, tensor in state_dict.items():
    module, leaf = key.rsplit(".", 1)
    path, a = _flax_path(module), tensor.detach().numpy()
    if f"{path}/bn/scale" in params:
      target, name = {"weight": (new_params, "scale"), "bias": (new_params, "bias"),
                      "running_mean": (new_stats, "mean"), "running_var": (new_stats, "var")}[leaf]
      target[f"{path}/bn/{name}"] = a
    elif leaf == "weight":
      new_params[f"{path}/kernel"] = a.transpose(2, 3, 1, 0) if a.ndim == 4 else a.T
    else:
      new_params[f"{path}/{leaf}"] = a
  for ours, theirs in ((params, new_params), (stats, new_stats)):
    assert set(ours) == set(theirs), set(ours) ^ set(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours), [
        (k, ours[k].shape, theirs[k].shape) for k in ours if ours[k].shape != theirs[k].shape]
  return {"params": flax.traverse_util.unflatten_dict(new_params, sep="/"),
          "batch_stats": flax.traverse_util.unflatten_dict(new_stats, sep="/")}


def _state_dict(model, rename_like=None):
  """``model``'s tensors (counters dropped); with ``rename_like`` (another torch model), renamed in
  order to that model's names, as a by-order checkpoint conversion does."""
  tensors = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
  if rename_like is None:
    return tensors
  names = [k for k in rename_like.state_dict() if not k.endswith("num_batches_tracked")]
  assert [tuple(v.shape) for v in tensors.values()] == [
      tuple(rename_like.state_dict()[k].shape) for k in names]
  return dict(zip(names, tensors.values()))


def _randomize_norms(torch_model, torch):
  """Non-trivial BatchNorm statistics, so eval-mode parity tests the norm mapping too."""
  gen = torch.Generator().manual_seed(0)
  for m in torch_model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
      m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
      m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
      m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


# (ours, reference, options, timm model whose names the reference's tensors take in order).
# ResNets and MobileNetV2 from torchvision, EfficientNets from timm; timm's output_stride uses the
# same dilation rule as ours.
PARITY = [
    ("resnet18", "torchvision:resnet18", {}, None),
    ("resnet50", "timm:resnet50", {"output_stride": 8}, None),
    ("efficientnet_b0", "timm:efficientnet_b0", {"output_stride": 16}, None),
    ("efficientnet_lite0", "timm:tf_efficientnet_lite0", {}, None),
    ("mobilenet_v2", "torchvision:mobilenet_v2", {}, "mobilenetv2_100"),
]


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.parametrize("name,reference,options,rename_like", PARITY, ids=[p[0] for p in PARITY])
def test_matches_reference_implementation(name, reference, options, rename_like):
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm")
  torchvision = pytest.importorskip("torchvision")
  library, arch = reference.split(":")
  if library == "timm":
    ref = timm.create_model(arch, pretrained=False, num_classes=10, **options)
  else:
    ref = getattr(torchvision.models, arch)(weights=None, num_classes=10)
  _randomize_norms(ref, torch)
  ref.eval()
  # 96 px: odd-sized maps at stride 32 (3x3), where TF "SAME" and symmetric padding differ.
  x = np.random.default_rng(0).normal(size=(2, 96, 96, 3)).astype(np.float32)
  with torch.no_grad():
    expected = ref(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  model = create_model(name, num_classes=10, **options)
  state_dict = _state_dict(ref, rename_like and timm.create_model(rename_like, num_classes=10))
  variables = _torch_to_flax(state_dict, jax.eval_shape(lambda: model.init(jax.random.key(0), x)))
  got = jax.jit(model.apply)(variables, x)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4,
                             atol=1e-4 * np.abs(expected).max())


@pytest.mark.torch
@pytest.mark.parametrize("name,arch,output_stride", [("resnet18", "resnet18", 8),
                                                     ("efficientnet_b0", "efficientnet_b0", 16)])
def test_encoder_maps_match_timm_features_only(name, arch, output_stride):
  """The five maps are timm's ``features_only`` maps (same weights, dilated last stages)."""
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm")
  ref = timm.create_model(arch, features_only=True, output_stride=output_stride)
  _randomize_norms(ref, torch)
  ref.eval()
  x = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    expected = [f.permute(0, 2, 3, 1).numpy() for f in ref(torch.from_numpy(x).permute(0, 3, 1, 2))]
  model = create_model(name, num_classes=0, output_stride=output_stride)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, features_only=True))
  variables = _torch_to_flax(_state_dict(ref), shapes)
  got = jax.jit(lambda v, x: model.apply(v, x, features_only=True))(variables, x)
  for g, e in zip(got, expected, strict=True):
    np.testing.assert_allclose(np.asarray(g), e, rtol=1e-4, atol=1e-4 * np.abs(e).max())
