"""Training engine: schedules, optimisers, config, the train step, checkpoints and the loop.

Everything runs on the real modules (U-Net, losses, metrics, the synthetic_lesions builder) at
16-32 px. Multi-device, multi-process and kill/resume proofs are in test_train_parallel.py and
test_train_resume.py.
"""
from __future__ import annotations

import csv
import json
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from flaxderm.tools import evaluate as evaluate_lib
from flaxderm import losses
from flaxderm.data import pipeline, sources
from flaxderm.models import create_model
from flaxderm.train import checkpoint as checkpoint_lib
from flaxderm.train import config as config_lib
from flaxderm.train import loop, optim, parallel, setup
from flaxderm.train import step as step_lib
from flaxderm.train.state import create_train_state

SEGMENTATION = setup.RunInfo("segmentation", ("background", "lesion"), 1)


pytestmark = pytest.mark.usefixtures("private_data_dir")


def tiny_config(**changes) -> ml_collections.ConfigDict:
  """A 2-level, width-4 U-Net on 32 px synthetic lesions (24 train / 8 validation images)."""
  c = config_lib.default_config()
  c.model.kwargs = {"base_width": 4, "depth": 2}
  c.data.image_size = 32
  c.data.builder_kwargs = {"num_train": 24, "num_validation": 8, "num_test": 4, "image_size": 32}
  c.batch_size = 4
  c.num_epochs = 0
  c.num_steps = 6
  c.eval.every_steps = 3
  c.eval.batch_size = 8
  c.log_every_steps = 2
  c.progress_bar = False
  c.visualize_images = 2
  for key, value in changes.items():
    config_lib.apply_override(c, key, str(value))
  return c


def random_batch(n=4, size=16, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.normal(size=(n, size, size, 3)).astype(np.float32),
          "mask": (rng.uniform(size=(n, size, size)) > 0.6).astype(np.int32),
          "valid": np.ones(n, np.float32)}


def build(cfg):
  model = setup.make_model(cfg, SEGMENTATION)
  task = setup.make_task(cfg, SEGMENTATION)
  variables, _, _ = setup.init_variables(model, cfg)
  tx = optim.make_optimizer(cfg.optimizer, variables["params"])
  state = create_train_state(variables, tx, seed=cfg.seed, ema=cfg.optimizer.ema_decay > 0)
  step = jax.jit(step_lib.make_train_step(model, tx, task, cfg))
  return state, step


# ------------------------------------------------------------------------------------------------
# Schedules and optimisers.


def test_schedules_at_known_points():
  def value(name, p, **kw):
    cfg = config_lib.default_config().schedule
    cfg.update(name=name, **kw)
    return float(optim.schedule_fn(cfg)(jnp.float32(p)))

  assert value("constant", 0.7) == 1.0
  assert value("cosine", 0.0) == pytest.approx(1.0)
  assert value("cosine", 0.5) == pytest.approx(0.5)
  assert value("cosine", 1.0, final_fraction=0.1) == pytest.approx(0.1)
  assert value("warmup_cosine", 0.0, warmup_fraction=0.2) == 0.0
  assert value("warmup_cosine", 0.1, warmup_fraction=0.2) == pytest.approx(0.5)
  assert value("warmup_cosine", 0.2, warmup_fraction=0.2) == pytest.approx(1.0)
  assert value("warmup_cosine", 0.6, warmup_fraction=0.2) == pytest.approx(0.5, abs=1e-6)
  assert value("step", 0.49) == 1.0
  assert value("step", 0.5) == pytest.approx(0.1)
  assert value("step", 0.9) == pytest.approx(0.01)


def test_one_cycle_matches_optax_over_steps():
  cfg = config_lib.default_config().schedule
  cfg.update(name="one_cycle", warmup_fraction=0.25)
  ours = optim.schedule_fn(cfg)
  reference = optax.cosine_onecycle_schedule(100, 1.0, pct_start=0.25, div_factor=25.0,
                                             final_div_factor=1e4)
  for s in (0, 10, 25, 60, 100):
    assert float(ours(jnp.float32(s / 100))) == pytest.approx(float(reference(s)), rel=1e-4)


def _params():
  rng = np.random.default_rng(1)
  return {"dense": {"kernel": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
                    "bias": jnp.asarray(rng.normal(size=(4,)), jnp.float32)},
          "norm": {"scale": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}}


@pytest.mark.parametrize("name,options,reference", [
    ("sgd", dict(momentum=0.9, nesterov=True, weight_decay=0.01),
     lambda lr, mask: optax.chain(optax.add_decayed_weights(0.01, mask),
                                  optax.sgd(lr, momentum=0.9, nesterov=True))),
    ("adam", dict(weight_decay=0.0), lambda lr, mask: optax.adam(lr)),
    ("adamw", dict(weight_decay=0.05),
     lambda lr, mask: optax.adamw(lr, weight_decay=0.05, mask=mask)),
    ("rmsprop", dict(decay=0.9, eps=1e-7), lambda lr, mask: optax.rmsprop(lr, decay=0.9, eps=1e-7)),
])
def test_optimizers_match_optax(name, options, reference):
  cfg = config_lib.default_config().optimizer
  cfg.update(name=name, **options)
  params = _params()
  ours, theirs = optim.make_optimizer(cfg, params), reference(0.01, optim.decay_mask(params))
  p_ours, p_theirs = params, params
  s_ours, s_theirs = ours.init(params), theirs.init(params)
  for i in range(3):
    grads = jax.tree.map(lambda x: jnp.sin(x * (i + 1)), p_ours)
    u, s_ours = ours.update(grads, s_ours, p_ours)
    p_ours = optax.apply_updates(p_ours, optim.scaled_updates(u, jnp.float32(0.01)))
    u, s_theirs = theirs.update(grads, s_theirs, p_theirs)
    p_theirs = optax.apply_updates(p_theirs, u)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               p_ours, p_theirs)


def test_a_negative_encoder_learning_rate_scale_is_refused():
  cfg = config_lib.default_config()
  cfg.optimizer.encoder_lr_scale = -0.1
  with pytest.raises(ValueError, match=r"config.optimizer.encoder_lr_scale must be >= 0"):
    config_lib.validate_config(cfg)


def test_weight_decay_mask_spares_biases_and_norms():
  mask = optim.decay_mask(_params())
  assert mask == {"dense": {"kernel": True, "bias": False}, "norm": {"scale": False}}


# ------------------------------------------------------------------------------------------------
# The train step.


@pytest.mark.slow
def test_gradient_accumulation_equals_one_big_batch():
  # No BatchNorm (its statistics are per batch), a per-image mean loss, plain SGD.
  changes = {"model.kwargs.norm": "none", "loss.name": "dice", "optimizer.name": "sgd",
             "optimizer.momentum": 0.0, "optimizer.lr": 0.5}
  batch = random_batch(4)
  big_state, big_step = build(tiny_config(**changes))
  big_state, _ = big_step(big_state, batch, jnp.float32(0))
  acc_state, acc_step = build(tiny_config(**changes, **{"optimizer.accumulate_steps": 2}))
  for half in (slice(0, 2), slice(2, 4)):
    acc_state, _ = acc_step(acc_state, {k: v[half] for k, v in batch.items()}, jnp.float32(0))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               big_state.params, acc_state.params)


def test_non_finite_loss_leaves_the_state_unchanged():
  state, step = build(tiny_config())
  batch = random_batch(4)
  batch["image"][0, 0, 0, 0] = np.nan
  new, metrics = step(state, batch, jnp.float32(0))
  assert not bool(metrics["finite"]) and int(new.step) == 1
  jax.tree.map(np.testing.assert_array_equal, (new.params, new.batch_stats, new.opt_state),
               (state.params, state.batch_stats, state.opt_state))


@pytest.mark.slow
def test_ema_follows_the_parameters():
  state, step = build(tiny_config(**{"optimizer.ema_decay": 0.9}))
  new, _ = step(state, random_batch(4), jnp.float32(0))
  expected = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, state.params, new.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               new.ema_params, expected)


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_parameters():
  state, step = build(tiny_config(compute_dtype="bfloat16"))
  new, metrics = step(state, random_batch(4), jnp.float32(0))
  assert bool(metrics["finite"]) and metrics["loss"].dtype == jnp.float32
  assert {x.dtype for x in jax.tree.leaves(new.params)} == {jnp.dtype(jnp.float32)}


CLASSIFICATION = setup.RunInfo("classification", ("a", "b", "c"), 3)


def _train_losses(cfg, info, batches, num_steps):
  model = setup.make_model(cfg, info)
  task = setup.make_task(cfg, info)
  variables, _, _ = setup.init_variables(model, cfg)
  tx = optim.make_optimizer(cfg.optimizer, variables["params"])
  state = create_train_state(variables, tx, seed=cfg.seed, ema=False)
  step = jax.jit(step_lib.make_train_step(model, tx, task, cfg))
  losses_seen = []
  for i in range(num_steps):
    state, metrics = step(state, batches[i % len(batches)], jnp.float32(i / num_steps))
    losses_seen.append(float(metrics["loss"]))
  return state, np.array(losses_seen)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["unet", "resnet"])
def test_bfloat16_training_follows_float32(kind):
  """bf16 compute trains like f32: params, BatchNorm statistics and the loss stay float32."""
  rng = np.random.default_rng(0)
  if kind == "unet":
    info, overrides = SEGMENTATION, {}
    batches = [random_batch(4, size=32, seed=i) for i in range(3)]
  else:
    info = CLASSIFICATION
    overrides = {"model.name": "resnet18", "data.task": "classification",
                 "loss.name": "cross_entropy"}
    batches = [{"image": rng.normal(size=(4, 32, 32, 3)).astype(np.float32),
                "label": rng.integers(0, 3, 4).astype(np.int32),
                "valid": np.ones(4, np.float32)} for _ in range(3)]
  results = {}
  for dtype in ("float32", "bfloat16"):
    cfg = tiny_config(compute_dtype=dtype, **{"optimizer.name": "adam", "optimizer.lr": 1e-2},
                      **overrides)
    if kind == "resnet":
      cfg.model.kwargs = {"depths": (1, 1, 1, 1)}
    results[dtype] = _train_losses(cfg, info, batches, num_steps=36)
  (state32, loss32), (state16, loss16) = results["float32"], results["bfloat16"]
  for state in (state32, state16):
    assert {x.dtype for x in jax.tree.leaves((state.params, state.batch_stats,
                                              state.opt_state))} <= {jnp.dtype(jnp.float32),
                                                                     jnp.dtype(jnp.int32)}
  assert loss16.dtype == np.float64 and np.isfinite(loss16).all()
  end32, end16 = loss32[-6:].mean(), loss16[-6:].mean()
  assert end32 < 0.85 * loss32[:3].mean()  # it learns, so the comparison means something
  assert end16 == pytest.approx(end32, rel=0.1, abs=0.02), (loss32, loss16)


def test_learning_rate_follows_progress():
  state, step = build(tiny_config(**{"schedule.name": "cosine"}))
  _, at_start = step(state, random_batch(4), jnp.float32(0.0))
  _, halfway = step(state, random_batch(4), jnp.float32(0.5))
  assert float(at_start["lr"]) == pytest.approx(1e-3)
  assert float(halfway["lr"]) == pytest.approx(5e-4)


# ------------------------------------------------------------------------------------------------
# Config.


def test_overrides_are_typed_and_bad_keys_named():
  c = config_lib.default_config()
  config_lib.apply_override(c, "optimizer.lr", "0.05")
  config_lib.apply_override(c, "optimizer.nesterov", "true")
  config_lib.apply_override(c, "schedule.boundaries", "(0.3, 0.6)")
  config_lib.apply_override(c, "model.kwargs.encoder_name", "resnet18")  # free-form group
  config_lib.apply_override(c, "data.manual_dir", "/some/dir")  # None default: text
  assert (c.optimizer.lr, c.optimizer.nesterov, c.schedule.boundaries) == (0.05, True, (0.3, 0.6))
  assert c.model.kwargs.encoder_name == "resnet18" and c.data.manual_dir == "/some/dir"
  with pytest.raises(ValueError, match=r"'optimizer\.lrate'.*did you mean lr"):
    config_lib.apply_override(c, "optimizer.lrate", "0.1")
  with pytest.raises(ValueError, match="cannot read the value as int"):
    config_lib.apply_override(c, "batch_size", "eight")
  c.eval_data = {"imagesize": 64}
  with pytest.raises(ValueError, match=r"eval_data\.imagesize.*did you mean image_size"):
    config_lib.validate_config(c)


def test_validation_names_bad_values():
  for key, value, message in [("optimizer.name", "adagrad", "optimizer.name"),
                              ("parallel", "fsdp", "parallel"),
                              ("batch_size", 0, "batch_size"),
                              ("data.image_size", -1, "image_size")]:
    c = config_lib.default_config()
    parent, _, leaf = key.rpartition(".")
    (c[parent] if parent else c)[leaf] = value
    with pytest.raises(ValueError, match=message):
      config_lib.validate_config(c)


def test_config_survives_json(tmp_path):
  c = tiny_config(**{"optimizer.name": "adamw", "model.kwargs.decoder_attention": "scse"})
  c.eval_data = {"name": "ph2", "split": "official"}
  config_lib.save_config(c, tmp_path / "config.json")
  loaded = config_lib.load_config(tmp_path / "config.json")
  assert loaded.to_dict() == c.to_dict()


# ------------------------------------------------------------------------------------------------
# The loop, checkpoints and scoring.


@pytest.mark.slow
def test_train_writes_a_complete_run_and_evaluate_rescores_it(tmp_path):
  results = loop.train(tiny_config(), tmp_path)
  assert results["step"] == 6 and 0.0 <= results["validation"]["dice/per_image"] <= 1.0
  for name in ("config.json", "run_info.json", "metrics.jsonl", "results.json",
               "predictions.png"):
    assert (tmp_path / name).is_file(), name
  assert list((tmp_path / "tensorboard").iterdir())
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if r["split"] == "validation"] == [3, 6]
  assert [r["step"] for r in records if r["split"] == "train"] == [2, 3, 4, 6]
  checkpoints = checkpoint_lib.Checkpointer(tmp_path, read_only=True)
  assert checkpoints.latest.all_steps() == [3, 6] and checkpoints.best_step() in (3, 6)

  # The evaluate command scores the same parameters on the same split: the same numbers.
  metrics = evaluate_lib.evaluate_run(tmp_path)
  for key in ("dice/per_image", "jaccard/micro", "pixel_accuracy/micro"):
    assert metrics[key] == pytest.approx(results["validation"][key], abs=1e-6)
  with open(tmp_path / "evaluation" / "cases.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 8 and rows[0]["id"].startswith("synthetic_validation_")
  per_image = np.nanmean([float(r["dice/per_image"]) for r in rows])
  assert per_image == pytest.approx(metrics["dice/per_image"], abs=1e-6)

  # Ablations of the scoring from the same run: another test-time augmentation, and a clear error
  # for an EMA the run never kept.
  flipped = evaluate_lib.evaluate_run(tmp_path, tta="flips")
  saved = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
  assert saved["tta"] == "flips" and saved["metrics"]["dice/per_image"] == pytest.approx(
      flipped["dice/per_image"], abs=1e-6)
  assert flipped["dice/per_image"] != metrics["dice/per_image"]
  with pytest.raises(ValueError, match="--tta must be one of"):
    evaluate_lib.evaluate_run(tmp_path, tta="rot90")
  with pytest.raises(ValueError, match="kept no EMA"):
    evaluate_lib.evaluate_run(tmp_path, use_ema=True)

  # A second run into the same directory must say how to continue instead of overwriting.
  with pytest.raises(ValueError, match="--resume"):
    loop.train(tiny_config(), tmp_path)
  again = loop.train(tiny_config(), tmp_path, resume=True)  # finished: nothing left to do
  assert again["step"] == 6


@pytest.mark.slow
def test_best_checkpoint_is_the_final_params_when_asked(tmp_path):
  results = loop.train(tiny_config(final_params="best", **{"optimizer.lr": 0.05}), tmp_path)
  best = results["best"]
  assert results["params_step"] == best["step"]
  assert results["validation"] == best["metrics"]
  assert best["value"] == max(json.loads(line)["dice/per_image"]
                              for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
                              if '"validation"' in line)


@pytest.mark.slow
def test_budget_stops_training_and_drives_the_schedule(tmp_path):
  cfg = tiny_config(num_steps=0, budget_s=15.0, log_every_steps=1, **{"schedule.name": "cosine",
                                                                   "eval.every_steps": 0})
  results = loop.train(cfg, tmp_path)
  assert results["train_elapsed_s"] >= 15.0
  lrs = [json.loads(line)["lr"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
         if '"train"' in line]
  assert len(lrs) > 3 and lrs[0] == pytest.approx(1e-3, rel=1e-3)
  assert all(a >= b for a, b in zip(lrs, lrs[1:])) and lrs[-1] < 0.5e-3


def test_diverging_loss_stops_with_the_step_and_the_batch_ids(tmp_path):
  cfg = tiny_config(num_steps=20, **{"optimizer.name": "sgd", "optimizer.lr": 1e30,
                                     "checkpoint.every_steps": 1, "eval.every_steps": 0,
                                     "loss.name": "cross_entropy"})
  with pytest.raises(loop.NonFiniteLossError, match=r"non-finite loss .* at step (\d+)") as info:
    loop.train(cfg, tmp_path)
  report = json.loads((tmp_path / "nonfinite_batch.json").read_text())
  assert f"at step {report['step']}" in str(info.value) and len(report["ids"]) == 4
  last_good = checkpoint_lib.Checkpointer(tmp_path, read_only=True).latest_step()
  assert last_good == report["step"] - 1


def test_missing_dataset_says_how_to_prepare_it(tmp_path):
  cfg = tiny_config()
  cfg.data.name = "ph2"
  cfg.data.builder_kwargs = {}
  cfg.data.manual_dir = str(tmp_path / "nowhere")
  with pytest.raises(ValueError, match=r"(?s)dataset 'ph2' is not prepared.*manual_dir"):
    loop.train(cfg, tmp_path / "run")


def test_parallel_rejects_a_batch_the_devices_cannot_split():
  par = parallel.DataParallel("auto")
  par.check_batch_size(4, "batch_size")
  if par.num_devices > 1:
    with pytest.raises(ValueError, match="divisible"):
      par.check_batch_size(par.num_devices + 1, "batch_size")


class _PixelModel(nn.Module):
  """A 3x3 conv to one logit per pixel, or a dense layer over all pixels to 3 classes: both
  see the image's orientation, so each flipped view predicts something else."""
  classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.classes == 1:
      return nn.Conv(1, (3, 3))(x)
    return nn.Dense(self.classes)(x.reshape(x.shape[0], -1))


@pytest.mark.parametrize("classes", [1, 3])
@pytest.mark.parametrize("tta", ["hflip", "flips"])
def test_tta_averages_the_probabilities_of_the_flipped_views(classes, tta):
  model = _PixelModel(classes)
  images = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  variables = model.init(jax.random.key(1), images)
  state = types.SimpleNamespace(variables=lambda use_ema: variables)
  cfg = config_lib.default_config()
  cfg.eval.tta = tta
  logits = step_lib.make_predict_step(model, cfg, use_ema=False)(state, images)
  prob = jax.nn.sigmoid if classes == 1 else lambda v: jax.nn.softmax(v, axis=-1)
  views = [(), (2,)] if tta == "hflip" else [(), (2,), (1,), (1, 2)]
  expected = []
  for axes in views:
    out = model.apply(variables, jnp.flip(images, axes))
    expected.append(prob(jnp.flip(out, axes) if classes == 1 else out))
  np.testing.assert_allclose(prob(logits), np.mean(expected, axis=0), rtol=1e-5, atol=1e-6)
  cfg.eval.tta = "none"
  plain = step_lib.make_predict_step(model, cfg, use_ema=False)(state, images)
  np.testing.assert_allclose(plain, model.apply(variables, images), rtol=1e-6)
  assert not np.allclose(plain, logits, atol=1e-3)  # the views really differ
  assert tuple(step_lib.TTA_FLIPS) == config_lib.TTA_MODES
  cfg.eval.tta = "rot90"
  with pytest.raises(ValueError, match="eval.tta"):
    config_lib.validate_config(cfg)


def test_class_weights_and_logit_adjustment_come_from_the_training_counts():
  cfg = tiny_config(**{"data.task": "classification", "loss.name": "cross_entropy",
                       "loss.class_weight_power": 1.0, "loss.logit_adjustment_tau": 0.5})
  info = setup.run_info(cfg)
  source = sources.open_source(cfg.data)
  labels = [int(r["label"]) for r in source.split("train")]
  counts = np.bincount(labels, minlength=len(info.class_names))
  assert info.class_counts == tuple(counts.tolist())
  options = setup.count_loss_options(cfg, info)
  np.testing.assert_allclose(options["class_weights"], losses.class_weights_from_counts(counts),
                             rtol=1e-6)
  np.testing.assert_allclose(options["logit_adjustment"],
                             0.5 * np.log(np.maximum(counts, 1) / np.maximum(counts, 1).sum()),
                             rtol=1e-5)
  task = setup.make_task(cfg, info, loss_options=options)
  logits = jnp.zeros((3, len(info.class_names)))
  assert np.isfinite(float(task.loss_fn(logits, jnp.array([0, 1, 1]))))

  assert setup.count_loss_options(tiny_config(), SEGMENTATION) == {}
  with pytest.raises(ValueError, match="logit_adjustment_tau: for classification only"):
    setup.count_loss_options(tiny_config(**{"loss.logit_adjustment_tau": 1.0}), SEGMENTATION)
  cfg.loss.kwargs = {"class_weights": [1.0, 2.0]}
  with pytest.raises(ValueError, match="either loss.kwargs.class_weights or loss.class_weight_power"):
    setup.count_loss_options(cfg, info)


def test_logit_adjusted_decisions_move_the_confusion_matrix_only():
  """``eval.logit_adjustment_tau``: the argmax of logits - tau * log prior decides, for K logits
  and for a binary classifier's one sigmoid logit alike; ``decided_class`` agrees from the
  probabilities."""
  counts = np.array([90, 9, 1])
  cfg = tiny_config(**{"data.task": "classification", "eval.logit_adjustment_tau": 1.0})
  info = setup.RunInfo("classification", ("a", "b", "c"), 3, tuple(counts.tolist()))
  task = setup.make_task(cfg, info)
  prior = counts / counts.sum()
  np.testing.assert_allclose(task.decision_bias, -np.log(prior), rtol=1e-6)
  logits = jnp.array([[5.0, 0.0, 0.0], [2.0, 1.0, -3.0], [0.5, 0.0, -0.5]])
  labels, valid = jnp.array([0, 1, 2]), jnp.ones(3)
  decided = np.argmax(np.asarray(logits) - np.log(prior), axis=1)
  assert decided.tolist() == [0, 1, 2]  # the plain argmax says [0, 0, 0]
  confusion = np.asarray(task.stats(logits, {"label": labels, "valid": valid})["confusion"])
  np.testing.assert_array_equal(confusion, np.eye(3, dtype=int))
  probs = np.asarray(jax.nn.softmax(logits))
  assert [step_lib.decided_class(p, task.decision_bias) for p in probs] == decided.tolist()
  assert setup.make_task(tiny_config(**{"data.task": "classification"}), info).decision_bias is None

  binary = setup.make_task(cfg, setup.RunInfo("classification", ("benign", "malignant"), 1,
                                              (20, 80)))
  z = jnp.array([[0.5], [1.0], [2.0]])  # prior odds 4 for malignant: log 4 = 1.39 is taken off
  stats = binary.stats(z, {"label": jnp.array([1, 1, 1]), "valid": valid})
  assert np.asarray(stats["confusion"])[1].tolist() == [2, 1]
  with pytest.raises(ValueError, match="eval.logit_adjustment_tau: for classification only"):
    setup.make_task(tiny_config(**{"eval.logit_adjustment_tau": 1.0}), SEGMENTATION)
  with pytest.raises(ValueError, match="eval.logit_adjustment_tau must be >= 0"):
    config_lib.validate_config(tiny_config(**{"eval.logit_adjustment_tau": -1.0}))


def test_train_on_all_of_one_folder_and_score_another(tmp_path):
  from fakes import write_ph2  # pylint: disable=g-import-not-at-top

  train_cases = {f"IMD00{i}": "common_nevus" for i in range(1, 5)}
  other_cases = {"IMD101": "melanoma", "IMD102": "atypical_nevus", "IMD103": "common_nevus"}
  train_dir = write_ph2(tmp_path / "train", train_cases, list(train_cases))
  other_dir = write_ph2(tmp_path / "other", other_cases, list(other_cases))
  cfg = tiny_config(**{"data.name": "ph2", "data.split": "all", "num_steps": 2,
                       "eval.every_steps": 1})
  cfg.data.builder_kwargs = {}
  cfg.data.manual_dir = str(train_dir)
  results = loop.train(cfg, tmp_path / "run")
  assert results["step"] == 2 and results["validation"] == {}
  records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
  assert not [r for r in records if r["split"] == "validation"]

  with pytest.raises(ValueError, match="--manual-dir"):
    evaluate_lib.evaluate_run(tmp_path / "run")
  metrics = evaluate_lib.evaluate_run(tmp_path / "run", manual_dir=str(other_dir))
  assert metrics["count/images"] == 3
  with open(tmp_path / "run" / "evaluation" / "cases.csv") as f:
    assert sorted(r["id"] for r in csv.DictReader(f)) == sorted(other_cases)
  assert json.loads((tmp_path / "run" / "evaluation" / "metrics.json").read_text())[
      "manual_dir"] == str(other_dir)

  cfg.final_params = "best"
  with pytest.raises(ValueError, match="final_params='best' needs validation data"):
    loop.train(cfg, tmp_path / "run_best")


# ------------------------------------------------------------------------------------------------
# XLA options of the compiled steps.


@pytest.mark.slow
def test_cpu_compiler_options_compute_the_same_step():
  options = parallel.compiler_options("cpu")
  assert options == parallel.CPU_COMPILER_OPTIONS  # this jaxlib accepts them
  assert parallel.compiler_options("gpu") is None
  model = create_model("unet", num_classes=1, base_width=8, depth=2)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  variables = model.init(jax.random.key(1), x, train=False)

  def loss(params):
    logits, _ = model.apply({**variables, "params": params}, x, train=True,
                            mutable=["batch_stats"])
    return jnp.mean(logits ** 2)

  ours = jax.jit(jax.grad(loss), compiler_options=options)(variables["params"])
  default = jax.jit(jax.grad(loss))(variables["params"])
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(default)):
    np.testing.assert_allclose(a, b, atol=1e-4 * float(np.abs(b).max()) + 1e-7)


def test_compiler_options_a_jaxlib_rejects_fall_back_to_defaults(monkeypatch, caplog):
  monkeypatch.setattr(parallel, "CPU_COMPILER_OPTIONS",
                      {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_NO_SUCH_TYPE"})
  parallel.compiler_options.cache_clear()
  try:
    assert parallel.compiler_options("cpu") is None
    assert "not accepted by this jaxlib" in caplog.text
  finally:
    parallel.compiler_options.cache_clear()


def test_training_reads_the_config_and_records_the_statistics_it_derived(tmp_path):
  cfg = tiny_config(**{"data.normalization": "dataset", "num_steps": 1, "eval.every_steps": 1})
  given = cfg.to_dict()
  loop.train(cfg, tmp_path)
  assert cfg.to_dict() == given  # read, never edited
  recorded = config_lib.load_config(tmp_path / "config.json")
  mean, std = pipeline.dataset_statistics(cfg.data)
  assert tuple(recorded.data.mean) == pytest.approx(mean)
  assert tuple(recorded.data.std) == pytest.approx(std)


def test_input_size_dependent_models_are_built_for_the_data_size():
  cfg = tiny_config(**{"model.name": "vit_tiny", "data.task": "classification"})
  cfg.model.kwargs = {}
  info = setup.RunInfo("classification", ("a", "b"), 2)
  assert setup.make_model(cfg, info).img_size == 32
  cfg.model.kwargs = {"img_size": 64}  # named by the config: kept
  assert setup.make_model(cfg, info).img_size == 64


@pytest.mark.parametrize("model,loss,task", [
    ("unet", "focal", "segmentation"), ("resnet18", "dice", "classification"),
    ("deeplabv3plus", "cross_entropy", "segmentation")])
def test_runlocal_trains_the_models_task_whatever_the_loss(model, loss, task):
  cfg = config_lib.default_config()
  cfg.model.name, cfg.loss.name = model, loss
  config_lib.runlocal(cfg)
  assert cfg.data.task == task
