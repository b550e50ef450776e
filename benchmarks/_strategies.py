"""What the benchmarks measure: one coroutine per way of stopping N workers.

Every latency strategy follows the same script, so that only the stop path differs:

1. ``Probe.spawning()``: start N workers the strategy's way (native tasks, an anyio task
   group, a TaskScope, ...). Each worker calls ``Probe.park()`` right before it blocks.
2. ``await Probe.settle()``: wait for the "all parked" event (an explicit counter, not
   ``anyio.wait_all_tasks_blocked()``, which sleeps 0.1 s on asyncio), then a few
   checkpoints so every worker has reached its blocking call.
3. ``t0``; the stop request (``set()``, ``stop()``, ``cancel()``); ``t_set``.
4. Each worker stamps ``perf_counter()`` in ``finally`` as it exits; the join returns; ``t1``.

The driver (``bench_stop_latency.py``) runs ``gc.collect()`` before each strategy run and
keeps the collector disabled during it, so no full collection lands in a timed window.
"""

from __future__ import annotations

import asyncio
import gc
import math
import queue
import threading
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from itertools import repeat
from time import perf_counter, thread_time
from types import ModuleType
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio.lowlevel import checkpoint

try:
    import trio
except ImportError:  # pragma: no cover - trio is a bench dependency
    trio = None  # type: ignore[assignment]

#: checkpoints after "all parked", on every side alike
SETTLE_CHECKPOINTS = 3
#: grace of the scope strategies; never reached, since members stop at once
GRACE = 60.0
#: period of every()/sleep()/move_on_after loops while measuring wake latency: never elapses
PARK_PERIOD = 3600.0
#: a run is "disturbed" (and run again) when a timed window's wall time exceeds this
#: thread's CPU time by more than this many seconds plus this fraction of the window
STOLEN_SLACK = 100e-6
STOLEN_FRACTION = 0.02


@dataclass
class Env:
    """One backend run: which backend, the stopscope module (None if unavailable), knobs."""

    backend: str  # "asyncio", "asyncio+uvloop" or "trio"
    ss: ModuleType | None
    seed_interval: float
    period: float = PARK_PERIOD
    #: the seed's stop request lands at a random phase of its poll (set per run)
    seed_delay: float = 0.0

    @property
    def is_trio(self) -> bool:
        return self.backend == "trio"


class Probe:
    """Counts parked workers, stamps exits, and holds the timestamps of one run."""

    __slots__ = (
        "c0",
        "c1",
        "c_parked",
        "c_spawn",
        "count",
        "cpu",
        "exits",
        "idle_window",
        "mem0",
        "mem1",
        "memory",
        "n",
        "parked",
        "profile",
        "profiler",
        "t0",
        "t1",
        "t_parked",
        "t_set",
        "t_spawn",
        "ticks",
        "wall",
    )

    def __init__(self, n: int, *, memory: bool = False, idle_window: float = 0.0) -> None:
        self.n = n
        self.count = 0
        self.ticks = 0
        self.exits: list[float] = []
        self.parked = anyio.Event()
        self.memory = memory
        self.idle_window = idle_window
        self.t_spawn = self.t_parked = self.t0 = self.t_set = self.t1 = math.nan
        # this thread's CPU time at the edges of the timed windows: wall time beyond it
        # was taken by something else (another process preempting this one)
        self.c_spawn = self.c_parked = self.c0 = self.c1 = math.nan
        self.mem0 = self.mem1 = 0
        self.cpu = self.wall = math.nan
        #: optional cProfile.Profile, enabled during one phase ("spawn", "stop" or "idle")
        self.profiler: Any = None
        self.profile = ""

    def park(self) -> None:
        """Called by each worker right before it blocks."""
        self.count += 1
        if self.count == self.n:
            self.parked.set()

    def exited(self) -> None:
        self.exits.append(perf_counter())

    def spawning(self) -> None:
        if self.memory:
            gc.collect()
            self.mem0 = tracemalloc.get_traced_memory()[0]
        if self.profile == "spawn":
            self.profiler.enable()
        self.c_spawn = thread_time()
        self.t_spawn = perf_counter()

    async def settle(self, delay: float = 0.0) -> None:
        await self.parked.wait()
        self.t_parked = perf_counter()
        self.c_parked = thread_time()
        if self.profile == "spawn":
            self.profiler.disable()
        if self.memory:
            gc.collect()
            self.mem1 = tracemalloc.get_traced_memory()[0]
        for _ in range(SETTLE_CHECKPOINTS):
            await checkpoint()
        if self.idle_window:
            ticks = self.ticks
            if self.profile == "idle":
                self.profiler.enable()
            c0, w0 = time.process_time(), perf_counter()
            await anyio.sleep(self.idle_window)
            self.cpu, self.wall = time.process_time() - c0, perf_counter() - w0
            if self.profile == "idle":
                self.profiler.disable()
            self.ticks -= ticks
        if delay:
            await anyio.sleep(delay)

    def start(self) -> None:
        if self.profile == "stop":
            self.profiler.enable()
        self.c0 = thread_time()
        self.t0 = perf_counter()

    def stop_requested(self) -> None:
        self.t_set = perf_counter()

    def finish(self) -> None:
        self.t1 = perf_counter()
        self.c1 = thread_time()
        if self.profile == "stop":
            self.profiler.disable()


# --------------------------------------------------------------------------- spawn + join

Worker = Callable[[], Awaitable[None]]


async def join_native(
    env: Env, p: Probe, worker: Worker, stop: Callable[[], Any], delay: float = 0.0
) -> None:
    """Native tasks: asyncio tasks joined by ``gather()``, or a trio nursery."""
    if env.is_trio:
        async with trio.open_nursery() as nursery:
            p.spawning()
            for _ in range(p.n):
                nursery.start_soon(worker)
            await p.settle(delay)
            p.start()
            stop()
            p.stop_requested()
        p.finish()
    else:
        p.spawning()
        create_task = asyncio.create_task
        tasks = [create_task(worker()) for _ in range(p.n)]  # type: ignore[arg-type]
        await p.settle(delay)
        joined = asyncio.gather(*tasks)
        p.start()
        stop()
        p.stop_requested()
        await joined
        p.finish()


async def join_tg(
    env: Env, p: Probe, worker: Worker, stop: Callable[[], Any], delay: float = 0.0
) -> None:
    """An anyio task group."""
    async with anyio.create_task_group() as tg:
        p.spawning()
        for _ in range(p.n):
            tg.start_soon(worker)
        await p.settle(delay)
        p.start()
        stop()
        p.stop_requested()
    p.finish()


def native_event(env: Env) -> Any:
    return trio.Event() if env.is_trio else asyncio.Event()


def native_sleep(env: Env) -> Callable[[float], Awaitable[None]]:
    return trio.sleep if env.is_trio else asyncio.sleep  # type: ignore[return-value]


# --------------------------------------------------------------------------- workers


async def native_floor(env: Env, p: Probe) -> None:
    ev = native_event(env)

    async def worker() -> None:
        try:
            p.park()
            await ev.wait()
        finally:
            p.exited()

    await join_native(env, p, worker, ev.set)


async def seed_poll(env: Env, p: Probe) -> None:
    ev = native_event(env)
    sleep = native_sleep(env)
    interval = env.seed_interval

    async def worker() -> None:
        try:
            p.park()
            while not ev.is_set():
                p.ticks += 1
                await sleep(interval)
        finally:
            p.exited()

    await join_native(env, p, worker, ev.set, env.seed_delay)


async def anyio_event(env: Env, p: Probe) -> None:
    ev = anyio.Event()

    async def worker() -> None:
        try:
            p.park()
            await ev.wait()
        finally:
            p.exited()

    await join_tg(env, p, worker, ev.set)


async def anyio_hand_every(env: Env, p: Probe) -> None:
    ev = anyio.Event()
    period = env.period
    move_on_after = anyio.move_on_after

    async def worker() -> None:
        try:
            p.park()
            while not ev.is_set():
                p.ticks += 1
                with move_on_after(period):
                    await ev.wait()
        finally:
            p.exited()

    await join_tg(env, p, worker, ev.set)


async def anyio_cancel(env: Env, p: Probe) -> None:
    async def worker() -> None:
        try:
            p.park()
            await anyio.sleep_forever()
        finally:
            p.exited()

    async with anyio.create_task_group() as tg:
        p.spawning()
        for _ in range(p.n):
            tg.start_soon(worker)
        await p.settle()
        p.start()
        tg.cancel_scope.cancel()
        p.stop_requested()
    p.finish()


def _ss_wait_worker(env: Env, p: Probe, sig: Any) -> Worker:
    async def worker() -> None:
        try:
            p.park()
            await sig.wait()
        finally:
            p.exited()

    return worker


def _ss_sleep_worker(env: Env, p: Probe, sig: Any) -> Worker:
    period = env.period

    async def worker() -> None:
        try:
            p.park()
            while not await sig.sleep(period):
                p.ticks += 1
        finally:
            p.exited()

    return worker


def _ss_every_worker(env: Env, p: Probe, sig: Any) -> Worker:
    period = env.period

    async def worker() -> None:
        try:
            p.park()
            async for _ in sig.every(period):
                p.ticks += 1
        finally:
            p.exited()

    return worker


def _stopscope_strategy(
    make_worker: Callable[[Env, Probe, Any], Worker],
    join: Callable[[Env, Probe, Worker, Callable[[], Any]], Awaitable[None]],
) -> Callable[[Env, Probe], Awaitable[None]]:
    async def run(env: Env, p: Probe) -> None:
        assert env.ss is not None
        sig = env.ss.StopSignal()
        await join(env, p, make_worker(env, p, sig), sig.set)

    return run


# --------------------------------------------------------------------------- scopes


async def hand_scope(env: Env, p: Probe) -> None:
    """What a careful anyio user writes instead of a TaskScope: an anyio task group, an
    ``anyio.Event`` the members watch, a count of running members, a grace timer, then
    cancel."""
    stop = anyio.Event()
    all_exited = anyio.Event()
    running = 0

    async def member(stop: anyio.Event) -> None:
        try:
            p.park()
            await stop.wait()
        finally:
            p.exited()

    async def counted(fn: Callable[[anyio.Event], Awaitable[None]], arg: anyio.Event) -> None:
        nonlocal running
        try:
            await fn(arg)
        finally:
            running -= 1
            if not running:
                all_exited.set()

    async with anyio.create_task_group() as tg:
        p.spawning()
        for _ in range(p.n):
            running += 1
            tg.start_soon(counted, member, stop)
        await p.settle()
        p.start()
        stop.set()
        p.stop_requested()
        if running:
            with anyio.move_on_after(GRACE):
                await all_exited.wait()
            if running:
                tg.cancel_scope.cancel()
    p.finish()


async def native_group(env: Env, p: Probe) -> None:
    """asyncio.TaskGroup (3.11+) with an asyncio.Event, or a trio nursery with a trio.Event;
    no grace timer."""
    ev = native_event(env)

    async def member(ev: Any) -> None:
        try:
            p.park()
            await ev.wait()
        finally:
            p.exited()

    if env.is_trio:
        async with trio.open_nursery() as nursery:
            p.spawning()
            for _ in range(p.n):
                nursery.start_soon(member, ev)
            await p.settle()
            p.start()
            ev.set()
            p.stop_requested()
    else:
        async with asyncio.TaskGroup() as tg:  # type: ignore[attr-defined]
            p.spawning()
            create_task = tg.create_task
            for _ in range(p.n):
                create_task(member(ev))
            await p.settle()
            p.start()
            ev.set()
            p.stop_requested()
    p.finish()


async def taskscope(env: Env, p: Probe) -> None:
    assert env.ss is not None

    async def member(sig: Any) -> None:
        try:
            p.park()
            await sig.wait()
        finally:
            p.exited()

    async with env.ss.TaskScope(grace=GRACE) as scope:
        p.spawning()
        sig = scope.signal
        start_soon = scope.start_soon
        for _ in range(p.n):
            start_soon(member, sig)
        await p.settle()
        p.start()
        scope.stop()
        p.stop_requested()
    p.finish()


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Strategy:
    name: str
    group: str  # "native" (native spawn), "anyio" (anyio task group), "scope"
    run: Callable[[Env, Probe], Awaitable[None]]
    description: str
    needs_stopscope: bool = False
    needs: Callable[[Env], str | None] = field(default=lambda env: None)


def _needs_taskgroup(env: Env) -> str | None:
    if not env.is_trio and not hasattr(asyncio, "TaskGroup"):
        return "asyncio.TaskGroup needs Python 3.11+"
    return None


STRATEGIES: list[Strategy] = [
    Strategy("native-floor", "native", native_floor,
             "asyncio.Event / trio.Event wait(); asyncio tasks + gather / trio nursery"),
    Strategy("seed-poll", "native", seed_poll,
             "the seed: while not ev.is_set(): await sleep(interval); native tasks"),
    Strategy("ss-wait", "native", _stopscope_strategy(_ss_wait_worker, join_native),
             "StopSignal.wait(); native tasks", needs_stopscope=True),
    Strategy("ss-sleep", "native", _stopscope_strategy(_ss_sleep_worker, join_native),
             "while not await sig.sleep(period); native tasks", needs_stopscope=True),
    Strategy("ss-every", "native", _stopscope_strategy(_ss_every_worker, join_native),
             "async for _ in sig.every(period); native tasks", needs_stopscope=True),
    Strategy("anyio-event", "anyio", anyio_event,
             "anyio.Event.wait(); anyio task group (the anyio floor)"),
    Strategy("anyio-hand-every", "anyio", anyio_hand_every,
             "while not ev.is_set(): with move_on_after(period): await ev.wait(); anyio TG"),
    Strategy("anyio-cancel", "anyio", anyio_cancel,
             "hard cancellation: sleep_forever(), tg.cancel_scope.cancel()"),
    Strategy("ss-wait/tg", "anyio", _stopscope_strategy(_ss_wait_worker, join_tg),
             "StopSignal.wait(); anyio task group", needs_stopscope=True),
    Strategy("ss-sleep/tg", "anyio", _stopscope_strategy(_ss_sleep_worker, join_tg),
             "sig.sleep(period) loop; anyio task group", needs_stopscope=True),
    Strategy("ss-every/tg", "anyio", _stopscope_strategy(_ss_every_worker, join_tg),
             "sig.every(period) loop; anyio task group", needs_stopscope=True),
    Strategy("hand-scope", "scope", hand_scope,
             "hand-written anyio scope: TG + anyio.Event + member count + grace timer + cancel"),
    Strategy("native-group", "scope", native_group,
             "asyncio.TaskGroup + asyncio.Event / trio nursery + trio.Event",
             needs=_needs_taskgroup),
    Strategy("taskscope", "scope", taskscope,
             "TaskScope: start_soon(), members in sig.wait(), scope.stop()",
             needs_stopscope=True),
]
BY_NAME = {s.name: s for s in STRATEGIES}

#: group -> (reference strategy, reference of the reference)
REFERENCES = {
    "native": ("native-floor", None),
    "anyio": ("anyio-event", "native-floor"),
    "scope": ("hand-scope", "native-group"),
}

#: strategies whose memory per member is measured (bare anyio task is the reference)
MEMORY_STRATEGIES = ["anyio-event", "native-floor", "hand-scope", "taskscope", "ss-wait/tg"]
#: strategies whose CPU while idle is measured (the seed's loop is the reference)
IDLE_STRATEGIES = ["seed-poll", "anyio-hand-every", "ss-every", "ss-every/tg"]


def available(strategy: Strategy, env: Env) -> str | None:
    """None if the strategy can run here, else why not."""
    if strategy.needs_stopscope and env.ss is None:
        return "stopscope is not importable"
    return strategy.needs(env)


def disturbed(p: Probe) -> bool:
    """Whether another process took this thread off the CPU during a timed window for
    longer than scheduling jitter (the runs are CPU-bound: wall time ~ CPU time)."""
    for wall, cpu in ((p.t1 - p.t0, p.c1 - p.c0), (p.t_parked - p.t_spawn,
                                                   p.c_parked - p.c_spawn)):
        if wall - cpu > STOLEN_SLACK + STOLEN_FRACTION * wall:
            return True
    return False


def summarize_run(p: Probe) -> dict[str, float]:
    """The figures of one latency run (seconds)."""
    if len(p.exits) != p.n:
        raise RuntimeError(f"{len(p.exits)} of {p.n} workers exited")
    lat = sorted(e - p.t0 for e in p.exits)
    return {
        # wall time of the timed windows that this thread did not run (preempted)
        "stolen": max(0.0, (p.t1 - p.t0) - (p.c1 - p.c0)),
        "stolen_spawn": max(0.0, (p.t_parked - p.t_spawn) - (p.c_parked - p.c_spawn)),
        "spawn": p.t_parked - p.t_spawn,
        "set": p.t_set - p.t0,
        "last_exit": lat[-1],
        "scope_exit": p.t1 - p.t0,
        "w_p50": lat[(len(lat) - 1) // 2],
        "w_p99": lat[max(0, math.ceil(0.99 * len(lat)) - 1)],
    }


# --------------------------------------------------------------------------- thread wake


class Pinger:
    """A plain thread that runs jobs handed to it, after a short idle gap that lets the
    event loop fall asleep in its selector (a realistic cross-thread wake)."""

    IDLE_GAP = 0.0005

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="bench-pinger", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            time.sleep(self.IDLE_GAP)
            job()

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join()


THREAD_STRATEGIES = ["native-threadsafe", "anyio-from-thread", "ss-set"]


async def thread_wake(env: Env, pinger: Pinger, kind: str) -> float:
    """Seconds from ``set`` called in another thread to the waiting task running."""
    box = [math.nan, math.nan]
    wait: Callable[[], Awaitable[Any]]
    if kind == "native-threadsafe":
        ev = native_event(env)
        wait = ev.wait
        if env.is_trio:
            run_soon = trio.lowlevel.current_trio_token().run_sync_soon
        else:
            run_soon = asyncio.get_running_loop().call_soon_threadsafe

        def job() -> None:
            box[0] = perf_counter()
            run_soon(ev.set)

    elif kind == "anyio-from-thread":
        aev = anyio.Event()
        wait = aev.wait
        token = anyio.lowlevel.current_token()
        run_sync = anyio.from_thread.run_sync

        def job() -> None:
            box[0] = perf_counter()
            run_sync(aev.set, token=token)

    else:
        assert env.ss is not None
        sig = env.ss.StopSignal()
        wait = sig.wait

        def job() -> None:
            box[0] = perf_counter()
            sig.set()

    async def waiter() -> None:
        await wait()
        box[1] = perf_counter()

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        for _ in range(SETTLE_CHECKPOINTS):
            await checkpoint()
        pinger.jobs.put(job)
    return box[1] - box[0]


# --------------------------------------------------------------------------- micro


def _time_is_set(obj: Any, loops: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in repeat(None, loops):
        obj.is_set()
        obj.is_set()
        obj.is_set()
        obj.is_set()
        obj.is_set()
        obj.is_set()
        obj.is_set()
        obj.is_set()
        obj.is_set()
        obj.is_set()
    return (time.perf_counter_ns() - t0) / (loops * 10) * 1e-9


def _time_set(make: Callable[[], Any], loops: int) -> float:
    objs = [make() for _ in range(loops)]
    t0 = time.perf_counter_ns()
    for obj in objs:
        obj.set()
    return (time.perf_counter_ns() - t0) / loops * 1e-9


def micro_makers(ss: ModuleType | None) -> dict[str, Callable[[], Any]]:
    """Event-like objects whose is_set() / set() (no waiters) are timed; call inside asyncio."""
    makers: dict[str, Callable[[], Any]] = {
        "asyncio.Event": asyncio.Event,
        "anyio.Event": anyio.Event,
    }
    if trio is not None:
        makers["trio.Event"] = trio.Event
    if ss is not None:
        makers["StopSignal"] = ss.StopSignal
    return makers


def micro_once(name: str, make: Callable[[], Any], loops: int) -> dict[str, float]:
    return {"is_set": _time_is_set(make(), loops), "set": _time_set(make, loops)}
