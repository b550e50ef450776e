#!/usr/bin/env python3
"""How does stopscope compare with what people use instead?  The same job, written the
idiomatic way for each peer: N periodic workers; the stop is requested; wait until every
worker has exited and the group is closed.  On asyncio, asyncio+uvloop and trio, wherever
the peer runs, in one process run.

    python benchmarks/bench_peers.py --quick    # < 1 min, N <= 1,000; the table
    python benchmarks/bench_peers.py            # the full run (committed results)
    python benchmarks/bench_peers.py --smoke    # harness check: tiny N, no file written

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
import math
import random
import statistics
import sys
import textwrap
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Sequence
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
SCHEMA = "stopscope-bench-peers/1"
ALL_BACKENDS = ("asyncio", "asyncio+uvloop", "trio")
#: every group gets this grace where it has one; never reached (workers stop at once)
GRACE = 60.0
#: the workers' period: never elapses during a measurement (they park after tick 0)
PERIOD = 3600.0
#: a run that another process preempted is run again, at most this many times
MAX_RETRIES = 3
#: the compact table's width limit
WIDTH = 100


# --------------------------------------------------------------------------- the peers


@dataclass
class Env:
    backend: str
    mods: dict[str, ModuleType]  # importable optional modules, by import name

    @property
    def is_trio(self) -> bool:
        return self.backend == "trio"


async def run_stopscope(env: Env, p: Probe) -> None:
    ss = env.mods["stopscope"]

    async def worker(sig: Any) -> None:
        try:
            async for _ in sig.every(PERIOD):
                p.park()
        finally:
            p.exited()

    async with ss.TaskScope(grace=GRACE) as scope:
        p.spawning()
        for _ in range(p.n):
            scope.start_soon(worker, scope.signal)
        await p.settle()
        p.start()
        scope.stop()
        p.stop_requested()
    p.finish()


async def run_anyio_hand(env: Env, p: Probe) -> None:
    """A careful anyio user: a task group, an anyio.Event, a count of running members, a
    grace timer (``move_on_after``), then cancel."""
    stop = anyio.Event()
    all_exited = anyio.Event()
    running = 0

    async def worker() -> None:
        nonlocal running
        try:
            while not stop.is_set():
                p.park()
                with anyio.move_on_after(PERIOD):
                    await stop.wait()
        finally:
            p.exited()
            running -= 1
            if not running:
                all_exited.set()

    async with anyio.create_task_group() as tg:
        p.spawning()
        for _ in range(p.n):
            running += 1
            tg.start_soon(worker)
        await p.settle()
        p.start()
        stop.set()
        p.stop_requested()
        with anyio.move_on_after(GRACE):
            await all_exited.wait()
        if running:
            tg.cancel_scope.cancel()
    p.finish()


async def _asyncio_worker(p: Probe, ev: asyncio.Event) -> None:
    """The asyncio idiom for an interruptible periodic loop: ``asyncio.timeout()`` around
    ``ev.wait()`` (3.11+; ``asyncio.wait_for()`` before, for aiojobs on 3.10)."""
    try:
        if hasattr(asyncio, "timeout"):
            while not ev.is_set():
                p.park()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(PERIOD):  # type: ignore[attr-defined]
                        await ev.wait()
        else:  # pragma: no cover - Python 3.10
            while not ev.is_set():
                p.park()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(ev.wait(), PERIOD)
    finally:
        p.exited()


async def run_asyncio_taskgroup(env: Env, p: Probe) -> None:
    ev = asyncio.Event()
    async with asyncio.TaskGroup() as tg:  # type: ignore[attr-defined]
        p.spawning()
        for _ in range(p.n):
            tg.create_task(_asyncio_worker(p, ev))
        await p.settle()
        p.start()
        ev.set()
        p.stop_requested()
    p.finish()


async def run_aiotools_taskgroup(env: Env, p: Probe) -> None:
    aiotools = env.mods["aiotools"]
    ev = asyncio.Event()
    async with aiotools.TaskGroup() as tg:
        p.spawning()
        for _ in range(p.n):
            tg.create_task(_asyncio_worker(p, ev))
        await p.settle()
        p.start()
        ev.set()
        p.stop_requested()
    p.finish()


async def run_aiotools_taskscope(env: Env, p: Probe) -> None:
    """aiotools.TaskScope (its long-lived group since 2.0; PersistentTaskGroup is
    deprecated in its favour) + asyncio.Event, workers as asyncio.TaskGroup's."""
    aiotools = env.mods["aiotools"]
    ev = asyncio.Event()
    async with aiotools.TaskScope() as ts:
        p.spawning()
        for _ in range(p.n):
            ts.create_task(_asyncio_worker(p, ev))
        await p.settle()
        p.start()
        ev.set()
        p.stop_requested()
    p.finish()


async def run_aiojobs_wait(env: Env, p: Probe) -> None:
    """An Event the jobs watch, then the scheduler's own "wait, then close":
    ``async with Scheduler(...)`` runs ``wait_and_close()`` (wait up to ``wait_timeout``,
    then cancel).  ``limit=None``: the default limit of 100 would queue every job past
    the 100th forever, since none finishes before the stop."""
    aiojobs = env.mods["aiojobs"]
    ev = asyncio.Event()
    async with aiojobs.Scheduler(limit=None, wait_timeout=GRACE) as scheduler:
        p.spawning()
        for _ in range(p.n):
            await scheduler.spawn(_asyncio_worker(p, ev))
        await p.settle()
        p.start()
        ev.set()
        p.stop_requested()
    p.finish()


async def run_aiojobs_close(env: Env, p: Probe) -> None:
    """``Scheduler.close()``: cancels every job (waiting up to ``close_timeout`` each for
    it to unwind); the jobs are plain sleep loops.  ``close_timeout=GRACE``: with the
    default (0.1 s), closing 10,000 jobs on a 2-core machine overruns it, and aiojobs
    logs "Job closing timed out" with a traceback for most of them."""
    aiojobs = env.mods["aiojobs"]

    async def worker() -> None:
        try:
            while True:
                p.park()
                await asyncio.sleep(PERIOD)
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
    trio = env.mods["trio"]
    ev = trio.Event()

    async def worker() -> None:
        try:
            while not ev.is_set():
                p.park()
                with trio.move_on_after(PERIOD):
                    await ev.wait()
        finally:
            p.exited()

    async with trio.open_nursery() as nursery:
        p.spawning()
        for _ in range(p.n):
            nursery.start_soon(worker)
        await p.settle()
        p.start()
        ev.set()
        p.stop_requested()
    p.finish()


async def run_trio_util(env: Env, p: Probe) -> None:
    """trio-util's own pattern: ``periodic()`` inside ``move_on_when()`` on an AsyncBool,
    in a trio nursery."""
    trio = env.mods["trio"]
    tu = env.mods["trio_util"]
    stop = tu.AsyncBool(False)

    async def worker() -> None:
        try:
            async with tu.move_on_when(stop.wait_value, True):
                async for _ in tu.periodic(PERIOD):
                    p.park()
        finally:
            p.exited()

    async with trio.open_nursery() as nursery:
        p.spawning()
        for _ in range(p.n):
            nursery.start_soon(worker)
        await p.settle()
        p.start()
        stop.value = True
        p.stop_requested()
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


ASYNCIO = ("asyncio", "asyncio+uvloop")
PEERS: list[Peer] = [
    Peer("stopscope", run_stopscope, ALL_BACKENDS, ("stopscope",),
         "TaskScope(grace) + start_soon(); workers: async for _ in sig.every(period); "
         "scope.stop()",
         "built in: grace, then cancel, per scope and per member"),
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
         "none; by hand: move_on_after(grace) on an 'all exited' Event, then "
         "nursery.cancel_scope.cancel()"),
    Peer("aiotools TaskGroup", run_aiotools_taskgroup, ASYNCIO, ("aiotools",),
         "aiotools.TaskGroup (an asyncio.TaskGroup) + asyncio.Event, workers as "
         "asyncio.TaskGroup's",
         "none (as asyncio.TaskGroup)"),
    Peer("aiotools TaskScope", run_aiotools_taskscope, ASYNCIO, ("aiotools",),
         "aiotools.TaskScope (PersistentTaskGroup is deprecated for it) + asyncio.Event, "
         "workers as asyncio.TaskGroup's",
         "none; timeout= bounds the whole scope, aclose() cancels at once"),
    Peer("aiojobs wait+close", run_aiojobs_wait, ASYNCIO, ("aiojobs",),
         "aiojobs.Scheduler(limit=None, wait_timeout=grace) as a context manager + "
         "asyncio.Event, workers as asyncio.TaskGroup's; exit = wait_and_close()",
         "built in: wait_and_close(timeout), then close() cancels"),
    Peer("aiojobs close", run_aiojobs_close, ASYNCIO, ("aiojobs",),
         "aiojobs.Scheduler(limit=None, close_timeout=grace); workers: while True: "
         "await asyncio.sleep(period); await scheduler.close() (cancellation; the default "
         "close_timeout of 0.1 s times out closing 10,000 jobs here)",
         "close() cancels at once (close_timeout bounds the unwinding)"),
    Peer("trio-util", run_trio_util, ("trio",), ("trio", "trio_util"),
         "trio nursery; workers: async with move_on_when(stop.wait_value, True): "
         "async for _ in periodic(period); stop.value = True (an AsyncBool)",
         "none (trio's: move_on_after(grace), then cancel the nursery)"),
]
BY_NAME = {p.name: p for p in PEERS}
REFERENCE = "stopscope"
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
    rng_seed: int
    write: bool = True
    notes: list[str] = field(default_factory=list)


def make_config(args: argparse.Namespace) -> Config:
    if args.smoke:
        cfg = Config(mode="smoke", backends=list(ALL_BACKENDS), ns=[10], reps={10: 1},
                     rounds=1, warmup=0, memory_n=10, memory_reps=1, rng_seed=args.seed,
                     write=False)
        cfg.notes.append("smoke mode: tiny N, one repetition, no file written; the "
                         "numbers mean nothing")
    elif args.quick:
        cfg = Config(mode="quick", backends=list(ALL_BACKENDS), ns=[100, 1000],
                     reps={100: 9, 1000: 7}, rounds=1, warmup=1, memory_n=1000,
                     memory_reps=2, rng_seed=args.seed)
        cfg.notes.append("quick mode: N capped at 1,000 (the full run adds 10,000), fewer "
                         "repetitions; run without --quick for the committed figures")
    else:
        cfg = Config(mode="full", backends=list(ALL_BACKENDS), ns=[100, 1000, 10_000],
                     reps={100: 30, 1000: 21, 10_000: 12}, rounds=3, warmup=1,
                     memory_n=10_000, memory_reps=2, rng_seed=args.seed)
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
    if args.reps:
        cfg.reps = {n: args.reps for n in cfg.ns}
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


async def run_one(env: Env, peer: Peer, n: int, *, memory: bool = False) -> tuple[Probe, int]:
    """One run, with a full collection before it and none during it; a run whose timed
    windows lost CPU to another process is run again (at most MAX_RETRIES times)."""
    attempt = 0
    while True:
        p = Probe(n, memory=memory)
        gc.collect()
        gc.disable()
        try:
            with anyio.fail_after(max(120.0, GRACE * 2)):
                await peer.run(env, p)
        finally:
            gc.enable()
        if memory or attempt == MAX_RETRIES or not disturbed(p):
            return p, attempt
        attempt += 1


async def backend_round(cfg: Config, env: Env, peers: list[Peer], rnd: int, results: Results,
                        rng: random.Random, progress: Progress) -> None:
    names = [p.name for p in peers]
    for n in cfg.ns:
        reps = split_evenly(cfg.reps[n], cfg.rounds, rnd)
        t_start = time.perf_counter()
        for rep in range(-cfg.warmup, reps):
            order = names[:]
            rng.shuffle(order)
            for pos, name in enumerate(order):
                p, retries = await run_one(env, BY_NAME[name], n)
                if rep >= 0:
                    fig = summarize_run(p)
                    results.runs.append(
                        {"backend": env.backend, "n": n, "peer": name, "round": rnd,
                         "rep": rep, "pos": pos, "retries": retries,
                         "disturbed": disturbed(p), "stop": fig["scope_exit"],
                         "last_exit": fig["last_exit"], "spawn": fig["spawn"] / n}
                    )
        if reps:
            progress(f"round {rnd + 1}/{cfg.rounds} {env.backend}: N={n:,} x{reps} reps, "
                     f"{len(names)} peers ({time.perf_counter() - t_start:.1f}s)")
    if rnd == 0:
        tracemalloc.start()
        try:
            for rep in range(cfg.memory_reps):
                order = names[:]
                rng.shuffle(order)
                for name in order:
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


def analyze(results: Results, plan: dict[str, list[Peer]], cfg: Config) -> dict[str, Any]:
    rng = random.Random(cfg.rng_seed + 1)
    by_key: dict[tuple[str, int, int, int], dict[str, dict[str, Any]]] = {}
    for r in results.runs:
        by_key.setdefault((r["backend"], r["n"], r["round"], r["rep"]), {})[r["peer"]] = r
    rows: list[dict[str, Any]] = []
    for backend, peers in plan.items():
        for n in cfg.ns:
            reps = [v for k, v in by_key.items() if k[0] == backend and k[1] == n]
            for peer in peers:
                row: dict[str, Any] = {"backend": backend, "n": n, "peer": peer.name}
                for fig in ("stop", "spawn"):
                    own = [v[peer.name][fig] for v in reps if peer.name in v]
                    ratios = [v[peer.name][fig] / v[REFERENCE][fig] for v in reps
                              if peer.name in v and REFERENCE in v and v[REFERENCE][fig] > 0]
                    lo, hi = median_ci(ratios, rng)
                    row[fig] = {
                        "median": statistics.median(own) if own else math.nan,
                        "ratio": statistics.median(ratios) if ratios else math.nan,
                        "ci": [lo, hi], "pairs": len(ratios),
                    }
                rows.append(row)
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
    return {"runs": rows, "memory": memory}


# --------------------------------------------------------------------------- table


def _r(x: float) -> str:
    if x is None or math.isnan(x):
        return "-"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def _n(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


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
    runs = {(r["backend"], r["n"], r["peer"]): r for r in summary["runs"]}
    mem = {(r["backend"], r["peer"]): r for r in summary["memory"]}
    names = [p.name for p in PEERS if any(p in plan[b] for b in backends)]
    short = {"asyncio": "asyncio", "asyncio+uvloop": "uvloop", "trio": "trio"}
    big = max(cfg.ns)

    def cell(fig: dict[str, Any] | None, ref: bool, absolute: Callable[[float], str]) -> str:
        if not fig:
            return ""
        return absolute(fig["median"]) if ref else _r(fig["ratio"])

    label_w = max(len(n) for n in names)
    # -- stop -> all exited and closed
    head = [f"{short[b]} N=" + "/".join(_n(n) for n in cfg.ns) for b in backends]
    grid: list[list[str]] = []
    for name in names:
        grid.append([cell(runs.get((b, n, name), {}).get("stop"), name == REFERENCE,
                          fmt_time) for b in backends for n in cfg.ns])
    cw = max(5, *(len(c) for row in grid for c in row))
    gw = max(len(cfg.ns) * cw + len(cfg.ns) - 1, *(len(h) for h in head))

    def line(label: str, groups: list[str]) -> str:
        return (label.ljust(label_w) + "  " + "  ".join(g.rjust(gw) for g in groups)).rstrip()

    w("")
    w("Stop requested -> every worker exited and the group closed: the peer's time over")
    w("stopscope's in the same repetition, median of the ratios (below 1: the peer is")
    w("faster). The stopscope row gives its own median time.")
    w(line("", head))
    for name, row in zip(names, grid, strict=True):
        groups = [" ".join(c.rjust(cw) for c in row[i * len(cfg.ns):(i + 1) * len(cfg.ns)])
                  if any(row[i * len(cfg.ns):(i + 1) * len(cfg.ns)]) else "-"
                  for i in range(len(backends))]
        w(line(name, groups))
    # -- spawn and memory at the largest N
    w("")
    w(f"Spawn per member at N={big:,} and memory per parked member at N={cfg.memory_n:,}"
      " (tracemalloc),")
    w("ratio to stopscope (the stopscope row: its own figures).")
    rows2 = []
    for name in names:
        cells = [cell(runs.get((b, big, name), {}).get("spawn"), name == REFERENCE, fmt_time)
                 or "-" for b in backends]
        for b in backends:
            m = mem.get((b, name))
            cells.append("-" if m is None else fmt_bytes(m["bytes"]) if name == REFERENCE
                         else _r(m["ratio"]))
        rows2.append(cells)
    sub = [short[b] for b in backends]
    cw2 = max(*(len(h) for h in sub), *(len(c) for r in rows2 for c in r))
    gw2 = len(backends) * cw2 + 2 * (len(backends) - 1)

    def line2(label: str, cells: list[str]) -> str:
        half = len(backends)
        return (label.ljust(label_w) + "  "
                + "  ".join(c.rjust(cw2) for c in cells[:half]) + "    "
                + "  ".join(c.rjust(cw2) for c in cells[half:])).rstrip()

    w((" " * label_w + "  " + "spawn per member".center(gw2) + "    "
       + "memory per member".center(gw2)).rstrip())
    w(line2("", sub + sub))
    for name, cells in zip(names, rows2, strict=True):
        w(line2(name, cells))
    w("")
    w("Grace, then cancel (stopscope's default):")
    for name in names:
        w(textwrap.fill(f"{name}: {BY_NAME[name].grace}", width=WIDTH,
                        subsequent_indent="    "))
    w("What each peer runs: the JSON's 'peers'; the figures explained: docs/comparison.md")
    return "\n".join(out)


# --------------------------------------------------------------------------- main




def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="under a minute: N <= 1,000")
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
    args = parser.parse_args(argv)

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
                   "grace": GRACE, "period": PERIOD, "reference": REFERENCE},
        "peers": {p.name: {"backends": list(p.backends), "description": p.description,
                           "grace_then_cancel": p.grace} for p in PEERS},
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
