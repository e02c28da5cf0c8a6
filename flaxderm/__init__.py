"""flaxderm: JAX/Flax dermoscopy lesion segmentation and classification.

Layers, each importing only those listed before it:

* ``models`` (architectures, weights, converters), ``losses``, ``metrics``, ``data`` (builders,
  sources, splits, pipelines): they know nothing of training. ``attribution`` (Grad-CAM and
  gradient maps) builds on ``models``, ``subgroups`` (per-group statistics, cluster bootstrap,
  equalized odds) on ``metrics``. ``hints`` (the "did you mean" of an error) sits below all.
* ``train``: the engine that composes them.
* ``tools``: the commands (train an experiment, evaluate, predict, export, explain, report,
  compare) and ``load_run``; ``cli`` dispatches to them; ``experiments`` are config files.
"""
__version__ = "0.1.0"


def __getattr__(name):
  # Lazy: importing flaxderm (e.g. for flaxderm.models) does not pull in the engine and TFDS.
  if name == "load_run":
    from flaxderm.tools.run import load_run  # pylint: disable=g-import-not-at-top
    return load_run
  raise AttributeError(f"module 'flaxderm' has no attribute {name!r}")
