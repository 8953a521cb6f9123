"""The documentation site: its generators (API pages from the code, report pages from the
committed results), and the built site (`sphinx-build -W docs docs/_build/html`, which .ci/run
runs before the tests): every public name has its page, every internal link and anchor resolves,
and the front page and the API index render in headless Chromium without a console error."""

import functools
import html.parser
import http.server
import importlib
import os
import sys
import threading
import urllib.parse
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "docs" / "_build" / "html"
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
import api_pages  # noqa: E402
import report_pages  # noqa: E402

BUILD = "pip install -e '.[docs]' && sphinx-build -W --keep-going -b html docs docs/_build/html"
# set by .ci/run, which builds the site first: there a missing site or browser fails, not skips
REQUIRED = os.environ.get("KSHAPES_SITE_REQUIRED") == "1"


def _need(condition: bool, why: str) -> None:
  if not condition:
    if REQUIRED:
      pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="module")
def site() -> Path:
  _need((SITE / "index.html").exists(), f"the site is not built: {BUILD}")
  return SITE


def test_public_names_are_all_or_the_functions_and_classes_a_module_defines():
  assert api_pages.public_names("kshapes_jax.int8") == sorted(
    n for n in importlib.import_module("kshapes_jax.int8").__all__
  )
  names = api_pages.public_names("kshapes_jax.deploy")  # no __all__
  assert "deploy" in names
  assert not {"nnx", "jax", "PlainConv"} & set(names)  # imported, not defined there
  assert all(not n.startswith("_") for n in names)


def test_the_api_groups_hold_every_public_module():
  import kshapes_jax

  grouped = {m for _, _, _, modules in api_pages.GROUPS for m in modules}
  modules = {
    f"kshapes_jax.{n}"
    for n in kshapes_jax.__all__
    if isinstance(getattr(kshapes_jax, n), ModuleType)
  }
  modules |= {"kshapes_jax.convert", "kshapes_jax.deploy", "kshapes_jax.optim"}
  missing = {
    m for m in modules if m not in grouped and not any(g.startswith(m + ".") for g in grouped)
  }
  assert not missing, f"no API page lists {sorted(missing)}"


def test_report_pages_point_their_links_from_the_site(tmp_path):
  (tmp_path / "results" / "old" / "img").mkdir(parents=True)
  report = tmp_path / "results" / "old" / "REPRODUCTION.md"
  report.write_text(
    "# Reproduction report\n[newer](../REPRODUCTION.md#top) ![](img/a.png) "
    "[web](https://example.org/x.md) [here](#rows)\n"
  )
  out = tmp_path / "docs" / "reports"
  out.mkdir(parents=True)
  pages = {"current": "results/REPRODUCTION.md", "old": "results/old/REPRODUCTION.md"}
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(report_pages, "REPORTS", pages)
    text = report_pages.report_page(tmp_path, out, report)
  assert "[newer](current.md#top)" in text
  assert "![](../../results/old/img/a.png)" in text
  assert "(https://example.org/x.md)" in text and "[here](#rows)" in text


def test_every_public_name_has_its_page(site):
  import kshapes_jax

  missing = [
    f"{module}.{name}"
    for _, _, _, modules in api_pages.GROUPS
    for module in modules
    for name in api_pages.public_names(module)
    if not (site / "api" / "generated" / f"{module}.{name}.html").exists()
  ]
  assert not missing, f"no page for {missing[:10]}"
  # the package's own re-exports are documented where they are defined
  documented = {p.stem.rsplit(".", 1)[-1] for p in (site / "api" / "generated").glob("*.html")}
  for name in kshapes_jax.__all__:
    if not isinstance(getattr(kshapes_jax, name), ModuleType):
      assert name in documented, f"kshapes_jax.{name} has no page"


class _Links(html.parser.HTMLParser):
  def __init__(self):
    super().__init__()
    self.ids: set[str] = set()
    self.links: list[str] = []

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if attrs.get("id"):
      self.ids.add(attrs["id"])
    if tag == "a" and attrs.get("name"):
      self.ids.add(attrs["name"])
    for key in ("href", "src"):
      if attrs.get(key) and not (tag == "link" and attrs.get("rel") == "preconnect"):
        self.links.append(attrs[key])


@functools.cache
def _parsed(path: Path) -> _Links:
  parser = _Links()
  parser.feed(path.read_text(errors="replace"))
  return parser


def test_every_internal_link_and_anchor_resolves(site):
  broken = []
  # the theme's _static/*.html are templates of its build, not pages
  pages = sorted(p for p in site.rglob("*.html") if "_static" not in p.relative_to(site).parts)
  for page in pages:
    for link in _parsed(page).links:
      parts = urllib.parse.urlsplit(link)
      if parts.scheme or parts.netloc or link.startswith("mailto:"):
        continue
      target = (page.parent / urllib.parse.unquote(parts.path)).resolve() if parts.path else page
      if not target.exists():
        broken.append(f"{page.relative_to(site)} -> {link}")
      elif parts.fragment and target.suffix == ".html":
        if urllib.parse.unquote(parts.fragment) not in _parsed(target).ids:
          broken.append(f"{page.relative_to(site)} -> {link} (no such anchor)")
  assert len(pages) > 100
  assert not broken, f"{len(broken)} broken links, e.g. {broken[:10]}"


def test_no_page_loads_anything_from_outside(site):
  """The site reads offline: scripts, styles and fonts (MathJax too) come with it."""
  outside = []
  for page in [site / "index.html", site / "equations.html", site / "api" / "index.html"]:
    for link in _parsed(page).links:
      if urllib.parse.urlsplit(link).scheme in ("http", "https") and link.endswith((".js", ".css")):
        outside.append(f"{page.name}: {link}")
  assert not outside, outside


@pytest.fixture(scope="module")
def served(site):
  class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
      pass

  server = http.server.ThreadingHTTPServer(
    ("127.0.0.1", 0), functools.partial(Quiet, directory=str(site))
  )
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{server.server_address[1]}"
  server.shutdown()


CHROMIUM_FLAGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
]


@pytest.mark.parametrize(
  ("page", "heading"),
  [("index.html", "kshapes-jax"), ("api/index.html", "API reference"), ("equations.html", "")],
)
def test_pages_render_in_chromium(served, page, heading, tmp_path):
  chromium = Path("/usr/bin/chromium")
  _need(chromium.exists(), "no Chromium: apt-get install -y chromium")
  try:
    from playwright.sync_api import sync_playwright
  except ImportError:
    _need(False, f"no playwright: {BUILD}")
  errors: list[str] = []
  with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_FLAGS)
    tab = browser.new_page(viewport={"width": 1280, "height": 900})
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.on("requestfailed", lambda r: errors.append(f"failed to load {r.url}"))
    response = tab.goto(f"{served}/{page}", wait_until="networkidle")
    assert response is not None and response.ok
    title = tab.locator("main h1").first.inner_text()
    text = tab.locator("main").inner_text()
    if page == "equations.html":  # MathJax typeset the equations
      tab.wait_for_selector("mjx-container", timeout=20_000)
    shot = tmp_path / (page.replace("/", "_") + ".png")
    tab.screenshot(path=str(shot), full_page=False)
    browser.close()
  assert heading in title
  assert len(text) > 300, f"{page} rendered almost nothing: {text[:200]!r}"
  assert shot.stat().st_size > 10_000
  assert not errors, f"{page}: {errors}"
