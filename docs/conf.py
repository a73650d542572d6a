"""Sphinx configuration. Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.

Offline by design (CI has no network): no intersphinx, no remote images or themes. The API pages
are generated from the public modules' ``__all__`` on every build (see ``_api.py``).
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _api  # noqa: E402

import pyro_cnf  # noqa: E402

project = "pyro-cnf"
author = "pyro-cnf developers"
copyright = "pyro-cnf developers"  # noqa: A001
release = pyro_cnf.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]

# Google-style docstrings.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_class_signature = "mixed"
autodoc_inherit_docstrings = False
# MathJax is loaded by the reader's browser; the build itself fetches nothing.
html_theme = "alabaster"
html_title = f"pyro-cnf {release}"
html_static_path: list[str] = []

_api.generate(HERE / "api")
