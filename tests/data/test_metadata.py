"""Clinical metadata as a model input (issue 30 item 2): the encoding, its vocabulary, the refusal
of fields that derive from the label, and the pipeline's ``metadata`` batches."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from flaxderm.data import config as data_config
from flaxderm.data import metadata
from flaxderm.data import pipeline
from flaxderm.data import sources

RECORDS = [{"age": 30.0, "sex": "male", "site": "face"},
           {"age": 50.0, "sex": "female", "site": "back"},
           {"age": math.nan, "sex": "", "site": "face"}]


def test_vocabulary_from_training_records():
  vocabulary = metadata.fit_vocabulary(("age", "sex", "site"), RECORDS)
  assert vocabulary == {"age": {"mean": 40.0, "std": 10.0},
                        "sex": {"categories": ["female", "male"]},
                        "site": {"categories": ["back", "face"]}}


def test_encoding_scales_flags_missing_and_keeps_an_unknown_slot():
  encoder = metadata.MetadataEncoder(("age", "sex", "site"),
                                     metadata.fit_vocabulary(("age", "sex", "site"), RECORDS))
  assert encoder.names == ("age", "age:missing", "sex=female", "sex=male", "sex:unknown",
                           "site=back", "site=face", "site:unknown")
  np.testing.assert_array_equal(encoder.encode({"age": 60, "sex": "MALE", "site": "face"}),
                                [2.0, 0, 0, 1, 0, 0, 1, 0])
  # missing age and sex; a site training never saw goes to the unknown slot
  np.testing.assert_array_equal(encoder.encode({"age": None, "site": "scalp"}),
                                [0.0, 1, 0, 0, 1, 0, 0, 1])
  # records as TFDS gives them: bytes and float32 NaN
  np.testing.assert_array_equal(
      encoder.encode({"age": np.float32("nan"), "sex": b"female", "site": b"unknown"}),
      [0.0, 1, 1, 0, 0, 0, 0, 1])
  assert encoder.encode({}).dtype == np.float32


def test_encoding_errors_name_the_field():
  encoder = metadata.MetadataEncoder(("age", "sex"), {"age": {"mean": 0.0, "std": 1.0},
                                                      "sex": {"categories": ["male"]}})
  with pytest.raises(ValueError, match="image_7: field 'sex'.*not male, female"):
    encoder.encode({"sex": "other"}, owner="image_7")
  with pytest.raises(ValueError, match="image_7: field 'age'.*not a number"):
    encoder.encode({"age": "old"}, owner="image_7")
  with pytest.raises(ValueError, match=r"fields \['site'\] are not inputs of this model"):
    encoder.encode({"site": "face"})
  with pytest.raises(ValueError, match=r"no entry for \['site'\]"):
    metadata.MetadataEncoder(("age", "site"), {"age": {"mean": 0.0, "std": 1.0}})


def test_vocabulary_round_trips_through_the_config_json():
  cfg = data_config.default_data_config()
  cfg.metadata = ("age", "sex")
  cfg.metadata_vocabulary = metadata.fit_vocabulary(("age", "sex"), RECORDS)
  again = json.loads(json.dumps(cfg.to_dict()))
  a, b = metadata.encoder_of(cfg), metadata.encoder_of(again)
  assert a.names == b.names
  values = {"age": 30.0, "sex": "male"}
  np.testing.assert_array_equal(a.encode(values), b.encode(values))


@pytest.mark.parametrize("field, why", [
    ("dx_type", "how the diagnosis was confirmed"), ("dataset", "collection site"),
    ("biopsed", "biopsied lesions are the suspected cancers"), ("diagnostic", "the label itself")])
def test_fields_that_derive_from_the_label_are_refused(field, why):
  cfg = data_config.default_data_config()
  cfg.metadata = ("age", field)
  with pytest.raises(ValueError, match=f"data.metadata: '{field}' must never be a model input: "
                     f".*{why}"):
    data_config.validate_data_config(cfg)


def test_unknown_text_and_repeated_fields_are_refused():
  with pytest.raises(ValueError, match="not in the vocabulary"):
    metadata.check_inputs(("agee",))
  with pytest.raises(ValueError, match="'lesion_id' must never be a model input"):
    metadata.check_inputs(("lesion_id",))
  with pytest.raises(ValueError, match="more than once"):
    metadata.check_inputs(("age", "age"))


def _source() -> sources.InMemorySource:
  rng = np.random.default_rng(0)
  records = [{"image": rng.integers(0, 255, (20, 20, 3), np.uint8), "id": f"c{i}",
              "group": f"c{i}", "label": i % 2, **RECORDS[i % 3]} for i in range(6)]
  return sources.InMemorySource({"train": records[:4], "validation": records[4:]})


def test_batches_carry_the_metadata_encoded_with_the_training_vocabulary():
  cfg = data_config.default_data_config()
  cfg.update({"image_size": 16, "metadata": ("age", "sex"), "read_threads": 0, "prefetch": 0})
  source = _source()
  resolved = pipeline.with_metadata_vocabulary(cfg, source=source)
  # the training split holds ages 30, 50, NaN, 30
  assert resolved.metadata_vocabulary.age.to_dict() == pytest.approx(
      {"mean": 110 / 3, "std": float(np.std([30, 50, 30]))})
  batch = next(pipeline.make_eval_iterator(resolved, global_batch_size=4, source=source))
  assert batch["metadata"].shape == (4, 5) and batch["metadata"].dtype == np.float32
  encoder = metadata.encoder_of(resolved)
  np.testing.assert_array_equal(batch["metadata"][0], encoder.encode_record(RECORDS[1], "c4"))
  np.testing.assert_array_equal(batch["metadata"][2:], 0)  # padding
  train = next(pipeline.make_train_iterator(resolved, global_batch_size=2, seed=0, source=source))
  assert train["metadata"].shape == (2, 5)


def test_records_without_the_field_are_an_error():
  cfg = data_config.default_data_config()
  cfg.update({"image_size": 16, "metadata": ("fitzpatrick",)})
  with pytest.raises(ValueError, match="no clinical field 'fitzpatrick'.*carry \\['age'"):
    pipeline.with_metadata_vocabulary(cfg, source=_source())
