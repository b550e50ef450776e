"""Ordered shutdown: TaskScope.stage() stops sections of the start order one by one,
the last created first, within the scope's one grace budget."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from stopscope import Outcome, StopSignal, TaskScope

pytestmark = pytest.mark.anyio

HANG_GUARD = 10.0


async def until_set(signal: StopSignal, name: str, log: list[str]) -> None:
    await signal.wait()
    log.append(f"{name} saw stop")
    await anyio.lowlevel.checkpoint()  # between seeing the stop and leaving
    log.append(f"{name} exited")


class TestOrder:
    async def test_stages_stop_last_created_first_each_after_the_previous(self) -> None:
        log: list[str] = []
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=60) as scope:
                writer = scope.stage("writer")
                scope.start_soon(until_set, writer, "writer", log)
                workers = scope.stage("workers")
                scope.start_soon(until_set, workers, "worker1", log)
                scope.start_soon(until_set, workers, "worker2", log)
                listener = scope.stage("listener")
                scope.start_soon(until_set, listener, "listener", log)
                await anyio.wait_all_tasks_blocked()
                assert not writer.is_set()
                assert not workers.is_set()
                assert not listener.is_set()
        # each stage saw its stop only after every member of the later stage had exited
        assert log.index("listener exited") < log.index("worker1 saw stop")
        assert log.index("listener exited") < log.index("worker2 saw stop")
        assert log.index("worker1 exited") < log.index("writer saw stop")
        assert log.index("worker2 exited") < log.index("writer saw stop")
        assert all(r.outcome is Outcome.STOPPED for r in scope.report.tasks)

    async def test_members_watching_the_scope_signal_stop_first(self) -> None:
        log: list[str] = []
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=60) as scope:
                scope.start_soon(until_set, scope.signal, "plain", log)
                last = scope.stage("last")
                scope.start_soon(until_set, last, "staged", log)
                await anyio.wait_all_tasks_blocked()
                scope.stop("go")
                await anyio.wait_all_tasks_blocked()
                assert "plain saw stop" in log
        assert log.index("plain saw stop") < log.index("staged saw stop")
        assert last.reason == "go"  # stages carry the scope's reason

    async def test_an_empty_stage_does_not_hold_up_the_next(self) -> None:
        log: list[str] = []
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=60) as scope:
                first = scope.stage("first")
                scope.start_soon(until_set, first, "first", log)
                empty = scope.stage("empty")
                await anyio.wait_all_tasks_blocked()
        assert empty.is_set()
        assert log == ["first saw stop", "first exited"]

    async def test_a_stage_created_while_stopping_is_stopped_at_once(self) -> None:
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=60) as scope:
                scope.stop("early")
                late = scope.stage("late")
                assert late.is_set()
                assert late.reason == "early"


class TestBudget:
    async def test_one_grace_budget_for_the_whole_sequence(self) -> None:
        log: list[str] = []
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=0.05) as scope:
                writer = scope.stage("writer")
                scope.start_soon(until_set, writer, "writer", log, name="writer")
                stuck = scope.stage("stuck")
                scope.start_soon(anyio.sleep_forever, name="stuck")
                await anyio.wait_all_tasks_blocked()
        # the stuck stage used up the budget: everything left was cancelled
        assert scope.report.by_name("stuck").outcome is Outcome.CANCELLED
        assert scope.report.by_name("writer").outcome is Outcome.CANCELLED
        assert "writer saw stop" not in log
        # and every stage's signal reads set once the scope has exited
        assert writer.is_set()
        assert stuck.is_set()

    async def test_hard_cancellation_sets_every_stage(self) -> None:
        with anyio.fail_after(HANG_GUARD):
            with anyio.CancelScope() as outer:
                async with TaskScope(grace=None) as scope:
                    first = scope.stage("first")
                    scope.start_soon(anyio.sleep_forever)
                    second = scope.stage("second")
                    scope.start_soon(anyio.sleep_forever)
                    await anyio.wait_all_tasks_blocked()
                    outer.cancel()
        assert outer.cancelled_caught
        assert first.is_set()
        assert second.is_set()


class TestLifecycle:
    async def test_finite_jobs_with_stages_finish_without_any_stop(self) -> None:
        done = anyio.Event()
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=60, stop_on_exit=False) as scope:
                stage = scope.stage("jobs")
                scope.start_soon(done.wait)
                done.set()
        assert not stage.is_set()  # nothing was stopped, so no stage was either
        assert scope.report.reason is None
        assert [r.outcome for r in scope.report.tasks] == [Outcome.FINISHED]

    async def test_stage_outside_the_block_is_refused(self) -> None:
        scope = TaskScope()
        with pytest.raises(RuntimeError, match="async with"):
            scope.stage("too early")
        async with scope:
            pass
        with pytest.raises(RuntimeError, match="after the scope exited"):
            scope.stage("too late")

    async def test_a_thread_member_watches_its_stage(self) -> None:
        seen: list[bool] = []

        def worker(signal: StopSignal) -> None:
            signal.wait_blocking()
            seen.append(True)

        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=60) as scope:
                stage = scope.stage("threads")
                scope.start_thread(worker, name="thread")
                await anyio.wait_all_tasks_blocked()
                scope.stop("bye")
        assert seen == [True]
        assert stage.is_set()
        assert scope.report.by_name("thread").outcome is Outcome.STOPPED
