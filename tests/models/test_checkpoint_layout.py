"""Runs written before the re-layout of #29 (commit 940d636) still restore: every registered model
builds the parameter tree it built then (the layout its checkpoints hold), and a config.json of
that time loads, validates and builds the same model."""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from flaxderm.models import create_model, list_models, model_entry
from flaxderm.train import config as config_lib
from flaxderm.train import setup

DATA = Path(__file__).resolve().parent / "fixtures"
# name -> {"sha256" of the sorted (path, shape) leaves of its variables, "leaves", input "size"},
# for create_model(name, num_classes=3) at commit 940d636.
RECORDED = json.loads((DATA / "param_trees_940d636.json").read_text())


def _fingerprint(model, size: int) -> dict:
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             {"params": jax.random.key(0), "dropout": jax.random.key(1)},
                             jnp.zeros((1, size, size, 3)))
  leaves = sorted((jax.tree_util.keystr(path), tuple(leaf.shape))
                  for path, leaf in jax.tree_util.tree_leaves_with_path(dict(variables)))
  return {"sha256": hashlib.sha256(json.dumps(leaves).encode()).hexdigest(),
          "leaves": len(leaves), "size": size}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RECORDED))
def test_parameter_tree_is_the_one_checkpoints_hold(name):
  size = RECORDED[name]["size"]
  assert size == max(64, model_entry(name).min_input_size or 0)
  assert _fingerprint(create_model(name, num_classes=3), size) == RECORDED[name]


def test_every_model_of_that_time_is_still_registered():
  assert set(RECORDED) <= set(list_models())


def test_config_of_that_time_builds_the_same_model():
  """vit_ham10000:runlocal as saved then: model.kwargs.img_size written by hand (now derived from
  data.image_size when absent)."""
  cfg = config_lib.load_config(DATA / "config_940d636.json")
  config_lib.validate_config(cfg)
  info = setup.RunInfo("classification", tuple("abcdefg"), 7)
  then = setup.make_model(cfg, info)
  derived = config_lib.load_config(DATA / "config_940d636.json")
  del derived.model.kwargs["img_size"]
  now = setup.make_model(derived, info)
  size = cfg.data.image_size
  assert then.img_size == now.img_size == size
  assert _fingerprint(then, size) == _fingerprint(now, size)
