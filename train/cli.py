"""What the commands share: their flags defined once a process, and a failure told as one line with
an exit status by kind."""

from __future__ import annotations

import ast
import contextlib
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from absl import app, flags, logging

from train import signals


def define_debug() -> None:
  """--debug: a failure shows its traceback instead of one error: line."""
  define_once(
    flags.DEFINE_bool,
    "debug",
    False,
    "On a failure, show the traceback instead of one error: line.",
  )


def run(
  main: Callable[[list[str]], None], define_flags: Callable[[], None], required: Sequence[str] = ()
) -> None:
  """Runs a command: its flags defined, listed by --help, the `required` ones checked, a bad flag
  told as one error: line, and Ctrl-C or SIGTERM at any moment as one stopped: line (status 128 +
  the signal)."""
  signals.install()
  define_flags()
  # define_once defines them from this module; --help lists the main module's (the script's)
  for flag in flags.FLAGS.get_flags_for_module(__name__):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  if required:
    flags.mark_flags_as_required(list(required))
    for name in required:  # an empty path is the current folder: never what was meant
      validate_once(name, lambda v: v is None or bool(str(v).strip()), f"--{name} is empty")
  try:
    app.run(_prepared(main), flags_parser=parse_flags)
  except KeyboardInterrupt as e:  # a command that says more catches it itself
    stopped(e)
  finally:
    # the command is done: a signal during Python's exit would kill it with 128 + the signal
    signals.ignore()


# the commands' flags that name files or folders
PATH_FLAGS = ("src", "out", "workdir", "runs", "report", "ledger")


def _prepared(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
  """main, with a `~` in a path flag expanded (the shell leaves `--out=~/x` as it is, which made
  a folder named `~`), and the libraries' log lines off unless --verbosity or --debug asks:
  orbax logs every save and restore at INFO (tens of lines before a command's own), and a failed
  one at ERROR before our error: line."""

  def prepared_main(argv: list[str]) -> None:
    for name in PATH_FLAGS:
      value = flags.FLAGS[name].value if name in flags.FLAGS else None
      if isinstance(value, str):
        flags.FLAGS[name].value = os.path.expanduser(value)
    if not flags.FLAGS["verbosity"].present:
      debug = "debug" in flags.FLAGS and flags.FLAGS.debug
      logging.set_verbosity(logging.WARNING if debug else logging.FATAL)
    main(argv)

  return prepared_main


def stopped(e: KeyboardInterrupt, what: str = "") -> NoReturn:
  """Tells a stop (Ctrl-C, SIGTERM) as one stopped: line and exits with 128 + its signal."""
  print(f"stopped: {what or str(e) or 'interrupted'}", file=sys.stderr)
  exit_now(signals.exit_status(e))


def define_once(define: Callable[..., Any], name: str, *args: Any, **kwargs: Any) -> None:
  """Defines an absl flag unless this process has it (the commands share workdir, out and step).

  No module defines flags at import: each command's `define_flags` calls this before it parses
  its arguments, so modules of several commands import together.
  """
  if name not in flags.FLAGS:
    define(name, *args, **kwargs)


def validate_once(name: str, check: Callable[[Any], bool], message: str) -> None:
  """Registers a validator of flag `name` (checked when the flags are parsed, a failure one
  error: line with status 2) unless it has one with this message."""
  if not any(getattr(v, "message", None) == message for v in flags.FLAGS[name].validators):
    flags.register_validator(name, check, message=message)


def exit_now(status: int) -> NoReturn:
  """Exits now: a failed save can leave checkpointer threads that would keep the process alive
  (files are written atomically, so nothing half-written is left behind)."""
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)


def fail(e: BaseException, status: int | None = None) -> NoReturn:
  """Tells a failure as one error: line (the exception's type too where it is unexpected, status 1)
  and exits with `status` (default: by the exception's kind, `exit_status`)."""
  status = exit_status(e) if status is None else status
  known = status != 1
  print(
    f"error: {one_line(e) if known else f'{type(e).__name__}: {one_line(e)}'}"
    + ("" if known else " (--debug shows the traceback)"),
    file=sys.stderr,
  )
  exit_now(status)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with a bad flag or config file as one error: line (status 2)."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # flags.Error; the config file's own errors (SyntaxError, ImportError...)
    if "--debug" in argv:
      raise
    message = one_line(e)
    # a locked config refuses a new key: KeyError / AttributeError("'key'\nDid you mean ...")
    text = e.args[0] if e.args and isinstance(e.args[0], str) else message
    if text[:2] in ("'\\", '"\\'):  # ml_collections' AttributeError holds the KeyError's repr
      with contextlib.suppress(ValueError, SyntaxError):
        text = str(ast.literal_eval(text))
    key, _, hint = text.partition("\n")
    key = key.strip("'\"")
    overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    named = [a[len("--config.") :] for a in overrides]
    # the overrides that end in the key, else those that pass through it (a typo in a block)
    culprit = [a for a in named if a.split(".")[-1] == key] or [
      a for a in named if key in a.split(".")
    ]
    if isinstance(e, (AttributeError, KeyError)) and culprit:
      hint = hint.strip().replace('"', "'")
      message = (
        f"unknown config key {' or '.join(repr(a) for a in culprit)} ({key!r} is not a key"
        + (f"; {hint[0].lower()}{hint[1:]}" if hint else "")
        + "); the config file lists the keys (configs/schema.py declares them)"
      )
    elif not isinstance(e, flags.Error):
      message = f"the config file cannot be loaded: {type(e).__name__}: {message}"
    fail(flags.Error(message), 2)


def os_failure(e: BaseException) -> tuple[str, str | None] | None:
  """(what, path) of the OS error behind an exception, or None. Orbax and tensorstore wrap a full
  disk or a read-only directory in their own types, or only name it: [os_error_code='28']."""
  cause: BaseException | None = e
  while cause is not None:
    text = str(cause)
    code = re.search(r"os_error_code='(\d+)'", text)
    what = cause.strerror if isinstance(cause, OSError) and cause.strerror else None
    if what is None and code is not None:
      what = os.strerror(int(code[1]))
    if what is not None:
      where = getattr(cause, "filename", None) or next(iter(re.findall(r'"(/[^"]+)"', text)), None)
      return what, where
    # the chain as Python shows it: `raise ... from None` hides the context
    cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)
  return None


def one_line(e: BaseException) -> str:
  """What a user needs from an exception, on one line; an OS error anywhere in its chain wins."""
  failure = os_failure(e)
  if failure is not None:
    return failure[0] + (f": {failure[1]}" if failure[1] else "")
  lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
  if any(line.startswith("Traceback (most recent call last)") for line in lines):
    # a wrapped traceback (config_flags puts get_config's into its message): where, then what
    head = lines[: next(i for i, line in enumerate(lines) if line.startswith("Traceback"))]
    lines = head + lines[-1:]
  return " ".join(lines) or type(e).__name__


def exit_status(e: BaseException) -> int:
  from train import trainer  # noqa: PLC0415 (the trainer imports JAX: not at --help)

  if isinstance(e, (trainer.ConfigError, trainer.DataError, flags.Error)):
    return 2
  if isinstance(e, trainer.TrainingDiverged):
    return 3
  if isinstance(e, (trainer.RunDirError, trainer.CheckpointError)) or os_failure(e) is not None:
    return 4
  return 1
