"""benchmarks/product_branches.py: a product-of-experts run's held-out predictions split into its
image and metadata classifiers, each checked against the run's model with the other classifier's
weights set to zero."""
from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("sklearn")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import product_branches  # pylint: disable=g-import-not-at-top,wrong-import-position
from flaxderm.data import pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from flaxderm.models import fusion  # pylint: disable=g-import-not-at-top,wrong-import-position
from flaxderm.train import loop  # pylint: disable=g-import-not-at-top,wrong-import-position
from tiny_runs import metadata_config  # pylint: disable=g-import-not-at-top,wrong-import-position

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("private_data_dir")]


def _log_softmax(z):
  return np.asarray(jax.nn.log_softmax(jnp.asarray(z, jnp.float32), axis=-1))


def _without(member, layer: str) -> np.ndarray:
  """The run's held-out log-probabilities with ``layer``'s weights zeroed (no TTA)."""
  params = {**member.state.params,
            layer: jax.tree.map(jnp.zeros_like, member.state.params[layer])}
  state = member.state.replace(params=params)
  out = []
  for batch in pipeline.make_eval_iterator(member.data_cfg, global_batch_size=32):
    valid = np.asarray(batch["valid"]) > 0
    probs = member.infer(state, jnp.asarray(batch["image"]), jnp.asarray(batch["metadata"]))
    out.append(np.log(np.asarray(probs, np.float64)[valid]))
  return np.concatenate(out)


def test_the_branches_are_the_product_runs_two_classifiers(tmp_path, capsys):
  keep = tmp_path / "keep"
  cfg = metadata_config("product")
  cfg.num_steps = 8
  loop.train(cfg, keep / "flaxderm_0")
  labels, ids, logits, member = product_branches.branch_logits(keep / "flaxderm_0")
  assert len(labels) == len(set(ids)) == cfg.data.builder_kwargs["num_validation"]
  np.testing.assert_allclose(_log_softmax(logits["image branch"]),
                             _without(member, fusion.METADATA_HEAD), atol=1e-4)
  np.testing.assert_allclose(_log_softmax(logits["metadata branch"]),
                             _without(member, "head"), atol=1e-4)
  assert np.abs(logits["metadata branch"]).max() > 0  # the metadata classifier was trained

  assert product_branches.main([str(keep), "--folds", "1", "--no-append"]) == 0
  out = capsys.readouterr().out
  assert "| **product** | mean (min-max) |" in out
  assert "balanced accuracy: image branch / product / difference" in out
  assert "paired resamples of the same cases" in out
  with pytest.raises(SystemExit, match="flaxderm_1 holds no run"):
    product_branches.main([str(keep), "--folds", "2", "--no-append"])
