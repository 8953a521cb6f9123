"""One writer per output folder: FOLDER/LOCK, an flock holding its holder's PID and host.

A run directory (train.main) and a prepared dataset (train.prepare) take it while they write;
a second process that asks for a held lock gets one error naming the holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def held(
  path: Path,
  error: Callable[[str], Exception],
  advice: str,
  say: Callable[[str], None] = print,
) -> Iterator[None]:
  """Holds the lock file `path` (an flock, and this PID and host for the message) while the block
  runs. A lock left by a process that died is taken over, with a message.

  Args:
    path: the lock file (its folder must exist).
    error: makes the exception raised, from its message.
    advice: what the message tells the user to do when the lock is held.
    say: where the take-over message goes.

  Raises:
    What `error` makes: when another live process holds the lock, or it cannot be created.
  """
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise error(f"cannot create {path}: {e.strerror}") from e
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise error(
        f"{path.parent} is in use by {_text(fd) or 'another process'} (its {path.name} is "
        f"held); {advice}"
      ) from None
    stale = _text(fd)
    if stale:  # a holder that is gone: its flock went with it, its PID stayed
      say(f"taking over {path}, left by {stale}, which is no longer running")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
    try:
      yield
    finally:
      os.ftruncate(fd, 0)  # emptied, not removed: removing would race with a waiting process
  finally:
    os.close(fd)  # releases the flock


def holder(path: Path) -> str | None:
  """Who holds the lock file now ('pid N on HOST'), or None; takes nothing."""
  try:
    fd = os.open(path, os.O_RDONLY)
  except FileNotFoundError:
    return None
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # granted unless someone holds it exclusively
    fcntl.flock(fd, fcntl.LOCK_UN)
    return None
  except BlockingIOError:
    return _text(fd) or "another process"
  finally:
    os.close(fd)


def _text(fd: int) -> str:
  """The holder a lock file names ('pid N on HOST'); anything else in it (a damaged or foreign
  file) is told as such, never printed."""
  text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
  if not text or re.fullmatch(r"pid \d+ on [\w.-]+", text):
    return text
  return "an unknown process (the lock file holds something else)"
