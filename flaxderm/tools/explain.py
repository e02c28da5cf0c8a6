"""Explanations: heat maps of the image regions that drove a trained run's prediction::

    python launch.py explain --workdir RUN --out DIR INPUT... [--method gradcam|gradcampp|
        integrated_gradients|saliency] [--target CLASS] [--layer NAME] [--steps N]
        [--params last|best] [--ema | --no-ema] [--overwrite] [--metadata FILE]

writes ``DIR/<id>_<method>.png`` per input image (files, folders or globs, as ``predict``): the
heat map (jet colours, blended half and half) over the image at its original size, zero (blue)
where the model saw none of the image (cropped away).

The target and the methods are ``flaxderm.attribution``'s: for a classifier the logit of
``--target`` (a class name in any case, e.g. ``MEL`` as ``predict`` writes it, or an index;
default: the predicted class), for a segmentation model the lesion it predicts. ``--layer`` names
the module whose output Grad-CAM uses (an unknown name lists the valid ones; default: see
``attribution.default_layer``).

Explanations use one view (no test-time augmentation). A cross-validation run explains each fold
and averages their scaled maps (scaled again), as pytorch-grad-cam aggregates several layers; the
classification target is the ensemble's predicted class.
"""
from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from flaxderm import attribution
from flaxderm.attribution import CAM_METHODS, DEFAULT_STEPS, METHODS, Layer
from flaxderm.data import pipeline
from flaxderm.data import preprocess
from flaxderm.tools import predict as predict_lib
from flaxderm.tools import run as run_lib
from flaxderm.train import setup
from flaxderm.train import step as step_lib

def _member_logits(member: run_lib.Member) -> Callable[..., jax.Array]:
  """``logits(variables, inputs[, metadata])`` of one run member: one view, its compute dtype,
  float32 out."""
  dtype = jnp.dtype(member.cfg.compute_dtype)

  def logits(variables, x, *metadata):
    out = member.model.apply(variables, x.astype(dtype), *metadata, train=False)
    return step_lib.main_output(out).astype(jnp.float32)
  return logits


def _member_map(logits: Callable, variables, x: jax.Array, classes: jax.Array | None,
                *metadata: jax.Array, method: str, layer: Layer | None, steps: int) -> jax.Array:
  """The raw map of ``x``; a run with clinical metadata explains the image with its
  ``metadata`` held fixed."""
  target = attribution.lesion_target if classes is None else attribution.class_target(classes)
  return attribution.raw_map(lambda z: logits(variables, z, *metadata), x, target, method,
                             layer=layer, steps=steps)


def class_index(run: run_lib.Run, target: str | int | None) -> int | None:
  """The index of the class ``target`` names: a class name, exactly or in any case (as
  ``predictions.csv``'s header writes it, e.g. MEL), or an index; None for none given."""
  if run.task == "segmentation":
    if target is not None:
      raise ValueError("--target is for classification runs; a segmentation explanation "
                       "targets the lesion the model predicts")
    return None
  if target is None:
    return None
  names = list(run.class_names)
  folded = [n.casefold() for n in names]
  if str(target) in names:
    return names.index(str(target))
  if folded.count(str(target).casefold()) == 1:
    return folded.index(str(target).casefold())
  if str(target).isdigit() and int(target) < len(names):
    return int(target)
  raise ValueError(f"--target {target!r}: not a class of this run; classes: {', '.join(names)} "
                   f"(in any case, or their indices 0..{len(names) - 1})")


def _target_class(run: run_lib.Run, target: str | int | None, images: Sequence[np.ndarray],
                  metadata: Sequence[dict] | None = None) -> list[int] | None:
  """Per image, the class explained (None for segmentation)."""
  index = class_index(run, target)
  if run.task == "segmentation":
    return None
  if index is None:
    return [run.decide(p) for p in run.probabilities(images, metadata=metadata)]
  return [index] * len(images)


class Explainer:
  """Heat maps of a loaded run's predictions at the images' sizes (see the module docstring)."""

  def __init__(self, run: run_lib.Run, method: str = "gradcam", *, layer: str | None = None,
               steps: int = DEFAULT_STEPS):
    if method not in METHODS:
      raise ValueError(f"--method must be one of {METHODS}, got {method!r}")
    if layer is not None and method not in CAM_METHODS:
      raise ValueError(f"--layer is for {' and '.join(CAM_METHODS)}, not {method}")
    if steps < 1:
      raise ValueError(f"--steps must be >= 1, got {steps}")
    self.run, self.method, self.steps = run, method, steps
    self._members = []
    for member in run.members:
      logits, variables = _member_logits(member), member.state.variables(use_ema=run.use_ema)
      chosen = None
      if method in CAM_METHODS:
        dummy = setup.dummy_inputs(member.model, member.cfg)
        layers = attribution.cam_layers(member.model, variables, *dummy)
        name = layer or attribution.default_layer(member.model, member.cfg.model.name, layers)
        chosen = attribution.checked_layer(layers, name, member.cfg.model.name)
      self._members.append((member, variables, chosen, jax.jit(functools.partial(
          _member_map, logits, method=method, layer=chosen, steps=steps))))

  @property
  def layer(self) -> str | None:
    """The CAM layer's module path (None for the gradient methods)."""
    return self._members[0][2].name if self._members[0][2] else None

  def explain(self, images: Sequence[np.ndarray], target: str | int | None = None,
              metadata: Sequence[dict] | None = None
              ) -> tuple[list[np.ndarray], list[int] | None]:
    """(per image a (H, W) float32 map in [0, 1] at its size, the class explained per image or
    None for segmentation); ``target`` a class name or index (default: the predicted class);
    ``metadata``: for a run with clinical metadata, one dict per image (``Run.probabilities``),
    held fixed while the image is explained."""
    classes = _target_class(self.run, target, images, metadata)
    encoded = self.run.encoded_metadata(metadata, [f"image {i}" for i in range(len(images))])
    maps = []
    for i, image in enumerate(images):
      total = None
      for (member, variables, _, member_map), fixed in zip(self._members, encoded):
        x, window = pipeline.model_input(image, member.data_cfg)
        cls = None if classes is None else jnp.asarray([classes[i]])
        extra = () if fixed is None else (jnp.asarray(fixed[i:i + 1]),)
        raw = np.asarray(member_map(variables, jnp.asarray(x[None]), cls, *extra))
        pasted = window.paste(attribution.scaled_map(raw, self.method, x.shape[:2])[0])
        total = pasted if total is None else total + pasted
      maps.append(total if len(self._members) == 1 else attribution.scale_maps(total[None])[0])
    return maps, classes


def overlay(image: np.ndarray, heat: np.ndarray, weight: float = 0.5) -> np.ndarray:
  """uint8 RGB: ``heat`` in [0, 1] in jet colours blended over ``image``."""
  colours = cv2.applyColorMap(np.uint8(np.clip(heat, 0, 1) * 255), cv2.COLORMAP_JET)
  colours = cv2.cvtColor(colours, cv2.COLOR_BGR2RGB).astype(np.float32)
  return np.uint8(np.round(weight * image.astype(np.float32) + (1 - weight) * colours))


def explain_files(workdir: str | Path, inputs: Sequence[str], out: str | Path, *,
                  method: str = "gradcam", target: str | None = None, layer: str | None = None,
                  steps: int = DEFAULT_STEPS, params: str | None = None,
                  use_ema: bool | None = None, overwrite: bool = False,
                  metadata: str | Path | None = None) -> dict:
  """Writes ``out/<id>_<method>.png`` for every input image; returns a summary. ``metadata``: a
  run with clinical metadata reads each image's from that CSV, as ``predict --metadata``."""
  paths = predict_lib.expand_inputs(inputs, out)
  out = Path(out)
  planned = [out / f"{p.stem}_{method}.png" for p in paths]
  existing = [p.name for p in planned if p.exists()]
  if existing and not overwrite:
    raise ValueError(f"{out} already holds {', '.join(existing[:5])}"
                     f"{' and more' if len(existing) > 5 else ''}; pass --overwrite to replace")
  run = run_lib.load_run(workdir, params=params, use_ema=use_ema, tta="none", batch_size=1)
  rows = predict_lib.run_metadata(run, paths, metadata, workdir)
  explainer = Explainer(run, method, layer=layer, steps=steps)
  class_index(run, target)  # a bad --target fails here, before the output folder exists
  out.mkdir(parents=True, exist_ok=True)
  written = []
  for path, destination in zip(paths, planned):
    try:
      image = preprocess.read_image(path)
    except Exception as e:  # pylint: disable=broad-except  (PIL raises many types)
      raise ValueError(f"cannot read image {path} ({type(e).__name__}: {e})") from e
    (heat,), classes = explainer.explain([image], target,
                                         None if rows is None else [rows[path]])
    if not cv2.imwrite(str(destination), cv2.cvtColor(overlay(image, heat), cv2.COLOR_RGB2BGR)):
      raise OSError(f"could not write {destination}")
    written.append({"image": path.stem, "file": destination.name,
                    "target": run.class_names[classes[0]] if classes else "lesion"})
  return {"out": str(out), "method": method, "layer": explainer.layer, "written": written}


def add_arguments(parser: argparse.ArgumentParser) -> None:
  run_lib.add_run_arguments(parser)
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, globs")
  parser.add_argument("--method", choices=METHODS, default="gradcam")
  parser.add_argument("--target", help="classification: the class explained, a name or index "
                      "(default: the predicted class)")
  parser.add_argument("--layer", help="gradcam/gradcampp: the module path whose map is used")
  parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                      help="integrated_gradients: points on the path")
  parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
  parser.add_argument("--metadata", metavar="FILE",
                      help="runs with clinical metadata: a CSV of image id and field columns "
                      "(as predict's), held fixed while each image is explained")


def main(args: argparse.Namespace) -> None:
  if args.tta not in (None, "none"):
    raise ValueError("--tta: explanations follow one view of each image (--tta none)")
  summary = explain_files(
      args.workdir, args.inputs, args.out, method=args.method, target=args.target,
      layer=args.layer, steps=args.steps, params=args.params, use_ema=args.ema,
      overwrite=args.overwrite, metadata=args.metadata)
  layer = f" at layer {summary['layer']}" if summary["layer"] else ""
  print(f"{len(summary['written'])} {summary['method']} maps{layer} written to {summary['out']}",
        flush=True)
