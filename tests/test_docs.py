"""Every ```python block of README.md and docs/ runs, as a user who copies it would.

A small extractor rather than pytest-examples: the blocks here are whole programs, and
what we need is to run each one on several backends, or as a real service that gets a
real SIGTERM; pytest-examples is built around linting and printing, not that.

How a block is run is decided by the block itself, and by one optional HTML comment on
the line before its fence (invisible on the site and on GitHub):

* A block that starts its event loop with ``anyio.run(...)`` or ``stopscope.run(...)``
  runs once per backend (asyncio, trio): the test makes that call use the backend
  under test, exactly as ``anyio.run(main, backend="trio")`` would.  Any other block
  (plain ``asyncio.run()``, a thread) runs once, as written.
* ``<!-- test: backends asyncio -->`` (or ``trio``): only those backends.
* ``<!-- test: continues -->``: the block runs after the previous ``python`` block of
  the page, in the same namespace (a page that builds one program in steps).
* ``<!-- test: service SIGTERM -->``: the block is a service that runs until it gets
  an OS signal.  It runs as a child process; once it has printed its first line, it
  gets that signal, and must exit 0 without a traceback.
* ``<!-- test: pytest -->``: the block is a pytest test module; it is saved as a file
  and pytest runs it in a child process, which must pass (it picks its own backends).
* ``<!-- test: not run: REASON -->``: compiled only; REASON says why.

Blocks run as ``__main__`` with their page and line in tracebacks.  Every run is bounded
(``fail_after`` inside the event loop, a timeout on child processes).
"""

from __future__ import annotations

import importlib.util
import os
import re
import select
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC_PAGES = sorted(
    page for page in (ROOT / "docs").rglob("*.md")
    if not any(part.startswith("_") for part in page.relative_to(ROOT / "docs").parts)
)
PAGES = [ROOT / "README.md", *DOC_PAGES]
#: docs/_tools/convert.py, the converter from MkDocs-Material pages (not a package)
_spec = importlib.util.spec_from_file_location("convert", ROOT / "docs/_tools/convert.py")
assert _spec is not None
assert _spec.loader is not None
CONVERT = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(CONVERT)
PYTHON_LANGS = {"python", "py", "python3"}
BACKENDS = ("asyncio", "trio")
#: seconds; only guards against hangs, never a timing assertion
HANG_GUARD = 30.0

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n]*)$")
#: MyST directives whose body is Markdown (boxes): the blocks inside them are found too
_MARKDOWN_DIRECTIVES = {"admonition", "note", "warning", "tip", "hint", "important",
                        "caution", "attention", "danger", "error", "seealso"}
_DIRECTIVE = re.compile(r"^\s*<!--\s*test:\s*(?P<text>.*?)\s*-->\s*$")
_RUNS_A_LOOP = re.compile(r"\b(anyio|stopscope)\.run\(")


@dataclass
class Block:
    """One fenced ``python`` block, with the blocks that continue it."""

    page: Path
    line: int  # 1-based line of the first line of code
    code: str
    directive: str = ""
    continued_by: list[Block] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{_shown(self.page)}:{self.line}"

    @property
    def parts(self) -> list[Block]:
        return [self, *self.continued_by]

    def backends(self) -> tuple[str, ...]:
        """The backends this block runs on; ``("as written",)`` if it picks its own loop."""
        if self.directive.startswith("not run:"):
            return ("not run",)
        if self.directive.startswith("backends "):
            chosen = tuple(self.directive.split()[1:])
            unknown = set(chosen) - set(BACKENDS)
            if unknown:
                raise ValueError(f"{self.where}: unknown backend(s) {sorted(unknown)}")
            return chosen
        if self.directive == "pytest":
            return ("as written",)
        if self.directive.startswith("service ") or any(
            _RUNS_A_LOOP.search(part.code) for part in self.parts
        ):
            return BACKENDS
        return ("as written",)


def _shown(page: Path) -> str:
    return str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else page.name


def extract(page: Path) -> list[Block]:
    """The page's ``python`` blocks, continuation blocks attached to the one they follow."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    boxes: list[str] = []  # the fences of the open boxes (```{note} ... ```)
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None or (opening["fence"][0] == "`" and "`" in opening["info"]):
            i += 1  # not a fence (CommonMark: no ` in a ``` info string)
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        lang = opening["info"].split()[0].lower() if opening["info"].strip() else ""
        if boxes and not lang and fence[0] == boxes[-1][0] and len(fence) >= len(boxes[-1]):
            boxes.pop()  # a box closes; its blocks were found like any other
            i += 1
            continue
        if lang.startswith("{") and lang.strip("{}") in _MARKDOWN_DIRECTIVES:
            boxes.append(fence)
            i += 1
            continue
        start = i + 1
        j = start
        while j < len(lines) and not (
            lines[j].strip().startswith(fence) and lines[j].strip().strip(fence[0]) == ""
        ):
            j += 1
        if j == len(lines):
            raise ValueError(f"{_shown(page)}:{i + 1}: unclosed code fence")
        if lang in PYTHON_LANGS:
            # a fence indented in a list item: its lines carry that indentation too
            body = "\n".join(_unindent(line, indent) for line in lines[start:j])
            directive = _directive_before(lines, i)
            block = Block(page, start + 1, textwrap.dedent(body) + "\n", directive)
            if directive == "continues":
                if not blocks:
                    raise ValueError(f"{block.where}: 'continues' with no block before it")
                blocks[-1].continued_by.append(block)
            else:
                blocks.append(block)
        i = j + 1
    _check_no_stray_directives(page, lines)
    return blocks


def _unindent(line: str, indent: int) -> str:
    width = len(line) - len(line.lstrip(" \t"))
    return line[min(width, indent) :]


def _directive_before(lines: list[str], fence_index: int) -> str:
    k = fence_index - 1
    while k >= 0 and not lines[k].strip():
        k -= 1
    found = _DIRECTIVE.match(lines[k]) if k >= 0 else None
    return found["text"] if found else ""


def _check_no_stray_directives(page: Path, lines: list[str]) -> None:
    """A directive must stand right before a ``python`` fence, or it silently does nothing."""
    for n, line in enumerate(lines):
        if not _DIRECTIVE.match(line):
            continue
        k = n + 1
        while k < len(lines) and not lines[k].strip():
            k += 1
        fence = _FENCE.match(lines[k]) if k < len(lines) else None
        info = fence["info"].split() if fence else []
        if not info or info[0].lower() not in PYTHON_LANGS:
            raise ValueError(f"{_shown(page)}:{n + 1}: test directive not before a "
                             f"```python block")


ALL_BLOCKS = [block for page in PAGES for block in extract(page)]
CASES = [
    pytest.param(block, backend, id=f"{block.where}[{backend}]")
    for block in ALL_BLOCKS
    for backend in block.backends()
]


def _compiled(block: Block) -> Any:
    # pad with newlines so that tracebacks and SyntaxErrors give the page's own line
    return compile("\n" * (block.line - 1) + block.code, str(block.page), "exec")


def _forced_run(real_run: Callable[..., Any], backend_under_test: str) -> Callable[..., Any]:
    """``anyio.run`` on the backend under test, with a guard against hangs."""

    def run(
        func: Callable[..., Any],
        *args: Any,
        backend: str = "asyncio",
        backend_options: dict[str, Any] | None = None,
    ) -> Any:
        async def bounded() -> Any:
            with anyio.fail_after(HANG_GUARD):
                return await func(*args)

        # a block's own backend_options (use_uvloop) only make sense on its own backend
        options = backend_options if backend == backend_under_test else None
        return real_run(bounded, backend=backend_under_test, backend_options=options)

    return run


class TestBlocksRun:
    @pytest.mark.parametrize(("block", "backend"), CASES)
    def test_block_runs(
        self, block: Block, backend: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        if backend == "not run":
            reason = block.directive.removeprefix("not run:").strip()
            assert reason, f"{block.where}: say why the block is not run"
            for part in block.parts:
                _compiled(part)  # a SyntaxError still fails
            return
        if block.directive.startswith("service "):
            _run_service(block, backend, tmp_path)
            return
        if block.directive == "pytest":
            _run_pytest(block, tmp_path)
            return
        if backend != "as written":
            monkeypatch.setattr(anyio, "run", _forced_run(anyio.run, backend))
        monkeypatch.chdir(tmp_path)  # a block that writes a file writes it here
        namespace: dict[str, Any] = {"__name__": "__main__"}
        for part in block.parts:
            namespace["__file__"] = str(part.page)
            exec(_compiled(part), namespace)


#: runs a service block as ``__main__`` with ``anyio.run`` on the backend under test
_SERVICE_RUNNER = """\
import runpy, sys
import anyio
real_run, backend_under_test, path = anyio.run, sys.argv[1], sys.argv[2]
def run(func, *args, backend="asyncio", backend_options=None):
    options = backend_options if backend == backend_under_test else None
    return real_run(func, *args, backend=backend_under_test, backend_options=options)
anyio.run = run
sys.argv = [path]
runpy.run_path(path, run_name="__main__")
"""


def _run_pytest(block: Block, tmp_path: Path) -> None:
    module = tmp_path / "test_block.py"
    module.write_text("\n".join(part.code for part in block.parts), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error",
         module.name],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=HANG_GUARD * 2,
        check=False,
    )
    assert done.returncode == 0, f"{block.where}: pytest exit {done.returncode}\n{done.stdout}"
    assert " passed" in done.stdout, done.stdout
    assert "failed" not in done.stdout, done.stdout


def _run_service(block: Block, backend: str, tmp_path: Path) -> None:
    signum = signal.Signals[block.directive.split()[1]]
    script = tmp_path / "service.py"
    script.write_text(
        "\n".join(("\n" * (part.line - 1) + part.code) for part in block.parts),
        encoding="utf-8",
    )
    proc = subprocess.Popen(
        [sys.executable, "-u", "-c", _SERVICE_RUNNER, backend, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], HANG_GUARD)
        assert ready, f"{block.where}: the service printed nothing in {HANG_GUARD} s"
        first = proc.stdout.readline()
        assert first, f"{block.where}: the service exited before printing a line"
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=HANG_GUARD)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, f"{block.where}: exit {proc.returncode}\n{first}{out}\n{err}"
    assert "Traceback" not in err, err


class TestSite:
    def test_reference_documents_every_public_name(self) -> None:
        """Every name of every public module's ``__all__`` (``stopscope``,
        ``stopscope.servers``, ``stopscope.testing``, and any public module added later)
        has its ``.. autoclass:: module.name`` (or ``autofunction``...) entry, and the
        page documents nothing else."""
        import importlib
        import pkgutil

        import stopscope

        page = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
        documented = set(re.findall(
            r"^\.\. auto(?:class|exception|function|data):: (stopscope(?:\.\w+)*)$",
            page, re.MULTILINE,
        ))
        modules = ["stopscope"] + [
            info.name
            for info in pkgutil.walk_packages(stopscope.__path__, "stopscope.")
            if not any(part.startswith("_") for part in info.name.split("."))
        ]
        public = set()
        for name in modules:
            module = importlib.import_module(name)
            names = getattr(module, "__all__", None)
            assert names is not None, f"public module {name} has no __all__"
            public |= {f"{name}.{n}" for n in names if not n.startswith("__")}
        assert len(modules) >= 3, modules
        assert public - documented == set(), "add them to docs/reference.md"
        assert documented - public == set(), "not in a public module's __all__"

    def test_pages_are_in_the_sites_syntax(self) -> None:
        """No page is left in MkDocs-Material syntax (the build refuses it too)."""
        for page in DOC_PAGES:
            text = page.read_text(encoding="utf-8")
            converted, problems = CONVERT.convert(text, page)
            assert problems == [], f"{_shown(page)}: {problems}"
            assert converted == text, (
                f"{_shown(page)}: run `PYTHONPATH=src python docs/_tools/convert.py`"
            )

    def test_no_page_cites_a_file_users_do_not_have(self) -> None:
        for page in PAGES:
            text = page.read_text(encoding="utf-8")
            assert "DESIGN.md" not in text, f"{_shown(page)}: the contract is docs/contract.md"


class TestConvert:
    """docs/_tools/convert.py: pages written for MkDocs-Material -> MyST, mechanically."""

    OLD = (
        "# Page\n\n!!! note\n    Plain box.\n\n"
        '* item\n\n    !!! warning "Leaving *stops* them"\n'
        "        Body with code:\n\n        ```python\n        x = 1\n        ```\n\n"
        "    After the box.\n\n"
        "::: stopscope.TaskScope\n\n::: stopscope.run\n\n"
        "::: stopscope.testing.StopRequirementError\n\n"
        "![plot](benchmarks/results/stop_latency.png)\n\n"
        "```text\n!!! note\n::: stopscope.run\n```\n"
    )

    def test_converts_boxes_sections_and_pictures(self) -> None:
        new, problems = CONVERT.convert(self.OLD, ROOT / "docs" / "how-to" / "page.md")
        assert problems == []
        assert "```{note}\nPlain box.\n```" in new
        assert (
            "    ````{admonition} Leaving *stops* them\n    :class: warning\n"
            "    Body with code:\n\n    ```python\n    x = 1\n    ```\n    ````\n\n"
            "    After the box." in new
        )
        assert "```{eval-rst}\n.. autoclass:: stopscope.TaskScope\n   :no-index:\n```" in new
        assert ".. autofunction:: stopscope.run\n" in new
        assert ".. autoexception:: stopscope.testing.StopRequirementError\n" in new
        assert "![plot](../../benchmarks/results/stop_latency.png)" in new
        assert new.endswith("```text\n!!! note\n::: stopscope.run\n```\n")  # code stays
        again, _ = CONVERT.convert(new, ROOT / "docs" / "how-to" / "page.md")
        assert again == new

    def test_a_title_with_code_gets_a_tilde_fence(self) -> None:
        new, _ = CONVERT.convert('!!! note "`f()` is for threads"\n    Body.\n', ROOT / "x.md")
        assert new == "~~~{admonition} `f()` is for threads\n:class: note\nBody.\n~~~\n"

    def test_reference_page_entries_are_the_index(self) -> None:
        new, _ = CONVERT.convert("::: stopscope.run\n", ROOT / "docs" / "reference.md")
        assert new == "```{eval-rst}\n.. autofunction:: stopscope.run\n```\n"

    def test_what_needs_a_person_is_reported(self) -> None:
        text = 'A line {: .wide }\n\n<div markdown="1">\n\n::: stopscope.run\n    options: x\n'
        _, problems = CONVERT.convert(text, ROOT / "docs" / "page.md")
        assert [line for line, _ in problems] == [1, 3, 6]


class TestExtractor:
    """The extractor finds what a reader sees, and refuses what it cannot honour."""

    def test_finds_blocks(self) -> None:
        readme = [b for b in ALL_BLOCKS if b.page.name == "README.md"]
        assert readme, "no python block found in README.md"
        assert all(b.code.strip() for b in ALL_BLOCKS)

    def test_indented_fence_and_continuation(self, tmp_path: Path) -> None:
        page = tmp_path / "page.md"
        page.write_text(
            "text\n\n```python\nx = 1\n```\n\n* item\n\n  <!-- test: continues -->\n"
            "  ```python\n  y = x + 1\n  ```\n\n```text\n```python\nnot python\n```\n",
            encoding="utf-8",
        )
        blocks = extract(page)
        assert len(blocks) == 1
        assert blocks[0].code == "x = 1\n"
        assert [p.code for p in blocks[0].continued_by] == ["y = x + 1\n"]
        assert blocks[0].continued_by[0].line == 11

    def test_blocks_inside_boxes_are_found(self, tmp_path: Path) -> None:
        page = tmp_path / "page.md"
        page.write_text(
            "````{note}\n```python\nx = 1\n```\n````\n\n"
            "~~~{admonition} `f()` title\n:class: warning\n```python\ny = 2\n```\n~~~\n\n"
            "```{eval-rst}\n.. autofunction:: stopscope.run\n```\n\n```python\nz = 3\n```\n",
            encoding="utf-8",
        )
        assert [b.code for b in extract(page)] == ["x = 1\n", "y = 2\n", "z = 3\n"]

    def test_stray_directive_is_an_error(self, tmp_path: Path) -> None:
        page = tmp_path / "page.md"
        page.write_text("<!-- test: continues -->\n```text\nx\n```\n", encoding="utf-8")
        with pytest.raises(ValueError, match="not before a"):
            extract(page)

    def test_forced_run_uses_the_backend_under_test(self) -> None:
        async def which() -> str:
            import sniffio

            return sniffio.current_async_library()

        for backend in BACKENDS:
            run = _forced_run(anyio.run, backend)
            assert run(which) == backend
            assert run(which, backend="asyncio", backend_options={"use_uvloop": True}) == backend
