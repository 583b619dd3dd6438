"""Sphinx configuration of the fl_dp_asr documentation (``make docs``; MyST Markdown pages,
API reference generated from the docstrings). Builds offline; warnings are errors."""

import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # importing the package for autodoc needs no device

project = "fl_dp_asr"
author = "fl_dp_asr authors"
copyright = "2026, fl_dp_asr authors"  # pylint: disable=redefined-builtin

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "privacy_table.md"]  # privacy_table.md: included by a guide
templates_path = ["_templates"]

# MyST: GitHub-style anchors for in-page links, $math$, ::: fences.
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3
# benchmarks.md and performance.md are appended to by the benchmarks, a "###" section at a time.
suppress_warnings = [
    "myst.header",
    # an "Attributes:" name (a field) that other classes also have
    "ref.python",
]

# API reference: one page per public module, every name documented where it is defined.
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_mock_imports: list[str] = []
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes:" as fields: a dataclass field is documented once

html_theme = "sphinx_book_theme"
html_title = "fl_dp_asr"
html_theme_options = {"show_toc_level": 2, "use_download_button": False}
html_static_path: list[str] = []
