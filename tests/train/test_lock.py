"""RunLock: one process at a time in a run directory; locks of dead processes are taken over."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from flaxderm.tools import evaluate as evaluate_lib
from flaxderm.train import config as config_lib
from flaxderm.train import loop
from flaxderm.train.lock import LOCK_NAME, RunDirectoryBusyError, RunLock

HOLD = textwrap.dedent("""
    import sys, time
    from flaxderm.train.lock import RunLock
    with RunLock(sys.argv[1], "training"):
      print("held", flush=True)
      time.sleep(600)
""")


def _holder(workdir):
  """A subprocess holding ``workdir``'s lock (started and confirmed)."""
  process = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir)], stdout=subprocess.PIPE,
                             text=True)
  assert process.stdout.readline().strip() == "held"
  return process


def test_second_process_gets_an_error_naming_the_owner(tmp_path):
  holder = _holder(tmp_path)
  try:
    with pytest.raises(RunDirectoryBusyError, match=(
        rf"{tmp_path} is in use by training \(pid {holder.pid} on host "
        rf"{socket.gethostname()}, since .*choose another --workdir")):
      with RunLock(tmp_path, "training"):
        pass
  finally:
    holder.kill()
    holder.wait()


def test_lock_of_a_killed_process_is_stale_and_taken_over(tmp_path, caplog):
  holder = _holder(tmp_path)
  os.kill(holder.pid, signal.SIGKILL)
  holder.wait()
  assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid
  with caplog.at_level("WARNING"), RunLock(tmp_path, "training"):
    owner = json.loads((tmp_path / LOCK_NAME).read_text())
    assert owner["pid"] == os.getpid() and owner["purpose"] == "training"
  assert f"stale lock of training (pid {holder.pid}" in caplog.text
  assert (tmp_path / LOCK_NAME).read_text() == ""  # released cleanly: nothing stale next time
  caplog.clear()
  with caplog.at_level("WARNING"), RunLock(tmp_path, "training"):
    pass
  assert "stale" not in caplog.text


def test_nested_use_in_one_process_is_refused(tmp_path):
  with RunLock(tmp_path, "training"):
    with pytest.raises(RunDirectoryBusyError, match=f"pid {os.getpid()}"):
      with RunLock(tmp_path, "evaluation"):
        pass


def test_training_and_evaluation_refuse_a_busy_run_directory(tmp_path):
  config_lib.save_config(config_lib.default_config(), tmp_path / "config.json")
  holder = _holder(tmp_path)
  try:
    with pytest.raises(RunDirectoryBusyError, match=f"pid {holder.pid}"):
      loop.train(config_lib.default_config(), tmp_path, resume=True)
    with pytest.raises(RunDirectoryBusyError, match=f"pid {holder.pid}"):
      evaluate_lib.evaluate_run(tmp_path)
  finally:
    holder.kill()
    holder.wait()


def test_evaluating_a_folder_that_is_no_run_creates_nothing(tmp_path):
  with pytest.raises(ValueError, match="not a training run directory"):
    evaluate_lib.evaluate_run(tmp_path / "nothing")
  assert not (tmp_path / "nothing").exists()
