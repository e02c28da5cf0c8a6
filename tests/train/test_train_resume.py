"""A run killed with SIGKILL mid-training and resumed ends with the parameters of a run that was
never interrupted: checkpoints hold the model, optimiser, step, RNG and data-iterator position, and
a checkpoint cut off while being written is never the one resumed from."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from flaxderm.data import pipeline
from flaxderm.train import loop

pytestmark = pytest.mark.slow

NUM_STEPS = 40
CONFIG = textwrap.dedent(f"""
    from flaxderm.train import config as config_lib

    def tiny_config(data_dir):
      c = config_lib.default_config()
      c.model.kwargs = {{"base_width": 4, "depth": 2}}
      c.data.data_dir = data_dir
      c.data.image_size = 16
      c.data.builder_kwargs = {{"num_train": 24, "num_validation": 8, "num_test": 4,
                                "image_size": 32}}
      c.data.augment.rot90.p = 0.5  # shuffled, augmented batches: the data position matters
      c.optimizer.name = "adam"
      c.optimizer.lr = 3e-3
      c.optimizer.ema_decay = 0.9
      c.schedule.name = "cosine"
      c.batch_size = 4
      c.num_epochs = 0
      c.num_steps = {NUM_STEPS}
      c.eval.every_steps = 20
      c.eval.batch_size = 8
      c.checkpoint.every_steps = 2
      c.progress_bar = False
      c.visualize_images = 0
      return c
""")


def _steps_saved(workdir: Path) -> list[int]:
  folder = workdir / "checkpoints"
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def _flat(state) -> dict[str, np.ndarray]:
  leaves = jax.tree_util.tree_flatten_with_path(
      jax.device_get((state.params, state.batch_stats, state.ema_params)))[0]
  return {jax.tree_util.keystr(path): np.asarray(v) for path, v in leaves}


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, import_source):
  data_dir = str(tmp_path / "tfds")
  cfg = import_source("tiny_resume_config", CONFIG).tiny_config(data_dir)
  pipeline.dataset_info(cfg.data)  # prepared once, before the subprocess reads it

  killed_dir = tmp_path / "killed"
  script = tmp_path / "train_then_die.py"
  # Each step is slowed down so the kill lands between checkpoints, well before the end.
  script.write_text(CONFIG + textwrap.dedent(f"""
      import time
      from flaxderm.train import loop, parallel
      compiled = parallel.DataParallel.compile_train_step
      def slow(self, fn):
        step = compiled(self, fn)
        def run(*args):
          time.sleep(0.2)
          return step(*args)
        return run
      parallel.DataParallel.compile_train_step = slow
      loop.train(tiny_config({data_dir!r}), {str(killed_dir)!r})
  """))
  process = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 600
  while time.time() < deadline and process.poll() is None and max(_steps_saved(killed_dir),
                                                                  default=0) < 10:
    time.sleep(0.05)
  os.kill(process.pid, signal.SIGKILL)
  out, _ = process.communicate()
  assert process.returncode == -signal.SIGKILL, out[-3000:]
  saved = _steps_saved(killed_dir)
  assert saved and 10 <= max(saved) < NUM_STEPS, (saved, out[-3000:])

  resumed = loop.train(cfg, killed_dir, resume=True)
  uninterrupted = loop.train(cfg, tmp_path / "uninterrupted")
  assert resumed["step"] == uninterrupted["step"] == NUM_STEPS
  reference = _flat(uninterrupted["state"])
  other = _flat(resumed["state"])
  assert set(reference) == set(other)
  for key, value in reference.items():
    np.testing.assert_allclose(other[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
  assert resumed["validation"] == pytest.approx(uninterrupted["validation"], rel=1e-5)


def test_sigkill_during_the_first_checkpoint_write_then_resume_starts_cleanly(tmp_path,
                                                                               import_source):
  cfg = import_source("tiny_resume_config", CONFIG).tiny_config(str(tmp_path / "tfds"))
  pipeline.dataset_info(cfg.data)
  workdir = tmp_path / "run"
  script = tmp_path / "die_while_saving.py"
  # The process kills itself while orbax is still writing its first checkpoint (in the
  # background thread that save() starts), leaving only a temporary checkpoint folder.
  script.write_text(CONFIG + textwrap.dedent(f"""
      import os, signal
      import orbax.checkpoint as ocp
      from flaxderm.train import loop
      original = ocp.CheckpointManager.save
      def save_then_die(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
        return result
      ocp.CheckpointManager.save = save_then_die
      loop.train(tiny_config({str(tmp_path / "tfds")!r}), {str(workdir)!r})
  """))
  process = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                           text=True, timeout=600)
  assert process.returncode == -signal.SIGKILL, process.stdout[-3000:] + process.stderr[-3000:]
  assert (workdir / ".lock").read_text().strip(), "the killed run left its lock record"
  assert not _steps_saved(workdir), "no checkpoint was finalised"
  leftovers = [p.name for p in (workdir / "checkpoints").iterdir()]
  assert any("tmp" in name for name in leftovers), leftovers  # the half-written checkpoint

  resumed = loop.train(cfg, workdir, resume=True)
  assert resumed["step"] == NUM_STEPS
  assert _steps_saved(workdir)[-1] == NUM_STEPS
  assert not (workdir / ".lock").read_text().strip()
