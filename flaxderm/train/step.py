"""The update and evaluation steps, shared by segmentation and classification.

A ``Task`` decides what is learnt (which labels, which loss, which metrics); the steps are the same
for both. Steps are written for one program over the global batch (``config.parallel="auto"``:
``jax.jit`` over a device mesh, where BatchNorm statistics and loss means are global already) and,
given ``axis_name``, per device (``"pmap"``: gradients and the loss are averaged with
``lax.pmean``; BatchNorm statistics are synchronised by ``parallel.synced_batchnorm``). The two
agree whenever the loss is a mean over examples (Dice, unweighted cross-entropy); a loss that
normalises by the batch's own weights (class-weighted cross-entropy) is averaged per device in
"pmap" mode, as per-device research code usually does.

``train_step(state, batch, progress) -> (state, metrics)``: ``progress`` in [0, 1] is computed on
the host (step / total steps, or elapsed / budget) and sets the learning rate through the
schedule. A step whose loss or gradient is not finite leaves the state unchanged (but for the step
count) and reports ``finite = False``, so the last good state is never overwritten.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from flaxderm import metrics as metrics_lib
from flaxderm.models import fusion
from flaxderm.train import optim
from flaxderm.train.state import TrainState, step_key

Batch = Mapping[str, jax.Array]
TASKS = ("segmentation", "classification")
# Test-time augmentation: the image axes (NHWC) flipped in each view; () is the image itself.
TTA_FLIPS = {"none": ((),), "hflip": ((), (2,)), "flips": ((), (2,), (1,), (1, 2))}


@dataclasses.dataclass(frozen=True)
class Task:
  """What the model learns. kind: "segmentation" or "classification"; num_classes: the classes
  metrics are computed over (2 for binary segmentation, however many logit channels);
  class_names: their names for the summaries; loss_fn: ``(logits, labels, *, mask) -> scalar``;
  decision_bias: per class, added to a classifier's logits before the argmax that decides its
  class (post-hoc logit adjustment, ``setup.decision_bias``), None for the plain argmax. It moves
  the decisions only: the probabilities, and so AUC and calibration, stay the model's."""
  kind: str
  num_classes: int
  class_names: tuple[str, ...]
  loss_fn: Callable[..., jax.Array]
  decision_bias: tuple[float, ...] | None = None

  def __post_init__(self):
    if self.kind not in TASKS:
      raise ValueError(f"task must be one of {TASKS}, got {self.kind!r}")
    if self.decision_bias is not None and (self.kind != "classification" or
                                           len(self.decision_bias) != self.num_classes):
      raise ValueError(f"decision_bias: one value per class of a classifier ({self.num_classes}), "
                       f"got {len(self.decision_bias)} for {self.kind}")

  def decision_logits(self, logits: Any) -> Any:
    """``logits`` (N, K), or a binary classifier's (N, 1), with ``decision_bias`` added: their
    argmax (or sign) is the decided class."""
    if self.decision_bias is None:
      return logits
    bias = np.asarray(self.decision_bias, np.float32)
    return logits + (bias[1] - bias[0] if logits.shape[-1] == 1 else bias)

  @property
  def label_key(self) -> str:
    return "mask" if self.kind == "segmentation" else "label"

  def loss(self, logits: jax.Array, batch: Batch) -> jax.Array:
    return self.loss_fn(logits.astype(jnp.float32), batch[self.label_key], mask=batch["valid"])

  def stats(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    """Summable metric statistics of a batch (padding excluded by ``valid``)."""
    labels, valid = batch[self.label_key], batch["valid"]
    if self.kind == "segmentation":
      return metrics_lib.segmentation_stats(logits, labels, valid=valid)
    return metrics_lib.classification_stats(self.decision_logits(logits), labels,
                                            num_classes=self.num_classes, valid=valid)

  def summarize(self, stats: Mapping[str, Any]) -> dict[str, float]:
    if self.kind == "segmentation":
      return metrics_lib.summarize_segmentation(stats, class_names=self.class_names)
    return metrics_lib.summarize_classification(stats, class_names=self.class_names)

  @property
  def default_metric(self) -> str:
    return "dice/per_image" if self.kind == "segmentation" else "accuracy"


def decided_class(probs: np.ndarray, decision_bias: tuple[float, ...] | None) -> int:
  """The class decided from one case's class probabilities (K,): the argmax of their logs plus
  ``decision_bias`` (``Task.decision_bias``), the argmax of ``probs`` when it is None."""
  with np.errstate(divide="ignore"):  # a probability of 0 is never decided: log -inf
    scores = np.log(np.asarray(probs, np.float64))
  return int(np.argmax(scores if decision_bias is None else scores + np.asarray(decision_bias)))


def metadata_of(batch: Batch) -> tuple[jax.Array, ...]:
  """The model's inputs after the images: ``(batch["metadata"],)`` when the batch carries the
  clinical metadata (``data.metadata``), else ``()``."""
  return (batch["metadata"],) if "metadata" in batch else ()


def main_output(outputs: Any) -> jax.Array:
  """The task logits: models with an auxiliary head return ``(mask_logits, class_logits)``."""
  return outputs[0] if isinstance(outputs, tuple) else outputs


def training_loss(task: Task, outputs: Any, batch: Batch) -> jax.Array:
  """The loss of a model's training-mode ``outputs``: the task loss of its logits, or the sum of
  each branch's task loss for a model whose branches learn alone (``fusion.BranchLogits``)."""
  if isinstance(outputs, fusion.BranchLogits):
    return sum(task.loss(branch, batch) for branch in outputs.branches)
  return task.loss(main_output(outputs), batch)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, task: Task,
                    cfg: ml_collections.ConfigDict, *, axis_name: str | None = None
                    ) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict]]:
  """``train_step(state, batch, progress)``; per device when ``axis_name`` is given."""
  dtype = jnp.dtype(cfg.compute_dtype)
  ema_decay = cfg.optimizer.ema_decay
  accumulating = cfg.optimizer.accumulate_steps > 1

  def train_step(state: TrainState, batch: Batch, progress: jax.Array):
    key = step_key(state)
    if axis_name is not None:  # different dropout masks on each device's examples
      key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
    images = batch["image"].astype(dtype)

    def loss_fn(params):
      variables = {"params": params, "batch_stats": state.batch_stats}
      outputs, updated = model.apply(variables, images, *metadata_of(batch), train=True,
                                     mutable=["batch_stats"], rngs={"dropout": key})
      return training_loss(task, outputs, batch), updated.get("batch_stats", {})

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    if axis_name is not None:
      grads, loss = jax.lax.pmean((grads, loss), axis_name)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    lr = optim.learning_rate(cfg, progress)
    params = optax.apply_updates(state.params, optim.scaled_updates(updates, lr))
    ema = state.ema_params
    if ema is not None:
      new_ema = optim.ema_update(ema, params, ema_decay)
      if accumulating:  # average the parameters only when MultiSteps has applied an update
        applied = opt_state.mini_step == 0
        new_ema = jax.tree.map(lambda n, o: jnp.where(applied, n, o), new_ema, ema)
      ema = new_ema
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updated = state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state,
                            ema_params=ema)
    kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": lr, "finite": finite}
    return kept.replace(step=state.step + 1), metrics

  return train_step


def make_eval_step(model: nn.Module, task: Task, cfg: ml_collections.ConfigDict, *,
                   use_ema: bool) -> Callable[[TrainState, Batch], dict[str, jax.Array]]:
  """``eval_step(state, batch) -> stats`` summed over the (global) batch."""
  inference = make_predict_step(model, cfg, use_ema=use_ema)

  def eval_step(state: TrainState, batch: Batch):
    return task.stats(inference(state, batch["image"], *metadata_of(batch)), batch)

  return eval_step


def make_case_step(model: nn.Module, task: Task, cfg: ml_collections.ConfigDict, *,
                   use_ema: bool, members: int = 0) -> Callable[[Any, Batch], dict[str, Any]]:
  """``case_step(state, batch) -> {"stats": per-example stats, "probs": (N, K) or absent}``: the
  metric statistics of each example on its own (leading axis N), and for classification the
  class probabilities, for per-case result tables.

  ``members > 0`` scores an ensemble (the folds of a cross-validation run): ``state`` is then a
  tuple of that many states of ``model``, whose probabilities are averaged; ``batch["image"]`` is
  shared, or (N, members, H, W, C) when each member prepares its input differently (and
  ``batch["metadata"]`` (N, members, D) when each encodes it with its own vocabulary)."""
  inference = make_predict_step(model, cfg, use_ema=use_ema)
  if members:
    single = inference

    def inference(states, images, *metadata):
      if len(states) != members:
        raise ValueError(f"the ensemble has {members} members, got {len(states)} states")
      own = images.ndim == 5

      def member_input(x, m):
        return x[:, m] if own else x

      return mean_probabilities_as_logits(jnp.stack(
          [single(s, member_input(images, m), *(member_input(x, m) for x in metadata))
           for m, s in enumerate(states)]))

  def case_step(state, batch: Batch):
    logits = inference(state, batch["image"], *metadata_of(batch))
    one = {k: batch[k] for k in (task.label_key, "valid")}
    per_case = jax.vmap(lambda lg, ex: task.stats(lg[None], jax.tree.map(lambda v: v[None], ex)))
    out = {"stats": per_case(logits, one)}
    if task.kind == "classification":
      out["probs"] = (jax.nn.sigmoid(logits) if logits.shape[-1] == 1
                      else jax.nn.softmax(logits, axis=-1))
    return out

  return case_step


def mean_probabilities_as_logits(logits: jax.Array) -> jax.Array:
  """Stacked float32 logits (V, ...) of V views or models -> the logits of their mean
  probability (sigmoid for one channel, softmax otherwise)."""
  if logits.shape[-1] == 1:
    return jax.scipy.special.logit(jnp.mean(jax.nn.sigmoid(logits), axis=0))
  return jnp.log(jnp.mean(jax.nn.softmax(logits, axis=-1), axis=0))


def make_predict_step(model: nn.Module, cfg: ml_collections.ConfigDict, *, use_ema: bool
                      ) -> Callable[..., jax.Array]:
  """``predict(state, images[, metadata]) -> logits`` in float32 (``metadata`` (N, D) for a model
  that takes it), with the test-time augmentation of ``cfg.eval.tta`` (see ``TTA_FLIPS``; the
  metadata is the same for every view): the class probabilities of every flipped view, mapped
  back onto the image for segmentation, are averaged and returned as logits of that average."""
  dtype = jnp.dtype(cfg.compute_dtype)
  flips = TTA_FLIPS[cfg.eval.tta]

  def predict(state: TrainState, images: jax.Array, *metadata: jax.Array):
    variables = state.variables(use_ema=use_ema)
    images = images.astype(dtype)
    views = []
    for axes in flips:
      logits = main_output(model.apply(variables, jnp.flip(images, axes), *metadata,
                                       train=False))
      views.append(jnp.flip(logits, axes) if logits.ndim == 4 else logits)
    if len(views) == 1:
      return views[0].astype(jnp.float32)
    return mean_probabilities_as_logits(jnp.stack(views).astype(jnp.float32))

  return predict


def sum_stats(per_case: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Per-example stats (leading axis) summed into set stats, on the host in 64 bits."""
  return {k: np.asarray(v).astype(np.promote_types(np.asarray(v).dtype, np.int64)).sum(0)
          for k, v in per_case.items()}
