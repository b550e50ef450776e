"""Probe one worker's stop, and explore every scheduling point at which a stop can land."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import math
import os
import random
import re
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence, Sized
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any, Final, Literal, final

import anyio

from .._backends._base import not_a_signal_handler
from .._report import Outcome, ShutdownReport, StopReason, TaskRecord
from .._scope import TaskScope
from .._signal import StopSignal, _backend, _to_seconds
from ._cancel import cut_cleanup, cut_cleanup_failure
from ._clock import (
    ThreadGuard,
    next_deadline,
    running_virtual,
    set_turn_hook,
    wait_loop_idle,
)
from ._leaks import LeakWatch
from ._sites import Site, plan_by_site, site_of

if TYPE_CHECKING:
    import trio

if sys.version_info >= (3, 11):
    from builtins import BaseExceptionGroup
    from typing import TypeVarTuple, Unpack
else:  # anyio depends on both backports on 3.10
    from exceptiongroup import BaseExceptionGroup, ExceptionGroup
    from typing_extensions import TypeVarTuple, Unpack

__all__ = [
    "Exploration",
    "ProbeResult",
    "Scenario",
    "StopKit",
    "StopRequirementError",
    "explore",
    "probe",
]

PosArgsT = TypeVarTuple("PosArgsT")

#: the scheduling points :func:`explore` tries when not told otherwise (0 to this)
DEFAULT_MAX_POINTS: Final = 200
#: seconds without a scheduling point after which a worker that has not reached the
#: point of its run is taken to wait for ever (it has no more points): on a virtual
#: clock, and on a real one
DEFAULT_IDLE_REAL: Final = 1.0
#: the scheduling points a run may go through past its stop point (or from its start,
#: when it has none) before the kit takes the worker for a busy loop and ends the run
DEFAULT_HANG_POINTS: Final = 10_000
#: real seconds the loop may stay busy (a task ready to run while the worker takes no
#: step of its own), or a thread may hold virtual time still, before the kit takes it
#: for a hang, unless *idle* says otherwise: long, because a child that computes for a
#: while, two tasks that exchange many messages or a slow thread call are no hang, and
#: a kit that fails a sound test is worse than a slow end to one that hangs
DEFAULT_BUSY_REAL: Final = 10.0

#: how a run ends the worker: ask it to stop (its signal, the grace, then a cancel), or
#: cancel it outright, as an enclosing cancel scope does (anyio's and trio's way)
Mode = Literal["stop", "cancel"]

_Stack = list[tuple[FrameType, int]]


class StopRequirementError(AssertionError):
    """A worker did not stop the way the test requires; the message says how and where.

    Its ``summary`` says it in one short line, which the pytest plugin shows in the
    test summary (``FAILED test_x.py::test_y - consume at point 7 (worker.py:41):
    invariant Broker.nothing_lost failed``) instead of the class's dotted name.
    """

    def __init__(self, message: str, summary: str | None = None) -> None:
        super().__init__(message)
        #: the failure in one short line: the worker, the point, the line, what failed
        self.summary: str = summary if summary is not None else message.partition("\n")[0]


# ------------------------------------------------------------------------ scenario


@final
class Scenario:
    """One worker to run, with its arguments and the invariants to check afterwards.

    ::

        def scenario() -> Scenario:
            queue = FakeQueue(["a", "b", "c"])
            return Scenario(consume, queue, invariants=[queue.nothing_lost])

    The worker is called as ``worker(signal, *args)``, with the :class:`StopSignal`
    it must watch.  Each invariant is called once the run is over (plain or async,
    no arguments); it fails by raising (``assert`` is fine) or by returning ``False``.

    :param worker: an async function taking the stop signal first
    :param args: the worker's other arguments
    :param invariants: checks that must hold after every run
    :param name: the worker's name in reports (default: its qualified name)
    :param allow_leaks: tasks and threads the worker may leave running when it exits
        (a run fails if it leaves any other): patterns (``fnmatch``) of their names or
        of the ``file.py:N`` where they were started; ``["*"]`` allows every leak
    """

    __slots__ = ("allow_leaks", "args", "invariants", "name", "worker")

    def __init__(
        self,
        worker: Callable[[StopSignal, Unpack[PosArgsT]], Awaitable[object]],
        *args: Unpack[PosArgsT],
        invariants: Iterable[Callable[[], object]] = (),
        name: str | None = None,
        allow_leaks: Iterable[str] = (),
    ) -> None:
        if inspect.iscoroutine(worker) or not callable(worker):
            raise TypeError(
                f"`worker` must be an async function taking the stop signal first "
                f"(pass `fn, arg`, not `fn(arg)`), got {worker!r}"
            )
        self.worker: Callable[..., Awaitable[object]] = worker
        self.args: tuple[Any, ...] = tuple(args)
        self.invariants: tuple[Callable[[], object], ...] = tuple(invariants)
        for check in self.invariants:
            if not callable(check):
                raise TypeError(f"each invariant must be callable, got {check!r}")
        self.name = name if name is not None else _callable_name(worker)
        if isinstance(allow_leaks, str):
            raise TypeError(f"`allow_leaks` must be a list of patterns, got {allow_leaks!r}")
        self.allow_leaks: tuple[str, ...] = tuple(allow_leaks)
        for pattern in self.allow_leaks:
            if not isinstance(pattern, str):
                raise TypeError(f"each `allow_leaks` pattern must be a str, got {pattern!r}")

    def __repr__(self) -> str:
        return f"<Scenario {self.name} args={self.args!r}>"


def _callable_name(func: object) -> str:
    while hasattr(func, "func") and not hasattr(func, "__qualname__"):  # partials
        func = func.func
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    if not isinstance(name, str):
        return repr(func)
    return name.rpartition("<locals>.")[2]  # a local function: its own name reads best


# -------------------------------------------------------------------------- stacks


#: libraries whose frames are not the user's, when they are imported (they may be
#: imported after the kit's first use: trio by a later test, looptime by virtual time)
_OPTIONAL_LIBRARIES: Final = ("trio", "outcome", "sniffio", "exceptiongroup", "looptime")


def _library_dirs() -> tuple[str, ...]:
    import stopscope

    dirs = {os.path.dirname(m.__file__ or "") for m in (anyio, asyncio, stopscope)}
    for name in _OPTIONAL_LIBRARIES:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None):
            dirs.add(os.path.dirname(module.__file__ or ""))
    return tuple(sorted(d + os.sep for d in dirs if d))


#: which of the optional libraries were imported, and the library dirs for that
_library_cache: tuple[tuple[bool, ...], tuple[str, ...]] | None = None
_STDLIB_FILES: Final = {contextlib.__file__}


def _is_library(filename: str) -> bool:
    global _library_cache
    modules = sys.modules
    imported = tuple(name in modules for name in _OPTIONAL_LIBRARIES)
    cache = _library_cache
    if cache is None or cache[0] != imported:
        cache = _library_cache = (imported, _library_dirs())
    return filename in _STDLIB_FILES or filename.startswith(cache[1])


def _capture(coro: object) -> _Stack:
    """The frames (and their current lines) of a suspended coroutine chain, outermost first."""
    stack: _Stack = []
    obj: Any = coro
    while obj is not None:
        frame = getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None)
        frame = frame or getattr(obj, "ag_frame", None)
        if frame is not None:
            stack.append((frame, frame.f_lineno))
        nxt = getattr(obj, "cr_await", None)
        if nxt is None:
            nxt = getattr(obj, "gi_yieldfrom", None) or getattr(obj, "ag_await", None)
        obj = nxt
    return stack


def _summary(stack: _Stack) -> traceback.StackSummary:
    return traceback.StackSummary.extract(iter(stack), limit=None, lookup_lines=True)


def _where(stack: _Stack) -> str:
    """The worker's own line, and the innermost line of user code under it if another:
    "`line` (file:N, in fn) -> `line` (file:N, in fn)"."""
    summary = _summary(stack)
    if not len(summary):
        return "before its first step"
    user = [f for f in summary if not _is_library(f.filename)] or [summary[-1]]
    outer, inner = summary[0], user[-1]

    def show(frame: traceback.FrameSummary) -> str:
        code = (frame.line or "").strip() or "?"
        return f"`{code}` ({os.path.basename(frame.filename)}:{frame.lineno}, in {frame.name})"

    if inner is outer or _is_library(outer.filename):
        return show(inner)
    return f"{show(outer)} -> {show(inner)}"


def _format(stack: _Stack) -> str:
    """The worker's frames, down to the first library frame it awaits."""
    summary = _summary(stack)
    last_user = max((i for i, f in enumerate(summary) if not _is_library(f.filename)), default=None)
    if last_user is not None:
        summary = traceback.StackSummary.from_list(list(summary)[: last_user + 2])
    return "".join(summary.format()).rstrip()


# -------------------------------------------------------------------------- tracer


class _Abandoned(Exception):
    """Raised out of the driver when the kit gives up on a worker that keeps running."""


#: coroutines that refused to close (they caught GeneratorExit and awaited again): kept,
#: so that the garbage collector does not close them a second time, noisily
_kept: list[Any] = []


class _Tracer:
    """Counts the worker's scheduling points and lands the stop after the k-th one.

    A scheduling point is a suspension of the worker's task: every await that yields
    to the loop.  On asyncio (and uvloop) a driver around the worker's coroutine sees
    each yield; on trio an instrument sees each step of the worker's task.

    In hard-cancel mode (*scope* ``None``) the stop is a cancellation of the worker: a
    cancel scope of the kit's around it, cancelled where a graceful run requests the
    stop.  The driver then counts on trio too, sees each cancellation thrown into the
    worker, and closes a worker that runs on after it (:meth:`giving_up`).
    """

    __slots__ = (
        "abandoned",
        "busy_coro",
        "busy_note",
        "busy_points",
        "busy_real",
        "busy_since",
        "busy_stop",
        "busy_turns",
        "busy_wake",
        "coro",
        "delivered",
        "escape",
        "exit_time",
        "exited",
        "gave_up",
        "grace",
        "hang_at",
        "hang_points",
        "hang_stop",
        "hard",
        "hung",
        "last",
        "last_at",
        "leak_watch",
        "mode",
        "now",
        "points",
        "raised",
        "returned",
        "scope",
        "sites",
        "still_at",
        "stop_points",
        "stop_stack",
        "stop_time",
        "stuck_stack",
        "target",
        "task",
        "unreached",
        "wake",
    )

    def __init__(
        self,
        scope: TaskScope | None,
        target: int | None,
        grace: float | None,
        now: Callable[[], float],
    ) -> None:
        self.scope = scope
        self.mode: Mode = "stop" if scope is not None else "cancel"
        self.target = target
        self.grace = grace
        self.now = now
        self.coro: Any = None
        self.task: object = None  # the worker's trio task (graceful mode)
        self.points = 0
        self.stop_points: int | None = None
        self.last: _Stack = []
        self.last_at = now()  # when the worker last suspended (or the run started)
        self.stop_time: float | None = None
        self.stop_stack: _Stack | None = None
        self.stuck_stack: _Stack | None = None
        self.exit_time: float | None = None
        self.exited = False
        self.returned = False
        self.raised: BaseException | None = None
        self.unreached = False  # the worker waited for ever before the target point
        self.wake = StopSignal()  # the probe's body waits on it: stop landed, or exit
        # the hang guard: at point hang_at the worker is taken for a busy loop
        self.hang_at: float = math.inf
        self.hang_points = DEFAULT_HANG_POINTS
        self.hung: tuple[str, ...] = ()  # why the kit ended the run, if it did
        self.hang_stop: int | None = None  # the point at which the hang guard stopped it
        self.escape: anyio.CancelScope | None = None  # cancels the scope from outside
        self.sites: list[Site] | None = None  # per_site's survey: the site of each point
        # virtual time only: the clock when the guard began counting; a point at a later
        # time means the worker waited (a busy loop never moves a virtual clock)
        self.still_at: float | None = None
        self.leak_watch: LeakWatch | None = None  # told which task is the worker's
        # hard-cancel mode
        self.hard: Any = None  # the kit's cancel scope around the worker
        self.delivered = 0  # cancellations thrown into the worker after the kit's cancel
        self.abandoned = False
        self.gave_up: str | None = None  # why the kit closed the worker
        # the loop guard (virtual time): turns in a row in which a task was ready to run
        # while the clock stood still and the worker went through no point of its own
        self.busy_turns = 0
        self.busy_points = 0  # the worker's points when the count began
        self.busy_real = DEFAULT_BUSY_REAL  # and the real seconds it must last, at least
        self.busy_since = 0.0  # time.monotonic() when the count began
        self.busy_coro: Any = None  # a coroutine of the busy task, for the report
        self.busy_wake: Callable[[], None] | None = None  # arms the loop guard's action
        self.busy_stop: str | None = None  # the loop guard requested the stop: when
        self.busy_note: str | None = None  # real time: why, if the run then fails

    def suspended(self) -> None:
        if self.exited:
            return
        self.points += 1
        self.last = _capture(self.coro)
        self.last_at = self.now()
        if self.sites is not None and self.stop_time is None:  # points a stop cannot reach
            self.sites.append(site_of(self.last))
        if self.points == self.target and self.stop_time is None:
            self.request_stop(f"stopscope.testing: stop at scheduling point {self.points}")
        if self.still_at is not None and self.last_at != self.still_at:
            self.still_at = self.last_at  # it waited: the guard counts afresh from here
            self.hang_at = max(self.hang_at, self.points + self.hang_points)
        if self.points >= self.hang_at:
            self.hang()

    def hang(self) -> None:
        """The hang guard: *hang_points* points went by without the run ending.  Before
        the stop, request it; after it, end the run: a graceful run cancels the scope
        from outside, since a worker that never waits keeps virtual time (and so the
        grace) from passing; a hard-cancel run closes the worker (:meth:`giving_up`)."""
        where = _where(self.last)
        if self.stop_time is None:
            how = "requested its stop" if self.mode == "stop" else "cancelled it"
            self.hung += (
                f"the worker never waited: {self.points} scheduling points went by "
                f"without an end, at {where} (a busy loop?); the kit {how} to end the run "
                f"(hang_points={self.hang_points})",
            )
            self.request_stop("stopscope.testing: the worker never waited")
            self.hang_at = self.points + self.hang_points
            self.hang_stop = self.points
            return
        self.hang_at = math.inf
        after = self.points - (self.stop_points or 0)
        if self.mode == "cancel":
            self.gave_up = (
                f"the worker kept running after the cancellation: {after} scheduling points "
                f"later it was still at {where}, so the kit closed it "
                f"(hang_points={self.hang_points})"
            )
            return
        self.hung += (
            f"the worker did not stop: {after} scheduling points after the stop request it "
            f"was still at {where}, without ever waiting (a busy loop? in virtual time its "
            f"grace cannot pass while it runs), so the kit cancelled it to end the run "
            f"(hang_points={self.hang_points})",
        )
        assert self.escape is not None  # set by the run before the worker starts
        self.escape.cancel()

    def turn(self, busy: bool) -> bool:
        """The loop guard, once per loop turn in virtual time (called by the loop):
        whether the loop has now stayed *busy* (a task ready to run) for *hang_points*
        turns, and *busy_real* real seconds at least, while the clock stood still and
        the worker went through no point of its own: a busy loop in a task it started,
        which neither its grace nor a ``fail_after`` can end.  :meth:`loop_busy` then
        ends the run."""
        if not busy:  # the loop goes idle: only then can a virtual clock move
            self.busy_turns = 0
            return False
        if self.points != self.busy_points:  # the worker took a step
            self.busy_points, self.busy_turns = self.points, 0
        if self.busy_turns == 0:
            self.busy_since = time.monotonic()
        self.busy_turns += 1
        return (
            self.busy_turns >= self.hang_points
            and not self.exited
            and self.busy_wake is not None
            and time.monotonic() - self.busy_since >= self.busy_real
        )

    def wake_watch(self, coro: Any) -> None:
        """From the loop, once :meth:`turn` said so: *coro* is the busy task's."""
        wake, self.busy_wake = self.busy_wake, None
        self.busy_coro, self.busy_turns = coro, 0
        assert wake is not None  # turn() says so only while the loop guard is armed
        wake()

    def loop_busy(self) -> bool:
        """In a task, once :meth:`turn` said so: request the stop (or cancel); the
        second time, cancel the run from outside.  Whether to watch on."""
        stack = _capture(self.busy_coro)
        busy = f"a task was busy at {_where(stack)}" if stack else "no task was (callbacks)"
        turns = f"{self.hang_points} loop turns went by with a task ready to run"
        if self.stop_time is None:
            how = "requested its stop" if self.mode == "stop" else "cancelled it"
            self.hung += (
                f"the loop never went idle: {turns} and the clock standing still while "
                f"the worker was at {_where(self.last)}, and {busy} (a busy loop in a "
                f"task the worker started?); the kit {how} to end "
                f"the run (hang_points={self.hang_points})",
            )
            self.busy_stop = f"by the hang guard, after {self.hang_points} busy loop turns"
            self.request_stop("stopscope.testing: the loop never went idle")
            return True
        self.hang_at = math.inf
        self.hung += (
            f"the loop never went idle after the "
            f"{'stop request' if self.mode == 'stop' else 'cancellation'}: {turns} and "
            f"the clock standing still, and {busy} (a busy loop? in virtual "
            f"time the grace cannot pass while it runs), so the kit cancelled the run "
            f"to end it (hang_points={self.hang_points})",
        )
        assert self.escape is not None  # set by the run before the worker starts
        self.escape.cancel()
        return False

    async def watch_loop_trio(self) -> None:
        """The loop guard's task on trio (virtual time): parked until the loop has
        stayed busy for *hang_points* turns (woken by the instrument)."""
        import trio

        task = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self.busy_wake = None
            return trio.lowlevel.Abort.SUCCEEDED

        watching = True
        while watching:
            self.busy_wake = lambda: trio.lowlevel.reschedule(task)
            await trio.lowlevel.wait_task_rescheduled(abort)
            watching = self.loop_busy()

    def watch_loop_asyncio(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop guard on asyncio (virtual time): no task waits for it (a task per
        run costs an exploration a sixth of its time); once the loop has stayed busy,
        the hook starts a task that acts (a stop needs a task to run in)."""
        handlers: set[asyncio.Task[None]] = set()

        async def act() -> None:
            if self.loop_busy():
                self.busy_wake = arm

        def arm() -> None:
            handler = loop.create_task(act())
            handlers.add(handler)  # held until done: the loop keeps weak references
            handler.add_done_callback(handlers.discard)

        self.busy_wake = arm

    def resumed(self) -> None:
        """Runs in the worker's task context, as it resumes (graceful mode)."""
        if self.stuck_stack is None and self.stop_time is not None and self.grace is not None:
            # resumed by the grace period's cancellation: where it was is where it
            # was stuck (a cancel scope of its own is no reason, hence the time test;
            # the scope dates the stop a little earlier than the kit does)
            slack = 0.01 * self.grace + 0.002
            if (
                self.now() >= self.stop_time + self.grace - slack
                and anyio.current_effective_deadline() == -math.inf
            ):
                self.stuck_stack = self.last

    def giving_up(self) -> bool:
        """Hard-cancel mode: whether the worker runs on after the cancel: for
        *hang_points* points (see :meth:`hang`), or longer than its grace (checked each
        time it resumes)."""
        if self.gave_up is not None:
            return True
        grace, stopped = self.grace, self.stop_time
        if stopped is not None and grace is not None and self.now() - stopped > grace:
            self.gave_up = (
                f"the worker kept running after the cancellation: {_ms(grace)} later it "
                f"was still at {_where(self.last)}, so the kit closed it"
            )
            return True
        return False

    def request_stop(self, reason: str) -> None:
        self.stop_time = self.now()
        self.stop_points = self.points
        self.stop_stack = self.last
        if self.scope is None:  # hard-cancel mode: the kit's scope, once the worker has one
            if self.hard is not None:
                self.hard.cancel()
        else:
            # called by the loop (trio's instrument, asyncio's task step), never by a
            # signal handler: the scope's loop work runs in place, as from a task, so
            # the stop lands at the very point explored
            with not_a_signal_handler():
                self.scope.stop(reason)
        self.wake.set()

    async def run(
        self, signal: StopSignal, worker: Callable[..., Awaitable[object]], args: tuple[Any, ...]
    ) -> None:
        coro = worker(signal, *args)
        if not inspect.iscoroutine(coro):
            self.exited = True
            self.wake.set()
            raise TypeError(
                f"the worker must be an async function; {_callable_name(worker)} returned {coro!r}"
            )
        self.coro = coro
        if self.leak_watch is not None:
            self.leak_watch.adopt_current()
        hard = self.scope is None
        scope: Any = _new_scope() if hard else contextlib.nullcontext()
        try:
            with scope:
                if hard:
                    self.hard = scope
                    if self.stop_time is not None:  # cancelled before its first step
                        scope.cancel()
                try:
                    if not hard and _backend() == "trio":
                        import trio

                        self.task = trio.lowlevel.current_task()  # the instrument counts
                        await coro
                    else:
                        await _Driven(coro, self)
                except BaseException as exc:
                    # graceful: what the worker raised, for the cut cleanup; hard-cancel:
                    # the cancellation (caught by the kit's scope, kept for the cleanup
                    # check) or the worker's error (a fact of the run, not the kit's)
                    self.raised = exc
                    raise
                self.returned = True
        except _Abandoned:
            self.raised = None
        except Exception:
            if not hard:
                raise  # the scope's report records it
        finally:
            self.exited = True
            self.exit_time = self.now()
            self.wake.set()


class _Driven:
    """Drives the worker's coroutine in its task, telling the tracer about each yield:
    on asyncio, and in hard-cancel mode on trio too.  In hard-cancel mode it also sees
    each cancellation thrown into the worker, and closes it when the kit gives up."""

    __slots__ = ("_coro", "_tracer")

    def __init__(self, coro: Any, tracer: _Tracer) -> None:
        self._coro = coro
        self._tracer = tracer

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, tracer = self._coro, self._tracer
        hard = tracer.scope is None
        cancelled = anyio.get_cancelled_exc_class()
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                if error is None:
                    yielded = coro.send(value)
                else:
                    yielded, error = coro.throw(error), None
            except StopIteration as done:
                return done.value
            tracer.suspended()
            try:
                value = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # asyncio throws the cancellation in
                value, error = None, exc
            if not hard:
                tracer.resumed()
                continue
            # trio sends its cancellation, as an outcome.Error the trap unwraps
            thrown = error if error is not None else getattr(value, "error", None)
            if tracer.stop_time is not None and isinstance(thrown, cancelled):
                tracer.delivered += _visible(tracer.hard)
            if tracer.giving_up():
                tracer.abandoned = True
                tracer.last = tracer.last or []
                try:
                    coro.close()  # its finally blocks and cancel scopes unwind
                except RuntimeError:  # it awaited again: it cannot be closed
                    _kept.append(coro)
                except Exception:  # it raised as it closed: it is closed
                    pass
                raise _Abandoned


def _visible(hard: Any) -> bool:
    """Whether the kit's cancellation reaches the worker where it is now, with no
    shield in between (a cancellation the worker gets inside a shield is its own: a
    deadline of its own, say).  Reads the backend's scope stack (private attributes,
    read defensively: without them, every cancellation counts)."""
    try:
        if _backend() == "trio":
            import trio

            status: Any = trio.lowlevel.current_task()._cancel_status
            while status._scope is not hard:  # the kit's scope is in the chain
                if status._scope.shield:
                    return False
                status = status._parent
            return True
        from anyio._backends._asyncio import _task_states

        state = _task_states.get(asyncio.current_task())  # type: ignore[arg-type]
        scope: Any = state.cancel_scope  # type: ignore[union-attr]
        while scope is not hard:  # the kit's scope is in the chain
            if scope._shield:
                return False
            scope = scope._parent_scope
    except (AttributeError, ImportError):  # pragma: no cover - other versions
        pass
    return True


def _new_scope() -> Any:
    """The kit's cancel scope in hard-cancel mode: trio's own on trio (its scope stack
    is what :func:`_visible` reads), anyio's on asyncio."""
    if _backend() == "trio":
        import trio

        return trio.CancelScope()
    return anyio.CancelScope()


class _TrioInstrument:
    """Counts the worker task's steps on trio (graceful mode), and drives the
    virtual-time thread guard."""

    def __init__(self, tracer: _Tracer, guard: ThreadGuard | None) -> None:
        import trio

        self._tracer = tracer
        self._guard = guard
        self.stepped: trio.lowlevel.Task | None = None  # the last other task that ran
        self._body = trio.lowlevel.current_task()  # the run's own task: never the busy one
        self._runq: Sized | None = None  # trio's run queue, for the loop guard
        if guard is not None:
            try:  # read directly: the public statistics cost a loop turn's worth
                from trio._core._run import GLOBAL_RUN_CONTEXT

                self._runq = GLOBAL_RUN_CONTEXT.runner.runq
            except (AttributeError, ImportError):  # pragma: no cover - other versions
                self._runq = None

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self._tracer.task:
            self._tracer.resumed()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self._tracer.task:
            self._tracer.suspended()
        elif task is not self._body:
            self.stepped = task

    def before_io_wait(self, timeout: float) -> None:
        if self._guard is None:  # real time: no loop guard
            return
        # read before the thread guard wakes its own task: that is no busy task's
        runq = self._runq
        if runq is not None:
            busy = len(runq) > 0
        else:  # pragma: no cover - other versions of trio
            import trio

            busy = timeout == 0 and trio.lowlevel.current_statistics().tasks_runnable > 0
        self._guard.before_io_wait()
        if self._tracer.turn(busy):
            self._tracer.wake_watch(getattr(self.stepped, "coro", None))


def _asyncio_turn_hook(tracer: _Tracer, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """The loop guard's hook on a ``looptime`` loop: once per turn, before it selects."""
    ready: Any = getattr(loop, "_ready", ())  # a BaseEventLoop's ready queue
    body = asyncio.current_task()  # the run's own task

    def hook() -> None:
        if not ready:  # the common turn, in short: the loop goes idle
            tracer.busy_turns = 0
            return
        if tracer.turn(True):
            # a task's step is a bound method of the task; the run's own task (it
            # polls the loop while it waits for the worker's point) is not the busy one
            tasks = (getattr(getattr(h, "_callback", None), "__self__", None) for h in ready)
            busy = (t for t in tasks if isinstance(t, asyncio.Task) and t is not body)
            tracer.wake_watch(next((t.get_coro() for t in busy), None))

    return hook


# -------------------------------------------------------------------------- results


def _count(number: int, noun: str) -> str:
    """``1 stop point``, ``2 stop points``."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


@final
@dataclass(frozen=True, slots=True, eq=False)
class ProbeResult:
    """What happened when the kit stopped one worker.

    Times are on the loop's clock (virtual under :func:`virtual_time`).
    """

    #: the worker's name
    worker: str
    #: ``"asyncio"`` or ``"trio"``
    backend: str
    #: whether the loop's clock was virtual
    virtual: bool
    #: when the stop was requested, in words ("at scheduling point 3", ...)
    moment: str
    #: the scheduling point after which the stop landed (``None``: not by point)
    point: int | None
    #: whether the stop landed at the moment asked for (``False``: the worker finished
    #: first, or never reached the point and was stopped after *idle* seconds only to
    #: end the run)
    requested: bool
    #: how the worker ended, as the scope's report says
    outcome: Outcome
    #: seconds from the stop request to the worker's exit; ``None`` if not requested
    latency: float | None
    #: what the worker raised (not counting the scope's cancellation)
    error: BaseException | None
    #: the worker was cancelled and returned normally instead of letting it propagate
    swallowed_cancellation: bool
    #: the grace period the worker had
    grace: float | None
    #: the stop latency the test requires (``None``: none given)
    within: float | None
    #: the last scheduling point the worker reached before the stop landed (or in all,
    #: if it ended first): points are numbered from 1, so this is also how many it
    #: went through (0: none)
    reached: int
    #: where the worker was when the stop landed (a formatted stack)
    stack_at_stop: str = field(repr=False)
    #: where the worker was when its grace period ran out, if it was still running
    stack_at_grace: str | None = field(repr=False)
    #: the invariants that failed, each as a message
    invariant_failures: tuple[str, ...]
    #: the worker's record in the scope's report
    record: TaskRecord = field(repr=False)
    #: the scope's report
    report: ShutdownReport = field(repr=False)
    #: the worker's line when the stop landed, in short ("`line` (file:N, in fn)")
    where_at_stop: str
    #: the worker's line when its grace period ran out, in short, if it was still running
    where_at_grace: str | None
    #: the worker never reached the point of the run: it waited *idle* seconds without
    #: a scheduling point, and was stopped only to end the run
    _waited: bool = field(default=False, repr=False)
    #: how the kit ended the worker: ``"stop"`` (its signal, the grace, then a
    #: cancellation) or ``"cancel"`` (a cancellation at once; see :func:`explore`)
    mode: Literal["stop", "cancel"] = "stop"
    #: the cleanup await a cancellation cut short, in short ("`line` (file:N, in fn)"):
    #: an unshielded await in a ``finally`` or ``except`` block the cancellation came
    #: through (the run-time ASYNC102); ``None`` if none
    cut_cleanup: str | None = None
    #: what else went wrong, found during the run (the hang guard, a cut cleanup, ...)
    _extra: tuple[str, ...] = field(default=(), repr=False)
    #: the hang guard cancelled the worker before its grace ran out
    _cut_short: bool = field(default=False, repr=False)
    #: the tasks and threads the worker left running when it exited, each in words
    #: ("the worker left a task running: 'name', started at `line` (file:N, in fn)")
    leaks: tuple[str, ...] = ()

    @property
    def needed_cancellation(self) -> bool:
        """Whether the worker did not stop by itself within its grace period."""
        return self.outcome in (Outcome.CANCELLED, Outcome.ABANDONED)

    @property
    def failures(self) -> tuple[str, ...]:
        """Each way this run misses the requirement, in words; empty if it meets it."""
        out: list[str] = []
        graceful = self.mode == "stop"  # in hard-cancel mode the cancellation is the kit's
        if graceful and self.swallowed_cancellation:
            out.append(
                f"the worker swallowed the cancellation: still at {self.where_at_grace or '?'} "
                f"after the {self.grace:g} s grace, it was cancelled and returned normally "
                f"instead of letting the cancellation propagate"
            )
        elif graceful and self.needed_cancellation and not self._cut_short:
            out.append(
                f"the worker needed cancellation: still at {self.where_at_grace or '?'} "
                f"after the {self.grace:g} s grace"
            )
        elif self.within is not None and self.latency is not None and self.latency > self.within:
            out.append(
                f"the worker took {_ms(self.latency)} to stop, more than the "
                f"{_ms(self.within)} allowed"
            )
        if self.error is not None:
            out.append(f"the worker raised {type(self.error).__name__}: {self.error}")
        out.extend(self._extra)
        out.extend(self.invariant_failures)
        out.extend(self.leaks)
        return tuple(out)

    @property
    def ok(self) -> bool:
        """Whether the run meets the requirement (see :attr:`failures`)."""
        return not self.failures

    def describe(self) -> str:
        """The run in words: how the stop was requested, what went wrong, and where."""
        clock = "virtual" if self.virtual else "real"
        asked = "stop requested" if self.mode == "stop" else "cancelled"
        lines = [f"{self.worker} on {self.backend} ({clock} time), {asked} {self.moment}:"]
        if not self.requested and not self._waited:
            ended = "finished" if self.outcome is Outcome.FINISHED else "raised"
            points = _count(self.reached, "scheduling point")
            what = "stop" if self.mode == "stop" else "cancellation"
            lines.append(f"  the worker {ended} after {points}, before any {what}")
        elif not self.requested:
            lines.append(
                f"  after its scheduling point {self.reached} the worker waited for something "
                f"only a stop could end (outcome {self.outcome.name} once stopped)"
            )
        else:
            latency = "-" if self.latency is None else _ms(self.latency)
            lines.append(f"  outcome {self.outcome.name}, stop latency {latency}")
        lines.extend(f"  - {failure}" for failure in self.failures)
        if self.requested and self.stack_at_stop:
            what = "stop" if self.mode == "stop" else "cancellation"
            lines.append(f"  when the {what} landed the worker was at {self.where_at_stop}:")
            lines.extend("  " + line for line in self.stack_at_stop.splitlines())
        elif self.requested:
            what = "stop" if self.mode == "stop" else "cancellation"
            lines.append(f"  the {what} landed before the worker's first step")
        return "\n".join(lines)

    def _check(self, failures: Sequence[str]) -> None:
        __tracebackhide__ = True  # pytest: the failure is the caller's line
        if failures:
            message = "\n".join([*failures, "", self.describe()])
            raise StopRequirementError(message, self._summary(failures[0]))

    def _summary(self, failure: str) -> str:
        """``worker at point N (file:line): what failed``, in one short line."""
        # where it was stuck after the grace; a hard-cancel run that ended at once has
        # no such place: where its cancellation landed
        where = (self.where_at_grace if self.needed_cancellation else None) or self.where_at_stop
        sites = _SITE.findall(where or "")
        at = "" if self.point is None else f" at point {self.point}"
        site = f" ({sites[-1]})" if sites else ""
        what = _HEADLINE.match(failure)
        headline = failure if what is None else what.group(1)
        return f"{self.worker}{at}{site}: {headline.removeprefix('the worker ')}"

    def assert_stopped_within(self, seconds: float) -> None:
        """Fail unless the worker exited by itself within *seconds* of the stop request."""
        __tracebackhide__ = True
        if self.needed_cancellation:
            self._check(self.failures[:1])
        if self.latency is not None and self.latency > seconds:
            took = _ms(self.latency)
            self._check([f"the worker took {took} to stop, more than the {_ms(seconds)} allowed"])

    def assert_no_cancellation(self) -> None:
        """Fail if the worker had to be cancelled (or swallowed the cancellation)."""
        __tracebackhide__ = True
        if self.needed_cancellation:
            self._check(self.failures[:1])

    def assert_no_error(self) -> None:
        """Fail if the worker raised."""
        __tracebackhide__ = True
        if self.error is not None:
            self._check([f"the worker raised {type(self.error).__name__}: {self.error}"])

    def assert_ok(self) -> None:
        """Fail with every miss: latency over ``within``, cancellation, error, invariants."""
        __tracebackhide__ = True
        self._check(self.failures)

    def __str__(self) -> str:
        return self.describe()


@final
@dataclass(frozen=True, slots=True, eq=False)
class Exploration:
    """The runs of :func:`explore`: one per scheduling point tried, in order."""

    #: the worker's name
    worker: str
    #: one result per point at which a stop landed, up to the first failure; a failing
    #: run in which the worker ran out of points (it finished, or waited for ever,
    #: before the run's point) comes last
    runs: tuple[ProbeResult, ...]
    #: the first run that missed the requirement, if any
    failure: ProbeResult | None
    #: whether the worker ran out of scheduling points before the last point planned
    exhausted: bool
    #: the highest point that could have been tried (``max_points``)
    limit: int
    #: the seed of the random mode (``None``: not sampled, every point in order or the
    #: points asked for)
    seed: int | None
    #: how to run only the failing point again
    replay: str | None
    #: site mode (``explore(per_site=K)``): the points tried per await site (and the
    #: last of each), else ``None``
    per_site: int | None = None
    #: site mode: how many distinct await sites the worker's points had
    sites: int | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def points(self) -> tuple[int, ...]:
        """The scheduling points tried, in order (0: stop before the first step)."""
        return tuple(r.point for r in self.runs if r.point is not None)

    def describe(self) -> str:
        """The exploration in words; for a failure, the failing run and how to replay it."""
        tried = self.points
        span = _count(len(tried), "stop point") + (
            f" (seed {self.seed})" if self.seed is not None else ""
        )
        if self.per_site is not None and self.sites is not None:
            span += (
                f" at {_count(self.sites, 'await site')}, the first {self.per_site} and "
                f"the last of each"
            )
        if self.exhausted:
            end = "the worker ran out of scheduling points"
        elif self.seed is not None:
            end = f"drawn from points 0-{self.limit}"
        elif tried == tuple(range(self.limit + 1)) or self.per_site is not None:
            end = f"stopped at the limit of {_count(self.limit, 'point')}"
        else:
            end = "only the points asked for"
        if self.failure is None:
            return f"{self.worker}: every stop point passed ({span}; {end})"
        before = [p for p in tried if p != self.failure.point]
        passed = ""
        if len(before) == 1:
            passed = f"; point {before[0]} passes"
        elif before:
            passed = f"; points {_ranges(before)} pass"
        if self.failure.point is not None:
            what = "stop" if self.failure.mode == "stop" else "cancellation"
            headline = (
                f"{self.worker} fails when the {what} lands at scheduling point "
                f"{self.failure.point}{passed}"
            )
        else:  # the run where it ran out of points: no stop landed at its point
            headline = f"{self.worker} fails in a run its stop point never reached{passed}"
        lines = [headline, self.failure.describe()]
        if self.replay:
            lines.append(f"replay just this run: {self.replay}")
        return "\n".join(lines)

    def assert_ok(self) -> None:
        """Fail with the first failing point, its stack, and how to replay it."""
        __tracebackhide__ = True
        if self.failure is not None:
            failure = self.failure
            raise StopRequirementError(self.describe(), failure._summary(failure.failures[0]))

    def __str__(self) -> str:
        return self.describe()


#: a ``file:N`` in :attr:`ProbeResult.where_at_stop`'s text
_SITE: Final = re.compile(r"\(([^()`]+:\d+), in ")
#: a failure's headline: up to its first ": " outside `code` (quoted code may hold one)
_HEADLINE: Final = re.compile(r"((?:[^`:]|`[^`]*`|:(?! ))*): ")


def _ranges(points: Sequence[int]) -> str:
    if not points:
        return "-"
    out: list[str] = []
    start = prev = points[0]
    for p in [*points[1:], None]:
        if p is not None and p == prev + 1:
            prev = p
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if p is not None:
            start = prev = p
    return ", ".join(out)


# ---------------------------------------------------------------------------- runs


def _check_seconds(value: float | None, name: str, allow_none: bool = True) -> float | None:
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"`{name}` must be a number of seconds, got None")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a number of seconds, got {value!r}")
    seconds = _to_seconds(value)  # an int too large for a float: as good as forever
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"`{name}` must be a non-negative number of seconds, got {value!r}")
    return seconds


#: the grace period of a run given no *within* and no *grace*, in seconds
DEFAULT_GRACE: Final = 1.0


def _default_grace(grace: float | None, within: float | None) -> float | None:
    """*grace* checked, or the kit's default: twice *within*, or :data:`DEFAULT_GRACE`
    without it; ``inf`` waits for ever (the scope's ``None``)."""
    if grace is None:
        return DEFAULT_GRACE if within is None else 2 * within
    checked = _check_seconds(grace, "grace")
    return None if checked == math.inf else checked


def _check_point(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"`{name}` must be a non-negative scheduling point, got {value!r}")
    return value


async def _invariant_failures(scenario: Scenario) -> tuple[str, ...]:
    out: list[str] = []
    for check in scenario.invariants:
        name = _callable_name(check)
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            detail = (str(exc) or type(exc).__name__).replace("\n", "\n    ")
            out.append(f"invariant {name} failed: {detail}")
        else:
            if result is False:
                out.append(f"invariant {name} failed: it returned False")
    return tuple(out)


async def _run(
    scenario: Scenario,
    *,
    at_point: int | None,
    after: float | None,
    grace: float | None,
    within: float | None,
    idle: float | None = None,
    mode: Mode = "stop",
    hang_points: int = DEFAULT_HANG_POINTS,
    allow_cut_cleanup: bool = False,
    sites: list[Site] | None = None,
) -> ProbeResult:
    """One run: the worker in a scope of the kit's, stopped at its point.  A graceful
    run (*mode* ``"stop"``) runs it in a :class:`TaskScope` and requests the scope's
    stop; a hard-cancel run (``"cancel"``) runs it in a plain task group, with a signal
    that is never set, and cancels it there instead."""
    hard = mode == "cancel"
    backend = _backend()
    virtual = running_virtual()
    if backend == "trio":
        import trio

        now: Callable[[], float] = trio.current_time
    else:
        now = asyncio.get_running_loop().time
    scope = None if hard else TaskScope(grace=grace, name="stopscope.testing")
    tracer = _Tracer(scope, at_point, grace, now)
    tracer.hang_points = hang_points
    tracer.hang_at = (at_point or 0) + hang_points
    tracer.still_at = now() if virtual else None
    tracer.sites = sites
    leaks = LeakWatch(backend, _is_library, scenario.allow_leaks)
    tracer.leak_watch = leaks
    guard = None
    if virtual:  # a thread may hold virtual time still for idle real seconds at most
        hold = DEFAULT_BUSY_REAL if idle is None else idle
        tracer.busy_real = hold
        guard = ThreadGuard(hold, lambda: tracer.points)
    instrument: _TrioInstrument | None = None
    if backend == "trio":
        # it counts the worker's steps in graceful mode (in hard-cancel mode the driver
        # does), and drives the thread guard
        instrument = _TrioInstrument(tracer, guard)
        trio.lowlevel.add_instrument(instrument)  # type: ignore[arg-type]
    elif guard is not None:
        guard.install_asyncio(asyncio.get_running_loop())
        set_turn_hook(
            asyncio.get_running_loop(), _asyncio_turn_hook(tracer, asyncio.get_running_loop())
        )
    requested_at: float | None = None
    try:
        async with anyio.create_task_group() as helpers:
            tracer.escape = helpers.cancel_scope  # the hang guard's way out
            if guard is not None and backend == "trio":
                helpers.start_soon(tracer.watch_loop_trio, name="stopscope.testing loop guard")
                helpers.start_soon(guard.run_trio, name="stopscope.testing thread guard")
            elif guard is not None:
                tracer.watch_loop_asyncio(asyncio.get_running_loop())
            try:
                async with anyio.create_task_group() if scope is None else scope as group:
                    # hard-cancel mode: a signal never set; the worker is cancelled, not asked
                    signal = StopSignal() if scope is None else scope.signal
                    leaks.start()
                    group.start_soon(
                        tracer.run, signal, scenario.worker, scenario.args, name=scenario.name
                    )
                    if at_point == 0:
                        tracer.request_stop("stopscope.testing: stop before the first step")
                    elif at_point is not None:
                        await _until_point_any(tracer, idle, guard)
                    elif after is not None:
                        await tracer.wake.sleep(after)
                        if not tracer.exited:
                            tracer.request_stop(f"stopscope.testing: stop after {after:g} s")
                    elif virtual:  # the loop guard ends a loop that never settles
                        await anyio.wait_all_tasks_blocked()
                        if not tracer.exited:
                            tracer.request_stop("stopscope.testing: stop once the worker waits")
                    else:
                        await _until_waiting(tracer, instrument, idle)
                    if tracer.stop_time is not None:
                        requested_at = time.monotonic()
            except ExceptionGroup:
                if hard:
                    raise  # the kit's TypeError for a worker that is no async function
                # graceful: the worker's error, which is in the record
            finally:
                helpers.cancel_scope.cancel()
    finally:
        leaks.stop()
        if instrument is not None:
            trio.lowlevel.remove_instrument(instrument)  # type: ignore[arg-type]
        elif guard is not None:
            set_turn_hook(asyncio.get_running_loop(), None)
            guard.uninstall_asyncio(asyncio.get_running_loop())

    stopped = tracer.stop_time is not None
    if scope is not None:
        record = scope.report.tasks[0]
        outcome, error = record.outcome, record.error
        swallowed = outcome is Outcome.CANCELLED and tracer.returned
    else:
        cancelled, error = _split(tracer.raised)
        swallowed = tracer.returned and tracer.delivered > 0
        if error is not None:
            outcome = Outcome.FAILED
        elif tracer.abandoned:
            outcome = Outcome.ABANDONED
        elif cancelled or swallowed:
            outcome = Outcome.CANCELLED
        elif stopped:
            outcome = Outcome.STOPPED  # it returned before any cancellation reached it
        else:
            outcome = Outcome.FINISHED
    requested = stopped and outcome is not Outcome.FINISHED and not tracer.unreached
    latency = None
    if requested and tracer.exit_time is not None and tracer.stop_time is not None:
        latency = max(0.0, tracer.exit_time - tracer.stop_time)
    if tracer.busy_stop is not None:
        moment = tracer.busy_stop
    elif tracer.hang_stop is not None and at_point is None:
        moment = f"by the hang guard, after {tracer.hang_stop} scheduling points"
    elif tracer.unreached:
        moment = f"at scheduling point {at_point}, which it never reached"
    elif at_point is not None:
        moment = "before its first step" if at_point == 0 else f"at scheduling point {at_point}"
    elif after is not None:
        moment = f"after {after:g} s"
    else:
        moment = "once it was waiting"
    stop_stack = tracer.stop_stack or []
    extra = list(tracer.hung)
    if tracer.gave_up is not None:
        extra.append(tracer.gave_up)
    if hard and swallowed:
        extra.append(
            f"the worker swallowed the cancellation: cancelled "
            f"{'at ' + _where(stop_stack) if stop_stack else 'before its first step'}"
            f", it returned normally instead of letting the cancellation propagate"
        )
    # a graceful run's worker error or a hard-cancel run's: only a cancellation counts
    cut = cut_cleanup(tracer.raised, _is_library)
    if cut is not None and not allow_cut_cleanup:
        extra.append(cut_cleanup_failure(cut))
    # real time: a loop that never settled is a failure only if the stop it led to
    # did not end the run as asked (a busy child deaf to it, cancelled by the grace)
    if tracer.busy_note is not None and (
        outcome is not (Outcome.CANCELLED if hard else Outcome.STOPPED) or error is not None
    ):
        extra.append(tracer.busy_note)
    stuck: _Stack | None = None
    if scope is not None:
        report = scope.report
        if outcome in (Outcome.CANCELLED, Outcome.ABANDONED):
            stuck = tracer.stuck_stack or tracer.last  # else: its last await before the exit
    else:
        record = TaskRecord(
            name=scenario.name,
            outcome=outcome,
            latency=latency,
            error=error,
            phase="cancelled-from-outside" if requested else "running",
            exited_at=time.monotonic(),
        )
        report = ShutdownReport(
            reason=StopReason.CANCELLED if stopped else None,
            requested_at=requested_at,
            tasks=(record,),
        )
        if tracer.abandoned:
            stuck = tracer.last
    return ProbeResult(
        worker=scenario.name,
        backend=backend,
        virtual=virtual,
        moment=moment,
        point=at_point if requested and tracer.busy_stop is None else None,
        requested=requested,
        outcome=outcome,
        latency=latency,
        error=error,
        swallowed_cancellation=swallowed,
        grace=grace,
        within=within,
        reached=tracer.points if tracer.stop_points is None else tracer.stop_points,
        stack_at_stop=_format(stop_stack) if stop_stack else "",
        stack_at_grace=None if stuck is None else _format(stuck),
        invariant_failures=await _invariant_failures(scenario),
        record=record,
        report=report,
        where_at_stop=_where(stop_stack),
        where_at_grace=None if stuck is None else _where(stuck),
        _waited=tracer.unreached,
        mode=mode,
        cut_cleanup=cut,
        _extra=tuple(extra),
        _cut_short=not hard and bool(tracer.hung) and tracer.hang_at == math.inf,
        leaks=await leaks.leaks(),
    )


def _split(exc: BaseException | None) -> tuple[bool, BaseException | None]:
    """Whether *exc* is (or holds) a cancellation, and the rest of it: the worker's error."""
    kind = anyio.get_cancelled_exc_class()
    if exc is None:
        return False, None
    if isinstance(exc, kind):
        return True, None
    if isinstance(exc, BaseExceptionGroup):
        match, rest = exc.split(kind)
        return match is not None, rest
    return False, exc


async def _until_waiting(
    tracer: _Tracer, instrument: _TrioInstrument | None, idle: float | None
) -> None:
    """Real time: wait until every task waits, and request the stop.  A worker that
    goes *idle* seconds (ten by default: a child that computes for a second is no
    hang) without a point of its own while the loop never settles waits on a task that
    never does (a busy loop in a task it started): the hang guard then requests the
    stop, and the run fails if that stop does not end it as asked."""
    idle = DEFAULT_BUSY_REAL if idle is None else idle
    while True:
        quiet = tracer.now() - tracer.last_at
        if quiet >= idle - _IDLE_SLACK:
            break
        with anyio.move_on_after(idle - quiet):
            await anyio.wait_all_tasks_blocked()
            if not tracer.exited:
                tracer.request_stop("stopscope.testing: stop once the worker waits")
            return
    if tracer.exited:  # it left a busy task behind: the leak check names it
        return
    if instrument is not None:
        busy = _capture(getattr(instrument.stepped, "coro", None))
    else:
        current = asyncio.current_task()
        tasks = [
            t
            for t in asyncio.all_tasks()
            if t is not current and not t.done() and getattr(t, "_fut_waiter", 0) is None
        ]
        busy = _capture(tasks[0].get_coro()) if tasks else []
    where = f"a task was busy at {_where(busy)}" if busy else "no task was (callbacks)"
    how = "requested its stop" if tracer.mode == "stop" else "cancelled it"
    # in real time the grace passes: the stop is no failure in itself, only a sign
    # that the loop never settled; the note explains a run that then fails
    tracer.busy_note = (
        f"the loop never went idle: for {idle:g} s a task was ready to run while the "
        f"worker waited at {_where(tracer.last)} without a scheduling point, and {where} "
        f"(a busy loop in a task the worker started?); the kit {how} to end the run "
        f"(idle={idle:g})"
    )
    tracer.busy_stop = f"by the hang guard, after {idle:g} s in which the loop never went idle"
    tracer.request_stop("stopscope.testing: the loop never went idle")


async def _until_point_any(tracer: _Tracer, idle: float | None, guard: ThreadGuard | None) -> None:
    """Wait until the stop has landed at its point, or the worker exited, or it waits
    for something only a stop can end.  On a real clock that is *idle* seconds without
    a scheduling point (one second by default).  On a virtual clock it is read from the
    clock: once every task waits and no thread runs, a worker with no timer pending
    (its own or anyone's, before the deadline of a scope around the run) has no more
    points; a pending timer, however far (an ``every(7200)``), is followed.  An
    explicit *idle* bounds the wait there too, and a thread that keeps virtual time
    still (*guard*) does so for *idle* real seconds (ten by default) at most in which
    the worker goes through no point: it waits for something only a stop can end."""
    if guard is None:  # real time
        await _until_point(tracer, DEFAULT_IDLE_REAL if idle is None else idle)
        return
    # a timer at or after the deadline around the run (a fail_after in the test) would
    # only fire once that deadline has cancelled the run: it is no reason to wait
    outer = anyio.current_effective_deadline()
    while not tracer.wake.is_set():
        await wait_loop_idle()
        if tracer.wake.is_set():
            return
        if guard.holding():  # virtual time stands still for it: let it finish
            await tracer.wake.sleep(_TICK)
            continue
        delay = next_deadline()
        if delay is not None and tracer.now() + delay >= outer:
            delay = None
        if idle is not None:
            left = idle - (tracer.now() - tracer.last_at)
            if left <= _IDLE_SLACK:  # a microsecond short counts (see _until_point)
                delay = None  # its last point is idle seconds ago: waits for ever
            elif delay is None or left < delay:
                delay = left
        if delay is None:
            tracer.unreached = True
            tracer.request_stop("stopscope.testing: no more scheduling points")
            return
        await tracer.wake.sleep(delay)


#: one tick of looptime's clock: the shortest virtual wait
_TICK: Final = 1e-6


#: how much of *idle* may be missing from a quiet spell that still counts as idle
_IDLE_SLACK: Final = 1e-6


async def _until_point(tracer: _Tracer, idle: float) -> None:
    """Wait until the stop has landed at its point, or the worker exited; a worker
    that goes *idle* seconds without a scheduling point (counted from its last one,
    or from the start of the run) waits for something only a stop can end: it has no
    more points, and is stopped to end the run."""
    while not tracer.wake.is_set():
        quiet = tracer.now() - tracer.last_at
        # a microsecond short counts: at 7200.48 s a wait from 3600.48 s is
        # 3599.9999999999995 s long, and a clock of whole ticks never moves the rest
        if quiet >= idle - _IDLE_SLACK:
            tracer.unreached = True
            tracer.request_stop("stopscope.testing: no more scheduling points")
            return
        await tracer.wake.sleep(idle - quiet)


def _scenario(
    worker: Callable[..., Awaitable[object]] | Scenario, args: tuple[Any, ...]
) -> Scenario:
    if isinstance(worker, Scenario):
        if args:
            raise TypeError("pass the worker's arguments to Scenario(), not after it")
        return worker
    return Scenario(worker, *args)


async def probe(
    worker: Callable[..., Awaitable[object]] | Scenario,
    *args: object,
    at_point: int | None = None,
    after: float | None = None,
    grace: float | None = None,
    within: float | None = None,
    idle: float | None = None,
    mode: Literal["stop", "cancel"] = "stop",
    hang_points: int = DEFAULT_HANG_POINTS,
    allow_cut_cleanup: bool = False,
) -> ProbeResult:
    """Run *worker* in a scope, request its stop, and say what happened.

    ::

        result = await probe(consume, queue, grace=0.05)
        result.assert_no_cancellation()

    The stop is requested once the worker waits (every task is blocked), unless
    *at_point* or *after* says otherwise (a worker that never waits needs one of
    them).  Only one of them may be given.

    :param worker: an async function called as ``worker(signal, *args)``, or a
        :class:`Scenario`
    :param at_point: request the stop right after the worker's N-th scheduling point
        (``0``: before it starts)
    :param after: request the stop after this many seconds (loop clock)
    :param grace: the scope's grace period (default: twice *within*, or one second
        without *within*, as in :func:`explore`; ``math.inf``: wait for ever)
    :param within: the stop latency :meth:`ProbeResult.assert_ok` requires
    :param idle: with *at_point*: seconds without a scheduling point (since the
        worker's last one) after which the worker is taken to wait for ever, and
        stopped (default: one second of real time; in virtual time, only once every
        task waits with no timer pending); the result then says it never reached the
        point.  Without *at_point* or *after*, in real time: how long the kit waits
        for every task to wait while the worker takes no step (a task it started
        keeps the loop busy; ten seconds by default); then the hang guard requests the
        stop, and the run fails.  In virtual time: how many real seconds a busy loop
        (after *hang_points* busy turns) or a thread may keep the clock still (ten by
        default)
    :param mode: ``"stop"`` (default) requests a graceful stop; ``"cancel"`` cancels
        the worker instead, as an enclosing cancel scope does, without setting its
        signal (see :func:`explore`)
    :param hang_points: the hang guard: a worker that goes through this many
        scheduling points past the stop point (or from its start, without one) is
        taken for a busy loop; the kit ends the run and it fails (in virtual time,
        only points at which the clock stood still count; and as many loop turns in a
        row with a task ready to run, the clock still and no point of the worker's, a
        busy task it started, end the run too)
    :param allow_cut_cleanup: do not fail a run in which a cancellation cut a cleanup
        await short (:attr:`ProbeResult.cut_cleanup` still names it)
    :raises ValueError: for a negative point or duration, both *at_point* and *after*,
        an unknown *mode* or a *hang_points* below 1
    """
    __tracebackhide__ = True  # pytest: an error in the arguments is the caller's line
    scenario = _scenario(worker, args)
    if at_point is not None:
        at_point = _check_point(at_point, "at_point")
    after = _check_seconds(after, "after")
    if at_point is not None and after is not None:
        raise ValueError("give `at_point` or `after`, not both")
    within = _check_seconds(within, "within")
    grace = _default_grace(grace, within)
    idle = _check_seconds(idle, "idle")
    return await _run(
        scenario,
        at_point=at_point,
        after=after,
        grace=grace,
        within=within,
        idle=idle,
        mode=_check_mode(mode),
        hang_points=_check_hang_points(hang_points),
        allow_cut_cleanup=allow_cut_cleanup,
    )


def _check_mode(mode: object) -> Mode:
    if mode == "stop":
        return "stop"
    if mode == "cancel":
        return "cancel"
    raise ValueError(f"`mode` must be 'stop' or 'cancel', got {mode!r}")


def _check_hang_points(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`hang_points` must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"`hang_points` must be at least 1, got {value!r}")
    return value


def _setup_of(
    setup: Callable[..., Scenario | Awaitable[Scenario] | Awaitable[object]] | Scenario,
    args: tuple[Any, ...],
) -> Callable[[], Scenario | Awaitable[Scenario]]:
    """The scenario factory :func:`explore` calls once per run: *setup* itself when it
    takes no arguments; else *setup* is the worker (it takes the stop signal)."""
    if isinstance(setup, Scenario):
        if args:
            raise TypeError("pass the worker's arguments to Scenario(), not after it")
        return lambda: setup
    if not callable(setup):
        raise TypeError(
            f"`setup` must be a function that returns a Scenario, or the worker, got {setup!r}"
        )
    if not args and _takes_no_arguments(setup):
        return setup  # type: ignore[return-value]  # a factory: checked per run
    scenario = Scenario(setup, *args)  # type: ignore[arg-type]  # checked once, here: a coroutine is refused
    return lambda: Scenario(scenario.worker, *scenario.args, name=scenario.name)


def _takes_no_arguments(func: Callable[..., object]) -> bool:
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):  # a callable without a signature: a factory
        return True
    try:
        signature.bind()
    except TypeError:
        return False
    return True


async def explore(
    setup: Callable[..., Scenario | Awaitable[Scenario] | Awaitable[object]] | Scenario,
    *args: object,
    within: float,
    grace: float | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
    points: Iterable[int] | None = None,
    sample: int | None = None,
    seed: int | None = None,
    idle: float | None = None,
    mode: Literal["stop", "cancel"] = "stop",
    hang_points: int = DEFAULT_HANG_POINTS,
    allow_cut_cleanup: bool = False,
    per_site: int | None = None,
) -> Exploration:
    """Stop the worker at every scheduling point in turn, and check each run.

    ::

        def scenario() -> Scenario:
            queue = FakeQueue(["a", "b", "c"])
            return Scenario(consume, queue, invariants=[queue.nothing_lost])

        (await explore(scenario, within=0.05)).assert_ok()

    *setup* may also be the worker itself, with its arguments after it
    (``explore(consume, queue, within=0.05)``), or a :class:`Scenario`: each run then
    reuses the same arguments, which suits a worker that keeps no state in them.

    Run N requests the stop right after the worker's N-th scheduling point (every
    await that yields to the loop; 0 is before its first step), with a fresh
    scenario from *setup*.  A run passes if the worker exits by itself within
    *within* seconds, never needs cancellation, raises nothing, and every invariant
    holds.  Exploration ends at the first failing run, when the worker runs out of
    points (it finishes, or waits for something only a stop can end, for *idle*
    seconds, before its N-th point), or after *max_points*.  The run in which it runs
    out of points is checked too: what the worker raised there, and the invariants,
    fail the exploration like any run's.

    :param setup: makes a fresh :class:`Scenario` for each run (a plain or async
        function taking no arguments); or the worker (an async function taking the
        stop signal first), or a :class:`Scenario`
    :param args: the worker's arguments, when *setup* is the worker
    :param within: the longest stop latency allowed, in seconds (loop clock)
    :param grace: the scope's grace period (default: twice *within*, as in
        :func:`probe`; ``math.inf``: wait for ever)
    :param max_points: the highest point tried
    :param points: try exactly these points (to replay one run: ``points=[7]``)
    :param sample: random mode: try this many points drawn from 0..*max_points*
    :param seed: the random mode's seed (default: a fresh one, shown in the report)
    :param idle: seconds without a scheduling point (since the worker's last one)
        after which a worker that has not reached the run's point is taken to wait for
        ever (default: one second of real time; in virtual time the clock decides: a
        worker waits for ever once every task waits with no timer pending, and a timer
        hours away is followed, so an ``every(7200)`` job is explored up to
        *max_points*)
    :param mode: ``"stop"`` (default): each run requests a graceful stop, as above.
        ``"cancel"``: each run cancels the worker at its point instead, as an
        enclosing cancel scope (``tg.cancel_scope.cancel()``) does, without setting
        its signal: for code that shuts down by plain cancellation.  The cancellation
        is then no failure; a run fails if the worker raises, swallows the
        cancellation (returns normally, or keeps running for *grace* seconds or
        *hang_points* points after it), takes more than *within* to exit, has a
        cleanup await cut short, or breaks an invariant
    :param hang_points: the hang guard: a worker that goes through this many
        scheduling points past a run's point without the run ending is taken for a
        busy loop; the kit ends the run (stop, then cancellation) and it fails.  In
        virtual time only points at which the clock stood still count (a worker that
        waits moves it), and as many busy loop turns in a row (a task ready to run,
        the clock still, no point of the worker's: a task it started spinning) end
        the run too
    :param allow_cut_cleanup: do not fail a run in which a cancellation cut a cleanup
        await short: an unshielded await in a ``finally`` or ``except`` block (flake8-async's
        ASYNC102, at run time); the report still names it
    :param per_site: site mode: a first run goes through every point and notes its
        await site (the worker's frames and lines there); then only the first
        *per_site* points of each distinct site, and its last one, are tried (a few
        runs instead of one per point; the same points every time).  The survey
        runs first: arguments shared by every run (a worker or :class:`Scenario`
        given instead of a factory) must hold no state it could use up
    :raises ValueError: for a negative duration or limit, *points* with *sample*, an
        unknown *mode*, a *hang_points* below 1, or
        *per_site* below 1 or with *points* or *sample*
    """
    __tracebackhide__ = True
    return await _explore(
        _setup_of(setup, args),
        within,
        grace,
        max_points,
        points,
        sample,
        seed,
        idle,
        None,
        mode=mode,
        hang_points=hang_points,
        allow_cut_cleanup=allow_cut_cleanup,
        per_site=per_site,
    )


async def _explore(
    setup: Callable[[], Scenario | Awaitable[Scenario]],
    within: float,
    grace: float | None,
    max_points: int,
    points: Iterable[int] | None,
    sample: int | None,
    seed: int | None,
    idle: float | None,
    replay_hint: Callable[[int], str] | None,
    *,
    mode: Mode = "stop",
    hang_points: int = DEFAULT_HANG_POINTS,
    allow_cut_cleanup: bool = False,
    per_site: int | None = None,
) -> Exploration:
    idle = _check_seconds(idle, "idle")
    mode = _check_mode(mode)
    hang_points = _check_hang_points(hang_points)
    within_s = _check_seconds(within, "within", allow_none=False)
    assert within_s is not None
    grace = _default_grace(grace, within_s)
    limit = _check_point(max_points, "max_points")
    survey: ProbeResult | None = None
    sites: list[Site] = []
    if per_site is not None:
        if points is not None or sample is not None:
            raise ValueError("give `per_site` alone, not with `points` or `sample`")
        if _check_point(per_site, "per_site") < 1:
            raise ValueError(f"`per_site` must be at least 1, got {per_site!r}")
        survey = await _run(
            await _make(setup),
            at_point=limit + 1,
            after=None,
            grace=grace,
            within=within_s,
            idle=idle,
            mode=mode,
            hang_points=hang_points,
            allow_cut_cleanup=allow_cut_cleanup,
            sites=sites,
        )
        plan = plan_by_site(sites, per_site, limit)
    elif points is not None:
        if sample is not None:
            raise ValueError("give `points` or `sample`, not both")
        plan = sorted({_check_point(p, "points") for p in points})
        if not plan:
            raise ValueError("`points` must name at least one scheduling point")
    elif sample is not None:
        count = _check_point(sample, "sample")
        if seed is None:
            seed = random.SystemRandom().randrange(2**32)
        rng = random.Random(seed)
        plan = sorted(rng.sample(range(limit + 1), min(count, limit + 1)))
    else:
        plan = list(range(limit + 1))
    runs: list[ProbeResult] = []
    failure: ProbeResult | None = None
    failed_at = 0  # the point of the failing run
    exhausted = False
    name = "worker"
    for point in plan:
        scenario = await _make(setup)
        name = scenario.name
        result = await _run(
            scenario,
            at_point=point,
            after=None,
            grace=grace,
            within=within_s,
            idle=idle,
            mode=mode,
            hang_points=hang_points,
            allow_cut_cleanup=allow_cut_cleanup,
        )
        if not result.requested:
            # the worker finished (or waited for ever) before this point: no more
            # points; but what it raised and the invariants count as in any run
            exhausted = True
            if not result.ok:
                runs.append(result)
                failure, failed_at = result, point
            break
        runs.append(result)
        if not result.ok:
            failure, failed_at = result, point
            break
    if survey is not None:
        name = survey.worker
        if failure is None and not survey.requested:
            # the worker ran out of points in the survey: that run is the last one
            exhausted = True
            if not survey.ok:
                runs.append(survey)
                failure, failed_at = survey, survey.reached + 1
    replay = None
    if failure is not None:
        replay = f"explore(..., points=[{failed_at}])"
        if replay_hint is not None:
            replay = f"{replay_hint(failed_at)} (or {replay})"
    return Exploration(
        worker=name,
        runs=tuple(runs),
        failure=failure,
        exhausted=exhausted,
        limit=limit,
        seed=seed if sample is not None else None,
        replay=replay,
        per_site=per_site,
        sites=len(set(sites[:limit])) if per_site is not None else None,
    )


async def _make(setup: Callable[[], Scenario | Awaitable[Scenario]]) -> Scenario:
    scenario = setup()
    if inspect.isawaitable(scenario):
        scenario = await scenario
    if not isinstance(scenario, Scenario):
        raise TypeError(f"`setup` must return a Scenario, got {scenario!r}")
    return scenario


def _replay_command(nodeid: str, point: int) -> str:
    """The pytest command that replays *point* of the test *nodeid* (no ``str.format``:
    a test id may hold braces)."""
    return f"pytest {_shell_quoted(nodeid)} --stopscope-point={point}"


def _shell_quoted(text: str) -> str:
    """*text* in single quotes for a POSIX shell, each quote in it closed, escaped and
    reopened: a test id holds brackets, and may hold quotes (``test_x[don't]``)."""
    return "'" + text.replace("'", "'\\''") + "'"


@final
class StopKit:
    """The ``stop_kit`` fixture: :func:`probe` and :func:`explore` for the running test.

    ::

        async def test_consumer_stops_well(stop_kit: StopKit) -> None:
            def scenario() -> Scenario:
                queue = FakeQueue(["a", "b", "c"])
                return Scenario(consume, queue, invariants=[queue.nothing_lost])
            (await stop_kit.explore(scenario, within=0.05)).assert_ok()

    A failure names the pytest command that replays only the failing point
    (``--stopscope-point=N``); with that option, :meth:`explore` runs that point alone.
    """

    __slots__ = ("_nodeid", "_point", "_seed")

    def __init__(
        self, nodeid: str | None = None, point: int | None = None, seed: int | None = None
    ) -> None:
        self._nodeid = nodeid
        self._point = point
        self._seed = seed

    async def probe(
        self,
        worker: Callable[..., Awaitable[object]] | Scenario,
        *args: object,
        at_point: int | None = None,
        after: float | None = None,
        grace: float | None = None,
        within: float | None = None,
        idle: float | None = None,
        mode: Literal["stop", "cancel"] = "stop",
        hang_points: int = DEFAULT_HANG_POINTS,
        allow_cut_cleanup: bool = False,
    ) -> ProbeResult:
        """:func:`probe`, for this test."""
        __tracebackhide__ = True
        return await probe(
            worker,
            *args,
            at_point=at_point,
            after=after,
            grace=grace,
            within=within,
            idle=idle,
            mode=mode,
            hang_points=hang_points,
            allow_cut_cleanup=allow_cut_cleanup,
        )

    async def explore(
        self,
        setup: Callable[..., Scenario | Awaitable[Scenario] | Awaitable[object]] | Scenario,
        *args: object,
        within: float,
        grace: float | None = None,
        max_points: int = DEFAULT_MAX_POINTS,
        points: Iterable[int] | None = None,
        sample: int | None = None,
        seed: int | None = None,
        idle: float | None = None,
        mode: Literal["stop", "cancel"] = "stop",
        hang_points: int = DEFAULT_HANG_POINTS,
        allow_cut_cleanup: bool = False,
        per_site: int | None = None,
    ) -> Exploration:
        """:func:`explore`, for this test (``--stopscope-point`` replays one point)."""
        if points is None and self._point is not None:
            points, sample, per_site = [self._point], None, None
        if seed is None:
            seed = self._seed
        hint = None if not self._nodeid else functools.partial(_replay_command, self._nodeid)

        __tracebackhide__ = True
        return await _explore(
            _setup_of(setup, args),
            within,
            grace,
            max_points,
            points,
            sample,
            seed,
            idle,
            hint,
            mode=mode,
            hang_points=hang_points,
            allow_cut_cleanup=allow_cut_cleanup,
            per_site=per_site,
        )
