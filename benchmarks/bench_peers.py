#!/usr/bin/env python3
"""How does stopscope compare with what people use instead?  The same jobs, written the
idiomatic way for each peer (the seed article's loop among them), on asyncio,
asyncio+uvloop and trio, wherever the peer runs, in one process run:

1. stop: N periodic workers; the stop is requested; wait until every worker has exited
   and the group is closed (plus spawn and memory per member);
2. stubborn: the same with one worker that ignores the stop, every group given the same
   grace (STUBBORN_GRACE), then cancelling what is left, each the way its users write it;
3. idle: N workers ticking on a period, CPU per tick over a window, and ticks per second.

The table ends with a PASS / MISS verdict per target of issue 11 that this run measures.

    python benchmarks/bench_peers.py --quick    # about a minute, N <= 1,000; the table
    python benchmarks/bench_peers.py            # the full run (committed results)
    python benchmarks/bench_peers.py --smoke    # harness check: tiny N, no file written
    python benchmarks/bench_peers.py --markdown results/peers.json   # the docs' tables

Peers that are not installed are skipped, and the output says so.  The optional ones
install with ``pip install --group peers`` (aiotools, aiojobs, trio-util).

Every figure is a median of paired ratios to stopscope: within one repetition every peer
runs once, in a fresh random order, and its time is divided by stopscope's from the same
repetition.  Same conventions as ``bench_stop_latency.py`` (see docs/benchmarks.md): a
full collection before each run and none during it, "all parked" counted explicitly, a
run that another process preempted is run again, a discarded warm-up repetition.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.metadata
import json
import math
import random
import statistics
import sys
import textwrap
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio

from _harness import (
    Progress,
    dump_json,
    fmt_bytes,
    fmt_time,
    quantile,
    run_metadata,
    split_evenly,
)
from _strategies import Probe, disturbed, summarize_run

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SCHEMA = "stopscope-bench-peers/2"
ALL_BACKENDS = ("asyncio", "asyncio+uvloop", "trio")
#: every group gets this grace where it has one; never reached (workers stop at once)
GRACE = 60.0
#: the workers' period: never elapses during a measurement (they park after tick 0)
PERIOD = 3600.0
#: the seed's sleep in the stop cases (the article's is 1 s): its stop waits for it
SEED_PERIOD = 0.1
SEED = "seed's loop"
#: the grace of the stubborn case, the same for every group
STUBBORN_GRACE = 0.05
#: the idle case's cap on the N workers' ticks per second, in all (see idle_period())
IDLE_RATE = 10_000
#: a run that another process preempted is run again, at most this many times
MAX_RETRIES = 3
#: the compact table's width limit
WIDTH = 100


# --------------------------------------------------------------------------- the peers


@dataclass
class Env:
    backend: str
    mods: dict[str, ModuleType]  # importable optional modules, by import name
    #: "stop" (every worker obeys), "stubborn" (one ignores the stop) or "idle"
    case: str = "stop"
    #: the workers' period (every case but the seed's stop: see SEED_PERIOD)
    period: float = PERIOD
    #: the grace every group is given (GRACE, never reached; STUBBORN_GRACE when stubborn)
    grace: float = GRACE
    #: the seed's stop lands this long after "all parked" (a random phase of its sleep)
    delay: float = 0.0
    #: when the stubborn worker exited (it only exits when cancelled); NaN: not yet
    stubborn_exit: float = math.nan

    @property
    def is_trio(self) -> bool:
        return self.backend == "trio"

    @property
    def stubborn(self) -> bool:
        return self.case == "stubborn"

    def regular(self, n: int) -> int:
        """How many of the n workers obey the stop (all but the stubborn one)."""
        return n - 1 if self.stubborn else n


def _stubborn(env: Env, p: Probe, sleep: Callable[[float], Awaitable[Any]],
              on_exit: Callable[[], None] | None = None
              ) -> Callable[[], Coroutine[Any, Any, None]]:
    """The worker that ignores the stop: it sleeps in a loop, and only a cancellation
    ends it (the same code for every peer, with the peer's own sleep)."""

    async def stubborn() -> None:
        try:
            p.park()
            while True:
                await sleep(PERIOD)
        finally:
            env.stubborn_exit = time.perf_counter()
            p.exited()
            if on_exit is not None:
                on_exit()

    return stubborn


async def run_stopscope(env: Env, p: Probe) -> None:
    ss = env.mods["stopscope"]
    period = env.period

    async def worker(sig: Any) -> None:
        try:
            p.park()
            async for _ in sig.every(period):
                p.ticks += 1
        finally:
            p.exited()

    async with ss.TaskScope(grace=env.grace) as scope:
        p.spawning()
        for _ in range(env.regular(p.n)):
            scope.start_soon(worker, scope.signal)
        if env.stubborn:
            scope.start_soon(_stubborn(env, p, anyio.sleep))
        await p.settle()
        p.start()
        scope.stop()
        p.stop_requested()
    p.finish()


async def run_seed(env: Env, p: Probe) -> None:
    """The seed article's pattern, as its users write it: ``while not ev.is_set():`` the
    work, then a plain ``sleep(period)``; native tasks joined with ``gather()`` (asyncio,
    with the article's ``except CancelledError: break``) or a trio nursery.  Its stop
    waits for the sleep to run out.  Grace (stubborn case only): asyncio.wait(tasks,
    timeout=grace), then cancel the rest; on trio, a deadline on the nursery."""
    period = env.period
    if env.is_trio:
        trio = env.mods["trio"]
        ev = trio.Event()

        async def background() -> None:
            try:
                p.park()
                while not ev.is_set():
                    p.ticks += 1
                    await trio.sleep(period)
            finally:
                p.exited()

        async with trio.open_nursery() as nursery:
            p.spawning()
            for _ in range(env.regular(p.n)):
                nursery.start_soon(background)
            if env.stubborn:
                nursery.start_soon(_stubborn(env, p, trio.sleep))
            await p.settle(env.delay)
            p.start()
            ev.set()
            p.stop_requested()
            if env.stubborn:
                nursery.cancel_scope.deadline = trio.current_time() + env.grace
        p.finish()
        return

    aev = asyncio.Event()

    async def abackground() -> None:
        try:
            p.park()
            while not aev.is_set():
                p.ticks += 1
                try:
                    await asyncio.sleep(period)
                except asyncio.CancelledError:
                    break  # the article's pattern: it swallows the cancellation
        finally:
            p.exited()

    p.spawning()
    create_task = asyncio.create_task
    tasks = [create_task(abackground()) for _ in range(env.regular(p.n))]
    if env.stubborn:
        tasks.append(create_task(_stubborn(env, p, asyncio.sleep)()))
    await p.settle(env.delay)
    p.start()
    aev.set()
    p.stop_requested()
    if env.stubborn:
        await _asyncio_grace(tasks, env.grace)
    await asyncio.gather(*tasks, return_exceptions=True)  # the cancelled one's error
    p.finish()


async def _asyncio_grace(tasks: Sequence[asyncio.Task[Any]], grace: float) -> None:
    """asyncio's grace, by hand: wait up to ``grace`` for the tasks, then cancel the rest
    (the group's exit, or a gather, then waits for them)."""
    _, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        task.cancel()


async def run_anyio_hand(env: Env, p: Probe) -> None:
    """A careful anyio user: a task group, an anyio.Event, a count of running members, a
    grace timer (``move_on_after``), then cancel."""
    stop = anyio.Event()
    all_exited = anyio.Event()
    running = 0
    period = env.period

    def gone() -> None:
        nonlocal running
        running -= 1
        if not running:
            all_exited.set()

    async def worker() -> None:
        try:
            p.park()
            while not stop.is_set():
                p.ticks += 1
                with anyio.move_on_after(period):
                    await stop.wait()
        finally:
            p.exited()
            gone()

    async with anyio.create_task_group() as tg:
        p.spawning()
        for _ in range(env.regular(p.n)):
            running += 1
            tg.start_soon(worker)
        if env.stubborn:
            running += 1
            tg.start_soon(_stubborn(env, p, anyio.sleep, gone))
        await p.settle()
        p.start()
        stop.set()
        p.stop_requested()
        with anyio.move_on_after(env.grace):
            await all_exited.wait()
        if running:
            tg.cancel_scope.cancel()
    p.finish()


def _asyncio_worker(env: Env, p: Probe, ev: asyncio.Event) -> Callable[[], Awaitable[None]]:
    """The asyncio idiom for an interruptible periodic loop: ``asyncio.timeout()`` around
    ``ev.wait()`` (3.11+; ``asyncio.wait_for()`` before, for aiojobs on 3.10)."""
    period = env.period

    async def worker() -> None:
        try:
            p.park()
            if hasattr(asyncio, "timeout"):
                while not ev.is_set():
                    p.ticks += 1
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(period):  # type: ignore[attr-defined]
                            await ev.wait()
            else:  # pragma: no cover - Python 3.10
                while not ev.is_set():
                    p.ticks += 1
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(ev.wait(), period)
        finally:
            p.exited()

    return worker


async def _run_asyncio_group(env: Env, p: Probe, group: Any) -> None:
    """asyncio.TaskGroup and aiotools.TaskGroup (a subclass): an asyncio.Event; grace by
    hand in the stubborn case."""
    ev = asyncio.Event()
    worker = _asyncio_worker(env, p, ev)
    async with group() as tg:
        p.spawning()
        if env.stubborn:
            tasks = [tg.create_task(worker()) for _ in range(env.regular(p.n))]
            tasks.append(tg.create_task(_stubborn(env, p, asyncio.sleep)()))
        else:
            for _ in range(p.n):
                tg.create_task(worker())
        await p.settle()
        p.start()
        ev.set()
        p.stop_requested()
        if env.stubborn:
            await _asyncio_grace(tasks, env.grace)
    p.finish()


async def run_asyncio_taskgroup(env: Env, p: Probe) -> None:
    await _run_asyncio_group(env, p, asyncio.TaskGroup)  # type: ignore[attr-defined]


async def run_aiotools_taskgroup(env: Env, p: Probe) -> None:
    await _run_asyncio_group(env, p, env.mods["aiotools"].TaskGroup)


async def run_aiotools_taskscope(env: Env, p: Probe) -> None:
    """aiotools.TaskScope (its long-lived group since 2.0; PersistentTaskGroup is
    deprecated in its favour) + asyncio.Event, workers as asyncio.TaskGroup's.  Grace
    (stubborn case): asyncio.wait(tasks, timeout=grace), then ``ts.abort()`` (its
    documented "cancel every child")."""
    aiotools = env.mods["aiotools"]
    ev = asyncio.Event()
    worker = _asyncio_worker(env, p, ev)
    async with aiotools.TaskScope() as ts:
        p.spawning()
        if env.stubborn:
            tasks = [ts.create_task(worker()) for _ in range(env.regular(p.n))]
            tasks.append(ts.create_task(_stubborn(env, p, asyncio.sleep)()))
        else:
            for _ in range(p.n):
                ts.create_task(worker())
        await p.settle()
        p.start()
        ev.set()
        p.stop_requested()
        if env.stubborn:
            _, pending = await asyncio.wait(tasks, timeout=env.grace)
            if pending:
                ts.abort()
    p.finish()


async def run_aiojobs_wait(env: Env, p: Probe) -> None:
    """An Event the jobs watch, then the scheduler's own "wait, then close":
    ``async with Scheduler(...)`` runs ``wait_and_close()`` (wait up to ``wait_timeout``,
    then cancel).  ``limit=None``: the default limit of 100 would queue every job past
    the 100th forever, since none finishes before the stop."""
    aiojobs = env.mods["aiojobs"]
    ev = asyncio.Event()
    worker = _asyncio_worker(env, p, ev)
    async with aiojobs.Scheduler(limit=None, wait_timeout=env.grace) as scheduler:
        p.spawning()
        for _ in range(env.regular(p.n)):
            await scheduler.spawn(worker())
        if env.stubborn:
            await scheduler.spawn(_stubborn(env, p, asyncio.sleep)())
        await p.settle()
        p.start()
        ev.set()
        p.stop_requested()
    p.finish()


async def run_aiojobs_close(env: Env, p: Probe) -> None:
    """``Scheduler.close()``: cancels every job (waiting up to ``close_timeout`` each for
    it to unwind); the jobs are plain sleep loops.  ``close_timeout=GRACE``: with the
    default (0.1 s), closing 10,000 jobs on a 2-core machine overruns it, and aiojobs
    logs "Job closing timed out" with a traceback for most of them.  No grace: not in
    the stubborn case."""
    aiojobs = env.mods["aiojobs"]
    period = env.period

    async def worker() -> None:
        try:
            p.park()
            while True:
                p.ticks += 1
                await asyncio.sleep(period)
        finally:
            p.exited()

    scheduler = aiojobs.Scheduler(limit=None, close_timeout=GRACE)
    p.spawning()
    for _ in range(p.n):
        await scheduler.spawn(worker())
    await p.settle()
    p.start()
    await scheduler.close()
    p.stop_requested()
    p.finish()


async def run_trio_nursery(env: Env, p: Probe) -> None:
    """A trio nursery + trio.Event; grace (stubborn case): a deadline on the nursery's
    cancel scope, trio's way of "cancel whatever is left after G"."""
    trio = env.mods["trio"]
    ev = trio.Event()
    period = env.period

    async def worker() -> None:
        try:
            p.park()
            while not ev.is_set():
                p.ticks += 1
                with trio.move_on_after(period):
                    await ev.wait()
        finally:
            p.exited()

    async with trio.open_nursery() as nursery:
        p.spawning()
        for _ in range(env.regular(p.n)):
            nursery.start_soon(worker)
        if env.stubborn:
            nursery.start_soon(_stubborn(env, p, trio.sleep))
        await p.settle()
        p.start()
        ev.set()
        p.stop_requested()
        if env.stubborn:
            nursery.cancel_scope.deadline = trio.current_time() + env.grace
    p.finish()


async def run_trio_util(env: Env, p: Probe) -> None:
    """trio-util's own pattern: ``periodic()`` inside ``move_on_when()`` on an AsyncBool,
    in a trio nursery.  Grace (stubborn case): an AsyncValue counts the running workers,
    ``move_on_after(grace)`` around ``wait_value(0)``, then cancel the nursery."""
    trio = env.mods["trio"]
    tu = env.mods["trio_util"]
    stop = tu.AsyncBool(False)
    running = tu.AsyncValue(0)
    period = env.period

    counted = env.stubborn  # the count is the grace's; without one, none is kept

    def gone() -> None:
        running.value -= 1

    async def worker() -> None:
        try:
            p.park()
            async with tu.move_on_when(stop.wait_value, True):
                async for _ in tu.periodic(period):
                    p.ticks += 1
        finally:
            p.exited()
            if counted:
                gone()

    async with trio.open_nursery() as nursery:
        p.spawning()
        for _ in range(env.regular(p.n)):
            if counted:
                running.value += 1
            nursery.start_soon(worker)
        if env.stubborn:
            running.value += 1
            nursery.start_soon(_stubborn(env, p, trio.sleep, gone))
        await p.settle()
        p.start()
        stop.value = True
        p.stop_requested()
        if env.stubborn:
            with trio.move_on_after(env.grace):
                await running.wait_value(0)
            nursery.cancel_scope.cancel()
    p.finish()


@dataclass(frozen=True)
class Peer:
    name: str
    run: Callable[[Env, Probe], Awaitable[None]]
    backends: tuple[str, ...]
    needs: tuple[str, ...]  # import names; the distribution is in DISTRIBUTIONS
    description: str
    #: the grace-then-cancel story: what the peer offers, or its idiomatic equivalent
    grace: str
    #: the cases it runs ("stop", "stubborn", "idle")
    cases: tuple[str, ...] = ("stop", "stubborn", "idle")


ASYNCIO = ("asyncio", "asyncio+uvloop")
PEERS: list[Peer] = [
    Peer("stopscope", run_stopscope, ALL_BACKENDS, ("stopscope",),
         "TaskScope(grace) + start_soon(); workers: async for _ in sig.every(period); "
         "scope.stop()",
         "built in: grace, then cancel, per scope and per member"),
    Peer(SEED, run_seed, ALL_BACKENDS, (),
         "the seed article's loop: while not ev.is_set(): work; await sleep(period) "
         f"(asyncio.sleep / trio.sleep, period {SEED_PERIOD:g}s in the stop cases); native "
         "tasks + gather() (with the article's except CancelledError: break) / a trio "
         "nursery; ev.set()",
         "none; by hand: asyncio.wait(tasks, timeout=grace), then cancel the rest / a "
         "deadline on the nursery"),
    Peer("anyio by hand", run_anyio_hand, ALL_BACKENDS, (),
         "anyio task group + anyio.Event + member count; workers: move_on_after(period) "
         "around ev.wait(); set, move_on_after(grace) on all exited, then cancel",
         "written by hand: move_on_after(grace), then tg.cancel_scope.cancel()"),
    Peer("asyncio.TaskGroup", run_asyncio_taskgroup, ASYNCIO, (),
         "asyncio.TaskGroup + asyncio.Event; workers: asyncio.timeout(period) around "
         "ev.wait(); ev.set()",
         "none; by hand: asyncio.wait(tasks, timeout=grace), then cancel the rest"),
    Peer("trio nursery", run_trio_nursery, ("trio",), ("trio",),
         "trio nursery + trio.Event; workers: move_on_after(period) around ev.wait(); "
         "ev.set()",
         "none; by hand: nursery.cancel_scope.deadline = current_time() + grace"),
    Peer("aiotools TaskGroup", run_aiotools_taskgroup, ASYNCIO, ("aiotools",),
         "aiotools.TaskGroup (an asyncio.TaskGroup) + asyncio.Event, workers as "
         "asyncio.TaskGroup's",
         "none; by hand, as asyncio.TaskGroup"),
    Peer("aiotools TaskScope", run_aiotools_taskscope, ASYNCIO, ("aiotools",),
         "aiotools.TaskScope (PersistentTaskGroup is deprecated for it) + asyncio.Event, "
         "workers as asyncio.TaskGroup's",
         "none (timeout= bounds the whole scope); by hand: asyncio.wait(tasks, "
         "timeout=grace), then ts.abort()"),
    Peer("aiojobs wait+close", run_aiojobs_wait, ASYNCIO, ("aiojobs",),
         "aiojobs.Scheduler(limit=None, wait_timeout=grace) as a context manager + "
         "asyncio.Event, workers as asyncio.TaskGroup's; exit = wait_and_close()",
         "built in: wait_and_close(timeout), then close() cancels"),
    Peer("aiojobs close", run_aiojobs_close, ASYNCIO, ("aiojobs",),
         "aiojobs.Scheduler(limit=None, close_timeout=grace); workers: while True: "
         "await asyncio.sleep(period); await scheduler.close() (cancellation; the default "
         "close_timeout of 0.1 s times out closing 10,000 jobs here)",
         "close() cancels at once (close_timeout bounds the unwinding); no grace, so "
         "not in the stubborn case",
         cases=("stop", "idle")),
    Peer("trio-util", run_trio_util, ("trio",), ("trio", "trio_util"),
         "trio nursery; workers: async with move_on_when(stop.wait_value, True): "
         "async for _ in periodic(period); stop.value = True (an AsyncBool)",
         "none; by hand: an AsyncValue counts running workers, move_on_after(grace) "
         "around wait_value(0), then cancel the nursery"),
]
BY_NAME = {p.name: p for p in PEERS}
REFERENCE = "stopscope"
#: the native group of each backend (the spawn and memory targets' yardstick)
NATIVE = {"asyncio": "asyncio.TaskGroup", "asyncio+uvloop": "asyncio.TaskGroup",
          "trio": "trio nursery"}
CASES = ("stop", "stubborn", "idle")
DISTRIBUTIONS = {"stopscope": "stopscope", "trio": "trio", "trio_util": "trio-util",
                 "aiotools": "aiotools", "aiojobs": "aiojobs", "uvloop": "uvloop"}


def import_optional(names: Sequence[str]) -> tuple[dict[str, ModuleType], dict[str, str]]:
    """The importable modules, and why each of the others is not."""
    mods: dict[str, ModuleType] = {}
    why: dict[str, str] = {}
    for name in names:
        try:
            mod = __import__(name)
            if name == "stopscope":
                mod.TaskScope  # noqa: B018
        except (ImportError, AttributeError) as exc:
            why[name] = f"{exc.__class__.__name__}: {exc}"
        else:
            mods[name] = mod
    return mods, why


def peer_unavailable(peer: Peer, env: Env, missing: dict[str, str]) -> str | None:
    for name in peer.needs:
        if name == "stopscope" and name in missing:
            return f"stopscope skipped: not importable ({missing[name]})"
        if name in missing:
            return (f"{peer.name} skipped: {DISTRIBUTIONS.get(name, name)} is not "
                    f"installed ({missing[name]}); pip install --group peers")
    if peer.run in (run_asyncio_taskgroup, run_aiotools_taskgroup) and not hasattr(
            asyncio, "TaskGroup"):
        return f"{peer.name} skipped: asyncio.TaskGroup needs Python 3.11+"
    return None


# --------------------------------------------------------------------------- configuration


@dataclass
class Config:
    mode: str
    backends: list[str]
    ns: list[int]
    reps: dict[int, int]  # measured repetitions per N, over all rounds
    rounds: int
    warmup: int
    memory_n: int
    memory_reps: int
    #: the stubborn case: fan-outs and measured repetitions per N (over all rounds)
    stubborn_ns: list[int]
    stubborn_reps: dict[int, int]
    #: the idle case: fan-outs, repetitions per N, the workers' period, the CPU window
    idle_ns: list[int]
    idle_reps: int
    idle_period: float  # the shortest period (see idle_period())
    idle_window: float  # the shortest window (see idle_window())
    rng_seed: int
    write: bool = True
    notes: list[str] = field(default_factory=list)


def idle_period(cfg: Config, n: int) -> float:
    """The idle workers' period at ``n``: ``cfg.idle_period``, or longer so that the N
    workers tick at most IDLE_RATE times a second in all (10,000 workers every 0.1 s
    would keep 2 cores busy: then every peer is late, and CPU says nothing)."""
    return max(cfg.idle_period, n / IDLE_RATE)


def idle_window(cfg: Config, n: int) -> float:
    """The CPU window at ``n``: k periods (k >= 2) and a half.  The workers' ticks come in
    waves (they were spawned together); the window opens just after wave 0, so waves 1..k
    fall inside it and wave k+1 half a period after it: every worker on time within half
    a period ticks k times in it, drift-free or not (a whole number of periods would put
    wave k on the window's edge, and count a loop that drifts by a microsecond a tick
    short)."""
    period = idle_period(cfg, n)
    return (max(2, round(cfg.idle_window / period)) + 0.5) * period


def make_config(args: argparse.Namespace) -> Config:
    if args.smoke:
        cfg = Config(mode="smoke", backends=list(ALL_BACKENDS), ns=[10], reps={10: 1},
                     rounds=1, warmup=0, memory_n=10, memory_reps=1, stubborn_ns=[10],
                     stubborn_reps={10: 1}, idle_ns=[10], idle_reps=1, idle_period=0.01,
                     idle_window=0.05, rng_seed=args.seed, write=False)
        cfg.notes.append("smoke mode: tiny N, one repetition, no file written; the "
                         "numbers mean nothing")
    elif args.quick:
        cfg = Config(mode="quick", backends=list(ALL_BACKENDS), ns=[100, 1000],
                     reps={100: 9, 1000: 7}, rounds=1, warmup=1, memory_n=1000,
                     memory_reps=2, stubborn_ns=[100, 1000], stubborn_reps={100: 4, 1000: 4},
                     idle_ns=[1000], idle_reps=2, idle_period=0.1, idle_window=0.3,
                     rng_seed=args.seed)
        cfg.notes.append("quick mode: N capped at 1,000 (the full run adds 10,000), fewer "
                         "repetitions, a 0.35 s idle window; run without --quick for the "
                         "committed figures")
    else:
        cfg = Config(mode="full", backends=list(ALL_BACKENDS), ns=[100, 1000, 10_000],
                     reps={100: 30, 1000: 21, 10_000: 12}, rounds=3, warmup=1,
                     memory_n=10_000, memory_reps=2, stubborn_ns=[100, 1000],
                     stubborn_reps={100: 15, 1000: 12}, idle_ns=[1000, 10_000], idle_reps=3,
                     idle_period=0.1, idle_window=1.0, rng_seed=args.seed)
    if args.backends:
        cfg.backends = [b for b in args.backends.split(",") if b]
    bad = [b for b in cfg.backends if b not in ALL_BACKENDS]
    if bad:
        raise SystemExit(f"unknown backend(s) {bad}; choose from {', '.join(ALL_BACKENDS)}")
    if args.n:
        cfg.ns = [int(x) for x in args.n.split(",")]
        if any(n < 1 for n in cfg.ns):
            raise SystemExit("--n: every fan-out must be at least 1")
        cfg.reps = {n: cfg.reps.get(n, min(cfg.reps.values())) for n in cfg.ns}
        cfg.stubborn_ns = [n for n in cfg.ns if n >= 2]  # one stubborn, one obedient
        cfg.stubborn_reps = {n: cfg.stubborn_reps.get(n, min(cfg.stubborn_reps.values()))
                             for n in cfg.stubborn_ns}
        cfg.idle_ns = cfg.ns[:]
    if args.reps:
        cfg.reps = {n: args.reps for n in cfg.ns}
        cfg.stubborn_reps = {n: args.reps for n in cfg.stubborn_ns}
    if args.rounds:
        cfg.rounds = args.rounds
    return cfg


def backend_args(backend: str) -> tuple[str, dict[str, Any]]:
    if backend == "asyncio+uvloop":
        return "asyncio", {"use_uvloop": True}
    return backend, {}


# --------------------------------------------------------------------------- measuring


@dataclass
class Results:
    runs: list[dict[str, Any]] = field(default_factory=list)
    memory: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def case_env(env: Env, peer: Peer, case: str, n: int, cfg: Config,
             rng: random.Random) -> Env:
    """Set ``env`` up for one run of ``peer`` in ``case``."""
    seed = peer.name == SEED
    env.case = case
    env.stubborn_exit = math.nan
    env.grace = STUBBORN_GRACE if case == "stubborn" else GRACE
    if case == "idle":
        env.period, env.delay = idle_period(cfg, n), 0.0
    elif seed:  # its stop waits for its sleep: land the stop at a random phase of it
        env.period, env.delay = SEED_PERIOD, rng.uniform(0.0, SEED_PERIOD)
    else:
        env.period, env.delay = PERIOD, 0.0
    return env


async def run_one(env: Env, peer: Peer, n: int, *, memory: bool = False,
                  idle_window: float = 0.0) -> tuple[Probe, int]:
    """One run, with a full collection before it and none during it.  A stop-case run
    whose timed windows lost CPU to another process is run again (at most MAX_RETRIES
    times); the seed's, the stubborn and the idle runs sleep by design (wall time is not
    CPU time there), so they are not judged that way."""
    attempt = 0
    while True:
        p = Probe(n, memory=memory, idle_window=idle_window)
        gc.collect()
        gc.disable()
        try:
            with anyio.fail_after(max(120.0, GRACE * 2)):
                await peer.run(env, p)
        finally:
            gc.enable()
        retry = env.case == "stop" and peer.name != SEED and not memory
        if not retry or attempt == MAX_RETRIES or not disturbed(p):
            return p, attempt
        attempt += 1


def run_record(env: Env, p: Probe, name: str, retries: int) -> dict[str, Any]:
    """The figures of one run (summarize_run raises unless all N workers exited)."""
    fig = summarize_run(p)
    rec: dict[str, Any] = {"exits": len(p.exits), "retries": retries}
    if env.case == "idle":
        wall, cpu, ticks = p.wall, p.cpu, p.ticks
        rec.update({"cpu": cpu, "wall": wall, "ticks": ticks, "cpu_frac": cpu / wall,
                    "ticks_per_s": ticks / wall,
                    "cpu_per_tick": cpu / ticks if ticks else math.nan,
                    "period": env.period})
        return rec
    rec.update({"disturbed": disturbed(p), "stop": fig["scope_exit"],
                "last_exit": fig["last_exit"], "spawn": fig["spawn"] / p.n})
    if name == SEED:
        rec["period"], rec["delay"] = env.period, env.delay
    if env.case == "stubborn":
        deadline = p.t0 + env.grace
        rec.update({
            "grace": env.grace, "overhead": fig["scope_exit"] - env.grace,
            # the obedient workers that exited within the grace (the others were cancelled)
            "in_grace": sum(1 for e in p.exits if e < deadline) / max(1, p.n - 1),
            # the stubborn worker's exit, after the stop request: at or after the grace
            "stubborn_exit": env.stubborn_exit - p.t0,
        })
    return rec


def case_ns(cfg: Config, case: str) -> list[int]:
    return {"stop": cfg.ns, "stubborn": cfg.stubborn_ns, "idle": cfg.idle_ns}[case]


def case_reps(cfg: Config, case: str, n: int) -> int:
    if case == "idle":
        return cfg.idle_reps
    return (cfg.reps if case == "stop" else cfg.stubborn_reps)[n]


async def backend_round(cfg: Config, env: Env, peers: list[Peer], rnd: int, results: Results,
                        rng: random.Random, progress: Progress) -> None:
    for case in CASES:
        names = [p.name for p in peers if case in p.cases]
        warmup = 0 if case == "idle" else cfg.warmup
        for n in case_ns(cfg, case):
            window = idle_window(cfg, n) if case == "idle" else 0.0
            reps = split_evenly(case_reps(cfg, case, n), cfg.rounds, rnd)
            t_start = time.perf_counter()
            for rep in range(-warmup, reps):
                order = names[:]
                rng.shuffle(order)
                for pos, name in enumerate(order):
                    peer = BY_NAME[name]
                    case_env(env, peer, case, n, cfg, rng)
                    p, retries = await run_one(env, peer, n, idle_window=window)
                    if rep >= 0:
                        results.runs.append(
                            {"case": case, "backend": env.backend, "n": n, "peer": name,
                             "round": rnd, "rep": rep, "pos": pos,
                             **run_record(env, p, name, retries)})
            if reps:
                progress(f"round {rnd + 1}/{cfg.rounds} {env.backend} {case}: N={n:,} "
                         f"x{reps} reps, {len(names)} peers "
                         f"({time.perf_counter() - t_start:.1f}s)")
    if rnd == 0:
        names = [p.name for p in peers]
        tracemalloc.start()
        try:
            for rep in range(cfg.memory_reps):
                order = names[:]
                rng.shuffle(order)
                for name in order:
                    case_env(env, BY_NAME[name], "stop", cfg.memory_n, cfg, rng)
                    p, _ = await run_one(env, BY_NAME[name], cfg.memory_n, memory=True)
                    results.memory.append(
                        {"backend": env.backend, "peer": name, "rep": rep,
                         "n": cfg.memory_n, "bytes": (p.mem1 - p.mem0) / cfg.memory_n})
        finally:
            tracemalloc.stop()
        progress(f"round {rnd + 1}/{cfg.rounds} {env.backend}: memory N={cfg.memory_n:,}")


def measure(cfg: Config, results: Results, progress: Progress) -> dict[str, list[Peer]]:
    mods, missing = import_optional(["stopscope", "trio", "uvloop", "trio_util", "aiotools",
                                     "aiojobs"])
    plan: dict[str, list[Peer]] = {}
    for backend in cfg.backends:
        if backend == "trio" and "trio" in missing:
            results.skipped[backend] = f"trio skipped: {missing['trio']}"
            continue
        if backend == "asyncio+uvloop" and "uvloop" in missing:
            results.skipped[backend] = f"asyncio+uvloop skipped: {missing['uvloop']}"
            continue
        env = Env(backend, mods)
        peers = []
        for peer in PEERS:
            if backend not in peer.backends:
                continue
            why = peer_unavailable(peer, env, missing)
            if why:
                results.skipped[f"{backend}/{peer.name}"] = why
            else:
                peers.append(peer)
        if REFERENCE not in {p.name for p in peers}:
            results.skipped[backend] = f"{backend} skipped: no stopscope to compare with"
            continue
        plan[backend] = peers
    for why in sorted(set(results.skipped.values())):
        progress(why)
    rng = random.Random(cfg.rng_seed)
    for rnd in range(cfg.rounds):
        order = list(plan)
        rng.shuffle(order)
        for backend in order:
            name, options = backend_args(backend)
            anyio.run(backend_round, cfg, Env(backend, mods), plan[backend], rnd, results,
                      rng, progress, backend=name, backend_options=options)
    return plan


# --------------------------------------------------------------------------- analysis


def median_ci(values: Sequence[float], rng: random.Random, resamples: int = 1000,
              level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the median."""
    if len(values) < 2:
        m = statistics.median(values) if values else math.nan
        return (m, m)
    stats = sorted(statistics.median(rng.choices(values, k=len(values)))
                   for _ in range(resamples))
    tail = (1.0 - level) / 2.0
    return (quantile(stats, tail), quantile(stats, 1.0 - tail))


#: the figures each case reports, as paired ratios to stopscope
FIGURES = {"stop": ("stop", "spawn"), "stubborn": ("stop", "overhead", "spawn"),
           "idle": ("cpu", "cpu_per_tick", "ticks_per_s", "cpu_frac")}
#: the issue's targets this benchmark measures: key -> (text, limit)
TARGETS = {
    "stop": ("stop -> all exited, N >= 100: no peer faster than stopscope "
             "(the fastest peer's ratio >= 1)", 1.0),
    "spawn": ("spawn per member within 1.2x of the native group "
              "(stopscope / native)", 1.2),
    "memory": ("memory per member within 1.2x of the native group "
               "(stopscope / native)", 1.2),
    "idle": ("idle CPU lowest of all: every peer's CPU per tick >= stopscope's "
             "(the cheapest peer's ratio >= 1)", 1.0),
}


def _paired(reps: list[dict[str, dict[str, Any]]], a: str, b: str, fig: str,
            rng: random.Random) -> dict[str, Any]:
    """Median of ``a``'s figure over ``b``'s in the same repetition, with its 95% CI."""
    own = [v[a][fig] for v in reps if a in v and not _nan(v[a][fig])]
    ratios = [v[a][fig] / v[b][fig] for v in reps
              if a in v and b in v and not _nan(v[a][fig]) and not _nan(v[b][fig])
              and v[b][fig] > 0]
    lo, hi = median_ci(ratios, rng)
    return {"median": statistics.median(own) if own else math.nan,
            "ratio": statistics.median(ratios) if ratios else math.nan,
            "ci": [lo, hi], "pairs": len(ratios)}


def _nan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def analyze(results: Results, plan: dict[str, list[Peer]], cfg: Config) -> dict[str, Any]:
    rng = random.Random(cfg.rng_seed + 1)
    by_key: dict[tuple[str, str, int], dict[tuple[int, int], dict[str, dict[str, Any]]]] = {}
    for r in results.runs:
        by_key.setdefault((r["case"], r["backend"], r["n"]), {}).setdefault(
            (r["round"], r["rep"]), {})[r["peer"]] = r
    cases: dict[str, list[dict[str, Any]]] = {case: [] for case in CASES}
    for case in CASES:
        for backend, peers in plan.items():
            for n in case_ns(cfg, case):
                reps = list(by_key.get((case, backend, n), {}).values())
                for peer in peers:
                    if case not in peer.cases:
                        continue
                    mine = [v[peer.name] for v in reps if peer.name in v]
                    row: dict[str, Any] = {"backend": backend, "n": n, "peer": peer.name,
                                           "runs": len(mine),
                                           "all_exited": all(r["exits"] == n for r in mine)}
                    for fig in FIGURES[case]:
                        row[fig] = _paired(reps, peer.name, REFERENCE, fig, rng)
                    if case == "idle":
                        row["ticks"] = statistics.median([r["ticks"] for r in mine]) \
                            if mine else math.nan
                    if case == "stubborn":
                        # cancelled: it exits only when cancelled, and not before the grace
                        row["stubborn_cancelled"] = all(
                            r["stubborn_exit"] >= 0.9 * r["grace"] for r in mine)
                        row["in_grace"] = statistics.median([r["in_grace"] for r in mine]) \
                            if mine else math.nan
                    cases[case].append(row)
    memory: list[dict[str, Any]] = []
    for backend, peers in plan.items():
        for peer in peers:
            vals = [m["bytes"] for m in results.memory
                    if m["backend"] == backend and m["peer"] == peer.name]
            ref = [m["bytes"] for m in results.memory
                   if m["backend"] == backend and m["peer"] == REFERENCE]
            mv = statistics.median(vals) if vals else math.nan
            mr = statistics.median(ref) if ref else math.nan
            memory.append({"backend": backend, "peer": peer.name, "n": cfg.memory_n,
                           "bytes": mv, "ratio": mv / mr if mr else math.nan})
    targets = judge(cfg, plan, by_key, cases, memory, rng)
    return {"cases": cases, "memory": memory, "targets": targets}


def judge(cfg: Config, plan: dict[str, list[Peer]],
          by_key: dict[tuple[str, str, int], dict[tuple[int, int], dict[str, dict[str, Any]]]],
          cases: dict[str, list[dict[str, Any]]], memory: list[dict[str, Any]],
          rng: random.Random) -> list[dict[str, Any]]:
    """PASS / MISS per target and backend, from the measured ratios (nothing assumed)."""
    out: list[dict[str, Any]] = []

    def add(key: str, backend: str, n: int | None, value: float, worst: str) -> None:
        limit = TARGETS[key][1]
        if _nan(value):
            verdict = "n/a"
        elif key in ("stop", "idle"):
            verdict = "PASS" if value >= limit else "MISS"
        else:
            verdict = "PASS" if value <= limit else "MISS"
        out.append({"target": key, "backend": backend, "n": n, "value": value,
                    "limit": limit, "verdict": verdict, "against": worst})

    for backend in plan:
        for n in [n for n in cfg.ns if n >= 100]:
            rows = [r for r in cases["stop"] if r["backend"] == backend and r["n"] == n
                    and r["peer"] != REFERENCE and not _nan(r["stop"]["ratio"])]
            if rows:
                best = min(rows, key=lambda r: r["stop"]["ratio"])
                add("stop", backend, n, best["stop"]["ratio"], best["peer"])
        native = NATIVE[backend]
        if native in {p.name for p in plan[backend]}:
            big = max(cfg.ns)
            reps = list(by_key.get(("stop", backend, big), {}).values())
            sp = _paired(reps, REFERENCE, native, "spawn", rng)
            add("spawn", backend, big, sp["ratio"], native)
            mem = {m["peer"]: m["bytes"] for m in memory if m["backend"] == backend}
            if mem.get(native):
                add("memory", backend, cfg.memory_n, mem[REFERENCE] / mem[native], native)
        for n in cfg.idle_ns:
            rows = [r for r in cases["idle"] if r["backend"] == backend and r["n"] == n
                    and r["peer"] != REFERENCE and not _nan(r["cpu_per_tick"]["ratio"])]
            if rows:
                best = min(rows, key=lambda r: r["cpu_per_tick"]["ratio"])
                add("idle", backend, n, best["cpu_per_tick"]["ratio"], best["peer"])
    return out


# --------------------------------------------------------------------------- table


def _r(x: float) -> str:
    if x is None or math.isnan(x):
        return "-"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def _n(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def _ms(x: float) -> str:
    return "-" if _nan(x) else f"{x * 1e3:.2f}ms"


def _pct(x: float) -> str:
    return "-" if _nan(x) else f"{x * 100:.0f}%" if x >= 0.1 else f"{x * 100:.1f}%"


def render(cfg: Config, meta: dict[str, Any], results: Results, plan: dict[str, list[Peer]],
           summary: dict[str, Any]) -> str:
    out: list[str] = []
    w = out.append
    v = meta["versions"]
    w(f"stopscope peers benchmark, {cfg.mode} mode, {meta['date']}")
    w(f"Python {meta['python']}, {meta['cpu_count']} CPUs; "
      + ", ".join(f"{k} {v.get(k) or '-'}" for k in ("stopscope", "anyio", "trio", "uvloop")))
    w("peers: " + ", ".join(f"{k} {v.get(k) or 'not installed'}"
                            for k in ("aiotools", "aiojobs", "trio-util")))
    for note in cfg.notes:
        w(textwrap.fill(f"NOTE: {note}", width=WIDTH, subsequent_indent="  "))
    for why in sorted(set(results.skipped.values())):
        w(textwrap.fill(why, width=WIDTH, subsequent_indent="  "))
    backends = list(plan)
    if not backends:
        w("nothing measured")
        return "\n".join(out)
    rows = {(case, r["backend"], r["n"], r["peer"]): r
            for case, rs in summary["cases"].items() for r in rs}
    mem = {(r["backend"], r["peer"]): r for r in summary["memory"]}
    short = {"asyncio": "asyncio", "asyncio+uvloop": "uvloop", "trio": "trio"}
    big = max(cfg.ns)

    def names_of(case: str | None) -> list[str]:
        return [p.name for p in PEERS if (case is None or case in p.cases)
                and any(p in plan[b] for b in backends)]

    label_w = max(len(n) for n in names_of(None))

    def grid(case: str, fig: str, ns: list[int], own: Callable[[float], str],
             absolute: bool = False) -> None:
        """Rows: peers; a group of columns per backend, a column per N; the stopscope
        row gives its own median, the others their paired ratio to it (``absolute``:
        every row its own median)."""
        names = names_of(case)
        head = [f"{short[b]} N=" + "/".join(_n(n) for n in ns) for b in backends]
        cells: list[list[str]] = []
        for name in names:
            row = []
            for b in backends:
                for n in ns:
                    r = rows.get((case, b, n, name))
                    row.append("" if r is None else own(r[fig]["median"])
                               if name == REFERENCE or absolute else _r(r[fig]["ratio"]))
            cells.append(row)
        cw = max(5, *(len(c) for row in cells for c in row))
        gw = max(len(ns) * cw + len(ns) - 1, *(len(h) for h in head))
        k = len(ns)
        w((" " * label_w + "  " + "  ".join(h.rjust(gw) for h in head)).rstrip())
        for name, row in zip(names, cells, strict=True):
            groups = [" ".join(c.rjust(cw) for c in row[i * k:(i + 1) * k])
                      if any(row[i * k:(i + 1) * k]) else "-" for i in range(len(backends))]
            w((name.ljust(label_w) + "  " + "  ".join(g.rjust(gw) for g in groups)).rstrip())

    # -- case 1: stop -> all exited and closed
    w("")
    w("== Case 1: stop requested -> every worker exited and the group closed ==")
    w("The peer's time over stopscope's in the same repetition, median of the ratios")
    w("(below 1: the peer is faster); the stopscope row gives its own median time.")
    w(f"The seed's loop sleeps {SEED_PERIOD:g}s and its stop lands at a random moment of it.")
    grid("stop", "stop", cfg.ns, fmt_time)
    # -- spawn and memory at the largest N
    w("")
    w(f"Spawn per member at N={big:,} and memory per parked member at N={cfg.memory_n:,}"
      " (tracemalloc),")
    w("ratio to stopscope (the stopscope row: its own figures).")
    names = names_of(None)
    rows2 = []
    for name in names:
        cells = []
        for b in backends:
            r = rows.get(("stop", b, big, name))
            cells.append("-" if r is None else fmt_time(r["spawn"]["median"])
                         if name == REFERENCE else _r(r["spawn"]["ratio"]))
        for b in backends:
            m = mem.get((b, name))
            cells.append("-" if m is None else fmt_bytes(m["bytes"]) if name == REFERENCE
                         else _r(m["ratio"]))
        rows2.append(cells)
    sub = [short[b] for b in backends]
    cw2 = max(*(len(h) for h in sub), *(len(c) for r in rows2 for c in r))
    gw2 = len(backends) * cw2 + 2 * (len(backends) - 1)
    half = len(backends)

    def line2(label: str, cells: list[str]) -> str:
        return (label.ljust(label_w) + "  "
                + "  ".join(c.rjust(cw2) for c in cells[:half]) + "    "
                + "  ".join(c.rjust(cw2) for c in cells[half:])).rstrip()

    w((" " * label_w + "  " + "spawn per member".center(gw2) + "    "
       + "memory per member".center(gw2)).rstrip())
    w(line2("", sub + sub))
    for name, cells in zip(names, rows2, strict=True):
        w(line2(name, cells))
    # -- case 2: one stubborn worker, grace, then cancel
    if cfg.stubborn_ns:
        w("")
        w(f"== Case 2: one stubborn worker (grace {STUBBORN_GRACE * 1000:g} ms, then cancel) ==")
        w("Stop requested -> every worker exited (the stubborn one cancelled) and the group")
        w("closed, grace included: ratio to stopscope's time in the same repetition; the")
        w("stopscope row: its own time.")
        grid("stubborn", "stop", cfg.stubborn_ns, fmt_time)
        w("The overhead beyond the grace (time minus grace), each peer's own median: the")
        w("grace timer's lateness, the cancellation, the unwinding, the group's exit. Not")
        w("as ratios: it is small and noisy, and on uvloop (libuv's millisecond timers) it")
        w("can be below 0; a ratio of two such figures means little (the JSON has it).")
        grid("stubborn", "overhead", cfg.stubborn_ns, _ms, absolute=True)
        late = [r for r in summary["cases"]["stubborn"] if r["in_grace"] < 1.0]
        bad = [r for r in summary["cases"]["stubborn"] if not r["stubborn_cancelled"]]
        w("Checks: " + ("the stubborn worker was cancelled, after the grace, in every run"
                        if not bad else "stubborn worker NOT cancelled after the grace: "
                        + ", ".join(f"{r['peer']} ({short[r['backend']]}, N={r['n']})"
                                    for r in bad)) + ".")
        if late:
            w(textwrap.fill(
                "Obedient workers not out within the grace (cancelled with the stubborn "
                "one), median share that made it: " + "; ".join(
                    f"{r['peer']} {short[r['backend']]} N={_n(r['n'])}: "
                    f"{_pct(r['in_grace'])}" for r in late),
                width=WIDTH, subsequent_indent="  "))
    # -- case 3: idle CPU
    if cfg.idle_ns:
        w("")
        w("== Case 3: idle CPU: N workers ticking, CPU over a window with all parked ==")
        w("period / window: " + ", ".join(
            f"N={_n(n)} {idle_period(cfg, n):g}s / {idle_window(cfg, n):g}s"
            for n in cfg.idle_ns) + f" (at most {IDLE_RATE:,} ticks/s in all)")
        w("Process CPU seconds over the window, ratio to stopscope's (lower is cheaper);")
        w("the stopscope row: its CPU as a share of the window.")
        grid("idle", "cpu", cfg.idle_ns, _pct)
        w("CPU per tick, ratio to stopscope's (a peer that ticks less is late, not")
        w("cheaper); the stopscope row: its CPU per tick.")
        grid("idle", "cpu_per_tick", cfg.idle_ns, fmt_time)
        w("Ticks per second, ratio to stopscope's; the stopscope row: its ticks per")
        w(f"second (N / period = {max(cfg.idle_ns) / idle_period(cfg, max(cfg.idle_ns)):,.0f} "
          f"at N={max(cfg.idle_ns):,} if on time).")
        grid("idle", "ticks_per_s", cfg.idle_ns, lambda x: "-" if _nan(x) else f"{x:,.0f}")
    # -- checks and targets
    w("")
    every = [r for rs in summary["cases"].values() for r in rs]
    missing = [r for r in every if not r["all_exited"] or not r["runs"]]
    w(f"Checks: {sum(r['runs'] for r in every)} runs, " + (
        "every worker of every run exited (exits counted)" if not missing else
        "workers missing in: " + ", ".join(f"{r['peer']} {short[r['backend']]}"
                                           for r in missing)) + ".")
    w("Targets (issue 11), from this run's medians of paired ratios:")
    for key, (text, _limit) in TARGETS.items():
        verdicts = [t for t in summary["targets"] if t["target"] == key]
        w(textwrap.fill(f"- {text}:", width=WIDTH, subsequent_indent="    "))
        if not verdicts:
            w("    not measured in this run")
        for t in verdicts:
            where = short[t["backend"]] + (f" N={t['n']:,}" if t["n"] else "")
            w(f"    {t['verdict']:4}  {where:<15} {_r(t['value'])}"
              f" (vs {t['against']})".rstrip())
    w("")
    w("Grace, then cancel (stopscope's default), as each peer writes it in case 2:")
    for name in names_of(None):
        w(textwrap.fill(f"{name}: {BY_NAME[name].grace}", width=WIDTH,
                        subsequent_indent="    "))
    w("What each peer runs: the JSON's 'peers'; the figures explained: docs/comparison.md")
    return "\n".join(out)


# --------------------------------------------------------------------------- markdown


def markdown(doc: dict[str, Any]) -> str:
    """The tables of docs/comparison.md, from a results file (``--markdown FILE``), so the
    page's figures are replaced by pasting, not by hand."""
    cfg, summary, meta = doc["config"], doc["summary"], doc["meta"]
    plan = [b for b in ALL_BACKENDS if any(r["backend"] == b for r in summary["memory"])]
    short = {"asyncio": "asyncio", "asyncio+uvloop": "uvloop", "trio": "trio"}
    rows = {(case, r["backend"], r["n"], r["peer"]): r
            for case, rs in summary["cases"].items() for r in rs}
    names = [p.name for p in PEERS if p.name in doc["peers"]]

    def label(name: str) -> str:
        return name if " " in name or name in ("stopscope", "trio-util") else f"`{name}`"

    def n_fmt(n: int) -> str:
        return f"{n:,}"

    def table(case: str, fig: str, ns: list[int], own: Callable[[float], str],
              absolute: bool = False) -> list[str]:
        head = [f"{short[b]} N={n_fmt(ns[0])}" if i == 0 else n_fmt(n)
                for b in plan for i, n in enumerate(ns)]
        out = ["| | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
        for name in names:
            if case not in doc["peers"][name]["cases"]:
                continue
            cells = []
            for b in plan:
                for n in ns:
                    r = rows.get((case, b, n, name))
                    cells.append("" if r is None else own(r[fig]["median"]).replace("us", " µs")
                                 .replace("ms", " ms").replace("  ", " ")
                                 if name == REFERENCE or absolute else _r(r[fig]["ratio"]))
            tag = " (its own)" if name == REFERENCE and not absolute else ""
            out.append(f"| {label(name)}{tag} | " + " | ".join(cells) + " |")
        return out

    ns = [int(n) for n in cfg["reps"]]
    big = max(ns)
    out = [f"<!-- tables: bench_peers.py --markdown, from the {meta['mode']} run of "
           f"{meta['date']} -->", ""]
    out.append("Case 1, stop requested -> every worker exited and the group closed, ratio "
               "to stopscope (below 1: the peer is faster):")
    out += ["", *table("stop", "stop", ns, fmt_time), ""]
    out.append(f"Spawn per member (N = {big:,}) and memory per parked member "
               f"(N = {cfg['memory_n']:,}), ratio to stopscope:")
    out.append("")
    out.append("| | " + " | ".join(f"spawn {short[b]}" if i == 0 else short[b]
                                    for i, b in enumerate(plan)) + " | "
               + " | ".join(f"memory {short[b]}" if i == 0 else short[b]
                            for i, b in enumerate(plan)) + " |")
    out.append("|---" * (2 * len(plan) + 1) + "|")
    mem = {(m["backend"], m["peer"]): m for m in summary["memory"]}
    for name in names:
        cells = []
        for b in plan:
            r = rows.get(("stop", b, big, name))
            cells.append("" if r is None else fmt_time(r["spawn"]["median"]).replace(
                "us", " µs") if name == REFERENCE else _r(r["spawn"]["ratio"]))
        for b in plan:
            m = mem.get((b, name))
            cells.append("" if m is None else f"{m['bytes']:,.0f} B" if name == REFERENCE
                         else _r(m["ratio"]))
        tag = " (its own)" if name == REFERENCE else ""
        out.append(f"| {label(name)}{tag} | " + " | ".join(cells) + " |")
    sns = [int(n) for n in cfg["stubborn_reps"]]
    out += ["", f"Case 2, one stubborn worker, grace {cfg['stubborn_grace'] * 1000:g} ms: stop "
            "requested -> every worker exited and the group closed (grace included), ratio "
            "to stopscope:", "", *table("stubborn", "stop", sns, fmt_time), "",
            "Case 2, the overhead beyond the grace (time minus grace), each one's own median:",
            "", *table("stubborn", "overhead", sns, _ms, absolute=True)]
    ins = [int(n) for n in cfg["idle_periods"]]
    per = ", ".join(f"N = {n:,}: every {cfg['idle_periods'][str(n)]:g} s, window "
                    f"{cfg['idle_windows'][str(n)]:g} s" for n in ins)
    out += ["", f"Case 3, idle CPU ({per}): CPU per tick, ratio to stopscope (below 1: the "
            "peer is cheaper):", "", *table("idle", "cpu_per_tick", ins, fmt_time), "",
            "Case 3, ticks per second, ratio to stopscope (below 1: the peer is late):", "",
            *table("idle", "ticks_per_s", ins, lambda x: f"{x:,.0f}/s")]
    out += ["", "Targets (issue 11), from the same run (stop and idle: the fastest or "
            "cheapest peer over stopscope, PASS at 1 or above; spawn and memory: stopscope "
            "over the native group, PASS at 1.2 or below):", "",
            "| target | backend | N | measured | verdict | against |", "|---|---|---|---|---|---|"]
    for t in sorted(summary["targets"], key=lambda t: list(TARGETS).index(t["target"])):
        out.append(f"| {t['target']} | {short[t['backend']]} | {t['n']:,} | "
                   f"{_r(t['value'])} | {t['verdict']} | {label(t['against'])} |")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- main




def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="about a minute: N <= 1,000")
    mode.add_argument("--smoke", action="store_true",
                      help="harness check: tiny N, 1 repetition, no file written")
    parser.add_argument("--out", type=Path, help="JSON path (default: results/peers.json, "
                        "or results/peers-quick.json with --quick)")
    parser.add_argument("--backends", help="comma-separated subset of " + ",".join(ALL_BACKENDS))
    parser.add_argument("--n", help="comma-separated fan-outs, e.g. 100,1000")
    parser.add_argument("--reps", type=int, help="repetitions per N (overrides the mode)")
    parser.add_argument("--rounds", type=int, help="rounds over the backends")
    parser.add_argument("--seed", type=int, default=20261201, help="random seed (order)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("--markdown", type=Path, metavar="FILE",
                        help="measure nothing: print docs/comparison.md's tables from a "
                        "results file")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())), end="")
        return 0

    cfg = make_config(args)
    if args.out and cfg.mode == "smoke":
        cfg.write = True
    progress = Progress(enabled=not args.quiet)
    meta = run_metadata(sys.argv if argv is None else ["bench_peers.py", *argv], cfg.mode,
                        HERE.parent)
    versions = dict(meta["versions"])  # type: ignore[call-overload]
    for dist in ("aiotools", "aiojobs", "trio-util"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    meta["versions"] = versions
    progress(f"measuring, {cfg.mode} mode: {', '.join(cfg.backends)}; "
             f"N={', '.join(f'{n:,}' for n in cfg.ns)}")
    t0 = time.perf_counter()
    results = Results()
    plan = measure(cfg, results, progress)
    meta["seconds"] = round(time.perf_counter() - t0, 1)
    summary = analyze(results, plan, cfg)
    table = render(cfg, meta, results, plan, summary)
    print(table, flush=True)
    if not cfg.write:
        progress(f"done in {meta['seconds']}s; no file written ({cfg.mode} mode)")
        return 0
    out: Path = args.out or RESULTS / ("peers-quick.json" if cfg.mode == "quick"
                                       else "peers.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "schema": SCHEMA,
        "meta": meta,
        "config": {**asdict(cfg), "reps": {str(k): v for k, v in cfg.reps.items()},
                   "grace": GRACE, "period": PERIOD, "reference": REFERENCE,
                   "seed_period": SEED_PERIOD, "stubborn_grace": STUBBORN_GRACE,
                   "stubborn_reps": {str(k): v for k, v in cfg.stubborn_reps.items()},
                   "native": NATIVE, "idle_rate": IDLE_RATE,
                   "idle_periods": {str(n): idle_period(cfg, n) for n in cfg.idle_ns},
                   "idle_windows": {str(n): idle_window(cfg, n) for n in cfg.idle_ns}},
        "peers": {p.name: {"backends": list(p.backends), "description": p.description,
                           "grace_then_cancel": p.grace, "cases": list(p.cases)}
                  for p in PEERS},
        "skipped": results.skipped,
        "samples": {"runs": results.runs, "memory": results.memory},
        "summary": summary,
        "table": table,
    }
    out.write_text(dump_json(doc))
    progress(f"results written to {out} ({meta['seconds']}s of measuring)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
