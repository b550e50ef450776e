"""The benchmark harness runs end to end and writes the results it promises.

It runs ``benchmarks/bench_stop_latency.py --smoke`` once (tiny N, one repetition, all
three backends: the harness runs them itself, so this test is not parametrized over
backends) and checks the JSON file and the table.  No speed is asserted: the machine is
shared, and speed is the benchmark's business, not the test suite's.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_stop_latency.py"
BACKENDS = ["asyncio", "asyncio+uvloop", "trio"] if sys.platform != "win32" else ["asyncio", "trio"]
HAVE_STOPSCOPE = importlib.util.find_spec("stopscope") is not None


@dataclass(frozen=True)
class SmokeRun:
    doc: dict[str, Any]
    stdout: str
    stderr: str
    out: Path


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> SmokeRun:
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(out),
         "--backends", ",".join(BACKENDS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    doc = json.loads(out.read_text(), parse_constant=_reject_constant)
    assert isinstance(doc, dict)
    return SmokeRun(doc=doc, stdout=proc.stdout, stderr=proc.stderr, out=out)


class TestSmoke:
    def test_top_level_keys(self, smoke: SmokeRun) -> None:
        assert set(smoke.doc) >= {
            "schema", "meta", "config", "strategies", "samples", "summary", "targets", "table",
        }

    def test_conditions_are_recorded(self, smoke: SmokeRun) -> None:
        meta = smoke.doc["meta"]
        for key in ("date", "python", "implementation", "platform", "machine", "cpu_count"):
            assert meta[key], key
        assert meta["mode"] == "smoke"
        assert "git_commit" in meta  # None outside a git checkout
        assert meta["versions"]["anyio"]
        assert smoke.doc["config"]["backends"] == BACKENDS
        assert smoke.doc["config"]["seed_interval"] > 0

    def test_latency_samples_cover_every_backend_and_n(self, smoke: SmokeRun) -> None:
        samples = smoke.doc["samples"]["latency"]
        seen = {(s["backend"], s["n"], s["strategy"]) for s in samples}
        expected = ["native-floor", "seed-poll", "anyio-event", "anyio-cancel", "hand-scope"]
        if HAVE_STOPSCOPE:
            expected += ["ss-wait", "ss-sleep", "ss-every", "ss-wait/tg", "taskscope"]
        for backend in BACKENDS:
            for n in smoke.doc["config"]["ns"]:
                for strategy in expected:
                    assert (backend, n, strategy) in seen, (backend, n, strategy)
        for s in samples:
            for key in ("spawn", "set", "last_exit", "scope_exit", "w_p50", "w_p99"):
                assert isinstance(s[key], float), (s, key)
            assert s["w_p50"] <= s["w_p99"] <= s["last_exit"]

    def test_other_figures_are_measured(self, smoke: SmokeRun) -> None:
        samples = smoke.doc["samples"]
        for figure in ("thread_wake", "micro", "memory", "idle_cpu"):
            assert samples[figure], figure
        assert {s["backend"] for s in samples["thread_wake"]} == set(BACKENDS)
        assert {s["object"] for s in samples["micro"]} >= {"asyncio.Event"}

    def test_summary_gives_ratios_to_references(self, smoke: SmokeRun) -> None:
        rows = smoke.doc["summary"]["latency"]
        assert rows
        compared = [r for r in rows if "ratio" in r["last_exit"]]
        assert compared
        for r in compared:
            assert r["last_exit"]["vs"] == r["reference"]

    def test_targets_have_verdicts(self, smoke: SmokeRun) -> None:
        targets = smoke.doc["targets"]
        if HAVE_STOPSCOPE:
            assert {t["target"] for t in targets} >= {"ss-wait", "ss-every", "taskscope"}
        for t in targets:
            assert isinstance(t["pass"], bool)
            assert t["limit"] > 0
            assert len(t["ci"]) == 2

    def test_table_is_printed(self, smoke: SmokeRun) -> None:
        assert "Stop request -> last worker exited" in smoke.stdout
        assert "Targets" in smoke.stdout
        assert smoke.doc["table"] in smoke.stdout
        assert "latency N=" in smoke.stderr  # progress goes to stderr

    def test_plot_is_written_or_skipped_with_a_message(self, smoke: SmokeRun) -> None:
        png = smoke.out.with_suffix(".png")
        if importlib.util.find_spec("matplotlib") is None:
            assert "plot skipped" in smoke.stderr
        else:
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
