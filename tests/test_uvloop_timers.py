"""uvloop's timer service: deadlines bucketed by value (``UvloopTimers``).

uvloop's clock counts whole milliseconds, so waiters started together share their
deadlines; the service keeps one heap of distinct deadlines and a bucket of entries
per deadline.  These tests pin that it expires the same entries in the same order as
the one-heap service (deadline, then arrival), runs calls a call schedules, forgets
cancelled entries, and keeps live ones through compaction.  The contract tests of
timed waits run on uvloop through it as well (tests/test_signal*.py).  Ordering is by
deadlines only; ``asyncio.wait_for`` bounds a hang, nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Coroutine
from typing import Any, TypeVar

import anyio
import pytest

import stopscope  # noqa: F401  (installs the hook operations the timers claim through)
from stopscope._backends import _asyncio as asyncio_backend

uvloop = pytest.importorskip("uvloop")

T = TypeVar("T")
#: seconds; only a guard against hangs, never a timing assertion
HANG_GUARD = 10.0


def run_on_uvloop(coro: Coroutine[Any, Any, T]) -> T:
    result: T = uvloop.run(coro)
    return result


def test_uvloop_gets_the_bucketed_service_and_asyncio_the_heap() -> None:
    async def kind() -> type:
        return type(asyncio_backend.backend_of(asyncio.get_running_loop()).timers)

    assert run_on_uvloop(kind()) is asyncio_backend.UvloopTimers
    assert asyncio.run(kind()) is asyncio_backend.AsyncioTimers


def test_entries_expire_by_deadline_then_arrival_and_calls_may_schedule_calls() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        timers = asyncio_backend.UvloopTimers(loop)
        order: list[object] = []
        done = asyncio.Event()
        deadline = loop.time() + 0.01
        for i in range(5):  # one bucket, in arrival order
            timers.call_at(deadline, functools.partial(order.append, i))
        timers.call_at(deadline - 0.005, lambda: order.append("early"))

        def later() -> None:
            order.append("later")
            done.set()

        def first() -> None:
            order.append("first")
            timers.call_at(loop.time() + 0.01, later)

        timers.call_at(deadline + 0.002, first)
        cancelled = timers.call_at(deadline + 0.003, lambda: order.append("cancelled"))
        timers.cancel(cancelled)
        await asyncio.wait_for(done.wait(), HANG_GUARD)
        assert order == ["early", 0, 1, 2, 3, 4, "first", "later"]
        assert timers.size == 0
        assert timers.stale == 0
        assert not timers.buckets
        assert not timers.deadlines
        assert timers.entries() == []

    run_on_uvloop(main())


def test_compaction_keeps_the_live_entries_in_order() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        timers = asyncio_backend.UvloopTimers(loop)
        order: list[int] = []
        base = loop.time() + 0.02
        entries = [
            timers.call_at(base + (i % 5) * 1e-3, functools.partial(order.append, i))
            for i in range(600)
        ]
        for entry in entries[:500]:
            timers.cancel(entry)
        assert timers.stale == 500
        done = asyncio.Event()
        timers.call_at(base + 0.01, done.set)  # more than half stale: this push compacts
        assert timers.stale == 0
        assert timers.size == 101
        assert len(timers.entries()) == 101
        await asyncio.wait_for(done.wait(), HANG_GUARD)
        assert order == sorted(range(500, 600), key=lambda i: (i % 5, i))
        assert timers.size == 0
        assert timers.stale == 0
        assert not timers.buckets

    run_on_uvloop(main())


def test_a_cancelled_entry_holds_no_references() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        timers = asyncio_backend.UvloopTimers(loop)
        entry = timers.call_at(loop.time() + 3600, lambda: None)
        timers.cancel(entry)
        assert entry[2] is None
        assert entry[3] is None
        assert timers.stale == 1
        timers.cancel(entry)  # twice: nothing more happens
        assert timers.stale == 1
        if timers.handle is not None:
            timers.handle.cancel()

    run_on_uvloop(main())


# ------------------------------------------------- wake-ups per deadline (issue 15)

#: ticks of each timed loop; periods that are not a whole number of milliseconds
TICKS = 24
PERIODS = (1 / 60, 0.0121)


@pytest.mark.anyio
@pytest.mark.parametrize("period", PERIODS, ids=["every-1/60", "sleep-12.1ms"])
async def test_a_deadline_wakes_the_timer_service_at_most_twice(
    period: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvloop counts whole milliseconds: a loop timer armed for a deadline that is not
    one fired early, found nothing due and re-armed at 0 ms, spinning until the
    millisecond turned (about 70 % of a core for 100 idle ``every(1/60)`` loops).
    Counted as the timer service's wake-ups per deadline that fell due, not in time."""
    from stopscope import StopSignal
    from stopscope._backends import current

    timers = current().timers
    service = type(timers)
    wakes = 0
    due = 0
    original = service.expired

    def counting(self: Any, now: float) -> list[Any]:
        nonlocal wakes
        if self is timers:
            wakes += 1
        return original(self, now)

    monkeypatch.setattr(service, "expired", counting)
    sig = StopSignal()
    with anyio.fail_after(HANG_GUARD):
        if period == PERIODS[0]:
            async for tick in sig.every(period):
                due += tick > 0  # each later tick waited for one deadline
                if tick == TICKS:
                    break
        else:
            for _ in range(TICKS):
                assert await sig.sleep(period) is False
                due += 1
    assert due == TICKS
    assert wakes <= 2 * due, f"{wakes} timer wake-ups for {due} deadlines"


# -------------------------------- a push that lands inside a compaction (issue 15)


class _Interrupting(list):  # type: ignore[type-arg]
    """A heap entry whose signal slot, when the compaction reads it, pushes another
    entry first: what a signal handler landing mid-compaction would do."""

    def __init__(self, entry: list[Any], interrupt: Any) -> None:
        super().__init__(entry)
        self.interrupt = interrupt

    def __getitem__(self, index: Any) -> Any:
        interrupt, self.interrupt = self.interrupt, None
        if index == 2 and interrupt is not None:
            interrupt()
        return super().__getitem__(index)


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_an_entry_pushed_during_a_compaction_is_kept(kind: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        service = (
            asyncio_backend.UvloopTimers if kind == "uvloop" else asyncio_backend.AsyncioTimers
        )
        timers = service(loop)
        far = loop.time() + 3600
        entries = [timers.call_at(far + i, lambda: None) for i in range(600)]
        for entry in entries[1:]:
            timers.cancel(entry)  # more than half stale: the next push compacts
        nested: list[list[Any]] = []
        interrupting = _Interrupting(
            entries[0], lambda: nested.append(timers.call_at(far, lambda: None))
        )
        if isinstance(timers, asyncio_backend.UvloopTimers):
            bucket = timers.buckets[entries[0][0]]
            bucket[bucket.index(entries[0])] = interrupting
        else:
            timers.heap[timers.heap.index(entries[0])] = interrupting
        kept = timers.call_at(far + 1, lambda: None)  # compacts; the nested push lands
        assert len(nested) == 1
        held = [id(entry) for entry in timers.entries()]
        assert id(nested[0]) in held
        assert id(kept) in held
        assert id(interrupting) in held
        if timers.handle is not None:
            timers.handle.cancel()

    if kind == "uvloop":
        run_on_uvloop(main())
    else:
        asyncio.run(main())
