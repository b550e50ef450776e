"""benchmarks/bench_explore.py and benchmarks/compare_tools.py run end to end and write
the JSON they promise (tiny sizes, one repetition; no speed is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *sys.path])}
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )


def test_bench_explore(tmp_path: Path) -> None:
    out = tmp_path / "explore.json"
    run = _run(
        "bench_explore.py",
        "--messages",
        "6",
        "--real-messages",
        "3",
        "--reps",
        "1",
        "--out",
        str(out),
    )
    assert run.returncode == 0, run.stdout + run.stderr
    doc = json.loads(out.read_text())
    assert doc["schema"] == "stopscope-bench-explore/1"
    assert set(doc["summary"]["asyncio (virtual)"]) == {"before", "every point", "per_site=2"}
    for modes in doc["lossy"].values():
        for found in modes.values():
            assert found["failure_point"] is not None
            assert "in take_then_ack" in found["failure_where"]
    assert doc["table"] in run.stdout


def test_compare_tools(tmp_path: Path) -> None:
    out = tmp_path / "compare.json"
    run = _run("compare_tools.py", "--reps", "1", "--out", str(out))
    assert run.returncode == 0, run.stdout + run.stderr
    doc = json.loads(out.read_text())
    assert all(tool["found"] for tool in doc["summary"].values())
    assert doc["table"] in run.stdout
