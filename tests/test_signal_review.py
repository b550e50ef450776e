"""Regression tests for the StopSignal defects of the first review (issue 7).

Each defect has a test that failed on the code before its fix (where asyncio
already behaved, the trio case failed); the others guard the new mechanisms
(claims decided by one dict operation, callbacks taken from a one-item list)
against every interleaving a signal handler can produce.  They run on asyncio (debug),
asyncio+uvloop and trio; where a defect belongs to one backend's machinery the
test says so.  Races are arranged deterministically (a timer call at a waiter's
own deadline, the order in which hooks were registered, threading events), and
the signal-handler storms run in a child process so that a deadlock fails the
test instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import decimal
import fractions
import functools
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

import anyio
import anyio.to_thread
import pytest

from stopscope import CallbackHandle, StopSignal, _backends
from stopscope import _signal as impl
from stopscope._backends import _asyncio as asyncio_impl
from stopscope._backends import _base as backends_base

pytestmark = pytest.mark.anyio

#: Hang guard only: a correct implementation never comes near it.
GUARD = 10.0

HAS_ITIMER = hasattr(signal, "setitimer") and hasattr(signal, "SIGALRM")

ASYNCIO_ONLY = pytest.mark.parametrize(
    "anyio_backend",
    [
        pytest.param(("asyncio", {"debug": True}), id="asyncio"),
        pytest.param(
            ("asyncio", {"use_uvloop": True}),
            id="asyncio+uvloop",
            marks=pytest.mark.skipif(sys.platform == "win32", reason="uvloop is POSIX only"),
        ),
    ],
)


def start_thread(target: Callable[..., object], *args: object) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


async def join(*threads: threading.Thread) -> None:
    for thread in threads:
        await anyio.to_thread.run_sync(thread.join, GUARD)
        assert not thread.is_alive(), f"{thread.name} is stuck (deadlock or lost wake-up)"


def at_waiters_deadline(sig: StopSignal, fn: Callable[[], object]) -> None:
    """Make the timer service run ``fn()`` in the very pass that expires ``sig``'s wait.

    The call gets the parked waiter's own deadline and a later sequence number, so
    the service first claims the waiter as timed out, then runs ``fn()``, and only
    then resumes the waiter: the same loop turn, every run, on every backend.
    """
    timers = _backends.current().timers
    (deadline,) = [entry[0] for entry in timers.entries() if entry[2] is sig]
    timers.call_at(deadline, fn)


def make_tree() -> dict[str, StopSignal]:
    root = StopSignal()
    kid = root.child()
    leaf = kid.child()
    return {"root": root, "kid": kid, "leaf": leaf}


def set_and_record(
    tree: dict[str, StopSignal], wins: dict[str, list[str]], name: str, reason: str
) -> None:
    if tree[name].set(reason):
        wins.setdefault(name, []).append(reason)


def remove_and_record(handle: CallbackHandle, out: list[bool]) -> None:
    out.append(handle.remove())


def run_interrupted(outer: Callable[[], object], inner: Callable[[], object], point: int) -> bool:
    """Run ``outer()``; at its ``point``-th bytecode inside stopscope, run ``inner()``.

    Tracing calls Python code between two bytecodes of the traced frame, which is
    where a signal handler runs; ``inner()`` itself runs untraced, as a handler
    would.  Returns whether ``outer()`` got that far (else every point is done).
    """
    count = [0]
    injected = [False]
    # stopscope's own code: the signal module and the backends it wakes through
    module_globals = [module.__dict__ for module in (impl, _backends, backends_base, asyncio_impl)]

    def local(frame: FrameType, event: str, arg: object) -> Any:
        if event == "opcode":
            if count[0] == point and not injected[0]:
                injected[0] = True
                inner()
            count[0] += 1
        return local

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        if any(frame.f_globals is g for g in module_globals):
            frame.f_trace_opcodes = True
            return local
        return None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        outer()
    finally:
        sys.settrace(previous)
    return injected[0]


class TestWakeDecidedOnResume:
    """Defect 4: a stop that lands in the loop turn in which a timer expires wins."""

    async def test_sleep_returns_true_when_set_in_the_turn_its_timer_expires(self) -> None:
        sig = StopSignal()
        seen: list[bool] = []

        async def sleeper() -> None:
            seen.append(await sig.sleep(0.05))
            seen.append(sig.is_set())

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(sleeper)
                await anyio.wait_all_tasks_blocked()
                at_waiters_deadline(sig, sig.set)
        assert seen == [True, True]

    async def test_every_ends_without_a_tick_when_set_in_the_turn_its_timer_expires(
        self,
    ) -> None:
        sig = StopSignal()
        ticks: list[int] = []

        async def worker() -> None:
            async for tick in sig.every(0.05):
                ticks.append(tick)

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(worker)
                await anyio.wait_all_tasks_blocked()
                assert ticks == [0]
                at_waiters_deadline(sig, sig.set)
        assert ticks == [0]

    async def test_every_on_a_child_ends_when_the_parent_is_set_in_that_turn(self) -> None:
        parent = StopSignal()
        kid = parent.child()
        ticks: list[int] = []

        async def worker() -> None:
            async for tick in kid.every(0.05):
                ticks.append(tick)

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(worker)
                await anyio.wait_all_tasks_blocked()
                at_waiters_deadline(kid, parent.set)
        assert ticks == [0]


class TestSetWinsOnce:
    """Defect 8: exactly one set() call per signal returns True, signal handlers included."""

    @pytest.mark.parametrize(
        ("outer", "inner"),
        [("root", "root"), ("root", "kid"), ("kid", "root"), ("kid", "kid"), ("root", "leaf")],
    )
    async def test_a_set_injected_at_every_point_of_another_set_wins_once(
        self, outer: str, inner: str
    ) -> None:
        # What a signal handler does, at each bytecode of set() in turn (tracing runs
        # Python code between bytecodes, exactly where a handler runs).
        points = 0
        for point in range(100_000):
            tree = make_tree()
            wins: dict[str, list[str]] = {}
            runs: dict[str, list[object]] = {name: [] for name in tree}
            for name, sig in tree.items():
                sig.on_set(runs[name].append)

            injected = run_interrupted(
                functools.partial(set_and_record, tree, wins, outer, "outer"),
                functools.partial(set_and_record, tree, wins, inner, "inner"),
                point,
            )
            if not injected:
                break  # past the end of outer(): every point is done
            names = list(tree)
            top = min(names.index(outer), names.index(inner))
            for depth, (name, sig) in enumerate(tree.items()):
                assert len(wins.get(name, [])) <= 1, (point, name, wins)
                assert sig.is_set() is (depth >= top), (point, name)
                if name in wins:
                    assert sig.reason == wins[name][0], (point, name, sig.reason, wins)
                assert len(runs[name]) == (depth >= top), (point, name, runs)
            assert wins.get(outer) or wins.get(inner) or outer != inner
            assert not impl._claims  # claims live only while a flag is written
            points += 1
        assert points > 20

    @pytest.mark.skipif(not HAS_ITIMER, reason="needs setitimer and SIGALRM")
    @pytest.mark.parametrize("mode", ["set", "remove"])
    async def test_timer_signal_storm(
        self, mode: str, anyio_backend: tuple[str, dict[str, Any]]
    ) -> None:
        backend, options = anyio_backend
        flavour = "uvloop" if options.get("use_uvloop") else "plain"
        command = [sys.executable, "-c", STORM_SCRIPT, backend, flavour, mode, "1.0"]
        run = functools.partial(subprocess.run, command, capture_output=True, text=True)
        try:
            done = await anyio.to_thread.run_sync(functools.partial(run, timeout=60))
        except subprocess.TimeoutExpired:
            pytest.fail("deadlock: a signal handler re-entered StopSignal")
        assert done.returncode == 0, done.stderr[-3000:]
        head, bad = done.stdout.split(" bad=", 1)
        report = dict(part.split("=", 1) for part in head.split())
        assert bad.strip() == "[]", done.stdout[-3000:]
        assert int(report["iterations"]) > 20
        assert int(report["hits"]) > 100


STORM_SCRIPT = textwrap.dedent(
    """
    import signal, sys, time
    import anyio
    from stopscope import StopSignal

    backend, flavour, mode, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    options = {"use_uvloop": True} if flavour == "uvloop" else {}
    if backend == "trio":
        options = {}

    async def main():
        state = {"tree": None, "handle": None}
        wins = {}
        removed = {}
        hits = [0]
        bad = []

        depth = [0]

        def handler(signum, frame):
            tree = state["tree"]
            if tree is None or depth[0] >= 3:  # handlers nest; keep the main thread going
                return
            depth[0] += 1
            try:
                hits[0] += 1
                n = hits[0]
                if mode == "remove" and n % 2:
                    handle = state["handle"]
                    if handle.remove():
                        removed[id(handle)] = removed.get(id(handle), 0) + 1
                    return
                target = tree[n % len(tree)]
                reason = ("handler", n)
                if target.set(reason):
                    wins.setdefault(id(target), []).append(reason)
            finally:
                depth[0] -= 1

        previous = signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, 2e-5, 2e-5)
        iterations = 0
        start = time.monotonic()
        try:
            # at least `seconds` and 200 iterations (a loaded machine), at most 10 s
            while len(bad) < 5:
                elapsed = time.monotonic() - start
                if elapsed > 10 or (elapsed > seconds and iterations >= 200):
                    break
                iterations += 1
                root = StopSignal()
                tree = [root]
                if iterations % 2:
                    tree.append(root.child())
                    tree.append(tree[-1].child())
                runs = {id(sig): [] for sig in tree}
                for sig in tree:
                    sig.on_set(runs[id(sig)].append)
                ran = []
                def callback(reason):
                    for _ in range(20):  # long enough to be interrupted now and then
                        pass
                    ran.append(reason)
                handle = tree[-1].on_set(callback)
                state["handle"] = handle
                state["tree"] = tree
                if mode == "remove" and iterations % 3 == 0:
                    if handle.remove():
                        removed[id(handle)] = removed.get(id(handle), 0) + 1
                for sig in reversed(tree):
                    reason = ("main", iterations, id(sig))
                    if sig.set(reason):
                        wins.setdefault(id(sig), []).append(reason)
                if mode == "remove" and handle.remove():
                    removed[id(handle)] = removed.get(id(handle), 0) + 1
                state["tree"] = None
                for sig in tree:
                    won = wins.pop(id(sig), [])
                    if len(won) != 1 and not (won == [] and sig is not root):
                        bad.append(("set() returned True", len(won), "times"))
                    if won and sig.reason != won[0]:
                        bad.append(("reason", sig.reason, "winner", won[0]))
                    if not sig.is_set():
                        bad.append("not set")
                    if len(runs[id(sig)]) != 1:
                        bad.append(("callback runs", len(runs[id(sig)])))
                prevented = removed.pop(id(handle), 0)
                if prevented > 1 or len(ran) + prevented != 1:
                    bad.append(("remove() said", prevented, "callback ran", len(ran)))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
            signal.signal(signal.SIGALRM, previous)
        print(f"iterations={iterations} hits={hits[0]} bad={bad!r}")

    anyio.run(main, backend=backend, backend_options=options)
    """
)


class TestDurationTypes:
    """Defect 13c: a duration is a number; str, bytes and bool are TypeErrors."""

    BAD = ("1", b"1", True, False, None, 1j, [1])

    @pytest.mark.parametrize("value", BAD, ids=repr)
    async def test_sleep_rejects_non_numbers(self, value: Any) -> None:
        sig = StopSignal()
        with pytest.raises(TypeError, match="`seconds`"):
            await sig.sleep(value)

    @pytest.mark.parametrize("value", BAD, ids=repr)
    async def test_every_rejects_non_numbers(self, value: Any) -> None:
        sig = StopSignal()
        with pytest.raises(TypeError, match="`period`"):
            sig.every(value)

    @pytest.mark.parametrize("value", [v for v in BAD if v is not None], ids=repr)
    async def test_wait_blocking_rejects_non_numbers(self, value: Any) -> None:
        sig = StopSignal()
        call = functools.partial(sig.wait_blocking, timeout=value)
        with pytest.raises(TypeError, match="`timeout`"):
            await anyio.to_thread.run_sync(call)

    async def test_a_number_that_cannot_be_a_float_is_a_type_error(self) -> None:
        not_a_float: Any = decimal.Decimal("sNaN")  # float() raises ValueError
        with pytest.raises(TypeError, match="`seconds` must be a number of seconds"):
            await StopSignal().sleep(not_a_float)

    async def test_an_int_too_large_for_a_float_is_forever(self) -> None:
        sig = StopSignal()
        with pytest.raises(ValueError, match="`seconds` must be a non-negative"):
            await sig.sleep(-(10**400))
        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:

                async def sleeper() -> None:
                    assert await sig.sleep(10**400) is True

                tg.start_soon(sleeper)
                await anyio.wait_all_tasks_blocked()
                sig.set()

    @pytest.mark.parametrize(
        "value", [0, 0.0, fractions.Fraction(1, 1000), decimal.Decimal("0.001")], ids=repr
    )
    async def test_ints_floats_and_real_numbers_are_accepted(self, value: Any) -> None:
        sig = StopSignal()
        assert await sig.sleep(value) is False
        assert await anyio.to_thread.run_sync(sig.wait_blocking, value) is False
        if value:
            async for tick in sig.every(value):
                if tick == 1:
                    break


@ASYNCIO_ONLY
class TestAsyncioTimerService:
    """Defect 13d: one loop timer per service, even when a due call schedules another."""

    async def test_a_call_scheduling_another_leaves_one_loop_timer(self) -> None:
        loop = asyncio.get_running_loop()
        fires: list[int] = []

        class Counting(asyncio_impl.AsyncioTimers):
            def fire(self) -> None:
                fires.append(len([entry for entry in self.heap if entry[2] is not None]))
                super().fire()

        timers = Counting(loop)
        done = asyncio.Event()

        def first() -> None:
            timers.call_at(loop.time() + 0.01, done.set)

        timers.call_at(loop.time() + 0.01, first)
        with anyio.fail_after(GUARD):
            await done.wait()
        for _ in range(3):
            await asyncio.sleep(0)
        # one fire per due call; a duplicate loop timer shows as a fire with nothing due
        assert fires == [1, 1]
        assert timers.handle is None

    async def test_a_call_scheduling_a_later_one_still_runs_it(self) -> None:
        loop = asyncio.get_running_loop()
        timers = asyncio_impl.AsyncioTimers(loop)
        order: list[str] = []
        done = asyncio.Event()

        def later() -> None:
            order.append("later")
            done.set()

        def first() -> None:
            order.append("first")
            timers.call_at(loop.time() + 0.02, later)

        timers.call_at(loop.time() + 0.01, first)
        timers.call_at(loop.time() + 0.015, lambda: order.append("middle"))
        with anyio.fail_after(GUARD):
            await done.wait()
        assert order == ["first", "middle", "later"]


@pytest.mark.parametrize("anyio_backend", [pytest.param(("trio", {}), id="trio")])
class TestTrioTimerService:
    async def test_a_call_scheduling_another_runs_it(self) -> None:
        backend = _backends.current()
        timers = backend.timers
        now = backend.clock
        done = anyio.Event()
        timers.call_at(now() + 0.01, lambda: timers.call_at(now() + 0.01, done.set))
        with anyio.fail_after(GUARD):
            await done.wait()


class TestRemoveWaitsForARunningCallback:
    """handle.remove(): after it returns the callback is not running and never will."""

    async def test_remove_on_another_thread_waits_for_the_running_callback(self) -> None:
        sig = StopSignal()
        started = threading.Event()
        release = threading.Event()
        finished = threading.Event()

        def callback(reason: object) -> None:
            started.set()
            release.wait(GUARD)
            finished.set()

        handle = sig.on_set(callback)
        out: list[bool] = []
        returned = threading.Event()

        def remover() -> None:
            started.wait(GUARD)
            out.append(handle.remove())
            out.append(finished.is_set())
            returned.set()

        setter = start_thread(sig.set)
        remover_thread = start_thread(remover)
        # Leave remove() time to return early if it does not wait (it must not);
        # correct code passes whatever this wait lasts.
        assert await anyio.to_thread.run_sync(returned.wait, 0.2) is False
        release.set()
        await join(setter, remover_thread)
        assert out == [False, True]

    async def test_remove_from_inside_the_callback_returns_at_once(self) -> None:
        sig = StopSignal()
        out: list[object] = []
        handles: list[CallbackHandle] = []

        def callback(reason: object) -> None:
            out.append(handles[0].remove())
            out.append("after remove")

        handles.append(sig.on_set(callback))
        thread = start_thread(sig.set)
        await join(thread)
        assert out == [False, "after remove"]
        assert handles[0].remove() is False

    async def test_claimed_callback_not_yet_run_is_prevented_by_an_earlier_one(self) -> None:
        sig = StopSignal()
        out: list[object] = []
        handles: list[CallbackHandle] = []

        def first(reason: object) -> None:
            out.append(("removed", handles[1].remove()))

        handles.append(sig.on_set(first))
        handles.append(sig.on_set(lambda reason: out.append("second ran")))
        assert sig.set() is True
        assert out == [("removed", True)]
        assert handles[1].remove() is False

    async def test_claimed_callback_not_yet_run_is_prevented_from_another_thread(self) -> None:
        sig = StopSignal()
        started = threading.Event()
        release = threading.Event()
        ran: list[str] = []

        def first(reason: object) -> None:
            started.set()
            release.wait(GUARD)
            ran.append("first")

        sig.on_set(first)
        second = sig.on_set(lambda reason: ran.append("second"))
        setter = start_thread(sig.set)
        try:
            assert await anyio.to_thread.run_sync(started.wait, GUARD)
            # set() has claimed both; the second has not run: remove() prevents it
            assert second.remove() is True
            assert second.remove() is False
        finally:
            release.set()
        await join(setter)
        assert ran == ["first"]

    async def test_removes_racing_on_several_threads_prevent_once(self) -> None:
        for _ in range(50):
            sig = StopSignal()
            ran: list[object] = []
            handle = sig.on_set(ran.append)
            barrier = threading.Barrier(4)
            results: list[bool] = []

            def remover(
                barrier: threading.Barrier, handle: CallbackHandle, results: list[bool]
            ) -> None:
                barrier.wait(GUARD)
                results.append(handle.remove())

            def setter(barrier: threading.Barrier, sig: StopSignal) -> None:
                barrier.wait(GUARD)
                sig.set("race")

            threads = [start_thread(remover, barrier, handle, results) for _ in range(3)]
            threads.append(start_thread(setter, barrier, sig))
            await join(*threads)
            assert results.count(True) + len(ran) == 1, (results, ran)

    @pytest.mark.parametrize(
        ("outer", "inner"), [("remove", "set"), ("set", "remove"), ("remove", "remove")]
    )
    async def test_remove_and_set_injected_at_every_point_agree(
        self, outer: str, inner: str
    ) -> None:
        points = 0
        for point in range(100_000):
            sig = StopSignal()
            ran: list[object] = []
            handle = sig.on_set(ran.append)
            removed: list[bool] = []
            ops: dict[str, Callable[[], object]] = {
                "remove": functools.partial(remove_and_record, handle, removed),
                "set": functools.partial(sig.set, "set"),
            }
            injected = run_interrupted(ops[outer], ops[inner], point)
            sig.set("after")
            assert removed.count(True) + len(ran) == 1, (point, removed, ran)
            if not injected:
                break
            points += 1
        assert points > 10

    async def test_remove_inside_a_critical_section_does_not_wait_for_the_lock(self) -> None:
        # As if a signal handler interrupted stopscope's bookkeeping on a thread (it
        # holds the lock) and removed a callback that another thread is running, and
        # that callback needs the lock: waiting would deadlock both threads.
        sig = StopSignal()
        started = threading.Event()
        locked = threading.Event()

        def callback(reason: object) -> None:
            started.set()
            locked.wait(GUARD)
            sig.child()  # takes the lock

        handle = sig.on_set(callback)
        out: list[bool] = []

        def interrupted() -> None:
            started.wait(GUARD)
            with impl._lock:
                locked.set()
                out.append(handle.remove())

        threads = [start_thread(sig.set), start_thread(interrupted)]
        await join(*threads)
        assert out == [False]

    @pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs POSIX signals")
    async def test_remove_in_a_handler_that_interrupted_the_callback_returns(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            pytest.skip("signal handlers run on the main thread only")
        sig = StopSignal()
        out: list[object] = []
        handles: list[CallbackHandle] = []

        def handler(signum: int, frame: FrameType | None) -> None:
            out.append(("handler remove", handles[0].remove()))

        def callback(reason: object) -> None:
            signal.raise_signal(signal.SIGUSR1)  # the handler runs inside this callback
            out.append("callback done")

        handles.append(sig.on_set(callback))
        previous = signal.signal(signal.SIGUSR1, handler)
        try:
            assert sig.set() is True
        finally:
            signal.signal(signal.SIGUSR1, previous)
        assert out == [("handler remove", False), "callback done"]


class TestClaimedTrioWaiterAcceptsCancellation:
    """Defect 7 (StopSignal side): cancelled before its wake, a waiter is cancelled.

    ``cancel_scope()`` registers its hook before the wait inside it registers the
    waiter, so ``set()`` cancels the scope after claiming the waiter and before waking
    it.  asyncio has always delivered that cancellation; trio now does too.
    """

    async def test_set_by_a_task(self) -> None:
        async def set_here(sig: StopSignal) -> None:
            sig.set("stop")

        await self._check(set_here)

    async def test_set_from_a_thread(self) -> None:
        async def set_from_thread(sig: StopSignal) -> None:
            await anyio.to_thread.run_sync(sig.set, "stop")

        await self._check(set_from_thread)

    async def _check(self, setter: Callable[[StopSignal], Awaitable[None]]) -> None:
        sig = StopSignal()
        reached: list[str] = []
        caught: list[bool] = []

        async def waiter() -> None:
            with sig.cancel_scope() as cs:
                await sig.wait()
                reached.append("wait() returned in a cancelled scope")
            caught.append(cs.cancelled_caught)

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                await setter(sig)
        assert reached == []
        assert caught == [True]

    async def test_timer_claimed_sleep_cancelled_in_the_same_pass(self) -> None:
        sig = StopSignal()
        reached: list[object] = []
        scope = anyio.CancelScope()

        async def sleeper() -> None:
            with scope:
                reached.append(await sig.sleep(0.05))

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(sleeper)
                await anyio.wait_all_tasks_blocked()
                at_waiters_deadline(sig, scope.cancel)
        assert reached == []
        assert scope.cancelled_caught

    async def test_waiter_cancelled_then_set_leaves_the_signal_working(self) -> None:
        sig = StopSignal()
        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._cancelled_wait, sig)
                await anyio.wait_all_tasks_blocked()
                sig.set()
            await sig.wait()
            assert await sig.sleep(1) is True

    @staticmethod
    async def _cancelled_wait(sig: StopSignal) -> None:
        with sig.cancel_scope():
            await sig.wait()
