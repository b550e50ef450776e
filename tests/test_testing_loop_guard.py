"""The hang guard in virtual time, for a busy loop in a task the worker started.

The worker's own points are what the hang guard counted; a worker that waits on its
task group while a child spins on checkpoints went through none, and in virtual time
no clock moved, so neither its grace nor a ``fail_after`` could end the run: it hung
for ever.  The loop guard counts the loop's busy turns instead.  Virtual time only
(in real time the grace, or a ``fail_after`` in the test, ends such a run).
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

import anyio
import anyio.abc
import pytest

from stopscope import Outcome, StopSignal
from stopscope.testing import Scenario, explore, probe, virtual_time
from stopscope.testing._probe import DEFAULT_HANG_POINTS, DEFAULT_IDLE_REAL

pytestmark = pytest.mark.anyio

#: a bound far below the default, so that each test is quick
HANG: Final = 300
#: and the real seconds the loop must stay busy too (ten by default)
BUSY: Final = 0.2


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="asyncio-virtual"),
        pytest.param("trio", id="trio-virtual"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> object:
    return virtual_time(request.param)


def line_of(func: Callable[..., Any], text: str) -> int:
    lines, start = inspect.getsourcelines(func)
    return start + next(i for i, line in enumerate(lines) if text in line)


async def spin() -> None:
    while True:
        await anyio.lowlevel.checkpoint()


async def waits_while_a_child_spins(signal: StopSignal) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(spin)
        await signal.wait()
        tg.cancel_scope.cancel()


async def deaf_while_a_child_spins(signal: StopSignal) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(spin)


def where(func: Callable[..., Any], text: str, name: str) -> str:
    return f"`{text}` (test_testing_loop_guard.py:{line_of(func, text)}, in {name})"


class TestBusyChild:
    async def test_probe_once_it_waits_is_stopped(self) -> None:
        result = await probe(waits_while_a_child_spins, hang_points=HANG, idle=BUSY)
        assert result.outcome is Outcome.STOPPED
        assert result.moment == f"by the hang guard, after {HANG} busy loop turns"
        worker = where(
            waits_while_a_child_spins, "await signal.wait()", "waits_while_a_child_spins"
        )
        child = where(spin, "await anyio.lowlevel.checkpoint()", "spin")
        assert result.failures == (
            f"the loop never went idle: {HANG} loop turns went by with a task ready to run "
            f"and the clock standing still while the worker was at {worker}, and a task was "
            f"busy at {child} (a busy loop in a task the worker started?); the kit requested "
            f"its stop to end the run (hang_points={HANG})",
        )
        assert result.point is None

    async def test_a_child_that_ignores_the_stop_is_cancelled(self) -> None:
        result = await probe(deaf_while_a_child_spins, hang_points=HANG, idle=BUSY, grace=60.0)
        assert result.outcome is Outcome.CANCELLED
        failures = result.failures
        assert len(failures) == 2, failures
        assert failures[0].startswith(f"the loop never went idle: {HANG} loop turns")
        assert failures[1].startswith(
            f"the loop never went idle after the stop request: {HANG} loop turns"
        )
        assert "so the kit cancelled the run to end it" in failures[1]
        assert "needed cancellation" not in str(result)  # its grace never passed

    async def test_in_cancel_mode(self) -> None:
        result = await probe(deaf_while_a_child_spins, hang_points=HANG, idle=BUSY, mode="cancel")
        assert result.outcome is Outcome.CANCELLED
        assert result.failures[0].startswith(f"the loop never went idle: {HANG} loop turns")
        assert "the kit cancelled it to end the run" in result.failures[0]

    @pytest.mark.parametrize("mode", ["stop", "cancel"])
    async def test_explore_fails_with_a_replay_that_reproduces(self, mode: Any) -> None:
        def scenario() -> Scenario:
            return Scenario(deaf_while_a_child_spins)

        exploration = await explore(scenario, within=1.0, hang_points=HANG, idle=BUSY, mode=mode)
        failure = exploration.failure
        assert failure is not None
        assert "the loop never went idle" in str(exploration)
        assert exploration.replay is not None
        point = int(exploration.replay.rpartition("[")[2].rstrip("])"))
        again = await explore(
            scenario, within=1.0, hang_points=HANG, idle=BUSY, mode=mode, points=[point]
        )
        assert again.failure is not None
        assert again.failure.failures == failure.failures


async def ping_pong(signal: StopSignal) -> None:
    """A feeder busy for most of the bound before each message it sends, with the clock
    standing still: the loop is busy throughout, for many times the bound, but each
    message moves the worker a point, so it is no hang."""
    send, receive = anyio.create_memory_object_stream[int]()

    async def feed() -> None:
        async with send:
            for n in range(4):
                for _ in range(2 * HANG // 3):
                    await anyio.lowlevel.checkpoint()
                await send.send(n)

    async with anyio.create_task_group() as tg:
        tg.start_soon(feed)
        async with receive:
            async for _ in receive:
                pass
    await signal.wait()


async def spins_a_while(signal: StopSignal) -> None:
    """A child busy for fewer turns than the bound, then waiting a moment, again and
    again: the clock moves between its bursts, so it is no hang either."""

    async def bursts() -> None:
        for _ in range(3):
            for _ in range(HANG // 2):
                await anyio.lowlevel.checkpoint()
            await anyio.sleep(0.001)

    async with anyio.create_task_group() as tg:
        tg.start_soon(bursts)
    await signal.wait()


class TestNoFalseAlarm:
    @pytest.mark.parametrize("worker", [ping_pong, spins_a_while])
    async def test_a_busy_loop_that_makes_progress_passes(
        self, worker: Callable[[StopSignal], Any]
    ) -> None:
        result = await probe(worker, hang_points=HANG, idle=BUSY)
        assert result.ok, result
        assert result.outcome is Outcome.STOPPED
        assert result.moment == "once it was waiting"


async def callbacks_spin(signal: StopSignal) -> None:
    """A chain of loop callbacks, each scheduling the next: no task is busy."""
    loop = asyncio.get_running_loop()
    handles: list[asyncio.Handle] = []

    def again() -> None:
        handles.append(loop.call_soon(again))

    again()
    try:
        await signal.wait()
    finally:
        handles[-1].cancel()


class TestBusyCallbacks:
    @pytest.fixture
    def anyio_backend(self) -> object:
        return virtual_time("asyncio")  # loop callbacks are asyncio's

    async def test_the_report_says_no_task_was_busy(self) -> None:
        result = await probe(callbacks_spin, at_point=5, hang_points=HANG, idle=BUSY)
        assert result.outcome is Outcome.STOPPED
        assert len(result.failures) == 1
        assert "and no task was (callbacks) (a busy loop" in result.failures[0]

    async def test_the_busy_task_is_named_while_the_kit_waits_for_a_point(self) -> None:
        """explore() waits for the worker's point by polling the loop: its own task is
        ready to run beside the busy one, and is not the one named."""
        exploration = await explore(
            lambda: Scenario(deaf_while_a_child_spins), within=1.0, hang_points=HANG, idle=BUSY
        )
        child = where(spin, "await anyio.lowlevel.checkpoint()", "spin")
        for run in exploration.runs:
            for failure in run.failures:
                assert f"busy at {child}" in failure, failure


async def spins_briefly(signal: StopSignal) -> None:
    """A child busy for a moment, then done: the loop settles, and the stop lands once
    the worker waits, as always."""

    async def burst() -> None:
        for _ in range(HANG):
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(burst)
    await signal.wait()


class TestRealTime:
    """In real time a probe that waits for the worker to wait gives up after *idle*
    seconds in which the worker took no step and the loop never settled."""

    @pytest.fixture(
        params=[
            pytest.param(("asyncio", {}), id="asyncio-real"),
            pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop-real"),
            pytest.param(("trio", {}), id="trio-real"),
        ]
    )
    def anyio_backend(self, request: pytest.FixtureRequest) -> object:
        return request.param

    async def test_a_worker_that_stops_its_busy_child_passes(self) -> None:
        """Regression: the stop the hang guard requests ends the busy child as asked, so
        the run passes (it failed: a busy server's loop never settles on trio)."""
        result = await probe(waits_while_a_child_spins, idle=0.2)
        assert result.outcome is Outcome.STOPPED
        assert result.moment == "by the hang guard, after 0.2 s in which the loop never went idle"
        assert result.ok, result
        assert result.point is None

    async def test_a_child_deaf_to_the_stop_fails_naming_it(self) -> None:
        result = await probe(deaf_while_a_child_spins, idle=0.2, grace=0.2)
        assert result.outcome is Outcome.CANCELLED
        child = where(spin, "await anyio.lowlevel.checkpoint()", "spin")
        [note] = [f for f in result.failures if f.startswith("the loop never went idle")]
        assert note.startswith("the loop never went idle: for 0.2 s a task was ready to run")
        assert f"a task was busy at {child}" in note
        assert note.endswith("the kit requested its stop to end the run (idle=0.2)")

    async def test_in_cancel_mode_the_cancel_ends_it(self) -> None:
        result = await probe(deaf_while_a_child_spins, idle=0.2, mode="cancel")
        assert result.outcome is Outcome.CANCELLED
        assert result.ok, result

    async def test_a_worker_that_leaves_a_busy_task_is_a_leak(self) -> None:
        async def leaves_a_spinner(signal: StopSignal, tg: anyio.abc.TaskGroup) -> None:
            tg.start_soon(spin, name="spinner")

        async with anyio.create_task_group() as tg:
            result = await probe(leaves_a_spinner, tg, idle=0.2)
            tg.cancel_scope.cancel()
        assert result.outcome is Outcome.FINISHED
        assert len(result.leaks) == 1
        assert result.leaks[0].startswith("the worker left a task running: 'spinner'")
        assert result.failures == result.leaks  # the worker ended: no stop, no hang

    async def test_a_brief_burst_is_no_hang(self) -> None:
        result = await probe(spins_briefly)
        assert result.ok, result
        assert result.moment == "once it was waiting"


class TestAThreadThatWaitsForEver:
    """Virtual time stands still while a thread of anyio's runs; a worker that waits
    on a thread that waits for something only a stop can end (a blocking read of a
    queue nobody feeds) held it still for ever, and the run never ended.  Time stands
    still for *idle* real seconds at most (ten by default) without a worker's point."""

    @pytest.fixture
    def released(self) -> Iterator[threading.Event]:
        event = threading.Event()
        yield event
        event.set()  # the abandoned threads end

    async def test_probe_past_its_last_point(self, released: threading.Event) -> None:
        async def reads_for_ever(signal: StopSignal) -> None:
            with signal.cancel_scope():
                await anyio.to_thread.run_sync(released.wait, abandon_on_cancel=True)

        result = await probe(reads_for_ever, at_point=50, idle=0.2)
        assert not result.requested
        assert result.moment == "at scheduling point 50, which it never reached"
        assert result.ok, result
        assert not released.is_set()  # the thread was still waiting: the kit moved on

    async def test_explore_runs_out_of_points(self, released: threading.Event) -> None:
        async def reads_for_ever(signal: StopSignal) -> None:
            with signal.cancel_scope():
                await anyio.to_thread.run_sync(released.wait, abandon_on_cancel=True)

        exploration = await explore(reads_for_ever, within=1.0, idle=0.2)
        assert exploration.ok, exploration
        assert exploration.exhausted

    async def test_a_short_thread_still_holds_time(self) -> None:
        """A thread that ends within the bound keeps virtual time still, as before:
        a grace of 0.01 s does not run out during a thread call of 50 ms real."""

        async def writes_slowly(signal: StopSignal) -> None:
            await signal.wait()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(time.sleep, 0.05)

        result = await probe(writes_slowly, grace=0.01)
        assert result.outcome is Outcome.STOPPED, result
        assert result.ok, result

    async def test_a_thread_holding_time_is_no_busy_loop(self) -> None:
        """While a thread holds virtual time still the loop naps, turn after turn, with
        the kit's thread guard ready to run: those turns are not the busy turns of a
        task the worker started."""

        async def writes_slowly(signal: StopSignal) -> None:
            await signal.wait()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(time.sleep, 0.2)

        result = await probe(writes_slowly, grace=0.01, hang_points=20)
        assert result.ok, result


#: more turns than the default hang bound: a sound worker's children may go through
#: that many without waiting (a batch computed, thousands of messages exchanged)
MANY: Final = DEFAULT_HANG_POINTS + DEFAULT_HANG_POINTS // 2


async def computes_then_waits(signal: StopSignal) -> None:
    """A child computes, with a checkpoint per step, for more turns than the bound."""

    async def compute() -> None:
        for _ in range(MANY):
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(compute)
        await signal.wait()


async def children_exchange_messages(signal: StopSignal) -> None:
    """Two children exchange thousands of messages: the loop stays busy, the clock
    still, the worker without a step, and still nothing hangs."""
    send, receive = anyio.create_memory_object_stream[int]()

    async def produce() -> None:
        async with send:
            for n in range(DEFAULT_HANG_POINTS):
                await send.send(n)

    async def consume() -> None:
        async with receive:
            async for _ in receive:
                pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(produce)
        tg.start_soon(consume)
        await signal.wait()


def blocking_call() -> None:
    """A blocking call of a little longer than a second, real (a slow file or database)."""
    time.sleep(1.5 * DEFAULT_IDLE_REAL)


async def calls_a_slow_thread(signal: StopSignal) -> None:
    while not signal.is_set():
        await anyio.to_thread.run_sync(blocking_call)
        await anyio.sleep(1)


class TestNoFalseAlarmByDefault:
    """Regressions: with the default bounds, the loop guard and the thread guard took
    these sound workers for hangs (10,000 busy turns, or one real second, were enough)."""

    @pytest.mark.parametrize("mode", ["stop", "cancel"])
    @pytest.mark.parametrize("worker", [computes_then_waits, children_exchange_messages])
    async def test_children_busy_for_many_turns(
        self, worker: Callable[[StopSignal], Any], mode: Any
    ) -> None:
        result = await probe(worker, mode=mode)
        assert result.ok, result
        assert result.moment == "once it was waiting"

    @pytest.mark.parametrize("mode", ["stop", "cancel"])
    async def test_explore_a_child_busy_for_many_turns(self, mode: Any) -> None:
        """At point 0 the stop lands before the child's work: it goes on for more turns
        than the bound, after the stop, and ends well within the grace."""
        exploration = await explore(
            lambda: Scenario(computes_then_waits), within=5.0, mode=mode, max_points=3
        )
        assert exploration.ok, exploration
        assert exploration.exhausted

    async def test_a_slow_thread_call_holds_time(self) -> None:
        """A thread call of 1.5 s real: virtual time stands still for it, so neither
        the test's ``fail_after`` nor the grace runs out, and the point is reached."""
        with anyio.fail_after(600):
            result = await probe(calls_a_slow_thread, at_point=2, grace=5.0)
        assert result.ok, result
        assert result.moment == "at scheduling point 2"


class TestNoFalseAlarmInRealTime:
    @pytest.fixture(
        params=[
            pytest.param(("asyncio", {}), id="asyncio-real"),
            pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop-real"),
            pytest.param(("trio", {}), id="trio-real"),
        ]
    )
    def anyio_backend(self, request: pytest.FixtureRequest) -> object:
        return request.param

    async def test_a_child_computing_for_a_while_is_no_hang(self) -> None:
        """Regression: a child that computes for 1.5 s of real time, with checkpoints,
        before it waits, was taken for a hang after one second."""

        async def computes_a_while(signal: StopSignal) -> None:
            async def compute() -> None:
                end = time.monotonic() + 1.5 * DEFAULT_IDLE_REAL
                while time.monotonic() < end:
                    await anyio.lowlevel.checkpoint()

            async with anyio.create_task_group() as tg:
                tg.start_soon(compute)
                await signal.wait()

        result = await probe(computes_a_while)
        assert result.ok, result
        assert result.moment == "once it was waiting"
