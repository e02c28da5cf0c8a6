"""flaxderm: JAX/Flax dermoscopy lesion segmentation and classification."""
__version__ = "0.1.0"


def __getattr__(name):
  # Lazy: importing flaxderm (e.g. for flaxderm.models) does not pull in the engine and TFDS.
  if name == "load_run":
    from flaxderm.tools.run import load_run  # pylint: disable=g-import-not-at-top
    return load_run
  raise AttributeError(f"module 'flaxderm' has no attribute {name!r}")
