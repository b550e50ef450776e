"""Third adversarial review of the core: defects proved by a script, kept as tests.

A stop requested by a plain function on the main thread (what a signal handler is,
and what ``stop_on_signals`` and friends call) hands the scope's loop work to the
loop: ``_on_stop`` runs a moment later.  The stage sequence may run before it.
"""

from __future__ import annotations

import anyio
import pytest

from stopscope import Outcome, StopSignal, TaskScope

pytestmark = pytest.mark.anyio

HANG_GUARD = 15.0
#: longer than the member's own grace, far shorter than the scope's budget
NAP = 2.0


async def _ignores_its_grace(signal: StopSignal) -> None:
    await signal.wait()
    await anyio.sleep(NAP)  # past its own grace: it must be cancelled before


class TestStopFromAPlainFunction:
    async def test_a_staged_member_gets_its_own_grace(self) -> None:
        scope = TaskScope(grace=60)

        def stop() -> None:  # a plain function: the scope's loop work runs later
            scope.stop("deploy")

        with anyio.fail_after(HANG_GUARD):
            async with scope:
                only = scope.stage("only")
                scope.start_soon(_ignores_its_grace, only, name="stubborn", grace=0.05)
                await anyio.wait_all_tasks_blocked()
                stop()
        record = scope.report.by_name("stubborn")
        # its own grace ran out long before its nap ended: it was cancelled
        assert (record.outcome, record.phase) == (Outcome.CANCELLED, "cancelled")

    async def test_a_member_with_grace_started_in_a_stage_made_after_the_stop(self) -> None:
        scope = TaskScope(grace=60)

        def stop() -> None:
            scope.stop("deploy")

        with anyio.fail_after(HANG_GUARD):
            async with scope:
                stop()
                late = scope.stage("late")  # made while stopping: stopped at once
                scope.start_soon(_ignores_its_grace, late, name="late", grace=0.05)
        record = scope.report.by_name("late")
        assert (record.outcome, record.phase) == (Outcome.CANCELLED, "cancelled")
