"""The one judge of a member's outcome: recorded facts in, outcome and phase out.

Table-driven: each row is a situation a member can end in, the facts the scope records
for it, and the outcome and phase ``docs/semantics.md`` promises.  The fuzzer's model
(``tests/fuzz_model.py``) predicts the same outcomes independently, from plans.
"""

from __future__ import annotations

import itertools
import signal
from typing import NamedTuple

import pytest

from stopscope import Outcome
from stopscope._judge import (
    CANCELLED,
    DEFERRED,
    GRACE,
    HARD,
    NOBODY,
    NOT_REACHED,
    OUTSIDE,
    RAISED,
    REACHED,
    RETURNED,
    TASK,
    clean_stop_status,
    judge,
)
from stopscope._report import Phase


class Row(NamedTuple):
    ended: int
    asked: bool
    caused: bool
    cut_by: int
    reach: int
    cut: int
    abandoned: bool
    outcome: Outcome
    phase: Phase


def row(
    ended: int,
    outcome: Outcome,
    phase: Phase,
    *,
    asked: bool = True,
    caused: bool = False,
    cut_by: int = NOBODY,
    reach: int = NOT_REACHED,
    cut: int = 0,
    abandoned: bool = False,
) -> Row:
    return Row(ended, asked, caused, cut_by, reach, cut, abandoned, outcome, phase)


TABLE = {
    # returned by itself
    "finished before any stop": row(RETURNED, Outcome.FINISHED, "running", asked=False),
    "returned within grace": row(RETURNED, Outcome.STOPPED, "grace"),
    "woken by the stop, returned before the cancellation reached it": row(
        RETURNED, Outcome.STOPPED, "grace", cut_by=GRACE, reach=NOT_REACHED
    ),
    # returned although cancelled
    "caught the cancellation and returned": row(
        RETURNED, Outcome.CANCELLED, "after-cancel", cut_by=GRACE, reach=REACHED
    ),
    "shielded cleanup overran its grace": row(
        RETURNED, Outcome.CANCELLED, "cancelled", cut_by=GRACE, reach=DEFERRED
    ),
    "returned after a hard stop": row(RETURNED, Outcome.CANCELLED, "cancelled", cut_by=HARD),
    "returned inside an outside cancellation": row(
        RETURNED, Outcome.CANCELLED, "cancelled-from-outside", cut_by=OUTSIDE
    ),
    # returned, but something of it was cut
    "a server that cut requests": row(RETURNED, Outcome.CANCELLED, "cancelled", cut=3),
    "a server that cut requests, not reached by the cancellation": row(
        RETURNED, Outcome.CANCELLED, "cancelled", cut=1, cut_by=GRACE, reach=NOT_REACHED
    ),
    # raised the cancellation
    "cancelled after its grace": row(CANCELLED, Outcome.CANCELLED, "cancelled", cut_by=GRACE),
    "cancelled at once by a hard stop": row(CANCELLED, Outcome.CANCELLED, "cancelled", cut_by=HARD),
    "cancelled from outside": row(
        CANCELLED, Outcome.CANCELLED, "cancelled-from-outside", cut_by=OUTSIDE
    ),
    "its own task cancelled (Task.cancel())": row(
        CANCELLED, Outcome.CANCELLED, "cancelled-from-outside", cut_by=TASK
    ),
    "a thread left behind": row(
        CANCELLED, Outcome.ABANDONED, "cancelled", cut_by=GRACE, abandoned=True
    ),
    "a thread left behind by an outside cancellation": row(
        CANCELLED, Outcome.ABANDONED, "cancelled-from-outside", cut_by=OUTSIDE, abandoned=True
    ),
    # raised an error
    "failed before any stop, and so requested it": row(
        RAISED, Outcome.FAILED, "running", caused=True
    ),
    "failed before any stop, not the first": row(RAISED, Outcome.FAILED, "running", asked=False),
    "failed within grace": row(RAISED, Outcome.FAILED, "grace"),
    "a process that exited badly after its stop": row(RAISED, Outcome.FAILED, "grace", cut=0),
    "failed while being cancelled": row(RAISED, Outcome.FAILED, "cancelled", cut_by=GRACE),
    "failed while being cancelled from outside": row(
        RAISED, Outcome.FAILED, "cancelled-from-outside", cut_by=OUTSIDE
    ),
}


@pytest.mark.parametrize("case", list(TABLE.values()), ids=list(TABLE))
def test_the_table(case: Row) -> None:
    got = judge(
        case.ended, case.asked, case.caused, case.cut_by, case.reach, case.cut, case.abandoned
    )
    assert got == (case.outcome, case.phase)


ALL_FACTS = list(
    itertools.product(
        (RETURNED, CANCELLED, RAISED),
        (False, True),
        (False, True),
        (NOBODY, GRACE, HARD, OUTSIDE, TASK),
        (NOT_REACHED, REACHED, DEFERRED),
        (0, 2),
        (False, True),
    )
)


@pytest.mark.parametrize("facts", ALL_FACTS)
def test_stopped_is_a_promise(facts: tuple[int, bool, bool, int, int, int, bool]) -> None:
    """STOPPED only for a member that returned by itself after a stop, with nothing cut
    and no cancellation that reached it or that a shield held off."""
    ended, asked, _, cut_by, reach, cut, abandoned = facts
    outcome, phase = judge(*facts)
    if outcome is Outcome.STOPPED:
        assert ended == RETURNED
        assert asked
        assert not cut
        assert not abandoned
        assert cut_by in (NOBODY, GRACE)
        assert cut_by == NOBODY or reach == NOT_REACHED
        assert phase == "grace"


@pytest.mark.parametrize("facts", ALL_FACTS)
def test_every_verdict_is_consistent(facts: tuple[int, bool, bool, int, int, int, bool]) -> None:
    ended, asked, _, cut_by, reach, cut, abandoned = facts
    outcome, phase = judge(*facts)
    assert outcome is not Outcome.RUNNING
    if ended == RAISED:  # an error is never hidden behind another outcome
        assert outcome is Outcome.FAILED
    elif abandoned:
        assert outcome is Outcome.ABANDONED
    elif ended == CANCELLED:
        assert outcome is Outcome.CANCELLED
    if outcome is Outcome.FINISHED:  # finished means: before any stop, nothing cut
        assert not asked
        assert not cut
        assert phase == "running"
    if phase == "after-cancel":  # accused only of catching what reached it
        assert ended == RETURNED
        assert cut_by == GRACE
        assert reach == REACHED
    if phase == "cancelled-from-outside":
        assert cut_by in (OUTSIDE, TASK)


class TestProcessStatus:
    @pytest.mark.parametrize(
        ("status", "service_signal", "clean"),
        [
            (0, None, True),
            (-signal.SIGTERM, None, True),  # died of the signal we sent
            (-signal.SIGKILL, None, False),  # the OOM killer, not us
            (1, None, False),
            (128 + signal.SIGTERM, None, False),  # "ended by SIGTERM": systemd fails it
            (128 + signal.SIGTERM, signal.SIGTERM, False),
            (-signal.SIGINT, signal.SIGINT, True),  # the service's own Ctrl-C reached it
            (-signal.SIGINT, None, False),
            (128 + signal.SIGINT, signal.SIGINT, False),
        ],
    )
    def test_clean_stop_status(self, status: int, service_signal: int | None, clean: bool) -> None:
        assert clean_stop_status(status, service_signal) is clean
