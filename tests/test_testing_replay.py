"""The replay command of a failing exploration works for every test id.

A test id holds the parametrize ids, which may hold braces (the id was put into the
command with ``str.format``, so the exploration raised ``KeyError`` instead of
failing) and quotes (the single-quoted command was then no valid shell).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from stopscope import StopSignal
from stopscope.testing import Scenario, StopKit

pytestmark = pytest.mark.anyio


async def fails_when_stopped(signal: StopSignal) -> None:
    await anyio.lowlevel.checkpoint()
    if signal.is_set():
        raise RuntimeError("stopped at a bad moment")


def command_of(replay: str | None) -> list[str]:
    assert replay is not None
    command, _, fallback = replay.partition(" (or ")
    assert fallback == "explore(..., points=[0]))"
    return shlex.split(command)


@pytest.mark.parametrize(
    "nodeid",
    [
        "test_x.py::test_y[{name}]",
        "test_x.py::test_y[don't]",
        "test_x.py::test_y[it's {a} 'b']",
        "test_x.py::test_y[asyncio]",
    ],
)
async def test_the_command_holds_the_test_id_as_it_is(nodeid: str) -> None:
    kit = StopKit(nodeid=nodeid)
    exploration = await kit.explore(Scenario(fails_when_stopped), within=1.0)
    assert exploration.failure is not None
    assert command_of(exploration.replay) == ["pytest", nodeid, "--stopscope-point=0"]


def test_the_printed_command_replays_the_run_through_a_shell(tmp_path: Path) -> None:
    (tmp_path / "test_ids.py").write_text(
        textwrap.dedent(
            """
            import anyio
            import pytest

            from stopscope.testing import Scenario

            pytestmark = pytest.mark.anyio

            @pytest.fixture
            def anyio_backend():
                return "trio"

            async def worker(signal, log):
                for n in range(10):
                    log.append(n)
                    await anyio.lowlevel.checkpoint()
                    if n == 6 and signal.is_set():
                        raise RuntimeError("stopped at a bad moment")

            @pytest.mark.parametrize("label", ["{name}", "don't"])
            async def test_worker(stop_kit, label):
                result = await stop_kit.explore(lambda: Scenario(worker, []), within=1)
                print("POINTS", result.points)
                result.assert_ok()
            """
        )
    )
    pytest_command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    run = subprocess.run(
        [*pytest_command, "test_ids.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "KeyError" not in run.stdout
    prefix = "replay just this run: "
    replays = [line.split(prefix, 1)[1] for line in run.stdout.splitlines() if prefix in line]
    assert len(replays) == 2, run.stdout
    for replay in replays:
        command, _, _ = replay.partition(" (or ")
        assert command.startswith("pytest '")
        assert command.endswith(" --stopscope-point=0")
        # the command as printed, run by a shell, with this Python's pytest and point 6
        printed = command.removeprefix("pytest ").removesuffix("0") + "6"
        shell = f"{shlex.join(pytest_command)} -s {printed}"
        again = subprocess.run(
            shell,
            shell=True,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert again.returncode == 1, again.stdout + again.stderr
        assert "1 failed" in again.stdout, again.stdout
        assert "POINTS (6,)" in again.stdout
        assert "fails when the stop lands at scheduling point 6\n" in again.stdout
