"""Writes the reproduction reports into the site when it builds, from the committed files.

`results/REPRODUCTION.md` (and the earlier reports it links) are written by
`python -m train.reproduce`; the site shows them as they are, with their links and images made
relative to docs/reports/ so that nothing is copied by hand.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# page name -> the report, relative to the repository
REPORTS = {
  "current": "results/REPRODUCTION.md",
  "e10-2026-11-23": "results/repro-e10-2026-11-23/REPRODUCTION.md",
  "short": "results/repro-short/REPRODUCTION.md",
  "rotate-angles": "results/rotate-angles/REPRODUCTION.md",
}
# each page's title in the site's contents (the reports all begin "# Reproduction report")
TITLES = {
  "current": "Reproduction report",
  "e10-2026-11-23": "Report of 2026-11-23 (10 epochs, kept)",
  "short": "First report (1-2 epochs, kept)",
  "rotate-angles": "RotateConv angles report (kept)",
}
_LINK = re.compile(r"(!?\[[^\]]*\])\(([^)\s]+)\)")


def report_page(root: Path, out_dir: Path, source: Path) -> str:
  """The report at `source` with each relative link pointing where it points from out_dir."""
  pages = {(root / path).resolve(): f"{name}.md" for name, path in REPORTS.items()}

  def relink(match: re.Match) -> str:
    text, target = match.groups()
    if re.match(r"[a-z]+:", target) or target.startswith("#"):
      return match.group(0)
    path, _, anchor = target.partition("#")
    resolved = (source.parent / path).resolve()
    new = pages.get(resolved) or os.path.relpath(resolved, out_dir)
    return f"{text}({new}{'#' + anchor if anchor else ''})"

  return _LINK.sub(relink, source.read_text())


def _titled(name: str, text: str) -> str:
  first, _, rest = text.partition("\n")
  return f"# {TITLES[name]}\n{rest}" if first.startswith("# ") else text


def write_reports(root: Path, out_dir: Path) -> None:
  out_dir.mkdir(parents=True, exist_ok=True)
  for name, path in REPORTS.items():
    text = _titled(name, report_page(root, out_dir, root / path))
    target = out_dir / f"{name}.md"
    if not target.exists() or target.read_text() != text:
      target.write_text(text)


def _on_builder_inited(app) -> None:
  src = Path(app.srcdir)
  write_reports(src.parent, src / "reports")


def setup(app):
  app.connect("builder-inited", _on_builder_inited, priority=400)
  return {"parallel_read_safe": True, "parallel_write_safe": True}
