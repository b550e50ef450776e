"""The one place a member's outcome is decided: recorded facts in, outcome and phase out.

While a member runs, the scope and the member record facts only (plain attribute
writes on the member's :class:`~stopscope._report.MemberFacts`).  When the member has
exited, :func:`judge` turns them into the :class:`~stopscope.Outcome` and phase of its
record.  Nothing else decides an outcome: the warnings and the count of members that
needed cancellation are read from what :func:`judge` returned.

The facts, in the order :func:`judge` takes them:

``ended``
    how the member's coroutine ended: :data:`RETURNED`, :data:`CANCELLED` (it raised
    the backend's cancellation and nothing else) or :data:`RAISED` (an error, possibly
    together with a cancellation).
``asked``
    a stop had been requested before it exited (the scope's, or a stop of the service
    that reached a process member first).
``caused``
    its own error is what requested the stop.
``cut_by``
    who issued a cancellation that covered it before it exited: :data:`NOBODY`,
    :data:`GRACE` (its grace ran out: the scope's budget or its own ``grace=``),
    :data:`HARD` (a ``KeyboardInterrupt``/``SystemExit`` stopped the scope at once),
    :data:`OUTSIDE` (an enclosing cancel scope), :data:`TASK` (its own task was
    cancelled natively, ``Task.cancel()``) or :data:`STARTER` (the caller of
    ``start()`` was cancelled before the member called ``started()``).
``reach``
    for a member that returned although the scope cancelled it: whether the
    cancellation reached its code (:data:`REACHED`: it caught it), was held off by a
    shield it was in (:data:`DEFERRED`: its shielded cleanup overran its grace), or
    never reached it (:data:`NOT_REACHED`: it was already on its way out, woken by
    the stop, and returned before its next checkpoint).
``cut``
    how many of its requests, connections or cleanups were cut short
    (:attr:`TaskRecord.cut <stopscope.TaskRecord.cut>`, added to by server members).
``abandoned``
    a thread member still running after its grace, left behind.
"""

from __future__ import annotations

import signal as _signal
from typing import Final

from ._backends._base import DEFERRED, NOT_REACHED, REACHED
from ._report import Outcome, Phase

__all__ = [
    "CANCELLED",
    "DEFERRED",
    "GRACE",
    "HARD",
    "NOBODY",
    "NOT_REACHED",
    "OUTSIDE",
    "RAISED",
    "REACHED",
    "RETURNED",
    "STARTER",
    "TASK",
    "clean_stop_status",
    "judge",
]

# how the member's coroutine ended
RETURNED: Final = 0
CANCELLED: Final = 1
RAISED: Final = 2

# who cancelled it (before it exited)
NOBODY: Final = 0
GRACE: Final = 1
HARD: Final = 2
OUTSIDE: Final = 3
TASK: Final = 4
STARTER: Final = 5

# whether a cancellation by the scope reached a member that returned: NOT_REACHED,
# REACHED, DEFERRED (defined beside the backends, which tell them)

_FINISHED: Final = Outcome.FINISHED
_STOPPED: Final = Outcome.STOPPED
_CANCELLED: Final = Outcome.CANCELLED
_FAILED: Final = Outcome.FAILED
_ABANDONED: Final = Outcome.ABANDONED

_STOPPED_IN_GRACE: Final[tuple[Outcome, Phase]] = (_STOPPED, "grace")


def _cut_phase(cut_by: int) -> Phase:
    """The phase of a member cut off by ``cut_by``."""
    return "cancelled-from-outside" if cut_by >= OUTSIDE else "cancelled"


def judge(
    ended: int,
    asked: bool,
    caused: bool,
    cut_by: int,
    reach: int,
    cut: int,
    abandoned: bool,
) -> tuple[Outcome, Phase]:
    """Turn the facts recorded about one member into its outcome and phase.

    Pure: the same facts always give the same answer, whatever the backend.  See the
    module docstring for what each fact means; ``docs/semantics.md`` for the rules.
    """
    if ended == RETURNED and not cut_by and not cut and not abandoned:
        # the common case, first: returned by itself
        return _STOPPED_IN_GRACE if asked else (_FINISHED, "running")
    if ended == RAISED:
        if caused:  # its failure requested the stop: it left while running
            return _FAILED, "running"
        if cut_by:  # it raised while being cancelled
            return _FAILED, _cut_phase(cut_by)
        return (_FAILED, "grace") if asked else (_FAILED, "running")
    if abandoned:  # a thread cannot be cancelled: it was left behind
        return _ABANDONED, _cut_phase(cut_by or GRACE)
    if ended == CANCELLED:
        return _CANCELLED, _cut_phase(cut_by or GRACE)
    # it returned, and something was cut, or a cancellation was issued to it
    if cut_by >= OUTSIDE:  # it returned inside a cancellation from outside
        return _CANCELLED, "cancelled-from-outside"
    if cut_by == HARD:  # stopped at once by a BaseException: cut, no accusation
        return _CANCELLED, "cancelled"
    if cut_by == GRACE:
        if reach == REACHED:  # it caught the cancellation, then returned
            return _CANCELLED, "after-cancel"
        if reach == DEFERRED:  # its shielded cleanup ran past its grace
            return _CANCELLED, "cancelled"
    # the cancellation never reached it: it returned by itself
    if cut:  # ...but cut requests or connections short: not a clean stop
        return _CANCELLED, "cancelled"
    return _STOPPED_IN_GRACE if asked else (_FINISHED, "running")


_SIGTERM: Final = int(_signal.SIGTERM)


def clean_stop_status(returncode: int, service_signal: int | None = None) -> bool:
    """Whether a process member that exited after its stop exited cleanly.

    Clean: status 0, killed by the SIGTERM the member sent (``-SIGTERM``), or killed by
    ``service_signal``, a signal the service is stopping on that reached the child too
    (a group's Ctrl-C).  Any other status, ``128 + n`` included (a shell's or JVM's
    "ended by signal n", and what :func:`stopscope.run` itself exits with when it had
    to cut work short), is a failure, as systemd counts it by default.
    """
    if returncode == 0 or returncode == -_SIGTERM:
        return True
    return service_signal is not None and returncode == -service_signal
