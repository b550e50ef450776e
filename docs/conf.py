"""The documentation site: Sphinx, with MyST for the Markdown pages and Furo as theme.

``python -m sphinx -W --keep-going -n -b html docs build/site`` builds it, warnings as
errors (``python3 dev.py test`` runs exactly that); ``python -m http.server -d
build/site`` shows the result.  The build needs no network: the inventories that link
names into Python's, anyio's and trio's documentation are committed in
``docs/_inventories/`` (``docs/_tools/inventories.py`` makes them again).
"""

from __future__ import annotations

import sys
from importlib.metadata import version as _installed_version
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))

project = "stopscope"
author = "the stopscope developers"
copyright = "2026, the stopscope developers"  # as in LICENSE
release = _installed_version("stopscope")  # the package metadata, as __version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",  # the API reference links each name to its source
    "stopscope_site",  # docs/_ext/stopscope_site.py: this site's own rules
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_ext", "_tools", "_inventories", "_static"]

# Every cross-reference must resolve (nitpicky), except these, which have no page to
# link to in the inventories we ship:
nitpicky = True
nitpick_ignore_regex = [
    # names of type annotations that exist only for the type checker
    ("py:class", r"(.*\.)?(PosArgsT|StrOrBytesPath|Process|T)|typing_extensions\..*"),
    # a Literal alias (TaskRecord.phase) and private classes in signatures
    ("py:class", r"Phase|stopscope\.(\w+\.)*_.*"),
    # the servers' own config classes (uvicorn's docs have no inventory)
    ("py:class", r"(uvicorn|hypercorn)\..*"),
    # a constant that run()'s docstring names but stopscope does not export (yet)
    ("py:data", r"EXIT_CUT_SHORT"),
]

# -- MyST: the pages are CommonMark with GitHub tables and fenced directives -----------
myst_enable_extensions: list[str] = []
myst_heading_anchors = 6
# the anchors the pages link to (page.md#some-heading) are those MkDocs made, so that
# links written for GitHub and for the old site keep working
myst_heading_slug_func = "stopscope_site.slugify"

# -- the API reference: autodoc reads the reST docstrings and `#:` comments -----------
autodoc_default_options = {
    "members": True,
    "undoc-members": True,  # enum values and record fields, documented or not
    "member-order": "bysource",
}
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
python_use_unqualified_type_names = True
add_module_names = True

intersphinx_mapping = {
    name: (url, str(DOCS / "_inventories" / f"{name}.inv"))
    for name, url in {
        "python": "https://docs.python.org/3/",
        "anyio": "https://anyio.readthedocs.io/en/stable/",
        "trio": "https://trio.readthedocs.io/en/stable/",
    }.items()
}
intersphinx_timeout = 1  # local files only: never wait on a network

# -- HTML ---------------------------------------------------------------------------
html_theme = "furo"
html_title = f"stopscope {release}"
html_static_path = ["_static"]
html_css_files = ["site.css"]
html_show_sourcelink = False
html_copy_source = False

# -- the sidebar: sections of (title, page); docs/_ext/stopscope_site.py adds them to
# the home page as hidden tables of contents.  A page left out fails the build.
site_nav: list[tuple[str, list[tuple[str, str]]]] = [
    ("", [("Home", "self"), ("Tutorial", "tutorial")]),
    ("How-to guides", [
        ("A library with aclose()", "how-to/library-aclose"),
        ("A service under Kubernetes and systemd", "how-to/services"),
        ("A web service: uvicorn, hypercorn, drain", "how-to/web-services"),
        ("An app under its server's own command", "how-to/deployments"),
        ("Deploy with uvicorn", "how-to/deploy-uvicorn"),
        ("Deploy with fastapi run", "how-to/deploy-fastapi"),
        ("Deploy with gunicorn", "how-to/deploy-gunicorn"),
        ("Deploy with hypercorn", "how-to/deploy-hypercorn"),
        ("Deploy with run()", "how-to/deploy-run"),
        ("Threads and subprocesses", "how-to/threads-and-subprocesses"),
        ("Ordered shutdown", "how-to/ordered-shutdown"),
        ("OpenTelemetry: the stop as spans", "how-to/opentelemetry"),
        ("Testing your workers", "how-to/testing"),
        ("Testing kit: every stop point", "testing"),
    ]),
    ("Explanation and reference", [
        ("The contract", "contract"),
        ("Semantics", "semantics"),
        ("Backends", "backends"),
        ("Observability: logs and budget", "observability"),
        ("How it is tested", "correctness"),
        ("API reference", "reference"),
        ("Benchmarks", "benchmarks"),
        ("Comparison", "comparison"),
    ]),
    ("The project", [
        ("Examples", "examples"),
        ("Benchmark scripts and results", "benchmark-files"),
        ("Changelog", "changelog"),
    ]),
]
