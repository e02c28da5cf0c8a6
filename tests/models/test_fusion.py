"""``MetadataFusion``: every fusion head on a few classifier families (logit shapes, gradients
reaching the metadata parameters), MetaBlock's gating, late fusion's sum and the product's
branch losses against their formulas."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxderm import losses
from flaxderm.models import create_model
from flaxderm.models import fusion as fusion_lib
from flaxderm.models.fusion import MetadataFusion
from flaxderm.train import config as config_lib
from flaxderm.train import optim
from flaxderm.train import step as step_lib
from flaxderm.train.state import create_train_state
from rng import rbg_key

FAMILIES = [("resnet18", {"depths": (1, 1, 1, 1)}),
            ("densenet121", {"depths": (1, 2, 2, 1), "growth_rate": 8})]


def _init(model, x, m):
  return jax.jit(model.init, static_argnames="train")({"params": rbg_key(0), "dropout": rbg_key(1)},
                                                       x, m, train=False)


@pytest.mark.slow
@pytest.mark.parametrize("fusion", fusion_lib.FUSIONS)
@pytest.mark.parametrize("name, options", FAMILIES)
def test_fusion_heads_train_their_metadata_parameters(name, options, fusion):
  backbone = create_model(name, num_classes=0, **options)
  model = MetadataFusion(backbone=backbone, num_classes=3, fusion=fusion, hidden=8)
  x = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
  m = jax.random.normal(jax.random.key(3), (2, 5))
  variables = _init(model, x, m)
  assert set(variables["params"]) >= {"backbone", "head"}

  def loss(params):
    out, _ = model.apply({**variables, "params": params}, x, m, train=True,
                         mutable=["batch_stats"], rngs={"dropout": rbg_key(4)})
    out = step_lib.main_output(out)  # the product's prediction in training mode
    return jnp.sum(out ** 2), out

  grads, logits = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
  assert logits.shape == (2, 3)
  metadata_grads = {k: v for k, v in grads.items() if k.startswith(("metadata", "metablock"))}
  assert metadata_grads
  assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(metadata_grads))
  # after a step of the metadata parameters (late fusion's start at zero) the metadata changes
  # the prediction
  stepped = {**variables, "params": {**variables["params"], **jax.tree.map(
      lambda p, g: p - 0.1 * jnp.sign(g),
      {k: variables["params"][k] for k in metadata_grads}, metadata_grads)}}
  infer = jax.jit(lambda metadata: model.apply(stepped, x, metadata, train=False))
  assert not np.allclose(infer(m), infer(m + 1.0))


def _tiny_resnet_fusion(fusion, num_classes, side):
  """(model, images, metadata, variables, backbone) with a one-block-per-stage ResNet-18 and the
  backbone applied alone to the model's backbone variables (``backbone(**kwargs)``)."""
  backbone = create_model("resnet18", num_classes=0, depths=(1, 1, 1, 1))
  model = MetadataFusion(backbone=backbone, num_classes=num_classes, fusion=fusion)
  x = jax.random.normal(jax.random.key(2), (2, side, side, 3))
  m = jax.random.normal(jax.random.key(3), (2, 4))
  variables = _init(model, x, m)
  backbone_variables = {c: variables[c]["backbone"] for c in ("params", "batch_stats")}
  return model, x, m, variables, lambda **kwargs: jax.jit(
      functools.partial(backbone.apply, **kwargs))(backbone_variables, x)


@pytest.mark.slow
def test_metablock_gates_the_coarsest_map():
  model, x, m, variables, backbone = _tiny_resnet_fusion("metablock", 2, 64)
  p = variables["params"]
  maps = backbone(features_only=True)[-1]

  def dense_norm(name):  # running mean 0, variance 1 at init
    y = m @ p[f"{name}_dense"]["kernel"] + p[f"{name}_dense"]["bias"]
    return (y / np.sqrt(1 + 1e-5) * p[f"{name}_norm"]["scale"] + p[f"{name}_norm"]["bias"])

  f, g = dense_norm("metablock_f"), dense_norm("metablock_g")
  gated = jax.nn.sigmoid(jnp.tanh(maps * f[:, None, None]) + g[:, None, None])
  expected = gated.mean((1, 2)) @ p["head"]["kernel"] + p["head"]["bias"]
  np.testing.assert_allclose(jax.jit(model.apply)(variables, x, m), expected, atol=1e-5)


def test_late_fusion_adds_a_linear_metadata_classifier_starting_at_zero():
  model, x, m, variables, backbone = _tiny_resnet_fusion("late", 3, 32)
  p = variables["params"]
  assert not np.any(p["metadata_head"]["kernel"])
  image_logits = backbone() @ p["head"]["kernel"] + p["head"]["bias"]
  infer = jax.jit(model.apply)
  np.testing.assert_allclose(infer(variables, x, m), image_logits, atol=1e-5)
  kernel = jax.random.normal(jax.random.key(4), (4, 3))
  p = {**p, "metadata_head": {"kernel": kernel, "bias": jnp.ones(3)}}
  np.testing.assert_allclose(infer({**variables, "params": p}, x, m),
                             image_logits + m @ kernel + 1.0, atol=1e-5)


@pytest.mark.slow
def test_product_fusion_trains_each_branch_on_its_own_loss():
  """In training the product returns the sum and each branch's logits, and the train step's loss
  is the sum of the branches' losses, so the image branch gets no gradient from the metadata's
  loss; in inference it returns the sum, as late fusion does."""
  model, x, m, variables, backbone = _tiny_resnet_fusion("product", 3, 32)
  p = {**variables["params"], "metadata_head": {"kernel": jax.random.normal(jax.random.key(4),
                                                                          (4, 3)),
                                                "bias": jnp.ones(3)}}
  variables = {**variables, "params": p}
  image_logits = backbone() @ p["head"]["kernel"] + p["head"]["bias"]
  metadata_logits = m @ p["metadata_head"]["kernel"] + 1.0
  np.testing.assert_allclose(jax.jit(model.apply)(variables, x, m), image_logits + metadata_logits,
                             atol=1e-5)
  out, _ = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(
      variables, x, m)
  assert isinstance(out, fusion_lib.BranchLogits)
  np.testing.assert_allclose(out.branches[1], metadata_logits, atol=1e-5)
  np.testing.assert_allclose(out.logits, out.branches[0] + out.branches[1], atol=1e-6)

  batch = {"label": jnp.array([0, 2]), "valid": jnp.ones(2)}
  task = step_lib.Task("classification", 3, ("a", "b", "c"), losses.get_loss("cross_entropy"))
  want = task.loss(out.branches[0], batch) + task.loss(out.branches[1], batch)
  np.testing.assert_allclose(step_lib.training_loss(task, out, batch), want, rtol=1e-6)

  def metadata_loss(params):
    branches = model.apply({**variables, "params": params}, x, m, train=True,
                           mutable=["batch_stats"])[0].branches
    return task.loss(branches[1], batch)

  grads = jax.jit(jax.grad(metadata_loss))(p)
  assert not any(np.any(g) for g in jax.tree.leaves(grads["backbone"]))
  assert not np.any(grads["head"]["kernel"]) and np.any(grads["metadata_head"]["kernel"])

  # the engine's train step minimises that sum
  cfg = config_lib.default_config()
  tx = optim.make_optimizer(cfg.optimizer, p)
  state = create_train_state(variables, tx, seed=0, ema=False)
  train_step = jax.jit(step_lib.make_train_step(model, tx, task, cfg))
  _, metrics = train_step(state, {**batch, "image": x, "metadata": m}, jnp.float32(0.0))
  np.testing.assert_allclose(metrics["loss"], want, rtol=1e-4)  # jitted: fused differently


def test_backbone_with_a_head_and_bad_metadata_are_errors():
  x = jnp.zeros((2, 32, 32, 3))
  with pytest.raises(ValueError, match="num_classes=0"):
    _init(MetadataFusion(backbone=create_model("resnet18", num_classes=4), num_classes=2),
          x, jnp.zeros((2, 3)))
  with pytest.raises(ValueError, match=r"metadata must be \(N, D\) with N = 2"):
    _init(MetadataFusion(backbone=create_model("resnet18", num_classes=0), num_classes=2),
          x, jnp.zeros((3,)))
  with pytest.raises(ValueError, match="'sum' is not one of"):
    _init(MetadataFusion(backbone=create_model("resnet18", num_classes=0), num_classes=2,
                         fusion="sum"), x, jnp.zeros((2, 3)))


def test_the_config_names_the_same_fusions():
  assert config_lib.METADATA_FUSIONS == fusion_lib.FUSIONS
  cfg = config_lib.default_config()
  cfg.model.metadata_fusion = "gate"
  with pytest.raises(ValueError, match="config.model.metadata_fusion: 'gate' is not one of"):
    config_lib.validate_config(cfg)
