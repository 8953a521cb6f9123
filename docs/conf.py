"""Sphinx configuration of the kshapes-jax site (``sphinx-build -W docs docs/_build/html``)."""

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path[:0] = [str(ROOT), str(DOCS / "_ext")]
# the guides' cells run in kernels started from here: they import the checkout, not an install
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

project = "kshapes-jax"
author = "the kshapes-jax developers"
copyright = "2026, the kshapes-jax developers"

extensions = [
  "myst_nb",
  "sphinx.ext.autodoc",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
  # MathJax from the site itself: a page read offline (or by the browser check) loads nothing
  # from a CDN
  "sphinx-mathjax-offline",
  "api_pages",
  "report_pages",
]

exclude_patterns = ["_build", "jupyter_execute", ".jupyter_cache", "**.ipynb_checkpoints"]
suppress_warnings = ["myst.header"]

# MyST: $...$ and $$...$$ math, ::: fences, headings as link targets
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# the guides are executed at every build: a guide whose code no longer runs fails the build
nb_execution_mode = "force"
nb_execution_raise_on_error = True
nb_execution_timeout = 600
nb_execution_in_temp = True  # the files a guide writes (model.onnx, ...) go to a temporary folder
nb_execution_show_tb = True
nb_merge_streams = True

# `name` in a docstring is code: a link where Sphinx knows the name
default_role = "py:obj"

# API: Google-style docstrings, one page per name, signatures as written
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

html_theme = "sphinx_book_theme"
html_title = "kshapes-jax"
html_theme_options = {
  "show_toc_level": 2,
  "use_download_button": False,
  "use_fullscreen_button": False,
}
html_static_path = ["_static"]
html_css_files = ["equations.css"]
html_favicon = "_static/favicon.svg"  # the ACB skeleton; else the browser asks for /favicon.ico
html_context = {"default_mode": "light"}
