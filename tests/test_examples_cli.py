"""The examples tell a user what is missing instead of ending in a traceback.

Synchronous, run once (not per backend): each case runs an example in a child Python in
which an installed module is made to look missing (a finder that refuses it), as it is
for a user who installed stopscope without that extra.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

#: runs argv[2] as __main__ with argv[1]'s comma-separated modules made missing
RUNNER = """
import runpy, sys
missing = set(sys.argv[1].split(","))
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in missing:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Refuse())
script = sys.argv[2]
sys.argv = sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


def _run(missing: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", RUNNER, missing, *argv],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )


@pytest.mark.parametrize("backend", ["uvloop", "trio"])
@pytest.mark.parametrize("example", ["seed.py", "service.py", "web_service.py"])
def test_a_missing_backend_is_named_with_its_install(example: str, backend: str) -> None:
    argv = [str(EXAMPLES / example), "--backend", backend]
    if example == "web_service.py":
        argv += ["--server", "hypercorn"]  # the server that runs on both backends
    proc = _run(backend, *argv)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert f"--backend {backend} needs {backend}: pip install 'stopscope[{backend}]'" in (
        proc.stderr
    )


@pytest.mark.parametrize("server", ["uvicorn", "hypercorn"])
def test_a_missing_server_is_named_with_its_install(server: str) -> None:
    proc = _run(server, str(EXAMPLES / "web_service.py"), "--server", server)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert f"--server {server} needs {server}: pip install 'stopscope[{server}]'" in proc.stderr


def test_web_service_without_starlette_says_what_to_install() -> None:
    proc = _run("starlette", str(EXAMPLES / "web_service.py"), "--help")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == (
        "examples/web_service.py needs Starlette and a server: pip install starlette "
        "'stopscope[uvicorn]'  (or 'stopscope[hypercorn]')"
    )


def test_web_service_help_shows_the_defaults() -> None:
    proc = _run("none", str(EXAMPLES / "web_service.py"), "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    for default in ("(default: uvicorn)", "(default: asyncio)", "(default: 8000)",
                    "(default: 0.0)", "(default: 20.0)"):
        assert default in text, proc.stdout
