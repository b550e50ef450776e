"""stopscope.testing, round two, item 2: a worker that leaves tasks or threads running
after it returned fails its run, with the name and the line that started each.

asyncio and trio run in virtual time; uvloop's clock cannot be faked, so it runs in
real time.  The asyncio-only case (``loop.create_task``) runs on asyncio and uvloop.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import threading
from collections.abc import Callable
from typing import Any, Literal

import anyio
import pytest
from anyio.abc import TaskGroup

from stopscope import StopSignal, TaskScope
from stopscope.testing import Scenario, StopKit, StopRequirementError, explore, probe, virtual_time

pytestmark = pytest.mark.anyio

BACKENDS = [
    pytest.param("asyncio", id="asyncio-virtual"),
    pytest.param(
        ("asyncio", {"use_uvloop": True}),
        id="uvloop-real",
        marks=pytest.mark.skipif(sys.platform == "win32", reason="uvloop is POSIX only"),
    ),
    pytest.param("trio", id="trio-virtual"),
]


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> object:
    backend: object = request.param
    return backend if isinstance(backend, tuple) else virtual_time(backend)


def line_of(func: Callable[..., Any], text: str) -> int:
    lines, start = inspect.getsourcelines(func)
    return start + next(i for i, line in enumerate(lines) if text in line)


# ----------------------------------------------------------------------- workers


async def spawns_into_a_nursery_it_was_given(signal: StopSignal, tg: TaskGroup) -> None:
    tg.start_soon(anyio.sleep_forever, name="heartbeat")
    await signal.wait()


async def starts_a_thread_and_forgets_it(signal: StopSignal, done: threading.Event) -> None:
    thread = threading.Thread(target=done.wait, name="poller", daemon=True)
    thread.start()
    await signal.wait()


async def creates_an_asyncio_task(signal: StopSignal, tasks: list[asyncio.Task[None]]) -> None:
    tasks.append(asyncio.get_running_loop().create_task(asyncio.sleep(3600), name="flusher"))
    await signal.wait()


async def member(signal: StopSignal) -> None:
    await signal.wait()


async def cleans_up_after_itself(signal: StopSignal) -> None:
    """Tasks of its own nurseries, a scope member, a thread it joins, anyio's threads."""
    done = threading.Event()
    thread = threading.Thread(target=done.wait, name="joined")
    thread.start()
    async with anyio.create_task_group() as tg, TaskScope(grace=0.01) as scope:
        tg.start_soon(anyio.sleep, 0.001)
        scope.start_soon(member, scope.signal, name="member")
        await anyio.to_thread.run_sync(done.set)
        await signal.wait()
    thread.join()


# ------------------------------------------------------------------------- tests


class TestLeaks:
    async def test_a_task_left_in_a_nursery_fails_the_run(self, stop_kit: StopKit) -> None:
        async with anyio.create_task_group() as tg:
            result = await stop_kit.probe(spawns_into_a_nursery_it_was_given, tg)
            tg.cancel_scope.cancel()
        line = line_of(spawns_into_a_nursery_it_was_given, "tg.start_soon")
        assert result.leaks == (
            f"the worker left a task running: 'heartbeat', started at "
            f'`tg.start_soon(anyio.sleep_forever, name="heartbeat")` '
            f"(test_testing_leaks.py:{line}, in spawns_into_a_nursery_it_was_given)",
        )
        assert not result.ok
        with pytest.raises(StopRequirementError) as caught:
            result.assert_ok()
        assert caught.value.summary.endswith(": left a task running")

    async def test_a_thread_left_running_fails_the_run(self, stop_kit: StopKit) -> None:
        done = threading.Event()
        try:
            result = await stop_kit.probe(starts_a_thread_and_forgets_it, done)
        finally:
            done.set()
        line = line_of(starts_a_thread_and_forgets_it, "thread.start()")
        assert result.leaks == (
            f"the worker left a thread running: 'poller', started at `thread.start()` "
            f"(test_testing_leaks.py:{line}, in starts_a_thread_and_forgets_it)",
        )

    async def test_an_exploration_fails_at_the_first_point(self) -> None:
        done = threading.Event()
        try:
            result = await explore(starts_a_thread_and_forgets_it, done, within=0.5)
        finally:
            done.set()
        assert result.failure is not None
        assert result.failure.point == 0
        assert "the worker left a thread running: 'poller'" in result.describe()

    async def test_a_worker_that_cleans_up_passes(self, stop_kit: StopKit) -> None:
        result = await stop_kit.explore(cleans_up_after_itself, within=0.5)
        result.assert_ok()
        assert all(run.leaks == () for run in result.runs)

    async def test_known_leaks_can_be_allowed(self, stop_kit: StopKit) -> None:
        line = line_of(spawns_into_a_nursery_it_was_given, "tg.start_soon")
        for allow in (["heartbeat"], ["heart*"], [f"test_testing_leaks.py:{line}"], ["*"]):
            async with anyio.create_task_group() as tg:
                scenario = Scenario(spawns_into_a_nursery_it_was_given, tg, allow_leaks=allow)
                result = await stop_kit.probe(scenario)
                tg.cancel_scope.cancel()
            assert result.leaks == (), allow
            result.assert_ok()
        async with anyio.create_task_group() as tg:
            scenario = Scenario(spawns_into_a_nursery_it_was_given, tg, allow_leaks=["other"])
            result = await stop_kit.probe(scenario)
            tg.cancel_scope.cancel()
        assert len(result.leaks) == 1

    async def test_bad_allow_lists(self) -> None:
        with pytest.raises(TypeError, match="`allow_leaks` must be a list of patterns"):
            Scenario(cleans_up_after_itself, allow_leaks="heartbeat")
        with pytest.raises(TypeError, match="each `allow_leaks` pattern must be a str"):
            Scenario(cleans_up_after_itself, allow_leaks=[3])  # type: ignore[list-item]

    async def test_the_watch_is_gone_after_the_run(self) -> None:
        start = threading.Thread.start
        await probe(cleans_up_after_itself)
        assert threading.Thread.start is start


class TestAsyncioTasks:
    @pytest.mark.parametrize(
        "anyio_backend",
        [
            pytest.param(virtual_time("asyncio"), id="asyncio-virtual"),
            pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop-real"),
        ],
    )
    async def test_a_task_created_on_the_loop_fails_the_run(self) -> None:
        tasks: list[asyncio.Task[None]] = []
        loop = asyncio.get_running_loop()
        factory = loop.get_task_factory()
        result = await probe(creates_an_asyncio_task, tasks)
        for task in tasks:
            task.cancel()
        line = line_of(creates_an_asyncio_task, "create_task")
        assert len(result.leaks) == 1
        assert result.leaks[0].startswith("the worker left a task running: 'flusher', started at")
        assert result.leaks[0].endswith(
            f"(test_testing_leaks.py:{line}, in creates_an_asyncio_task)"
        )
        assert loop.get_task_factory() is factory  # put back

    @pytest.mark.parametrize("anyio_backend", [virtual_time("asyncio")])
    async def test_a_task_factory_of_the_loop_is_kept(self) -> None:
        made: list[str] = []

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
            made.append(getattr(coro, "__qualname__", "?"))
            return asyncio.Task(coro, loop=loop, **kwargs)

        loop = asyncio.get_running_loop()
        loop.set_task_factory(factory)
        try:
            tasks: list[asyncio.Task[None]] = []
            result = await probe(creates_an_asyncio_task, tasks)
            for task in tasks:
                task.cancel()
            assert len(result.leaks) == 1
            assert "sleep" in made
            assert loop.get_task_factory() is factory
        finally:
            loop.set_task_factory(None)

    @pytest.mark.parametrize(
        "anyio_backend",
        [
            pytest.param(virtual_time("asyncio"), id="asyncio-virtual"),
            pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop-real"),
        ],
    )
    async def test_the_loops_executor_threads_are_not_leaks(self) -> None:
        """The default executor keeps its threads for the next call: a pool, not a leak."""

        async def uses_the_executor(signal: StopSignal) -> None:
            await asyncio.get_running_loop().run_in_executor(None, sum, [1, 2])
            await signal.wait()

        before = set(threading.enumerate())
        result = await probe(uses_the_executor)
        assert result.leaks == ()
        assert set(threading.enumerate()) - before  # the pool's thread is still there


async def asks_the_server(signal: StopSignal, ask: anyio.Event) -> None:
    ask.set()
    await signal.wait()


async def fake_server(ask: anyio.Event, tg: TaskGroup, done: threading.Event) -> None:
    """A server the test runs beside the worker: what it starts is not the worker's."""
    await ask.wait()
    tg.start_soon(anyio.sleep_forever, name="session")
    threading.Thread(target=done.wait, name="server-thread", daemon=True).start()


async def hands_off_to_a_child(signal: StopSignal, tg: TaskGroup) -> None:
    """Its own child spawns into the outside nursery: still the worker's doing."""

    async def child() -> None:
        tg.start_soon(anyio.sleep_forever, name="grandchild")

    async with anyio.create_task_group() as own:
        own.start_soon(child)
    await signal.wait()


class TestOnlyTheWorkersOwn:
    @pytest.mark.parametrize("mode", ["stop", "cancel"])
    async def test_what_another_task_of_the_test_starts_is_no_leak(
        self, mode: Literal["stop", "cancel"]
    ) -> None:
        done = threading.Event()
        try:
            async with anyio.create_task_group() as tg:
                ask = anyio.Event()
                tg.start_soon(fake_server, ask, tg, done)
                result = await probe(asks_the_server, ask, at_point=2, mode=mode)
                tg.cancel_scope.cancel()
        finally:
            done.set()
        assert result.leaks == ()

    @pytest.mark.parametrize("mode", ["stop", "cancel"])
    async def test_what_a_child_of_the_worker_starts_is(
        self, mode: Literal["stop", "cancel"]
    ) -> None:
        async with anyio.create_task_group() as tg:
            result = await probe(hands_off_to_a_child, tg, mode=mode)
            tg.cancel_scope.cancel()
        assert len(result.leaks) == 1
        assert result.leaks[0].startswith("the worker left a task running: 'grandchild'")

    async def test_a_thread_started_from_a_thread_counts_by_its_line(self) -> None:
        done = threading.Event()

        def start_one() -> None:
            threading.Thread(target=done.wait, name="nested", daemon=True).start()

        async def starts_from_a_thread(signal: StopSignal) -> None:
            await anyio.to_thread.run_sync(start_one)
            await signal.wait()

        try:
            result = await probe(starts_from_a_thread)
        finally:
            done.set()
        line = line_of(start_one, "threading.Thread(")
        assert result.leaks == (
            f"the worker left a thread running: 'nested', started at "
            f'`threading.Thread(target=done.wait, name="nested", daemon=True).start()` '
            f"(test_testing_leaks.py:{line}, in start_one)",
        )

    @pytest.mark.parametrize(
        "anyio_backend",
        [
            pytest.param(virtual_time("asyncio"), id="asyncio-virtual"),
            pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop-real"),
        ],
    )
    async def test_a_task_created_in_a_callback_counts_by_its_line(self) -> None:
        tasks: list[asyncio.Task[None]] = []

        def spawn() -> None:
            tasks.append(asyncio.get_running_loop().create_task(asyncio.sleep(3600), name="late"))

        async def schedules_a_spawn(signal: StopSignal) -> None:
            asyncio.get_running_loop().call_soon(spawn)
            await signal.wait()

        try:
            result = await probe(schedules_a_spawn)
        finally:
            for task in tasks:
                task.cancel()
        assert len(result.leaks) == 1
        assert result.leaks[0].startswith("the worker left a task running: 'late', started at")
        assert (
            f"(test_testing_leaks.py:{line_of(spawn, 'create_task')}, in spawn)"
            in (result.leaks[0])
        )
