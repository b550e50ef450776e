"""stopscope.testing: the probe, the exploration's modes, virtual time, and the plugin."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import stopscope.testing
from stopscope import Outcome, StopSignal
from stopscope.testing import (
    Exploration,
    ProbeResult,
    Scenario,
    StopKit,
    StopRequirementError,
    explore,
    probe,
    virtual_time,
)

pytestmark = pytest.mark.anyio


async def ticker(signal: StopSignal, ticks: list[float]) -> None:
    async for _ in signal.every(60.0):
        ticks.append(anyio.current_time())


async def deaf(signal: StopSignal) -> None:
    await anyio.sleep_forever()


async def steps(signal: StopSignal, count: int) -> None:
    """Finishes by itself after *count* scheduling points (and ignores the signal)."""
    for _ in range(count):
        await anyio.lowlevel.checkpoint()


async def fails_when_stopped(signal: StopSignal) -> None:
    await signal.wait()
    raise ValueError("cleanup went wrong")


async def busy_then_fails(signal: StopSignal) -> None:
    while not signal.is_set():
        await anyio.lowlevel.checkpoint()
    raise ValueError("cleanup went wrong")


class TestExports:
    def test_all_matches_public_names(self) -> None:
        # "@py_builtins" and the like: pytest rewrites the asserts of a plugin's package
        public = {n for n in vars(stopscope.testing) if not n.startswith(("_", "@"))}
        assert set(stopscope.testing.__all__) == public

    @pytest.mark.parametrize("name", stopscope.testing.__all__)
    def test_public_objects_show_the_public_module(self, name: str) -> None:
        assert getattr(stopscope.testing, name).__module__ == "stopscope.testing"


class TestVirtualTime:
    """A 30 s grace and a one-minute every() pass in no time, on the virtual clock."""

    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(self, request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
        return virtual_time(request.param)

    async def test_grace_and_every_follow_the_virtual_clock(self, stop_kit: StopKit) -> None:
        real_start, start = time.monotonic(), anyio.current_time()
        ticks: list[float] = []
        result = await stop_kit.probe(ticker, ticks, after=150.0, grace=30.0)
        assert [t - start for t in ticks] == pytest.approx([0.0, 60.0, 120.0], abs=1e-3)
        assert result.outcome is Outcome.STOPPED
        assert result.latency == pytest.approx(0.0, abs=1e-6)  # every() ends mid-wait
        assert result.virtual

        stuck = await stop_kit.probe(deaf, grace=30.0)
        assert stuck.outcome is Outcome.CANCELLED
        # the scope's grace timer (which dates its start by the real clock: a real
        # hiccup between the stop request and the timer's start shortens it a little)
        assert stuck.latency == pytest.approx(30.0, abs=0.05)
        assert anyio.current_time() - start == pytest.approx(180.0, abs=0.1)
        # three virtual minutes; a loose real bound, only to show the clock is not real
        assert time.monotonic() - real_start < 60.0

    async def test_threads_take_no_virtual_time(self, stop_kit: StopKit) -> None:
        async def writes_in_a_thread(signal: StopSignal, done: list[float]) -> None:
            await signal.wait()
            await anyio.to_thread.run_sync(time.sleep, 0.02)  # real time, in a thread
            done.append(anyio.current_time())

        done: list[float] = []
        result = await stop_kit.probe(writes_in_a_thread, done, grace=5.0)
        assert result.outcome is Outcome.STOPPED  # the 5 s grace did not "pass" meanwhile
        assert result.latency == pytest.approx(0.0, abs=1e-6)

    def test_uvloop_cannot_be_faked(self) -> None:
        with pytest.raises(ValueError, match="uvloop's clock cannot be faked"):
            virtual_time(("asyncio", {"use_uvloop": True}))

    def test_bad_backends(self) -> None:
        with pytest.raises(TypeError, match="`backend` must be an anyio_backend value"):
            virtual_time(42)
        with pytest.raises(ValueError, match="`backend` must be 'asyncio' or 'trio'"):
            virtual_time("curio")

    def test_options_are_kept(self) -> None:
        name, options = virtual_time(("asyncio", {"debug": True}))
        assert name == "asyncio"
        assert options["debug"] is True
        assert callable(options["loop_factory"])
        name, options = virtual_time(("trio", {"restrict_keyboard_interrupt_to_checkpoints": True}))
        assert options["restrict_keyboard_interrupt_to_checkpoints"] is True
        assert type(options["clock"]).__name__ == "MockClock"


class TestProbe:
    """Real time, on asyncio, uvloop and trio (the conftest matrix)."""

    async def test_a_finite_worker_finishes_before_the_stop(self, stop_kit: StopKit) -> None:
        result = await stop_kit.probe(steps, 3, at_point=10)
        assert not result.requested
        assert result.outcome is Outcome.FINISHED
        assert result.latency is None
        assert result.reached == 3
        assert result.ok
        assert "the worker finished after 3 scheduling points, before any stop" in str(result)

    async def test_stop_at_a_point(self, stop_kit: StopKit) -> None:
        result = await stop_kit.probe(steps, 5, at_point=2)
        assert result.requested
        assert result.point == 2
        assert result.reached == 2
        assert result.moment == "at scheduling point 2"
        assert result.outcome is Outcome.STOPPED  # it ignores the signal but ends soon

    async def test_stop_before_the_first_step(self, stop_kit: StopKit) -> None:
        seen: list[bool] = []

        async def looks(signal: StopSignal) -> None:
            seen.append(signal.is_set())

        result = await stop_kit.probe(looks, at_point=0)
        assert seen == [True]
        assert result.point == 0
        assert result.where_at_stop == "before its first step"
        assert "the stop landed before the worker's first step" in result.describe()

    async def test_an_error_is_reported_not_raised(self, stop_kit: StopKit) -> None:
        result = await stop_kit.probe(fails_when_stopped, grace=1.0)
        assert result.outcome is Outcome.FAILED
        assert isinstance(result.error, ValueError)
        assert result.failures == ("the worker raised ValueError: cleanup went wrong",)
        with pytest.raises(StopRequirementError, match="the worker raised ValueError"):
            result.assert_no_error()
        result.assert_no_cancellation()  # it did stop by itself

    async def test_too_slow(self, stop_kit: StopKit) -> None:
        async def slow(signal: StopSignal) -> None:
            await signal.wait()
            await anyio.sleep(0.05)

        result = await stop_kit.probe(slow, grace=5.0, within=0.001)
        assert result.latency is not None
        assert result.latency > 0.04  # uvloop's timers have a 1 ms resolution
        with pytest.raises(
            StopRequirementError,
            match=r"the worker took \d+(\.\d+)? ms to stop, more than the 1 ms allowed",
        ):
            result.assert_ok()
        with pytest.raises(StopRequirementError, match="more than the 10 ms allowed"):
            result.assert_stopped_within(0.01)
        result.assert_stopped_within(10.0)

    async def test_an_unreached_point_ends_the_run(self, stop_kit: StopKit) -> None:
        result = await stop_kit.probe(deaf, at_point=5, grace=0.01, idle=0.05)
        assert not result.requested
        assert result.reached == 1
        assert result.moment == "at scheduling point 5, which it never reached"
        assert "after its scheduling point 1 the worker waited for something" in str(result)

    async def test_invariants(self, stop_kit: StopKit) -> None:
        def holds() -> bool:
            return True

        def returns_false() -> bool:
            return False

        async def raises() -> None:
            raise RuntimeError("it broke")

        scenario = Scenario(deaf, invariants=[holds, returns_false, raises], name="deaf worker")
        result = await stop_kit.probe(scenario, grace=0.01)
        assert result.worker == "deaf worker"
        assert result.invariant_failures == (
            "invariant returns_false failed: it returned False",
            "invariant raises failed: it broke",
        )

    async def test_bad_arguments(self) -> None:
        with pytest.raises(TypeError, match="`worker` must be an async function"):
            Scenario(42)  # type: ignore[arg-type]
        coro = deaf(StopSignal())
        with pytest.raises(TypeError, match="not `fn\\(arg\\)`"):
            Scenario(coro)  # type: ignore[arg-type]
        coro.close()
        with pytest.raises(TypeError, match="each invariant must be callable"):
            Scenario(deaf, invariants=[1])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="pass the worker's arguments to Scenario"):
            await probe(Scenario(steps, 1), 2)
        with pytest.raises(ValueError, match="`at_point` must be a non-negative"):
            await probe(deaf, at_point=-1)
        with pytest.raises(TypeError, match="`at_point` must be an int"):
            await probe(deaf, at_point=1.5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="give `at_point` or `after`, not both"):
            await probe(deaf, at_point=1, after=1.0)
        with pytest.raises(ValueError, match="`grace` must be a non-negative number"):
            await probe(deaf, grace=float("nan"))
        with pytest.raises(TypeError, match="`within` must be a number of seconds"):
            await probe(deaf, within="fast")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="give `points` or `sample`, not both"):
            await explore(lambda: Scenario(deaf), within=0.1, points=[1], sample=3)
        with pytest.raises(ValueError, match="`points` must name at least one"):
            await explore(lambda: Scenario(deaf), within=0.1, points=[])
        with pytest.raises(ValueError, match="`within` must be a non-negative"):
            await explore(lambda: Scenario(deaf), within=-1)
        with pytest.raises(TypeError, match="`setup` must return a Scenario"):
            await explore(lambda: deaf, within=0.1)  # type: ignore[arg-type, return-value]


class TestExplore:
    async def test_a_finite_worker_runs_out_of_points(self) -> None:
        result = await explore(lambda: Scenario(steps, 4), within=1.0)
        assert result.ok
        assert result.exhausted
        assert result.points == (0, 1, 2, 3, 4)  # at 4 it is suspended in its last await
        assert str(result) == (
            "steps: every stop point passed "
            "(5 stop points; the worker ran out of scheduling points)"
        )
        result.assert_ok()

    async def test_the_limit(self) -> None:
        result = await explore(lambda: Scenario(steps, 100), within=1.0, max_points=5)
        assert result.points == (0, 1, 2, 3, 4, 5)
        assert not result.exhausted
        assert "stopped at the limit of 5 points" in result.describe()

    async def test_random_mode_is_seeded(self) -> None:
        first = await explore(lambda: Scenario(steps, 1000), within=1.0, sample=4, seed=7)
        again = await explore(lambda: Scenario(steps, 1000), within=1.0, sample=4, seed=7)
        assert len(first.points) == 4
        assert first.points == again.points
        assert first.seed == 7
        assert "(seed 7)" in first.describe()
        fresh = await explore(lambda: Scenario(steps, 1000), within=1.0, sample=2)
        assert fresh.seed is not None  # chosen, and shown so that the run can be replayed

    async def test_async_setup_and_replay_of_one_point(self) -> None:
        async def setup() -> Scenario:
            await anyio.lowlevel.checkpoint()
            return Scenario(busy_then_fails)

        result = await explore(setup, within=1.0, points=[3])
        assert result.points == (3,)
        assert isinstance(result, Exploration)
        assert isinstance(result.failure, ProbeResult)
        assert result.replay == "explore(..., points=[3])"
        with pytest.raises(StopRequirementError) as caught:
            result.assert_ok()
        assert str(caught.value).startswith(
            "busy_then_fails fails when the stop lands at scheduling point 3\n"
        )


class TestPlugin:
    def test_registered_through_the_entry_point(self, pytestconfig: pytest.Config) -> None:
        plugin = pytestconfig.pluginmanager.get_plugin("stopscope")
        assert plugin is not None
        assert plugin.__name__ == "stopscope.testing._plugin"

    def test_replay_option_and_fixture_in_a_fresh_project(self, tmp_path: Path) -> None:
        """A project with no conftest gets the fixture and the option from the package."""
        (tmp_path / "test_worker.py").write_text(
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

                async def test_worker(stop_kit):
                    result = await stop_kit.explore(lambda: Scenario(worker, []), within=1)
                    print("POINTS", result.points)
                    result.assert_ok()
                """
            )
        )
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_worker.py"]
        run = subprocess.run(
            command, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
        )
        assert run.returncode == 1, run.stdout + run.stderr
        assert "worker fails when the stop lands at scheduling point 0" in run.stdout
        assert (
            "replay just this run: pytest 'test_worker.py::test_worker' --stopscope-point=0 "
            "(or explore(..., points=[0]))" in run.stdout
        )
        replay = subprocess.run(
            [*command, "-s", "--stopscope-point=6"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert replay.returncode == 1, replay.stdout + replay.stderr
        assert "POINTS (6,)" in replay.stdout
        assert "fails when the stop lands at scheduling point 6\n" in replay.stdout
