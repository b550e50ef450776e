"""The cleanup await a cancellation cut short: an unshielded ``await`` in a ``finally``
or ``except`` block that a cancellation came through (flake8-async's ASYNC102, at run
time).  Used by both kinds of run (the hard-cancel runner lives in ``_probe``)."""

from __future__ import annotations

import ast
import linecache
import os
import sys
from collections.abc import Callable
from types import CodeType, TracebackType
from typing import Final

import anyio

if sys.version_info >= (3, 11):
    from builtins import BaseExceptionGroup
else:  # anyio depends on the backport on 3.10
    from exceptiongroup import BaseExceptionGroup

__all__ = ["cut_cleanup", "cut_cleanup_failure"]

#: the try statements whose handlers and finally blocks are cleanup (``except*`` too)
_TRY: Final = tuple(getattr(ast, name) for name in ("Try", "TryStar") if hasattr(ast, name))


# ------------------------------------------------------------------ cut cleanups


#: the lines of each function's awaits that sit in a `finally` or `except` block
_cleanup_cache: dict[tuple[str, CodeType], frozenset[int]] = {}
_MAX_CACHED: Final = 4096


def _is_aclose(node: ast.AST) -> bool:
    """``await x.aclose()``: closes even when cancelled (trio's rule), as ASYNC102 allows."""
    return (
        isinstance(node, ast.Await)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Attribute)
        and node.value.func.attr == "aclose"
        and not node.value.args
        and not node.value.keywords
    )


def _await_lines(body: list[ast.stmt]) -> set[int]:
    lines: set[int] = set()
    stack: list[ast.AST] = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue  # its awaits run in another frame
        if isinstance(node, ast.Await) and not _is_aclose(node):
            lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
        elif isinstance(node, (ast.AsyncWith, ast.AsyncFor)):
            lines.add(node.lineno)
        stack.extend(ast.iter_child_nodes(node))
    return lines


def _function_node(tree: ast.AST, code: CodeType) -> ast.AST | None:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == code.co_name:
            first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
            if code.co_firstlineno in (first, node.lineno):
                return node
    return None


def _cleanup_lines(code: CodeType) -> frozenset[int]:
    """The lines of *code*'s awaits inside a ``finally`` or ``except`` block."""
    key = (code.co_filename, code)  # equal code objects may come from two files
    found = _cleanup_cache.get(key)
    if found is not None:
        return found
    lines: set[int] = set()
    source = "".join(linecache.getlines(code.co_filename))
    try:
        tree = ast.parse(source) if source else None
    except SyntaxError:
        tree = None
    node = None if tree is None else _function_node(tree, code)
    if node is not None:
        stack: list[ast.AST] = list(ast.iter_child_nodes(node))
        while stack:
            child = stack.pop()
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if isinstance(child, _TRY):
                assert isinstance(child, ast.Try)  # TryStar has the same fields
                lines |= _await_lines(child.finalbody)
                for handler in child.handlers:
                    lines |= _await_lines(handler.body)
            stack.extend(ast.iter_child_nodes(child))
    if len(_cleanup_cache) >= _MAX_CACHED:
        _cleanup_cache.clear()
    result = _cleanup_cache[key] = frozenset(lines)
    return result


def _leaves(exc: BaseException, kind: type[BaseException]) -> list[BaseException]:
    if isinstance(exc, kind):
        return [exc]
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub, kind)]
    return []


def cut_cleanup(exc: BaseException | None, is_library: Callable[[str], bool]) -> str | None:
    """Where a cancellation cut a cleanup await short: the innermost line of user code
    that the cancellation *exc* came through and that is an await in a ``finally`` or
    ``except`` block (``"`line` (file:N, in fn)"``), or ``None``.

    The run-time counterpart of flake8-async's ASYNC102: an await there that is not
    shielded, reached while cancelled, raises at once and the cleanup never happens.
    ``await x.aclose()`` is exempt (it closes even when cancelled, by trio's rule).
    """
    if exc is None:
        return None
    found: tuple[TracebackType, int] | None = None
    for leaf in _leaves(exc, anyio.get_cancelled_exc_class()):
        tb = leaf.__traceback__
        while tb is not None:
            code = tb.tb_frame.f_code
            if not is_library(code.co_filename) and tb.tb_lineno in _cleanup_lines(code):
                found = (tb, tb.tb_lineno)
            tb = tb.tb_next
    if found is None:
        return None
    tb, line = found
    code = tb.tb_frame.f_code
    text = linecache.getline(code.co_filename, line).strip() or "?"
    return f"`{text}` ({os.path.basename(code.co_filename)}:{line}, in {code.co_name})"


def cut_cleanup_failure(where: str) -> str:
    return (
        f"a cancellation cut the cleanup await {where} short: an await in a `finally` or "
        f"`except` block that is not shielded raises at once when cancelled, and the "
        f"cleanup never happens (shield it, with a timeout: "
        f"`with anyio.move_on_after(seconds, shield=True):`)"
    )
