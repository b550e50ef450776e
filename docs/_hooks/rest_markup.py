"""Griffe extension: read stopscope's reST docstrings as the Markdown the site renders.

The docstrings follow anyio's style (``:param x:`` field lists, which mkdocstrings'
``sphinx`` parser reads, plus Sphinx roles and directives, which it leaves as they are).
This turns the rest into Markdown when the package is loaded for the API reference:

* ``:class:`~stopscope.StopSignal``` and the other roles -> ```StopSignal``` (``f()``
  for functions and methods);
* ``.. versionadded:: 0.1`` -> *Added in version 0.1.*;
* ``.. warning::`` / ``.. note::`` with their indented text -> a Material admonition;
* a paragraph ending in ``::`` and the indented block after it -> a Python code block.

The source keeps reading well in ``help()``; only the site sees the Markdown.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(class|func|meth|attr|exc|data|mod|obj|const):`(~?)([^`]+)`")
_DIRECTIVE = re.compile(r"^(?P<indent> *)\.\. (?P<name>[\w-]+)::[ \t]*(?P<arg>.*)$")
_ADMONITIONS = {"warning", "note", "tip", "important", "caution", "danger", "attention"}


def _role(match: re.Match[str]) -> str:
    role, short, target = match.groups()
    shown = target.rsplit(".", 1)[-1] if short else target
    if role in ("func", "meth") and not shown.endswith(")"):
        shown += "()"  # as Sphinx shows them
    return f"`{shown}`"


def _indented_block(lines: list[str], start: int, base: int) -> int:
    """Index just past the block indented deeper than ``base`` that begins at ``start``."""
    end = start
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > base):
        end += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return end


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def to_markdown(text: str) -> str:
    """The Markdown for one docstring written in reST."""
    lines = _ROLE.sub(_role, text).splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        directive = _DIRECTIVE.match(line)
        if directive:
            name, arg, base = directive["name"], directive["arg"].strip(), len(directive["indent"])
            end = _indented_block(lines, i + 1, base)
            body = [ln[base:] for ln in lines[i + 1 : end]]
            pad = " " * base
            if name in ("versionadded", "versionchanged", "deprecated"):
                verb = {"versionadded": "Added", "versionchanged": "Changed",
                        "deprecated": "Deprecated"}[name]
                out.append(f"{pad}*{verb} in version {arg}.*")
            elif name in _ADMONITIONS:
                out.append(f"{pad}!!! {name}")
                first = [arg] if arg else []
                rest = [ln.strip() for ln in body]
                out.extend(f"{pad}    {ln}" if ln else "" for ln in [*first, *rest])
            else:
                out.extend(lines[i:end])
            i = end
            continue
        if line.rstrip().endswith("::"):
            stem = line.rstrip()[:-2].rstrip()
            if stem:
                out.append(stem + ":")
            base = _indent(line)
            start = i + 1
            while start < len(lines) and not lines[start].strip():
                start += 1
            end = _indented_block(lines, start, base)
            code = [ln for ln in lines[start:end]]
            deepest = min((_indent(ln) for ln in code if ln.strip()), default=base)
            pad = " " * base
            out.extend(["", f"{pad}```python"])
            out.extend(f"{pad}{ln[deepest:]}" if ln.strip() else "" for ln in code)
            out.extend([f"{pad}```", ""])
            i = end
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


class RestToMarkdown(griffe.Extension):
    """Convert every docstring of the package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        seen: set[int] = set()
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = to_markdown(obj.docstring.value)
            stack.extend(m for m in obj.members.values() if not m.is_alias)  # type: ignore[misc]
