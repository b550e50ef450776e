"""What every backend shares: the interface, the loop call, the timer heap.

Nothing here knows asyncio from trio.  ``_signal.py`` fills in :data:`ops` (the three
operations of the hook registry that a parked waiter or an expired deadline needs) when
it is imported, so the backends never import the modules built on them: no cycle.
"""

from __future__ import annotations

import heapq
import inspect
import logging
import math
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import Any, Final, Protocol

import anyio

logger: Final = logging.getLogger("stopscope")

#: in a timer entry's signal slot: the entry runs a function
CALL: Final[Any] = object()

# A heap entry is a list [deadline, seq, signal, waiter]: one allocation, and the
# references are dropped (set to None) as soon as the wait ends; the entry itself is
# deleted lazily, when it reaches the top of the heap or on compaction.
Entry = list[Any]


#: whether a cancellation issued by a scope reached a member task that then returned:
#: never (it returned before its next checkpoint), yes (it caught it), or held off by a
#: shielded scope it was in (see ``stopscope._judge``)
NOT_REACHED: Final = 0
REACHED: Final = 1
DEFERRED: Final = 2


def _not_installed(*args: Any) -> bool:  # pragma: no cover - _signal installs the real ones
    raise RuntimeError("stopscope._signal has not installed its hook operations")


class SignalOps:
    """The hook registry's operations the backends call; set by ``_signal`` on import.

    * ``add_hook(signal, waiter)``: register; ``False`` (nothing registered) if set;
    * ``remove_hook(signal, waiter)``: remove unless ``set()`` or a timer claimed it;
    * ``claim_expired(signal, waiter)``: a deadline passed: take the waiter from its
      signal unless ``set()`` claimed it first (``True``: the timer owns the wake).
    """

    __slots__ = ("add_hook", "claim_expired", "remove_hook")

    def __init__(self) -> None:
        self.add_hook: Callable[[Any, object], bool] = _not_installed
        self.remove_hook: Callable[[Any, object], bool] = _not_installed
        self.claim_expired: Callable[[Any, object], bool] = _not_installed


ops: Final = SignalOps()


class _CancelScope(Protocol):
    def cancel(self) -> None: ...


class TaskGroup(Protocol):
    """What :class:`~stopscope.TaskScope` uses of its task group: anyio's
    ``TaskGroup`` has it, and so does the trio backend's bare nursery."""

    @property
    def cancel_scope(self) -> _CancelScope: ...

    def start_soon(
        self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any, name: object = None
    ) -> object: ...

    def start(
        self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any, name: object = None
    ) -> Awaitable[Any]: ...

    async def __aenter__(self) -> object: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None: ...


class Backend(Protocol):
    """One event loop (asyncio) or one run (trio), as the core sees it.

    Chosen once per loop or run (:func:`stopscope._backends.current`) and cached by
    whoever uses it often (a scope, an ``every()`` iterator).
    """

    @property
    def name(self) -> str:
        """``"asyncio"`` or ``"trio"``."""

    #: the loop's clock (virtual under a fake clock): ``loop.time``, ``trio.current_time``
    clock: Callable[[], float]

    @property
    def cancelled_exc(self) -> type[BaseException]:
        """What a cancelled task raises here."""

    #: run a function soon on this loop, from any thread or a signal handler
    hop: Callable[[Callable[[], object]], object]

    @property
    def timers(self) -> TimerHeap:
        """The loop's timer service (trio: started on first use)."""

    async def checkpoint(self) -> None:
        """Yield to the loop once (and raise if the task is cancelled)."""

    def park(self, signal: Any) -> Awaitable[object] | None:
        """Register the running task as a waiter on ``signal``; return what it awaits
        until woken, or ``None`` if the signal is set already (nothing registered).
        The untimed wait, without a coroutine frame of its own."""

    def unpark(self, signal: Any, parked: Awaitable[object]) -> None:
        """After the await of :meth:`park` ended and ``set()`` did not claim the hook
        (the wait was cancelled): remove the hook if it is still there."""

    def park_until(self, signal: Any, deadline: float) -> tuple[Awaitable[bool], Entry] | None:
        """:meth:`park` with a deadline on :attr:`clock`: what it awaits gives ``True``
        if woken by ``set()``, ``False`` if the deadline passed first, and the entry
        to give :meth:`unpark_timed`; ``None`` if the signal is set already."""

    def unpark_timed(self, signal: Any, parked: Awaitable[bool], entry: Entry) -> None:
        """After the await of :meth:`park_until` ended, however it ended: drop the
        deadline if it is still pending, and the hook if nobody claimed it."""

    def wake_own(self, items: Iterable[Any]) -> list[Any]:
        """From one of this loop's tasks: wake the claimed waiters and run the loop calls
        of this loop, in place and in order; return the items of other loops.

        Called only by ``_signal._fire()``, which only this package's functions call
        (``set()`` and the drain of what signal handlers queued): it may skip those two
        frames when it looks for the code that set the signal
        (:func:`may_be_in_signal_handler`)."""

    def wake_soon(self, items: list[Any]) -> None:
        """The same from anywhere else: through the loop's thread-safe call."""

    def call_at(self, deadline: float, fn: Callable[[], object]) -> Entry:
        """Run ``fn()`` on this loop at ``deadline`` (its clock); :meth:`cancel_call`."""

    def cancel_call(self, entry: Entry) -> None:
        """Undo :meth:`call_at` (nothing happens if it ran already)."""

    def cancel_probe(self) -> Callable[[], bool]:
        """A cheap "was the running task cancelled?" for the path of a member that
        returned: :func:`in_cancelled_scope` costs 0.7-1.6 µs, and a member returning
        after a stop is the hot path of every scope, so each backend offers a sub-0.1 µs
        probe where it can (it falls back to :func:`in_cancelled_scope`)."""

    def create_task_group(self) -> TaskGroup:
        """The task group a :class:`~stopscope.TaskScope` runs its members in."""

    def group_entered(self, group: TaskGroup) -> Any:
        """Called in the task that entered ``group``; returns what :meth:`cancel_marks`
        needs later (``None``: nothing)."""

    def current_task(self) -> Any:
        """The running task (asyncio's ``Task``, trio's ``Task``)."""

    def cancel_marks(self, entered: Any, task: Any = None) -> Any:
        """The group (or one member's scope, ``task`` only) is about to be cancelled:
        note where each member task stands."""

    def cancel_shields(self, entered: Any, marks: Any, task: Any = None) -> Any:
        """The cancellation was just issued: add to ``marks`` which member tasks (or
        ``task`` only) a shielded scope keeps it from; returns the marks
        :meth:`cancel_reached` reads."""

    def cancel_reached(self, marks: Any, probe: Callable[[], bool]) -> int:
        """Whether that cancellation reached the running member task (``_judge.REACHED``),
        was deferred by a shielded scope it was in (``DEFERRED``) or never reached it
        (``NOT_REACHED``: it returned before its next checkpoint)."""

    def open_signal_wakeup(self) -> Callable[[], None] | None:
        """Make sure a process signal wakes this loop; returns how to undo it."""


class LoopCall:
    """A function that must run on a given loop (``home``) when a signal is set.

    When ``set()`` cannot run it in place (it may be a signal handler), it runs on the
    loop soon after.  A ``barrier`` call (a cancel scope's) must run before the waiters
    of its loop registered after it are woken: those then wait for it.
    """

    __slots__ = ("active", "barrier", "fired_at", "fn", "home")

    def __init__(self, fn: Callable[[], object], home: Backend, *, barrier: bool = False) -> None:
        self.fn = fn
        self.home = home
        self.barrier = barrier
        self.active = True
        #: time.monotonic() when set() claimed it to run later, on its loop (a thread
        #: or a handler set the signal); None if it ran inline, inside set()
        self.fired_at: float | None = None

    def run(self) -> None:
        if self.active:
            try:
                self.fn()
            except Exception:  # never stop set() from waking the others
                logger.exception("stopscope: %r raised while a signal was being set", self.fn)


# Python runs signal handlers only in the main thread, between two bytecodes of whatever
# it was doing: the event loop's own bookkeeping included.  The work that touches loop
# state (a LoopCall: arming timers, cancelling, logging) must not run inside a set()
# made by a handler; it goes to the loop through a call that is safe from a handler.
# Python has no "am I in a signal handler?", but a handler is a plain function called
# by the interpreter: a set() whose caller (past this package's own frames) is a
# coroutine's frame is not in one.  On any other thread nothing is.
_main_ident = threading.main_thread().ident


def _note_main_thread() -> None:  # pragma: no cover - runs in a forked child
    global _main_ident
    _main_ident = threading.main_thread().ident


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_note_main_thread)

_get_ident: Final = threading.get_ident
_getframe: Final = sys._getframe
#: this package's directory: its frames are skipped when looking for the caller
_PACKAGE_DIR: Final = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_ASYNC_CODE: Final = inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR
#: how many of this package's frames to look through at most
_FRAMES_LOOKED_AT: Final = 12


#: > 0 while code known to be ordinary (not a signal handler) sets a signal from a
#: plain function: the testing kit's stop, from trio's instruments or asyncio's step
_vouched = 0


@contextmanager
def not_a_signal_handler() -> Iterator[None]:
    """Vouch that the ``set()`` calls inside run in ordinary code of the loop's thread
    (a plain function called by the loop, such as an instrument hook), so that their
    loop calls run in place, as from a task."""
    global _vouched
    _vouched += 1
    try:
        yield
    finally:
        _vouched -= 1


def may_be_in_signal_handler(ours: int = 0) -> bool:
    """Whether the caller might be a Python signal handler (or run inside one).

    ``False`` on a thread other than the main one, and when the nearest frame outside
    this package is a coroutine's or an async generator's (a task, in ordinary code):
    a handler is a plain function, which the interpreter calls between two bytecodes.
    A plain function that calls ``set()`` from ordinary code counts as a possible
    handler: its loop calls then run on the loop a moment later, which is always safe.

    :param ours: how many frames above the caller are known to be this package's
        (they are skipped unread: reading a frame costs about 0.2 µs)
    """
    if _get_ident() != _main_ident or _vouched:
        return False
    try:
        frame: FrameType | None = _getframe(2 + ours)
    except ValueError:  # the stack is not that deep: no caller outside the package
        return True
    for _ in range(_FRAMES_LOOKED_AT):
        if frame is None:
            return True
        code = frame.f_code
        if code.co_flags & _ASYNC_CODE:
            return False
        if not code.co_filename.startswith(_PACKAGE_DIR):
            return True
        frame = frame.f_back
    return True


def in_cancelled_scope() -> bool:
    """Whether the current task is inside a cancel scope that has been cancelled."""
    deadline = anyio.current_effective_deadline()
    return deadline == -math.inf or deadline <= anyio.current_time()


class TimerHeap:
    """Deadlines of timed waits on one loop, with lazy deletion of ended waits."""

    __slots__ = ("compacting", "heap", "incoming", "next_deadline", "seq", "stale")

    def __init__(self) -> None:
        self.heap: list[Entry] = []
        self.seq = 0
        self.stale = 0
        self.next_deadline = math.inf
        #: a compaction is under way (a signal handler may have interrupted it)
        self.compacting = False
        #: entries pushed while a compaction was under way: it adds them when done
        self.incoming: list[Entry] = []

    def push(self, deadline: float, signal: Any, waiter: Any) -> tuple[Entry, bool]:
        """Add a deadline; also say whether it is now the earliest."""
        if self.stale > 256 and self.stale * 2 > len(self.heap) and not self.compacting:
            self._compact()
        self.seq += 1
        entry = [deadline, self.seq, signal, waiter]
        if self.compacting:
            # Nothing of ours pushes from a signal handler (loop calls run on the
            # loop), but should anything do it while a compaction is rebuilding the
            # heap, the compaction would drop the entry: it adds it when done.
            self.incoming.append(entry)
        else:
            heapq.heappush(self.heap, entry)
        if deadline < self.next_deadline:
            self.next_deadline = deadline
            return entry, True
        return entry, False

    def _compact(self) -> None:
        """Drop the ended entries (more than half of the heap)."""
        self.compacting = True
        try:
            heap = [entry for entry in self.heap if entry[2] is not None]
            heapq.heapify(heap)
            self.heap = heap
            self.stale = 0
        finally:
            self.compacting = False
        self._take_incoming()

    def _take_incoming(self) -> None:
        incoming = self.incoming
        while incoming:  # list.pop() and heappush() are single C calls
            heapq.heappush(self.heap, incoming.pop())

    def add(self, deadline: float, signal: Any, waiter: Any) -> Entry:
        """Add a timed wait (a backend's service also arms its loop for it)."""
        raise NotImplementedError

    def call_at(self, deadline: float, fn: Callable[[], object]) -> Entry:
        """Run ``fn()`` on the loop at ``deadline`` (its clock); :meth:`cancel` undoes it."""
        return self.add(deadline, CALL, fn)

    def entries(self) -> list[Entry]:
        """Every entry still held, ended ones included (for tests and debugging)."""
        return list(self.heap)

    def cancel(self, entry: Entry) -> None:
        """End a wait or a scheduled call early (its entry is deleted lazily)."""
        if entry[2] is not None:
            entry[2] = entry[3] = None
            self.stale += 1

    def expired(self, now: float) -> list[Any]:
        """Pop the deadlines up to ``now``; run due calls; return the waiters claimed."""
        heap = self.heap
        claimed: list[Any] = []
        calls: list[Callable[[], object]] = []
        claim = ops.claim_expired
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            sig, waiter = entry[2], entry[3]
            if sig is None:
                self.stale -= 1
                continue
            entry[2] = entry[3] = None
            if sig is CALL:
                calls.append(waiter)
                continue
            if claim(sig, waiter):
                claimed.append(waiter)
        self.next_deadline = heap[0][0] if heap else math.inf
        run_calls(calls)
        return claimed


def run_calls(calls: list[Callable[[], object]]) -> None:
    """Run the timer calls that fell due, after the claims; one that raises is logged."""
    for call in calls:
        try:
            call()
        except Exception:
            logger.exception("stopscope timer call %r raised", call)


#: for each kind of hook a backend parks on a signal (an asyncio Future, a trio
#: waiter, a LoopCall): how to find its backend.  Filled in by the backend modules.
HOMES: dict[type, Callable[[Any], Backend]] = {LoopCall: lambda call: call.home}
#: for the kinds that allow it: wake one hook in place if a task of its loop is the
#: one running (``True``), else do nothing (``False``).  set()'s lone-waiter fast path.
WAKE_INLINE: dict[type, Callable[[Any], bool]] = {}


def home_of(hook: Any) -> Backend:
    """The backend a parked hook belongs to."""
    find = HOMES.get(type(hook))
    if find is None:  # a subclass (another loop's Future class)
        for kind, find in HOMES.items():  # noqa: B007
            if isinstance(hook, kind):
                break
        else:
            raise TypeError(f"stopscope: no backend parks {hook!r}")
    return find(hook)
