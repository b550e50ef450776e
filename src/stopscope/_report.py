"""What a :class:`~stopscope.TaskScope` says about its shutdown."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal

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
    #: ``"task"``, ``"thread"`` or ``"process"``
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
        """
        for record in self.tasks:
            if record.name == name:
                return record
        raise KeyError(name)

    @property
    def needed_cancellation(self) -> tuple[TaskRecord, ...]:
        """The members that did not stop within their grace period."""
        return tuple(r for r in self.tasks if r.outcome in (Outcome.CANCELLED, Outcome.ABANDONED))
