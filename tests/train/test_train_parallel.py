"""Data parallelism proofs on CPU: 8 simulated devices ("auto" and "pmap") and 2 processes
(``jax.distributed`` on 127.0.0.1) end with the parameters of a single-device run on the same
global batches -- BatchNorm included -- and a run saved on 8 devices resumes on 1.

The multi-device side runs in subprocesses (the device count is fixed when JAX starts); the
single-device references run in this process.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from flaxderm.data import pipeline
from flaxderm.train import loop

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

# A run whose global batches do not depend on how they are split: no shuffling, no augmentation,
# a constant learning rate (so a resumed run with more steps follows the same schedule), and SGD,
# whose update is linear in the gradient (Adam's m / sqrt(v) turns rounding noise in near-zero
# gradients into full-size steps of either sign, which would hide what is being compared).
CONFIG = textwrap.dedent("""
    from flaxderm.train import config as config_lib

    def tiny_config(data_dir, num_steps=4, parallel="auto"):
      c = config_lib.default_config()
      c.model.kwargs = {"base_width": 4, "depth": 2}
      c.data.data_dir = data_dir
      c.data.image_size = 16
      c.data.builder_kwargs = {"num_train": 24, "num_validation": 8, "num_test": 4,
                               "image_size": 32}
      c.data.shuffle = False
      c.data.augment.hflip.p = 0.0
      c.data.augment.vflip.p = 0.0
      c.optimizer.name = "sgd"
      c.optimizer.lr = 0.1
      c.batch_size = 8
      c.num_epochs = 0
      c.num_steps = num_steps
      c.eval.every_steps = 2
      c.eval.batch_size = 8
      c.progress_bar = False
      c.visualize_images = 0
      c.parallel = parallel
      return c
""")

DUMP = textwrap.dedent("""
    import numpy as np
    from flaxderm.train import parallel as parallel_lib

    def dump(path, state):
      flat = {"/".join(str(getattr(k, "key", k)) for k in p): v for p, v in
              jax.tree_util.tree_flatten_with_path(
                  parallel_lib.DataParallel.fetch((state.params, state.batch_stats)))[0]}
      np.savez(path, **flat)
""")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _flat(state) -> dict[str, np.ndarray]:
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get((state.params, state.batch_stats)))
  return {"/".join(str(getattr(k, "key", k)) for k in p): np.asarray(v) for p, v in leaves[0]}


def _assert_close(reference: dict, other, what: str):
  assert set(reference) == set(other), what
  for key in reference:
    np.testing.assert_allclose(other[key], reference[key], rtol=2e-4, atol=2e-5,
                               err_msg=f"{what}: {key}")


def _run(script: str, tmp_path: Path, name: str, env: dict[str, str] | None = None,
         args: tuple[str, ...] = ()) -> subprocess.Popen:
  path = tmp_path / f"{name}.py"
  path.write_text(script)
  return subprocess.Popen([sys.executable, str(path), *args], cwd=tmp_path,
                          env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen, timeout: float = 300) -> str:
  try:
    out, _ = process.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    process.kill()
    out, _ = process.communicate()
    pytest.fail(f"timed out after {timeout} s:\n{out[-6000:]}")
  assert process.returncode == 0, out[-4000:]
  return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
  """The tiny synthetic dataset, prepared once before any subprocess reads it."""
  return str(tmp_path_factory.mktemp("tfds"))


def test_eight_devices_auto_and_pmap_equal_one_device(tmp_path, data_dir, import_source):
  tiny_config = import_source("tiny_parallel_config", CONFIG).tiny_config
  pipeline.dataset_info(tiny_config(data_dir).data)
  script = CONFIG + DUMP + textwrap.dedent(f"""
      import sys
      from flaxderm.train import loop
      assert jax.device_count() == 8, jax.devices()
      for mode in ("auto", "pmap"):
        results = loop.train(tiny_config({data_dir!r}, parallel=mode), f"run_{{mode}}")
        dump(f"{{mode}}.npz", results["state"])
  """)
  process = _run("import jax\njax.config.update('jax_num_cpu_devices', 8)\n" + script, tmp_path,
                 "eight_devices")
  single = loop.train(tiny_config(data_dir), tmp_path / "run_single")
  reference = _flat(single["state"])
  _finish(process)
  for mode in ("auto", "pmap"):
    _assert_close(reference, dict(np.load(tmp_path / f"{mode}.npz")), f"8 devices, {mode}")
    metrics = json.loads((tmp_path / f"run_{mode}" / "results.json").read_text())["validation"]
    assert metrics["dice/per_image"] == pytest.approx(single["validation"]["dice/per_image"],
                                                      abs=1e-3)

  # Restoring onto another device count: the 8-device run, continued here on 1 device, ends
  # where the 1-device run continued for the same steps ends.
  shutil.copytree(tmp_path / "run_auto", tmp_path / "run_auto_then_one")
  moved = loop.train(tiny_config(data_dir, num_steps=6), tmp_path / "run_auto_then_one",
                     resume=True)
  stayed = loop.train(tiny_config(data_dir, num_steps=6), tmp_path / "run_single", resume=True)
  assert moved["step"] == stayed["step"] == 6
  _assert_close(_flat(stayed["state"]), _flat(moved["state"]), "8 devices -> 1 device")


def test_two_processes_train_together_like_one(tmp_path, data_dir, import_source):
  tiny_config = import_source("tiny_parallel_config", CONFIG).tiny_config
  pipeline.dataset_info(tiny_config(data_dir).data)
  port = _free_port()
  script = CONFIG + DUMP + textwrap.dedent(f"""
      import sys
      from flaxderm.train import loop, parallel
      index = int(sys.argv[1])
      parallel.initialize_distributed("127.0.0.1:{port}", 2, index)
      assert jax.process_count() == 2 and jax.device_count() == 2
      results = loop.train(tiny_config({data_dir!r}), "run_two")
      dump(f"process_{{index}}.npz", results["state"])
  """)
  workers = [_run("import jax\n" + script, tmp_path, f"worker_{i}", args=(str(i),))
             for i in range(2)]
  single = loop.train(tiny_config(data_dir), tmp_path / "run_one")
  for worker in workers:
    _finish(worker)
  first, second = (dict(np.load(tmp_path / f"process_{i}.npz")) for i in range(2))
  for key in first:
    np.testing.assert_array_equal(first[key], second[key], err_msg=key)
  _assert_close(_flat(single["state"]), first, "2 processes")
  assert (tmp_path / "run_two" / "checkpoints" / "4").is_dir()
