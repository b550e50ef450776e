"""The anyio semantics members rely on, whatever task group a TaskScope sits on.

A TaskScope may run its members in anyio's task group or in a native one (a bare trio
nursery, bare asyncio tasks): these tests pin what a member sees either way, on all
three backends.  Ordering comes from events and ``anyio.wait_all_tasks_blocked()``;
``anyio.fail_after`` only guards against hangs.
"""

from __future__ import annotations

import sys

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import pytest
from anyio.abc import TaskStatus

from stopscope import Outcome, StopSignal, TaskScope

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup  # type: ignore[import-not-found, unused-ignore]

pytestmark = pytest.mark.anyio

#: seconds; only a guard against hangs, never a timing assertion
HANG_GUARD = 10.0
#: a grace period no test ever reaches
LONG_GRACE = 60.0


async def test_outer_cancel_reaches_members_while_the_host_is_shielded() -> None:
    reached = anyio.Event()

    async def deaf(signal: StopSignal) -> None:
        try:
            await anyio.sleep_forever()  # ignores the signal: only a cancel ends it
        except anyio.get_cancelled_exc_class():
            reached.set()
            raise

    with anyio.fail_after(HANG_GUARD):
        with anyio.CancelScope() as outer:
            async with TaskScope(grace=None) as scope:
                scope.start_soon(deaf, scope.signal, name="deaf")
                await anyio.wait_all_tasks_blocked()
                with anyio.CancelScope(shield=True):
                    outer.cancel()
                    with anyio.fail_after(HANG_GUARD):
                        await reached.wait()  # the member got it, not the host
    assert scope.report.tasks[0].outcome is Outcome.CANCELLED


async def test_outer_deadline_reaches_members() -> None:
    reached = anyio.Event()

    async def deaf(signal: StopSignal) -> None:
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            reached.set()
            raise

    with anyio.fail_after(HANG_GUARD):
        with anyio.CancelScope() as outer:
            async with TaskScope(grace=None) as scope:
                scope.start_soon(deaf, scope.signal, name="deaf")
                await anyio.wait_all_tasks_blocked()
                with anyio.CancelScope(shield=True):
                    outer.deadline = anyio.current_time()  # expires now
                    with anyio.fail_after(HANG_GUARD):
                        await reached.wait()
    assert scope.report.tasks[0].outcome is Outcome.CANCELLED


async def test_member_sees_the_outer_deadline() -> None:
    seen: list[float] = []
    go = anyio.Event()

    async def watcher(signal: StopSignal) -> None:
        seen.append(anyio.current_effective_deadline())
        await go.wait()
        seen.append(anyio.current_effective_deadline())
        await signal.wait()

    # the outer deadline is the hang guard: no other scope may set an earlier one
    with anyio.CancelScope(deadline=anyio.current_time() + HANG_GUARD) as outer:
        async with TaskScope(grace=LONG_GRACE) as scope:
            scope.start_soon(watcher, scope.signal)
            await anyio.wait_all_tasks_blocked()
            first = outer.deadline
            outer.deadline = anyio.current_time() + 2 * HANG_GUARD  # moved later
            go.set()
            await anyio.wait_all_tasks_blocked()
    assert not outer.cancel_called
    assert seen == [first, outer.deadline]
    assert scope.report.tasks[0].outcome is Outcome.STOPPED


async def test_body_scope_deadline_does_not_reach_members() -> None:
    seen: list[float] = []

    async def watcher(signal: StopSignal) -> None:
        seen.append(anyio.current_effective_deadline())
        await signal.wait()

    with anyio.fail_after(HANG_GUARD):
        guard = anyio.current_effective_deadline()
        async with TaskScope(grace=LONG_GRACE) as scope:
            with anyio.CancelScope(deadline=anyio.current_time() - 1):  # expired
                scope.start_soon(watcher, scope.signal)  # members belong to the scope
                await anyio.wait_all_tasks_blocked()
            await anyio.wait_all_tasks_blocked()
    assert seen == [guard]  # fail_after's deadline, not the body's expired one
    assert scope.report.tasks[0].outcome is Outcome.STOPPED


async def test_shield_inside_a_member_holds_against_the_scope_cancel() -> None:
    held: list[bool] = []

    async def shielded(signal: StopSignal) -> None:
        with anyio.CancelScope(shield=True):
            await signal.wait()  # grace 0: the stop and the cancel come together
            await anyio.lowlevel.checkpoint()
            held.append(True)
        await anyio.sleep_forever()  # outside the shield: cancelled here

    with anyio.fail_after(HANG_GUARD):
        async with TaskScope(grace=0) as scope:
            scope.start_soon(shielded, scope.signal, name="shielded")
            await anyio.wait_all_tasks_blocked()
    assert held == [True]
    assert scope.report.tasks[0].outcome is Outcome.CANCELLED


async def test_cancel_scopes_nested_in_members() -> None:
    caught: list[bool] = []
    first_done = anyio.Event()

    async def nested(signal: StopSignal) -> None:
        with anyio.move_on_after(0) as timeout:  # its own cancellation: caught
            await anyio.sleep_forever()
        caught.append(timeout.cancelled_caught)
        first_done.set()
        with anyio.CancelScope() as inner:  # the scope's cancel: not caught here
            try:
                await anyio.sleep_forever()
            finally:
                caught.append(inner.cancelled_caught or inner.cancel_called)

    with anyio.fail_after(HANG_GUARD):
        async with TaskScope(grace=0) as scope:
            scope.start_soon(nested, scope.signal, name="nested")
            await first_done.wait()
            await anyio.wait_all_tasks_blocked()
    assert caught == [True, False]
    assert scope.report.tasks[0].outcome is Outcome.CANCELLED


async def test_task_status_through_start() -> None:
    async def server(signal: StopSignal, *, task_status: TaskStatus[int]) -> None:
        await anyio.lowlevel.checkpoint()
        task_status.started(42)
        await signal.wait()

    with anyio.fail_after(HANG_GUARD):
        async with TaskScope(grace=LONG_GRACE) as scope:
            assert await scope.start(server, scope.signal, name="server") == 42
    assert scope.report.tasks[0].outcome is Outcome.STOPPED


async def test_member_errors_come_out_as_one_group() -> None:
    async def fails(signal: StopSignal, error: Exception) -> None:
        await anyio.lowlevel.checkpoint()
        raise error

    first, second = ValueError("one"), KeyError("two")

    async def run() -> None:
        async with TaskScope(grace=LONG_GRACE) as scope:
            scope.start_soon(fails, scope.signal, first)
            scope.start_soon(fails, scope.signal, second)
            await scope.signal.wait()

    with anyio.fail_after(HANG_GUARD), pytest.raises(ExceptionGroup) as info:
        await run()
    assert set(map(id, info.value.exceptions)) == {id(first), id(second)}


async def test_threads_from_a_member() -> None:
    results: list[object] = []

    async def add_one(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        return x + 1

    def in_thread() -> int:
        assert anyio.from_thread.run_sync(lambda: 7) == 7
        return anyio.from_thread.run(add_one, 41)

    done = anyio.Event()

    async def threaded(signal: StopSignal) -> None:
        results.append(await anyio.to_thread.run_sync(in_thread))
        done.set()
        await signal.wait()

    with anyio.fail_after(HANG_GUARD):
        async with TaskScope(grace=LONG_GRACE) as scope:
            scope.start_soon(threaded, scope.signal)
            await done.wait()
    assert results == [42]
    assert scope.report.tasks[0].outcome is Outcome.STOPPED


async def test_current_task_inside_a_member() -> None:
    infos: list[anyio.TaskInfo] = []

    async def member(signal: StopSignal) -> None:
        infos.append(anyio.get_current_task())
        await signal.wait()

    with anyio.fail_after(HANG_GUARD):
        async with TaskScope(grace=LONG_GRACE) as scope:
            host = anyio.get_current_task()
            scope.start_soon(member, scope.signal, name="the member")
            await anyio.wait_all_tasks_blocked()
    (info,) = infos
    assert info.name == "the member"
    assert info.id != host.id
    assert info.parent_id == host.id


@pytest.mark.parametrize("anyio_backend", [pytest.param(("trio", {}), id="trio")])
async def test_trio_members_run_in_a_bare_nursery() -> None:
    # the native path on trio (asyncio keeps anyio's task group): the member task runs
    # stopscope's own runner directly in the scope's nursery, with no anyio TaskHandle
    # wrapper in between
    import trio

    host = trio.lowlevel.current_task()
    seen: list[tuple[str, bool]] = []

    async def member(signal: StopSignal) -> None:
        task = trio.lowlevel.current_task()
        parent = task.parent_nursery
        seen.append((task.coro.cr_code.co_name, parent is not None and parent.parent_task is host))
        await signal.wait()

    scope = TaskScope(grace=LONG_GRACE)
    with anyio.fail_after(HANG_GUARD):
        async with scope:
            scope.start_soon(member, scope.signal)
            await anyio.wait_all_tasks_blocked()
    assert seen == [("_run_member", True)]
