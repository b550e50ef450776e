"""Stops that come from a Python signal handler (issue 15).

A handler runs between two bytecodes of whatever the main thread was doing, the
event loop's own bookkeeping included.  ``set()`` from a handler may only raise the
flags and wake the loop: what touches loop state (the grace timer, cancelling,
logging) must run on the loop afterwards.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from stopscope import StopSignal, TaskScope
from stopscope._backends import current

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(
        sys.platform == "win32" or not hasattr(signal, "setitimer"),
        reason="needs setitimer and SIGALRM",
    ),
]

#: scopes stopped by the alarm, one after the other
ROUNDS = 150
#: a member ignores its stop; its scope must cancel it after this grace
GRACE = 0.001
#: how often the alarm goes off (seconds)
ALARM = 0.0002


@contextmanager
def alarm_storm(handler: Any) -> Iterator[None]:
    """SIGALRM every ALARM seconds, handled by ``handler`` (restored afterwards)."""
    assert threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, ALARM, ALARM)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


async def test_a_stop_from_a_signal_handler_keeps_its_grace_timer() -> None:
    """The handler's stop lands while the loop's timer service is compacting its
    heap (many timed waits ended early).  Before the fix the handler armed the
    grace timer there and then, the interrupted compaction dropped it, and the
    scope never cancelled the member that ignores its stop: it hung."""
    backend = current()
    scopes: list[TaskScope] = []

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        if scopes:
            scopes[-1].stop("alarm")

    def noop() -> None:
        pass

    async def ignores_its_stop() -> None:
        await anyio.sleep_forever()

    cancelled = 0
    with alarm_storm(on_alarm):
        for _ in range(ROUNDS):
            with anyio.fail_after(10):  # a lost grace timer hangs the scope
                async with TaskScope(grace=GRACE) as scope:
                    scope.start_soon(ignores_its_stop, name="ignores")
                    scopes.append(scope)
                    # churn the timer service until the alarm stops the scope: each
                    # timed entry ends before its deadline, so the heap keeps
                    # compacting (stale > 256 and more than half of it)
                    now = backend.clock()
                    while not scope.signal.is_set():
                        for _ in range(64):
                            backend.cancel_call(backend.call_at(now + 3600, noop))
            cancelled += len(scope.report.needed_cancellation)
            scopes.clear()
    assert cancelled == ROUNDS


async def test_a_set_written_in_a_task_cancels_its_scope_in_place() -> None:
    """Ordinary code: the nearest caller outside stopscope is a coroutine."""
    sig = StopSignal()
    reached: list[str] = []
    with sig.cancel_scope() as cs:
        sig.set()
        assert cs.cancel_called
        await anyio.lowlevel.checkpoint()
        reached.append("not cancelled at the next checkpoint")
    assert cs.cancelled_caught
    assert reached == []


async def test_a_set_from_a_plain_function_leaves_the_cancel_to_the_loop() -> None:
    """A plain function might be a signal handler: the loop cancels the scope a
    moment later, still before the wait inside it is woken."""
    sig = StopSignal()
    reached: list[str] = []

    def stop() -> None:  # called like a handler would be
        sig.set()

    async def waiter() -> None:
        with sig.cancel_scope():
            await sig.wait()
            reached.append("woken inside a scope that should be cancelled")

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            with sig.cancel_scope() as cs:
                stop()
                assert not cs.cancel_called  # not inside set(): on the loop, later
                await anyio.sleep_forever()  # until the loop runs the cancel (fail_after)
            assert cs.cancelled_caught
    assert reached == []


async def test_grace_zero_still_cancels_when_the_stop_may_come_from_a_handler() -> None:
    """``grace=0`` cancels at once, wherever the stop comes from.  From a plain
    function (maybe a handler) the scope's loop work runs a moment later, on the loop:
    the members that stop wakes run only after it, so they are cancelled, not STOPPED.
    (Found by the fuzzer's signal-storm profile: a member woken in place ran first.)"""

    def stop(scope: TaskScope) -> None:  # called like a handler would be
        scope.stop("handler")

    with anyio.fail_after(10):
        async with TaskScope(grace=0) as scope:
            scope.start_soon(scope.signal.wait, name="waiter")
            await anyio.wait_all_tasks_blocked()
            stop(scope)
    record = scope.report.by_name("waiter")
    assert (record.outcome.name, record.phase) == ("CANCELLED", "cancelled")


async def test_a_handler_that_interrupts_a_task_hands_the_loop_work_over() -> None:
    """signal.raise_signal() runs the handler before it returns, inside this task."""
    sig = StopSignal()
    in_handler: list[bool] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        sig.set("handler")
        in_handler.append(cs.cancel_called)

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        with anyio.fail_after(10), sig.cancel_scope() as cs:
            signal.raise_signal(signal.SIGUSR1)
            assert in_handler == [False]
            await anyio.sleep_forever()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert cs.cancelled_caught
