"""stopscope.testing, round two: the features of the two halves of issue 18 together.

Hard-cancel runs (``mode="cancel"``) go through their own driver, not the graceful
run; the leak check, site mode and the renamed fields must hold there too.  asyncio
and trio run in virtual time; uvloop's clock cannot be faked, so it runs in real time.
"""

from __future__ import annotations

import inspect
import sys
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup

from stopscope import StopSignal
from stopscope.testing import Scenario, StopKit, explore, probe, virtual_time

pytestmark = pytest.mark.anyio

BACKENDS = [
    pytest.param("asyncio", id="asyncio-virtual"),
    pytest.param(
        ("asyncio", {"use_uvloop": True}),
        id="uvloop-real",
        marks=pytest.mark.skipif(sys.platform == "win32", reason="uvloop is POSIX only"),
    ),
    pytest.param("trio", id="trio-virtual"),
]


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> object:
    backend: object = request.param
    return backend if isinstance(backend, tuple) else virtual_time(backend)


def line_of(func: Callable[..., Any], text: str) -> int:
    lines, start = inspect.getsourcelines(func)
    return start + next(i for i, line in enumerate(lines) if text in line)


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


async def lossy(signal: StopSignal, broker: Broker) -> None:
    """Shuts down by plain cancellation; a cancellation while handling loses the message."""
    while True:
        message = await broker.take()
        await anyio.sleep(0.001)  # BUG: cancelled here, the message is neither acked nor back
        broker.ack(message)


async def cancel_safe(signal: StopSignal, broker: Broker) -> None:
    while True:
        message = await broker.take()
        with anyio.CancelScope(shield=True):
            await anyio.sleep(0.001)
            broker.ack(message)


def scenario_of(worker: Callable[[StopSignal, Broker], Awaitable[None]]) -> Callable[[], Scenario]:
    def scenario() -> Scenario:
        broker = Broker(6)
        return Scenario(worker, broker, invariants=[broker.nothing_lost])

    return scenario


async def spawns_into_a_nursery_it_was_given(signal: StopSignal, tg: TaskGroup) -> None:
    tg.start_soon(anyio.sleep_forever, name="heartbeat")
    await anyio.sleep_forever()


async def cleans_up_after_itself(signal: StopSignal) -> None:
    """Tasks of its own task group, a thread it joins, anyio's worker threads."""
    done = threading.Event()
    thread = threading.Thread(target=done.wait, name="joined")
    thread.start()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.sleep, 0.001)
            await anyio.to_thread.run_sync(done.set)
            await anyio.sleep_forever()
    finally:
        done.set()
        thread.join()


def within_for(anyio_backend: object) -> float:
    return 0.5 if isinstance(anyio_backend, tuple) else 0.05


class TestLeaksInHardCancelRuns:
    async def test_a_task_left_in_a_nursery_fails_the_run(self, stop_kit: StopKit) -> None:
        async with anyio.create_task_group() as tg:
            result = await stop_kit.probe(spawns_into_a_nursery_it_was_given, tg, mode="cancel")
            tg.cancel_scope.cancel()
        line = line_of(spawns_into_a_nursery_it_was_given, "tg.start_soon")
        assert result.mode == "cancel"
        assert result.leaks == (
            f"the worker left a task running: 'heartbeat', started at "
            f'`tg.start_soon(anyio.sleep_forever, name="heartbeat")` '
            f"(test_testing_together.py:{line}, in spawns_into_a_nursery_it_was_given)",
        )
        assert not result.ok

    async def test_a_worker_that_cleans_up_passes_every_point(
        self, stop_kit: StopKit, anyio_backend: object
    ) -> None:
        result = await stop_kit.explore(
            cleans_up_after_itself, within=within_for(anyio_backend), mode="cancel"
        )
        result.assert_ok()
        assert len(result.runs) > 3
        assert all(run.leaks == () for run in result.runs)

    async def test_the_watch_is_gone_after_the_run(self) -> None:
        start = threading.Thread.start
        await probe(cleans_up_after_itself, mode="cancel")
        assert threading.Thread.start is start


class TestSiteModeInHardCancelRuns:
    async def test_finds_the_lossy_worker_at_its_line(
        self, stop_kit: StopKit, anyio_backend: object
    ) -> None:
        within = within_for(anyio_backend)
        full = await explore(scenario_of(lossy), within=within, mode="cancel")
        sites = await stop_kit.explore(scenario_of(lossy), within=within, mode="cancel", per_site=1)
        assert full.failure is not None
        assert sites.failure is not None, sites.describe()
        assert sites.failure.mode == "cancel"
        assert sites.failure.invariant_failures
        line = line_of(lossy, "await anyio.sleep(0.001)")
        assert f"(test_testing_together.py:{line}, in lossy)" in sites.failure.where_at_stop
        assert sites.replay is not None
        assert f"--stopscope-point={sites.failure.point}" in sites.replay

    async def test_a_cancel_safe_worker_passes_in_fewer_runs(self, anyio_backend: object) -> None:
        within = within_for(anyio_backend)
        full = await explore(scenario_of(cancel_safe), within=within, mode="cancel")
        sites = await explore(scenario_of(cancel_safe), within=within, mode="cancel", per_site=1)
        full.assert_ok()
        sites.assert_ok()
        assert full.exhausted
        assert sites.exhausted
        assert sites.sites is not None
        assert len(sites.runs) < len(full.runs)
        assert set(sites.points) <= set(full.points)


class TestNamesInHardCancelRuns:
    async def test_reached_counts_the_points_before_the_cancellation(self) -> None:
        async def three(signal: StopSignal) -> None:
            for _ in range(3):
                await anyio.lowlevel.checkpoint()

        result = await probe(three, at_point=10, mode="cancel")
        assert result.reached == 3
        assert not result.requested
        assert "the worker finished after 3 scheduling points, before any cancellation" in (
            result.describe()
        )


async def flush() -> None:
    await anyio.sleep(0.01)


async def flushes_in_finally(signal: StopSignal) -> None:
    try:
        await anyio.sleep_forever()
    finally:
        await flush()


class TestSummaryOfHardCancelRuns:
    """The one-line summary (pytest's short test summary) of kit1's failures."""

    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(self, request: pytest.FixtureRequest) -> object:
        return virtual_time(request.param)

    async def test_a_cut_cleanup_is_summed_up_whole_with_where_it_was_cancelled(self) -> None:
        result = await probe(flushes_in_finally, at_point=1, mode="cancel")
        stopped = line_of(flushes_in_finally, "await anyio.sleep_forever()")
        cut = line_of(flushes_in_finally, "await flush()")
        with pytest.raises(AssertionError) as caught:
            result.assert_ok()
        assert caught.value.summary == (  # type: ignore[attr-defined]
            f"flushes_in_finally at point 1 (test_testing_together.py:{stopped}): "
            f"a cancellation cut the cleanup await `await flush()` "
            f"(test_testing_together.py:{cut}, in flushes_in_finally) short"
        )

    async def test_a_colon_inside_the_code_does_not_cut_the_summary(self) -> None:
        async def posts(signal: StopSignal) -> None:
            try:
                await anyio.sleep_forever()
            finally:
                await anyio.sleep(len({"a": 1}))

        result = await probe(posts, at_point=1, mode="cancel")
        with pytest.raises(AssertionError) as caught:
            result.assert_ok()
        summary = caught.value.summary  # type: ignore[attr-defined]
        assert summary.endswith(
            ' `await anyio.sleep(len({"a": 1}))` (test_testing_together.py:'
            f"{line_of(posts, 'len(')}, in posts) short"
        ), summary
