"""TaskScope: a task group whose members are asked to stop, given grace, then cancelled."""

from __future__ import annotations

import enum
import inspect
import logging
import math
import os
import sys
import time
import traceback
import types
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Final, final

import anyio
import anyio.abc
import anyio.lowlevel

from . import _members
from ._backends import Backend, Entry, LoopCall, TaskGroup, current, in_cancelled_scope
from ._judge import (
    CANCELLED,
    GRACE,
    HARD,
    NOBODY,
    NOT_REACHED,
    OUTSIDE,
    RAISED,
    RETURNED,
    STARTER,
    TASK,
)
from ._judge import DEFERRED as _DEFERRED
from ._judge import judge as _judge
from ._report import (
    LOG_FIELD,
    MemberFacts,
    Outcome,
    ShutdownReport,
    StopReason,
    TaskRecord,
    _callable_name,
    _current_member,
    current_record,
    scope_fields,
)
from ._signal import StopSignal, _add_hook, _remove_hook, _to_seconds, logger

if sys.version_info >= (3, 11):
    from typing import Self, TypeVarTuple, Unpack
else:  # anyio depends on both backports on 3.10
    from exceptiongroup import BaseExceptionGroup, ExceptionGroup
    from typing_extensions import Self, TypeVarTuple, Unpack

if TYPE_CHECKING:
    from anyio.abc import Process

    from ._members import StrOrBytesPath

__all__ = ["TaskScope", "current_record"]

PosArgsT = TypeVarTuple("PosArgsT")

#: seconds after cancellation before a member still running is reported (then doubling)
AFTER_CANCEL_REPORT_DELAY: float = 1.0

#: Who listens to stops (``stopscope.otel``), or None.  A scope reads it only on the
#: stop's slow paths (escalation, a laggard, a member cut, the end of a stopped scope),
#: so nobody listening costs one global load there and nothing per member.  A listener
#: has ``event(scope, record, name, attributes)`` (``record`` None: the scope's own)
#: and ``finished(scope)``, called as a stopped scope exits; both run on the loop and
#: must be quick and never raise.  ``run()`` calls its ``at_exit()`` once ``main`` is
#: done, off the loop, so that the telemetry leaves before the process does.
_observer: Any = None


def _check_grace(value: float | None, none_means: str = "to wait forever") -> float | None:
    """Validate a ``grace`` argument; ``inf`` becomes ``None``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`grace` must be a number of seconds or None, got {value!r}")
    value = _to_seconds(value)  # an int too large for a float: as good as forever
    if math.isnan(value) or value < 0:
        raise ValueError(
            f"`grace` must be a non-negative number of seconds (or None {none_means}), "
            f"got {value!r}"
        )
    return None if value == math.inf else value


def _seconds(value: float | None) -> str:
    return "none: it waits forever" if value is None else f"{value:g} s"


def _reason_text(reason: object) -> str:
    if isinstance(reason, StopReason):
        return reason.value
    if isinstance(reason, enum.Enum):  # signal.Signals.SIGINT, as the report prints it
        return f"{type(reason).__name__}.{reason.name}"
    if isinstance(reason, BaseException):
        return f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__
    return repr(reason) if not isinstance(reason, str) else reason


def _check_callable(func: object, method: str) -> None:
    if inspect.iscoroutine(func):
        func.close()  # refused: no "never awaited" warning on top of the error
        raise TypeError(
            f"{method}() takes an async function and its arguments, not a coroutine "
            f"object: pass `fn, arg`, not `fn(arg)`"
        )
    if not callable(func):
        raise TypeError(f"{method}() needs an async function, got {func!r}")


def _frames_of(coro: Any) -> list[FrameType]:
    """The frames of a suspended coroutine chain, outermost first."""
    frames: list[FrameType] = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        frame = frame or getattr(coro, "ag_frame", None)
        if frame is not None:
            frames.append(frame)
        nxt = getattr(coro, "cr_await", None)
        if nxt is None:
            nxt = getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await", None)
        coro = nxt
    return frames


def _library_dirs() -> tuple[str, ...]:
    """Directories whose frames are ours or the async libraries' (left out of logs)."""
    dirs = {os.path.dirname(__file__)}
    for name in ("asyncio", "anyio", "trio", "outcome", "sniffio", "uvloop", "exceptiongroup"):
        module = sys.modules.get(name)
        file = getattr(module, "__file__", None)
        if file:
            dirs.add(os.path.dirname(file))
    return tuple(d + os.sep for d in dirs)


def _is_library_frame(filename: str, dirs: tuple[str, ...]) -> bool:
    return filename.startswith(dirs) or filename.startswith("<frozen ")


def _describe_stack(summary: traceback.StackSummary) -> tuple[str, str]:
    """Where the member is (its innermost own frame) and its stack, outermost first.

    Frames of stopscope, anyio, trio and asyncio are left out unless the ``stopscope``
    logger is enabled for DEBUG: the first line a user reads is their own code.
    """
    if not logger.isEnabledFor(logging.DEBUG):
        dirs = _library_dirs()
        own = [f for f in summary if not _is_library_frame(f.filename, dirs)]
        if own:
            summary = traceback.StackSummary.from_list(own)
    if not summary:
        return "an unknown place", ""
    last = summary[-1]
    where = f"{last.filename}:{last.lineno} in {last.name}()"
    if last.line:
        where += f": {last.line.strip()}"
    if len(summary) == 1:
        return where, ""  # the headline says it all
    return where, "\nIts stack, outermost first:\n" + "".join(summary.format()).rstrip()


def _stack_of_frames(frames: list[FrameType]) -> traceback.StackSummary:
    return traceback.StackSummary.extract(
        ((f, f.f_lineno) for f in frames), limit=None, lookup_lines=True
    )


class _Stage:
    """A section of the start order that is stopped as one, after the later sections."""

    __slots__ = ("done", "first", "live", "name", "set_at", "set_real", "signal")

    def __init__(self, name: str, first: int) -> None:
        self.name = name
        self.first = first  # the index of its first member's record (later ones follow)
        self.signal = StopSignal()
        self.live = 0
        self.done: anyio.Event | None = None
        self.set_at: float | None = None  # loop clock: when the scope set its signal
        self.set_real: float | None = None  # ...and on time.monotonic(), for telemetry


class _Member(MemberFacts):
    """One member: the scope's handles on it, and the facts recorded while it runs."""

    __slots__ = (
        "cs",
        "deadline",
        "grace",
        "lagged",
        "marks",
        "stage",
        "start_aborted",
        "started",
        "task",
        "task_coro",
        "timer",
    )

    def __init__(self, record: TaskRecord, grace: float | None) -> None:
        super().__init__(record)
        self.grace = grace
        # a scope of its own only for a member with its own (shorter) grace: the task
        # group's scope covers the others, and a cancel scope per member is costly
        self.cs: anyio.CancelScope | None = None if grace is None else anyio.CancelScope()
        self.task_coro: Any = None
        self.task: Any = None  # its task, noted only for a member with a scope of its own
        self.started = True
        self.stage: _Stage | None = None
        # facts: its own grace deadline (loop clock; armed when its own signal is set),
        # where its task stood when that deadline cancelled it, and whether it was
        # still running well after it was cancelled (the laggard report saw it)
        self.deadline: float | None = None
        self.timer: Entry | None = None
        self.marks: Any = None
        self.lagged = False
        # started with start(), whose caller was cancelled before it called started()
        self.start_aborted = False


#: how far the loop clock may drift from time.monotonic() and still count as real
#: (uvloop's clock has millisecond steps)
_REAL_CLOCK_DRIFT: Final = 0.005
_CoroutineType: Final = types.CoroutineType
_FunctionType: Final = types.FunctionType
_FINISHED: Final = Outcome.FINISHED
_CANCELLED: Final = Outcome.CANCELLED
_ABANDONED: Final = Outcome.ABANDONED


def _cancel_called(member: _Member) -> bool:
    return member.cs is not None and member.cs.cancel_called


def _split(
    exc: BaseException, cancelled: type[BaseException]
) -> tuple[BaseException | None, BaseException | None]:
    """Split ``exc`` into its cancellation part and the rest (either may be None).

    A group is split leaf by leaf, as anyio and trio decide "is this only
    cancellation?"; the cancellation part is returned as one bare exception (the first
    leaf), which is what a task may raise to say "I was cancelled" on every backend.
    """
    if isinstance(exc, cancelled):
        return exc, None
    if not isinstance(exc, BaseExceptionGroup):
        return None, exc
    cancels, rest = exc.split(cancelled)
    first: BaseException | None = None
    if cancels is not None:
        first = cancels
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
    return first, rest


_in_cancelled_scope: Final = in_cancelled_scope


class _StartStatus(anyio.abc.TaskStatus[Any]):
    """The ``task_status`` of a member started with :meth:`TaskScope.start`.

    The member runs in the scope's group from its first step, not in the caller's
    cancel scopes (as anyio's and trio's ``start()`` would have it until
    ``started()``): a scope of the body, cancelled or not, never reaches a member.
    The caller waits for ``ready``; ``value`` or ``error`` is what it gets.
    """

    __slots__ = ("_member", "error", "exited", "ready", "value")

    def __init__(self, member: _Member) -> None:
        self._member = member
        self.ready = anyio.Event()  # started(), or the member ended before it
        self.exited = anyio.Event()  # the member ended
        self.value: Any = None
        self.error: BaseException | None = None

    def started(self, value: Any = None) -> None:
        member = self._member
        if member.started:
            raise RuntimeError("called 'started' twice on the same task status")
        member.started = True
        self.value = value
        self.ready.set()

    def fail(self, error: BaseException) -> None:
        """The member ended before it called ``started()``: the caller raises ``error``."""
        if not self.ready.is_set():
            self.error = error
            self.ready.set()


@final
class TaskScope:
    """A task group whose members stop gracefully.

    ::

        async with TaskScope(grace=5.0) as scope:
            scope.start_soon(poller, scope.signal, name="poller")
            await serve_until_deploy()
        # leaving the block stopped the poller: signal set, up to 5 s grace, then cancel
        print(scope.report)

    Stop is requested by :meth:`stop`, by the parent ``signal``, when the body ends
    (unless ``stop_on_exit=False``), or when a member or the body raises.  Members
    and the body then get ``grace`` seconds to return; whatever still runs is
    cancelled.  Errors are raised together as an :class:`ExceptionGroup`.

    .. warning:: With the default ``stop_on_exit=True``, leaving the body *stops* the
       members: right for background workers that run until told to stop, wrong for a
       batch of finite jobs, which would be cut short after their grace.  For jobs that
       finish on their own, pass ``stop_on_exit=False``: leaving the body then waits
       for them, as an anyio task group does.

    :param grace: seconds members get between the stop request and cancellation;
        ``None`` waits forever, ``0`` cancels at once
    :param signal: a parent :class:`StopSignal`; the scope's signal is its child
    :param name: a name for log messages
    :param stop_on_exit: whether the end of the body requests a stop
    """

    def __init__(
        self,
        grace: float | None = 5.0,
        signal: StopSignal | None = None,
        name: str | None = None,
        stop_on_exit: bool = True,
    ) -> None:
        self._grace = _check_grace(grace)
        if signal is not None and not isinstance(signal, StopSignal):
            raise TypeError(f"`signal` must be a StopSignal or None, got {signal!r}")
        self._signal = StopSignal() if signal is None else signal.child()
        self.name = name
        self._stop_on_exit = bool(stop_on_exit)
        self._state = "new"
        self._tg: TaskGroup | None = None
        self._records: list[TaskRecord] = []
        self._live: dict[TaskRecord, _Member] = {}
        self._errors: list[BaseException] = []
        self._requested_at: float | None = None
        self._stop_base: float | None = None  # loop-clock time of the stop request
        self._clock: Callable[[], float] = time.monotonic
        # the loop clock minus time.monotonic() at the start: while both run together
        # (a real clock) it stays put; a virtual clock (trio's MockClock, looptime)
        # drifts away from it
        self._clock_offset = 0.0
        self._body_done = False
        self._stop_call: LoopCall | None = None  # the hook that runs _on_stop on our loop
        self._backend: Backend | None = None  # the loop's, from __aenter__ on
        self._timer: Entry | None = None  # the grace deadline, then the laggard reports
        self._laggard_delay = AFTER_CANCEL_REPORT_DELAY
        self._stages_cs: anyio.CancelScope | None = None
        self._cancelled_exc: type[BaseException] = BaseException
        # the scope cancelled its own group: the grace ran out, or a BaseException
        # (KeyboardInterrupt, SystemExit...) stopped it at once
        self._cancelling = False
        self._cut_kind = NOBODY  # GRACE or HARD once the scope cancelled its group
        # stopped without grace (from outside, or by a BaseException): no grace warnings
        self._hard = False
        self._outside = False  # the hard stop came from an enclosing cancel scope
        self._hard_cause: BaseException | None = None  # the BaseException that did it
        self._stages: list[_Stage] = []
        self._final: ShutdownReport | None = None  # the report, frozen at exit
        # what the frozen report says, kept at exit; the report itself is built on the
        # first read (a scope that nobody asks pays for no report)
        self._frozen: tuple[object, float | None] | None = None
        self._cut = 0  # members that needed cancellation (CANCELLED, ABANDONED)
        self._cancelled_at: float | None = None  # loop clock: when cancellation was issued
        # what the backend noted as the group opened, and where each member stood when
        # the scope cancelled them (trio: the nursery and each task's cancel points);
        # None where there is nothing to tell
        self._entered: Any = None
        self._at_cancel: Any = None
        self._cancel_probe: Callable[[], bool] = _in_cancelled_scope

    # -- public surface ----------------------------------------------------------

    @property
    def signal(self) -> StopSignal:
        """The :class:`StopSignal` the members watch; set when stop is requested."""
        return self._signal

    @property
    def grace(self) -> float | None:
        """The grace period in seconds (``None``: wait forever)."""
        return self._grace

    @property
    def _member_signal(self) -> StopSignal:
        """The signal a member started now should watch: its stage's, or the scope's."""
        return self._stages[-1].signal if self._stages else self._signal

    def stop(self, reason: object = None) -> bool:
        """Request a graceful stop (safe from any thread).  The first reason wins.

        :return: ``True`` if this call requested the stop
        """
        return self._signal.set(reason)

    @property
    def report(self) -> ShutdownReport:
        """Who did what; frozen once the ``async with`` block has exited.

        Read inside the block, it is a snapshot of the moment (members still running
        have ``Outcome.RUNNING``).  After exit it never changes, even if the parent
        signal is set later.
        """
        final = self._final
        if final is not None:
            return final
        frozen = self._frozen
        if frozen is None:  # still open: a snapshot of the moment
            reason = self._signal.reason if self._signal.is_set() else None
            return ShutdownReport(reason, self._requested_at, tuple(self._records))
        final = self._final = ShutdownReport(frozen[0], frozen[1], tuple(self._records))
        return final

    def stage(self, name: str | None = None) -> StopSignal:
        """Start a new shutdown stage and return its stop signal (ordered shutdown).

        The members started after this call (until the next ``stage()``) belong to
        the stage and should watch the returned signal.  When the scope stops, members
        watching :attr:`signal` stop at once; then the stages are stopped one by one,
        **the last created first**, each once every member of the later stage has
        exited.  The scope's grace is one budget for the whole sequence: at its end,
        whatever still runs is cancelled.  Typical use, started in dependency order::

            async with TaskScope(grace=30) as scope:
                writer_stop = scope.stage("writer")      # stopped last
                scope.start_soon(writer, writer_stop, queue)
                workers_stop = scope.stage("workers")
                for _ in range(4):
                    scope.start_soon(worker, workers_stop, queue)
                listener_stop = scope.stage("listener")  # stopped first
                await scope.start(listener, listener_stop, queue)

        A stage created while the scope is stopping is stopped at once.

        :param name: a name for logs (default ``"stage N"``)
        """
        tg = self._check_open("stage")
        stage = _Stage(name or f"stage {len(self._stages) + 1}", len(self._records))
        self._stages.append(stage)
        if self._signal.is_set():
            stage.set_at = self._clock()
            stage.set_real = time.monotonic()
            stage.signal.set(self._signal.reason)
        elif len(self._stages) == 1:
            # made here, not in the task: the body may end (and want the sequence
            # called off) before the task has run once
            self._stages_cs = anyio.CancelScope()
            tg.start_soon(self._run_stages, name=f"stopscope stages of {self._label()}")
            self._check_idle()
        return stage.signal

    def __repr__(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        return f"<TaskScope{name} {self._state} grace={self._grace} members={len(self._live)}>"

    # -- spawning ----------------------------------------------------------------

    def start_soon(
        self,
        func: Callable[[Unpack[PosArgsT]], Awaitable[Any]],
        *args: Unpack[PosArgsT],
        name: object = None,
        grace: float | None = None,
    ) -> None:
        """Start ``func(*args)`` as a member, as anyio's ``TaskGroup.start_soon`` does.

        :param name: the member's name in the report and logs (default: the
            callable's qualified name)
        :param grace: a shorter grace period for this member, counted from when its
            own signal is set (its stage's stop, in a stage); the scope's grace stays
            the overall budget
        :raises RuntimeError: outside the ``async with`` block
        :raises TypeError: if ``func(*args)`` does not return a coroutine
        """
        tg = self._tg
        if tg is None or self._state == "closed":
            tg = self._check_open("start_soon")
        if name is not None and not isinstance(name, str):
            # before making the coroutine, so that none is left unawaited
            raise TypeError(f"`name` must be a string or None, got {name!r}")
        if grace is not None:
            _check_grace(grace)
        try:
            coro = func(*args)
        except TypeError:
            _check_callable(func, "start_soon")  # a clearer error for a common mistake
            raise
        # any Coroutine (a Cython or mypyc-compiled one too), as asyncio, trio and anyio
        if type(coro) is not _CoroutineType and not isinstance(coro, Coroutine):
            raise TypeError(
                f"start_soon() needs an async function (a callable returning a coroutine); "
                f"{_callable_name(func)} returned {coro!r}"
            )
        member = self._new_member(func, name, grace)
        self._admit(member)
        run = self._run_member if member.cs is None else self._run_scoped_member
        tg.start_soon(run, member, coro, name=member.record.name)

    async def start(
        self,
        func: Callable[..., Awaitable[Any]],
        *args: object,
        name: object = None,
        grace: float | None = None,
    ) -> Any:
        """Start ``func(*args, task_status=...)`` and wait until it calls ``started()``.

        As anyio's ``TaskGroup.start``: returns the value passed to
        ``task_status.started()``; an error raised before that is raised here.  Unlike
        there, the member runs in the scope from its first step: no cancel scope of
        the caller ever reaches it.  A caller already cancelled starts nothing; one
        cancelled while it waits calls the start off (the member is cancelled, and
        reported ``CANCELLED``, phase ``"cancelled-from-outside"``).
        """
        tg = self._check_open("start")
        _check_callable(func, "start")
        # a caller already cancelled starts nothing (its cancellation is raised here)
        await anyio.lowlevel.checkpoint_if_cancelled()
        member = self._new_member(func, name, grace)
        member.started = False
        if member.cs is None:  # to call the start off if the caller is cancelled first
            member.cs = anyio.CancelScope()
        self._admit(member)
        status = _StartStatus(member)
        tg.start_soon(self._run_started, member, func, args, status, name=member.record.name)
        try:
            await status.ready.wait()
        except BaseException:
            if not member.started:
                # the caller was cancelled first (as with anyio's start(), the member
                # is then cancelled); the member is not the scope's to stop for it
                member.start_aborted = True
                member.cs.cancel()
                with anyio.CancelScope(shield=True):
                    await status.exited.wait()
            raise
        error = status.error
        if error is not None:
            try:
                raise error
            finally:
                del error, status
        return status.value

    def start_thread(
        self,
        func: Callable[[StopSignal, Unpack[PosArgsT]], object],
        *args: Unpack[PosArgsT],
        name: object = None,
        grace: float | None = None,
    ) -> None:
        """Run ``func(signal, *args)`` in a worker thread, as a member of the scope.

        ::

            def tail(signal: StopSignal, path: str) -> None:
                with open(path) as f:
                    while not signal.wait_blocking(0.5):
                        process(f.readlines())

            scope.start_thread(tail, "/var/log/app.log")

        ``func`` must watch ``signal`` (``signal.is_set()``, ``signal.wait_blocking()``)
        and return once it is set.  A thread cannot be cancelled: one still running
        when its grace is over is left behind and reported ``ABANDONED``; the scope
        does not wait for it.  Inside ``func``, ``anyio.from_thread`` works as in any
        anyio worker thread.  Each thread member has a thread of its own (it does not
        take a token of anyio's default thread limiter).

        :param name: the member's name (default: the function's qualified name); the
            thread is named after it while ``func`` runs
        :param grace: a shorter grace period for this member
        :raises TypeError: if ``func`` is not callable, or is an async function (use
            :meth:`start_soon`)
        """
        _members.start_thread(self, func, args, name, grace)

    async def start_process(
        self,
        cmd: StrOrBytesPath | Sequence[StrOrBytesPath],
        *,
        name: object = None,
        grace: float | None = None,
        process_group: bool | None = None,
        die_with_parent: bool = False,
        **popen_kwargs: Any,
    ) -> Process:
        """Start a subprocess as a member; return once it is running.

        ::

            proc = await scope.start_process(["nginx", "-g", "daemon off;"], grace=10)

        On stop (its stage's, if it belongs to one) the process gets SIGTERM; if it has
        not exited when its grace is over it gets SIGKILL, as Kubernetes and systemd
        do.  In the report it is ``STOPPED`` if it exited within grace with status 0
        or died of that SIGTERM, ``CANCELLED`` if it had to be killed, ``FINISHED``
        if it exited 0 before any stop, and ``FAILED`` if it exited with any other
        status, before or after the stop (``128 + 15`` after SIGTERM included, as
        systemd counts it; see ``docs/semantics.md``): the error is a
        :class:`subprocess.CalledProcessError`, which stops the scope like any
        member's error.  ``record.exit_code`` holds the exit code (negative: killed
        by that signal).  The process is always waited for: no zombie is left.

        By default (POSIX) the child leads a process group of its own, so the stop is
        the service's to give: a terminal's Ctrl-C, ``tini -g`` or supervisord's
        ``stopasgroup`` reach the service, never the child directly, and the child gets
        one SIGTERM, from its member.  Pass ``die_with_parent=True`` too if the child
        must not outlive a service that dies without stopping it (SIGKILL).

        With ``process_group=False`` the child shares this process's group.  Then,
        under :func:`~stopscope.run` or :func:`~stopscope.stop_on_signals`, a signal
        sent to the whole process group (Ctrl-C in a terminal, ``tini -g``,
        supervisord's ``stopasgroup``, systemd's ``KillMode=control-group``) reaches
        the process too, and it may exit before the service has acted on the signal.
        It is then ``STOPPED``, not ``FAILED``, and the service stops at once, as for
        any signal, when: the service caught that signal (acted on or not yet), and
        the exit status says the process ended by it: killed by it (``-n``), exit
        status ``128 + n`` (a shell's 130 after SIGINT, a JVM's 143 after SIGTERM),
        or 0.  Any other status (1, or killed by SIGKILL or by a signal the service
        does not handle or never got) is still ``FAILED``.  A Python child that does
        not handle SIGINT dies of it (``-2``, after printing the KeyboardInterrupt
        traceback); one that catches ``KeyboardInterrupt`` and exits 1 fails.

        :param cmd: the command, as for :func:`anyio.open_process` (a string is run
            by the shell)
        :param name: the member's name (default: the command line)
        :param grace: a shorter grace period for this member
        :param process_group: start the child in a session (process group) of its own,
            and send the stop's SIGTERM and the SIGKILL after grace to the whole group,
            so grandchildren stop too; the member lasts until the group is empty.
            ``None`` (the default) means ``True`` on POSIX and ``False`` on Windows,
            where it is not supported; ``False`` keeps the child in this process's
            group and session
        :param die_with_parent: the child is stopped (SIGTERM, then SIGKILL after the
            member's grace, 10 s if it has none) when this process dies, even by
            SIGKILL: a small guard process watches a pipe only this process holds
            (about 20 ms more to start; POSIX only)
        :param popen_kwargs: passed to :func:`anyio.open_process`; unlike there,
            ``stdin``, ``stdout`` and ``stderr`` default to ``None`` (inherited), as
            with :class:`subprocess.Popen`.  Pipes you ask for are yours to read.
        :return: the running :class:`anyio.abc.Process`
        :raises OSError: if the process cannot be started (e.g. FileNotFoundError)
        """
        if process_group is not None:
            popen_kwargs["process_group"] = process_group
        popen_kwargs["die_with_parent"] = die_with_parent
        return await _members.start_process(self, cmd, name, grace, popen_kwargs)

    # -- context manager -----------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise RuntimeError(
                "a TaskScope may only be used for a single `async with` block; create a new one"
            )
        self._state = "open"
        backend = current()
        tg = backend.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._backend = backend
        self._entered = backend.group_entered(tg)
        self._cancelled_exc = backend.cancelled_exc
        self._cancel_probe = backend.cancel_probe()
        self._clock = backend.clock
        self._clock_offset = backend.clock() - time.monotonic()
        # a barrier: a stop from a signal handler hands our loop work to the loop, and the
        # members it wakes then run only after it (grace=0 cancels them first)
        call = LoopCall(self._on_stop, backend, barrier=True)
        self._stop_call = call
        if not _add_hook(self._signal, call):
            self._on_stop()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        tg = self._tg
        assert tg is not None
        self._body_done = True
        # anyio's group only ever sees cancellation: every error is collected here,
        # so that none is lost and each comes out once, in our group
        pass_on: BaseException | None = None
        rest: BaseException | None = None
        try:
            if exc is None:
                if self._stop_on_exit:
                    self._signal.set(StopReason.BODY_EXITED)
            else:
                pass_on, rest = _split(exc, self._cancelled_exc)
                if pass_on is not None and not self._cancelling:
                    self._cancelled_from_outside()  # not ours: hard, as anyio users expect
                if rest is not None:
                    self._errors.insert(0, rest)
                    if isinstance(rest, Exception):
                        # The body's error must not become an immediate cancellation:
                        # members get their grace, and the error is grouped with theirs.
                        self._signal.set(rest)
                    else:  # KeyboardInterrupt, SystemExit...: at once, as in anyio
                        self._stop_hard(rest)
            self._check_idle()
            try:
                if pass_on is None:
                    suppressed = await tg.__aexit__(None, None, None)
                else:
                    suppressed = await tg.__aexit__(type(pass_on), pass_on, pass_on.__traceback__)
            except BaseException as tg_exc:
                self._finish()
                rest = _split(tg_exc, self._cancelled_exc)[1]
                if rest is not None:  # nothing but cancellation should get here: keep it
                    self._errors.append(rest)
                if self._errors:
                    # errors win over a cancellation, as in anyio's task group
                    raise self._group() from None
                raise
            self._finish()
            if self._errors:
                raise self._group() from None
            return pass_on is not None and bool(suppressed)
        finally:
            # no reference cycle through this frame (anyio's group leaves none either)
            del exc, pass_on, rest, tb

    # -- internals ---------------------------------------------------------------

    def _check_open(self, method: str) -> TaskGroup:
        if self._state == "new":
            raise RuntimeError(f"TaskScope.{method}() must be called inside `async with scope:`")
        if self._state == "closed" or self._tg is None:
            raise RuntimeError(
                f"TaskScope.{method}() called after the scope exited; start members "
                f"inside the `async with` block"
            )
        return self._tg

    def _check_member(self, name: object, grace: float | None) -> float | None:
        """A member's ``name`` and own ``grace``, checked; the grace as a number."""
        if name is not None and not isinstance(name, str):
            raise TypeError(f"`name` must be a string or None, got {name!r}")
        if grace is not None:
            grace = _check_grace(grace)
            if grace is not None and self._grace is not None and grace > self._grace:
                logger.warning(
                    "%s: member %s: its grace (%g s) is longer than the scope's (%g s), "
                    "the whole stop's budget: it gets at most %g s (give the scope a "
                    "longer grace, or the member a shorter one)",
                    self._label(),
                    "" if name is None else repr(name),
                    grace,
                    self._grace,
                    self._grace,
                )
                grace = self._grace
        return grace

    def _new_member(self, func: Callable[..., Any], name: object, grace: float | None) -> _Member:
        grace = self._check_member(name, grace)
        record = TaskRecord(name=_callable_name(func) if name is None else str(name))
        self._records.append(record)
        return _Member(record, grace)

    def _admit(self, member: _Member) -> None:
        self._live[member.record] = member
        stage = None
        if self._stages:
            stage = member.stage = self._stages[-1]
            stage.live += 1
        if member.grace is not None and not self._hard:
            # started while its own signal is set: what is left of its grace
            start = self._stop_base if stage is None else stage.set_at
            if start is not None and self._stop_base is not None:
                self._arm(member, start)  # else _on_stop arms it, once it has run

    def _arm(self, member: _Member, start: float) -> None:
        """Arm a member's own grace deadline, from ``start`` (loop clock), when its own
        signal was set (the scope's, or its stage's), capped by the scope's budget."""
        assert member.grace is not None
        assert self._stop_base is not None
        deadline = start + member.grace
        if self._grace is not None:
            deadline = min(deadline, self._stop_base + self._grace)
        member.deadline = deadline
        if deadline <= self._clock():
            self._member_expired(member)
        else:
            assert self._backend is not None
            member.timer = self._backend.call_at(deadline, lambda: self._member_expired(member))

    def _arm_stage(self, stage: _Stage) -> None:
        """A stage's signal was just set: its members' own grace starts now."""
        stage.set_at = start = self._clock()
        stage.set_real = time.monotonic()
        if self._hard or self._stop_base is None or self._state == "closed":
            return
        for member in list(self._live.values()):
            if member.stage is stage and member.grace is not None and member.deadline is None:
                self._arm(member, start)

    def _member_expired(self, member: _Member) -> None:
        """A member's own grace ran out: cancel it alone, noting where its task stood."""
        member.timer = None
        if self._state == "closed" or self._live.get(member.record) is not member:
            return
        cs = member.cs
        assert cs is not None
        backend = self._backend
        assert backend is not None
        task = member.task  # None: not running yet, so look at every member task
        marks = backend.cancel_marks(self._entered, task)
        cs.cancel()
        member.marks = backend.cancel_shields(self._entered, marks, task)
        observer = _observer
        if observer is not None:
            observer.event(self, member.record, "stopscope.escalation", {"grace": member.grace})

    def _stop_moment(self) -> float:
        """When stop was requested (``time.monotonic()``), as close as we can tell."""
        if self._requested_at is None:
            call = self._stop_call
            fired = None if call is None else call.fired_at
            self._requested_at = time.monotonic() if fired is None else fired
        return self._requested_at

    def _on_stop(self) -> None:
        """Runs on the scope's loop once stop is requested: arm the grace deadlines."""
        tg = self._tg
        if self._state == "closed" or tg is None:
            return
        requested = self._stop_moment()
        call = self._stop_call
        if call is None or call.fired_at is None:
            # we run inside set(), on our own loop: the stop is now, on the loop's clock
            # (which may be virtual: real time must not leak into the deadline)
            base = self._clock()
        else:  # set from another thread or a handler: we run later; count the delay
            now, real_now = self._clock(), time.monotonic()
            base = now
            if abs(now - real_now - self._clock_offset) < _REAL_CLOCK_DRIFT:
                # a real clock: the loop clock moved with the delay too.  A virtual one
                # did not (it stands still while the loop works): real time must not
                # leak into its deadlines, which would cut members short under load
                base -= max(0.0, real_now - requested)
        self._stop_base = base
        if self._hard:
            return  # cancelled from outside, or a BaseException: no grace to time
        if self._grace is not None:
            # one entry on the signal's timer heap: cheaper than a cancel scope deadline
            deadline = base + self._grace
            if deadline <= self._clock():
                self._grace_expired()
            else:
                assert self._backend is not None
                self._timer = self._backend.call_at(deadline, self._grace_expired)
        for member in list(self._live.values()):
            if member.grace is None or member.deadline is not None:
                continue
            stage = member.stage
            if stage is None:
                self._arm(member, base)
            elif stage.set_at is not None:
                # its stage was set before we ran (a stop from a handler, a thread or a
                # plain function: the stage sequence may run first): its grace is due
                self._arm(member, stage.set_at)

    def _grace_expired(self) -> None:
        """A timer call at the grace deadline: cancel what is left, then watch it."""
        self._timer = None
        tg = self._tg
        if self._state == "closed" or tg is None:
            return
        self._cancelling = True
        self._cut_kind = GRACE
        observer = _observer
        if observer is not None:
            observer.event(self, None, "stopscope.escalation", {"live": len(self._live)})
        self._cancel_group(tg)
        self._watch_laggards()

    def _cancel_group(self, tg: TaskGroup) -> None:
        """Cancel the group, letting the backend note where each member task stands
        (trio: a task already woken by the stop sees the cancellation only at its next
        checkpoint, and one that returns first caught nothing; on every backend, a
        task in a shielded scope has it deferred)."""
        backend = self._backend
        assert backend is not None
        marks = backend.cancel_marks(self._entered)
        tg.cancel_scope.cancel()
        self._at_cancel = backend.cancel_shields(self._entered, marks)

    def _reach(self, member: _Member) -> int:
        """Whether a cancellation issued by the scope reached the running member, was
        deferred by a shield it was in, or never reached it (a fact, read in its task)."""
        assert self._backend is not None
        marks = member.marks if _cancel_called(member) else self._at_cancel
        return self._backend.cancel_reached(marks, self._cancel_probe)

    def _watch_laggards(self) -> None:
        """Cancellation was issued (grace over, or hard): report whoever keeps running.

        Runs on the scope's loop.  A member that swallows cancellation must never make
        the scope hang silently, whoever cancelled it.
        """
        if self._cancelled_at is None:
            self._cancelled_at = self._clock()
        backend = self._backend
        if self._timer is not None:  # a grace deadline no longer matters
            assert backend is not None
            backend.cancel_call(self._timer)
            self._timer = None
        if self._live and self._state != "closed" and backend is not None:
            deadline = self._clock() + self._laggard_delay
            self._timer = backend.call_at(deadline, self._report_laggards)

    def _report_laggards(self) -> None:
        """A timer call: members still running well after they were cancelled."""
        self._timer = None
        if self._state == "closed" or not self._live:
            return
        assert self._cancelled_at is not None
        since = self._clock() - self._cancelled_at
        for member in list(self._live.values()):
            if not self._outside:
                member.lagged = True
            where, stack = _describe_stack(_stack_of_frames(_frames_of(member.task_coro)))
            member.record.where = where
            logger.warning(
                "%s: member %r is still running %.3g s after it was cancelled, at %s; it "
                "swallows cancellation or blocks the loop.%s",
                self._label(),
                member.record.name,
                since,
                where,
                stack,
            )
            observer = _observer
            if observer is not None:
                observer.event(
                    self, member.record, "stopscope.laggard", {"where": where, "since": since}
                )
        self._laggard_delay = min(self._laggard_delay * 2, 30.0)
        assert self._backend is not None
        self._timer = self._backend.call_at(
            self._clock() + self._laggard_delay, self._report_laggards
        )

    def _check_idle(self) -> None:
        cs = self._stages_cs
        if cs is not None and self._body_done and not self._live and not self._signal.is_set():
            cs.cancel()  # done without any stop: no stage to stop

    async def _run_stages(self) -> None:
        """Stop the stages one by one, the last created first (a member of the group)."""
        try:
            waiting = self._stages_cs
            assert waiting is not None
            with waiting:  # cancelled by _check_idle if the scope ends with no stop
                await self._signal.wait()
            self._stages_cs = None
            if not self._signal.is_set() or self._hard:
                return
            for stage in reversed(self._stages):
                logger.debug("%s: stopping %s (%d members)", self._label(), stage.name, stage.live)
                self._arm_stage(stage)
                stage.signal.set(self._signal.reason)
                if stage.live:
                    stage.done = anyio.Event()
                    await stage.done.wait()
        finally:  # the grace deadline or a hard cancellation ends the sequence
            self._release_stages()

    async def _run_started(
        self, member: _Member, func: Callable[..., Any], args: tuple[Any, ...], status: _StartStatus
    ) -> None:
        """A member started with :meth:`start`: until it calls ``started()``, what it
        raises goes to the caller of ``start()``, not to the scope's group."""
        try:
            await self._run_started_member(member, func, args, status)
        except self._cancelled_exc as exc:
            if not member.started:
                status.fail(self._start_cancelled(member, exc))
            raise
        except BaseException as exc:
            if member.started:
                raise
            status.fail(exc)  # start() raises it, as anyio does
        else:
            if not member.started:
                status.fail(RuntimeError("child exited without calling task_status.started()"))
        finally:
            status.exited.set()

    def _start_cancelled(self, member: _Member, exc: BaseException) -> BaseException:
        error = RuntimeError(
            f"member {member.record.name!r} was cancelled before it called task_status.started()"
        )
        error.__cause__ = exc
        return error

    async def _run_started_member(
        self, member: _Member, func: Callable[..., Any], args: tuple[Any, ...], status: _StartStatus
    ) -> None:
        try:
            coro = func(*args, task_status=status)
        except BaseException as exc:
            cut_by = self._cut_by(member)
            if not member.started:
                self._exited(member, RAISED, exc, cut_by)
                raise  # start() raises it, as anyio does
            # a sync wrapper that called started() and then raised: a member's error,
            # which stops the others gracefully, whatever shape the callable has
            self._exited(member, RAISED, self._member_error(member, exc), cut_by)
            return
        if not isinstance(coro, Coroutine):
            error = TypeError(
                f"start() needs an async function (a callable returning a coroutine); "
                f"{_callable_name(func)} returned {coro!r}"
            )
            if not member.started:
                self._forget(member)  # misuse, not a member that ran
                raise error
            cut_by = self._cut_by(member)
            self._exited(member, RAISED, self._member_error(member, error), cut_by)
            return
        await self._run_scoped_member(member, coro)

    async def _run_member(self, member: _Member, coro: Coroutine[Any, Any, Any]) -> None:
        """Run one member and record how it ended (facts only: ``_exited`` judges); its
        error goes to the scope's group, never to anyio's (which would cancel the
        others at once)."""
        _current_member.set(member)
        member.task_coro = coro
        ended = RETURNED
        error: BaseException | None = None
        cancel: BaseException | None = None
        cut_by = NOBODY
        try:
            await coro
        except self._cancelled_exc as exc:
            if not self._task_cancelled():
                # nobody cancelled this member (asyncio: it awaited a task that someone
                # else cancelled): its own failure, not a cancellation of the scope
                cut_by = self._cut_by(member)
                ended, error = RAISED, self._stray_cancellation(member, exc)
            else:
                ended, cancel = CANCELLED, exc
                cut_by = self._cancelled_by(member)
                raise
        except Exception as exc:
            ended, error = RAISED, exc
            cut_by = self._cut_by(member)  # before its error stops the scope
            if not member.started:
                raise  # start() raises it, as anyio does
            self._member_error(member, exc)
        except BaseException as exc:
            ended, error = RAISED, exc
            cut_by = self._cut_by(member)  # before its error stops the scope
            if not member.started:
                raise
            # KeyboardInterrupt, SystemExit, or a group: a raw nursery in the member
            # cancelled with it, whose children may also have raised
            cancel, rest = _split(exc, self._cancelled_exc)
            if cancel is not None and not self._task_cancelled():
                cancel, rest = None, exc  # nobody cancelled it: all of it is its failure
            if rest is None:
                assert cancel is not None
                ended, error = CANCELLED, None
                cut_by = self._cancelled_by(member)
                raise cancel from None
            if cancel is not None and not cut_by:
                cut_by = OUTSIDE if _in_cancelled_scope() else TASK
            error = self._member_error(member, rest)
            if cancel is not None:
                raise cancel from None  # the member was cancelled too: say so to anyio
        else:
            cut_by = self._cut_by(member)
            if not cut_by and self._cancel_probe() and _in_cancelled_scope():
                # it returned inside a cancellation from outside (it swallowed it); a
                # bare Task.cancel() count that nobody acted on is no evidence
                self._cancelled_from_outside()
                cut_by = OUTSIDE
        finally:
            reach = self._reach(member) if cut_by == GRACE and ended == RETURNED else NOT_REACHED
            self._exited(member, ended, error, cut_by, reach, cancel)

    async def _run_scoped_member(self, member: _Member, coro: Coroutine[Any, Any, Any]) -> None:
        """A member with its own grace: its own cancel scope, cancelled by its own timer."""
        assert self._backend is not None
        member.task = self._backend.current_task()
        try:
            with member.cs:  # type: ignore[union-attr]
                await self._run_member(member, coro)
        finally:
            member.task = member.marks = None  # no reference cycle through its task
            if member.timer is not None:
                self._backend.cancel_call(member.timer)
                member.timer = None

    def _caused_stop(self, error: BaseException) -> bool:
        """Whether this member error is what requested the stop (it ran, then failed)."""
        return self._signal._flag and self._signal._reason is error

    def _member_error(self, member: _Member, error: BaseException) -> BaseException:
        """Collect a member's error and stop the scope: gracefully for an ``Exception``,
        at once for a ``KeyboardInterrupt``, ``SystemExit`` or other BaseException."""
        if not self._cut_by(member) and self._cancel_probe() and _in_cancelled_scope():
            # it raised in answer to a cancellation from outside, which came first
            self._cancelled_from_outside()
        self._errors.append(error)
        if isinstance(error, Exception):
            self._signal.set(error)
        else:
            self._stop_hard(error)
        return error

    def _stray_cancellation(self, member: _Member, exc: BaseException) -> BaseException:
        error = RuntimeError(
            f"member {member.record.name!r} raised {type(exc).__name__} without being "
            f"cancelled (did it await a task that something else cancelled?)"
        )
        error.__cause__ = exc
        return self._member_error(member, error)

    def _cut_by(self, member: _Member) -> int:
        """Who issued a cancellation that covers this member (a fact; the scope first:
        its own grace, the scope's budget or a hard stop, then from outside)."""
        cs = member.cs
        if cs is not None and cs.cancel_called and not member.start_aborted:
            return GRACE
        if self._cancelling:
            return self._cut_kind
        if self._outside:
            return OUTSIDE
        if member.start_aborted:
            return STARTER
        return NOBODY

    def _task_cancelled(self) -> bool:
        """Whether anyone cancelled the running member's task (the cheap probe first)."""
        return self._cancel_probe() or _in_cancelled_scope()

    def _cancelled_by(self, member: _Member) -> int:
        """The member raised the cancellation: who sent it (the scope, an enclosing
        cancel scope, or asyncio's ``Task.cancel()`` on its task alone)."""
        cut_by = self._cut_by(member)
        if cut_by:
            return cut_by
        if _in_cancelled_scope():
            self._cancelled_from_outside()  # an enclosing cancel scope: hard, for all
            return OUTSIDE
        # asyncio: this member's task alone was cancelled (Task.cancel()), not the
        # scope: the others stop gracefully, as after a member's failure
        self._signal.set(StopReason.CANCELLED)
        return TASK

    def _stop_hard(self, cause: BaseException) -> None:
        """Stop at once, without grace (a KeyboardInterrupt, SystemExit...), as anyio."""
        self._hard = True
        if self._hard_cause is None:
            self._hard_cause = cause
        self._signal.set(cause)
        self._release_stages()
        tg = self._tg
        if tg is not None and self._state != "closed" and not self._cancelling:
            self._cancelling = True
            self._cut_kind = HARD
            self._cancel_group(tg)
            self._watch_laggards()

    def _cancelled_from_outside(self) -> None:
        """An enclosing cancel scope cancelled us: hard, no grace, named as such."""
        if not self._outside:
            self._outside = True
            self._hard = True
            self._signal.set(StopReason.CANCELLED)
            self._release_stages()
            if self._state != "closed":
                self._watch_laggards()

    def _exited(
        self,
        member: _Member,
        ended: int,
        error: BaseException | None,
        cut_by: int = NOBODY,
        reach: int = NOT_REACHED,
        cancel: BaseException | None = None,
    ) -> None:
        """The member has exited: judge its facts, once, and act on the verdict."""
        record = member.record
        now = time.monotonic()
        record.exited_at = now
        if error is not None:
            record.error = error
        stopping = self._signal._flag
        caused = error is not None and stopping and self._signal._reason is error
        asked = stopping or member.stop_seen
        if member.returned_first and ended == CANCELLED:
            # a thread's result raced the cancellation: it cut nothing of the member
            ended, cut_by, asked = RETURNED, NOBODY, member.returned_asked
        outcome, phase = _judge(ended, asked, caused, cut_by, reach, record.cut, member.abandoned)
        if member.lagged and phase == "cancelled":
            phase = "after-cancel"  # it kept running well after it was cancelled
        record.outcome = outcome
        record.phase = phase
        if outcome is not _FINISHED and not caused and stopping:
            requested = self._requested_at
            if requested is None:
                requested = self._stop_moment()
            record.latency = now - requested if now > requested else 0.0
        if outcome is _CANCELLED or outcome is _ABANDONED:
            self._cut += 1
            if cut_by == GRACE and not self._hard:
                if ended == CANCELLED and outcome is _CANCELLED and cancel is not None:
                    self._warn_cancelled(member, cancel)  # a thread logs its own
                elif ended == RETURNED and reach == _DEFERRED:
                    self._warn_deferred(member)
                elif ended == RETURNED and phase == "after-cancel" and not member.lagged:
                    logger.warning(
                        "%s: member %r returned only after it was cancelled (did it catch "
                        "the cancellation?)",
                        self._label(),
                        record.name,
                    )
        self._leave(member)

    def _leave(self, member: _Member) -> None:
        """Take an exited member out of the live set and its stage."""
        live = self._live
        del live[member.record]
        stage = member.stage
        if stage is not None:
            stage.live -= 1
            if not stage.live and stage.done is not None:
                stage.done.set()
        if not live and self._body_done:
            self._check_idle()

    def _forget(self, member: _Member) -> None:
        index = self._records.index(member.record)
        del self._records[index]
        for stage in self._stages:  # the stages' first records move up with the rest
            if stage.first > index:
                stage.first -= 1
        self._leave(member)

    def _label(self) -> str:
        return f"TaskScope {self.name!r}" if self.name else "TaskScope"

    def _warn_deferred(self, member: _Member) -> None:
        grace = member.grace if _cancel_called(member) else self._grace
        logger.warning(
            "%s: member %r did not stop within its grace period (%s): it was cancelled "
            "inside a shielded scope, which ran past its grace",
            self._label(),
            member.record.name,
            _seconds(grace),
        )

    def _warn_cancelled(self, member: _Member, exc: BaseException) -> None:
        grace = member.grace if _cancel_called(member) else self._grace
        where, stack = _describe_stack(traceback.extract_tb(exc.__traceback__))
        member.record.where = where
        logger.warning(
            "%s: member %r did not stop within its grace period (%s) and was cancelled at %s%s",
            self._label(),
            member.record.name,
            _seconds(grace),
            where,
            stack,
        )
        observer = _observer
        if observer is not None:
            observer.event(self, member.record, "stopscope.cancelled", {"where": where})

    def _log_summary(self) -> None:
        """One INFO line per stop: reason, grace, members by outcome, the slowest."""
        if self._requested_at is None or not logger.isEnabledFor(logging.INFO):
            return
        records = self._records
        counts: dict[str, int] = {}
        for record in records:
            counts[record.outcome.value] = counts.get(record.outcome.value, 0) + 1
        tally = ", ".join(f"{n} {outcome}" for outcome, n in counts.items()) or "no members"
        timed = [r for r in records if r.latency is not None]
        slowest = ""
        if timed:
            worst = max(timed, key=lambda r: r.latency or 0.0)
            slowest = f"; slowest {worst.name!r} {(worst.latency or 0.0) * 1000:.1f} ms"
        took = ""
        ends = [r.exited_at for r in records if r.exited_at is not None]
        if ends:
            took = f" in {max(0.0, max(ends) - self._requested_at) * 1000:.1f} ms"
        logger.info(
            "%s stopped%s (reason: %s; grace %s): %d member(s): %s%s",
            self._label(),
            took,
            _reason_text(self._signal.reason),
            _seconds(self._grace),
            len(records),
            tally,
            slowest,
            extra={LOG_FIELD: scope_fields(self.report, self.name, self._grace)},
        )

    def _group(self) -> BaseExceptionGroup[BaseException]:
        message = f"{len(self._errors)} error(s) in {self._label()}"
        errors = [e for e in self._errors if isinstance(e, Exception)]
        if len(errors) == len(self._errors):
            return ExceptionGroup(message, errors)
        return BaseExceptionGroup(message, list(self._errors))

    def _release_stages(self) -> None:
        """Set every stage still running (the sequence ended early, or hard)."""
        if not self._signal._flag:
            return  # never stopped: no stage is either
        for stage in self._stages:
            if not stage.signal._flag:
                self._arm_stage(stage)
                stage.signal.set(self._signal.reason)

    def _finish(self) -> None:
        self._state = "closed"
        self._release_stages()
        if self._timer is not None:
            assert self._backend is not None
            self._backend.cancel_call(self._timer)
            self._timer = None
        if self._stop_call is not None:
            _remove_hook(self._signal, self._stop_call)
        if self._signal._flag and self._requested_at is None:
            self._stop_moment()  # set from elsewhere; the scope ended before it ran
        for member in list(self._live.values()):  # only after a hard exit
            self._exited(member, CANCELLED, None, self._cut_by(member))
        self._frozen = (
            self._signal.reason if self._signal._flag else None,
            self._requested_at,
        )
        if self._cut:  # for run(fail_if_cut_short=True)
            _members.scope_exited(self.report)
        self._log_summary()
        observer = _observer
        if observer is not None and self._requested_at is not None:
            observer.finished(self)
        if self._hard:
            cut = [r.name for r in self._records if r.outcome is Outcome.CANCELLED]
            if self._outside:
                logger.warning(
                    "%s was cancelled from outside (stop reason: %s); %d member(s) cut off%s",
                    self._label(),
                    _reason_text(self._signal.reason),
                    len(cut),
                    ": " + ", ".join(cut) if cut else "",
                )
            elif cut:
                logger.warning(
                    "%s was stopped at once, without grace, by %s; %d member(s) cut off: %s",
                    self._label(),
                    _reason_text(self._hard_cause),
                    len(cut),
                    ", ".join(cut),
                )
