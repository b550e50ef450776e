"""stopscope.testing: the run that ends an exploration, the idle rule, and where a
stack points when the backends are imported one after the other."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import pytest

from stopscope import Outcome, StopSignal
from stopscope.testing import Scenario, StopKit, StopRequirementError, explore, virtual_time

pytestmark = pytest.mark.anyio


class Batch:
    """Three jobs; a clean end (stopped or not) flushes them."""

    def __init__(self) -> None:
        self.flushed = False

    def was_flushed(self) -> bool:
        return self.flushed


async def forgets_to_flush_when_done(signal: StopSignal, batch: Batch) -> None:
    for _ in range(3):
        await anyio.lowlevel.checkpoint()
        if signal.is_set():
            batch.flushed = True
            return
    # bug: the path without a stop forgets the flush


async def raises_when_done(signal: StopSignal) -> None:
    for _ in range(3):
        await anyio.lowlevel.checkpoint()
        if signal.is_set():
            return
    raise ValueError("the last batch was lost")


class TestTheLastRunCounts:
    """The run in which the worker finishes before the stop point is checked too."""

    async def test_its_error_fails_the_exploration(self) -> None:
        result = await explore(lambda: Scenario(raises_when_done), within=1.0)
        assert not result.ok
        assert result.exhausted
        failure = result.failure
        assert failure is not None
        assert not failure.requested
        assert failure.outcome is Outcome.FAILED
        assert isinstance(failure.error, ValueError)
        assert result.runs[-1] is failure
        assert result.points == (0, 1, 2, 3)  # the stop landed at these, and they pass
        assert result.replay == "explore(..., points=[4])"
        text = result.describe()
        assert text.startswith("raises_when_done fails in a run its stop point never reached")
        assert "points 0-3 pass" in text
        assert "the worker raised after 3 scheduling points, before any stop" in text
        assert "the worker raised ValueError: the last batch was lost" in text
        with pytest.raises(StopRequirementError, match="the last batch was lost"):
            result.assert_ok()

    async def test_its_invariants_fail_the_exploration(self) -> None:
        def scenario() -> Scenario:
            batch = Batch()
            return Scenario(forgets_to_flush_when_done, batch, invariants=[batch.was_flushed])

        result = await explore(scenario, within=1.0)
        failure = result.failure
        assert failure is not None
        assert failure.outcome is Outcome.FINISHED
        assert failure.invariant_failures == (
            "invariant Batch.was_flushed failed: it returned False",
        )
        assert "the worker finished after 3 scheduling points, before any stop" in str(result)
        replayed = await explore(scenario, within=1.0, points=[4])
        assert replayed.failure is not None
        assert replayed.failure.invariant_failures == failure.invariant_failures

    async def test_a_clean_last_run_still_passes(self) -> None:
        result = await explore(lambda: Scenario(forgets_to_flush_when_done, Batch()), within=1.0)
        assert result.ok
        assert result.exhausted
        assert result.points == (0, 1, 2, 3)
        assert len(result.runs) == 4  # the clean last run is not a run the stop landed in


class TestIdleCountsFromTheLastPoint:
    """A worker is taken to wait for ever *idle* seconds after its last scheduling
    point: not later (the windows once started with the run), and a wait shorter than
    *idle* never is one."""

    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(self, request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
        return virtual_time(request.param)

    async def test_a_long_wait_after_a_short_one(self, stop_kit: StopKit) -> None:
        seen: list[float] = []

        async def naps(signal: StopSignal) -> None:
            await anyio.sleep(0.5)
            if await signal.sleep(1.4):  # longer than idle: taken as a wait for ever
                seen.append(anyio.current_time())

        start = anyio.current_time()
        result = await stop_kit.probe(naps, at_point=50, idle=1.0)
        assert result.moment == "at scheduling point 50, which it never reached"
        assert result.outcome is Outcome.STOPPED
        # stopped one idle second after its last point (at 0.5 s), not at 2 s
        assert [t - start for t in seen] == [pytest.approx(1.5, abs=1e-3)]

    async def test_waits_shorter_than_idle_are_followed(self, stop_kit: StopKit) -> None:
        times: list[float] = []

        async def short_naps(signal: StopSignal) -> None:
            for _ in range(4):
                await anyio.sleep(0.9)
                times.append(anyio.current_time())

        start = anyio.current_time()
        result = await stop_kit.probe(short_naps, at_point=50, idle=1.0)
        assert result.outcome is Outcome.FINISHED
        assert not result.requested
        assert [t - start for t in times] == pytest.approx([0.9, 1.8, 2.7, 3.6], abs=1e-3)


class TestLibraryFrames:
    def test_trio_imported_after_a_first_probe_is_library_code(self, tmp_path: Path) -> None:
        """The kit once cached which files are library code on first use: a trio probe
        after an asyncio one (trio imported later) pointed into trio's internals."""
        script = tmp_path / "probe_both.py"
        script.write_text(
            textwrap.dedent(
                """
                import sys

                import anyio

                from stopscope.testing import probe

                async def worker(signal):
                    await signal.wait()

                async def main():
                    return await probe(worker, grace=1.0)

                assert "trio" not in sys.modules, "trio was imported already"
                print(anyio.run(main, backend="asyncio").where_at_stop)
                assert "trio" not in sys.modules, "trio was imported already"
                print(anyio.run(main, backend="trio").where_at_stop)
                """
            )
        )
        run = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        on_asyncio, on_trio = run.stdout.splitlines()
        assert on_asyncio == "`await signal.wait()` (probe_both.py:9, in worker)"
        assert on_trio == on_asyncio


async def steps(signal: StopSignal, count: int) -> None:
    """Finishes by itself after *count* scheduling points (and ignores the signal)."""
    for _ in range(count):
        await anyio.lowlevel.checkpoint()


class TestMessages:
    async def test_one_point_is_singular(self) -> None:
        result = await explore(lambda: Scenario(steps, 0), within=1.0)
        assert str(result) == (
            "steps: every stop point passed (1 stop point; the worker ran out of scheduling points)"
        )
        finished = result.runs[0]
        assert finished.reached == 0

        one = await explore(lambda: Scenario(steps, 1), within=1.0, points=[1])
        assert one.runs[0].reached == 1
        ended = await explore(lambda: Scenario(raises_when_done), within=1.0, points=[2, 9])
        assert "; point 2 passes" in ended.describe()

    async def test_points_asked_for_are_not_the_limit(self) -> None:
        result = await explore(lambda: Scenario(steps, 100), within=1.0, points=[3, 7])
        assert result.points == (3, 7)
        assert str(result) == (
            "steps: every stop point passed (2 stop points; only the points asked for)"
        )
        sampled = await explore(
            lambda: Scenario(steps, 100), within=1.0, sample=2, seed=1, max_points=50
        )
        assert str(sampled).endswith("(2 stop points (seed 1); drawn from points 0-50)")


class TestPytestOutput:
    def test_the_kits_frames_are_hidden(self, tmp_path: Path) -> None:
        (tmp_path / "test_worker.py").write_text(
            textwrap.dedent(
                """
                import anyio
                import pytest

                pytestmark = pytest.mark.anyio

                @pytest.fixture
                def anyio_backend():
                    return "trio"

                async def deaf(signal):
                    await anyio.sleep_forever()

                async def test_probe(stop_kit):
                    result = await stop_kit.probe(deaf, grace=0.01)
                    result.assert_no_cancellation()

                async def test_explore(stop_kit):
                    from stopscope.testing import Scenario

                    result = await stop_kit.explore(lambda: Scenario(deaf), within=0.01)
                    result.assert_ok()
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
        )
        assert run.returncode == 1, run.stdout + run.stderr
        assert "2 failed" in run.stdout, run.stdout
        assert "the worker needed cancellation" in run.stdout
        assert "result.assert_no_cancellation()" in run.stdout  # the user's line is shown
        assert "_probe.py" not in run.stdout  # the kit's own frames are not
