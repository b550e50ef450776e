"""The asyncio backend (uvloop included): one :class:`AsyncioBackend` per event loop.

How it works on asyncio, in brief:

* The backend of a loop is made on first use and kept on the loop object itself
  (asyncio's and uvloop's loops take attributes; a loop class with ``__slots__`` gets
  a weak dictionary entry instead), so it lives and dies with the loop.
* A waiting task parks on a plain :class:`asyncio.Future` registered as the signal's
  hook.  ``set()`` completes it directly only from a task of the same loop; from
  anywhere else (another thread, a signal handler while the loop sleeps, a loop
  callback) the wake goes through ``loop.call_soon_threadsafe``, which also wakes a
  sleeping selector.  A cancelled wait removes its hook.
* Timed waits share one heap of deadlines per loop and one loop timer for the
  earliest: a loop ``TimerHandle`` per timed wait costs a handle and a cancel per
  waiter; a heap push and a lazy deletion are cheaper at every fan-out.  On uvloop
  too (its ``call_at`` is a C timer, but about 2x the cost of a heap entry): there the
  heap holds distinct deadlines, each with a bucket of waiters (:class:`UvloopTimers`),
  and the loop timer is rounded up to whole milliseconds (uvloop rounds to the nearest
  one, so a timer could fire before its deadline and spin).
* "Was this task cancelled?" is ``Task.cancelling()`` (3.11+): non-zero once anything
  (an anyio cancel scope included) has cancelled the task and not taken it back.
* Plain asyncio sets no signal wake-up fd, so a signal that the kernel hands to
  another thread would leave the loop asleep until its next timer: the service sets
  one for the life of its block (uvloop has its own).
* A TaskScope's members run in anyio's task group, unlike on trio.  A native path
  (bare ``loop.create_task()`` members, as ``asyncio.TaskGroup`` has) would spawn in
  about half the time, but on asyncio anyio keeps its cancel-scope tree in its own
  per-task state, which only its task group can give a task: without it, an outer
  scope's deadline moved later is not seen in members, ``get_current_task()`` loses
  its ``parent_id``, a cancellation reaches members of nested scopes one loop turn
  late, and (with ``Task.cancel()``) shields inside members are pierced.  See the
  "Backends" page of the docs for the measurements.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import signal
import socket
import sys
import time
import weakref
from collections.abc import Callable, Iterable
from contextlib import suppress
from typing import Any, Final

import anyio

from ._base import (
    CALL,
    DEFERRED,
    HOMES,
    NOT_REACHED,
    REACHED,
    WAKE_INLINE,
    Entry,
    LoopCall,
    TaskGroup,
    TimerHeap,
    in_cancelled_scope,
    may_be_in_signal_handler,
    ops,
    run_calls,
)

#: the frames between wake_own() and the code that set the signal that are always this
#: package's: _signal._fire(), and set() or the drain that called it
_FIRE_FRAMES: Final = 2

__all__ = ["AsyncioBackend", "backend_of"]

_get_running_loop: Final = asyncio._get_running_loop
try:  # C on 3.12+; asyncio.current_task() is Python on 3.10 and 3.11
    from _asyncio import current_task as _current_task  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - version dependent
    _current_task = asyncio.tasks._current_tasks.get  # type: ignore[attr-defined]
#: the task running on a loop, or None (the fastest spelling of this Python)
current_task: Final = _current_task
_Future: Final = asyncio.Future
_sleep: Final = asyncio.sleep


class AsyncioTimers(TimerHeap):
    """The timer service of one loop: a heap of deadlines, one loop timer for the earliest."""

    __slots__ = ("handle", "loop", "resolution")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.handle: asyncio.TimerHandle | None = None
        self.resolution = time.get_clock_info("monotonic").resolution

    def add(self, deadline: float, signal: Any, waiter: Any) -> Entry:
        entry, earliest = self.push(deadline, signal, waiter)
        if earliest:
            if self.handle is not None:
                self.handle.cancel()
            self.handle = self.arm(deadline)
        return entry

    def arm(self, deadline: float) -> asyncio.TimerHandle:
        """Schedule the loop timer that runs :meth:`fire` at ``deadline``."""
        return self.loop.call_at(deadline, self.fire)

    def fire(self) -> None:
        self.handle = None
        loop = self.loop
        for fut in self.expired(loop.time() + self.resolution):
            if not fut.done():
                fut.set_result(False)
        # A due call may have added an earliest deadline, which scheduled a loop
        # timer already (add() does when none is pending): never schedule a second.
        if self.next_deadline != math.inf and self.handle is None:
            self.handle = self.arm(self.next_deadline)


def _wake(items: list[Any]) -> None:
    for item in items:
        if type(item) is LoopCall:
            item.run()
        elif not item.done():
            item.set_result(True)


class AsyncioBackend:
    """The backend of one asyncio (or uvloop) event loop."""

    __slots__ = ("__weakref__", "clock", "hop", "loop", "timers")

    name: Final = "asyncio"
    cancelled_exc: Final = asyncio.CancelledError

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.clock: Callable[[], float] = loop.time
        self.hop: Callable[[Callable[[], object]], object] = loop.call_soon_threadsafe
        self.timers = UvloopTimers(loop) if _is_uvloop(loop) else AsyncioTimers(loop)

    def __repr__(self) -> str:
        return f"<stopscope asyncio backend of {self.loop!r}>"

    # -- parking and waking ---------------------------------------------------

    async def checkpoint(self) -> None:
        await _sleep(0)

    def park(self, signal: Any) -> asyncio.Future[bool] | None:
        fut: asyncio.Future[bool] = self.loop.create_future()
        return fut if ops.add_hook(signal, fut) else None

    def unpark(self, signal: Any, parked: Any) -> None:
        if parked.cancelled() or not parked.done():
            ops.remove_hook(signal, parked)

    def park_until(self, signal: Any, deadline: float) -> tuple[asyncio.Future[bool], Entry] | None:
        fut: asyncio.Future[bool] = self.loop.create_future()
        if not ops.add_hook(signal, fut):
            return None
        return fut, self.timers.add(deadline, signal, fut)

    def unpark_timed(self, signal: Any, parked: Any, entry: Entry) -> None:
        if entry[2] is not None:  # the wait ended before its deadline
            entry[2] = entry[3] = None
            self.timers.stale += 1
        # set() and the timer remove the hook when they claim it; else remove it
        if signal._hooks is not None and (parked.cancelled() or not parked.done()):
            ops.remove_hook(signal, parked)

    def wake_own(self, items: Iterable[Any]) -> list[Any]:
        """From a task of this loop: wake this loop's items in place, in order; return
        the others (other loops' waiters and calls).

        On the main thread this may be a signal handler: the loop calls (they touch
        loop state) are handed to the loop instead, and so are the waiters after a
        barrier call among them, so that the order holds.
        """
        loop = self.loop
        rest: list[Any] = []
        later: list[Any] | None = None  # handed to the loop, in order
        barrier = False
        for item in items:
            kind = type(item)
            if kind is _Future:
                if item.get_loop() is loop:
                    # completing a future only queues its callbacks (C code, and a
                    # deque append): safe even in a signal handler; the loop is awake
                    if barrier:
                        later.append(item)  # type: ignore[union-attr]
                    elif not item.done():
                        item.set_result(True)
                    continue
            elif kind is LoopCall and item.home is self:
                if later is None and not may_be_in_signal_handler(_FIRE_FRAMES):
                    item.run()
                else:
                    if later is None:
                        later = []
                    later.append(item)
                    barrier = barrier or item.barrier
                continue
            rest.append(item)
        if later:
            # first thing in the loop's next turn; call_soon only appends to a deque,
            # which is safe from a handler while one of the loop's tasks runs
            loop.call_soon(_wake, later)
        return rest

    def wake_soon(self, items: list[Any]) -> None:
        with suppress(RuntimeError):  # the loop is closed: nobody to wake
            self.loop.call_soon_threadsafe(_wake, items)

    # -- timers ------------------------------------------------------------------

    def call_at(self, deadline: float, fn: Callable[[], object]) -> Entry:
        return self.timers.add(deadline, CALL, fn)

    def cancel_call(self, entry: Entry) -> None:
        self.timers.cancel(entry)

    # -- task groups and cancellation --------------------------------------------

    def cancel_probe(self) -> Callable[[], bool]:
        if not hasattr(asyncio.Task, "cancelling"):  # Python 3.10
            return in_cancelled_scope
        loop = self.loop
        current = _current_task

        def asyncio_probe() -> bool:
            task = current(loop)
            return task is not None and task.cancelling() > 0

        return asyncio_probe

    def create_task_group(self) -> TaskGroup:
        return anyio.create_task_group()

    def group_entered(self, group: TaskGroup) -> Any:
        """The group (cancel_shields reads its member tasks)."""
        return group

    def current_task(self) -> Any:
        return _current_task(self.loop)

    def cancel_marks(self, entered: Any, task: Any = None) -> Any:
        return None

    def cancel_shields(
        self, entered: Any, marks: Any, task: Any = None
    ) -> frozenset[asyncio.Task[Any]] | None:
        """The member tasks still blocked, their wait not cancelled, right after the
        cancellation: anyio cancels the wait of every blocked task that no shielded
        scope covers at once, inside ``cancel()``.  Private attributes (anyio's task
        set, asyncio's ``_fut_waiter``), read defensively: without them a late return
        is judged by the probe alone."""
        try:
            tasks = entered._tasks if task is None else (task,)
            return frozenset(
                task
                for task in tasks
                if (waiter := task._fut_waiter) is not None and not waiter.done()
            )
        except AttributeError:  # pragma: no cover - an anyio or asyncio without them
            return None

    def cancel_reached(self, marks: Any, probe: Callable[[], bool]) -> int:
        if marks is not None and _current_task(self.loop) in marks:
            return DEFERRED  # a shield held the cancellation off
        # a task woken by the stop in the same loop turn returned before anyio
        # delivered the cancellation: Task.cancelling() tells
        return REACHED if probe() else NOT_REACHED

    # -- process signals -----------------------------------------------------------

    def open_signal_wakeup(self) -> Callable[[], None] | None:
        """Plain asyncio: set a wake-up fd for the caller's lifetime (none is set)."""
        loop = self.loop
        if not type(loop).__module__.startswith("asyncio"):
            return None  # uvloop and others manage their own
        try:
            rsock, wsock = socket.socketpair()
        except OSError:
            return None
        rsock.setblocking(False)
        wsock.setblocking(False)
        try:
            old = signal.set_wakeup_fd(wsock.fileno(), warn_on_full_buffer=False)
        except (ValueError, OSError):
            rsock.close()
            wsock.close()
            return None
        if old != -1:  # someone (add_signal_handler) already wakes the loop: keep theirs
            signal.set_wakeup_fd(old, warn_on_full_buffer=False)
            rsock.close()
            wsock.close()
            return None
        try:
            loop.add_reader(rsock.fileno(), _drain_socket, rsock)
        except NotImplementedError:  # e.g. the proactor loop on Windows
            signal.set_wakeup_fd(-1)
            rsock.close()
            wsock.close()
            return None

        def close() -> None:
            with suppress(ValueError, OSError):
                current = signal.set_wakeup_fd(-1)
                if current != wsock.fileno():  # replaced meanwhile: put theirs back
                    signal.set_wakeup_fd(current)
            with suppress(Exception):
                loop.remove_reader(rsock.fileno())
            rsock.close()
            wsock.close()

        return close


class UvloopTimers(AsyncioTimers):
    """uvloop's timer service: deadlines bucketed by value, one heap of distinct ones.

    uvloop's clock counts whole milliseconds, so waiters started in one burst share
    their deadlines exactly (``every()`` keeps them on the grid).  On one heap of
    ``[deadline, seq, ...]`` entries, each pop sifts down through equal deadlines
    comparing sequence numbers (about 1 µs at 1,000 waiters); a bucket per distinct
    deadline, in arrival (``seq``) order, expires the same entries in the same order
    for a dict lookup and a list append.  Stale entries stay in their bucket, counted
    by ``stale``; compaction rebuilds the buckets as the heap's rebuilds the heap.
    """

    __slots__ = ("buckets", "deadlines", "size")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.buckets: dict[float, list[Entry]] = {}
        self.deadlines: list[float] = []
        self.size = 0

    def push(self, deadline: float, signal: Any, waiter: Any) -> tuple[Entry, bool]:
        if self.stale > 256 and self.stale * 2 > self.size and not self.compacting:
            self._compact()
        self.seq += 1
        entry = [deadline, self.seq, signal, waiter]
        if self.compacting:  # see TimerHeap.push: the compaction adds it when done
            self.incoming.append(entry)
        else:
            self._insert(entry)
        if deadline < self.next_deadline:
            self.next_deadline = deadline
            return entry, True
        return entry, False

    def entries(self) -> list[Entry]:
        return [entry for deadline in sorted(self.buckets) for entry in self.buckets[deadline]]

    def arm(self, deadline: float) -> asyncio.TimerHandle:
        """The loop timer for ``deadline``, never due before it.

        uvloop rounds a delay to the *nearest* whole millisecond and its clock counts
        whole milliseconds: a deadline 12.4 ms away got a 12 ms timer, which found
        nothing due, re-armed for the 0.4 ms left (rounded to 0) and spun until the
        millisecond turned.  Rounded up, the timer fires at most once per deadline.
        """
        delay = math.ceil((deadline - self.loop.time()) * 1000.0) / 1000.0
        return self.loop.call_later(delay if delay > 0.0 else 0.0, self.fire)

    def _insert(self, entry: Entry) -> None:
        deadline = entry[0]
        bucket = self.buckets.get(deadline)
        if bucket is None:
            self.buckets[deadline] = [entry]
            heapq.heappush(self.deadlines, deadline)
        else:
            bucket.append(entry)
        self.size += 1

    def _compact(self) -> None:
        self.compacting = True
        try:
            buckets: dict[float, list[Entry]] = {}
            size = 0
            for deadline, bucket in self.buckets.items():
                live = [entry for entry in bucket if entry[2] is not None]
                if live:
                    buckets[deadline] = live
                    size += len(live)
            self.buckets = buckets
            self.deadlines = list(buckets)
            heapq.heapify(self.deadlines)
            self.size = size
            self.stale = 0
        finally:
            self.compacting = False
        self._take_incoming()

    def _take_incoming(self) -> None:
        incoming = self.incoming
        while incoming:
            self._insert(incoming.pop())

    def expired(self, now: float) -> list[Any]:
        claimed: list[Any] = []
        calls: list[Callable[[], object]] = []
        claim = ops.claim_expired
        while True:
            # read afresh per bucket: a claim may run a set() queued by a signal handler,
            # whose loop calls may add deadlines, and compact
            deadlines = self.deadlines
            if not deadlines or deadlines[0] > now:
                break
            bucket = self.buckets.pop(heapq.heappop(deadlines))
            self.size -= len(bucket)
            for entry in bucket:
                sig, waiter = entry[2], entry[3]
                if sig is None:
                    self.stale -= 1
                    continue
                entry[2] = entry[3] = None
                if sig is CALL:
                    calls.append(waiter)
                elif claim(sig, waiter):
                    claimed.append(waiter)
        self.next_deadline = deadlines[0] if deadlines else math.inf
        run_calls(calls)
        return claimed


def _drain_socket(sock: socket.socket) -> None:
    with suppress(OSError):
        while sock.recv(4096):
            pass


#: the loop attribute that holds its backend
LOOP_ATTR: Final = "_stopscope_backend"

_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncioBackend] = (
    weakref.WeakKeyDictionary()
)


def _is_uvloop(loop: asyncio.AbstractEventLoop) -> bool:
    uvloop = sys.modules.get("uvloop.loop")  # imported by whoever made a uvloop loop
    return uvloop is not None and isinstance(loop, uvloop.Loop)


def backend_of(loop: asyncio.AbstractEventLoop) -> AsyncioBackend:
    """The backend of ``loop``, made on first use and kept on the loop."""
    backend: AsyncioBackend | None = getattr(loop, LOOP_ATTR, None)
    if backend is None:
        backend = _by_loop.get(loop)
        if backend is None:
            backend = AsyncioBackend(loop)
            try:
                setattr(loop, LOOP_ATTR, backend)
            except AttributeError:  # a loop class with __slots__
                _by_loop[loop] = backend
    return backend


def _wake_inline(fut: Any) -> bool:
    loop = _get_running_loop()
    if loop is not None and fut.get_loop() is loop and _current_task(loop) is not None:
        if not fut.done():
            fut.set_result(True)
        return True
    return False


HOMES[_Future] = lambda fut: backend_of(fut.get_loop())
WAKE_INLINE[_Future] = _wake_inline
