"""This site's own rules, as a Sphinx extension (``extensions`` in ``docs/conf.py``).

* The sidebar is ``site_nav`` in ``docs/conf.py``, added to the home page as hidden
  tables of contents (so ``index.md`` reads well on GitHub too).
* Heading anchors are made as MkDocs made them (``slugify``), so ``page.md#anchor``
  links keep working on GitHub, in the old site's bookmarks and here.
* A page still written in MkDocs-Material syntax (``!!! note``, ``::: stopscope.X``)
  fails the build with the line and the fix: ``docs/_tools/convert.py``.  Without this
  check those lines would render as plain text and the strict build would pass.
* ``reference.md#stopscope.StopSignal`` links to an API entry resolve (and a wrong
  name fails the build).
* A short name in a docstring that its module does not define (``TaskScope`` in
  ``stopscope.servers``) is the public name of ``stopscope`` (or ``.servers``,
  ``.testing``).
* A picture links to itself at full size (the benchmark plot has an 11-series legend
  that the page's column is too narrow for).
* A table of five columns or more is marked ``wide`` (the comparison's features table),
  and docs/_static/site.css lets it use the room beside the text column.
* An inline path to a file of ``examples/`` or ``benchmarks/`` (```examples/service.py```)
  links to the section that shows that file; a path to a file that does not exist, or
  that no page shows, is an error.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.transforms import SphinxTransform
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util import logging

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]

#: the repository folders whose files have a page that shows them (docs/examples.md,
#: docs/benchmark-files.md), each file under a label made by ``file_label()``
SHOWN_FOLDERS = ("examples", "benchmarks")
_PATH = re.compile(r"^(?P<path>(?:" + "|".join(SHOWN_FOLDERS) + r")/[\w/-]+(?:\.\w+)+)(?:$|\s)")

_MATERIAL = re.compile(
    r"^(?P<what>[ \t]*(?:!!!|\?\?\?\+?)[ \t]+\w+|::: [\w.]+[ \t]*$|.*\{:[ \t]*[.#][^}]*\}"
    r"|.*\bmarkdown=\"(?:1|block|span)\")",
    re.MULTILINE,
)


def slugify(text: str) -> str:
    """The anchor of a heading (its text without markup), as MkDocs made it."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    ascii_text = re.sub(r"[^\w\s-]", "", ascii_text).strip().lower()
    return re.sub(r"[-\s]+", "-", ascii_text)


def file_label(path: str) -> str:
    """The label of the section that shows the repository file ``path``."""
    return "file-" + re.sub(r"[/._]+", "-", path).lower()


def _add_navigation(app: Sphinx, docname: str, source: list[str]) -> None:
    """The sidebar (``site_nav`` in conf.py), as hidden tables of contents of the home."""
    if docname != app.config.root_doc:
        return
    trees = []
    for caption, pages in app.config.site_nav:
        entries = "\n".join(f"{title} <{page}>" for title, page in pages)
        head = f":caption: {caption}\n" if caption else ""
        trees.append(f"\n\n```{{toctree}}\n:hidden:\n{head}\n{entries}\n```\n")
    source[0] += "".join(trees)


def _refuse_material_syntax(app: Sphinx, docname: str, source: list[str]) -> None:
    path = app.env.doc2path(docname)
    if path.suffix != ".md":
        return
    text = source[0]
    fence: str | None = None
    for n, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith(("```", "~~~")):
            mark = stripped[:3]
            fence = None if fence == mark else (fence or mark)
            continue
        if fence is None and _MATERIAL.match(line):
            logger.warning(
                "MkDocs-Material syntax %r: run `PYTHONPATH=src python docs/_tools/convert.py %s`",
                stripped[:40], path.relative_to(ROOT), location=(docname, n),
            )


def _api_anchors(app: Sphinx, env: Any) -> list[str]:
    """``reference.md#stopscope.StopSignal`` links, as the pages wrote them for MkDocs.

    An API entry's anchor is its full name; this makes it a target Markdown links can
    name (MyST checks the anchors of links between pages against the headings it saw).
    """
    for name, entry in env.get_domain("py").objects.items():
        if not entry.aliased:
            slugs = env.metadata[entry.docname].setdefault("myst_slugs", {})
            slugs.setdefault(name, (None, entry.node_id, name))
    return []


#: where a short name in a docstring (``:class:`StopSignal``` in stopscope.servers) is
#: looked for when the module that uses it does not define it
PUBLIC_MODULES = ("stopscope", "stopscope.servers", "stopscope.testing")


def _public_name(app: Sphinx, env: Any, node: Any, contnode: Any) -> Any:
    """Resolve ``TaskScope.stop`` in another public module's docstring to stopscope's."""
    if node.get("refdomain") != "py" or node["reftarget"].startswith("stopscope."):
        return None
    domain = env.get_domain("py")
    target = node["reftarget"].lstrip("~.")
    for module in PUBLIC_MODULES:
        if f"{module}.{target}" in domain.objects:
            retry = node.deepcopy()
            retry["reftarget"] = f"{module}.{target}"
            return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"],
                                       retry["reftarget"], retry, contnode)
    return None


class FullSizePictures(SphinxTransform):
    """Give every picture a width so that Sphinx links it to its full-size file."""

    default_priority = 500

    def apply(self, **kwargs: Any) -> None:
        for image in self.document.findall(nodes.image):
            if not any(key in image for key in ("scale", "width", "height")):
                image["width"] = "100%"


class WideTables(SphinxTransform):
    """Mark a table of many columns ``wide``: docs/_static/site.css gives it more room."""

    default_priority = 500
    columns = 5

    def apply(self, **kwargs: Any) -> None:
        for group in self.document.findall(nodes.tgroup):
            if int(group.get("cols", 0)) >= self.columns:
                group.parent["classes"].append("wide")


class LinkRepositoryPaths(SphinxPostTransform):
    """``examples/x.py`` in inline code (alone, or before arguments) -> a link to the
    section that shows the file."""

    default_priority = 100

    def run(self, **kwargs: Any) -> None:
        labels = self.env.get_domain("std").labels
        for literal in list(self.document.findall(nodes.literal)):
            if isinstance(literal.parent, nodes.reference):
                continue
            found = _PATH.match(literal.astext())
            if not found:
                continue
            path = found["path"]
            if not (ROOT / path).is_file():
                logger.warning("%s does not exist in the repository", path, location=literal)
                continue
            target = labels.get(file_label(path))
            if target is None:
                logger.warning("no page shows %s: add a section labelled (%s)= to "
                               "docs/examples.md or docs/benchmark-files.md", path,
                               file_label(path), location=literal)
                continue
            docname, anchor, _ = target
            if docname == self.env.docname:
                continue
            uri = self.app.builder.get_relative_uri(self.env.docname, docname) + "#" + anchor
            reference = nodes.reference("", "", internal=True, refuri=uri)
            literal.replace_self(reference)
            reference.append(literal)


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("site_nav", [], "env", types=frozenset({list}))
    app.connect("source-read", _refuse_material_syntax)
    app.connect("source-read", _add_navigation)
    app.connect("env-updated", _api_anchors)
    app.connect("missing-reference", _public_name)
    app.add_transform(FullSizePictures)
    app.add_transform(WideTables)
    app.add_post_transform(LinkRepositoryPaths)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
