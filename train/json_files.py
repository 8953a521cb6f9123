"""The JSON files the training system writes, read back: one error naming the file and what is
wrong with it when one was cut short, edited or replaced (config.json, metrics.jsonl,
summary.json, the ledger's records, metadata.json)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class JsonFileError(ValueError):
  """A file of ours that does not hold what we wrote: the message names it."""


def read(path: str | Path, advice: str = "") -> Any:
  """The JSON value in `path`; JsonFileError naming the file and the line for anything else.

  Args:
    path: the file.
    advice: what the user can do, appended to the message.
  """
  path = Path(path)
  try:
    text = path.read_text()
  except UnicodeDecodeError as e:
    raise JsonFileError(f"{path} is not text ({e.reason}){_then(advice)}") from e
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    what = "is empty" if not text.strip() else f"is not valid JSON (line {e.lineno}: {e.msg})"
    raise JsonFileError(f"{path} {what}; it was edited or cut short{_then(advice)}") from e


def read_lines(path: str | Path, advice: str = "") -> list[Any]:
  """The JSON value on each non-empty line of `path` (JSON Lines); JsonFileError naming the line."""
  path = Path(path)
  values = []
  for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
    if not line.strip():
      continue
    try:
      values.append(json.loads(line))
    except json.JSONDecodeError as e:
      raise JsonFileError(
        f"{path} line {number} is not valid JSON ({e.msg}); it was edited or cut short"
        f"{_then(advice)}"
      ) from e
  return values


def parse(path: str | Path, value: Any, build: Callable[[Any], T], advice: str = "") -> T:
  """`build(value)`, the JSON of `path` made into our type; JsonFileError naming the file when
  it lacks a field or holds one of another type."""
  try:
    return build(value)
  except (KeyError, TypeError, ValueError, AttributeError) as e:
    detail = f"no {e}" if isinstance(e, KeyError) else str(e)
    raise JsonFileError(
      f"{path} does not hold what it should ({type(e).__name__}: {detail}){_then(advice)}"
    ) from e


def _then(advice: str) -> str:
  return f": {advice}" if advice else ""
