"""The peers benchmark runs end to end, with or without the optional peers.

It runs ``benchmarks/bench_peers.py --smoke`` (tiny N, one repetition, every backend the
harness finds, no file written) in a subprocess: once as the environment is, and once
with aiotools, aiojobs and trio-util made unimportable, as in an environment without the
``peers`` dependency group.  No speed is asserted: speed is the benchmark's business.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_peers.py"
OPTIONAL = ("aiotools", "aiojobs", "trio_util")
#: runs the script with the optional peers unimportable (None in sys.modules)
WITHOUT_PEERS = (
    "import runpy, sys\n"
    f"sys.modules.update(dict.fromkeys({OPTIONAL!r}))\n"
    f"sys.path.insert(0, {str(SCRIPT.parent)!r})\n"
    f"sys.argv = [{str(SCRIPT)!r}, '--smoke']\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


@dataclass(frozen=True)
class Run:
    stdout: str
    stderr: str


def _run(args: list[str], cwd: Path) -> Run:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return Run(proc.stdout, proc.stderr)


def _results_files() -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (SCRIPT.parent / "results").glob("peers*")}


@dataclass(frozen=True)
class Installed:
    run: Run
    cwd: Path
    files_before: dict[Path, int]
    files_after: dict[Path, int]


@pytest.fixture(scope="module")
def as_installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    cwd = tmp_path_factory.mktemp("peers")
    before = _results_files()
    run = _run([sys.executable, str(SCRIPT), "--smoke"], cwd)
    return Installed(run, cwd, before, _results_files())


@pytest.fixture(scope="module")
def without_peers(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _run([sys.executable, "-c", WITHOUT_PEERS], tmp_path_factory.mktemp("bare"))


def _check_table(run: Run) -> None:
    assert "Stop requested -> every worker exited and the group closed" in run.stdout
    assert "spawn per member" in run.stdout
    rows = run.stdout.splitlines()
    assert any(line.startswith("stopscope ") for line in rows), run.stdout
    assert any(line.startswith("anyio by hand ") for line in rows), run.stdout
    too_wide = [line for line in rows if len(line) > 100]
    assert not too_wide, too_wide


class TestPeersSmoke:
    def test_table_prints_within_100_columns(self, as_installed: Installed) -> None:
        _check_table(as_installed.run)
        assert "measuring, smoke mode" in as_installed.run.stderr  # progress: stderr

    def test_no_file_is_written(self, as_installed: Installed) -> None:
        assert "no file written" in as_installed.run.stderr
        assert "results written" not in as_installed.run.stderr
        assert list(as_installed.cwd.iterdir()) == []
        assert as_installed.files_after == as_installed.files_before

    def test_missing_peers_are_skipped_with_the_reason(self, without_peers: Run) -> None:
        _check_table(without_peers)
        text = " ".join(without_peers.stdout.split())  # the reasons wrap at 100 columns
        for dist in ("aiotools", "aiojobs", "trio-util"):
            assert f"{dist} is not installed" in text, dist
        assert "pip install --group peers" in text
        # no table row for them (their "skipped" lines start with their names too)
        rows = [line for line in without_peers.stdout.splitlines() if " skipped: " not in line]
        for peer in ("aiotools TaskGroup", "aiojobs close", "trio-util"):
            assert not any(line.startswith(peer + " ") for line in rows), peer
            assert f"{peer} skipped: " in text, peer
