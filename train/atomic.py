"""Files written whole or not at all: the one atomic text writer of the training side."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, text: str) -> None:
  """Writes a file whole or not at all (a crash leaves the old one): a temporary, then a rename."""
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(text)
  os.replace(tmp, path)
