"""The trio backend: one :class:`TrioBackend` per run (a ``RunVar``).

Imported only once trio is running, so it imports trio at module level.

How it works on trio, in brief:

* A waiting task parks in ``wait_task_rescheduled`` with a :class:`TrioWaiter` as the
  signal's hook.  ``set()`` reschedules it directly only from another task of the
  same run; from anywhere else (another thread, a run callback, a signal handler that
  interrupted the waiter itself between registering and parking) the wake goes
  through ``TrioToken.run_sync_soon``, which runs once the waiter has parked.  Every
  wake and abort runs on the run's own thread, so a plain flag (``aborted``) settles a
  wake racing a cancellation.
* Timed waits share one heap of deadlines per run, watched by one system task that
  sleeps in a cancel scope whose deadline is the earliest: a cancel scope per timed
  wait costs several times the wait itself at large fan-out.
* "Was this task cancelled?" reads the task's cancel status (private, so checked
  once and replaced by the public ``current_effective_deadline()`` if trio changes).
* A task already rescheduled (woken by the stop) sees a cancellation only at its next
  checkpoint, so a member that returns before one caught nothing.  When a scope
  cancels its group, the backend notes each member task's cancel-point count and
  whether it was blocked (:meth:`TrioBackend.cancel_marks`), from the group's nursery.
* A TaskScope's members run in a bare trio nursery (:class:`NurseryGroup`), not in
  anyio's task group, which since anyio 4.14 wraps every task in a ``TaskHandle`` (a
  cancel scope, an event and a wrapper coroutine): TaskScope collects its members'
  outcomes itself and needs none of it.  Every anyio semantic members rely on is
  trio's own underneath, so it holds in a plain nursery: anyio's cancel scopes on
  trio are trio cancel scopes (outer scopes reach members, scopes nested in members
  work, shields hold), ``task_status`` is trio's, and ``anyio.get_current_task()``,
  ``anyio.to_thread`` and ``anyio.from_thread`` read trio's current task and token.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Iterable
from contextlib import suppress
from types import TracebackType
from typing import Any, Final

import trio
from outcome import Value

from ._base import (
    CALL,
    DEFERRED,
    HOMES,
    NOT_REACHED,
    REACHED,
    WAKE_INLINE,
    Entry,
    LoopCall,
    TimerHeap,
    in_cancelled_scope,
    may_be_in_signal_handler,
    ops,
)

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

#: the frames between wake_own() and the code that set the signal that are always this
#: package's: _signal._fire(), and set() or the drain that called it
_FIRE_FRAMES: Final = 2

__all__ = ["NurseryGroup", "TrioBackend", "current", "running"]

_current_task: Final = trio.lowlevel.current_task
_reschedule: Final = trio.lowlevel.reschedule
_wait_task_rescheduled: Final = trio.lowlevel.wait_task_rescheduled
_Abort: Final = trio.lowlevel.Abort


class TrioWaiter:
    """A trio task parked in ``wait_task_rescheduled`` on a signal."""

    __slots__ = ("aborted", "home", "signal", "task")

    def __init__(self, signal: Any, task: trio.lowlevel.Task, home: TrioBackend) -> None:
        self.signal = signal
        self.task = task
        self.home = home
        #: the task was cancelled before its wake: whoever claimed it must not wake it
        self.aborted = False

    def abort(self, _: object) -> trio.lowlevel.Abort:
        # trio calls this only while the task is still parked (reschedule() clears
        # the task's abort function), so a waiter that set() or a timer has claimed
        # has not been woken yet: the cancellation wins, as it does on asyncio (the
        # future's result is set, then task.cancel() wins).  The claimer skips it.
        ops.remove_hook(self.signal, self)
        self.aborted = True
        return _Abort.SUCCEEDED


class TrioTimers(TimerHeap):
    """The timer service of one run: a heap of deadlines and one system task."""

    __slots__ = ("scope",)

    def __init__(self) -> None:
        super().__init__()
        self.scope: trio.CancelScope | None = None

    def add(self, deadline: float, signal: Any, waiter: Any) -> Entry:
        entry, earliest = self.push(deadline, signal, waiter)
        if earliest and self.scope is not None:
            self.scope.deadline = deadline
        return entry

    async def run(self) -> None:
        while True:
            with trio.CancelScope(deadline=self.next_deadline) as scope:
                self.scope = scope
                await trio.sleep_forever()
            self.scope = None
            for waiter in self.expired(trio.current_time()):
                if not waiter.aborted:
                    _reschedule(waiter.task, Value(False))


def _wakeable(waiter: TrioWaiter) -> bool:
    """Whether a task of the run may reschedule ``waiter`` in place.

    Not while its task is effectively cancelled: trio may be in the middle of
    delivering that cancellation (it read the task's abort function and is about to
    call it), and a signal handler that interrupted it must not reschedule the task
    under its feet.  Such a waiter is about to be aborted anyway.
    """
    try:
        return not waiter.task._cancel_status.effectively_cancelled
    except AttributeError:  # pragma: no cover - a future trio without it
        return True


def _wake(items: list[Any]) -> None:
    for item in items:
        if type(item) is LoopCall:
            item.run()
        elif not item.aborted:
            _reschedule(item.task, Value(True))


class TrioBackend:
    """The backend of one trio run."""

    __slots__ = ("_timers", "clock", "hop", "token")

    name: Final = "trio"
    cancelled_exc: Final = trio.Cancelled

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self.token = token
        self.clock: Callable[[], float] = trio.current_time
        self.hop: Callable[[Callable[[], object]], object] = token.run_sync_soon
        self._timers: TrioTimers | None = None

    def __repr__(self) -> str:
        return f"<stopscope trio backend of {self.token!r}>"

    @property
    def timers(self) -> TrioTimers:
        """The run's timer service, started (a system task) on first use."""
        timers = self._timers
        if timers is None:
            timers = self._timers = TrioTimers()
            trio.lowlevel.spawn_system_task(timers.run, name="stopscope timer service")
        return timers

    # -- parking and waking ---------------------------------------------------

    checkpoint: Final = staticmethod(trio.lowlevel.checkpoint)

    def park(self, signal: Any) -> Any:
        waiter = TrioWaiter(signal, _current_task(), self)
        if not ops.add_hook(signal, waiter):
            return None
        return _wait_task_rescheduled(waiter.abort)

    def unpark(self, signal: Any, parked: Any) -> None:
        pass  # a cancelled waiter's abort function removed its hook

    def park_until(self, signal: Any, deadline: float) -> tuple[Any, Entry] | None:
        waiter = TrioWaiter(signal, _current_task(), self)
        if not ops.add_hook(signal, waiter):
            return None
        entry = self.timers.add(deadline, signal, waiter)
        return _wait_task_rescheduled(waiter.abort), entry

    def unpark_timed(self, signal: Any, parked: Any, entry: Entry) -> None:
        if entry[2] is not None:  # the wait ended before its deadline
            entry[2] = entry[3] = None
            self.timers.stale += 1
        # a cancelled waiter's abort function removed its hook

    def wake_own(self, items: Iterable[Any]) -> list[Any]:
        """From a task of this run: wake this run's items in place, in order; return
        the others (other loops' waiters and calls).

        On the main thread this may be a signal handler: the loop calls (they touch
        the run's state) are handed to the run through ``run_sync_soon`` instead, and
        so are the waiters after a barrier call among them, so that the order holds.
        """
        rest: list[Any] = []
        later: list[Any] | None = None  # handed to the run, in order
        barrier = False
        me = _current_task()
        for item in items:
            kind = type(item)
            if kind is TrioWaiter:
                if item.home is self:
                    # the calling task's own waiter is not parked yet (a signal handler
                    # interrupted it between registering and parking), and a waiter
                    # whose cancellation trio may be delivering right now (a handler
                    # may have interrupted that) are woken later, from the run
                    if barrier or item.task is me or not _wakeable(item):
                        if later is None:
                            later = []
                        later.append(item)
                    elif not item.aborted:
                        _reschedule(item.task, Value(True))
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
            self.wake_soon(later)
        return rest

    def wake_soon(self, items: list[Any]) -> None:
        with suppress(trio.RunFinishedError):  # the run ended: nobody to wake
            self.token.run_sync_soon(_wake, items)

    # -- timers ------------------------------------------------------------------

    def call_at(self, deadline: float, fn: Callable[[], object]) -> Entry:
        return self.timers.add(deadline, CALL, fn)

    def cancel_call(self, entry: Entry) -> None:
        self.timers.cancel(entry)

    # -- task groups and cancellation --------------------------------------------

    def cancel_probe(self) -> Callable[[], bool]:
        current_task = _current_task
        try:
            current_task()._cancel_status.effectively_cancelled  # noqa: B018
        except AttributeError:  # pragma: no cover - a future trio without it
            return in_cancelled_scope

        def trio_probe() -> bool:
            return bool(current_task()._cancel_status.effectively_cancelled)

        return trio_probe

    def create_task_group(self) -> NurseryGroup:
        return NurseryGroup()

    def group_entered(self, group: Any) -> Any:
        """The group's nursery (cancel_marks reads its member tasks)."""
        return group.nursery

    def current_task(self) -> Any:
        return _current_task()

    def cancel_marks(
        self, entered: Any, task: Any = None
    ) -> dict[Any, tuple[int, bool, bool]] | None:
        """Each member task's cancel-point count, and whether it is blocked (so it gets
        the Cancelled at once).  Private attributes, read defensively: without them
        every late return is reported as before."""
        if entered is None:
            return None
        try:
            return {
                each: (each._cancel_points, each._abort_func is not None, False)
                for each in (entered.child_tasks if task is None else (task,))
            }
        except AttributeError:  # pragma: no cover - a trio without these attributes
            return None

    def cancel_shields(
        self, entered: Any, marks: dict[Any, tuple[int, bool, bool]] | None, task: Any = None
    ) -> dict[Any, tuple[int, bool, bool]] | None:
        """After the cancel: a task the cancellation does not reach now is shielded."""
        if marks is None:
            return None
        try:
            for each, (points, blocked, _) in marks.items():
                if not each._cancel_status.effectively_cancelled:
                    marks[each] = (points, blocked, True)
        except AttributeError:  # pragma: no cover - a trio without these attributes
            pass
        return marks

    def cancel_reached(self, marks: Any, probe: Callable[[], bool]) -> int:
        if marks is None:
            return REACHED if probe() else NOT_REACHED
        task = _current_task()
        then = marks.get(task)
        if then is None:  # started after the cancel: it was born cancelled
            return REACHED
        points, blocked, shielded = then
        if shielded:
            return DEFERRED
        return REACHED if blocked or task._cancel_points != points else NOT_REACHED

    def open_signal_wakeup(self) -> Callable[[], None] | None:
        return None  # trio wakes itself on signals


class NurseryGroup:
    """A bare trio nursery with the task-group surface TaskScope uses.

    What it adds to the nursery is the exit mapping anyio's group does: a nursery
    that raises nothing but ``trio.Cancelled`` comes out as one bare ``Cancelled``, so
    that an enclosing cancel scope sees the cancellation it issued, not a group.
    """

    __slots__ = ("_manager", "cancel_scope", "nursery", "start_soon")

    def __init__(self) -> None:
        self._manager = trio.open_nursery(strict_exception_groups=True)

    async def __aenter__(self) -> NurseryGroup:
        nursery = await self._manager.__aenter__()
        self.nursery: trio.Nursery = nursery
        self.cancel_scope: trio.CancelScope = nursery.cancel_scope
        # the nursery's own method: no wrapper on the spawn path
        self.start_soon: Callable[..., None] = nursery.start_soon
        return self

    async def start(
        self, func: Callable[..., Awaitable[Any]], *args: Any, name: object = None
    ) -> Any:
        return await self.nursery.start(func, *args, name=name)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        bare: BaseException | None = None
        try:
            try:
                return bool(await self._manager.__aexit__(exc_type, exc, tb))
            except BaseExceptionGroup as group:
                bare = _only_cancelled(group)
                if bare is None:
                    raise
            # raised outside the except block, so the group (which holds it) does not
            # become its context: no reference cycle keeps either alive
            raise bare
        finally:
            del exc, tb, bare


def _only_cancelled(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The first ``Cancelled`` of a group that holds nothing else, else None."""
    cancels, rest = group.split(trio.Cancelled)
    if rest is not None or cancels is None:
        return None
    first: BaseException = cancels
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


_var: Final[trio.lowlevel.RunVar[TrioBackend]] = trio.lowlevel.RunVar("stopscope_backend")


get: Final = _var.get


def make() -> TrioBackend:
    """The backend of the trio run on this thread, made now (``get()`` had none)."""
    backend = TrioBackend(trio.lowlevel.current_trio_token())
    _var.set(backend)
    return backend


def current() -> TrioBackend:
    """The backend of the trio run on this thread (made on first use)."""
    try:
        return get()
    except LookupError:
        return make()


def running() -> TrioBackend | None:
    """The backend of the run whose task is running on this thread, else None."""
    try:
        _current_task()
    except RuntimeError:
        return None
    return current()


def _wake_inline(waiter: TrioWaiter) -> bool:
    try:
        me = _current_task()  # a task of a run on this thread, not a run callback
        here = get()
    except (RuntimeError, LookupError):
        return False
    if here is not waiter.home or waiter.task is me or not _wakeable(waiter):
        return False  # another run's waiter, not parked yet, or being cancelled (wake_own)
    if not waiter.aborted:
        _reschedule(waiter.task, Value(True))
    return True


HOMES[TrioWaiter] = lambda waiter: waiter.home
WAKE_INLINE[TrioWaiter] = _wake_inline
