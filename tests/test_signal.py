"""Conformance tests for ``StopSignal``, written from the contract (docs/contract.md).

Every test of the public contract runs on asyncio (debug), asyncio+uvloop and trio
through the ``anyio_backend`` fixture.  No test orders tasks with sleeps or compares
wall-clock time with a budget: tasks are ordered with ``wait_all_tasks_blocked()``,
events and barriers, ``fail_after(GUARD)`` is only a hang guard, and the timing of
``every()`` is checked with bounds that follow from its deadline arithmetic alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import importlib.util
import logging
import math
import queue
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from types import FrameType
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import pytest

from stopscope import CallbackHandle, StopSignal

T = TypeVar("T")

#: Hang guard only: a correct implementation never comes near it.
GUARD = 10.0

HAS_UVLOOP = sys.platform != "win32" and importlib.util.find_spec("uvloop") is not None
HAS_PTHREAD_KILL = hasattr(signal, "pthread_kill") and hasattr(signal, "SIGUSR1")

#: The same matrix as conftest.py, for loops this module runs itself (in threads, in turn).
LOOP_RUNS: list[tuple[str, dict[str, Any]]] = [("asyncio", {"debug": True}), ("trio", {})]
if HAS_UVLOOP:
    LOOP_RUNS.insert(1, ("asyncio", {"use_uvloop": True}))


def start_thread(target: Callable[..., object], *args: object) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


async def join(*threads: threading.Thread) -> None:
    for thread in threads:
        await anyio.to_thread.run_sync(thread.join, GUARD)
        assert not thread.is_alive(), f"{thread.name} is stuck (deadlock or lost wake-up)"


def block(seconds: float) -> None:
    """Hold the calling thread, as a long synchronous body does."""
    time.sleep(seconds)


def spin(iterations: int) -> None:
    """Burn a little CPU to shift where a thread lands in a race."""
    for _ in range(iterations):
        pass


def noop(reason: object) -> None:
    pass


def signal_records(caplog: pytest.LogCaptureFixture, exc: BaseException) -> list[logging.LogRecord]:
    """Records on logger ``stopscope`` (or a child of it) carrying ``exc`` with traceback."""
    return [
        record
        for record in caplog.records
        if (record.name == "stopscope" or record.name.startswith("stopscope."))
        and record.exc_info is not None
        and record.exc_info[1] is exc
        and record.exc_info[2] is not None
    ]


async def woken_from_outside(
    wait: Callable[[], Awaitable[T]], poke: Callable[[], object], *, settle: bool = True
) -> T:
    """Await ``wait()`` on this loop while ``poke()`` runs on a helper thread.

    The hang guard lives on the helper thread, not on the loop: a wake-up that only
    reaches a sleeping loop when some timer fires would be rescued, and pass, under
    a loop-side ``fail_after()``; here the rescue is recorded and fails the test.
    """
    token = anyio.lowlevel.current_token()
    woke = threading.Event()
    rescued: list[str] = []
    scope = anyio.CancelScope()

    def helper() -> None:
        if settle:
            # Not an ordering device (the test holds either way): it lets the loop
            # fall asleep in its selector, the case a wake-up without the loop's
            # thread-safe call gets wrong.
            block(0.02)
        try:
            poke()
        except BaseException as exc:
            rescued.append(f"poke() raised {exc!r}")
            anyio.from_thread.run_sync(scope.cancel, token=token)
            raise
        if not woke.wait(GUARD):
            rescued.append("lost wake-up: only the hang guard woke the loop")
            anyio.from_thread.run_sync(scope.cancel, token=token)

    thread = start_thread(helper)
    result: list[T] = []
    with scope:
        result.append(await wait())
        woke.set()
    await join(thread)
    assert rescued == []
    return result[0]


class TestCreate:
    """Plain tests: these must hold with no event loop at all."""

    def test_created_and_set_with_no_loop_running(self) -> None:
        with pytest.raises(RuntimeError, match="no running event loop"):
            asyncio.get_running_loop()
        sig = StopSignal()
        assert sig.is_set() is False
        assert sig.reason is None
        assert sig.set("early") is True
        assert sig.is_set() is True
        assert sig.reason == "early"

    def test_one_signal_serves_loops_of_every_backend_in_turn(self) -> None:
        sig = StopSignal()

        async def times_out() -> bool:
            return await sig.sleep(0.001)

        async def woken_by_a_task() -> object:
            async with anyio.create_task_group() as tg:
                tg.start_soon(sig.wait)
                await anyio.wait_all_tasks_blocked()
                sig.set("late")
            return sig.reason

        async def already_set() -> bool:
            with anyio.fail_after(GUARD):
                await sig.wait()
                return await sig.sleep(3600)

        # Twice per backend: per-loop state must not outlive its loop (or be found
        # again by a new loop that reuses the old one's id).
        for backend, options in LOOP_RUNS * 2:
            assert anyio.run(times_out, backend=backend, backend_options=options) is False
        backend, options = LOOP_RUNS[-1]
        assert anyio.run(woken_by_a_task, backend=backend, backend_options=options) == "late"
        for backend, options in LOOP_RUNS:
            assert anyio.run(already_set, backend=backend, backend_options=options) is True


class TestBool:
    pytestmark = pytest.mark.anyio

    @pytest.mark.parametrize("already_set", [False, True])
    async def test_bool_raises_type_error_pointing_to_is_set(self, already_set: bool) -> None:
        sig = StopSignal()
        if already_set:
            sig.set()
        with pytest.raises(TypeError, match="is_set"):
            bool(sig)
        with pytest.raises(TypeError, match="is_set"):
            _ = not sig


class TestSet:
    pytestmark = pytest.mark.anyio

    async def test_only_the_first_call_returns_true(self) -> None:
        sig = StopSignal()
        assert sig.set() is True
        assert sig.is_set() is True
        assert sig.set() is False
        assert sig.set("again") is False
        assert sig.is_set() is True

    async def test_first_reason_wins(self) -> None:
        sig = StopSignal()
        assert sig.set("first") is True
        assert sig.set("second") is False
        assert sig.reason == "first"

    async def test_first_reason_wins_even_when_it_is_none(self) -> None:
        sig = StopSignal()
        assert sig.set() is True
        assert sig.set("second") is False
        assert sig.reason is None
        assert sig.is_set() is True

    async def test_reason_is_kept_as_given(self) -> None:
        reason = KeyError("the very object")
        sig = StopSignal()
        sig.set(reason)
        assert sig.reason is reason
        by_signal = StopSignal()
        by_signal.set(signal.SIGTERM)
        assert by_signal.reason is signal.SIGTERM

    async def test_set_wakes_every_waiter_on_the_loop(self) -> None:
        sig = StopSignal()
        seen: list[object] = []

        async def waiter() -> None:
            await sig.wait()
            seen.append(sig.reason)

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                for _ in range(100):
                    tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                assert seen == []
                assert sig.set("all") is True
        assert seen == ["all"] * 100

    async def test_eight_threads_at_once_exactly_one_gets_true(self) -> None:
        def racer(
            sig: StopSignal, barrier: threading.Barrier, out: dict[int, bool], i: int
        ) -> None:
            barrier.wait(GUARD)
            out[i] = sig.set(i)

        for _ in range(20):
            sig = StopSignal()
            barrier = threading.Barrier(8)
            results: dict[int, bool] = {}
            threads = [start_thread(racer, sig, barrier, results, i) for i in range(8)]
            with anyio.fail_after(GUARD):
                await sig.wait()
            await join(*threads)
            assert sorted(results) == list(range(8))
            winners = [i for i, won in results.items() if won]
            assert len(winners) == 1
            assert sig.reason == winners[0]


class TestWakeFromElsewhere:
    """set() from outside the waiter's loop: where a bare anyio.Event fails."""

    pytestmark = pytest.mark.anyio

    async def test_set_from_plain_thread_wakes_waiter_on_idle_loop(self) -> None:
        sig = StopSignal()
        await woken_from_outside(sig.wait, functools.partial(sig.set, "thread"))
        assert sig.reason == "thread"

    async def test_set_racing_wait_from_thread_never_loses_a_wakeup(self) -> None:
        # The hang guard is on the setter's thread (see woken_from_outside).
        token = anyio.lowlevel.current_token()
        Job = tuple[StopSignal, int, threading.Event, anyio.CancelScope]
        jobs: queue.Queue[Job | None] = queue.Queue()
        lost: list[int] = []

        def setter() -> None:
            while (job := jobs.get()) is not None:
                sig, spins, woke, scope = job
                spin(spins)
                sig.set()
                if not woke.wait(GUARD):
                    lost.append(1)
                    anyio.from_thread.run_sync(scope.cancel, token=token)

        thread = start_thread(setter)
        rng = random.Random(1969)
        try:
            for iteration in range(200):
                sig = StopSignal()
                woke = threading.Event()
                scope = anyio.CancelScope()
                jobs.put((sig, rng.randrange(3000), woke, scope))
                if rng.random() < 0.5:
                    await anyio.lowlevel.checkpoint()
                with scope:
                    await sig.wait()
                    woke.set()
                assert lost == [], f"lost wake-up at iteration {iteration}"
                assert sig.is_set()
        finally:
            jobs.put(None)
        await join(thread)

    async def test_cancel_racing_set_from_thread_leaves_signal_working(self) -> None:
        jobs: queue.Queue[tuple[StopSignal, int] | None] = queue.Queue()

        def setter() -> None:
            while (job := jobs.get()) is not None:
                sig, spins = job
                spin(spins)
                sig.set("thread")

        async def waiter(sig: StopSignal, scope: anyio.CancelScope) -> None:
            with scope:
                await sig.wait()

        thread = start_thread(setter)
        rng = random.Random(1789)
        try:
            for _ in range(100):
                sig = StopSignal()
                scope = anyio.CancelScope()
                with anyio.fail_after(GUARD):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(waiter, sig, scope)
                        await anyio.lowlevel.checkpoint()
                        jobs.put((sig, rng.randrange(3000)))
                        for _ in range(rng.randrange(3)):
                            await anyio.lowlevel.checkpoint()
                        scope.cancel()
                    await sig.wait()
                    assert await sig.sleep(3600) is True
                assert sig.reason == "thread"
                assert sig.child().is_set()
        finally:
            jobs.put(None)
        await join(thread)

    async def test_set_from_another_loop_in_another_thread(self, anyio_backend_name: str) -> None:
        sig = StopSignal()
        other = "asyncio" if anyio_backend_name == "trio" else "trio"

        async def set_from_a_task() -> None:
            await anyio.lowlevel.checkpoint()
            sig.set(other)

        run_other_loop = functools.partial(anyio.run, set_from_a_task, backend=other)
        await woken_from_outside(sig.wait, run_other_loop)
        assert sig.reason == other

    async def test_waiter_left_on_a_closed_asyncio_loop_does_not_break_set(self) -> None:
        sig = StopSignal()
        abandoned: list[asyncio.Task[None]] = []

        def abandon_a_waiter() -> None:
            loop = asyncio.new_event_loop()
            task = loop.create_task(sig.wait())
            loop.run_until_complete(asyncio.sleep(0))  # the waiter registers and parks
            assert not task.done()
            loop.close()  # ... and its loop goes away under it
            abandoned.append(task)

        # A plain thread: no context (or sniffio state) inherited from the test's loop.
        await join(start_thread(abandon_a_waiter))
        called: list[object] = []
        sig.on_set(called.append)
        woke: list[object] = []

        async def waiter() -> None:
            await sig.wait()
            woke.append(sig.reason)

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                assert sig.set("go") is True
        assert woke == ["go"]
        assert called == ["go"]
        assert abandoned  # kept alive until here on purpose


class TestSeveralLoops:
    pytestmark = pytest.mark.anyio

    async def test_waiters_on_loops_in_several_threads_all_wake_from_one_set(self) -> None:
        sig = StopSignal()
        ready = [threading.Event() for _ in LOOP_RUNS]
        results: dict[str, object] = {}

        async def park(kind: int) -> None:
            # One waiting style per foreign loop: wait(), sleep(), every().
            if kind == 0:
                await sig.wait()
            elif kind == 1:
                assert await sig.sleep(3600) is True
            else:
                ticks = [i async for i in sig.every(3600)]
                assert ticks == [0]

        def run_loop(index: int, backend: str, options: dict[str, Any]) -> None:
            async def main() -> object:
                # No timer here: a wake-up that only a timer would deliver leaves
                # this thread stuck, and join() below fails the test.
                async with anyio.create_task_group() as tg:
                    tg.start_soon(park, index % 3)
                    await anyio.wait_all_tasks_blocked()
                    with pytest.raises(RuntimeError):
                        sig.wait_blocking(0)  # this thread runs a loop
                    ready[index].set()
                return sig.reason

            key = f"{index}:{backend}:{options}"
            try:
                results[key] = anyio.run(main, backend=backend, backend_options=options)
            except BaseException as exc:  # reported below, in the test's own thread
                results[key] = exc

        def blocking() -> None:
            ready_blocking.set()
            results["blocking"] = sig.wait_blocking(GUARD)

        ready_blocking = threading.Event()
        threads = [
            start_thread(run_loop, index, backend, options)
            for index, (backend, options) in enumerate(LOOP_RUNS)
        ]
        threads.append(start_thread(blocking))
        for event in [*ready, ready_blocking]:
            assert await anyio.to_thread.run_sync(event.wait, GUARD)
        woke: list[object] = []

        async def waiter() -> None:
            await sig.wait()
            woke.append(sig.reason)

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                assert sig.set("all loops") is True
        await join(*threads)
        assert woke == ["all loops"]
        expected: dict[str, object] = {key: "all loops" for key in results}
        expected["blocking"] = True
        assert results == expected
        assert len(results) == len(LOOP_RUNS) + 1


REENTRY_SCRIPT = textwrap.dedent(
    """
    import signal, sys, threading, time
    import anyio, anyio.lowlevel
    from stopscope import StopSignal

    backend = sys.argv[1]
    options = {"use_uvloop": True} if sys.argv[2] == "uvloop" else {}
    shared = StopSignal()
    current = [StopSignal()]
    hits = [0]

    def noop(reason):
        pass

    def handler(signum, frame):
        hits[0] += 1
        shared.on_set(noop).remove()
        shared.child()
        current[0].child().on_set(noop)
        current[0].set("handler")

    def pelt(target, done):
        while not done.is_set():
            signal.pthread_kill(target, signal.SIGUSR1)
            time.sleep(0.00005)

    async def main():
        done = threading.Event()
        pelter = threading.Thread(target=pelt, args=(threading.get_ident(), done))
        pelter.start()
        rounds = 0
        try:
            end = time.monotonic() + float(sys.argv[3])
            while time.monotonic() < end:
                rounds += 1
                sig = StopSignal()
                current[0] = sig
                async with anyio.create_task_group() as tg:
                    tg.start_soon(sig.wait)
                    tg.start_soon(sig.child().wait)
                    tg.start_soon(shared.wait)
                    for _ in range(20):
                        shared.on_set(noop).remove()
                        shared.child()
                        sig.child()
                    await anyio.lowlevel.checkpoint()
                    sig.set("main")
                    tg.cancel_scope.cancel()
                assert sig.is_set()
        finally:
            done.set()
            pelter.join()
        print(f"rounds={rounds}", end=" ")

    sys.setswitchinterval(1e-5)
    signal.signal(signal.SIGUSR1, handler)
    anyio.run(main, backend=backend, backend_options=options)
    print(f"hits={hits[0]}")
    """
)


@pytest.mark.skipif(not HAS_PTHREAD_KILL, reason="needs POSIX signals")
class TestSignalHandler:
    pytestmark = pytest.mark.anyio

    async def test_set_from_real_signal_handler_wakes_idle_loop(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            pytest.skip("signal handlers run on the main thread only")
        sig = StopSignal()
        called: list[object] = []
        sig.on_set(called.append)

        def handler(signum: int, frame: FrameType | None) -> None:
            assert sig.set(signal.Signals(signum)) is True

        # Aimed at the main thread, as a process-directed SIGTERM reaches a one-thread
        # service; os.kill() could land on the helper thread, where it would not
        # interrupt the loop's selector at all.
        send = functools.partial(signal.pthread_kill, threading.get_ident(), signal.SIGUSR1)
        previous = signal.signal(signal.SIGUSR1, handler)
        try:
            await woken_from_outside(sig.wait, send)
        finally:
            signal.signal(signal.SIGUSR1, previous if previous is not None else signal.SIG_DFL)
        assert sig.reason is signal.SIGUSR1
        assert called == [signal.SIGUSR1]

    async def test_handler_reentering_set_and_registration_does_not_deadlock(
        self, anyio_backend: tuple[str, dict[str, Any]]
    ) -> None:
        # A storm of signals lands while the main thread registers, removes and sets;
        # the handler does the same on the same signals.  With a lock that is not
        # re-entrant the child process deadlocks (the timeout fails the test) or,
        # as further signals interrupt the stuck acquire, dies of RecursionError.
        backend, options = anyio_backend
        flavour = "uvloop" if options.get("use_uvloop") else "plain"
        command = [sys.executable, "-c", REENTRY_SCRIPT, backend, flavour, "0.7"]
        run = functools.partial(subprocess.run, command, capture_output=True, text=True)
        try:
            done = await anyio.to_thread.run_sync(functools.partial(run, timeout=60))
        except subprocess.TimeoutExpired:
            pytest.fail("deadlock: a signal handler re-entered StopSignal")
        assert done.returncode == 0, done.stderr[-3000:]
        hits = int(done.stdout.split("hits=")[1])
        assert hits > 0


class TestWait:
    pytestmark = pytest.mark.anyio

    async def test_returns_once_set_by_another_task(self) -> None:
        sig = StopSignal()
        woke: list[object] = []

        async def waiter() -> None:
            await sig.wait()
            woke.append(sig.reason)

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                assert woke == []
                sig.set("task")
        assert woke == ["task"]

    async def test_returns_at_once_when_already_set(self) -> None:
        sig = StopSignal()
        sig.set()
        with anyio.fail_after(GUARD):
            await sig.wait()
            await sig.wait()

    async def test_is_a_checkpoint_even_when_already_set(self) -> None:
        sig = StopSignal()
        sig.set()
        reached: list[bool] = []
        with anyio.CancelScope() as cs:
            cs.cancel()
            await sig.wait()
            reached.append(True)
        assert cs.cancelled_caught
        assert reached == []

    async def test_in_a_cancelled_scope_raises_when_unset(self) -> None:
        sig = StopSignal()
        with anyio.fail_after(GUARD), anyio.CancelScope() as cs:
            cs.cancel()
            await sig.wait()
        assert cs.cancelled_caught
        assert not sig.is_set()

    async def test_cancelled_wait_leaves_the_signal_working(self) -> None:
        sig = StopSignal()
        scope = anyio.CancelScope()
        outcome: list[str] = []

        async def cancelled() -> None:
            with scope:
                await sig.wait()
                outcome.append("woke")
            outcome.append("cancelled" if scope.cancelled_caught else "left")

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(cancelled)
                await anyio.wait_all_tasks_blocked()
                scope.cancel()
            assert outcome == ["cancelled"]
            # The same task waits again after its own cancelled wait.
            with anyio.move_on_after(0) as again:
                await sig.wait()
            assert again.cancelled_caught
            called: list[object] = []
            sig.on_set(called.append)
            woke: list[object] = []

            async def waiter() -> None:
                await sig.wait()
                woke.append(sig.reason)

            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                assert sig.set("after") is True
        assert woke == ["after"]
        assert called == ["after"]

    async def test_cancelling_some_waiters_leaves_the_others_waiting(self) -> None:
        sig = StopSignal()
        scopes = [anyio.CancelScope() for _ in range(50)]
        woke: list[int] = []

        async def waiter(index: int) -> None:
            with scopes[index]:
                await sig.wait()
                woke.append(index)

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                for index in range(50):
                    tg.start_soon(waiter, index)
                await anyio.wait_all_tasks_blocked()
                for scope in scopes[::2]:
                    scope.cancel()
                await anyio.wait_all_tasks_blocked()
                assert woke == []
                sig.set()
        assert sorted(woke) == list(range(1, 50, 2))

    async def test_cancel_and_set_in_the_same_step(self) -> None:
        # The waiter's cancellation is delivered but it has not resumed yet when set()
        # runs: set() must skip it quietly and still wake the others.
        sig = StopSignal()
        scope = anyio.CancelScope()
        woke: list[str] = []

        async def cancelled() -> None:
            with scope:
                await sig.wait()

        async def waiter() -> None:
            await sig.wait()
            woke.append("other")

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(cancelled)
                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                scope.cancel()
                assert sig.set() is True
        assert woke == ["other"]


class TestSleep:
    pytestmark = pytest.mark.anyio

    async def test_returns_false_when_the_time_runs_out(self) -> None:
        sig = StopSignal()
        with anyio.fail_after(GUARD):
            assert await sig.sleep(0) is False
            assert await sig.sleep(0.01) is False
        assert not sig.is_set()

    async def test_returns_true_when_set_during_the_sleep(self) -> None:
        sig = StopSignal()
        results: list[bool] = []

        async def sleeper(seconds: float) -> None:
            results.append(await sig.sleep(seconds))

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                for index in range(20):
                    tg.start_soon(sleeper, 3600 + index)
                tg.start_soon(sleeper, math.inf)
                await anyio.wait_all_tasks_blocked()
                assert results == []
                sig.set()
        assert results == [True] * 21

    async def test_returns_true_at_once_when_already_set(self) -> None:
        sig = StopSignal()
        sig.set()
        with anyio.fail_after(GUARD):
            assert await sig.sleep(3600) is True
            assert await sig.sleep(math.inf) is True
            assert await sig.sleep(0) is True

    async def test_is_woken_by_set_from_a_thread(self) -> None:
        sig = StopSignal()
        assert await woken_from_outside(functools.partial(sig.sleep, 3600), sig.set) is True

    @pytest.mark.parametrize("already_set", [False, True])
    @pytest.mark.parametrize("seconds", [-1, -1e-9, -math.inf, math.nan])
    async def test_rejects_negative_or_nan_naming_seconds(
        self, seconds: float, already_set: bool
    ) -> None:
        sig = StopSignal()
        if already_set:
            sig.set()
        with pytest.raises(ValueError, match="seconds"):
            await sig.sleep(seconds)

    @pytest.mark.parametrize("already_set", [False, True])
    async def test_is_a_checkpoint(self, already_set: bool) -> None:
        sig = StopSignal()
        if already_set:
            sig.set()
        reached: list[bool] = []
        with anyio.fail_after(GUARD), anyio.CancelScope() as cs:
            cs.cancel()
            reached.append(await sig.sleep(0))
        assert cs.cancelled_caught
        assert reached == []

    async def test_huge_finite_seconds_behave_like_forever(self) -> None:
        sig = StopSignal()
        results: list[object] = []

        async def sleeper() -> None:
            results.append(await sig.sleep(1e300))

        async def ticker() -> None:
            results.append([tick async for tick in sig.every(1e300)])

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(sleeper)
                tg.start_soon(ticker)
                await anyio.wait_all_tasks_blocked()
                sig.set()
        assert sorted(results, key=repr) == [True, [0]]

    async def test_cancelled_sleep_raises_and_leaves_signal_working(self) -> None:
        sig = StopSignal()
        scope = anyio.CancelScope()
        results: list[bool] = []

        async def sleeper() -> None:
            with scope:
                results.append(await sig.sleep(3600))

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(sleeper)
                await anyio.wait_all_tasks_blocked()
                scope.cancel()
            assert scope.cancelled_caught
            assert results == []
            assert not sig.is_set()
            assert await sig.sleep(0) is False
            sig.set()
            assert await sig.sleep(3600) is True


@contextlib.asynccontextmanager
async def closing(ticks: AsyncIterator[int]) -> AsyncIterator[AsyncIterator[int]]:
    """Close the iterator after an early exit (only TestEvery's break test skips this)."""
    try:
        yield ticks
    finally:
        aclose = getattr(ticks, "aclose", None)
        if aclose is not None:
            await aclose()


async def collect(sig: StopSignal, period: float, limit: int) -> list[int]:
    seen: list[int] = []
    async with closing(sig.every(period)) as ticks:
        async for tick in ticks:
            seen.append(tick)
            if len(seen) == limit:
                break
    return seen


class TestEvery:
    pytestmark = pytest.mark.anyio

    async def test_first_tick_is_zero_and_at_once(self) -> None:
        sig = StopSignal()
        ticks: list[int] = []

        async def ticker() -> None:
            async for tick in sig.every(3600):
                ticks.append(tick)

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(ticker)
                await anyio.wait_all_tasks_blocked()
                assert ticks == [0]  # an hour-long period, yet tick 0 is already here
                sig.set()
        assert ticks == [0]

    async def test_ticks_count_up_from_zero(self) -> None:
        sig = StopSignal()
        with anyio.fail_after(GUARD):
            assert await collect(sig, 0.001, 6) == [0, 1, 2, 3, 4, 5]

    async def test_no_tick_when_already_set(self) -> None:
        sig = StopSignal()
        sig.set()
        with anyio.fail_after(GUARD):
            assert [tick async for tick in sig.every(3600)] == []
            assert [tick async for tick in sig.every(0.001)] == []

    async def test_ends_mid_wait_when_set_from_a_thread(self) -> None:
        sig = StopSignal()

        async def ticker() -> list[int]:
            return [tick async for tick in sig.every(3600)]

        assert await woken_from_outside(ticker, sig.set) == [0]

    async def test_ends_without_another_tick_when_set_in_the_body(self) -> None:
        sig = StopSignal()
        ticks: list[int] = []
        with anyio.fail_after(GUARD):
            async for tick in sig.every(0.001):
                ticks.append(tick)
                if tick == 2:
                    sig.set()
                    block(0.005)  # the next deadline is overdue: still no tick may follow
        assert ticks == [0, 1, 2]

    async def test_every_on_a_child_ends_when_the_parent_is_set(self) -> None:
        parent = StopSignal()
        ticks: list[int] = []

        async def ticker() -> None:
            async for tick in parent.child().every(3600):
                ticks.append(tick)

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(ticker)
                await anyio.wait_all_tasks_blocked()
                gc.collect()
                parent.set()
        assert ticks == [0]

    @pytest.mark.parametrize("period", [-1, -1e-9, -math.inf, math.nan])
    async def test_rejects_bad_period_naming_period(self, period: float) -> None:
        sig = StopSignal()
        with pytest.raises(ValueError, match="period"):
            await collect(sig, period, 1)

    async def test_cancelled_every_raises_and_leaves_signal_unset(self) -> None:
        sig = StopSignal()
        scope = anyio.CancelScope()
        ticks: list[int] = []

        async def ticker() -> None:
            with scope:
                async for tick in sig.every(3600):
                    ticks.append(tick)

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(ticker)
                await anyio.wait_all_tasks_blocked()
                scope.cancel()
        assert scope.cancelled_caught
        assert ticks == [0]
        assert not sig.is_set()

    async def test_breaking_out_early_is_clean(self) -> None:
        sig = StopSignal()
        with anyio.fail_after(GUARD):
            for _ in range(3):
                async for tick in sig.every(0.001):
                    if tick == 2:
                        break
            gc.collect()
            await anyio.lowlevel.checkpoint()
            assert await collect(sig, 0.001, 3) == [0, 1, 2]
        # The plain `break` users write: pytest (filterwarnings = error) fails the
        # test on any warning or unraisable exception when the iterator is dropped
        # (trio warns about every async generator collected before exhaustion).

    async def test_fixed_rate_never_early_and_absorbs_body_time(self) -> None:
        # Deadlines are start + k*period while bodies fit in a period, so:
        # - no tick comes before start + k*period (nothing runs fast or bursts);
        # - the wait shrinks by the body's time: a drifting loop (sleep(period) after
        #   the body) can never deliver a tick less than a period after a body ends,
        #   the fixed-rate one does so on every tick it is not late for.
        period = 0.05
        eps = period / 4  # timer granularity (uvloop rounds to milliseconds)
        sig = StopSignal()
        ticks: list[float] = []
        ends: list[float] = []
        start = time.monotonic()
        with anyio.fail_after(GUARD):
            async with closing(sig.every(period)) as ticker:
                async for tick in ticker:
                    ticks.append(time.monotonic())
                    block(period / 2)
                    ends.append(time.monotonic())
                    if tick == 7:
                        break
        assert len(ticks) == 8
        for index, at in enumerate(ticks):
            assert at >= start + index * period - eps, f"tick {index} came early"
        gaps = [ticks[index + 1] - ends[index] for index in range(len(ticks) - 1)]
        assert min(gaps) < 0.8 * period, f"the body's time was not taken off the wait: {gaps}"

    async def test_overrun_gets_next_tick_at_once_without_catch_up_burst(self) -> None:
        # With deadline(k+1) = max(deadline(k) + period, now), "now" taken when the
        # body hands control back:
        # - ticks count ticks yielded, not periods elapsed;
        # - the tick after next is never sooner than a period after a body ends
        #   (a catch-up burst delivers several overdue ticks back to back);
        # - after an overrun the next tick comes at once (an implementation that
        #   keeps the old phase makes it wait for the next multiple of the period).
        period = 0.04
        eps = period / 4
        overruns = {0, 2, 4}
        sig = StopSignal()
        indices: list[int] = []
        ticks: list[float] = []
        ends: list[float] = []
        with anyio.fail_after(GUARD):
            async with closing(sig.every(period)) as ticker:
                async for tick in ticker:
                    indices.append(tick)
                    ticks.append(time.monotonic())
                    if tick in overruns:
                        block(2.5 * period)
                    ends.append(time.monotonic())
                    if tick == 6:
                        break
        assert indices == list(range(7))
        for index in range(len(ticks) - 2):
            assert ticks[index + 2] >= ends[index] + period - eps, f"burst after body {index}"
        delays = [ticks[index + 1] - ends[index] for index in sorted(overruns)]
        assert min(delays) < period / 4, f"overrun bodies waited for their next tick: {delays}"


class TestChild:
    pytestmark = pytest.mark.anyio

    async def test_setting_the_parent_sets_the_child_with_the_same_reason(self) -> None:
        reason = RuntimeError("deploy")
        parent = StopSignal()
        child = parent.child()
        assert not child.is_set()
        assert parent.set(reason) is True
        assert child.is_set()
        assert child.reason is reason
        assert child.set("late") is False
        assert child.reason is reason

    async def test_child_of_a_set_parent_is_born_set(self) -> None:
        parent = StopSignal()
        parent.set("gone")
        child = parent.child()
        assert child.is_set()
        assert child.reason == "gone"
        assert child.set("late") is False
        assert child.child().reason == "gone"

    async def test_setting_the_child_leaves_the_parent_alone(self) -> None:
        parent = StopSignal()
        child = parent.child()
        sibling = parent.child()
        assert child.set("child") is True
        assert not parent.is_set()
        assert parent.reason is None
        assert not sibling.is_set()
        assert parent.set("parent") is True
        assert child.reason == "child"  # its own first reason
        assert sibling.reason == "parent"

    async def test_subtree_of_an_independently_set_child_keeps_its_reason(self) -> None:
        root = StopSignal()
        middle = root.child()
        leaf = middle.child()
        other = root.child().child()
        middle.set("middle")
        assert leaf.reason == "middle"
        assert middle.child().reason == "middle"
        root.set("root")
        assert (middle.reason, leaf.reason, other.reason) == ("middle", "middle", "root")

    async def test_whole_subtree_reads_set_once_set_returns(self) -> None:
        root = StopSignal()
        nodes = [root]
        for _ in range(3):
            nodes += [node.child() for node in nodes for _ in range(4)]
        called: list[object] = []
        for node in nodes[1:]:
            node.on_set(called.append)

        assert root.set("tree") is True
        # No checkpoint since: the propagation happened inside set().
        assert all(node.is_set() and node.reason == "tree" for node in nodes)
        assert called == ["tree"] * (len(nodes) - 1)
        assert len(nodes) == 5**3

    async def test_grandchild_propagation_survives_unreferenced_middle(self) -> None:
        root = StopSignal()
        leaf = root.child().child().child()
        gc.collect()
        root.set("through")
        assert leaf.is_set()
        assert leaf.reason == "through"

    async def test_deep_chain_has_no_recursion_limit(self) -> None:
        depth = 100_000
        root = StopSignal()
        chain = [root]
        for _ in range(depth):
            chain.append(chain[-1].child())
        leaf = chain[-1]
        called: list[object] = []
        leaf.on_set(called.append)
        woke: list[object] = []

        async def waiter() -> None:
            await leaf.wait()
            woke.append(leaf.reason)

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                assert root.set("deep") is True
                assert called == ["deep"]
                assert all(node.reason == "deep" for node in chain)
        assert woke == ["deep"]
        # A chain born under a set root, built from the bottom of the old one.
        assert leaf.child().child().reason == "deep"

    async def test_many_waiting_children_all_wake(self) -> None:
        parent = StopSignal()
        woke: list[object] = []

        async def waiter(child: StopSignal) -> None:
            await child.wait()
            woke.append(child.reason)

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                for _ in range(1000):
                    tg.start_soon(waiter, parent.child())
                await anyio.wait_all_tasks_blocked()
                parent.set("wide")
        assert woke == ["wide"] * 1000

    async def test_unreferenced_child_is_not_kept_alive(self) -> None:
        parent = StopSignal()
        child = parent.child()
        ref = weakref.ref(child)
        del child
        gc.collect()
        assert ref() is None
        parent.set()

    async def test_child_with_only_a_callback_still_fires(self) -> None:
        parent = StopSignal()
        called: list[object] = []
        parent.child().on_set(called.append)
        parent.child().child().on_set(called.append)
        gc.collect()
        parent.set("fire")
        assert called == ["fire", "fire"]

    async def test_child_with_only_a_waiter_still_wakes(self) -> None:
        parent = StopSignal()
        woke: list[bool] = []

        async def waiter() -> None:
            await parent.child().wait()
            woke.append(True)

        async def sleeper() -> None:
            woke.append(await parent.child().sleep(3600))

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                tg.start_soon(sleeper)
                await anyio.wait_all_tasks_blocked()
                gc.collect()
                parent.set()
        assert woke == [True, True]

    async def test_child_is_released_once_its_callback_is_removed(self) -> None:
        parent = StopSignal()
        child = parent.child()
        called: list[object] = []
        handle = child.on_set(called.append)
        ref = weakref.ref(child)
        del child
        assert handle.remove() is True
        del handle
        gc.collect()
        assert ref() is None
        parent.set()
        assert called == []

    async def test_child_is_released_once_its_waiters_are_cancelled(self) -> None:
        parent = StopSignal()
        child = parent.child()
        ref = weakref.ref(child)

        async def waiter(target: StopSignal, kind: int) -> None:
            if kind == 0:
                await target.wait()
            elif kind == 1:
                await target.sleep(3600)  # a stale timer must not keep it until then
            else:
                async for _ in target.every(3600):
                    pass

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                for kind in range(3):
                    tg.start_soon(waiter, child, kind)
                del child
                await anyio.wait_all_tasks_blocked()
                tg.cancel_scope.cancel()
        gc.collect()
        assert ref() is None
        assert not parent.is_set()

    async def test_child_is_released_once_set(self) -> None:
        parent = StopSignal()
        child = parent.child()
        called: list[object] = []
        child.on_set(called.append)
        ref = weakref.ref(child)
        del child
        parent.set("done")
        assert called == ["done"]
        gc.collect()
        assert ref() is None

    async def test_children_made_while_the_parent_is_set_from_a_thread_all_end_set(self) -> None:
        def maker(parent: StopSignal, barrier: threading.Barrier, out: list[StopSignal]) -> None:
            barrier.wait(GUARD)
            for _ in range(300):
                out.append(parent.child())

        def setter(parent: StopSignal, barrier: threading.Barrier) -> None:
            barrier.wait(GUARD)
            parent.set("race")

        for _ in range(30):
            parent = StopSignal()
            barrier = threading.Barrier(2)
            children: list[StopSignal] = []
            threads = [
                start_thread(maker, parent, barrier, children),
                start_thread(setter, parent, barrier),
            ]
            await join(*threads)
            assert len(children) == 300
            assert all(child.is_set() and child.reason == "race" for child in children)

    async def test_child_set_racing_parent_set_agrees_on_its_reason(self) -> None:
        def setter(
            sig: StopSignal, reason: str, barrier: threading.Barrier, out: list[bool]
        ) -> None:
            barrier.wait(GUARD)
            out.append(sig.set(reason))

        for _ in range(200):
            parent = StopSignal()
            child = parent.child()
            barrier = threading.Barrier(2)
            own: list[bool] = []
            threads = [
                start_thread(setter, child, "own", barrier, own),
                start_thread(setter, parent, "parent", barrier, []),
            ]
            await join(*threads)
            assert child.reason == ("own" if own == [True] else "parent"), own

    async def test_parent_set_from_a_thread_wakes_a_child_waiter(self) -> None:
        parent = StopSignal()
        child = parent.child()
        await woken_from_outside(child.wait, functools.partial(parent.set, "thread"))
        assert child.reason == "thread"


def test_many_short_lived_children_do_not_accumulate() -> None:
    # No loop involved: a plain test.  A parent that kept a strong reference, or a
    # weak reference it never prunes, per child grows by megabytes here.
    parent = StopSignal()
    for _ in range(1000):
        parent.child()
    gc.collect()
    already_tracing = tracemalloc.is_tracing()
    if not already_tracing:
        tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(50_000):
            parent.child()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        if not already_tracing:
            tracemalloc.stop()
    assert grown < 512 * 1024, f"{grown} bytes kept for 50,000 dead children"
    assert parent.set() is True


class TestOnSet:
    pytestmark = pytest.mark.anyio

    async def test_runs_once_synchronously_inside_set_with_the_reason(self) -> None:
        sig = StopSignal()
        events: list[object] = []
        handle = sig.on_set(lambda reason: events.append(("callback", reason, sig.is_set())))
        assert isinstance(handle, CallbackHandle)
        assert events == []
        sig.set("now")
        events.append("set returned")
        sig.set("again")
        assert events == [("callback", "now", True), "set returned"]
        assert handle.remove() is False

    async def test_runs_at_once_when_already_set(self) -> None:
        sig = StopSignal()
        sig.set("before")
        called: list[object] = []
        handle = sig.on_set(called.append)
        assert called == ["before"]
        assert handle.remove() is False
        sig.set("again")
        assert called == ["before"]

    async def test_remove_before_set_prevents_the_call_and_says_so(self) -> None:
        sig = StopSignal()
        called: list[object] = []
        kept: list[object] = []
        handle = sig.on_set(called.append)
        sig.on_set(kept.append)
        assert handle.remove() is True
        assert handle.remove() is False
        sig.set("x")
        assert called == []
        assert kept == ["x"]

    async def test_remove_after_the_call_returns_false(self) -> None:
        sig = StopSignal()
        called: list[object] = []
        handle = sig.on_set(called.append)
        sig.set()
        assert called == [None]
        assert handle.remove() is False
        assert handle.remove() is False

    async def test_same_callable_registered_twice_runs_twice(self) -> None:
        sig = StopSignal()
        called: list[object] = []
        first = sig.on_set(called.append)
        sig.on_set(called.append)
        sig.on_set(called.append)
        assert first.remove() is True
        sig.set("x")
        assert called == ["x", "x"]

    async def test_many_callbacks_each_run_once(self) -> None:
        sig = StopSignal()
        counts = [0] * 1000

        def make(index: int) -> Callable[[object], None]:
            def callback(reason: object) -> None:
                counts[index] += 1

            return callback

        for index in range(1000):
            sig.on_set(make(index))
        sig.set()
        sig.set()
        assert counts == [1] * 1000

    async def test_remove_racing_set_from_threads_agrees_with_the_call(self) -> None:
        def remover(handle: CallbackHandle, barrier: threading.Barrier, out: list[bool]) -> None:
            barrier.wait(GUARD)
            out.append(handle.remove())

        def setter(sig: StopSignal, barrier: threading.Barrier) -> None:
            barrier.wait(GUARD)
            sig.set("race")

        for _ in range(200):
            sig = StopSignal()
            called: list[object] = []
            handle = sig.on_set(called.append)
            barrier = threading.Barrier(2)
            removed: list[bool] = []
            threads = [
                start_thread(remover, handle, barrier, removed),
                start_thread(setter, sig, barrier),
            ]
            await join(*threads)
            assert removed in ([True], [False])
            assert removed[0] is (called == []), f"remove() said {removed[0]}, calls {called}"
            assert called in ([], ["race"])

    async def test_register_racing_set_from_threads_runs_exactly_once(self) -> None:
        def register(sig: StopSignal, barrier: threading.Barrier, out: list[object]) -> None:
            barrier.wait(GUARD)
            sig.on_set(out.append)

        def setter(sig: StopSignal, barrier: threading.Barrier) -> None:
            barrier.wait(GUARD)
            sig.set("race")

        for _ in range(200):
            sig = StopSignal()
            barrier = threading.Barrier(2)
            called: list[object] = []
            threads = [
                start_thread(register, sig, barrier, called),
                start_thread(setter, sig, barrier),
            ]
            await join(*threads)
            assert called == ["race"]

    async def test_callback_runs_on_the_thread_that_calls_set(self) -> None:
        parent = StopSignal()
        child = parent.child()
        threads: list[int] = []
        parent.on_set(lambda reason: threads.append(threading.get_ident()))
        child.on_set(lambda reason: threads.append(threading.get_ident()))
        thread = start_thread(parent.set)
        await join(thread)
        assert threads == [thread.ident, thread.ident]

    async def test_callback_may_use_the_signal_it_runs_in(self) -> None:
        # Re-entry from inside set(): run in a thread so a deadlock fails the test.
        sig = StopSignal()
        seen: list[object] = []
        other_handle: list[CallbackHandle] = []

        def reenter(reason: object) -> None:
            seen.append(sig.set("again"))
            seen.append(sig.is_set())
            seen.append(sig.reason)
            sig.on_set(lambda inner: seen.append(("inner", inner)))
            seen.append(sig.child().reason)
            seen.append(other_handle[0].remove())

        sig.on_set(reenter)
        other_handle.append(sig.on_set(noop))
        outcome: list[bool] = []
        thread = start_thread(lambda: outcome.append(sig.set("first")))
        await join(thread)
        assert outcome == [True]
        assert seen[:5] == [False, True, "first", ("inner", "first"), "first"]
        assert seen[5] in (True, False)  # either way, set() neither hangs nor raises

    async def test_raising_callback_is_logged_and_others_still_run(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG, logger="stopscope")
        sig = StopSignal()
        boom = ValueError("boom")
        called: list[str] = []

        def bad(reason: object) -> None:
            called.append("bad")
            raise boom

        sig.on_set(lambda reason: called.append("before"))
        sig.on_set(bad)
        sig.on_set(lambda reason: called.append("after"))
        woke: list[bool] = []

        async def waiter() -> None:
            await sig.wait()
            woke.append(True)

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                assert sig.set() is True  # does not raise
        assert sorted(called) == ["after", "bad", "before"]
        assert woke == [True]
        records = signal_records(caplog, boom)
        assert len(records) == 1
        assert records[0].levelno >= logging.WARNING

    async def test_raising_callback_on_a_thread_is_logged_not_raised(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG, logger="stopscope")
        sig = StopSignal()
        boom = RuntimeError("in a thread")

        def bad(reason: object) -> None:
            raise boom

        sig.on_set(bad)
        outcome: list[bool] = []
        # A raise out of set() would reach threading.excepthook, which pytest reports.
        thread = start_thread(lambda: outcome.append(sig.set()))
        await join(thread)
        assert outcome == [True]
        assert len(signal_records(caplog, boom)) == 1

    async def test_raising_child_callback_does_not_stop_propagation(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG, logger="stopscope")
        parent = StopSignal()
        boom = KeyError("child")

        def bad(reason: object) -> None:
            raise boom

        children = [parent.child() for _ in range(5)]
        called: list[object] = []
        children[2].on_set(bad)
        for child in children:
            child.on_set(called.append)
        assert parent.set("p") is True
        assert all(child.reason == "p" for child in children)
        assert called == ["p"] * 5
        assert len(signal_records(caplog, boom)) == 1


class TestCancelScope:
    pytestmark = pytest.mark.anyio

    async def test_cancelled_when_set_by_another_task_then_moves_on(self) -> None:
        sig = StopSignal()
        after: list[bool] = []

        async def reader() -> None:
            with sig.cancel_scope() as cs:
                await anyio.sleep_forever()
            after.append(cs.cancelled_caught)

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(reader)
                await anyio.wait_all_tasks_blocked()
                sig.set()
        assert after == [True]

    async def test_cancelled_when_set_from_a_thread(self) -> None:
        sig = StopSignal()

        async def reader() -> bool:
            with sig.cancel_scope() as cs:
                await anyio.sleep_forever()
            return cs.cancelled_caught

        assert await woken_from_outside(reader, sig.set) is True

    async def test_already_set_signal_cancels_at_once(self) -> None:
        sig = StopSignal()
        sig.set()
        reached: list[bool] = []
        with anyio.fail_after(GUARD), sig.cancel_scope() as cs:
            await anyio.lowlevel.checkpoint()
            reached.append(True)
        assert cs.cancelled_caught
        assert reached == []

    async def test_set_inside_the_scope_cancels_it(self) -> None:
        sig = StopSignal()
        reached: list[bool] = []
        with anyio.fail_after(GUARD), sig.cancel_scope() as cs:
            sig.set()
            await anyio.lowlevel.checkpoint()
            reached.append(True)
        assert cs.cancelled_caught
        assert reached == []

    async def test_not_cancelled_when_not_set(self) -> None:
        sig = StopSignal()
        reached: list[bool] = []
        with sig.cancel_scope() as cs:
            assert isinstance(cs, anyio.CancelScope)
            await anyio.lowlevel.checkpoint()
            await anyio.sleep(0.001)
            reached.append(True)
        assert reached == [True]
        assert not cs.cancel_called
        assert not cs.cancelled_caught
        assert not sig.is_set()

    async def test_parent_set_cancels_a_child_scope(self) -> None:
        parent = StopSignal()
        after: list[bool] = []

        async def reader() -> None:
            with parent.child().cancel_scope() as cs:
                await anyio.sleep_forever()
            after.append(cs.cancelled_caught)

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(reader)
                await anyio.wait_all_tasks_blocked()
                gc.collect()
                parent.set()
        assert after == [True]

    async def test_set_after_exit_is_harmless_and_the_scope_is_released(self) -> None:
        sig = StopSignal()
        with sig.cancel_scope() as cs:
            await anyio.lowlevel.checkpoint()
        ref = weakref.ref(cs)
        del cs
        gc.collect()
        assert ref() is None, "the signal still holds a scope that has exited"
        with anyio.CancelScope() as outer:
            assert sig.set() is True
            await anyio.lowlevel.checkpoint()
        assert not outer.cancel_called

    async def test_set_from_a_thread_racing_the_scope_exit(self) -> None:
        # The cancel may land on a scope that has just exited: harmless, silent
        # (an error in the setter thread fails the test through pytest's hook).
        jobs: queue.Queue[tuple[StopSignal, int] | None] = queue.Queue()

        def setter() -> None:
            while (job := jobs.get()) is not None:
                sig, spins = job
                spin(spins)
                sig.set()

        thread = start_thread(setter)
        rng = random.Random(1848)
        try:
            for _ in range(100):
                sig = StopSignal()
                with anyio.CancelScope() as outer:
                    with sig.cancel_scope():
                        jobs.put((sig, rng.randrange(3000)))
                        for _ in range(rng.randrange(3)):
                            await anyio.lowlevel.checkpoint()
                    await anyio.lowlevel.checkpoint()
                assert not outer.cancel_called
                with anyio.fail_after(GUARD):
                    await sig.wait()
        finally:
            jobs.put(None)
        await join(thread)

    async def test_outer_cancellation_is_not_swallowed(self) -> None:
        sig = StopSignal()
        with anyio.CancelScope() as outer:
            with sig.cancel_scope() as inner:
                outer.cancel()
                await anyio.lowlevel.checkpoint()
            pytest.fail("the outer cancellation was swallowed")  # pragma: no cover
        assert outer.cancelled_caught
        assert not inner.cancelled_caught


class TestWaitBlocking:
    pytestmark = pytest.mark.anyio

    async def test_plain_thread_returns_true_when_set_from_the_loop(self) -> None:
        sig = StopSignal()
        about_to_wait = threading.Event()
        results: list[bool] = []

        def blocking() -> None:
            about_to_wait.set()
            results.append(sig.wait_blocking())

        thread = start_thread(blocking)
        assert await anyio.to_thread.run_sync(about_to_wait.wait, GUARD)
        sig.set()
        await join(thread)
        assert results == [True]

    async def test_timeout_returns_false_when_unset(self) -> None:
        sig = StopSignal()
        assert await anyio.to_thread.run_sync(sig.wait_blocking, 0) is False
        assert await anyio.to_thread.run_sync(sig.wait_blocking, 0.01) is False
        assert not sig.is_set()

    async def test_returns_true_at_once_when_already_set(self) -> None:
        sig = StopSignal()
        sig.set()
        assert await anyio.to_thread.run_sync(sig.wait_blocking, 0) is True
        assert await anyio.to_thread.run_sync(sig.wait_blocking, None) is True
        assert await anyio.to_thread.run_sync(sig.wait_blocking, 3600) is True

    async def test_many_blocked_threads_wake_from_one_set(self) -> None:
        parent = StopSignal()
        barrier = threading.Barrier(9)
        results: list[bool] = []

        def blocking(sig: StopSignal) -> None:
            barrier.wait(GUARD)
            results.append(sig.wait_blocking(GUARD))

        threads = [start_thread(blocking, parent if i % 2 else parent.child()) for i in range(8)]
        await anyio.to_thread.run_sync(barrier.wait, GUARD)
        parent.set()
        await join(*threads)
        assert results == [True] * 8

    async def test_raises_runtime_error_on_a_thread_running_a_loop(self) -> None:
        sig = StopSignal()
        # Timeouts keep a failing implementation from freezing the suite.
        with pytest.raises(RuntimeError):
            sig.wait_blocking(0.5)
        with pytest.raises(RuntimeError):
            sig.wait_blocking(0)
        assert not sig.is_set()

    async def test_raises_runtime_error_on_a_loop_thread_even_when_set(self) -> None:
        sig = StopSignal()
        sig.set()
        with pytest.raises(RuntimeError):
            sig.wait_blocking(0)
