"""stopscope.testing, round two, item 6: explorations that do not cost N**2 steps.

Site mode (``explore(per_site=K)``) stops the worker only at the first K points of
each distinct await site and at the last one; it must still find the lossy
take-then-ack worker at its line, try every site a full exploration tries, and choose
the same points every time.  asyncio and trio run in virtual time, uvloop in real time.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Awaitable, Callable

import anyio
import pytest

from stopscope import StopSignal
from stopscope.testing import Scenario, StopKit, explore, probe, virtual_time
from stopscope.testing._sites import plan_by_site

pytestmark = pytest.mark.anyio


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="asyncio-virtual"),
        pytest.param(
            ("asyncio", {"use_uvloop": True}),
            id="uvloop-real",
            marks=pytest.mark.skipif(sys.platform == "win32", reason="uvloop is POSIX only"),
        ),
        pytest.param("trio", id="trio-virtual"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> object:
    backend: object = request.param
    return backend if isinstance(backend, tuple) else virtual_time(backend)


class Broker:
    """A queue with acknowledgements; what is taken is in flight until acked."""

    def __init__(self, count: int) -> None:
        self._queue = deque(f"m{i}" for i in range(count))
        self.in_flight: list[str] = []

    async def take(self) -> str:
        await anyio.lowlevel.checkpoint()
        if not self._queue:
            await anyio.sleep_forever()
        message = self._queue.popleft()
        self.in_flight.append(message)
        return message

    def ack(self, message: str) -> None:
        self.in_flight.remove(message)

    def nothing_lost(self) -> None:
        assert not self.in_flight, f"{self.in_flight} taken, then neither acked nor given back"


async def take_then_ack(signal: StopSignal, broker: Broker) -> None:
    while True:
        with signal.cancel_scope() as waiting:
            message = await broker.take()
        if waiting.cancelled_caught:
            return
        with signal.cancel_scope():  # BUG: a stop while handling drops the message
            await anyio.sleep(0.001)
            broker.ack(message)


async def good_consumer(signal: StopSignal, broker: Broker) -> None:
    while True:
        with signal.cancel_scope() as waiting:
            message = await broker.take()
        if waiting.cancelled_caught:
            return
        await anyio.sleep(0.001)
        broker.ack(message)


def consumers(
    worker: Callable[[StopSignal, Broker], Awaitable[None]], count: int
) -> Callable[[], Scenario]:
    def scenario() -> Scenario:
        broker = Broker(count)
        return Scenario(worker, broker, invariants=[broker.nothing_lost])

    return scenario


def line_of(text: str) -> int:
    import inspect

    lines, start = inspect.getsourcelines(take_then_ack)
    return start + next(i for i, line in enumerate(lines) if text in line)


class TestSiteMode:
    async def test_finds_the_lossy_worker_at_its_line(
        self, stop_kit: StopKit, anyio_backend: object
    ) -> None:
        within = 0.5 if isinstance(anyio_backend, tuple) else 0.05
        result = await stop_kit.explore(consumers(take_then_ack, 30), within=within, per_site=1)
        failure = result.failure
        assert failure is not None, result.describe()
        assert failure.invariant_failures
        line = line_of("await anyio.sleep(0.001)")
        assert f"(test_testing_speed.py:{line}, in take_then_ack)" in failure.where_at_stop
        assert result.replay is not None
        assert f"--stopscope-point={failure.point}" in result.replay
        assert "fails when the stop lands at scheduling point" in result.describe()
        if isinstance(anyio_backend, tuple):
            return  # real time: a 1 ms handling can win its race with a replayed stop
        again = await explore(
            consumers(take_then_ack, 30),
            within=within,
            points=[failure.point or 0],
        )
        assert again.failure is not None  # the replay fails the same way
        assert again.failure.where_at_stop == failure.where_at_stop

    async def test_covers_every_site_of_the_full_exploration_in_fewer_runs(
        self, anyio_backend: object
    ) -> None:
        within = 0.5 if isinstance(anyio_backend, tuple) else 0.05
        scenario = consumers(good_consumer, 20)
        full = await explore(scenario, within=within)
        sites = await explore(scenario, within=within, per_site=2)
        full.assert_ok()
        sites.assert_ok()
        assert full.exhausted
        assert sites.exhausted
        assert set(sites.points) < set(full.points)
        assert len(sites.runs) * 4 < len(full.runs)
        assert {r.where_at_stop for r in sites.runs} == {r.where_at_stop for r in full.runs}
        assert sites.sites is not None
        assert sites.per_site == 2
        assert str(sites) == (
            f"good_consumer: every stop point passed ({len(sites.runs)} stop points at "
            f"{sites.sites} await sites, the first 2 and the last of each; the worker ran "
            f"out of scheduling points)"
        )

    @pytest.mark.parametrize("anyio_backend", [virtual_time("asyncio"), virtual_time("trio")])
    async def test_the_same_points_every_time(self) -> None:
        """In virtual time (in real time a 1 ms sleep may race the next point)."""
        scenario = consumers(good_consumer, 10)
        first = await explore(scenario, within=0.05, per_site=1)
        second = await explore(scenario, within=0.05, per_site=1)
        assert first.points == second.points

    async def test_the_limit_bounds_the_survey(self) -> None:
        result = await explore(good_consumer, Broker(50), within=0.5, max_points=10, per_site=1)
        assert not result.exhausted
        assert max(result.points) <= 10
        assert "stopped at the limit of 10 points" in str(result)

    async def test_the_run_that_runs_out_of_points_is_checked(self) -> None:
        async def raises_when_done(signal: StopSignal) -> None:
            for _ in range(5):
                await anyio.lowlevel.checkpoint()
            if not signal.is_set():  # only the run nobody stops goes wrong
                raise ValueError("done badly")

        result = await explore(raises_when_done, within=0.5, per_site=1)
        failure = result.failure
        assert failure is not None
        assert result.exhausted
        assert failure.point is None
        assert isinstance(failure.error, ValueError)
        assert result.replay == f"explore(..., points=[{failure.reached + 1}])"

    async def test_bad_arguments(self) -> None:
        with pytest.raises(ValueError, match="`per_site` must be at least 1"):
            await explore(good_consumer, Broker(1), within=0.1, per_site=0)
        with pytest.raises(ValueError, match="give `per_site` alone"):
            await explore(good_consumer, Broker(1), within=0.1, per_site=1, points=[1])
        with pytest.raises(ValueError, match="give `per_site` alone"):
            await explore(good_consumer, Broker(1), within=0.1, per_site=1, sample=3)
        with pytest.raises(TypeError, match="`per_site` must be an int"):
            await explore(good_consumer, Broker(1), within=0.1, per_site=1.5)  # type: ignore[arg-type]


class TestPlan:
    def test_first_k_and_last_of_each_site(self) -> None:
        a, b, c = ((),), (("b", 1),), (("c", 2),)
        sites = [a, b, a, b, a, b, c, a]
        assert plan_by_site(sites, 1, 100) == [0, 1, 2, 6, 7, 8]  # type: ignore[arg-type]
        assert plan_by_site(sites, 2, 100) == [0, 1, 2, 3, 4, 6, 7, 8]  # type: ignore[arg-type]
        assert plan_by_site(sites, 1, 3) == [0, 1, 2, 3]  # type: ignore[arg-type]


class TestVirtualTimeTurns:
    @pytest.mark.parametrize("anyio_backend", [virtual_time("asyncio")])
    async def test_a_timer_costs_a_few_loop_turns(self) -> None:
        """looptime polls 42 idle turns before each jump by default; the kit's loop
        jumps at once (it holds time still for threads itself)."""
        import asyncio

        loop = asyncio.get_running_loop()
        selector = loop._selector  # type: ignore[attr-defined]
        inner = selector.select
        turns = 0

        def counting(timeout: float | None = None) -> object:
            nonlocal turns
            turns += 1
            return inner(timeout)

        selector.select = counting
        try:
            for _ in range(10):
                await anyio.sleep(1.0)
        finally:
            selector.select = inner
        assert turns <= 10 * 3


class TestIdleLateInVirtualTime:
    @pytest.mark.parametrize("anyio_backend", [virtual_time("asyncio"), virtual_time("trio")])
    async def test_a_worker_that_waits_for_ever_after_an_hour(self) -> None:
        """At 7200.48 s a wait since 3600.48 s is 3599.9999999999995 s of float: the
        run used to sleep the rest, which the clock's whole ticks never move, for ever
        (an explicit *idle*: without one, the clock says at once that nothing is due)."""
        await anyio.sleep(3600.48)
        with anyio.fail_after(10_000):
            result = await probe(parked, at_point=50, idle=3600)
        assert not result.requested
        assert result.moment == "at scheduling point 50, which it never reached"
        assert anyio.current_time() == pytest.approx(3600.48 + 3600)

    @pytest.mark.parametrize("anyio_backend", [virtual_time("asyncio"), virtual_time("trio")])
    async def test_without_idle_the_clock_decides_at_once(self) -> None:
        await anyio.sleep(3600.48)
        with anyio.fail_after(10_000):
            result = await probe(parked, at_point=50)
        assert not result.requested
        assert result.moment == "at scheduling point 50, which it never reached"
        assert anyio.current_time() == pytest.approx(3600.48)


async def parked(signal: StopSignal) -> None:
    await signal.wait()


class TestSurvey:
    async def test_notes_only_the_points_before_the_stop(self) -> None:
        """Points the worker passes after the stop (its cleanup) are not planned: a
        run cannot stop it there, and in real time it would wait *idle* seconds."""
        from stopscope.testing._probe import _run
        from stopscope.testing._sites import Site

        async def cleans_up(signal: StopSignal) -> None:
            try:
                await signal.wait()
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.sleep(0.001)  # points after the stop
                    await anyio.sleep(0.001)

        sites: list[Site] = []
        result = await _run(
            Scenario(cleans_up),
            at_point=10**6,
            after=None,
            grace=1.0,
            idle=0.05,
            within=None,
            sites=sites,
        )
        assert not result.requested
        assert len(sites) == result.reached
