"""A trained run as a predictor, in three lines of a notebook::

    import flaxderm
    run = flaxderm.load_run("runs/ph2", params="best")
    mask = run.predict(image)          # uint8 (H, W, 3) -> bool (H, W) mask at the image's size
    probs = run.predict(image, metadata={"age": 55, "sex": "female", "site": "back"})  # a run
                                       # with data.metadata: its clinical fields beside the image

``run.predict`` returns, for a segmentation run, the lesion mask at the image's own resolution
(the model's probabilities resized back onto the part of the image it saw, then thresholded), and
for a classification run the class probabilities (in ``run.class_names`` order).
``run.predict_batch(images)`` does the same for a list of images of any sizes, and
``run.probabilities(images)`` returns the probability maps before thresholding. Images are
prepared by the same function as the run's evaluation batches (its config's preprocessing,
resize mode and normalisation); one whose short side is below a quarter of the model input
(``MIN_SIDE_FRACTION``) is predicted with a warning.

A cross-validation run (a directory of ``fold_*/`` runs) loads as one model: the average of the
folds' probabilities.

A run calibrated by ``launch.py evaluate --calibrate`` (``flaxderm.tools.calibration``) holds its
temperature T in ``calibration.json``; its logits are divided by T before the probabilities are
taken (each fold by its own), unless ``load_run(..., calibrated=False)``.

A classifier's decided class (``run.decide(probs)``: ``predict``'s ``labels.csv``, the class
``explain`` attributes) is the argmax of its probabilities, logit-adjusted for its training prior
when its config sets ``eval.logit_adjustment_tau`` (``flaxderm.train.setup.decision_bias``; a
fold ensemble: the prior of the folds' summed training counts). The probabilities are not changed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flaxderm.data import metadata as metadata_lib
from flaxderm.data import pipeline
from flaxderm.train import checkpoint as checkpoint_lib
from flaxderm.train import config as config_lib
from flaxderm.train import parallel as parallel_lib
from flaxderm.train import setup
from flaxderm.train import step as step_lib
from flaxderm.train.state import TrainState

log = logging.getLogger(__name__)

CONFIG = "config.json"
RESULTS = "results.json"  # a finished training run's summary (flaxderm.train.loop)
CALIBRATION = "calibration.json"
FOLD_PATTERN = "fold_*"
THRESHOLD = 0.5
# An image whose short side is below this fraction of the model input is predicted with a warning:
# enlarged more than 4x, the model sees interpolation rather than the lesion.
MIN_SIDE_FRACTION = 0.25


def add_run_arguments(parser: argparse.ArgumentParser, *, workdir: bool = True) -> None:
  """The options of the tools applied to a trained run: which run, and which of its parameters."""
  if workdir:
    parser.add_argument("--workdir", required=True, help="the training run (or CV run) directory")
  parser.add_argument("--params", choices=config_lib.FINAL_PARAMS,
                      help="which parameters (default: the run's config.final_params)")
  parser.add_argument("--ema", action=argparse.BooleanOptionalAction,
                      help="use the EMA of the parameters, or not (default: config.use_ema)")
  parser.add_argument("--tta", help="test-time augmentation, none|hflip|flips (default: the "
                      "run's config.eval.tta)")


def run_directories(workdir: str | Path) -> list[Path]:
  """The training runs of ``workdir``: itself, or its ``fold_*/`` runs (cross-validation)."""
  workdir = Path(workdir).resolve()
  if (workdir / CONFIG).is_file():
    return [workdir]
  folds = sorted(d for d in workdir.glob(FOLD_PATTERN) if (d / CONFIG).is_file())
  if not folds:
    raise ValueError(f"{workdir} is not a training run directory (no {CONFIG}, and no "
                     f"{FOLD_PATTERN}/{CONFIG} of a cross-validation run)")
  return folds


def run_config(workdir: Path, *, tta: str | None = None,
               logit_adjustment: float | None = None) -> ml_collections.ConfigDict:
  """The run's saved config, with ``tta`` and ``logit_adjustment`` (when given) replacing its
  ``eval.tta`` and ``eval.logit_adjustment_tau``."""
  cfg = config_lib.load_config(workdir / CONFIG)
  if tta is not None:
    if tta not in config_lib.TTA_MODES:
      raise ValueError(f"--tta must be one of {config_lib.TTA_MODES}, got {tta!r}")
    cfg.eval.tta = tta
  if logit_adjustment is not None:
    if not logit_adjustment >= 0:
      raise ValueError(f"--logit-adjustment must be >= 0, got {logit_adjustment}")
    cfg.eval.logit_adjustment_tau = float(logit_adjustment)
  return cfg


@dataclasses.dataclass(frozen=True)
class Restored:
  """A trained run read back for inference: its saved config and info, and the parameters chosen
  (``restore``)."""

  workdir: Path
  cfg: ml_collections.ConfigDict
  info: setup.RunInfo
  model: object
  state: TrainState
  step: int
  params: str  # "last" or "best"
  use_ema: bool


def restore(workdir: Path, *, params: str | None, use_ema: bool | None, tta: str | None,
            par: parallel_lib.DataParallel, logit_adjustment: float | None = None) -> Restored:
  """The run's "last" or "best" parameters (default: its ``final_params``), with or without their
  EMA (default: its ``use_ema``), its config carrying ``tta`` and ``logit_adjustment`` when given
  (``run_config``)."""
  cfg = run_config(workdir, tta=tta, logit_adjustment=logit_adjustment)
  info = setup.RunInfo.load(workdir)
  which = params or cfg.final_params
  if which not in config_lib.FINAL_PARAMS:
    raise ValueError(f"--params must be one of {config_lib.FINAL_PARAMS}, got {which!r}")
  use_ema = cfg.use_ema if use_ema is None else use_ema
  if use_ema and cfg.optimizer.ema_decay == 0.0:
    raise ValueError(f"--ema: the run in {workdir} kept no EMA (its optimizer.ema_decay is 0)")
  model = setup.make_model(cfg, info)
  dummy = setup.dummy_inputs(model, cfg)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), *dummy))
  target = setup.weights_of(abstract, cfg.optimizer.ema_decay > 0)
  weights, step = checkpoint_lib.Checkpointer(workdir, read_only=True).restore_weights(
      which, target, par.replicated)
  state = TrainState(step=None, params=weights["params"], batch_stats=weights["batch_stats"],
                     opt_state=None, rng=None, ema_params=weights["ema_params"])
  return Restored(workdir, cfg, info, model, state, step, which, use_ema)


def check_members(members: Sequence[Restored], workdir: Path | str) -> None:
  """The runs averaged as one model (the folds of ``workdir``) must predict the same classes."""
  outputs = {(m.info.task, m.info.class_names, m.info.output_channels) for m in members}
  if len(outputs) > 1:
    raise ValueError(f"the folds of {workdir} disagree on task or classes: {sorted(outputs)}")


def pooled_class_counts(members: Sequence[Restored]) -> np.ndarray | None:
  """The summed training class counts of ``members`` averaged as one model, the prior their
  decisions are adjusted for; None when the first one's ``eval.logit_adjustment_tau`` is 0 (they
  are then not needed, nor read)."""
  if not members[0].cfg.eval.logit_adjustment_tau or members[0].info.task != "classification":
    return None
  return sum(setup.training_class_counts(m.cfg, m.info) for m in members)


def stored_temperature(workdir: Path, **loaded) -> float:
  """The temperature in ``workdir/calibration.json`` (1.0 when the run is not calibrated); a
  warning when it was fitted for other ``params``, ``ema``, ``tta`` or ``step`` than ``loaded``
  (e.g. the run trained on after it)."""
  path = workdir / CALIBRATION
  if not path.is_file():
    return 1.0
  saved = json.loads(path.read_text())
  fitted = {key: saved[key] for key in loaded}
  if fitted != loaded:
    log.warning("%s: temperature %.4f was fitted for %s, applied to %s", path,
                saved["temperature"], fitted, loaded)
  return float(saved["temperature"])


def probabilities_of(logits: jax.Array, task: str) -> jax.Array:
  """Lesion probability maps (N, H, W) of segmentation logits, or class probabilities (N, K)."""
  logits = logits.astype(jnp.float32)
  if task == "segmentation":
    if logits.shape[-1] == 1:
      return jax.nn.sigmoid(logits[..., 0])
    return jax.nn.softmax(logits, axis=-1)[..., 1]
  if logits.shape[-1] == 1:
    positive = jax.nn.sigmoid(logits)
    return jnp.concatenate([1 - positive, positive], axis=-1)
  return jax.nn.softmax(logits, axis=-1)


@dataclasses.dataclass
class Member:
  """One trained run of a ``Run``: its config, its data preparation and its jitted predictor."""

  workdir: Path
  cfg: ml_collections.ConfigDict
  data_cfg: ml_collections.ConfigDict
  step: int
  model: object
  state: TrainState
  forward: Callable[..., jax.Array]  # (state, images[, metadata]) -> probabilities
  temperature: float = 1.0  # the logits are divided by it (calibration.json)

  def __post_init__(self):
    self.infer = jax.jit(self.forward)


class Run:
  """A trained run (or the folds of a cross-validation run) ready to predict; see the module
  docstring. Build it with ``load_run``."""

  def __init__(self, workdir: Path, info: setup.RunInfo, members: Sequence[Member], *,
               params: str, use_ema: bool, batch_size: int,
               decision_bias: tuple[float, ...] | None = None):
    self.workdir = workdir
    self.info = info
    self.members = list(members)
    self.params = params
    self.use_ema = use_ema
    self.batch_size = batch_size
    self.decision_bias = decision_bias

  @property
  def task(self) -> str:
    return self.info.task

  @property
  def class_names(self) -> tuple[str, ...]:
    return self.info.class_names

  @property
  def cfg(self) -> ml_collections.ConfigDict:
    return self.members[0].cfg

  @property
  def min_image_side(self) -> float:
    """The short side (pixels) below which an image is predicted with a warning."""
    return MIN_SIDE_FRACTION * min(m.data_cfg.image_size for m in self.members)

  @property
  def metadata_fields(self) -> tuple[str, ...]:
    """The clinical fields the model takes beside the image (``data.metadata``; () for none)."""
    return tuple(self.cfg.data.metadata)

  def forward(self, inputs: jax.Array, *metadata: jax.Array) -> jax.Array:
    """Probabilities of prepared model inputs (N, S, S, 3) (and encoded ``metadata`` (N, D) for
    a run that takes it): lesion maps (N, S, S) or classes (N, K), the mean over the members; a
    pure function of its inputs (what export converts)."""
    outputs = [member.forward(member.state, inputs, *metadata) for member in self.members]
    return sum(outputs[1:], outputs[0]) / len(outputs)

  def encoded_metadata(self, metadata: Sequence[Mapping[str, Any]] | None,
                       names: Sequence[str]) -> list[np.ndarray | None]:
    """Per member: the float32 (N, D) metadata of the images ``names`` under its vocabulary, or
    None when the run takes none. ValueError when the run takes metadata and none is given (or
    the reverse), or a value does not parse (naming the image and the field)."""
    encoders = [metadata_lib.encoder_of(m.data_cfg) for m in self.members]
    if encoders[0] is None:
      if metadata is not None:
        raise ValueError(f"{self.workdir}: this run takes images only; it was given metadata")
      return [None] * len(encoders)
    if metadata is None:
      raise ValueError(f"{self.workdir}: this run takes clinical metadata beside each image "
                       f"(fields {list(self.metadata_fields)}); pass metadata (one dict per "
                       "image; None or an absent field is a missing value)")
    if len(metadata) != len(names):
      raise ValueError(f"{len(names)} images but {len(metadata)} metadata entries")
    return [np.stack([e.encode(values, owner=name) for values, name in zip(metadata, names)])
            for e in encoders]

  def probabilities(self, images: Sequence[np.ndarray], names: Sequence[str] | None = None,
                    metadata: Sequence[Mapping[str, Any]] | None = None) -> list[np.ndarray]:
    """Per image: the lesion probability map (H, W) at the image's size, or the class
    probabilities (K,); the mean over the members. ``images``: a list of uint8 (H, W, 3) arrays
    (or one stacked (N, H, W, 3) array); ``names`` name them in errors and warnings (default
    "image <index>"); ``metadata``: for a run that takes clinical metadata, one dict per image
    (field -> value, e.g. ``{"age": 55, "sex": "female", "site": "back"}``)."""
    if isinstance(images, np.ndarray) and images.ndim != 4:
      raise ValueError(f"expected a list of images (uint8 (H, W, 3) each), got one array of "
                       f"shape {images.shape}: pass [image], or use predict(image) for one")
    names = names or [f"image {i}" for i in range(len(images))]
    images = [self._checked_image(image, name) for image, name in zip(images, names)]
    encoded = self.encoded_metadata(metadata, names)
    total: list[np.ndarray] | None = None
    inputs: dict[str, list] = {}  # folds of a CV run share their preparation: done once
    for member, member_metadata in zip(self.members, encoded):
      key = pipeline.preparation(member.data_cfg)
      if key not in inputs:
        inputs[key] = [pipeline.model_input(image, member.data_cfg) for image in images]
      prepared = inputs[key]
      probs = []
      for start in range(0, len(prepared), self.batch_size):
        chunk = prepared[start:start + self.batch_size]
        batch = np.zeros((self.batch_size, *chunk[0][0].shape), np.float32)  # one compiled shape
        batch[:len(chunk)] = [x for x, _ in chunk]
        extra = []
        if member_metadata is not None:
          extra.append(np.zeros((self.batch_size, member_metadata.shape[1]), np.float32))
          extra[0][:len(chunk)] = member_metadata[start:start + len(chunk)]
        out = np.asarray(member.infer(member.state, jnp.asarray(batch),
                                      *map(jnp.asarray, extra)))[:len(chunk)]
        for (_, window), p in zip(chunk, out):
          probs.append(window.paste(p) if self.task == "segmentation" else p.astype(np.float64))
      total = probs if total is None else [t + p for t, p in zip(total, probs)]
    return [t / len(self.members) for t in total]

  def predict_batch(self, images: Sequence[np.ndarray],
                    metadata: Sequence[Mapping[str, Any]] | None = None) -> list[np.ndarray]:
    """Masks (bool, H x W of each image) or class probabilities (K,) of ``images`` (with one
    ``metadata`` dict per image for a run that takes clinical metadata)."""
    probs = self.probabilities(images, metadata=metadata)
    return [p >= THRESHOLD for p in probs] if self.task == "segmentation" else probs

  def predict(self, image: np.ndarray, metadata: Mapping[str, Any] | None = None) -> np.ndarray:
    return self.predict_batch([image], None if metadata is None else [metadata])[0]

  def decide(self, probs: np.ndarray) -> int:
    """The decided class of a classifier's probabilities (K,) of one image (module docstring)."""
    if self.task != "classification":
      raise ValueError("decide: for a classification run; this one is " + self.task)
    return step_lib.decided_class(probs, self.decision_bias)

  def _checked_image(self, image: np.ndarray, name: str) -> np.ndarray:
    """``image`` as an array; ValueError unless it is uint8 RGB with pixels, a warning when it is
    far below the model input (``min_image_side``)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
      raise ValueError(f"{name}: expected uint8 RGB of shape (H, W, 3), got {image.dtype} "
                       f"{image.shape}")
    height, width = image.shape[:2]
    if not height or not width:
      raise ValueError(f"{name}: empty ({height}x{width} pixels); expected an image of at least "
                       "1x1")
    if min(height, width) < self.min_image_side:
      log.warning("%s: %dx%d pixels, below %g px on its short side (a quarter of the model input "
                  "of %d px): enlarged this much, its prediction is unreliable", name, height,
                  width, self.min_image_side, self.cfg.data.image_size)
    return image


def load_run(workdir: str | Path, *, params: str | None = None, use_ema: bool | None = None,
             tta: str | None = None, batch_size: int = 8, calibrated: bool = True) -> Run:
  """The run in ``workdir`` (or its folds) with its "last" or "best" parameters (default: the
  run's ``final_params``), their EMA or not (default: the run's ``use_ema``) and its test-time
  augmentation (default: ``eval.tta``; "none", "hflip" or "flips"), temperature-scaled when
  ``calibrated`` and the run holds a ``calibration.json``."""
  if batch_size < 1:
    raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
  par = parallel_lib.DataParallel("auto")
  restored = [restore(directory, params=params, use_ema=use_ema, tta=tta, par=par)
              for directory in run_directories(workdir)]
  check_members(restored, workdir)
  members = []
  for r in restored:
    predict = step_lib.make_predict_step(r.model, r.cfg, use_ema=r.use_ema)
    temperature = (stored_temperature(r.workdir, params=r.params, ema=r.use_ema,
                                      tta=r.cfg.eval.tta, step=r.step) if calibrated else 1.0)
    forward = lambda s, x, *m, predict=predict, task=r.info.task, t=temperature: (
        probabilities_of(predict(s, x, *m) / t, task))
    members.append(Member(r.workdir, r.cfg, setup.eval_data_config(r.cfg), r.step, r.model,
                          r.state, forward, temperature))
  return Run(Path(workdir).resolve(), restored[0].info, members, params=restored[0].params,
             use_ema=restored[0].use_ema, batch_size=batch_size,
             decision_bias=setup.decision_bias(restored[0].cfg.eval.logit_adjustment_tau,
                                               pooled_class_counts(restored)))
