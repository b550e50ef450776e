"""The peers benchmark runs end to end, with or without the optional peers.

It runs ``benchmarks/bench_peers.py --smoke`` (tiny N, one repetition, every backend the
harness finds) in a subprocess: once as the environment is, writing its JSON where
``--out`` says, and once with aiotools, aiojobs and trio-util made unimportable, as in an
environment without the ``peers`` dependency group (no file written).  Checked: every
case ran for every peer on every backend it supports, every worker of every run exited
(the stubborn one by cancellation, after the grace), the JSON's schema, and a verdict
line per target.  No speed is asserted: speed is the benchmark's business.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_peers.py"
OPTIONAL = ("aiotools", "aiojobs", "trio_util")
CASES = ("stop", "stubborn", "idle")
HEADINGS = (
    "== Case 1: stop requested -> every worker exited and the group closed ==",
    "== Case 2: one stubborn worker",
    "== Case 3: idle CPU",
)
TARGETS = ("stop", "spawn", "memory", "idle")
#: a verdict line: "    PASS  uvloop N=10     0.93 (vs asyncio.TaskGroup)"
VERDICT = re.compile(r"^    (PASS|MISS)  (asyncio|uvloop|trio) N=[\d,]+ +\d+(\.\d+)? \(vs .+\)$")
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
    doc: dict[str, Any]
    out: Path
    files_before: dict[Path, int]
    files_after: dict[Path, int]


@pytest.fixture(scope="module")
def as_installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    cwd = tmp_path_factory.mktemp("peers")
    out = tmp_path_factory.mktemp("json") / "peers-smoke.json"
    before = _results_files()
    run = _run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out)], cwd)
    doc = json.loads(out.read_text())
    return Installed(run, cwd, doc, out, before, _results_files())


@pytest.fixture(scope="module")
def without_peers(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _run([sys.executable, "-c", WITHOUT_PEERS], tmp_path_factory.mktemp("bare"))


def _check_table(run: Run) -> None:
    for heading in HEADINGS:
        assert heading in run.stdout, heading
    assert "spawn per member" in run.stdout
    rows = run.stdout.splitlines()
    for peer in ("stopscope", "seed's loop", "anyio by hand"):
        # a row in every grid: stop, spawn and memory, stubborn (2), idle (3)
        assert sum(line.startswith(peer + "  ") for line in rows) == 7, (peer, run.stdout)
    assert "every worker of every run exited (exits counted)" in run.stdout
    assert "the stubborn worker was cancelled, after the grace, in every run" in run.stdout
    too_wide = [line for line in rows if len(line) > 100]
    assert not too_wide, too_wide
    # a verdict per measured target and backend; "stop" needs N >= 100 (smoke: N=10)
    block = run.stdout.split("Targets (issue 11)", 1)[1].split("\n\n", 1)[0].splitlines()
    heads = [i for i, line in enumerate(block) if line.startswith("- ")]
    assert len(heads) == len(TARGETS), block
    for i, key in zip(heads, TARGETS, strict=True):
        assert block[i].startswith(f"- {key} "), block[i]
        body = block[i + 1:][:3]
        if key == "stop":
            assert body[0] == "    not measured in this run", body
        else:
            assert all(VERDICT.match(line) for line in body), body
            assert [line.split()[1] for line in body] == ["asyncio", "uvloop", "trio"], body


class TestPeersSmoke:
    def test_table_prints_within_100_columns(self, as_installed: Installed) -> None:
        _check_table(as_installed.run)
        assert "measuring, smoke mode" in as_installed.run.stderr  # progress: stderr

    def test_writes_only_where_told(self, as_installed: Installed,
                                    without_peers: Run) -> None:
        assert "results written to" in as_installed.run.stderr
        assert list(as_installed.cwd.iterdir()) == []
        assert as_installed.files_after == as_installed.files_before
        assert "no file written" in without_peers.stderr  # smoke without --out
        assert "results written" not in without_peers.stderr

    def test_json_schema(self, as_installed: Installed) -> None:
        doc = as_installed.doc
        assert doc["schema"] == "stopscope-bench-peers/2"
        assert set(doc) >= {"meta", "config", "peers", "skipped", "samples", "summary",
                            "table"}
        assert doc["table"] == as_installed.run.stdout.rstrip("\n")
        assert set(doc["summary"]) == {"cases", "memory", "targets"}
        assert set(doc["summary"]["cases"]) == set(CASES)
        for t in doc["summary"]["targets"]:
            assert t["verdict"] in ("PASS", "MISS"), t
            assert t["target"] in TARGETS, t
            assert isinstance(t["value"], float), t
        assert doc["config"]["stubborn_grace"] > 0

    def test_markdown_prints_the_docs_tables_from_the_file(self, as_installed: Installed,
                                                          tmp_path: Path) -> None:
        md = _run([sys.executable, str(SCRIPT), "--markdown", str(as_installed.out)],
                  tmp_path).stdout
        assert list(tmp_path.iterdir()) == []  # measures nothing, writes nothing
        for title in ("Case 1, stop requested", "Spawn per member", "Case 2, one stubborn",
                      "Case 2, the overhead", "Case 3, idle CPU", "Case 3, ticks per second",
                      "Targets (issue 11)"):
            assert f"\n{title}" in md, title
        verdicts = [line for line in md.splitlines() if line.startswith("| spawn |")]
        assert len(verdicts) == 3, md  # one per backend
        rows = [line for line in md.splitlines() if line.startswith("| stopscope (its own) |")]
        assert len(rows) == 5, md  # the reference row of every ratio table

    def test_every_case_ran_for_every_peer_and_every_worker_exited(
            self, as_installed: Installed) -> None:
        doc = as_installed.doc
        runs = doc["samples"]["runs"]
        skipped = doc["skipped"]
        # only an optional peer whose module is missing here may be skipped (CI has no
        # `peers` group; a developer's environment may have it)
        missing = [m for m in OPTIONAL if importlib.util.find_spec(m) is None]
        for key, reason in skipped.items():
            assert any(f"No module named '{m}'" in reason for m in missing), (key, reason)
        if not missing:
            assert skipped == {}
        ran = [(b, n) for n, p in doc["peers"].items() for b in p["backends"]
               if f"{b}/{n}" not in skipped]
        assert ran, doc["peers"]
        seen = {(r["case"], r["backend"], r["peer"]) for r in runs}
        for backend, name in ran:
            for case in doc["peers"][name]["cases"]:
                assert (case, backend, name) in seen, (case, backend, name)
        assert {r["case"] for r in runs} == set(CASES)
        for r in runs:
            assert r["exits"] == r["n"], r  # every worker's exit counted
            if r["case"] == "stubborn":  # cancelled: it cannot exit otherwise
                assert r["stubborn_exit"] >= 0.9 * r["grace"], r
            if r["case"] == "idle":
                assert r["ticks"] > 0, r
                assert r["cpu"] >= 0, r
        assert len(doc["samples"]["memory"]) == len(ran)

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
