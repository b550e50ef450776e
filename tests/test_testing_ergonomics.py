"""stopscope.testing, round two, item 7: names that mean one thing, one grace rule,
a plain worker for explore(), and a failure whose summary line says what failed.

These run on the conftest's three backends, in real time."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from stopscope import Outcome, StopSignal
from stopscope.testing import ProbeResult, Scenario, StopKit, StopRequirementError, explore, probe

pytestmark = pytest.mark.anyio


async def steps(signal: StopSignal, count: int) -> None:
    """Finishes by itself after *count* scheduling points (and ignores the signal)."""
    for _ in range(count):
        await anyio.lowlevel.checkpoint()


async def waits(signal: StopSignal) -> None:
    await signal.wait()


async def deaf(signal: StopSignal) -> None:
    await anyio.sleep_forever()


class TestNames:
    def test_a_probe_result_has_no_count_called_points(self) -> None:
        fields = {f.name for f in dataclasses.fields(ProbeResult)}
        assert "reached" in fields
        assert "points" not in fields  # points: the tuple of an exploration only

    async def test_reached_is_the_last_point_passed(self) -> None:
        stopped = await probe(steps, 10, at_point=4)
        assert (stopped.point, stopped.reached) == (4, 4)
        finished = await probe(steps, 2, at_point=9)
        assert finished.point is None  # no stop landed
        assert finished.reached == 2
        assert "the worker finished after 2 scheduling points, before any stop" in str(finished)


class TestOneGraceRule:
    async def test_probe_and_explore_default_to_twice_within(self) -> None:
        probed = await probe(waits, within=0.2)
        assert probed.grace == pytest.approx(0.4)
        explored = await explore(waits, within=0.2, points=[1])
        assert explored.runs[0].grace == pytest.approx(0.4)

    async def test_without_within_probe_gives_one_second(self) -> None:
        assert (await probe(waits)).grace == 1.0

    async def test_inf_waits_for_ever_in_both(self) -> None:
        probed = await probe(steps, 3, grace=math.inf)
        assert probed.grace is None
        explored = await explore(steps, 3, within=0.1, grace=math.inf, points=[1])
        assert explored.runs[0].grace is None
        assert explored.runs[0].outcome is Outcome.STOPPED

    async def test_an_explicit_grace_is_kept(self) -> None:
        assert (await probe(waits, within=0.2, grace=0.05)).grace == 0.05
        with pytest.raises(ValueError, match="`grace` must be a non-negative"):
            await probe(waits, grace=-1.0)


class TestAPlainWorker:
    async def test_the_worker_and_its_arguments(self) -> None:
        result = await explore(steps, 3, within=0.1)
        assert result.points == (0, 1, 2, 3)
        assert result.exhausted
        assert result.worker == "steps"

    async def test_a_worker_without_arguments(self, stop_kit: StopKit) -> None:
        result = await stop_kit.explore(waits, within=0.1, max_points=3)
        result.assert_ok()
        assert result.worker == "waits"

    async def test_a_scenario_is_reused(self) -> None:
        calls: list[int] = []

        async def counts(signal: StopSignal) -> None:
            calls.append(1)
            await signal.wait()

        result = await explore(Scenario(counts, name="counted"), within=0.1, max_points=2)
        assert result.ok
        assert result.worker == "counted"
        assert result.exhausted
        assert len(calls) == len(result.runs) + 1  # and the run that ran out of points

    async def test_a_factory_is_still_called_once_per_run(self) -> None:
        made: list[Scenario] = []

        def setup() -> Scenario:
            made.append(Scenario(steps, 2))
            return made[-1]

        result = await explore(setup, within=0.1)
        assert result.exhausted
        assert len(made) == len(result.runs) + 1

    async def test_a_callable_without_a_signature_is_a_factory(self) -> None:
        class Setup:
            __signature__ = "not a signature"  # inspect.signature() raises TypeError

            def __call__(self) -> Scenario:
                return Scenario(steps, 1)

        result = await explore(Setup(), within=0.1)
        assert result.worker == "steps"

    async def test_bad_setups(self) -> None:
        coro = steps(StopSignal(), 1)
        try:
            with pytest.raises(TypeError, match="`setup` must be a function"):
                await explore(coro, within=0.1)  # type: ignore[arg-type]
        finally:
            coro.close()
        with pytest.raises(TypeError, match="`setup` must be a function"):
            await explore(42, within=0.1)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="pass the worker's arguments to Scenario"):
            await explore(Scenario(steps, 1), 2, within=0.1)
        with pytest.raises(TypeError, match="`setup` must return a Scenario"):
            await explore(lambda: 42, within=0.1)  # type: ignore[arg-type,return-value]


class TestShortSummary:
    async def test_the_error_carries_a_short_line(self) -> None:
        result = await probe(deaf, grace=0.01)
        with pytest.raises(StopRequirementError) as caught:
            result.assert_no_cancellation()
        summary = caught.value.summary
        assert summary.startswith("deaf (test_testing_ergonomics.py:")
        assert summary.endswith("): needed cancellation")
        exploration = await explore(deaf, within=0.005)
        with pytest.raises(StopRequirementError) as caught:
            exploration.assert_ok()
        assert caught.value.summary.startswith("deaf at point 0 (test_testing_ergonomics.py:")
        assert str(caught.value).startswith("deaf fails when the stop lands at scheduling point 0")

    def test_a_plain_error_message_is_its_own_summary(self) -> None:
        assert StopRequirementError("one\ntwo").summary == "one"

    def test_pytest_shows_it_in_the_summary(self, tmp_path: Path) -> None:
        (tmp_path / "test_worker.py").write_text(
            textwrap.dedent(
                """
                import anyio
                import pytest
                from stopscope import StopSignal

                pytestmark = pytest.mark.anyio

                @pytest.fixture
                def anyio_backend():
                    return "trio"

                class Broker:
                    def __init__(self):
                        self.in_flight = []

                    def nothing_lost(self):
                        assert not self.in_flight

                async def take_then_ack(signal: StopSignal, broker: Broker) -> None:
                    while not signal.is_set():
                        broker.in_flight.append("m")
                        await anyio.sleep(0.001)
                        if signal.is_set():
                            return
                        broker.in_flight.pop()

                async def test_a_very_long_test_name_that_leaves_little_room_for_the_message(
                    stop_kit,
                ):
                    from stopscope.testing import Scenario

                    def scenario():
                        broker = Broker()
                        return Scenario(take_then_ack, broker, invariants=[broker.nothing_lost])

                    (await stop_kit.explore(scenario, within=0.5)).assert_ok()
                """
            )
        )
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_worker.py"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={"COLUMNS": "200", **_env()},
        )
        assert run.returncode == 1, run.stdout + run.stderr
        summary = [line for line in run.stdout.splitlines() if line.startswith("FAILED")]
        assert summary == [
            "FAILED test_worker.py::test_a_very_long_test_name_that_leaves_little_room_for_the_"
            "message - take_then_ack at point 1 (test_worker.py:22): invariant "
            "Broker.nothing_lost failed"
        ], run.stdout


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "COLUMNS"}
