"""Explanations: Grad-CAM / Grad-CAM++ against pytorch-grad-cam, integrated gradients'
completeness, saliency on a linear model, default layers of every family, the explain command."""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from flaxderm import attribution
from flaxderm.tools import explain
from flaxderm.tools import run as run_lib
from flaxderm.models import convert, create_model, list_models, model_entry
from rng import rbg_key
from tiny_runs import write_image

from flaxderm import cli  # pylint: disable=g-import-not-at-top,wrong-import-position


def _logits_fn(model, variables):
  return lambda z: model.apply(variables, z, train=False)


# ------------------------------------------------------------------------------------------------
# Against the reference implementation.


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.usefixtures("torch_seed")
@pytest.mark.parametrize("method", attribution.CAM_METHODS)
def test_cam_matches_pytorch_grad_cam_on_timm_resnet18(method):
  timm = pytest.importorskip("timm")
  cam_lib = pytest.importorskip("pytorch_grad_cam")
  # torch_reference needs torch: imported here so the other tests run without it.
  from torch_reference import (  # pylint: disable=g-import-not-at-top
      TOLERANCE, calibration, images, nchw, randomize, state_dict)

  size, classes = 128, [1, 3]  # layer4 is 4x4 at 128 px: a map with some structure
  reference = randomize(timm.create_model("resnet18", num_classes=5), calibration(size))
  model = create_model("resnet18", num_classes=5)
  variables, _ = convert.from_state_dict(state_dict(reference), model)
  x = images(size, batch=2)
  reference_cam = {"gradcam": cam_lib.GradCAM, "gradcampp": cam_lib.GradCAMPlusPlus}[method]
  targets = [cam_lib.utils.model_targets.ClassifierOutputTarget(c) for c in classes]
  with reference_cam(model=reference, target_layers=[reference.layer4]) as cam:
    expected = cam(input_tensor=nchw(x), targets=targets)

  layers = attribution.cam_layers(model, variables, jnp.asarray(x))
  assert attribution.default_layer(model, "resnet18", layers) == "layer4_1"  # timm's layer4 output
  ours = attribution.heat_maps(_logits_fn(model, variables), jnp.asarray(x),
                           attribution.class_target(jnp.asarray(classes)), method,
                           layer=layers["layer4_1"])
  assert ours.shape == expected.shape == (2, size, size)
  assert expected.std() > 0.1  # a non-trivial map
  assert np.abs(ours - expected).max() <= TOLERANCE


# ------------------------------------------------------------------------------------------------
# Gradient attributions.


@pytest.mark.slow
def test_integrated_gradients_are_complete():
  model = create_model("resnet18", num_classes=3, depths=(1, 1, 1, 1))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
  variables = jax.jit(model.init)(rbg_key(0), x)
  logits_fn, target = _logits_fn(model, variables), attribution.class_target(jnp.asarray([0, 2]))
  attributions = jax.jit(lambda z: attribution.integrated_gradients(logits_fn, z, target))(x)
  assert attributions.shape == x.shape  # 64 steps
  gap = jax.jit(lambda z: target(logits_fn(z)) - target(logits_fn(jnp.zeros_like(z))))(x)
  assert np.all(np.abs(gap) > 1e-3)
  np.testing.assert_allclose(attributions.sum(axis=(1, 2, 3)), gap, rtol=1e-2)


def test_saliency_of_a_linear_model_is_its_largest_channel_weight():
  weights = jnp.asarray(np.random.default_rng(0).normal(size=(6, 5, 3)), jnp.float32)
  logits_fn = lambda z: jnp.stack([jnp.sum(z * weights, axis=(1, 2, 3)), jnp.sum(z, (1, 2, 3))], -1)
  x = jnp.ones((2, 6, 5, 3))
  saliency = attribution.saliency(logits_fn, x, attribution.class_target(jnp.asarray([0, 0])))
  np.testing.assert_allclose(saliency, np.broadcast_to(np.abs(weights).max(-1), (2, 6, 5)),
                             rtol=1e-6)


def test_targets_of_binary_logits_and_of_segmentation_masks():
  one_logit = jnp.asarray([[2.0], [-1.0]])
  np.testing.assert_allclose(attribution.class_target(jnp.asarray([1, 0]))(one_logit), [2.0, 1.0])
  logits = jnp.asarray([[[1.0, -2.0], [3.0, -4.0]], [[-1.0, -1.0], [-2.0, -3.0]]])[..., None]
  # Image 0: the lesion logits inside its predicted lesion (1 + 3); image 1 predicts none: all.
  np.testing.assert_allclose(attribution.lesion_target(logits), [4.0, -7.0])
  two_channel = jnp.concatenate([jnp.zeros_like(logits), logits], axis=-1)
  np.testing.assert_allclose(attribution.lesion_target(two_channel), [4.0, -7.0])


# ------------------------------------------------------------------------------------------------
# Every family.


def _test_variant(family: str) -> tuple[str, dict]:
  """The variant of ``family`` that the shared model tests run, and its narrowing options
  (``test_options`` at registration): the family's layers, a fraction of the compile time."""
  return next((n, dict(model_entry(n).test_options))
              for n in list_models(task="classification", family=family)
              if model_entry(n).test_options is not None)


# Every family's classifier takes 96 px (Inception and Xception's unpadded stems need > 64).
SIDE = 96
FAMILIES = sorted({model_entry(n).family for n in list_models(task="classification")})


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_default_layer_of_every_classifier_family_reaches_the_target(family):
  (name, options), side = _test_variant(family), SIDE
  model = create_model(name, num_classes=3, **options)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, side, side, 3)), jnp.float32)
  variables = jax.jit(model.init)(rbg_key(0), x)
  layers = attribution.cam_layers(model, variables, x)
  layer = layers[attribution.default_layer(model, name, layers)]
  if family == "vit":
    assert layer.name == f"blocks_{model.depth - 1}/norm1" and layer.prefix == 1
    assert layer.grid == (6, 6)
  if family == "swin":
    assert layer.name == "layers_3" and layer.grid == (3, 3)
  activations, grads = jax.jit(attribution.activation_and_gradient, static_argnums=(0, 2, 3))(
      _logits_fn(model, variables), x, layer, attribution.class_target(jnp.asarray([1])))
  assert activations.shape == grads.shape == (1, *layer.grid, activations.shape[-1])
  assert float(jnp.abs(grads).max()) > 0, (name, layer.name)  # the layer reaches the logit
  for cam in (attribution.grad_cam, attribution.grad_cam_plusplus):
    # A random network's CAM may be negative everywhere, so all zero after the ReLU.
    heat = attribution.scaled_map(np.asarray(cam(activations, grads)), "gradcam", (side, side))
    assert heat.shape == (1, side, side) and np.isfinite(heat).all(), (name, layer.name)
    assert 0 <= heat.min() and heat.max() <= 1


@pytest.mark.slow
def test_segmentation_models_default_to_their_encoder():
  model = create_model("unet", num_classes=1, encoder_name="resnet18",
                       encoder_kwargs={"depths": (1, 1, 1, 1)}, decoder_channels=(8, 8, 8, 8, 8))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 64, 64, 3)), jnp.float32)
  variables = jax.jit(model.init)(rbg_key(0), x)
  layers = attribution.cam_layers(model, variables, x)
  assert attribution.default_layer(model, "unet", layers) == "encoder/layer4_0"
  heat = attribution.heat_maps(_logits_fn(model, variables), x, attribution.lesion_target, "gradcam",
                           layer=layers["decoder_blocks_2"])
  assert heat.shape == (1, 64, 64) and heat.max() == pytest.approx(1.0, abs=1e-3)


# ------------------------------------------------------------------------------------------------
# Trained runs and the command.






def _pixels(path: Path) -> np.ndarray:
  with Image.open(path) as im:
    assert im.format == "PNG" and im.mode == "RGB"
    return np.asarray(im)


@pytest.mark.slow
def test_explain_command_writes_overlays_at_the_original_size(classification_run, tmp_path,
                                                              capsys):
  write_image(tmp_path / "in" / "a.jpg", 45, 70)
  write_image(tmp_path / "in" / "b.png", 64, 30, seed=1)
  for method in attribution.METHODS:
    out = tmp_path / method
    argv = ["explain", "--workdir", str(classification_run), "--out", str(out),
            str(tmp_path / "in"), "--method", method, "--target", "melanoma", "--steps", "8"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert _pixels(out / f"a_{method}.png").shape == (45, 70, 3)
    assert _pixels(out / f"b_{method}.png").shape == (64, 30, 3)
  assert "layer4_0" in capsys.readouterr().out
  assert cli.main(argv) == 1 and "--overwrite" in capsys.readouterr().err


@pytest.mark.slow
def test_explainer_targets_the_predicted_class_and_averages_folds(classification_run, tmp_path):
  run = run_lib.load_run(classification_run, tta="none")
  image = np.random.default_rng(0).integers(0, 256, (50, 60, 3), dtype=np.uint8)
  maps, classes = explain.Explainer(run).explain([image])
  assert classes == [int(np.argmax(run.probabilities([image])[0]))]
  assert maps[0].shape == (50, 60) and 0 <= maps[0].min() and maps[0].max() <= 1
  by_index, _ = explain.Explainer(run).explain([image], target=classes[0])
  np.testing.assert_array_equal(by_index[0], maps[0])

  cv = tmp_path / "cv"
  cv.mkdir()
  for fold in ("fold_0", "fold_1"):
    (cv / fold).symlink_to(classification_run)
  ensemble = run_lib.load_run(cv, tta="none")
  folds, _ = explain.Explainer(ensemble).explain([image])
  np.testing.assert_allclose(folds[0], attribution.scale_maps(maps[0][None] * 2)[0], atol=1e-6)


def test_segmentation_explanations(segmentation_run, tmp_path):
  write_image(tmp_path / "in" / "c.jpg", 40, 52)
  summary = explain.explain_files(segmentation_run, [str(tmp_path / "in")], tmp_path / "out",
                                  method="gradcampp")
  assert summary["layer"] == "encoder_blocks_2"  # the original U-Net's bottleneck (depth 2)
  assert summary["written"][0]["target"] == "lesion"
  assert _pixels(tmp_path / "out" / "c_gradcampp.png").shape == (40, 52, 3)
  with pytest.raises(ValueError, match="--target is for classification runs"):
    explain.explain_files(segmentation_run, [str(tmp_path / "in")], tmp_path / "o2",
                          target="melanoma")


def test_explain_errors(classification_run, tmp_path, capsys):
  write_image(tmp_path / "in" / "a.jpg", 30, 30)
  base = ["explain", "--workdir", str(classification_run), "--out", str(tmp_path / "out"),
          str(tmp_path / "in")]
  assert cli.main(base + ["--layer", "layer4"]) == 1
  err = capsys.readouterr().err
  assert "no such layer" in err and "layer4_0" in err and "layer1_0/conv1" in err
  assert cli.main(base + ["--target", "eczema"]) == 1
  assert "classes: common_nevus" in capsys.readouterr().err
  assert cli.main(base + ["--method", "saliency", "--layer", "layer4_0"]) == 1
  assert "--layer is for gradcam" in capsys.readouterr().err
  with pytest.raises(SystemExit):  # argparse: invalid choice
    cli.main(base + ["--method", "lime"])
  assert "invalid choice: 'lime'" in capsys.readouterr().err
  no_checkpoint = tmp_path / "fresh"
  no_checkpoint.mkdir()
  for name in (run_lib.CONFIG, "run_info.json"):
    (no_checkpoint / name).write_bytes((classification_run / name).read_bytes())
  assert cli.main(["explain", "--workdir", str(no_checkpoint), "--out", str(tmp_path / "o"),
                      str(tmp_path / "in")]) == 1
  assert "checkpoint" in capsys.readouterr().err
