"""What a :class:`~stopscope.TaskScope` says about its shutdown."""

from __future__ import annotations

import contextvars
import enum
import functools
import math
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

__all__ = ["Outcome", "ShutdownReport", "StopReason", "TaskRecord"]


class Outcome(enum.Enum):
    """How one member of a scope ended.

    .. versionadded:: 0.1
    """

    #: returned before any stop was requested (a finite job that completed)
    FINISHED = "finished"
    #: returned after stop was requested, within its grace period
    STOPPED = "stopped"
    #: still running when its grace period ran out, so it was cancelled
    CANCELLED = "cancelled"
    #: raised an exception (see :attr:`TaskRecord.error`)
    FAILED = "failed"
    #: a thread still running after grace; threads cannot be cancelled, so it was left behind
    ABANDONED = "abandoned"
    #: still running (only seen in a report read before the scope exited)
    RUNNING = "running"

    def __repr__(self) -> str:
        return f"Outcome.{self.name}"


class StopReason(enum.Enum):
    """Reasons a scope sets by itself (other reasons are whatever was passed to ``stop()``).

    .. versionadded:: 0.1
    """

    #: the ``async with`` body of a scope with ``stop_on_exit=True`` ended normally
    BODY_EXITED = "body exited"
    #: the scope was cancelled from outside (hard cancellation)
    CANCELLED = "cancelled from outside"

    def __repr__(self) -> str:
        return f"StopReason.{self.name}"


#: the phase of the shutdown a member left in
Phase = Literal["running", "grace", "cancelled", "after-cancel", "cancelled-from-outside"]


@dataclass(slots=True, eq=False)
class TaskRecord:
    """One member of a scope: its name, how it ended, and how long it took to stop.

    Records are filled in while the scope runs and are final once the scope has exited.
    """

    #: the name given to ``start_soon()`` / ``start()``, or the callable's qualified name
    name: str
    #: ``"task"``, ``"thread"``, ``"process"`` or ``"server"`` (a server member)
    kind: str = "task"
    outcome: Outcome = Outcome.RUNNING
    #: seconds from the stop request to the member's exit; ``None`` if it finished first
    latency: float | None = None
    #: the exception the member raised, if it failed
    error: BaseException | None = None
    #: the phase it left in: before any stop, within grace, after being cancelled, only
    #: after a second look (it kept running after cancellation), or cut off by a
    #: cancellation from outside the scope (hard, no grace)
    phase: Phase = "running"
    #: a subprocess member's exit code (negative: killed by that signal)
    exit_code: int | None = None
    #: monotonic time of the exit
    exited_at: float | None = field(default=None, repr=False)
    #: how many of its requests, connections or cleanups its stop cut short (a server
    #: member adds to it, ``current_record().cut += n``, once they have unwound); a
    #: member that cut anything is never ``STOPPED``
    cut: int = 0
    #: where it was stuck when the scope cancelled it or saw it lag after cancellation
    #: (``file.py:12 in read(): await stream.receive()``); ``None`` if not known
    where: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        """One line: ``poller (task): stopped in 0.1 ms``."""
        text = f"{self.name} ({self.kind}): {_outcome_text(self)}"
        if self.latency is not None:
            text += f" in {_ms(self.latency)} ms"
        if self.error is not None:
            text += f": {_error_text(self.error)}"
        return text

    def to_dict(self) -> dict[str, Any]:
        """The record as plain JSON types (for ``json.dumps``, logs, metrics).

        ``outcome`` is the outcome's value (``"stopped"``), ``latency`` and ``exited_at``
        are seconds (``None`` when unknown), ``error`` is the exception's ``repr()`` and
        ``error_type`` its qualified class name (both ``None`` if it did not fail);
        ``where`` is where it was stuck when it was cancelled (``None``: not known).

        .. versionadded:: 0.1
        """
        error = self.error
        return {
            "name": self.name,
            "kind": self.kind,
            "outcome": self.outcome._value_,  # .value is a descriptor: 3x slower
            "latency": self.latency,
            "error": None if error is None else _safe(repr, error),
            "error_type": None if error is None else _type_name(error),
            "phase": self.phase,
            "exit_code": self.exit_code,
            "exited_at": self.exited_at,
            "cut": self.cut,
            "where": self.where,
        }


@dataclass(frozen=True, slots=True)
class ShutdownReport:
    """Who did what when a scope stopped. Available as ``scope.report`` after exit."""

    #: why stop was requested: the value passed to ``stop()``, a member's exception,
    #: the parent signal's reason, an OS signal, or a :class:`StopReason`; ``None`` if
    #: stop was never requested (every member finished on its own)
    reason: object
    #: when stop was requested, on the :func:`time.monotonic` clock; ``None`` if never
    requested_at: float | None
    #: one record per member, in start order
    tasks: tuple[TaskRecord, ...]

    def by_name(self, name: str) -> TaskRecord:
        """Return the record of the member called *name*.

        :raises KeyError: if no member has that name
        :raises LookupError: if several members have it (give them distinct ``name=``
            values, or look through :attr:`tasks`)
        """
        found = [record for record in self.tasks if record.name == name]
        if len(found) == 1:
            return found[0]
        if not found:
            raise KeyError(name)
        raise LookupError(
            f"{len(found)} members are named {name!r}: give them distinct names "
            f"(name=...), or look through report.tasks"
        )

    @property
    def needed_cancellation(self) -> tuple[TaskRecord, ...]:
        """The members that did not stop within their grace period."""
        return tuple(r for r in self.tasks if r.outcome in (Outcome.CANCELLED, Outcome.ABANDONED))

    def __str__(self) -> str:
        """A small aligned table, one row per member, under a line with the reason::

            stop reason: 'deploy' (requested at 7316.204 on the monotonic clock)
            name       kind    outcome    latency ms  error
            ---------  ------  ---------  ----------  -----
            producer   task    stopped           0.2
            heartbeat  thread  stopped          12.6
            consumer   task    cancelled      2001.3

        Latency is from the stop request to the member's exit (``-``: it finished
        before any stop); ``print(scope.report)`` shows it.

        .. versionadded:: 0.1
        """
        if self.requested_at is None:
            head = "stop never requested (every member finished on its own)"
        else:
            head = (
                f"stop reason: {_reason_text(self.reason)} "
                f"(requested at {self.requested_at:.3f} on the monotonic clock)"
            )
        if not self.tasks:
            return f"{head}\n(no members)"
        header = ("name", "kind", "outcome", "latency ms", "error")
        rows = [
            (
                r.name,
                r.kind,
                _outcome_text(r),
                "-" if r.latency is None else _ms(r.latency),
                "" if r.error is None else _error_text(r.error),
            )
            for r in self.tasks
        ]
        widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

        def line(cells: tuple[str, ...]) -> str:
            padded = [
                cell.rjust(widths[i]) if i == 3 else cell.ljust(widths[i])
                for i, cell in enumerate(cells)
            ]
            return "  ".join(padded).rstrip()

        rule = tuple("-" * w for w in widths)
        return "\n".join([head, line(header), line(rule), *(line(row) for row in rows)])

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON types: ``json.dumps(scope.report.to_dict())`` works.

        ``reason`` stays as it is when it is a string, number, boolean or ``None``; an
        enum member becomes ``"Class.NAME"`` (``"StopReason.BODY_EXITED"``,
        ``"Signals.SIGTERM"``), an exception its ``repr()``, anything else ``str()``.
        ``tasks`` is a list of :meth:`TaskRecord.to_dict`.

        .. versionadded:: 0.1
        """
        return {
            "reason": _reason_json(self.reason),
            "requested_at": self.requested_at,
            "tasks": [r.to_dict() for r in self.tasks],
        }


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def _type_name(error: BaseException) -> str:
    cls = type(error)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _error_text(error: BaseException) -> str:
    """``ValueError: boom``, as the last line of a traceback reads, on one line."""
    message = str(error).replace("\n", " ")
    name = type(error).__name__
    return f"{name}: {message}" if message else name


def _outcome_text(record: TaskRecord) -> str:
    if record.phase == "cancelled-from-outside":
        return f"{record.outcome.value} (from outside)"
    if record.phase == "after-cancel":
        return f"{record.outcome.value} (returned late)"
    return record.outcome.value


def _reason_text(reason: object) -> str:
    if isinstance(reason, enum.Enum):
        return f"{type(reason).__name__}.{reason.name}"
    if isinstance(reason, BaseException):
        return _error_text(reason)
    return repr(reason)


def _reason_json(reason: object) -> object:
    if isinstance(reason, enum.Enum):  # before int: signal.Signals is an IntEnum
        return f"{type(reason).__name__}.{reason.name}"
    if reason is None or type(reason) in (str, bool, int):
        return reason
    if type(reason) is float and math.isfinite(reason):
        return reason
    if isinstance(reason, BaseException):
        return _safe(repr, reason)
    return _safe(str, reason)


def _safe(text: Callable[[object], str], value: object) -> str:
    """``text(value)``, or a stand-in naming the type if that raises: the record of a
    stop must not fail the stop, nor hide a member's error behind its own."""
    try:
        return text(value)
    except Exception as exc:
        kind = type(value).__name__
        return f"<{kind} object: its {text.__name__}() raised {type(exc).__name__}>"


# ----------------------------------------------------------- the member running now


class MemberFacts:
    """What is recorded about one member while it runs: facts, never an outcome.

    The scope writes most of them; a member of another kind writes its own through
    :func:`current_facts` (``abandoned`` for a thread left behind, ``stop_seen`` for a
    process that the service's own stop signal reached first, ``returned_first`` for a
    thread that returned before its member was cancelled).  When the member has
    exited, ``_judge.judge`` turns them into the record's outcome and phase.
    """

    __slots__ = ("abandoned", "record", "returned_asked", "returned_first", "stop_seen")

    def __init__(self, record: TaskRecord) -> None:
        self.record = record
        #: a thread member still running after its grace, left behind
        self.abandoned = False
        #: a process member ended by a signal the service is stopping on, before its
        #: own stop came (it was stopped, not failed)
        self.stop_seen = False
        #: a thread member whose function had returned before the cancellation reached
        #: its member task: the cancellation only cut the delivery of its result
        self.returned_first = False
        #: ...and whether its stop had been requested when it returned
        self.returned_asked = False


_current_member: Final[contextvars.ContextVar[MemberFacts]] = contextvars.ContextVar(
    "stopscope_current_member"
)


def current_record() -> TaskRecord:
    """Return the :class:`TaskRecord` of the scope member whose task is running.

    For code that runs a member of another kind (a thread, a subprocess, a server)
    inside a task started with ``start_soon``/``start``: it may set ``kind`` and
    ``exit_code``, and add to ``cut`` the requests or connections it cut short.  The
    outcome and phase are the scope's to decide, from facts, when the member exits.

    :raises RuntimeError: outside a member of a :class:`TaskScope`
    """
    try:
        return _current_member.get().record
    except LookupError:
        raise RuntimeError("current_record() must be called from a member of a TaskScope") from None


def current_facts() -> MemberFacts:
    """The facts of the scope member whose task is running (for member kinds).

    :raises RuntimeError: outside a member of a :class:`TaskScope`
    """
    try:
        return _current_member.get()
    except LookupError:
        raise RuntimeError("current_facts() must be called from a member of a TaskScope") from None


_FunctionType: Final = types.FunctionType


def _callable_name(func: Callable[..., Any]) -> str:
    """The name a member gets in the report when none is given."""
    if type(func) is _FunctionType:
        return func.__qualname__
    while isinstance(func, functools.partial):
        func = func.func
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    return name if isinstance(name, str) else repr(func)


# ------------------------------------------------- the structured record, the phases

#: the one field the structured log records carry (``extra={"stopscope": {...}}``): a
#: single namespaced key, so that a JSON formatter puts the whole report under one name
#: and nothing collides with another library's extras or a LogRecord attribute
LOG_FIELD: Final = "stopscope"


def _seconds_json(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def scope_fields(report: ShutdownReport, name: str | None, grace: float | None) -> dict[str, Any]:
    """The structured form of a scope's stop: its report, and what an operator
    filters on first (the signal, the outcomes counted, what was cut, how long).

    One pass over the members: it runs on the stop's path when INFO is enabled."""
    tasks: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    cut = 0
    last: float | None = None
    for record in report.tasks:
        entry = record.to_dict()
        tasks.append(entry)
        outcome = entry["outcome"]
        counts[outcome] = counts.get(outcome, 0) + 1
        cut += record.cut
        ended = record.exited_at
        if ended is not None and (last is None or ended > last):
            last = ended
    requested = report.requested_at
    took = None if requested is None or last is None else max(0.0, last - requested)
    reason = report.reason
    return {
        "event": "scope.stopped",
        "scope": name,
        "reason": _reason_json(reason),
        "signal": _signal_of(reason),
        "grace": grace,
        "requested_at": requested,
        "took": _seconds_json(took),
        "members": len(tasks),
        "outcomes": counts,
        "cut": cut,
        "tasks": tasks,
    }


def _signal_of(reason: object) -> str | None:
    """``"SIGTERM"`` when the stop's reason is an OS signal, else ``None``."""
    if isinstance(reason, enum.Enum) and type(reason).__name__ == "Signals":
        return reason.name
    return None


class Timeline:
    """The phases of one stop and the orchestrator's budget they are measured against.

    Each phase is a duration in seconds, recorded once it is over by what runs it (the
    drain delay and the HTTP drain by a server member, the background stop and the
    lifespan shutdown by a ``GracefulApp``, a telemetry flush by whatever flushes).  A
    phase recorded twice (two servers drained side by side) keeps the longer time.  A
    phase that something ended early (a hard stop during the drain delay) is marked
    cut short.
    """

    __slots__ = ("budget", "cut", "phases", "reserve", "started_at")

    def __init__(self, budget: float | None, reserve: float | None) -> None:
        #: the orchestrator's limit from the stop request to SIGKILL (``None``: not given)
        self.budget = budget
        #: what the budget keeps after the grace (``None``: not checked)
        self.reserve = reserve
        #: ``time.monotonic()`` when the stop began (``None``: not yet)
        self.started_at: float | None = None
        #: phase name -> seconds, in the order they were first recorded
        self.phases: dict[str, float] = {}
        #: the phases cut short, in the order they were
        self.cut: list[str] = []

    def start(self, at: float | None = None) -> None:
        """Note when the stop began (the first call wins)."""
        if self.started_at is None:
            self.started_at = time.monotonic() if at is None else at

    def add(self, phase: str, seconds: float) -> None:
        """Record how long ``phase`` took."""
        seconds = max(0.0, seconds)
        self.phases[phase] = max(seconds, self.phases.get(phase, 0.0))

    def add_cut(self, phase: str, seconds: float) -> None:
        """Record how long ``phase`` ran before something ended it early."""
        self.add(phase, seconds)
        if phase not in self.cut:
            self.cut.append(phase)

    def used(self, now: float | None = None) -> float | None:
        """Seconds from the stop's start to ``now`` (``None``: the stop has not begun)."""
        if self.started_at is None:
            return None
        return max(0.0, (time.monotonic() if now is None else now) - self.started_at)

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        """``budget``, ``reserve``, ``phases`` (name -> seconds), ``phases_cut_short``
        (names), ``used`` (seconds from the stop request to now) and ``left`` (the
        budget less ``used``), as plain JSON types (``None`` for what is not known)."""
        used = self.used(now)
        left = None if self.budget is None or used is None else self.budget - used
        return {
            "budget": self.budget,
            "reserve": self.reserve,
            "phases": {name: _seconds_json(s) for name, s in self.phases.items()},
            "phases_cut_short": list(self.cut),
            "used": _seconds_json(used),
            "left": _seconds_json(left),
        }

    def text(self, now: float | None = None) -> str:
        """``budget 30 s: drain delay 3.00 s, HTTP drain 0.71 s; 3.7 s used, 26.3 s left``."""
        parts = ", ".join(
            f"{name} {s:.2f} s" + (" (cut short)" if name in self.cut else "")
            for name, s in self.phases.items()
        )
        used = self.used(now)
        head = "no budget given" if self.budget is None else f"budget {self.budget:g} s"
        text = f"{head}: {parts or 'no phase recorded'}"
        if used is not None:
            text += f"; {_short(used)} s used"
            if self.budget is not None:
                text += f", {_short(self.budget - used)} s left"
        return text


def _short(seconds: float) -> str:
    """Three significant digits, never in exponent form (``1234 s``, not ``1.23e+03``)."""
    return f"{seconds:.3g}" if abs(seconds) < 1000 else f"{seconds:.0f}"


#: the timeline of the stop that the running code belongs to (run() and GracefulApp set
#: it; a server member records its drain phases in it)
_timeline: Final[contextvars.ContextVar[Timeline | None]] = contextvars.ContextVar(
    "stopscope_timeline", default=None
)


def current_timeline() -> Timeline | None:
    """The :class:`Timeline` of the stop the running code belongs to, if any."""
    return _timeline.get()
