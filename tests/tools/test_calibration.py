"""Calibration metrics (oracles: netcal 1.4, scikit-learn) and temperature scaling of a run."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import optimize, special

from flaxderm.tools import calibration as calibration_lib
from flaxderm import metrics
from flaxderm.tools import predict as predict_lib
from flaxderm.tools import run as run_lib
from flaxderm.data import pipeline

from flaxderm import cli  # pylint: disable=g-import-not-at-top,wrong-import-position

netcal_metrics = pytest.importorskip("netcal.metrics")
sklearn_metrics = pytest.importorskip("sklearn.metrics")


def softmax(z: np.ndarray) -> np.ndarray:
  return special.softmax(z, axis=-1)


def mixed_multiclass(n: int = 3000, classes: int = 4, seed: int = 0):
  """Probabilities over- and under-confident by turns (labels drawn at another temperature per
  case), so binned gaps have both signs and the binnings disagree."""
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(n, classes)) * 2
  sharpness = rng.choice([0.4, 2.5], size=(n, 1))
  truth = softmax(logits * sharpness)
  labels = np.array([rng.choice(classes, p=p) for p in truth])
  return softmax(logits), labels


def mixed_binary(shape, seed: int = 0):
  rng = np.random.default_rng(seed)
  p = rng.uniform(size=shape)
  truth = special.expit(2.5 * special.logit(p))  # calibrated would be p itself
  return p, (rng.uniform(size=shape) < truth).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# metrics.calibration / reliability_bins.


@pytest.mark.parametrize("num_bins", [10, 15])
def test_multiclass_calibration_matches_netcal_and_sklearn(num_bins):
  probs, labels = mixed_multiclass()
  got = metrics.calibration(probs, labels, num_bins=num_bins)
  assert got["ece"] == pytest.approx(netcal_metrics.ECE(num_bins).measure(probs, labels), abs=1e-12)
  assert got["mce"] == pytest.approx(netcal_metrics.MCE(num_bins).measure(probs, labels), abs=1e-12)
  adaptive = netcal_metrics.ECE(num_bins, equal_intervals=False).measure(probs, labels)
  assert got["adaptive_ece"] == pytest.approx(adaptive, abs=1e-12)
  assert abs(got["ece"] - got["adaptive_ece"]) > 1e-3  # the two binnings are told apart
  assert got["brier"] == pytest.approx(sklearn_metrics.brier_score_loss(labels, probs), abs=1e-12)
  assert got["nll"] == pytest.approx(sklearn_metrics.log_loss(labels, probs), abs=1e-12)


@pytest.mark.parametrize("shape", [(2500,), (6, 20, 24)])  # a binary classifier; pixel maps
def test_binary_and_pixel_calibration_matches_netcal_and_sklearn(shape):
  probs, labels = mixed_binary(shape)
  got = metrics.calibration(probs, labels, num_bins=12)
  flat_p, flat_y = probs.reshape(-1), labels.reshape(-1)
  assert got["ece"] == pytest.approx(netcal_metrics.ECE(12).measure(flat_p, flat_y), abs=1e-12)
  assert got["mce"] == pytest.approx(netcal_metrics.MCE(12).measure(flat_p, flat_y), abs=1e-12)
  adaptive = netcal_metrics.ECE(12, equal_intervals=False).measure(flat_p, flat_y)
  assert got["adaptive_ece"] == pytest.approx(adaptive, abs=1e-12)
  assert got["brier"] == pytest.approx(sklearn_metrics.brier_score_loss(flat_y, flat_p), abs=1e-12)
  assert got["nll"] == pytest.approx(sklearn_metrics.log_loss(flat_y, flat_p), abs=1e-12)


def test_reliability_bins_are_the_binned_means_and_give_netcal_ace():
  probs, labels = mixed_multiclass(seed=1)
  confidence, accuracy, count = metrics.reliability_bins(probs, labels, num_bins=10)
  assert confidence.shape == accuracy.shape == count.shape == (10,)
  assert count.sum() == len(labels)
  top, hit = probs.max(axis=1), probs.argmax(axis=1) == labels
  for b in range(10):
    inside = (top >= b / 10) & (top < (b + 1) / 10)
    assert count[b] == inside.sum()
    if inside.any():
      assert confidence[b] == pytest.approx(top[inside].mean())
      assert accuracy[b] == pytest.approx(hit[inside].mean())
    else:
      assert np.isnan(confidence[b]) and np.isnan(accuracy[b])
  assert count[:2].sum() == 0 and np.isnan(confidence[0])  # top-label confidence >= 1/4
  # netcal's ACE (Neumann et al.): the unweighted mean gap over the non-empty bins.
  ace = netcal_metrics.ACE(10).measure(probs, labels)
  assert np.nanmean(np.abs(accuracy - confidence)) == pytest.approx(ace, abs=1e-12)


def test_two_class_probabilities_are_top_label_but_brier_and_nll_agree_with_binary():
  rng = np.random.default_rng(3)
  positive = rng.uniform(size=800)
  labels = (rng.uniform(size=800) < positive).astype(int)
  two = metrics.calibration(np.stack([1 - positive, positive], 1), labels)
  binary = metrics.calibration(positive, labels)
  assert two["brier"] == pytest.approx(binary["brier"])
  assert two["nll"] == pytest.approx(binary["nll"])
  confidence, _, count = metrics.reliability_bins(np.stack([1 - positive, positive], 1), labels,
                                                  num_bins=10)
  assert count[:5].sum() == 0 and not np.isnan(confidence[5:]).any()  # max(p, 1 - p) >= 0.5


def test_calibrated_probabilities_have_small_errors():
  rng = np.random.default_rng(4)
  p = rng.uniform(size=200_000)
  got = metrics.calibration(p, (rng.uniform(size=p.shape) < p).astype(int))
  assert got["ece"] < 0.005 and got["adaptive_ece"] < 0.005 and got["mce"] < 0.02
  assert got["brier"] == pytest.approx(1 / 6, abs=0.005)  # E[p (1 - p)] for p ~ U(0, 1)


def test_calibration_errors():
  probs, labels = mixed_multiclass(n=20)
  with pytest.raises(ValueError, match=r"got probabilities \(20, 4\) and labels \(19,\)"):
    metrics.calibration(probs, labels[:19])
  with pytest.raises(ValueError, match="class ids 0..3"):
    metrics.calibration(probs, labels + 4)
  with pytest.raises(ValueError, match="must be 0 or 1"):
    metrics.calibration(np.full((2, 3), 0.5), np.full((2, 3), 2))
  with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
    metrics.calibration(np.array([0.5, 1.5]), np.array([0, 1]))
  with pytest.raises(ValueError, match="num_bins must be a positive integer"):
    metrics.reliability_bins(probs, labels, num_bins=0)
  with pytest.raises(ValueError, match="no predictions"):
    metrics.calibration(np.zeros((0,)), np.zeros((0,), int))


# ----------------------------------------------------------------------------------------------
# Temperature fitting.


def reference_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
  """Brent's method on log T over the same NLL (scipy), as an oracle."""
  def nll(log_t):
    z = logits / np.exp(log_t)
    if z.shape[1] == 1:
      return np.mean(np.logaddexp(0, z[:, 0]) - z[:, 0] * labels)
    return np.mean(special.logsumexp(z, axis=1) - z[np.arange(len(labels)), labels])
  return float(np.exp(optimize.minimize_scalar(nll, bounds=(-4, 4), method="bounded",
                                               options={"xatol": 1e-10}).x))


def test_fit_temperature_recovers_a_known_temperature():
  rng = np.random.default_rng(0)
  calibrated = rng.normal(size=(20000, 5)) * 2  # labels drawn from softmax(calibrated)
  labels = (softmax(calibrated).cumsum(1) < rng.uniform(size=(20000, 1))).sum(1)
  fitted = calibration_lib.fit_temperature(calibrated * 3, labels)
  assert fitted == pytest.approx(3.0, rel=0.05)
  assert fitted == pytest.approx(reference_temperature(calibrated * 3, labels), rel=1e-6)
  before = metrics.calibration(softmax(calibrated * 3), labels)
  after = metrics.calibration(softmax(calibrated * 3 / fitted), labels)
  assert after["nll"] < before["nll"] and after["ece"] < before["ece"] / 3

  # One sigmoid channel, under-confident by 2 (the labels of whatever shape, here pixels).
  z = rng.normal(size=(40, 30, 30, 1)) * 3
  pixels = (rng.uniform(size=z.shape[:-1]) < special.expit(z[..., 0])).astype(int)
  fitted = calibration_lib.fit_temperature(z / 2, pixels)
  assert fitted == pytest.approx(0.5, rel=0.05)
  assert fitted == pytest.approx(reference_temperature(z.reshape(-1, 1) / 2, pixels.reshape(-1)),
                                 rel=1e-6)


def test_fit_temperature_stays_in_range_and_checks_inputs():
  low, high = calibration_lib.TEMPERATURE_RANGE
  separable = np.array([[2.0, -2.0], [-1.0, 1.0]])
  assert calibration_lib.fit_temperature(separable, np.array([0, 1])) == low
  assert calibration_lib.fit_temperature(separable, np.array([1, 0])) == high  # always wrong
  with pytest.raises(ValueError, match=r"logits \(..., C\) and labels"):
    calibration_lib.fit_temperature(separable, np.array([0, 1, 1]))
  with pytest.raises(ValueError, match="class ids 0..1"):
    calibration_lib.fit_temperature(separable[:, :1], np.array([0, 2]))


# ----------------------------------------------------------------------------------------------
# A run: launch.py evaluate --calibrate, load_run, predict.





@pytest.mark.slow
def test_evaluate_calibrate_stores_the_temperature_and_predict_applies_it(classification_run,
                                                                          tmp_path, capsys):
  run_dir = tmp_path / "run"
  shutil.copytree(classification_run, run_dir)
  images = [np.random.default_rng(i).integers(0, 256, (40, 50, 3), dtype=np.uint8)
            for i in range(3)]
  raw = run_lib.load_run(run_dir).probabilities(images)

  assert cli.main(["evaluate", "--workdir", str(run_dir), "--calibrate"]) == 0
  out = capsys.readouterr().out.strip().splitlines()
  assert out[0].split()[:3] == ["run", "T", "ece"] and "->" in out[1]
  assert "balanced_accuracy" in json.loads(out[-1])  # then the evaluation, as without
  saved = json.loads((run_dir / run_lib.CALIBRATION).read_text())
  t = saved["temperature"]
  assert calibration_lib.TEMPERATURE_RANGE[0] <= t <= calibration_lib.TEMPERATURE_RANGE[1]
  assert saved["cases"] == saved["predictions"] == 8 and saved["split"] == "validation"
  assert (saved["params"], saved["ema"], saved["tta"]) == ("last", False, "none")
  assert saved["after"]["nll"] <= saved["before"]["nll"] + 1e-12
  assert set(saved["before"]) == {"ece", "mce", "adaptive_ece", "brier", "nll"}
  assert f"{t:.4f}" in out[1]

  run = run_lib.load_run(run_dir)
  assert [m.temperature for m in run.members] == [t]
  scaled = [softmax(np.log(p) / t) for p in raw]
  for got, want in zip(run.probabilities(images), scaled):
    np.testing.assert_allclose(got, want, atol=1e-5)
  uncalibrated = run_lib.load_run(run_dir, calibrated=False).probabilities(images)
  np.testing.assert_allclose(np.stack(uncalibrated), np.stack(raw), atol=1e-7)

  (tmp_path / "in").mkdir()
  for i, image in enumerate(images):
    Image.fromarray(image).save(tmp_path / "in" / f"img{i}.png")  # lossless: the same pixels
  predict_lib.predict_files(run_dir, [str(tmp_path / "in")], tmp_path / "out", progress=False)
  with open(tmp_path / "out" / predict_lib.PREDICTIONS) as f:
    rows = list(csv.reader(f))[1:]
  for row, want in zip(rows, scaled):
    np.testing.assert_allclose([float(v) for v in row[1:]], want, atol=2e-6)


@pytest.mark.slow
def test_segmentation_calibration_per_pixel_and_per_fold(segmentation_run, tmp_path, caplog):
  cv = tmp_path / "cv"
  for fold in ("fold_0", "fold_1"):
    shutil.copytree(segmentation_run, cv / fold)
  image = np.random.default_rng(5).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  raw = run_lib.load_run(cv / "fold_0").probabilities([image])[0]
  results = calibration_lib.calibrate_run(cv)
  assert [Path(r["run"]).name for r in results] == ["fold_0", "fold_1"]
  assert results[0]["cases"] == 8 and results[0]["predictions"] == 8 * 32 * 32  # 32 px < grid
  assert results[0]["temperature"] == pytest.approx(results[1]["temperature"])  # same weights
  for result in results:
    assert result["after"]["nll"] <= result["before"]["nll"] + 1e-12
    saved = json.loads((Path(result["run"]) / run_lib.CALIBRATION).read_text())
    assert saved["temperature"] == result["temperature"]

  t = results[0]["temperature"]
  fold = run_lib.load_run(cv / "fold_0")
  assert fold.members[0].temperature == t
  x, _ = pipeline.model_input(image, fold.members[0].data_cfg)  # model resolution
  uncalibrated = run_lib.load_run(cv / "fold_0", calibrated=False)
  p0 = np.asarray(uncalibrated.forward(x[None]))[0]
  np.testing.assert_allclose(np.asarray(fold.forward(x[None]))[0],
                             special.expit(special.logit(p0.astype(np.float64)) / t), atol=1e-4)
  caplog.clear()
  run_lib.load_run(cv / "fold_0", tta="hflip")
  assert "was fitted for {'params': 'last', 'ema': False, 'tta': 'none'" in caplog.text
  ensemble = run_lib.load_run(cv)
  assert [m.temperature for m in ensemble.members] == [t, results[1]["temperature"]]
  assert np.array_equal(fold.predict(image), raw >= 0.5)  # T moves no mask pixel


def test_calibrate_errors_name_what_the_run_lacks(segmentation_run, tmp_path, capsys):
  no_checkpoint = tmp_path / "no_checkpoint"
  no_checkpoint.mkdir()
  for name in (run_lib.CONFIG, "run_info.json"):
    shutil.copy(segmentation_run / name, no_checkpoint / name)
  with pytest.raises(ValueError, match="no 'last' checkpoint"):
    calibration_lib.calibrate_run(no_checkpoint)

  all_data = tmp_path / "all_data"
  shutil.copytree(no_checkpoint, all_data)
  cfg = json.loads((all_data / run_lib.CONFIG).read_text())
  cfg["data"]["split"] = "all"
  (all_data / run_lib.CONFIG).write_text(json.dumps(cfg))
  assert cli.main(["evaluate", "--workdir", str(all_data), "--calibrate"]) == 1
  assert "no validation split to fit a temperature on" in capsys.readouterr().err
  with pytest.raises(ValueError, match="not a training run directory"):
    calibration_lib.calibrate_run(tmp_path / "nothing_here")
