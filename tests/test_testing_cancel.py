"""stopscope.testing, round two: hard-cancel exploration, the cleanup await a
cancellation cut, the hang guard, and long timers in virtual time.

asyncio and trio run in virtual time, uvloop in real time (its clock cannot be faked),
as in ``test_testing_examples.py``; the hang guard also runs on the real-time matrix.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

if sys.version_info < (3, 11):  # anyio depends on the backport on 3.10
    from exceptiongroup import BaseExceptionGroup

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

UVLOOP = pytest.param(
    ("asyncio", {"use_uvloop": True}),
    id="uvloop-real",
    marks=pytest.mark.skipif(sys.platform == "win32", reason="uvloop is POSIX only"),
)


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="asyncio-virtual"),
        UVLOOP,
        pytest.param("trio", id="trio-virtual"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> object:
    backend: object = request.param
    return backend if isinstance(backend, tuple) else virtual_time(backend)


def line_of(func: Callable[..., Any], text: str) -> int:
    lines, start = inspect.getsourcelines(func)
    return start + next(i for i, line in enumerate(lines) if text in line)


class Broker:
    """A queue with acknowledgements: a message taken is in flight until acked or given back."""

    def __init__(self, *messages: str) -> None:
        self._queue = deque(messages)
        self._more = anyio.Event()
        self.in_flight: deque[str] = deque()

    async def take(self) -> str:
        await anyio.lowlevel.checkpoint()
        while not self._queue:
            self._more = anyio.Event()
            await self._more.wait()
        message = self._queue.popleft()
        self.in_flight.append(message)
        return message

    def ack(self, message: str) -> None:
        self.in_flight.remove(message)

    def give_back(self, message: str) -> None:
        self.in_flight.remove(message)
        self._queue.appendleft(message)

    def nothing_lost(self) -> None:
        lost = ", ".join(repr(m) for m in self.in_flight)
        assert not self.in_flight, f"{lost} taken, then neither acked nor given back"


async def handle(message: str) -> None:
    await anyio.sleep(0.001)


# ---------------------------------------------- plain anyio workers (no stop signal)


async def gives_back_when_cancelled(signal: StopSignal, broker: Broker) -> None:
    """Cancel-safe: a message taken is acked, or given back when cancelled."""
    while True:
        message = await broker.take()
        try:
            await handle(message)
        except BaseException:
            broker.give_back(message)
            raise
        broker.ack(message)


async def take_then_ack(signal: StopSignal, broker: Broker) -> None:
    """Lossy: cancelled while handling, the message is neither acked nor given back."""
    while True:
        message = await broker.take()
        await handle(message)
        broker.ack(message)


async def acks_in_finally(signal: StopSignal, broker: Broker, log: list[str]) -> None:
    """Its cleanup awaits, unshielded: a cancellation cuts it short (ASYNC102)."""
    while True:
        message = await broker.take()
        try:
            await handle(message)
        finally:
            await anyio.sleep(0.001)  # say, a network ack
            log.append(f"acked {message}")


async def acks_in_finally_shielded(signal: StopSignal, broker: Broker, log: list[str]) -> None:
    while True:
        message = await broker.take()
        try:
            await handle(message)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.001)
                log.append(f"acked {message}")


async def returns_when_cancelled(signal: StopSignal, broker: Broker) -> None:
    while True:
        try:
            message = await broker.take()
        except anyio.get_cancelled_exc_class():
            return  # "a cancelled worker is a stopped worker"
        await handle(message)
        broker.ack(message)


async def keeps_going_when_cancelled(signal: StopSignal) -> None:
    while True:
        try:
            await anyio.sleep(0.01)
        except anyio.get_cancelled_exc_class():
            pass


async def fails_when_cancelled(signal: StopSignal) -> None:
    try:
        await anyio.sleep_forever()
    except anyio.get_cancelled_exc_class():
        raise ValueError("cleanup went wrong") from None


def brokers(worker: Callable[..., Any], *messages: str) -> Callable[[], Scenario]:
    def scenario() -> Scenario:
        broker = Broker(*messages)
        return Scenario(worker, broker, invariants=[broker.nothing_lost])

    return scenario


def logged(worker: Callable[..., Any], *messages: str) -> Callable[[], Scenario]:
    def scenario() -> Scenario:
        return Scenario(worker, Broker(*messages), [])

    return scenario


def assert_fails_at(exploration: Exploration, problem: str) -> ProbeResult:
    """The exploration failed at a point the message names, with the replay command."""
    failure = exploration.failure
    assert failure is not None, exploration.describe()
    point = failure.point
    assert point is not None
    message = str(exploration)
    header = f"{failure.worker} fails when the cancellation lands at scheduling point {point}"
    assert message.startswith(header), message
    assert re.search(f"\n  - {problem}", message), message
    assert f"--stopscope-point={point} (or explore(..., points=[{point}]))" in message, message
    with pytest.raises(StopRequirementError):
        exploration.assert_ok()
    return failure


class TestHardCancel:
    """mode="cancel": the worker is cancelled at each point, as anyio code is."""

    async def test_a_cancel_safe_worker_passes_every_point(self, stop_kit: StopKit) -> None:
        result = await stop_kit.explore(
            brokers(gives_back_when_cancelled, "a", "b", "c"), within=0.05, mode="cancel"
        )
        result.assert_ok()
        assert result.exhausted
        assert result.points == tuple(range(len(result.runs)))
        assert len(result.runs) > 6
        assert {r.outcome for r in result.runs} == {Outcome.CANCELLED}
        assert {r.mode for r in result.runs} == {"cancel"}
        assert result.runs[-1].where_at_stop.startswith("`message = await broker.take()`")

    async def test_graceful_mode_cannot_explore_it(self, stop_kit: StopKit) -> None:
        """Why the mode exists: without it, plain-anyio code fails at point 0."""
        result = await stop_kit.explore(
            brokers(gives_back_when_cancelled, "a"), within=0.05, grace=0.1
        )
        assert result.failure is not None
        assert result.failure.point == 0
        assert "the worker needed cancellation" in str(result)

    async def test_take_then_ack_is_caught_at_the_exact_line(self, stop_kit: StopKit) -> None:
        exploration = await stop_kit.explore(
            brokers(take_then_ack, "a", "b", "c"), within=0.05, mode="cancel"
        )
        failure = assert_fails_at(
            exploration,
            r"invariant Broker\.nothing_lost failed: '[a-c]' taken, then neither acked",
        )
        assert failure.outcome is Outcome.CANCELLED
        line = line_of(take_then_ack, "await handle(message)")
        inner = line_of(handle, "await anyio.sleep(0.001)")
        assert failure.where_at_stop == (
            f"`await handle(message)` (test_testing_cancel.py:{line}, in take_then_ack) -> "
            f"`await anyio.sleep(0.001)` (test_testing_cancel.py:{inner}, in handle)"
        )
        assert f"cancelled at scheduling point {failure.point}:" in str(exploration)
        if not failure.virtual:
            return  # in real time a 1 ms handling can win its race with the cancellation
        # the replay runs that one point, with the same verdict
        replay = await stop_kit.explore(
            brokers(take_then_ack, "a", "b", "c"),
            within=0.05,
            mode="cancel",
            points=[failure.point or 0],
        )
        assert replay.failure is not None
        assert replay.failure.where_at_stop == failure.where_at_stop

    async def test_the_signal_is_never_set(self) -> None:
        seen: list[bool] = []

        async def looks(signal: StopSignal) -> None:
            try:
                await anyio.sleep_forever()
            finally:
                seen.append(signal.is_set())

        result = await probe(looks, mode="cancel")
        assert seen == [False]
        assert result.outcome is Outcome.CANCELLED
        assert result.requested
        assert result.ok, result.describe()
        assert result.record.outcome is Outcome.CANCELLED
        assert result.report.tasks == (result.record,)

    async def test_a_swallowed_cancellation_fails(self, stop_kit: StopKit) -> None:
        exploration = await stop_kit.explore(
            brokers(returns_when_cancelled, "a"), within=0.05, mode="cancel"
        )
        failure = assert_fails_at(exploration, "the worker swallowed the cancellation: cancelled")
        assert failure.swallowed_cancellation
        assert "it returned normally instead of letting the cancellation propagate" in str(
            exploration
        )

    async def test_a_worker_that_keeps_running_is_closed(self) -> None:
        result = await probe(keeps_going_when_cancelled, mode="cancel", hang_points=50)
        assert result.outcome is Outcome.ABANDONED
        line = line_of(keeps_going_when_cancelled, "await anyio.sleep(0.01)")
        assert result.failures[0].startswith("the worker kept running after the cancellation: "), (
            result.failures
        )
        assert (
            f"(test_testing_cancel.py:{line}, in keeps_going_when_cancelled)"
            in (result.failures[0])
        )
        assert result.where_at_grace is not None

    async def test_an_error_fails(self) -> None:
        result = await probe(fails_when_cancelled, mode="cancel")
        assert result.outcome is Outcome.FAILED
        assert result.failures == ("the worker raised ValueError: cleanup went wrong",)

    async def test_a_finished_worker_ends_the_exploration(self) -> None:
        async def steps(signal: StopSignal) -> None:
            for _ in range(3):
                await anyio.lowlevel.checkpoint()

        result = await explore(lambda: Scenario(steps), within=1.0, mode="cancel")
        result.assert_ok()
        assert result.exhausted
        assert result.points == (0, 1, 2, 3)
        finished = await probe(steps, at_point=9, mode="cancel")
        assert finished.outcome is Outcome.FINISHED
        assert "before any cancellation" in str(finished)

    async def test_a_shielded_cleanup_that_sleeps_swallows_nothing(self) -> None:
        """A cancellation inside a shield is the worker's own (its sleep's deadline):
        returning normally after the shielded cleanup is no swallowed cancellation."""
        done: list[str] = []

        async def shielded_work(signal: StopSignal) -> None:
            with anyio.move_on_after(5, shield=True):
                await anyio.sleep(0.01)
                with anyio.move_on_after(0.01):  # a timeout of its own, in the shield
                    await anyio.sleep(1)
                done.append("flushed")
            # returns with no checkpoint after the shield: the cancellation never lands

        result = await explore(lambda: Scenario(shielded_work), within=1.0, mode="cancel")
        result.assert_ok()
        assert result.points == (0, 1, 2)  # cancelled before it, and in each sleep
        assert {run.outcome for run in result.runs} == {Outcome.STOPPED}
        assert not any(run.swallowed_cancellation for run in result.runs)

    async def test_cancelled_after_a_time(self) -> None:
        result = await probe(take_then_ack, Broker(), after=0.01, mode="cancel")
        assert result.moment == "after 0.01 s"
        assert result.outcome is Outcome.CANCELLED
        assert result.ok, result.describe()

    async def test_a_worker_that_finishes_before_a_timed_cancel(self) -> None:
        async def quick(signal: StopSignal) -> None:
            await anyio.sleep(0.001)

        result = await probe(quick, after=1.0, mode="cancel")
        assert result.outcome is Outcome.FINISHED
        assert not result.requested
        assert result.report.reason is None

    async def test_a_worker_that_raises_as_it_is_closed(self) -> None:
        async def raises_on_close(signal: StopSignal) -> None:
            while True:
                try:
                    await anyio.sleep(0.01)
                except anyio.get_cancelled_exc_class():
                    pass
                except GeneratorExit:
                    raise RuntimeError("closed in the middle of it") from None

        result = await probe(raises_on_close, mode="cancel", hang_points=20)
        assert result.outcome is Outcome.ABANDONED
        assert result.failures[0].startswith("the worker kept running after the cancellation")

    async def test_a_worker_that_lingers_past_its_grace_is_closed(
        self, anyio_backend: object
    ) -> None:
        real = isinstance(anyio_backend, tuple) and anyio_backend[1].get("use_uvloop")

        async def lingers(signal: StopSignal) -> None:
            try:
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.sleep(0.2 if real else 60.0)
                    await anyio.sleep(0.2 if real else 60.0)

        result = await probe(lingers, mode="cancel", grace=0.05 if real else 1.0)
        assert result.outcome is Outcome.ABANDONED
        line = line_of(lingers, "await anyio.sleep(0.2 if real else 60.0)")
        assert result.failures == (
            f"the worker kept running after the cancellation: "
            f"{'50 ms' if real else '1 s'} later it was still at "
            f"`await anyio.sleep(0.2 if real else 60.0)` (test_testing_cancel.py:{line}, "
            f"in lingers), so the kit closed it",
        )

    async def test_not_an_async_function(self) -> None:
        def plain(signal: StopSignal) -> int:
            return 1

        with pytest.raises(BaseExceptionGroup) as caught:
            await probe(plain, mode="cancel")  # type: ignore[arg-type]
        assert caught.group_contains(TypeError, match="the worker must be an async function")

    async def test_bad_mode(self) -> None:
        with pytest.raises(ValueError, match="`mode` must be 'stop' or 'cancel'"):
            await probe(fails_when_cancelled, mode="kill")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="`mode` must be 'stop' or 'cancel'"):
            await explore(lambda: Scenario(fails_when_cancelled), within=1, mode="hard")  # type: ignore[arg-type]


class TestCutCleanup:
    """The unshielded await in a finally/except block that a cancellation cut short."""

    async def test_named_and_failing_without_an_invariant(self, stop_kit: StopKit) -> None:
        exploration = await stop_kit.explore(
            logged(acks_in_finally, "a", "b"), within=0.05, mode="cancel"
        )
        line = line_of(acks_in_finally, "await anyio.sleep(0.001)  # say, a network ack")
        where = (
            f"`await anyio.sleep(0.001)  # say, a network ack` "
            f"(test_testing_cancel.py:{line}, in acks_in_finally)"
        )
        failure = assert_fails_at(
            exploration, re.escape(f"a cancellation cut the cleanup await {where} short")
        )
        assert failure.cut_cleanup == where
        assert failure.invariant_failures == ()

    async def test_allowed_on_request(self) -> None:
        result = await explore(
            logged(acks_in_finally, "a", "b"),
            within=0.05,
            mode="cancel",
            allow_cut_cleanup=True,
        )
        result.assert_ok()
        assert any(run.cut_cleanup for run in result.runs)

    async def test_a_shielded_cleanup_passes(self) -> None:
        result = await explore(
            logged(acks_in_finally_shielded, "a", "b"), within=0.05, mode="cancel"
        )
        result.assert_ok()
        assert not any(run.cut_cleanup for run in result.runs)

    async def test_in_an_except_block(self) -> None:
        gave_up: list[str] = []

        async def reports_then_reraises(signal: StopSignal) -> None:
            try:
                await anyio.sleep_forever()
            except BaseException:
                await anyio.sleep(0.001)  # a report to a server
                gave_up.append("reported")
                raise

        result = await probe(reports_then_reraises, mode="cancel")
        line = line_of(reports_then_reraises, "await anyio.sleep(0.001)  # a report")
        assert result.cut_cleanup == (
            f"`await anyio.sleep(0.001)  # a report to a server` "
            f"(test_testing_cancel.py:{line}, in reports_then_reraises)"
        )
        assert gave_up == []
        assert not result.ok

    async def test_async_with_in_a_finally(self) -> None:
        lock = anyio.Lock()
        log: list[str] = []

        async def locks_in_finally(signal: StopSignal) -> None:
            try:
                await anyio.sleep_forever()
            finally:

                def note() -> None:  # a function defined here awaits nothing of ours
                    log.append("noted")

                async with lock:
                    note()

        result = await probe(locks_in_finally, mode="cancel")
        line = line_of(locks_in_finally, "async with lock:")
        assert result.cut_cleanup == (
            f"`async with lock:` (test_testing_cancel.py:{line}, in locks_in_finally)"
        )
        assert log == []

    def test_code_whose_source_cannot_be_read(self, tmp_path: Path) -> None:
        from stopscope.testing import _cancel

        # no source at all, a source that is not Python, and a function not in it
        assert _cancel._cleanup_lines(compile("pass", "<string>", "exec")) == frozenset()
        bad = tmp_path / "bad.py"
        bad.write_text("this is not python (\n")
        assert _cancel._cleanup_lines(compile("pass", str(bad), "exec")) == frozenset()
        good = tmp_path / "good.py"
        good.write_text("async def f():\n    pass\n")
        assert _cancel._cleanup_lines(compile("pass", str(good), "exec")) == frozenset()

    def test_the_cache_is_bounded(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from stopscope.testing import _cancel

        async def nested(signal: StopSignal) -> None:
            try:

                async def inner() -> None:  # its awaits are its own frame's
                    try:
                        await anyio.lowlevel.checkpoint()
                    finally:
                        await anyio.lowlevel.checkpoint()

                await inner()
            finally:
                await anyio.lowlevel.checkpoint()  # the outer cleanup

        monkeypatch.setattr(_cancel, "_MAX_CACHED", 1)
        _cancel._cleanup_lines(steps_code())
        lines = _cancel._cleanup_lines(nested.__code__)
        assert lines == {line_of(nested, "# the outer cleanup")}
        assert len(_cancel._cleanup_cache) == 1

    async def test_aclose_is_exempt(self) -> None:
        async def closes(signal: StopSignal) -> None:
            send, receive = anyio.create_memory_object_stream[int](1)
            try:
                await receive.receive()
            finally:
                await send.aclose()
                await receive.aclose()

        result = await probe(closes, mode="cancel")
        assert result.cut_cleanup is None
        assert result.ok, result.describe()

    @pytest.mark.parametrize("mode", ["stop", "cancel"])
    async def test_through_an_exception_group(self, mode: str) -> None:
        async def groups_it(signal: StopSignal) -> None:
            try:
                try:
                    await anyio.sleep_forever()
                finally:
                    await anyio.sleep(0.001)  # the cleanup
            except BaseException as exc:
                raise BaseExceptionGroup("wrapped", [exc]) from None

        grace = 0.0 if mode == "stop" else 1.0  # stop: cancelled at once
        result = await probe(groups_it, mode=mode, grace=grace)  # type: ignore[arg-type]
        line = line_of(groups_it, "await anyio.sleep(0.001)  # the cleanup")
        assert result.cut_cleanup == (
            f"`await anyio.sleep(0.001)  # the cleanup` (test_testing_cancel.py:{line}, "
            f"in groups_it)"
        )

    async def test_after_the_grace_in_graceful_mode(self, anyio_backend: object) -> None:
        real = isinstance(anyio_backend, tuple) and anyio_backend[1].get("use_uvloop")

        async def deaf_with_cleanup(signal: StopSignal) -> None:
            try:
                await anyio.sleep_forever()
            finally:
                await anyio.sleep(0.001)

        result = await probe(deaf_with_cleanup, grace=0.05 if real else 1.0)
        assert result.outcome is Outcome.CANCELLED
        line = line_of(deaf_with_cleanup, "await anyio.sleep(0.001)")
        where = f"`await anyio.sleep(0.001)` (test_testing_cancel.py:{line}, in deaf_with_cleanup)"
        assert result.cut_cleanup == where
        assert result.failures[0].startswith("the worker needed cancellation")
        assert result.failures[1].startswith(f"a cancellation cut the cleanup await {where}")


async def busy(signal: StopSignal) -> None:
    """Never waits, and ignores the signal."""
    while True:
        await anyio.lowlevel.checkpoint()


async def busy_until_stopped(signal: StopSignal) -> None:
    while not signal.is_set():
        await anyio.lowlevel.checkpoint()


def steps_code() -> Any:
    async def steps(signal: StopSignal) -> None:
        await anyio.lowlevel.checkpoint()

    return steps.__code__


class TestHangGuard:
    """A worker that never waits ends with a clear failure, in real and virtual time."""

    @pytest.fixture(
        params=[
            pytest.param("asyncio", id="asyncio-virtual"),
            pytest.param("trio", id="trio-virtual"),
            pytest.param(("asyncio", {}), id="asyncio-real"),
            UVLOOP,
            pytest.param(("trio", {}), id="trio-real"),
        ]
    )
    def anyio_backend(self, request: pytest.FixtureRequest) -> object:
        backend: object = request.param
        return backend if isinstance(backend, tuple) else virtual_time(backend)

    async def test_a_busy_worker_is_stopped(self) -> None:
        with anyio.fail_after(60):  # works in real time only; the guard ends it anyway
            result = await probe(busy_until_stopped, hang_points=200, grace=60.0)
        assert result.outcome is Outcome.STOPPED
        assert result.moment == "by the hang guard, after 200 scheduling points"
        line = line_of(busy_until_stopped, "await anyio.lowlevel.checkpoint()")
        assert result.failures == (
            f"the worker never waited: 200 scheduling points went by without an end, at "
            f"`await anyio.lowlevel.checkpoint()` (test_testing_cancel.py:{line}, in "
            f"busy_until_stopped) (a busy loop?); the kit requested its stop to end the run "
            f"(hang_points=200)",
        )

    async def test_a_busy_deaf_worker_is_cancelled(self) -> None:
        result = await probe(busy, hang_points=200, grace=60.0)
        assert result.outcome is Outcome.CANCELLED
        failures = result.failures
        assert len(failures) == 2, failures
        assert failures[0].startswith("the worker never waited: 200 scheduling points")
        assert failures[1].startswith(
            "the worker did not stop: 200 scheduling points after the stop request"
        )

    async def test_explore_ends_runs_past_their_point(self) -> None:
        result = await explore(lambda: Scenario(busy), within=0.05, grace=60.0, hang_points=100)
        failure = result.failure
        assert failure is not None
        assert failure.point == 0
        assert "the worker did not stop: 100 scheduling points after the stop" in str(result)

    async def test_in_cancel_mode(self) -> None:
        result = await probe(busy, hang_points=200, mode="cancel")
        assert result.outcome is Outcome.CANCELLED
        assert result.failures[0].startswith("the worker never waited: 200 scheduling points")
        assert "the kit cancelled it to end the run" in result.failures[0]

    async def test_default_bound(self) -> None:
        result = await probe(busy_until_stopped, at_point=3)
        assert result.ok  # the default bound is far from a short run
        assert result.outcome is Outcome.STOPPED
        with pytest.raises(ValueError, match="`hang_points` must be at least 1"):
            await probe(busy, hang_points=0)
        with pytest.raises(TypeError, match="`hang_points` must be an int"):
            await explore(lambda: Scenario(busy), within=1, hang_points=1.5)  # type: ignore[arg-type]


async def hourly_job(signal: StopSignal, runs: list[float]) -> None:
    async for _ in signal.every(7200.0):
        runs.append(anyio.current_time())
        await anyio.sleep(0.5)  # the job itself


async def waits_for_nothing(signal: StopSignal, queue: Broker) -> None:
    while True:
        with signal.cancel_scope():
            await queue.take()
        if signal.is_set():
            return


class TestLongTimers:
    """In virtual time the next deadline decides, not an hour without a point."""

    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(self, request: pytest.FixtureRequest) -> object:
        return virtual_time(request.param)

    async def test_a_two_hour_job_is_explored_up_to_max_points(self) -> None:
        def scenario() -> Scenario:
            return Scenario(hourly_job, [])

        result = await explore(scenario, within=1.0, max_points=20)
        result.assert_ok()
        assert not result.exhausted
        assert result.points == tuple(range(21))
        assert "stopped at the limit of 20 points" in str(result)

    async def test_its_timer_is_followed(self) -> None:
        runs: list[float] = []
        start = anyio.current_time()
        result = await probe(hourly_job, runs, at_point=12)
        assert result.requested
        assert [t - start for t in runs][:3] == pytest.approx([0.0, 7200.0, 14400.0], abs=1e-3)

    async def test_a_wait_with_no_timer_still_ends_the_points(self) -> None:
        result = await explore(
            lambda: Scenario(waits_for_nothing, Broker("a")), within=0.05, max_points=50
        )
        result.assert_ok()
        assert result.exhausted
        assert len(result.points) < 10

    async def test_sleep_forever_is_a_wait_for_ever(self) -> None:
        """anyio's sleep_forever() on asyncio is a timer at infinity: no deadline."""

        async def sleeps(signal: StopSignal) -> None:
            with signal.cancel_scope():
                await anyio.sleep_forever()

        with anyio.fail_after(3600):  # virtual: ends the test if the kit waits for it
            result = await probe(sleeps, at_point=5)
        assert result.moment == "at scheduling point 5, which it never reached"
        assert result.outcome is Outcome.STOPPED

    async def test_a_thread_is_not_a_wait_for_ever(self) -> None:
        import time

        async def threads(signal: StopSignal) -> None:
            for _ in range(3):
                await anyio.to_thread.run_sync(time.sleep, 0.005)

        result = await probe(threads, at_point=1000)
        assert result.outcome is Outcome.FINISHED
        assert not result.requested


async def ticks(signal: StopSignal) -> None:
    """A worker that waits on a timer at each point: never a busy loop."""
    while not signal.is_set():
        await anyio.sleep(0.001)


async def drains_slowly(signal: StopSignal) -> None:
    await signal.wait()
    for _ in range(300):  # 0.3 s of a 60 s grace: a slow drain, not a hang
        await anyio.sleep(0.001)


async def cleans_up_slowly(signal: StopSignal) -> None:
    try:
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            for _ in range(300):
                await anyio.sleep(0.001)


class TestHangGuardInVirtualTime:
    """In virtual time a worker that waits moves the clock: however many points it goes
    through, it is no busy loop (an ``every(1)`` job probed for hours has thousands)."""

    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(self, request: pytest.FixtureRequest) -> object:
        return virtual_time(request.param)

    async def test_a_worker_on_a_timer_before_the_stop(self) -> None:
        result = await probe(ticks, after=1.0, within=1.0, hang_points=100)
        assert result.reached > 100
        assert result.ok, result.describe()

    async def test_a_slow_drain_after_the_stop(self) -> None:
        result = await probe(drains_slowly, at_point=1, within=1.0, grace=60.0, hang_points=100)
        assert result.outcome is Outcome.STOPPED
        assert result.ok, result.describe()

    async def test_a_slow_shielded_cleanup_in_cancel_mode(self) -> None:
        result = await probe(
            cleans_up_slowly, at_point=1, within=1.0, grace=60.0, hang_points=100, mode="cancel"
        )
        assert result.outcome is Outcome.CANCELLED
        assert result.ok, result.describe()

    async def test_a_busy_loop_is_still_caught(self) -> None:
        result = await probe(busy, after=1.0, hang_points=100, grace=60.0)
        assert result.failures[0].startswith("the worker never waited: 100 scheduling points")
