"""Conformance tests for :class:`stopscope.TaskScope`, from the contract (docs/contract.md).

Every test runs on asyncio (debug), asyncio+uvloop and trio. No test asserts wall-clock
time or orders anything with sleeps: ordering comes from events and
``anyio.wait_all_tasks_blocked()``, and ``anyio.fail_after`` only guards against hangs.
Members that must end up ``STOPPED`` run under a large grace period, so a slow machine
cannot turn them into ``CANCELLED``.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, cast

import anyio
import anyio.lowlevel
import pytest
from anyio.abc import TaskStatus

from stopscope import Outcome, StopReason, StopSignal, TaskRecord, TaskScope

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup, ExceptionGroup  # type: ignore[import-not-found, unused-ignore]

pytestmark = pytest.mark.anyio

#: seconds; only a guard against hangs, never a timing assertion
HANG_GUARD = 10.0
#: seconds a member that swallows cancellation keeps running, at most, waiting for the
#: scope to log it (a guard; the test goes on as soon as the log appears)
LINGER_GUARD = 5.0
#: a grace period no test ever reaches: members that exit on the signal are STOPPED
LONG_GRACE = 60.0


# --------------------------------------------------------------------------- helpers


def leaves(exc: BaseException) -> list[BaseException]:
    """The non-group exceptions inside *exc*, depth first."""
    if isinstance(exc, BaseExceptionGroup):
        found: list[BaseException] = []
        for inner in exc.exceptions:
            found.extend(leaves(inner))
        return found
    return [exc]


def same_objects(got: list[BaseException], expected: list[BaseException]) -> bool:
    """Whether both lists hold the very same exception objects (any order)."""
    return sorted(map(id, got)) == sorted(map(id, expected))


def warnings_from_stopscope(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name.startswith("stopscope") and r.levelno >= logging.WARNING
    ]


def formatted(record: logging.LogRecord) -> str:
    """Message, traceback and stack of a log record, as a handler would print them."""
    return logging.Formatter().format(record)


async def until_stopped(signal: StopSignal) -> None:
    """A well-behaved worker: returns as soon as the signal is set."""
    await signal.wait()


async def ready_then_wait(signal: StopSignal, ready: anyio.Event) -> None:
    """A well-behaved worker that says when it is parked on the signal."""
    ready.set()
    await signal.wait()


async def forever() -> None:
    """A worker that ignores the signal: only cancellation ends it."""
    await anyio.sleep_forever()


async def raise_now(exc: BaseException) -> None:
    raise exc


async def my_worker(signal: StopSignal) -> None:
    """A module-level function, for the default member name."""
    await signal.wait()


class Worker:
    def __init__(self) -> None:
        self.ran = False

    async def run(self, signal: StopSignal) -> None:
        self.ran = True
        await signal.wait()


class AsyncCallable:
    def __init__(self) -> None:
        self.ran = False

    async def __call__(self, signal: StopSignal) -> None:
        self.ran = True
        await signal.wait()


async def server(
    signal: StopSignal, value: str, task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED
) -> None:
    task_status.started(value)
    await signal.wait()


# --------------------------------------------------------------------------- triggers


class TestStopTriggers:
    async def test_stop_sets_signal_and_reason(self) -> None:
        scope = TaskScope(grace=LONG_GRACE)
        ready = anyio.Event()
        with anyio.fail_after(HANG_GUARD):
            async with scope:
                scope.start_soon(ready_then_wait, scope.signal, ready, name="w")
                await ready.wait()
                assert not scope.signal.is_set()
                scope.stop("deploy")
                assert scope.signal.is_set()
                assert scope.signal.reason == "deploy"
        assert scope.report.reason == "deploy"
        assert scope.report.by_name("w").outcome is Outcome.STOPPED

    async def test_first_stop_reason_wins(self) -> None:
        scope = TaskScope(grace=LONG_GRACE)
        with anyio.fail_after(HANG_GUARD):
            async with scope:
                scope.start_soon(until_stopped, scope.signal, name="w")
                scope.stop("first")
                scope.stop("second")
        assert scope.signal.reason == "first"
        assert scope.report.reason == "first"

    async def test_stop_from_worker_thread(self) -> None:
        # stop_on_exit=False: only the thread's stop() can end the member
        scope = TaskScope(grace=LONG_GRACE, stop_on_exit=False)
        ready = anyio.Event()
        with anyio.fail_after(HANG_GUARD):
            async with scope:
                scope.start_soon(ready_then_wait, scope.signal, ready, name="w")
                await ready.wait()
                await anyio.to_thread.run_sync(scope.stop, "from-thread")
        assert scope.report.reason == "from-thread"
        assert scope.report.by_name("w").outcome is Outcome.STOPPED

    async def test_stop_from_plain_thread(self) -> None:
        scope = TaskScope(grace=LONG_GRACE, stop_on_exit=False)
        ready = anyio.Event()
        thread = threading.Thread(target=scope.stop, args=("plain-thread",))
        with anyio.fail_after(HANG_GUARD):
            async with scope:
                scope.start_soon(ready_then_wait, scope.signal, ready, name="w")
                await ready.wait()
                thread.start()
                # the body ends at once; the member is woken by the foreign thread only
            await anyio.to_thread.run_sync(thread.join)
        assert scope.report.reason == "plain-thread"
        assert scope.report.by_name("w").outcome is Outcome.STOPPED

    async def test_stop_from_a_member(self) -> None:
        scope = TaskScope(grace=LONG_GRACE, stop_on_exit=False)
        ready = anyio.Event()
        seen_before_stop: list[bool] = []

        async def stopper() -> None:
            await ready.wait()
            await anyio.wait_all_tasks_blocked()  # the body has ended by now
            seen_before_stop.append(scope.signal.is_set())
            scope.stop("done")

        with anyio.fail_after(HANG_GUARD):
            async with scope:
                scope.start_soon(ready_then_wait, scope.signal, ready, name="w")
                scope.start_soon(stopper, name="stopper")
        assert seen_before_stop == [False], "stop_on_exit=False must not stop at body end"
        assert scope.report.reason == "done"
        assert scope.report.by_name("w").outcome is Outcome.STOPPED

    async def test_parent_signal_stops_scope_with_its_reason(self) -> None:
        parent = StopSignal()
        scope = TaskScope(grace=LONG_GRACE, signal=parent, stop_on_exit=False)
        ready = anyio.Event()
        with anyio.fail_after(HANG_GUARD):
            async with scope:
                scope.start_soon(ready_then_wait, scope.signal, ready, name="w")
                await ready.wait()
                parent.set("parent-reason")
                assert scope.signal.is_set()
        assert scope.signal.reason == "parent-reason"
        assert scope.report.reason == "parent-reason"
        assert scope.report.by_name("w").outcome is Outcome.STOPPED

    async def test_parent_already_set_stops_scope_at_once(self) -> None:
        parent = StopSignal()
        parent.set("early")
        scope = TaskScope(grace=LONG_GRACE, signal=parent, stop_on_exit=False)
        with anyio.fail_after(HANG_GUARD):
            async with scope:
                assert scope.signal.is_set()
                scope.start_soon(until_stopped, scope.signal, name="w")
        assert scope.report.reason == "early"
        assert scope.report.by_name("w").outcome is Outcome.STOPPED

    async def test_scope_stopping_leaves_parent_alone(self) -> None:
        parent = StopSignal()
        scope = TaskScope(grace=LONG_GRACE, signal=parent)
        with anyio.fail_after(HANG_GUARD):
            async with scope:
                scope.start_soon(until_stopped, scope.signal, name="w")
                scope.stop("local")
                assert scope.signal.is_set()
                assert not parent.is_set()
        assert not parent.is_set()
        assert parent.reason is None

    async def test_body_end_stops_members(self) -> None:
        scope = TaskScope(grace=LONG_GRACE)
        ready = anyio.Event()
        with anyio.fail_after(HANG_GUARD):
            async with scope:
                scope.start_soon(ready_then_wait, scope.signal, ready, name="w")
                await ready.wait()
                assert not scope.signal.is_set()
        assert scope.signal.reason is StopReason.BODY_EXITED
        assert scope.report.reason is StopReason.BODY_EXITED
        assert scope.report.requested_at is not None
        assert scope.report.by_name("w").outcome is Outcome.STOPPED

    async def test_member_failure_stops_others_gracefully(self) -> None:
        scope = TaskScope(grace=LONG_GRACE)
        ready = anyio.Event()
        err = ValueError("boom")
        body_done: list[object] = []

        async def run() -> None:
            async with scope:
                scope.start_soon(ready_then_wait, scope.signal, ready, name="good")
                await ready.wait()
                scope.start_soon(raise_now, err, name="bad")
                # the body gets grace too: it is woken by the signal, not cancelled
                await scope.signal.wait()
                body_done.append(scope.signal.reason)

        with anyio.fail_after(HANG_GUARD), pytest.raises(ExceptionGroup) as excinfo:
            await run()
        assert same_objects(leaves(excinfo.value), [err])
        assert body_done == [err]
        assert scope.report.reason is err
        assert scope.report.by_name("good").outcome is Outcome.STOPPED
        bad = scope.report.by_name("bad")
        assert bad.outcome is Outcome.FAILED
        assert bad.error is err

    async def test_without_stop_on_exit_waits_for_finite_jobs(self) -> None:
        # grace=0: had the body's end requested a stop, the jobs would be cancelled at once
        scope = TaskScope(grace=0, stop_on_exit=False)
        results: list[int] = []

        async def job(i: int) -> None:
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
            await anyio.sleep(0.01)
            results.append(i)

        with anyio.fail_after(HANG_GUARD):
            async with scope:
                for i in range(3):
                    scope.start_soon(job, i, name=f"job{i}")
        assert sorted(results) == [0, 1, 2]
        assert not scope.signal.is_set()
        assert scope.report.reason is None
        assert scope.report.requested_at is None
        assert [r.name for r in scope.report.tasks] == ["job0", "job1", "job2"]
        for record in scope.report.tasks:
            assert record.outcome is Outcome.FINISHED
            assert record.latency is None
            assert record.error is None

    async def test_default_stop_on_exit_cuts_finite_jobs_short(self) -> None:
        scope = TaskScope(grace=0)
        finished: list[bool] = []

        async def job() -> None:
            await anyio.sleep(1)
            finished.append(True)

        with anyio.fail_after(HANG_GUARD):
            async with scope:
                scope.start_soon(job, name="job")
        assert finished == []
        assert scope.report.by_name("job").outcome is Outcome.CANCELLED

    async def test_without_stop_on_exit_member_failure_still_stops(self) -> None:
        scope = TaskScope(grace=LONG_GRACE, stop_on_exit=False)
        ready = anyio.Event()
        err = KeyError("job failed")

        async def run() -> None:
            async with scope:
                scope.start_soon(ready_then_wait, scope.signal, ready, name="w")
                await ready.wait()
                scope.start_soon(raise_now, err, name="bad")

        with anyio.fail_after(HANG_GUARD), pytest.raises(ExceptionGroup) as excinfo:
            await run()
        assert same_objects(leaves(excinfo.value), [err])
        assert scope.report.reason is err
        assert scope.report.by_name("w").outcome is Outcome.STOPPED


# --------------------------------------------------------------------------- grace


class TestGrace:
    async def test_zero_grace_cancels_at_once(self) -> None:
        scope = TaskScope(grace=0)
        with anyio.fail_after(HANG_GUARD):
            async with scope:
                scope.start_soon(forever, name="f")
                scope.stop("now")
        record = scope.report.by_name("f")
        assert record.outcome is Outcome.CANCELLED
        assert isinstance(record.latency, float)
        assert record.latency >= 0

    async def test_small_grace_then_cancellation(self) -> None:
        scope = TaskScope(grace=0.05)
        cancelled: list[bool] = []

        async def ignorer() -> None:
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                cancelled.append(True)
                raise

        with anyio.fail_after(HANG_GUARD):
            async with scope:
                scope.start_soon(ignorer, name="ignorer")
        assert cancelled == [True]
        record = scope.report.by_name("ignorer")
        assert record.outcome is Outcome.CANCELLED
        assert isinstance(record.latency, float)
        assert record.latency >= 0
        assert record.error is None

    async def test_large_grace_prompt_member_exits_promptly(self) -> None:
        scope = TaskScope(grace=LONG_GRACE)
        ready = anyio.Event()
        with anyio.fail_after(HANG_GUARD):
            async with scope:
                scope.start_soon(ready_then_wait, scope.signal, ready, name="w")
                await ready.wait()
                scope.stop("x")
        record = scope.report.by_name("w")
        assert record.outcome is Outcome.STOPPED
        assert isinstance(record.latency, float)
        assert record.latency >= 0

    async def test_no_grace_limit_waits_for_member_released_by_sibling(self) -> None:
        scope = TaskScope(grace=None)
        release = anyio.Event()

        async def ignorer() -> None:
            await release.wait()

        async def releaser(signal: StopSignal) -> None:
            await signal.wait()
            await anyio.wait_all_tasks_blocked()
            release.set()

        with anyio.fail_after(HANG_GUARD):
            async with scope:
                scope.start_soon(ignorer, name="ignorer")
                scope.start_soon(releaser, scope.signal, name="releaser")
        assert scope.report.by_name("ignorer").outcome is Outcome.STOPPED
        assert scope.report.by_name("releaser").outcome is Outcome.STOPPED
        assert scope.report.needed_cancellation == ()

    async def test_no_grace_limit_waits_for_member_released_by_body(self) -> None:
        scope = TaskScope(grace=None)
        release = anyio.Event()

        async def ignorer() -> None:
            await release.wait()

        with anyio.fail_after(HANG_GUARD):
            async with scope:
                scope.start_soon(ignorer, name="ignorer")
                scope.stop("x")
                await anyio.wait_all_tasks_blocked()
                release.set()
        record = scope.report.by_name("ignorer")
        assert record.outcome is Outcome.STOPPED
        assert isinstance(record.latency, float)

    @pytest.mark.parametrize("scope_grace", [LONG_GRACE, None])
    async def test_member_grace_shorter_than_scope(self, scope_grace: float | None) -> None:
        scope = TaskScope(grace=scope_grace)
        short_cancelled = anyio.Event()

        async def short() -> None:
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                short_cancelled.set()
                raise

        async def sibling() -> None:
            # ignores the signal for a while, ends well within the scope's grace
            await short_cancelled.wait()

        with anyio.fail_after(HANG_GUARD):
            async with scope:
                scope.start_soon(short, name="short", grace=0)
                scope.start_soon(sibling, name="sibling")
                scope.stop("x")
        assert scope.report.by_name("short").outcome is Outcome.CANCELLED
        assert scope.report.by_name("sibling").outcome is Outcome.STOPPED

    async def test_scope_grace_stays_the_budget(self) -> None:
        scope = TaskScope(grace=0.05)
        with anyio.fail_after(HANG_GUARD):
            async with scope:
                scope.start_soon(forever, name="greedy", grace=LONG_GRACE)
        assert scope.report.by_name("greedy").outcome is Outcome.CANCELLED

    async def test_body_is_cancelled_after_grace(self) -> None:
        scope = TaskScope(grace=0.05)
        after_wait: list[bool] = []
        with anyio.fail_after(HANG_GUARD):
            async with scope:
                scope.stop("x")
                await anyio.Event().wait()  # the body ignores the signal
                after_wait.append(True)
        assert after_wait == []
        assert scope.report.reason == "x"

    async def test_body_is_cancelled_after_grace_on_member_failure(self) -> None:
        scope = TaskScope(grace=0.05)
        err = ValueError("member")

        async def run() -> None:
            async with scope:
                scope.start_soon(raise_now, err, name="bad")
                await anyio.Event().wait()

        with anyio.fail_after(HANG_GUARD), pytest.raises(ExceptionGroup) as excinfo:
            await run()
        assert same_objects(leaves(excinfo.value), [err])


# --------------------------------------------------------------------------- errors


class TestErrors:
    async def test_body_error_is_grouped_and_members_get_grace(self) -> None:
        scope = TaskScope(grace=LONG_GRACE)
        ready = anyio.Event()
        err = RuntimeError("body")

        async def run() -> None:
            async with scope:
                scope.start_soon(ready_then_wait, scope.signal, ready, name="w")
                await ready.wait()
                raise err

        with anyio.fail_after(HANG_GUARD), pytest.raises(ExceptionGroup) as excinfo:
            await run()
        assert same_objects(leaves(excinfo.value), [err])
        assert scope.signal.is_set()
        assert scope.report.requested_at is not None
        assert scope.report.by_name("w").outcome is Outcome.STOPPED

    async def test_body_error_alone_is_grouped(self) -> None:
        err = RuntimeError("body")

        async def run() -> None:
            async with TaskScope():
                raise err

        with anyio.fail_after(HANG_GUARD), pytest.raises(ExceptionGroup) as excinfo:
            await run()
        assert same_objects(leaves(excinfo.value), [err])

    async def test_no_error_is_lost(self) -> None:
        scope = TaskScope(grace=LONG_GRACE)
        ready = anyio.Event()
        first = ValueError("m1")
        second = KeyError("m2")
        body_err = RuntimeError("body")

        async def fails_on_signal(signal: StopSignal) -> None:
            ready.set()
            await signal.wait()
            raise second

        async def run() -> None:
            async with scope:
                scope.start_soon(fails_on_signal, scope.signal, name="m2")
                await ready.wait()
                scope.start_soon(raise_now, first, name="m1")
                await scope.signal.wait()
                raise body_err

        with anyio.fail_after(HANG_GUARD), pytest.raises(ExceptionGroup) as excinfo:
            await run()
        assert same_objects(leaves(excinfo.value), [first, second, body_err])
        assert scope.report.reason is first
        assert scope.report.by_name("m1").error is first
        assert scope.report.by_name("m2").error is second
        assert scope.report.by_name("m2").outcome is Outcome.FAILED

    async def test_member_raising_during_grace_is_grouped(self) -> None:
        scope = TaskScope(grace=LONG_GRACE)
        err = OSError("flush failed")

        async def fails_on_signal(signal: StopSignal) -> None:
            await signal.wait()
            raise err

        async def run() -> None:
            async with scope:
                scope.start_soon(fails_on_signal, scope.signal, name="flusher")
                scope.start_soon(until_stopped, scope.signal, name="w")
                scope.stop("deploy")

        with anyio.fail_after(HANG_GUARD), pytest.raises(ExceptionGroup) as excinfo:
            await run()
        assert same_objects(leaves(excinfo.value), [err])
        assert scope.report.reason == "deploy"
        record = scope.report.by_name("flusher")
        assert record.outcome is Outcome.FAILED
        assert record.error is err
        assert scope.report.by_name("w").outcome is Outcome.STOPPED

    async def test_error_raised_while_cancelled_is_grouped(self) -> None:
        scope = TaskScope(grace=0)
        err = ValueError("cleanup failed")

        async def bad_cleanup() -> None:
            try:
                await anyio.sleep_forever()
            finally:
                raise err

        async def run() -> None:
            async with scope:
                scope.start_soon(bad_cleanup, name="bad")

        with anyio.fail_after(HANG_GUARD), pytest.raises(ExceptionGroup) as excinfo:
            await run()
        assert any(e is err for e in leaves(excinfo.value))
        assert scope.report.by_name("bad").error is err

    async def test_base_exception_gives_base_exception_group(self) -> None:
        class Fatal(BaseException):
            pass

        err = Fatal()

        async def run() -> None:
            async with TaskScope(grace=LONG_GRACE) as scope:
                scope.start_soon(until_stopped, scope.signal, name="w")
                scope.start_soon(raise_now, err, name="fatal")

        with anyio.fail_after(HANG_GUARD), pytest.raises(BaseExceptionGroup) as excinfo:
            await run()
        assert not isinstance(excinfo.value, ExceptionGroup)
        assert same_objects(leaves(excinfo.value), [err])

    async def test_body_error_without_stop_on_exit_still_stops(self) -> None:
        scope = TaskScope(grace=LONG_GRACE, stop_on_exit=False)
        ready = anyio.Event()
        err = RuntimeError("body")

        async def run() -> None:
            async with scope:
                scope.start_soon(ready_then_wait, scope.signal, ready, name="w")
                await ready.wait()
                raise err

        with anyio.fail_after(HANG_GUARD), pytest.raises(ExceptionGroup) as excinfo:
            await run()
        assert same_objects(leaves(excinfo.value), [err])
        assert scope.report.by_name("w").outcome is Outcome.STOPPED


# --------------------------------------------------------------------------- outside


class TestOutsideCancellation:
    async def test_enclosing_cancel_scope_is_hard(self) -> None:
        scope = TaskScope(grace=None)
        started = anyio.Event()
        after_scope: list[bool] = []

        async def sleeper() -> None:
            started.set()
            await anyio.sleep_forever()

        with anyio.fail_after(HANG_GUARD):
            with anyio.CancelScope() as outer:
                async with scope:
                    scope.start_soon(sleeper, name="sleeper")
                    await started.wait()
                    outer.cancel()
                    await anyio.Event().wait()
                after_scope.append(True)
            assert outer.cancelled_caught
        assert after_scope == []
        record = scope.report.by_name("sleeper")
        assert record.outcome is Outcome.CANCELLED
        assert isinstance(record.latency, float)
        assert record.latency >= 0

    async def test_outside_cancellation_reason(self) -> None:
        scope = TaskScope(grace=None)
        with anyio.fail_after(HANG_GUARD):
            with anyio.CancelScope() as outer:
                async with scope:
                    scope.start_soon(forever, name="f")
                    await anyio.wait_all_tasks_blocked()
                    outer.cancel()
                    await anyio.Event().wait()
            assert outer.cancelled_caught
        assert scope.report.reason is StopReason.CANCELLED

    async def test_move_on_after_zero(self) -> None:
        with anyio.fail_after(HANG_GUARD):
            with anyio.move_on_after(0) as outer:
                async with TaskScope(grace=None) as scope:
                    scope.start_soon(forever, name="f")
                    await anyio.Event().wait()
            assert outer.cancelled_caught

    async def test_outside_deadline_cancels_members_at_once(self) -> None:
        scope = TaskScope(grace=None)
        with anyio.fail_after(HANG_GUARD):
            with anyio.move_on_after(0.05) as outer:
                async with scope:
                    scope.start_soon(forever, name="f")
                    scope.start_soon(until_stopped, scope.signal, name="w")
                    await anyio.Event().wait()
            assert outer.cancelled_caught
        assert scope.report.by_name("f").outcome is Outcome.CANCELLED

    async def test_outside_cancellation_during_grace_is_hard(self) -> None:
        scope = TaskScope(grace=None)
        with anyio.fail_after(HANG_GUARD):
            with anyio.CancelScope() as outer:
                async with scope:
                    scope.start_soon(forever, name="f")
                    scope.stop("x")
                    await anyio.wait_all_tasks_blocked()
                    outer.cancel()
                    await anyio.Event().wait()
            assert outer.cancelled_caught
        assert scope.report.reason == "x"
        assert scope.report.by_name("f").outcome is Outcome.CANCELLED


# --------------------------------------------------------------------------- nesting


class TestNesting:
    async def test_outer_stop_stops_inner(self) -> None:
        outer = TaskScope(grace=LONG_GRACE)
        inner_scopes: list[TaskScope] = []
        ready = anyio.Event()

        async def nested() -> None:
            inner = TaskScope(grace=LONG_GRACE, signal=outer.signal)
            inner_scopes.append(inner)
            async with inner:
                inner.start_soon(ready_then_wait, inner.signal, ready, name="inner-w")
                await inner.signal.wait()

        with anyio.fail_after(HANG_GUARD):
            async with outer:
                outer.start_soon(nested, name="nested")
                await ready.wait()
                outer.stop("outer-reason")
        (inner,) = inner_scopes
        assert inner.report.reason == "outer-reason"
        assert inner.report.by_name("inner-w").outcome is Outcome.STOPPED
        assert outer.report.by_name("nested").outcome is Outcome.STOPPED

    async def test_inner_stop_leaves_outer_running(self) -> None:
        outer = TaskScope(grace=LONG_GRACE)
        outer_ready = anyio.Event()
        exited: list[str] = []

        async def outer_worker(signal: StopSignal) -> None:
            outer_ready.set()
            await signal.wait()
            exited.append("outer-w")

        with anyio.fail_after(HANG_GUARD):
            async with outer:
                outer.start_soon(outer_worker, outer.signal, name="outer-w")
                await outer_ready.wait()
                inner = TaskScope(grace=LONG_GRACE, signal=outer.signal)
                async with inner:
                    inner.start_soon(until_stopped, inner.signal, name="inner-w")
                    inner.stop("inner-reason")
                assert not outer.signal.is_set()
                await anyio.wait_all_tasks_blocked()
                assert exited == []
        assert inner.report.reason == "inner-reason"
        assert outer.report.reason is StopReason.BODY_EXITED
        assert outer.report.by_name("outer-w").outcome is Outcome.STOPPED

    async def test_inner_failure_reaches_outer(self) -> None:
        outer = TaskScope(grace=LONG_GRACE)
        err = ValueError("deep")

        async def nested() -> None:
            async with TaskScope(grace=LONG_GRACE, signal=outer.signal) as inner:
                inner.start_soon(raise_now, err, name="inner-bad")

        async def run() -> None:
            async with outer:
                outer.start_soon(until_stopped, outer.signal, name="outer-w")
                outer.start_soon(nested, name="nested")
                await outer.signal.wait()

        with anyio.fail_after(HANG_GUARD), pytest.raises(ExceptionGroup) as excinfo:
            await run()
        assert same_objects(leaves(excinfo.value), [err])
        assert outer.report.by_name("nested").outcome is Outcome.FAILED
        assert outer.report.by_name("outer-w").outcome is Outcome.STOPPED


# --------------------------------------------------------------------------- start


class TestStart:
    async def test_start_returns_started_value(self) -> None:
        scope = TaskScope(grace=LONG_GRACE)
        with anyio.fail_after(HANG_GUARD):
            async with scope:
                value = await scope.start(server, scope.signal, "ready", name="srv")
                assert value == "ready"
        assert scope.report.by_name("srv").outcome is Outcome.STOPPED

    async def test_start_without_value_returns_none(self) -> None:
        progress: list[str] = []

        async def svc(signal: StopSignal, task_status: TaskStatus[None]) -> None:
            progress.append("before-started")
            task_status.started()
            await signal.wait()

        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=LONG_GRACE) as scope:
                value = await scope.start(svc, scope.signal)
                assert value is None
                assert progress == ["before-started"]

    async def test_error_before_started_is_raised_from_start(self) -> None:
        scope = TaskScope(grace=LONG_GRACE)
        err = OSError("bind failed")

        async def bad(task_status: TaskStatus[None]) -> None:
            raise err

        raised: list[BaseException] = []
        grouped: list[BaseException] = []
        with anyio.fail_after(HANG_GUARD):
            try:
                async with scope:
                    with pytest.raises(OSError, match="bind failed") as excinfo:
                        await scope.start(bad, name="bad")
                    raised.append(excinfo.value)
            except ExceptionGroup as group:  # the scope may also report it; never lose it
                grouped.extend(leaves(group))
        assert raised == [err]
        assert grouped in ([], [err])

    async def test_error_after_started_is_grouped(self) -> None:
        scope = TaskScope(grace=LONG_GRACE)
        err = ConnectionError("lost")

        async def flaky(task_status: TaskStatus[str]) -> None:
            task_status.started("up")
            await anyio.lowlevel.checkpoint()
            raise err

        async def run() -> None:
            async with scope:
                scope.start_soon(until_stopped, scope.signal, name="w")
                assert await scope.start(flaky, name="flaky") == "up"
                await scope.signal.wait()

        with anyio.fail_after(HANG_GUARD), pytest.raises(ExceptionGroup) as excinfo:
            await run()
        assert same_objects(leaves(excinfo.value), [err])
        assert scope.report.reason is err
        assert scope.report.by_name("flaky").outcome is Outcome.FAILED
        assert scope.report.by_name("w").outcome is Outcome.STOPPED

    async def test_member_grace_on_start(self) -> None:
        scope = TaskScope(grace=LONG_GRACE)

        async def svc(task_status: TaskStatus[None]) -> None:
            task_status.started()
            await anyio.sleep_forever()

        with anyio.fail_after(HANG_GUARD):
            async with scope:
                await scope.start(svc, name="svc", grace=0)
        assert scope.report.by_name("svc").outcome is Outcome.CANCELLED

    async def test_start_while_stopping_sees_signal_at_once(self) -> None:
        scope = TaskScope(grace=LONG_GRACE)
        seen: list[bool] = []

        async def late(signal: StopSignal, task_status: TaskStatus[str]) -> None:
            seen.append(signal.is_set())
            task_status.started("late")
            await signal.wait()

        with anyio.fail_after(HANG_GUARD):
            async with scope:
                scope.stop("x")
                assert await scope.start(late, scope.signal, name="late") == "late"
        assert seen == [True]
        assert scope.report.by_name("late").outcome is Outcome.STOPPED

    async def test_start_soon_while_stopping_sees_signal_at_once(self) -> None:
        scope = TaskScope(grace=LONG_GRACE)
        seen: list[bool] = []

        async def late(signal: StopSignal) -> None:
            seen.append(signal.is_set())
            await signal.wait()

        with anyio.fail_after(HANG_GUARD):
            async with scope:
                scope.stop("x")
                scope.start_soon(late, scope.signal, name="late")
        assert seen == [True]
        assert scope.report.by_name("late").outcome is Outcome.STOPPED

    async def test_member_can_start_siblings(self) -> None:
        scope = TaskScope(grace=LONG_GRACE)
        spawned = anyio.Event()

        async def spawner(signal: StopSignal) -> None:
            scope.start_soon(until_stopped, signal, name="child-soon")
            await scope.start(server, signal, "x", name="child-start")
            spawned.set()
            await signal.wait()

        with anyio.fail_after(HANG_GUARD):
            async with scope:
                scope.start_soon(spawner, scope.signal, name="spawner")
                await spawned.wait()
        names = [r.name for r in scope.report.tasks]
        assert names == ["spawner", "child-soon", "child-start"]
        assert all(r.outcome is Outcome.STOPPED for r in scope.report.tasks)


# --------------------------------------------------------------------------- report


class TestReport:
    async def test_outcomes_latency_and_error(self) -> None:
        scope = TaskScope(grace=LONG_GRACE)
        done = anyio.Event()
        ready = anyio.Event()

        async def finite() -> None:
            done.set()

        with anyio.fail_after(HANG_GUARD):
            async with scope:
                scope.start_soon(finite, name="fin")
                scope.start_soon(ready_then_wait, scope.signal, ready, name="stp")
                scope.start_soon(forever, name="cnc", grace=0)
                await done.wait()
                await ready.wait()
                await anyio.wait_all_tasks_blocked()
                scope.stop("x")
        report = scope.report
        fin, stp, cnc = report.by_name("fin"), report.by_name("stp"), report.by_name("cnc")
        assert fin.outcome is Outcome.FINISHED
        assert fin.latency is None
        assert stp.outcome is Outcome.STOPPED
        assert cnc.outcome is Outcome.CANCELLED
        for record in (stp, cnc):
            assert isinstance(record.latency, float)
            assert record.latency >= 0
        assert all(r.error is None for r in report.tasks)
        assert report.needed_cancellation == (cnc,)

    async def test_tasks_in_start_order_with_names(self) -> None:
        scope = TaskScope(grace=LONG_GRACE)
        with anyio.fail_after(HANG_GUARD):
            async with scope:
                scope.start_soon(until_stopped, scope.signal, name="a")
                await scope.start(server, scope.signal, "v", name="b")
                scope.start_soon(until_stopped, scope.signal, name="c")
                await scope.start(server, scope.signal, "v", name="d")
        assert isinstance(scope.report.tasks, tuple)
        assert [r.name for r in scope.report.tasks] == ["a", "b", "c", "d"]
        assert all(isinstance(r, TaskRecord) for r in scope.report.tasks)
        with pytest.raises(KeyError):
            scope.report.by_name("nobody")

    async def test_many_members_in_order(self) -> None:
        scope = TaskScope(grace=LONG_GRACE)
        with anyio.fail_after(HANG_GUARD):
            async with scope:
                for i in range(200):
                    scope.start_soon(until_stopped, scope.signal, name=f"m{i}")
                await anyio.wait_all_tasks_blocked()
        assert [r.name for r in scope.report.tasks] == [f"m{i}" for i in range(200)]
        assert {r.outcome for r in scope.report.tasks} == {Outcome.STOPPED}

    async def test_default_name_from_function(self) -> None:
        scope = TaskScope(grace=LONG_GRACE)
        with anyio.fail_after(HANG_GUARD):
            async with scope:
                scope.start_soon(my_worker, scope.signal)
                await scope.start(server, scope.signal, "v")
        first, second = scope.report.tasks
        assert first.name.endswith("my_worker")
        assert second.name.endswith("server")

    async def test_default_name_from_bound_method(self) -> None:
        scope = TaskScope(grace=LONG_GRACE)
        worker = Worker()
        with anyio.fail_after(HANG_GUARD):
            async with scope:
                scope.start_soon(worker.run, scope.signal)
        (record,) = scope.report.tasks
        assert record.name.endswith("run")
        assert worker.ran

    async def test_requested_at_is_monotonic(self) -> None:
        scope = TaskScope(grace=LONG_GRACE)
        with anyio.fail_after(HANG_GUARD):
            async with scope:
                scope.start_soon(until_stopped, scope.signal, name="w")
                before = time.monotonic()
                scope.stop("x")
                between = time.monotonic()
        after = time.monotonic()
        requested_at = scope.report.requested_at
        assert isinstance(requested_at, float)
        assert before <= requested_at <= between
        latency = scope.report.by_name("w").latency
        assert latency is not None
        assert 0 <= latency <= after - requested_at

    async def test_empty_scope(self) -> None:
        scope = TaskScope()
        async with scope:
            pass
        assert scope.report.tasks == ()
        assert scope.report.reason is StopReason.BODY_EXITED


# --------------------------------------------------------------------------- callables


def _kinds(signal: StopSignal) -> dict[str, tuple[Callable[..., Awaitable[Any]], tuple[Any, ...]]]:
    def sync_returning_coroutine(sig: StopSignal) -> Awaitable[None]:
        return until_stopped(sig)

    return {
        "lambda": (lambda: until_stopped(signal), ()),
        "partial": (functools.partial(until_stopped, signal), ()),
        "partial-with-args": (functools.partial(until_stopped), (signal,)),
        "bound-method": (Worker().run, (signal,)),
        "callable-object": (AsyncCallable(), (signal,)),
        "sync-returning-coroutine": (sync_returning_coroutine, (signal,)),
    }


KINDS = [
    "lambda",
    "partial",
    "partial-with-args",
    "bound-method",
    "callable-object",
    "sync-returning-coroutine",
]


class TestCallables:
    @pytest.mark.parametrize("kind", KINDS)
    async def test_start_soon_accepts(self, kind: str) -> None:
        scope = TaskScope(grace=LONG_GRACE)
        with anyio.fail_after(HANG_GUARD):
            async with scope:
                fn, args = _kinds(scope.signal)[kind]
                scope.start_soon(fn, *args, name="m")
                await anyio.wait_all_tasks_blocked()
                assert not scope.signal.is_set()
        assert scope.report.by_name("m").outcome is Outcome.STOPPED

    @pytest.mark.parametrize("kind", ["lambda", "partial", "bound-method"])
    async def test_start_accepts(self, kind: str) -> None:
        scope = TaskScope(grace=LONG_GRACE)

        class Svc:
            async def serve(self, signal: StopSignal, task_status: TaskStatus[str]) -> None:
                task_status.started("bound")
                await signal.wait()

        with anyio.fail_after(HANG_GUARD):
            async with scope:
                if kind == "lambda":
                    value = await scope.start(
                        lambda *, task_status: server(scope.signal, "lambda", task_status),
                        name="m",
                    )
                elif kind == "partial":
                    value = await scope.start(
                        functools.partial(server, scope.signal, "partial"), name="m"
                    )
                else:
                    value = await scope.start(Svc().serve, scope.signal, name="m")
        assert value == {"lambda": "lambda", "partial": "partial", "bound-method": "bound"}[kind]
        assert scope.report.by_name("m").outcome is Outcome.STOPPED

    async def test_a_coroutine_that_is_not_a_native_one_is_accepted(self) -> None:
        # what a Cython- or mypyc-compiled `async def` returns: a Coroutine, not a
        # types.CoroutineType; asyncio, trio and anyio run it, so must we
        scope = TaskScope(grace=LONG_GRACE)
        with anyio.fail_after(HANG_GUARD):
            async with scope:
                scope.start_soon(lambda: _CoroutineLike(_wait(scope.signal)), name="soon")
                value = await scope.start(
                    lambda *, task_status: _CoroutineLike(
                        server(scope.signal, "compiled", task_status)
                    ),
                    name="started",
                )
                await anyio.wait_all_tasks_blocked()
                assert value == "compiled"
        assert scope.report.by_name("soon").outcome is Outcome.STOPPED
        assert scope.report.by_name("started").outcome is Outcome.STOPPED


class _CoroutineLike(Coroutine[Any, Any, Any]):
    """A coroutine that is not a types.CoroutineType (as compiled ones are not)."""

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._coro = coro

    def send(self, value: Any) -> Any:
        return self._coro.send(value)

    def throw(self, *args: Any) -> Any:
        return self._coro.throw(*args)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, Any]:
        return self._coro.__await__()


async def _wait(signal: StopSignal) -> None:
    await signal.wait()


# --------------------------------------------------------------------------- misuse


INVALID_GRACE = [
    pytest.param(-1.0, id="negative"),
    pytest.param(-1e-9, id="tiny-negative"),
    pytest.param(-math.inf, id="minus-inf"),
    pytest.param(math.nan, id="nan"),
]


class TestMisuse:
    async def test_start_soon_before_enter(self) -> None:
        scope = TaskScope()
        with pytest.raises(RuntimeError):
            scope.start_soon(forever)

    async def test_start_before_enter(self) -> None:
        scope = TaskScope()
        with pytest.raises(RuntimeError):
            await scope.start(server, scope.signal, "v")

    async def test_start_soon_and_start_after_exit(self) -> None:
        scope = TaskScope(grace=LONG_GRACE)
        with anyio.fail_after(HANG_GUARD):
            async with scope:
                scope.start_soon(until_stopped, scope.signal, name="w")
        with pytest.raises(RuntimeError):
            scope.start_soon(forever)
        with pytest.raises(RuntimeError):
            await scope.start(server, scope.signal, "v")
        assert [r.name for r in scope.report.tasks] == ["w"]

    async def test_reuse_after_exit(self) -> None:
        scope = TaskScope()
        async with scope:
            pass
        with pytest.raises(RuntimeError):
            async with scope:
                pass

    async def test_reenter_while_active(self) -> None:
        scope = TaskScope()
        async with scope:
            with pytest.raises(RuntimeError):
                async with scope:
                    pass

    @pytest.mark.parametrize("method", ["start_soon", "start"])
    async def test_callable_not_returning_coroutine(self, method: str) -> None:
        def not_async(*args: Any, **kwargs: Any) -> int:  # accepts task_status= too
            return 42

        scope = TaskScope(grace=LONG_GRACE)

        async def call() -> None:
            if method == "start_soon":
                scope.start_soon(cast(Any, not_async))
            else:
                await scope.start(cast(Any, not_async))

        with anyio.fail_after(HANG_GUARD):
            async with scope:
                with pytest.raises(TypeError):
                    await call()
        # the call raised to its caller: there is no member, so no record (and none left
        # RUNNING in a report that is final)
        assert [r.outcome for r in scope.report.tasks if r.outcome is Outcome.RUNNING] == []
        assert scope.report.tasks == ()

    async def test_coroutine_object_instead_of_callable(self) -> None:
        scope = TaskScope(grace=LONG_GRACE)
        coro = forever()
        try:
            async with scope:
                with pytest.raises(TypeError):
                    scope.start_soon(cast(Any, coro))
        finally:
            coro.close()
        assert [r.outcome for r in scope.report.tasks if r.outcome is Outcome.RUNNING] == []
        assert scope.report.tasks == ()

    @pytest.mark.parametrize("grace", INVALID_GRACE)
    async def test_invalid_scope_grace(self, grace: float) -> None:
        with pytest.raises(ValueError, match="grace"):
            TaskScope(grace=grace)

    @pytest.mark.parametrize("grace", INVALID_GRACE)
    async def test_invalid_member_grace(self, grace: float) -> None:
        scope = TaskScope(grace=LONG_GRACE)
        with anyio.fail_after(HANG_GUARD):
            async with scope:
                with pytest.raises(ValueError, match="grace"):
                    scope.start_soon(forever, name="bad", grace=grace)
                with pytest.raises(ValueError, match="grace"):
                    await scope.start(server, scope.signal, "v", name="bad2", grace=grace)
        assert scope.report.tasks == ()


# --------------------------------------------------------------------------- logging


class TestLogging:
    async def test_cancelled_members_logged_as_warnings(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, logger="stopscope")
        scope = TaskScope(grace=LONG_GRACE)
        with anyio.fail_after(HANG_GUARD):
            async with scope:
                scope.start_soon(forever, name="laggard-7f3a", grace=0)
                scope.start_soon(until_stopped, scope.signal, name="polite-9c1e")
        records = warnings_from_stopscope(caplog)
        assert any(
            r.levelno == logging.WARNING and "laggard-7f3a" in r.getMessage() for r in records
        )
        assert not any("polite-9c1e" in formatted(r) for r in records)

    @pytest.mark.parametrize("grace", [0, 0.05])
    async def test_cancelled_members_logged_with_scope_grace(
        self, caplog: pytest.LogCaptureFixture, grace: float
    ) -> None:
        caplog.set_level(logging.WARNING, logger="stopscope")
        scope = TaskScope(grace=grace)
        with anyio.fail_after(HANG_GUARD):
            async with scope:
                scope.start_soon(forever, name="laggard-7f3a")
        records = warnings_from_stopscope(caplog)
        assert any(
            r.levelno == logging.WARNING and "laggard-7f3a" in r.getMessage() for r in records
        )

    async def test_no_warning_when_all_stop_in_grace(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, logger="stopscope")
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=LONG_GRACE) as scope:
                scope.start_soon(until_stopped, scope.signal, name="w1")
                scope.start_soon(until_stopped, scope.signal, name="w2")
        assert warnings_from_stopscope(caplog) == []

    @pytest.mark.parametrize("grace", [0, 0.05])
    async def test_member_swallowing_cancellation_is_reported_with_stack(
        self, caplog: pytest.LogCaptureFixture, grace: float
    ) -> None:
        caplog.set_level(logging.WARNING, logger="stopscope")
        scope = TaskScope(grace=grace)

        def logged_since(index: int) -> bool:
            return any(
                r.name.startswith("stopscope") and "stubborn" in formatted(r)
                for r in caplog.records[index:]
            )

        async def stubborn() -> None:
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                # swallow the cancellation and keep running until the scope has noticed
                mark = len(caplog.records)
                with anyio.CancelScope(shield=True), anyio.move_on_after(LINGER_GUARD):
                    while not logged_since(mark):
                        await anyio.sleep(0.01)

        with anyio.fail_after(HANG_GUARD * 2):
            async with scope:
                scope.start_soon(stubborn, name="stubborn")
        text = "\n".join(formatted(r) for r in warnings_from_stopscope(caplog))
        assert "stubborn" in text
        assert "test_scope.py" in text, "the log must show the member's stack"
        record = scope.report.by_name("stubborn")
        assert record.outcome is Outcome.CANCELLED
        assert record.phase == "after-cancel"
