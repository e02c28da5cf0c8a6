"""benchmarks/train_step.py's options: batch sizes for every model or per model, and the rows
whose flaxderm model is registered under another name (no benchmark is run)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from flaxderm.models import model_entry

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import train_step  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_batch_sizes_for_every_model_or_per_model():
  resnet, unet = train_step.SPECS["resnet50"], train_step.SPECS["unet_resnet34"]
  every = train_step.parse_batch_sizes("2,8")
  assert train_step.batch_sizes_of(resnet, every) == (2, 8)
  per_model = train_step.parse_batch_sizes("resnet50=256, unet_resnet34=16,unet_resnet34=32")
  assert train_step.batch_sizes_of(resnet, per_model) == (256,)
  assert train_step.batch_sizes_of(unet, per_model) == (16, 32)
  vit = train_step.SPECS["vit_base"]
  assert train_step.batch_sizes_of(vit, per_model) == vit.batch_sizes
  assert train_step.batch_sizes_of(vit, None) == vit.batch_sizes


@pytest.mark.parametrize("text,message", [("resnet5=4", "unknown model 'resnet5'"),
                                          ("resnet50=0", "positive integer"),
                                          ("two", "positive integer")])
def test_bad_batch_sizes_are_named(text, message):
  with pytest.raises(ValueError, match=message):
    train_step.parse_batch_sizes(text)


def test_every_row_names_a_registered_model():
  for spec in train_step.SPECS.values():
    model_entry(spec.model)  # raises for an unknown name
  assert train_step.SPECS["unet_resnet34"].model == "unet"
