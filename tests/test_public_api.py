"""The public surface: names, module paths, and the examples a reader runs."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

import stopscope

ROOT = Path(__file__).resolve().parent.parent


class TestExports:
    def test_all_matches_public_names(self) -> None:
        # "@py_builtins" and "@pytest_ar": pytest rewrites the asserts of a package
        # that registers a pytest11 plugin (ours, for stopscope.testing), as anyio's
        public = {name for name in vars(stopscope) if not name.startswith(("_", "@"))}
        public -= {"testing", "servers", "asgi", "otel"}  # submodules, imported on demand
        assert set(stopscope.__all__) == public

    @pytest.mark.parametrize("name", stopscope.__all__)
    def test_public_objects_show_the_public_module(self, name: str) -> None:
        obj = getattr(stopscope, name)
        assert getattr(obj, "__module__", "stopscope") == "stopscope"

    @pytest.mark.parametrize("name", stopscope.__all__)
    def test_no_private_base_in_help_or_type_errors(self, name: str) -> None:
        """help() and type checkers name a class's bases: none may be private."""
        obj = getattr(stopscope, name)
        if not isinstance(obj, type):
            return
        private = [c.__qualname__ for c in obj.__mro__ if c.__qualname__.startswith("_")]
        assert private == []
        import pydoc

        assert "_ServiceMembers" not in pydoc.render_doc(obj)

    def test_py_typed_is_shipped(self) -> None:
        assert (Path(stopscope.__file__).parent / "py.typed").is_file()

    def test_version_comes_from_the_package_metadata(self) -> None:
        assert stopscope.__version__ == importlib.metadata.version("stopscope")
        assert "__version__" not in stopscope.__all__  # a string, not an API name


class TestSeedExample:
    """The README shows this example; it must print the seed's lines and a latency."""

    @pytest.mark.parametrize("backend", ["asyncio", "uvloop", "trio"])
    def test_seed_runs_and_reports_a_latency(self, backend: str) -> None:
        proc = subprocess.run(
            [
                sys.executable,
                str(ROOT / "examples" / "seed.py"),
                "--backend",
                backend,
                "--seconds",
                "1.2",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0].startswith("main: letting the task run for")
        started = lines.index("background task started...")
        assert lines[started + 1] == "doing something..."  # the first tick comes at once
        assert "background task stopped." in lines
        assert lines[-2] == "main: all tasks done!"
        assert lines[-1].startswith(f"stop latency (stopscope on {backend}): ")
        assert lines[-1].endswith(" ms from the stop request to the exit")
        # the order of events is the seed's: stop requested, then the task exits
        assert lines.index("main: requesting stop...") < lines.index("background task stopped.")
