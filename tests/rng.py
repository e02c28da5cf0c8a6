"""Random keys for the tests' models (importable as ``rng`` through pyproject's
``pythonpath = ["tests"]``)."""
from __future__ import annotations

import jax


def rbg_key(seed: int) -> jax.Array:
  """An "rbg" key: XLA:CPU compiles threefry initialisation of a model's many parameters several
  times slower, which dominated the model tests' time (the trainer initialises with rbg keys too,
  flaxderm/train/setup.py); the values do not matter to these tests."""
  return jax.random.key(seed, impl="rbg")
