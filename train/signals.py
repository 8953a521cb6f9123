"""Ctrl-C and SIGTERM in the commands: one path from a signal at any moment to one `stopped:` line
and status 128 + the signal.

`install` (the commands' start, `cli.run`) turns SIGINT and SIGTERM into `Stopped`, an exception
the command's `finally` blocks clean up after (partial files, locks). A region that must not be
cut (the training loop between two step boundaries) runs `deferred()`: there a signal is only
recorded, and the region asks `requested()` at its safe points. A signal that arrived before the
region began is still recorded, so a Ctrl-C in a command's first second is not lost.

Python runs a signal handler between two bytecodes of the main thread, which may be inside a
callback whose exceptions are discarded (JAX's garbage-collection callback is one): there the
`Stopped` would be lost. `install` sees such a discarded `Stopped` (sys.unraisablehook) and
delivers the signal again, so that it lands in the command's own code.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# a child started by one of our commands stops when that parent dies (kill -9 included)
PARENT_ENV = "KSHAPES_JAX_PARENT_PID"
_PR_SET_PDEATHSIG = 1


class Stopped(KeyboardInterrupt):
  """Ctrl-C or SIGTERM; `signum` says which (exit status 128 + signum)."""

  def __init__(self, signum: int, message: str = ""):
    super().__init__(message or f"{signal.Signals(signum).name} received")
    self.signum = signum


class _State:
  def __init__(self) -> None:
    self.signum = 0  # the first stop signal received; 0 before any
    self.deferring = 0  # depth of deferred() regions
    self.raised = False  # a Stopped was raised for it (outside a deferred region)
    self.redeliver = False  # a raised Stopped was discarded: raise it again
    self.installed = False


_state = _State()
_previous_unraisablehook = sys.unraisablehook  # the hook `install` found, which others go to


def _handle(signum: int, frame: Any) -> None:
  # no printing here: a handler that prints while the program prints raises
  if _state.redeliver:
    _state.redeliver = False
    if not _state.deferring:
      _raise_outside_imports(frame)
    return
  first = not _state.signum
  _state.signum = _state.signum or signum
  if _state.deferring:
    # the region stops at its next safe point; a second Ctrl-C is a user who will not wait
    if first or signum != signal.SIGINT:
      return
    raise Stopped(signum, "interrupted twice: stopped without saving")
  if _state.raised and signum != signal.SIGINT:
    return  # a repeated SIGTERM while the first one's clean-up runs
  _state.raised = True
  _raise_outside_imports(frame)


def _raise_outside_imports(frame: Any) -> None:
  """Raises the stop, unless the main thread is importing a module: an exception inside a native
  extension's initialisation can abort the process. There it is delivered again soon."""
  while frame is not None:
    if frame.f_code.co_filename.startswith("<frozen importlib"):
      _deliver_again()
      return
    frame = frame.f_back
  raise Stopped(_state.signum)


def _deliver_again() -> None:
  _state.redeliver = True
  # from another thread, as a real signal to the main thread: handled at its next check, not
  # inside this call, and a blocking call (a sleep, a wait) returns for it
  main = threading.main_thread().ident
  timer = threading.Timer(0.02, signal.pthread_kill, (main, _state.signum))
  timer.daemon = True
  timer.start()


def _unraisable(args: Any) -> None:
  if isinstance(args.exc_value, Stopped) and _state.signum:
    _deliver_again()  # discarded by a callback: to land outside the callback
    return
  _previous_unraisablehook(args)


def _on_main_thread() -> bool:
  return threading.current_thread() is threading.main_thread()


def command_name(argv: list[str]) -> str:
  """The module of `python -m MODULE ...` (sys.orig_argv), or ''."""
  for flag, name in zip(argv, argv[1:], strict=False):
    if flag == "-m":
      return name
  return ""


def install_early() -> None:
  """Until `install`: SIGINT and SIGTERM end this process at once with a stopped: line (a command
  whose modules are still importing has nothing to clean up, and an exception raised inside an
  import would print a traceback outside the command's own error path)."""
  if not _on_main_thread() or _state.installed:
    return
  for sig in SIGNALS:
    signal.signal(sig, _exit_at_once)


def _exit_at_once(signum: int, frame: Any) -> None:
  del frame
  os.write(2, f"stopped: {signal.Signals(signum).name} received\n".encode())
  os._exit(128 + signum)


def install() -> None:
  """Makes SIGINT and SIGTERM raise `Stopped` in this process (main thread) from now on, and ties
  this process to its parent when the parent asked for it (`PARENT_ENV`)."""
  if not _on_main_thread() or _state.installed:
    return
  global _previous_unraisablehook
  for sig in SIGNALS:
    signal.signal(sig, _handle)
  _previous_unraisablehook, sys.unraisablehook = sys.unraisablehook, _unraisable
  _state.installed = True
  parent = os.environ.get(PARENT_ENV)
  if parent and parent.isdigit():
    stop_with_parent(int(parent), signal.SIGTERM)


def ignore() -> None:
  """Ignores SIGINT and SIGTERM from now on (a command whose work is done, while Python exits)."""
  if _on_main_thread():
    for sig in SIGNALS:
      signal.signal(sig, signal.SIG_IGN)


def requested() -> int:
  """The stop signal received (SIGINT or SIGTERM), or 0."""
  return _state.signum


def raise_stop(signum: int) -> None:
  """Raises `Stopped` for `signum` unless it is 0: a stop a `deferred()` region recorded (read
  with `requested()` inside it: a library caller's region forgets it on exit), raised after the
  region."""
  if signum:
    _state.raised = True
    raise Stopped(signum)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
  """A region where a stop signal is recorded, not raised: the region asks `requested()` at its
  safe points. A second Ctrl-C raises `Stopped` at once.

  Outside a command (a library caller on the main thread) the handlers are installed for the
  region only, and the previous ones restored after it.
  """
  if not _on_main_thread():
    yield
    return
  previous = None
  if not _state.installed and not _state.deferring:
    previous = {sig: signal.signal(sig, _handle) for sig in SIGNALS}
    _state.signum = 0
  _state.deferring += 1
  try:
    yield
  finally:
    _state.deferring -= 1
    if previous is not None:
      for sig, handler in previous.items():
        signal.signal(sig, handler)
      _state.signum = 0


def stop_with_parent(parent: int, sig: int) -> None:
  """Asks Linux to send `sig` to this process when its parent dies (elsewhere: nothing); a parent
  already gone sends it now."""
  if not sys.platform.startswith("linux"):
    return
  import ctypes  # noqa: PLC0415 (here: `train` imports this module, and only children need it)
  import ctypes.util  # noqa: PLC0415

  libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
  libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
  if os.getppid() != parent:  # it died before the request
    os.kill(os.getpid(), sig)


def child_environment(env: dict[str, str] | None = None) -> dict[str, str]:
  """The environment of a child command that must stop (SIGTERM: it saves) when this process
  dies."""
  return {**(os.environ if env is None else env), PARENT_ENV: str(os.getpid())}


def quiet_worker(parent: int, *worker: int) -> None:
  """A worker process's initializer (a process pool's; grain's, which passes the worker's index
  and count): Ctrl-C to the terminal's process group is its parent's to handle (no traceback of
  its own), SIGTERM ends it, and it dies with its parent."""
  del worker
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_DFL)
  stop_with_parent(parent, signal.SIGKILL)


def exit_status(e: KeyboardInterrupt) -> int:
  """128 + the signal of a stop (a plain KeyboardInterrupt is Ctrl-C's)."""
  return 128 + getattr(e, "signum", signal.SIGINT)
