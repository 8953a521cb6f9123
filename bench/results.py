"""What every bench writes: the run's record (platform, date, machine, JAX, repetitions,
targets, rows) as results/<stem>.json and its markdown as results/<stem>.md."""

from __future__ import annotations

import datetime
import json
import os
import platform as platform_lib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax


def record(reps: int, targets: dict[str, Any], rows: list[dict]) -> dict[str, Any]:
  """The run's record: where and when it ran, and what it measured."""
  platform = jax.default_backend()
  return {
    "platform": platform,
    "date": datetime.date.today().isoformat(),
    "machine": f"{platform_lib.machine()}, {len(jax.devices())} {platform} device(s), "
    f"{os.cpu_count()} cores",
    "jax": jax.__version__,
    "reps": reps,
    "targets": targets,
    "rows": rows,
  }


def write(out: str | Path, stem: str, result: dict, markdown: Callable[[dict], str]) -> str:
  """Writes <out>/<stem>-<platform>.json and .md; returns the markdown."""
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  name = f"{stem}-{result['platform']}"
  (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
  text = markdown(result)
  (out / f"{name}.md").write_text(text)
  return text
