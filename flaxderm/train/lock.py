"""One process at a time in a run directory: ``RunLock(workdir, purpose)``.

``<workdir>/.lock`` is held with ``flock`` for as long as the run (or evaluation) goes on and holds
the owner's pid, host, purpose and start time while it does. A second process gets
``RunDirectoryBusyError`` naming the owner. The kernel releases a ``flock`` when its process ends
in any way (``kill -9`` included), so a lock file left with an owner in it but no lock held is
stale: it is taken over with a warning naming the process that left it. On network file systems
this is as reliable as their ``flock`` (NFSv4 maps it to byte-range locks).
"""
from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import socket
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class RunDirectoryBusyError(ValueError):
  """Another live process holds the run directory."""


def _owner_text(owner: dict) -> str:
  return (f"{owner.get('purpose', '?')} (pid {owner.get('pid', '?')} on host "
          f"{owner.get('host', '?')}, since {owner.get('since', '?')})")


class RunLock:
  """Context manager holding ``workdir``'s lock; see the module docstring."""

  def __init__(self, workdir: str | os.PathLike, purpose: str):
    self.path = Path(workdir) / LOCK_NAME
    self.purpose = purpose
    self._fd: int | None = None

  def _read(self) -> dict:
    os.lseek(self._fd, 0, os.SEEK_SET)
    text = os.read(self._fd, 1 << 16).decode(errors="replace").strip()
    if not text:
      return {}
    try:
      return json.loads(text)
    except json.JSONDecodeError:
      return {"purpose": f"unreadable lock file ({text[:80]!r})"}

  def __enter__(self) -> "RunLock":
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      owner = self._read()
      os.close(self._fd)
      self._fd = None
      raise RunDirectoryBusyError(
          f"{self.path.parent} is in use by {_owner_text(owner)}; wait for it to finish, stop "
          "it, or choose another --workdir") from None
    previous = self._read()
    if previous:
      log.warning("%s: taking over the stale lock of %s, which ended without releasing it",
                  self.path, _owner_text(previous))
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": self.purpose,
             "since": datetime.datetime.now().isoformat(timespec="seconds")}
    os.ftruncate(self._fd, 0)
    os.pwrite(self._fd, (json.dumps(owner) + "\n").encode(), 0)
    os.fsync(self._fd)
    return self

  def __exit__(self, *exc) -> None:
    if self._fd is None:
      return
    os.ftruncate(self._fd, 0)  # an empty file: released cleanly, nothing stale
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None
