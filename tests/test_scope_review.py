"""Regression tests for the TaskScope defects found in review (issue 7).

Each test names the defect it holds.  They combine contract bullets (a member error
with a body ``KeyboardInterrupt``, a raw nursery inside a member, a stage with
``stop_on_exit=False``...), which is where the defects lived.  Every test runs on
asyncio, asyncio+uvloop and trio; ordering comes from events and
``anyio.wait_all_tasks_blocked()``, never from sleeps.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import threading
from types import FrameType
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from stopscope import Outcome, StopReason, StopSignal, TaskScope

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup, ExceptionGroup  # type: ignore[import-not-found, unused-ignore]

pytestmark = pytest.mark.anyio

HANG_GUARD = 10.0
LONG_GRACE = 60.0


class Boom(BaseException):
    """A BaseException that is neither cancellation nor a real KeyboardInterrupt."""


def leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        found: list[BaseException] = []
        for inner in exc.exceptions:
            found.extend(leaves(inner))
        return found
    return [exc]


def stopscope_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("stopscope") and r.levelno >= logging.WARNING
    ]


class Caught:
    """Catches whatever a block raises, KeyboardInterrupt and SystemExit included (a
    real one escaping a test would stop pytest itself)."""

    value: BaseException | None = None

    def __enter__(self) -> Caught:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> bool:
        if isinstance(exc, anyio.get_cancelled_exc_class()):
            return False  # a hang guard's cancellation: let it through
        self.value = exc
        return exc is not None

    def group(self) -> BaseExceptionGroup[BaseException]:
        assert isinstance(self.value, BaseExceptionGroup), f"not a group: {self.value!r}"
        return self.value


async def raise_now(error: BaseException) -> None:
    raise error


async def obey(signal: StopSignal) -> None:
    await signal.wait()


# ------------------------------------------------------------------ defect 1


@pytest.mark.parametrize("base", [KeyboardInterrupt, SystemExit, Boom])
async def test_member_error_and_body_base_exception_both_raised(
    base: type[BaseException],
) -> None:
    """Defect 1: a member's ValueError is not lost when the body raises a BaseException."""
    member_error = ValueError("member")
    body_error = base("body")
    with anyio.fail_after(HANG_GUARD), Caught() as info:
        async with TaskScope(grace=LONG_GRACE) as scope:
            scope.start_soon(raise_now, member_error, name="failing")
            await anyio.wait_all_tasks_blocked()
            assert scope.signal.is_set()
            raise body_error
    got = leaves(info.group())
    assert sorted(map(id, got)) == sorted(map(id, [member_error, body_error]))
    assert scope.report.by_name("failing").outcome is Outcome.FAILED


async def test_body_base_exception_alone_is_grouped_as_anyio_does() -> None:
    body_error = Boom("body")
    with anyio.fail_after(HANG_GUARD), Caught() as info:
        async with TaskScope(grace=LONG_GRACE) as scope:
            scope.start_soon(obey, scope.signal, name="obeys")
            await anyio.wait_all_tasks_blocked()
            raise body_error
    assert leaves(info.group()) == [body_error]
    # hard, as in anyio: the member was cut off, not given its grace
    record = scope.report.by_name("obeys")
    assert record.outcome in (Outcome.CANCELLED, Outcome.STOPPED)


# ------------------------------------------------------------------ defect 2


@pytest.mark.parametrize("base", [KeyboardInterrupt, SystemExit, Boom])
async def test_member_base_exception_is_failed_and_collected(
    base: type[BaseException], caplog: pytest.LogCaptureFixture
) -> None:
    """Defect 2: a member raising a non-cancellation BaseException is FAILED, not
    FINISHED, and the error of another member is kept with it."""
    first = ValueError("first")
    second = base("second")
    release = anyio.Event()

    async def late_base(signal: StopSignal) -> None:
        await release.wait()
        raise second

    with anyio.fail_after(HANG_GUARD), Caught() as info:
        async with TaskScope(grace=LONG_GRACE) as scope:
            scope.start_soon(late_base, scope.signal, name="base")
            scope.start_soon(raise_now, first, name="first")
            await anyio.wait_all_tasks_blocked()
            # the first error stopped the scope; the base member is still inside grace
            release.set()
    assert sorted(map(id, leaves(info.group()))) == sorted(map(id, [first, second]))
    record = scope.report.by_name("base")
    assert record.outcome is Outcome.FAILED
    assert record.error is second
    assert record.phase == "grace"
    assert record.latency is not None


async def test_member_base_exception_stops_the_others_hard() -> None:
    error = Boom("member")
    with anyio.fail_after(HANG_GUARD), Caught() as info:
        async with TaskScope(grace=LONG_GRACE) as scope:
            scope.start_soon(anyio.sleep_forever, name="stuck")
            await anyio.wait_all_tasks_blocked()
            scope.start_soon(raise_now, error, name="base")
            await anyio.sleep_forever()  # cancelled at once, not after 60 s
    assert leaves(info.group()) == [error]
    assert scope.report.reason is error
    assert scope.report.by_name("base").outcome is Outcome.FAILED
    assert scope.report.by_name("stuck").outcome is Outcome.CANCELLED


async def test_thread_member_base_exception_is_failed() -> None:
    error = Boom("thread")

    def raises(signal: StopSignal) -> None:
        raise error

    with anyio.fail_after(HANG_GUARD), Caught() as info:
        async with TaskScope(grace=LONG_GRACE) as scope:
            scope.start_thread(raises, name="thread")
            await scope.signal.wait()
    assert leaves(info.group()) == [error]
    record = scope.report.by_name("thread")
    assert record.outcome is Outcome.FAILED
    assert record.error is error


async def test_raw_nursery_in_member_cancelled_after_grace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Defect 2: a raw task group inside a member, cancelled after grace: the member is
    CANCELLED with the cancellation phase, latency and warning."""

    async def with_nursery(signal: StopSignal) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.sleep_forever)
            tg.start_soon(anyio.sleep_forever)
            await anyio.sleep_forever()

    with anyio.fail_after(HANG_GUARD):
        async with TaskScope(grace=0.01) as scope:
            scope.start_soon(with_nursery, scope.signal, name="nursery")
            await anyio.wait_all_tasks_blocked()
    record = scope.report.by_name("nursery")
    assert record.outcome is Outcome.CANCELLED
    assert record.phase == "cancelled"
    assert record.latency is not None
    assert any("'nursery' did not stop within" in m for m in stopscope_warnings(caplog))


async def test_raw_nursery_child_error_during_cancellation_kept_with_others() -> None:
    """Defect 2: a nursery child raising while being cancelled, plus another member's
    error collected before: both come out."""
    earlier = ValueError("earlier")
    during = RuntimeError("during cancellation")
    go = anyio.Event()

    async def child() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            raise during

    async def with_nursery(signal: StopSignal) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(child)
            await anyio.sleep_forever()

    async def fails_later(signal: StopSignal) -> None:
        await go.wait()
        raise earlier

    with anyio.fail_after(HANG_GUARD), Caught() as info:
        async with TaskScope(grace=0.01) as scope:
            scope.start_soon(with_nursery, scope.signal, name="nursery")
            scope.start_soon(fails_later, scope.signal, name="fails")
            await anyio.wait_all_tasks_blocked()
            go.set()
    assert sorted(map(id, leaves(info.group()))) == sorted(map(id, [earlier, during]))
    record = scope.report.by_name("nursery")
    assert record.outcome is Outcome.FAILED
    assert record.phase == "cancelled"
    assert record.error is not None
    assert leaves(record.error) == [during]


# ------------------------------------------------------------------ defect 3


async def test_stage_with_stop_on_exit_false_and_no_members_does_not_hang() -> None:
    with anyio.fail_after(HANG_GUARD):
        async with TaskScope(stop_on_exit=False) as scope:
            scope.stage("only")
    assert scope.report.reason is None


async def test_stage_after_finished_member_with_stop_on_exit_false() -> None:
    async def quick() -> None:
        pass

    with anyio.fail_after(HANG_GUARD):
        async with TaskScope(stop_on_exit=False) as scope:
            scope.start_soon(quick, name="quick")
            await anyio.wait_all_tasks_blocked()
            scope.stage("late")
    assert scope.report.by_name("quick").outcome is Outcome.FINISHED


async def test_quick_member_inside_stage_with_stop_on_exit_false() -> None:
    async def quick() -> None:
        await anyio.lowlevel.checkpoint()

    for _ in range(20):  # trio hung in about half the runs
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(stop_on_exit=False) as scope:
                scope.stage("jobs")
                scope.start_soon(quick, name="quick")
        assert scope.report.by_name("quick").outcome is Outcome.FINISHED


# ------------------------------------------------------------------ defect 6


async def test_outside_cancel_during_drain_is_named_as_such(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Defect 6: a hard cancellation during the grace period is not a grace expiry."""
    with anyio.fail_after(HANG_GUARD):
        with anyio.CancelScope() as outer:
            async with TaskScope(grace=LONG_GRACE, name="svc") as scope:
                scope.stage("background")
                scope.start_soon(anyio.sleep_forever, name="stubborn")
                scope.stage("http")
                scope.start_soon(anyio.sleep_forever, name="handler")
                await anyio.wait_all_tasks_blocked()
                scope.stop("first signal")
                await anyio.wait_all_tasks_blocked()
                outer.cancel()  # the second signal
        assert outer.cancelled_caught
    messages = stopscope_warnings(caplog)
    assert not any("grace period" in m for m in messages), messages
    assert any("cancelled from outside" in m for m in messages), messages
    for name in ("stubborn", "handler"):
        record = scope.report.by_name(name)
        assert record.outcome is Outcome.CANCELLED
        assert record.phase == "cancelled-from-outside"
    assert scope.report.reason == "first signal"


async def test_outside_cancel_before_stop_sets_reason(caplog: pytest.LogCaptureFixture) -> None:
    with anyio.fail_after(HANG_GUARD):
        with anyio.CancelScope() as outer:
            async with TaskScope(grace=LONG_GRACE) as scope:
                scope.start_soon(anyio.sleep_forever, name="member")
                await anyio.wait_all_tasks_blocked()
                outer.cancel()
                await anyio.sleep_forever()
    assert scope.report.reason is StopReason.CANCELLED
    assert scope.report.by_name("member").phase == "cancelled-from-outside"
    assert not any("grace period" in m for m in stopscope_warnings(caplog))


# ------------------------------------------------------------------ defect 7


@pytest.mark.parametrize("how", ["wait", "sleep", "every"])
async def test_grace_zero_member_parked_on_signal_is_plainly_cancelled(
    how: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def parked(signal: StopSignal) -> None:
        if how == "wait":
            await signal.wait()
        elif how == "sleep":
            await signal.sleep(3600)
        else:
            async for _ in signal.every(3600):
                pass

    with anyio.fail_after(HANG_GUARD):
        async with TaskScope(grace=0) as scope:
            scope.start_soon(parked, scope.signal, name="parked")
            await anyio.wait_all_tasks_blocked()
    record = scope.report.by_name("parked")
    assert record.outcome is Outcome.CANCELLED
    assert record.phase == "cancelled"
    assert not any("catch the cancellation" in m for m in stopscope_warnings(caplog))


# ------------------------------------------------------------------ defect 9


async def test_report_is_frozen_at_exit() -> None:
    parent = StopSignal()
    async with TaskScope(signal=parent, stop_on_exit=False) as scope:
        pass
    before = scope.report
    assert before.reason is None
    assert before.requested_at is None
    parent.set("later")
    after = scope.report
    assert after.reason is None
    assert after.requested_at is None
    assert after == before


# ------------------------------------------------------------------ defect 10


# only asyncio lets a task await another task's cancellation
@pytest.mark.parametrize(
    "anyio_backend",
    [
        pytest.param(("asyncio", {"debug": True}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio+uvloop"),
    ],
)
async def test_cancelled_error_nobody_sent_is_a_failure_of_that_member(
    caplog: pytest.LogCaptureFixture,
) -> None:

    async def awaits_cancelled_task(signal: StopSignal) -> None:
        task = asyncio.ensure_future(asyncio.sleep(3600))
        await asyncio.sleep(0)
        task.cancel()
        await task  # raises CancelledError: not a cancellation of this member

    with anyio.fail_after(HANG_GUARD), Caught() as info:
        async with TaskScope(grace=LONG_GRACE) as scope:
            scope.start_soon(awaits_cancelled_task, scope.signal, name="stray")
            scope.start_soon(obey, scope.signal, name="sibling")
            await scope.signal.wait()
    (error,) = leaves(info.group())
    assert isinstance(error, RuntimeError)
    assert isinstance(error.__cause__, asyncio.CancelledError)
    assert scope.report.reason is error
    assert scope.report.by_name("stray").outcome is Outcome.FAILED
    assert scope.report.by_name("sibling").outcome is Outcome.STOPPED
    assert not any("cancelled from outside" in m for m in stopscope_warnings(caplog))


# ------------------------------------------------------------------ defect 11


async def test_start_with_sync_wrapper_that_raises_after_started() -> None:
    error = ValueError("after started")

    def wrapper(*, task_status: anyio.abc.TaskStatus[Any]) -> Any:
        task_status.started("ok")
        raise error

    with anyio.fail_after(HANG_GUARD), Caught() as info:
        async with TaskScope(grace=LONG_GRACE) as scope:
            scope.start_soon(obey, scope.signal, name="sibling")
            assert await scope.start(wrapper, name="wrapper") == "ok"
            await scope.signal.wait()
    assert leaves(info.group()) == [error]
    assert scope.report.reason is error
    assert scope.report.by_name("wrapper").outcome is Outcome.FAILED
    # the others were stopped gracefully, not hard-cancelled by anyio
    assert scope.report.by_name("sibling").outcome is Outcome.STOPPED


# ------------------------------------------------------------------ defect 12


async def test_outside_cancellation_leaves_no_reference_cycle() -> None:
    exc: BaseException | None = None
    with anyio.CancelScope() as outer:
        try:
            async with TaskScope():
                outer.cancel()
                await anyio.lowlevel.checkpoint()
        except BaseException as caught:
            exc = caught
            raise
    assert exc is not None
    holders = [r for r in gc.get_referrers(exc) if r is not sys._getframe()]
    assert holders == [], holders


async def test_body_error_leaves_no_reference_cycle() -> None:
    exc: BaseException | None = None
    try:
        async with TaskScope():
            raise ValueError("body")
    except ExceptionGroup as caught:
        exc = caught.exceptions[0]
    assert exc is not None
    # the group, the signal and the report hold it (as the reason); no frame of
    # __aexit__ does
    frames = [
        r for r in gc.get_referrers(exc) if isinstance(r, FrameType) and r is not sys._getframe()
    ]
    assert frames == [], frames


# ------------------------------------------------------------------ defect 13


async def test_member_swallowing_outside_cancel_is_not_finished() -> None:
    async def swallows(signal: StopSignal) -> None:
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            return  # wrong, but it happens

    with anyio.fail_after(HANG_GUARD):
        with anyio.CancelScope() as outer:
            async with TaskScope(grace=LONG_GRACE) as scope:
                scope.start_soon(swallows, scope.signal, name="swallows")
                await anyio.wait_all_tasks_blocked()
                outer.cancel()
                await anyio.sleep_forever()
    record = scope.report.by_name("swallows")
    assert record.outcome is Outcome.CANCELLED
    assert record.phase == "cancelled-from-outside"


async def test_member_whose_failure_caused_the_stop_has_no_latency() -> None:
    error = ValueError("cause")
    with Caught() as info:
        async with TaskScope(grace=LONG_GRACE) as scope:
            scope.start_soon(raise_now, error, name="cause")
            scope.start_soon(obey, scope.signal, name="other")
            await scope.signal.wait()
    assert leaves(info.group()) == [error]
    cause = scope.report.by_name("cause")
    assert cause.outcome is Outcome.FAILED
    assert cause.phase == "running"
    assert cause.latency is None
    other = scope.report.by_name("other")
    assert other.phase == "grace"
    assert other.latency is not None


async def test_stop_from_thread_racing_member_failure_keeps_every_error() -> None:
    """A combination: a thread stops the scope while a member fails."""
    error = ValueError("member")
    ready = threading.Event()

    def stopper(scope: TaskScope) -> None:
        ready.wait()
        scope.stop("thread")

    async def fails(signal: StopSignal) -> None:
        ready.set()
        raise error

    with anyio.fail_after(HANG_GUARD), Caught() as info:
        async with TaskScope(grace=LONG_GRACE) as scope:
            thread = threading.Thread(target=stopper, args=(scope,))
            thread.start()
            scope.start_soon(fails, scope.signal, name="fails")
            await scope.signal.wait()
    await anyio.to_thread.run_sync(thread.join)
    assert leaves(info.group()) == [error]


@pytest.mark.parametrize("anyio_backend", [pytest.param(("trio", {}), id="trio")])
async def test_raw_trio_nursery_in_member_cancelled_after_grace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Defect 2, as found: a plain ``trio.open_nursery()`` inside a member raises a
    group of ``Cancelled`` when the grace runs out (trio only: a raw trio nursery)."""
    import trio

    async def with_nursery(signal: StopSignal) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            nursery.start_soon(trio.sleep_forever)
            await trio.sleep_forever()

    with anyio.fail_after(HANG_GUARD):
        async with TaskScope(grace=0.01) as scope:
            scope.start_soon(with_nursery, scope.signal, name="nursery")
            await anyio.wait_all_tasks_blocked()
    record = scope.report.by_name("nursery")
    assert record.outcome is Outcome.CANCELLED
    assert record.phase == "cancelled"
    assert record.latency is not None
    assert any("'nursery' did not stop within" in m for m in stopscope_warnings(caplog))


# ------------------------------------------------------- found by review, same session


@pytest.mark.parametrize(
    "anyio_backend",
    [
        pytest.param(("asyncio", {"debug": True}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio+uvloop"),
    ],
)
async def test_native_cancel_of_a_member_task_is_a_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``Task.cancel()`` aimed at a member's own task (not through a cancel scope) is a
    cancellation of that member, not a "CancelledError nobody sent": no made-up
    RuntimeError, and the others stop gracefully."""
    tasks: list[asyncio.Task[Any]] = []

    async def member(signal: StopSignal) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        await anyio.sleep_forever()

    with anyio.fail_after(HANG_GUARD):
        async with TaskScope(grace=LONG_GRACE) as scope:
            scope.start_soon(member, scope.signal, name="cancelled")
            scope.start_soon(obey, scope.signal, name="sibling")
            await anyio.wait_all_tasks_blocked()
            tasks[0].cancel()
            await scope.signal.wait()
    cancelled = scope.report.by_name("cancelled")
    assert cancelled.outcome is Outcome.CANCELLED
    assert cancelled.phase == "cancelled-from-outside"
    assert cancelled.error is None
    assert scope.report.reason is StopReason.CANCELLED
    assert scope.report.by_name("sibling").outcome is Outcome.STOPPED


@pytest.mark.parametrize("how", ["outside", "body-base-exception"])
async def test_member_swallowing_a_hard_cancellation_is_reported_while_it_runs(
    how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The scope never hangs silently: after a hard stop too, a member that keeps
    running is logged as still running after it was cancelled."""
    logged = anyio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "is still running" in record.getMessage():
                logged.set()

    watch = Watch()
    logging.getLogger("stopscope").addHandler(watch)

    async def swallower(signal: StopSignal) -> None:
        with anyio.CancelScope(shield=True):
            await logged.wait()  # keeps running until the scope has said so

    try:
        with anyio.fail_after(HANG_GUARD), Caught() as info, anyio.CancelScope() as outer:
            async with TaskScope(grace=LONG_GRACE) as scope:
                scope.start_soon(swallower, scope.signal, name="swallower")
                await anyio.wait_all_tasks_blocked()
                if how == "outside":
                    outer.cancel()
                    await anyio.sleep_forever()
                raise Boom("body")
    finally:
        logging.getLogger("stopscope").removeHandler(watch)
    assert logged.is_set()
    if how == "outside":
        assert info.value is None
    else:
        assert [type(e) for e in leaves(info.group())] == [Boom]
    assert any("'swallower' is still running" in m for m in stopscope_warnings(caplog))


async def test_grace0_member_that_stops_the_scope_and_returns_is_stopped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """grace=0: a member that calls ``scope.stop()`` and returns with no checkpoint
    after it never saw the cancellation the stop issued: STOPPED on every backend, not
    accused of catching it (trio reported it CANCELLED/after-cancel)."""

    async def stopper(scope: TaskScope) -> None:
        await anyio.lowlevel.checkpoint()
        scope.stop("done")

    with anyio.fail_after(HANG_GUARD):
        async with TaskScope(grace=0) as scope:
            scope.start_soon(obey, scope.signal, name="obeys")
            scope.start_soon(stopper, scope, name="stopper")
            await anyio.sleep_forever()
    record = scope.report.by_name("stopper")
    assert record.outcome is Outcome.STOPPED
    assert record.phase == "grace"
    assert not any("catch the cancellation" in m for m in stopscope_warnings(caplog))
