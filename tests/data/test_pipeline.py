"""grain pipelines: batch contract, determinism, checkpoints, sharding, splits, sampling, cache."""
from __future__ import annotations

import collections
import hashlib
import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

from flaxderm.data import config as config_lib
from flaxderm.data import pipeline
from flaxderm.data import sources
from flaxderm.data import splits


def lesion_record(i, *, size=(40, 52), labels=3, encoded=False, with_mask=True):
  """Light skin with a dark disc whose position depends on ``i``; the mask is the disc."""
  height, width = size
  rng = np.random.default_rng(i)
  mask = np.zeros((height, width), np.uint8)
  center = (int(rng.integers(14, width - 14)), int(rng.integers(12, height - 12)))
  cv2.circle(mask, center, 9, 1, -1)
  image = np.where(mask[..., None] > 0, np.uint8([70, 40, 30]), np.uint8([220, 190, 180]))
  image = image.astype(np.uint8)
  record = {"image": image, "id": f"IMG{i:03d}".encode(), "group": f"L{i // 2:03d}".encode(),
            "label": i % labels}
  if with_mask:
    record["mask"] = mask[..., None]
  if encoded:
    record["image"] = cv2.imencode(".png", image[..., ::-1])[1].tobytes()
    if with_mask:
      record["mask"] = cv2.imencode(".png", mask)[1].tobytes()
  return record


def memory_source(n_train=24, n_test=7, **kw):
  return sources.InMemorySource(
      {"train": [lesion_record(i, **kw) for i in range(n_train)],
       "test": [lesion_record(100 + i, **kw) for i in range(n_test)]},
      class_names=["nevus", "melanoma", "keratosis"])


def small_config(**overrides):
  cfg = config_lib.default_data_config()
  cfg.image_size = 32
  cfg.read_threads = 0
  for key, value in overrides.items():
    cfg[key] = value
  return cfg


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])


# ------------------------------------------------------------------------------------------------
# Config.


def test_default_config_has_every_option():
  cfg = config_lib.default_data_config()
  for key in ("name", "builder_config", "builder_kwargs", "data_dir", "manual_dir",
              "skip_bad_examples", "split", "source_split", "train_split", "eval_split",
              "image_size", "resize", "normalization", "preprocess", "augment",
              "class_balanced", "num_workers", "cache", "shuffle", "fold", "num_folds"):
    assert key in cfg, key
  assert cfg.name == "synthetic_lesions" and cfg.image_size == 64
  assert cfg.preprocess.hair.kernel_size == 9 and cfg.preprocess.black_frame.threshold == 20
  assert cfg.augment.elastic.p == 0.0 and "alpha" in cfg.augment.elastic
  config_lib.validate_data_config(cfg)


@pytest.mark.parametrize("key,value,message", [
    ("normalization", "caffe", "data.normalization"),
    ("image_size", 0, "data.image_size"),
    ("resize", "zoom", "data.resize"),
    ("split", "random", "data.split"),
    ("task", "detection", "data.task"),
    ("crop_fraction", 1.5, "data.crop_fraction"),
    ("train_crop", "zoom", "data.train_crop"),
])
def test_bad_config_values_name_the_key(key, value, message):
  cfg = config_lib.default_data_config()
  cfg[key] = value
  with pytest.raises(ValueError, match=message.replace(".", r"\.")):
    config_lib.validate_data_config(cfg)


def test_bad_config_keys_and_folds_name_the_key():
  cfg = config_lib.default_data_config()
  cfg.augment.blur = {"p": 0.5}
  with pytest.raises(ValueError, match=r"data\.augment\.blur"):
    config_lib.validate_data_config(cfg)
  cfg = config_lib.default_data_config()
  cfg.preprocess.hair.width = 3
  with pytest.raises(ValueError, match=r"data\.preprocess\.hair\.width"):
    config_lib.validate_data_config(cfg)
  cfg = config_lib.default_data_config()
  cfg.batch_size = 3
  with pytest.raises(ValueError, match=r"data\.batch_size"):
    config_lib.validate_data_config(cfg)
  cfg = small_config(train_crop="random", resize="pad")
  with pytest.raises(ValueError, match=r"data\.train_crop='random' needs data\.resize='crop'"):
    config_lib.validate_data_config(cfg)
  cfg = small_config(split="kfold", num_folds=5, fold=5)
  with pytest.raises(ValueError, match=r"data\.fold"):
    pipeline.make_train_iterator(cfg, global_batch_size=4, seed=0, source=memory_source())


# ------------------------------------------------------------------------------------------------
# Batches.


@pytest.mark.parametrize("encoded", [False, True])
def test_train_batch_contract(encoded):
  source = memory_source(encoded=encoded)
  it = pipeline.make_train_iterator(small_config(), global_batch_size=8, seed=0, source=source)
  batch = next(it)
  assert set(batch) == {"image", "mask", "label", "valid", "id"}
  assert batch["image"].dtype == np.float32 and batch["image"].shape == (8, 32, 32, 3)
  assert batch["mask"].dtype == np.int32 and batch["mask"].shape == (8, 32, 32)
  assert set(np.unique(batch["mask"])) <= {0, 1} and batch["mask"].any()
  assert batch["label"].dtype == np.int32 and batch["label"].shape == (8,)
  assert batch["valid"].dtype == np.float32 and (batch["valid"] == 1).all()
  assert batch["id"].dtype.kind == "U" and all(i.startswith("IMG") for i in batch["id"])


def test_classification_batches_and_info():
  source = memory_source(with_mask=False)
  cfg = small_config(normalization="symmetric")
  info = pipeline.dataset_info(cfg, source=source)
  assert info.task == "classification" and info.num_classes == 3
  assert info.class_names == ("nevus", "melanoma", "keratosis")
  assert info.num_examples == {"train": 24, "test": 7}
  batch = next(pipeline.make_train_iterator(cfg, global_batch_size=4, seed=0, source=source))
  assert set(batch) == {"image", "label", "valid", "id"}
  assert batch["image"].min() >= -1 and batch["image"].max() <= 1
  with pytest.raises(ValueError, match="no masks"):
    pipeline.dataset_info(small_config(task="segmentation"), source=source)


def test_segmentation_info_keeps_label_names():
  info = pipeline.dataset_info(small_config(), source=memory_source())
  assert info.task == "segmentation" and info.num_classes == 2
  assert info.class_names == ("background", "lesion")
  assert info.label_names == ("nevus", "melanoma", "keratosis")
  info = pipeline.dataset_info(small_config(task="classification"), source=memory_source())
  assert info.task == "classification" and info.num_classes == 3


def test_image_mask_alignment_through_augmentation():
  cfg = small_config(normalization="unit")
  # Paste is exact on its own (test_augment) but can cut a blurred edge away from its mask edge.
  for name in ("hflip", "vflip", "rot90", "rotate", "shift", "crop", "elastic"):
    cfg.augment[name].p = 1.0
  it = pipeline.make_train_iterator(cfg, global_batch_size=8, seed=3, source=memory_source())
  # Chained interpolations blur the image's lesion edge (mirrored at reflected borders, widened by
  # the crop's zoom), so image and mask may disagree within 3 px of a mask edge, nowhere else.
  kernel = np.ones((7, 7), np.uint8)
  grow = lambda m, op: op(m, kernel, borderType=cv2.BORDER_REFLECT_101)  # noqa: E731
  for batch in take(it, 3):
    for image, mask in zip(batch["image"], batch["mask"].astype(np.uint8)):
      disagree = (image.mean(-1) < 0.5) != (mask > 0)
      edge = grow(mask, cv2.dilate) != grow(mask, cv2.erode)
      assert disagree[~edge].mean() < 0.002 and disagree.mean() < 0.06


def test_resize_keeps_proportions():
  """Discs stay round with center crop + proportional resize; "stretch" squashes them."""
  def aspect(mode):  # x/y spread of every whole disc in the batch
    cfg = small_config(resize=mode)
    batch = next(pipeline.make_eval_iterator(cfg, "train", global_batch_size=24,
                                             source=memory_source()))
    for mask in batch["mask"]:
      ys, xs = np.nonzero(mask)
      if ys.size and 0 < xs.min() and xs.max() < 31 and 0 < ys.min() and ys.max() < 31:
        yield xs.std() / ys.std()

  assert all(0.9 < a < 1.1 for a in aspect("crop"))
  assert all(0.9 < a < 1.1 for a in aspect("pad"))
  assert all(0.65 < a < 0.9 for a in aspect("stretch"))  # x by 32/52, y by 32/40: 0.77


def test_random_train_crop_sees_the_sides_evaluation_crops_away():
  """``train_crop="random"``: windows of the centred square's scale at random positions, so the
  image's ends (marked green here) reach training, never evaluation; mask stays aligned."""
  def marked(i):
    record = lesion_record(i)
    record["image"] = record["image"].copy()
    record["image"][:, :4] = record["image"][:, -4:] = (0, 255, 0)  # outside the 40 px square
    return record

  source = sources.InMemorySource({"train": [marked(i) for i in range(8)]},
                                   class_names=["nevus", "melanoma", "keratosis"])
  cfg = small_config(normalization="unit", train_crop="random", shuffle=False)
  cfg.augment.hflip.p = cfg.augment.vflip.p = 0.0
  green = lambda images: (images[..., 1] > 0.9) & (images[..., 0] < 0.1)  # noqa: E731
  evaluation = next(pipeline.make_eval_iterator(cfg, "train", global_batch_size=8,
                                                source=source))
  assert not green(evaluation["image"]).any()
  batches = take(pipeline.make_train_iterator(cfg, global_batch_size=8, seed=0, source=source), 4)
  images = np.concatenate([b["image"] for b in batches])
  assert images.shape == (32, 32, 32, 3)
  # A 40x52 image at the 40 -> 32 px scale is 32x42: only windows near either end show green.
  assert 0 < green(images).any(axis=(1, 2)).mean() < 1
  windows = {b["image"][0].tobytes() for b in batches}  # record 0 in four epochs
  assert len(windows) > 1
  for batch in batches:
    lesion = (batch["image"].mean(-1) < 0.5) & ~green(batch["image"])
    assert ((batch["mask"] > 0) != lesion).mean() < 0.02


# ------------------------------------------------------------------------------------------------
# Determinism and checkpointing.


def test_train_iterator_is_deterministic_under_the_seed():
  def batches(seed, read_threads):
    cfg = small_config(read_threads=read_threads)
    cfg.augment.rotate.p = cfg.augment.noise.p = 0.5
    return take(pipeline.make_train_iterator(cfg, global_batch_size=4, seed=seed,
                                             source=memory_source()), 8)

  first = batches(0, 0)
  for a, b in zip(first, batches(0, 0)):
    assert_batches_equal(a, b)
  for a, b in zip(first, batches(0, 2)):  # threads change speed, never the stream
    assert_batches_equal(a, b)
  assert any(not np.array_equal(a["image"], b["image"]) for a, b in zip(first, batches(1, 0)))


@pytest.mark.parametrize("read_threads,class_balanced", [(0, False), (2, False), (2, True)])
def test_checkpoint_restores_the_exact_next_batch(read_threads, class_balanced):
  cfg = small_config(read_threads=read_threads, class_balanced=class_balanced)
  cfg.augment.elastic.p = cfg.augment.color_jitter.p = 0.5
  source = memory_source()
  it = pipeline.make_train_iterator(cfg, global_batch_size=4, seed=7, source=source)
  take(it, 9)  # past the first epoch (24 records = 6 batches)
  state = it.get_state()
  expected = take(it, 3)
  restored = pipeline.make_train_iterator(cfg, global_batch_size=4, seed=7, source=source)
  restored.set_state(state)
  for a, b in zip(expected, take(restored, 3)):
    assert_batches_equal(a, b)


def test_epochs_cover_the_split_and_reshuffle():
  cfg = small_config()
  it = pipeline.make_train_iterator(cfg, global_batch_size=6, seed=0, source=memory_source())
  epochs = [np.concatenate([b["id"] for b in take(it, 4)]) for _ in range(2)]
  for ids in epochs:
    assert sorted(ids) == [f"IMG{i:03d}" for i in range(24)]
  assert list(epochs[0]) != list(epochs[1])
  cfg.shuffle = False
  it = pipeline.make_train_iterator(cfg, global_batch_size=6, seed=0, source=memory_source())
  assert list(next(it)["id"]) == [f"IMG{i:03d}" for i in range(6)]


def test_processes_read_disjoint_shards():
  cfg = small_config()
  ids = []
  for process_index in range(2):
    it = pipeline.make_train_iterator(cfg, global_batch_size=8, seed=0, source=memory_source(),
                                      process_index=process_index, process_count=2)
    batches = take(it, 3)  # 3 x 4 = one epoch of the 12 records of this process
    assert batches[0]["image"].shape[0] == 4
    ids.append(set(np.concatenate([b["id"] for b in batches])))
  assert not ids[0] & ids[1] and len(ids[0] | ids[1]) == 24
  with pytest.raises(ValueError, match="multiple of process_count"):
    pipeline.make_train_iterator(cfg, global_batch_size=7, seed=0, source=memory_source(),
                                 process_count=2)


# ------------------------------------------------------------------------------------------------
# Eval.


def test_eval_is_one_padded_pass_without_augmentation():
  cfg = small_config()
  for name in ("rotate", "noise", "color_jitter"):
    cfg.augment[name].p = 1.0
  batches = list(pipeline.make_eval_iterator(cfg, "test", global_batch_size=4,
                                             source=memory_source()))
  assert len(batches) == 2
  ids = np.concatenate([b["id"] for b in batches])
  valid = np.concatenate([b["valid"] for b in batches])
  assert list(ids[:7]) == [f"IMG{100 + i:03d}" for i in range(7)] and ids[7] == ""
  np.testing.assert_array_equal(valid, [1] * 7 + [0])
  assert all(b["image"].shape == (4, 32, 32, 3) for b in batches)
  assert batches[1]["mask"][3].sum() == 0
  again = list(pipeline.make_eval_iterator(cfg, "test", global_batch_size=4,
                                           source=memory_source()))
  for a, b in zip(batches, again):
    assert_batches_equal(a, b)


def test_eval_processes_get_equal_batch_counts():
  cfg = small_config()
  seen, counts = [], []
  for process_index in range(3):
    batches = list(pipeline.make_eval_iterator(cfg, "test", global_batch_size=6,
                                               source=memory_source(),
                                               process_index=process_index, process_count=3))
    counts.append(len(batches))
    for b in batches:
      seen += [i for i, v in zip(b["id"], b["valid"]) if v]
  assert counts == [2, 2, 2] or len(set(counts)) == 1
  assert sorted(seen) == [f"IMG{100 + i:03d}" for i in range(7)]


# ------------------------------------------------------------------------------------------------
# Splits.


def reference_is_validation():
  """The reference runs' own rule when ../shared/reference is present, else its formula."""
  path = Path(__file__).resolve().parents[3] / "shared" / "reference" / "common.py"
  if path.exists():
    spec = importlib.util.spec_from_file_location("reference_common", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.is_validation
  return lambda key: int(hashlib.md5(f"val:{key}".encode()).hexdigest()[:8], 16) % 10 < 3


def test_is_validation_matches_the_reference_exactly():
  reference = reference_is_validation()
  keys = [f"IMD{i:03d}" for i in range(500)] + [f"HAM_{i:07d}" for i in range(500)]
  assert [splits.is_validation(k) for k in keys] == [reference(k) for k in keys]
  assert 0.25 < np.mean([splits.is_validation(k) for k in keys]) < 0.35


def test_hashed_split_by_group():
  source = memory_source(n_train=60)
  cfg = small_config(split="hashed")
  reference = reference_is_validation()
  parts = {}
  for name in ("train", "validation"):
    batches = list(pipeline.make_eval_iterator(cfg, name, global_batch_size=8, source=source))
    parts[name] = {i for b in batches for i, v in zip(b["id"], b["valid"]) if v}
  groups = {f"IMG{i:03d}": f"L{i // 2:03d}" for i in range(60)}
  assert parts["validation"] == {i for i, g in groups.items() if reference(g)}
  assert parts["train"] == {i for i, g in groups.items() if not reference(g)}
  info = pipeline.dataset_info(cfg, source=source)
  assert info.num_examples["train"] + info.num_examples["validation"] == 60
  assert info.num_examples["test"] == 7
  train_ids = set(np.concatenate([b["id"] for b in take(pipeline.make_train_iterator(
      cfg, global_batch_size=4, seed=0, source=source), 10)]))
  assert train_ids <= parts["train"]


def test_all_split_trains_on_everything():
  cfg = small_config(split="all", source_split="train+test")
  info = pipeline.dataset_info(cfg, source=memory_source())
  assert info.num_examples["train"] == 31
  it = pipeline.make_train_iterator(cfg, global_batch_size=31, seed=0, source=memory_source())
  assert len(set(next(it)["id"])) == 31
  with pytest.raises(ValueError, match="'validation' does not exist"):
    pipeline.make_eval_iterator(cfg, "validation", global_batch_size=4, source=memory_source())


def test_kfold_partitions_groups_and_stratifies():
  n = 90
  source = memory_source(n_train=n)
  folds = []
  for fold in range(5):
    cfg = small_config(split="kfold", num_folds=5, fold=fold)
    _, train = splits.resolve_split(source, cfg, "train")
    _, validation = splits.resolve_split(source, cfg, "validation")
    assert not set(train) & set(validation) and len(train) + len(validation) == n
    train_groups = {i // 2 for i in train}
    assert not train_groups & {i // 2 for i in validation}  # lesions never straddle
    counts = collections.Counter(i % 3 for i in validation)
    assert max(counts.values()) - min(counts.values()) <= 2  # stratified by label
    folds.append(validation)
  assert sorted(np.concatenate(folds)) == list(range(n))
  with pytest.raises(ValueError, match="data.num_folds"):
    splits.kfold_split(["a", "b"], None, num_folds=3, fold=0)
  grouped = splits.kfold_split([f"g{i // 3}" for i in range(30)], None, num_folds=5, fold=2)
  assert not {i // 3 for i in grouped[0]} & {i // 3 for i in grouped[1]}


# ------------------------------------------------------------------------------------------------
# Sampling, cache, normalisation statistics.


def test_class_balanced_sampling_equalises_labels():
  records = [lesion_record(i, labels=1) for i in range(30)]
  for i, record in enumerate(records):
    record["label"] = 0 if i < 24 else (1 if i < 28 else 2)  # 24 / 4 / 2
  source = sources.InMemorySource({"train": records}, class_names=["a", "b", "c"])
  cfg = small_config(class_balanced=True)
  labels = np.concatenate([b["label"] for b in take(pipeline.make_train_iterator(
      cfg, global_batch_size=6, seed=0, source=source), 10)])
  np.testing.assert_array_equal(np.bincount(labels), [20, 20, 20])
  cfg.class_balanced = False
  labels = np.concatenate([b["label"] for b in take(pipeline.make_train_iterator(
      cfg, global_batch_size=6, seed=0, source=source), 5)])
  np.testing.assert_array_equal(np.bincount(labels), [24, 4, 2])


def test_cache_prepares_each_record_once(monkeypatch):
  calls = collections.Counter()
  original = pipeline.preprocess_lib.preprocess

  def counting(image, mask, cfg):
    calls[image.tobytes()[:64]] += 1
    return original(image, mask, cfg)

  monkeypatch.setattr(pipeline.preprocess_lib, "preprocess", counting)
  source = memory_source(n_train=12)
  for cache, expected in [(False, 36), (True, 12)]:
    calls.clear()
    cfg = small_config(cache=cache)
    it = pipeline.make_train_iterator(cfg, global_batch_size=4, seed=0, source=source)
    uncached = take(it, 9)  # 3 epochs
    assert sum(calls.values()) == expected
  cached = take(pipeline.make_train_iterator(small_config(cache=True), global_batch_size=4,
                                             seed=0, source=source), 9)
  for a, b in zip(uncached, cached):
    assert_batches_equal(a, b)
  pipeline.clear_cache()


def test_dataset_normalization_statistics():
  source = memory_source()
  cfg = small_config(normalization="dataset")
  cfg.augment.hflip.p = cfg.augment.vflip.p = 0.0
  mean, std = pipeline.dataset_statistics(cfg, source=source)
  assert len(mean) == 3 and all(0 < s < 1 for s in std)
  images = np.concatenate([b["image"] for b in pipeline.make_eval_iterator(
      cfg, "train", global_batch_size=8, source=source)])
  np.testing.assert_allclose(images.mean((0, 1, 2)), 0, atol=1e-3)
  np.testing.assert_allclose(images.std((0, 1, 2)), 1, atol=1e-3)
  cfg.mean, cfg.std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
  batch = next(pipeline.make_eval_iterator(cfg, "train", global_batch_size=8, source=source))
  assert batch["image"].max() <= 2 + 1e-6


def test_preprocessing_runs_in_the_pipeline():
  records = [lesion_record(i) for i in range(4)]
  for record in records:
    record["image"] = record["image"].copy()
    record["image"][:4] = 0  # a black band of 4 rows: cropped, mask cropped alike
  source = sources.InMemorySource({"train": records})
  unit = small_config(normalization="unit")
  unit.preprocess.remove_black_frame = True
  batch = next(pipeline.make_eval_iterator(unit, "train", global_batch_size=4, source=source))
  assert batch["image"].max(-1).min() > 0.2  # no black rows left
  assert ((batch["image"].mean(-1) < 0.5) == (batch["mask"] > 0)).mean() > 0.97


@pytest.mark.slow
def test_worker_processes_match_in_process_batches():
  cfg = small_config()
  cfg.augment.rotate.p = 0.5
  source = memory_source()
  expected = take(pipeline.make_train_iterator(cfg, global_batch_size=4, seed=0, source=source), 3)
  cfg.num_workers = 1
  got = take(pipeline.make_train_iterator(cfg, global_batch_size=4, seed=0, source=source), 3)
  for a, b in zip(expected, got):
    assert_batches_equal(a, b)


# ------------------------------------------------------------------------------------------------
# TFDS: the real synthetic_lesions builder.


@pytest.fixture(scope="module")
def synthetic_cfg(tmp_path_factory):
  builders = pytest.importorskip("flaxderm.data.builders")
  if not hasattr(builders, "prepare"):
    pytest.skip("flaxderm.data.builders.prepare is not written yet")
  cfg = small_config(data_dir=str(tmp_path_factory.mktemp("tfds")))
  cfg.builder_kwargs.update(num_train=24, num_validation=8, num_test=4, image_size=48)
  return cfg


def test_synthetic_lesions_end_to_end(synthetic_cfg):
  cfg = synthetic_cfg
  info = pipeline.dataset_info(cfg)
  assert info.task == "segmentation" and info.num_classes == 2 and len(info.label_names) == 3
  assert info.num_examples == {"train": 24, "validation": 8, "test": 4}
  it = pipeline.make_train_iterator(cfg, global_batch_size=4, seed=0)
  batch = next(it)
  assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.float32
  assert batch["mask"].dtype == np.int32 and set(np.unique(batch["mask"])) <= {0, 1}
  assert batch["label"].dtype == np.int32 and batch["id"][0].startswith("synthetic_train_")
  state = it.get_state()
  expected = take(it, 2)
  restored = pipeline.make_train_iterator(cfg, global_batch_size=4, seed=0)
  restored.set_state(state)
  for a, b in zip(expected, take(restored, 2)):
    assert_batches_equal(a, b)
  batches = list(pipeline.make_eval_iterator(cfg, "validation", global_batch_size=3))
  assert len(batches) == 3 and sum(b["valid"].sum() for b in batches) == 8
  hashed = small_config(data_dir=cfg.data_dir, split="hashed", source_split="train+validation")
  hashed.builder_kwargs.update(cfg.builder_kwargs)
  hashed_info = pipeline.dataset_info(hashed)
  groups = [f"synthetic_{s}_{i:06d}" for s, n in (("train", 24), ("validation", 8))
            for i in range(n)]
  assert hashed_info.num_examples["validation"] == sum(map(splits.is_validation, groups))
  assert hashed_info.num_examples["train"] + hashed_info.num_examples["validation"] == 32
