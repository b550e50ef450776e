"""The many-connections benchmark runs end to end and writes the results it promises.

It runs ``benchmarks/many_connections.py --quick`` (50 connections, one round, a 2 s
grace) on uvicorn and hypercorn/trio, plainly and wrapped in ``GracefulApp``, for
WebSockets and SSE streams, in a subprocess that starts the servers and the client
processes on 127.0.0.1 and kills them by their process groups.  Checked: every
configuration ran, every connection was established and ended with an outcome the
script knows, every server exited after SIGTERM, and the JSON's schema.  No speed and
no close code is asserted: speed is the benchmark's business, and what each server
sends is what the benchmark measures.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "many_connections.py"
SERVERS = ("uvicorn", "hypercorn-trio")
VARIANTS = ("plain", "GracefulApp")
KINDS = ("ws", "sse")
N = 50
#: what a client connection can end with
OUTCOME = re.compile(r"^(close \d{4}|end|end, retry|cut|cut \(\w+\))$")


@pytest.fixture(scope="module")
def doc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("many") / "quick.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--servers",
            ",".join(SERVERS),
            "--variants",
            ",".join(VARIANTS),
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    loaded = json.loads(out.read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_schema_and_conditions(doc: dict[str, Any]) -> None:
    assert doc["schema"] == "stopscope-many-connections/1"
    assert set(doc) >= {"meta", "config", "summary", "runs", "table"}
    assert doc["meta"]["mode"] == "quick"
    assert doc["meta"]["rlimit_nofile"] > N
    assert doc["config"]["ns"] == [N]
    assert doc["config"]["servers"] == list(SERVERS)


def test_every_configuration_ran_and_every_server_exited(doc: dict[str, Any]) -> None:
    seen = {(r["server"], r["variant"], r["kind"], r["n"]) for r in doc["runs"]}
    assert seen == {(s, v, k, N) for s in SERVERS for v in VARIANTS for k in KINDS}
    for run in doc["runs"]:
        assert "error" not in run, run
        assert run["connected"] == N, run
        assert run["exit_seconds"] is not None, run
        assert run["exit_seconds"] > 0, run


def test_every_connection_ended_with_a_known_outcome(doc: dict[str, Any]) -> None:
    for run in doc["runs"]:
        outcomes = run["client_outcomes"]
        assert sum(outcomes.values()) == N, run
        for outcome in outcomes:
            assert OUTCOME.match(outcome), (outcome, run)
        if run["kind"] == "ws":
            assert not any(o.startswith("end") for o in outcomes), run
        else:
            assert not any(o.startswith("close") for o in outcomes), run
        ends = run["client_end_seconds"]
        assert ends["p50"] <= ends["p99"] <= ends["max"], run


def test_summary_has_one_row_per_configuration(doc: dict[str, Any]) -> None:
    rows = doc["summary"]
    assert len(rows) == len(SERVERS) * len(VARIANTS) * len(KINDS)
    for row in rows:
        assert row["runs"] == 1
        assert row["connected_min"] == N
        assert row["exit_seconds_median"] == row["exit_seconds"][0]
        assert sum(row["client_outcomes_total"].values()) == N
        assert row["server"] in doc["table"]
