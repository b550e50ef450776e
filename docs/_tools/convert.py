"""Turn pages written for MkDocs-Material into the MyST Markdown the site is built from.

    PYTHONPATH=src python docs/_tools/convert.py            # every page under docs/
    PYTHONPATH=src python docs/_tools/convert.py docs/x.md  # only these
    PYTHONPATH=src python docs/_tools/convert.py --check    # say what it would change

It is mechanical and idempotent: run it again on a converted page and nothing changes.
It rewrites the two constructs of the old syntax that our pages used; all the rest of
our Markdown (CommonMark, tables, fenced code, ``<!-- test: ... -->`` comments,
``page.md#anchor`` links) is MyST already.

* ``!!! warning "Title"`` with its indented body -> a ```` ```{admonition} Title ````
  directive with ``:class: warning`` (``!!! note`` without a title -> ```` ```{note} ````;
  a title with `code` in it gets a ``~~~`` fence, as CommonMark wants);
  ``???`` (collapsible) boxes become plain ones.
* ``![...](benchmarks/results/x.png)``: the old site served that repository file at
  its root; the path becomes relative to the page (``../benchmarks/results/x.png``),
  which GitHub shows too.
* ``::: stopscope.Name`` (a mkdocstrings section) -> ``.. autoclass:: stopscope.Name``
  in an ```` ```{eval-rst} ```` block (autodoc writes reST), or ``autofunction``,
  ``autoexception``, ``autodata``: the name is imported to see what it is, hence
  ``PYTHONPATH=src``.  Outside ``docs/reference.md`` the section
  gets ``:no-index:``: the reference page is where each name's links go.

Anything else of the old syntax (``{: .class}`` attribute lists, ``markdown="1"``,
options under a ``:::`` line) is reported with its line, and the exit status is 1: those
need a person.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1]
ROOT = DOCS.parent

_ADMONITION = re.compile(r"^(?P<indent>[ \t]*)(?:!!!|\?\?\?\+?)[ \t]+(?P<kind>\w+)"
                         r"(?:[ \t]+\"(?P<title>[^\"]*)\")?[ \t]*$")
_SECTION = re.compile(r"^::: (?P<name>[\w.]+)[ \t]*$")
_NEEDS_A_PERSON = re.compile(r"\{:[ \t]*[.#][^}]*\}|\bmarkdown=\"(?:1|block|span)\"")
_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})")
_PICTURE = re.compile(r"(!\[[^\]]*\]\()([^)\s]+)(\))")

#: Material's kinds of box -> docutils' (which Furo styles)
KINDS = {
    "note": "note", "abstract": "note", "summary": "note", "tldr": "note",
    "info": "note", "todo": "note", "example": "note", "quote": "note", "cite": "note",
    "tip": "tip", "hint": "hint", "important": "important", "success": "tip",
    "check": "tip", "done": "tip", "question": "hint", "help": "hint", "faq": "hint",
    "warning": "warning", "caution": "caution", "attention": "attention",
    "failure": "error", "fail": "error", "missing": "error", "error": "error",
    "danger": "danger", "bug": "error",
}


def directive_for(name: str) -> str:
    """``autoclass``, ``autoexception``, ``autofunction`` or ``autodata`` for ``name``."""
    module_name, _, attr = name.rpartition(".")
    obj = getattr(importlib.import_module(module_name), attr)
    if inspect.isclass(obj):
        return "autoexception" if issubclass(obj, BaseException) else "autoclass"
    if inspect.isroutine(obj):
        return "autofunction"
    return "autodata"


def _width(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _picture_paths(line: str, page: Path) -> str:
    """``![..](benchmarks/x.png)``: the old site served repository files at its root."""

    def fixed(found: re.Match[str]) -> str:
        path = found[2]
        if "://" in path or (page.parent / path).exists() or not (ROOT / path).is_file():
            return found[0]
        return found[1] + os.path.relpath(ROOT / path, page.parent) + found[3]

    return _PICTURE.sub(fixed, line)


def convert(text: str, page: Path) -> tuple[str, list[tuple[int, str]]]:
    """The converted page, and the (line, reason) of what it cannot convert."""
    reference_page = page.resolve() == DOCS / "reference.md"
    lines = text.splitlines()
    out: list[str] = []
    problems: list[tuple[int, str]] = []
    fence: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        opened = _FENCE.match(line)
        if opened:
            mark = opened[1]
            if fence is None:
                fence = mark
            elif mark[0] == fence[0] and len(mark) >= len(fence) and not line.strip(mark[0]):
                fence = None
            out.append(line)
            i += 1
            continue
        if fence is not None:
            out.append(line)
            i += 1
            continue
        box = _ADMONITION.match(line)
        if box:
            indent = box["indent"]
            end = i + 1
            while end < len(lines) and (
                not lines[end].strip() or _width(lines[end]) >= len(indent) + 4
            ):
                end += 1
            while end > i + 1 and not lines[end - 1].strip():
                end -= 1
            body = [ln[len(indent) + 4:] if ln.strip() else "" for ln in lines[i + 1 : end]]
            kind = KINDS.get(box["kind"].lower(), "note")
            title = box["title"]
            head = [f"{{admonition}} {title}", f":class: {kind}"] if title else [f"{{{kind}}}"]
            # a title with `code` needs a ~~~ fence (CommonMark: no ` in a ``` info string)
            mark = "~" if title and "`" in title else "`"
            longest = [len(m) for ln in body for m in re.findall(re.escape(mark) + "{3,}", ln)]
            fence_mark = mark * max([3, *(n + 1 for n in longest)])
            fenced = [fence_mark + head[0], *head[1:], *body, fence_mark]
            out.extend(indent + ln if ln else "" for ln in fenced)
            i = end
            continue
        section = _SECTION.match(line)
        if section:
            name = section["name"]
            if i + 1 < len(lines) and lines[i + 1].strip() and _width(lines[i + 1]) > 0:
                problems.append((i + 2, f"options under `::: {name}`: convert by hand"))
            try:
                directive = directive_for(name)
            except (ImportError, AttributeError, ValueError) as exc:
                problems.append((i + 1, f"cannot import {name} ({exc}); PYTHONPATH=src?"))
                out.append(line)
                i += 1
                continue
            # eval-rst: autodoc writes reST, which a MyST directive would read as Markdown
            out.extend(["```{eval-rst}", f".. {directive}:: {name}"])
            if not reference_page:
                out.append("   :no-index:")
            out.append("```")
            i += 1
            continue
        if _NEEDS_A_PERSON.search(line):
            problems.append((i + 1, f"MkDocs-only markup: {line.strip()[:60]!r}"))
        out.append(_picture_paths(line, page.resolve()))
        i += 1
    return "\n".join(out) + ("\n" if text.endswith("\n") else ""), problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pages", nargs="*", type=Path, help="default: docs/**/*.md")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if "
                        "a page needs converting")
    args = parser.parse_args(argv)
    pages = args.pages or sorted(
        p for p in DOCS.rglob("*.md")
        if not any(part.startswith("_") for part in p.relative_to(DOCS).parts)
    )
    status = 0
    for page in pages:
        text = page.read_text(encoding="utf-8")
        new, problems = convert(text, page)
        for line, reason in problems:
            print(f"{page}:{line}: {reason}", file=sys.stderr)
            status = 1
        if new != text:
            print(f"{'would convert' if args.check else 'converted'} {page}")
            if args.check:
                status = 1
            else:
                page.write_text(new, encoding="utf-8")
    return status


if __name__ == "__main__":
    sys.exit(main())
