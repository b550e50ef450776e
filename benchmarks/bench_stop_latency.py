#!/usr/bin/env python3
"""How fast does a stop request become an exited task?  stopscope against the seed's
polling loop, hand-written anyio, hard cancellation and the backends' own primitives, on
asyncio, asyncio+uvloop and trio, in one run.

    python benchmarks/bench_stop_latency.py --quick    # < 1 min, N capped; the table
    python benchmarks/bench_stop_latency.py            # the full run (committed results)
    python benchmarks/bench_stop_latency.py --smoke --out /tmp/smoke.json   # harness check

Every figure is a median over repetitions and a ratio to its reference measured in the
same process run; the strategies are interleaved in a random order within each
repetition, so noise hits all of them alike. The terminal table goes to stdout, progress
to stderr; raw samples and the run's conditions go to JSON next to a PNG plot.
See docs/benchmarks.md for what each strategy is and how to read the table.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import random
import sys
import textwrap
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio

from _harness import (
    Progress,
    bootstrap_ratio_ci,
    dump_json,
    fmt_bytes,
    fmt_ratio,
    fmt_time,
    mann_whitney_p,
    median,
    render_table,
    run_metadata,
    split_evenly,
)
from _strategies import (
    BY_NAME,
    GRACE,
    IDLE_STRATEGIES,
    MEMORY_STRATEGIES,
    PARK_PERIOD,
    REFERENCES,
    SETTLE_CHECKPOINTS,
    STRATEGIES,
    THREAD_STRATEGIES,
    Env,
    Pinger,
    Probe,
    Strategy,
    available,
    disturbed,
    micro_makers,
    micro_once,
    summarize_run,
    thread_wake,
)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SCHEMA = "stopscope-bench-stop-latency/1"
ALL_BACKENDS = ("asyncio", "asyncio+uvloop", "trio")


# --------------------------------------------------------------------------- configuration


@dataclass
class Config:
    mode: str
    backends: list[str]
    ns: list[int]
    reps: dict[int, int]  # measured repetitions per N (over all rounds)
    rounds: int  # each round runs every backend once, in a random order
    warmup: int  # discarded repetitions per N at the start of each backend run
    seed_interval: float
    thread_reps: int
    micro_reps: int
    micro_loops: int
    memory_n: int
    memory_reps: int
    idle_ns: list[int]
    idle_period: float
    idle_window: float
    idle_reps: int
    rng_seed: int
    plot: bool = True
    notes: list[str] = field(default_factory=list)


def make_config(args: argparse.Namespace) -> Config:
    if args.smoke:
        cfg = Config(
            mode="smoke", backends=list(ALL_BACKENDS), ns=[1, 10], reps={1: 1, 10: 1},
            rounds=1, warmup=0, seed_interval=0.01, thread_reps=2, micro_reps=1,
            micro_loops=1000, memory_n=10, memory_reps=1, idle_ns=[10], idle_period=0.01,
            idle_window=0.03, idle_reps=1, rng_seed=args.seed,
        )
        cfg.notes.append("smoke mode: tiny N, one repetition; the numbers mean nothing")
    elif args.quick:
        cfg = Config(
            mode="quick", backends=list(ALL_BACKENDS), ns=[1, 100, 1000],
            reps={1: 9, 100: 9, 1000: 7}, rounds=1, warmup=1, seed_interval=0.1,
            thread_reps=100, micro_reps=9, micro_loops=20_000, memory_n=1000, memory_reps=2,
            idle_ns=[1000], idle_period=0.1, idle_window=0.3, idle_reps=2, rng_seed=args.seed,
        )
        cfg.notes.append(
            "quick mode: N capped at 1,000 (the full run adds 10,000), fewer repetitions, "
            "short idle-CPU windows; run without --quick for the committed figures"
        )
    else:
        cfg = Config(
            mode="full", backends=list(ALL_BACKENDS), ns=[1, 100, 1000, 10_000],
            reps={1: 30, 100: 30, 1000: 24, 10_000: 12}, rounds=3, warmup=1,
            seed_interval=0.1, thread_reps=600, micro_reps=30, micro_loops=50_000,
            memory_n=10_000, memory_reps=2, idle_ns=[100, 1000], idle_period=0.1,
            idle_window=1.0, idle_reps=4, rng_seed=args.seed,
        )
    if args.backends:
        cfg.backends = [b for b in args.backends.split(",") if b]
    if args.n:
        cfg.ns = [int(x) for x in args.n.split(",")]
        cfg.reps = {n: cfg.reps.get(n, min(cfg.reps.values())) for n in cfg.ns}
    if args.reps:
        cfg.reps = {n: args.reps for n in cfg.ns}
    if args.seed_interval is not None:
        cfg.seed_interval = args.seed_interval
    if args.rounds:
        cfg.rounds = args.rounds
    cfg.plot = not args.no_plot
    bad = [b for b in cfg.backends if b not in ALL_BACKENDS]
    if bad:
        raise SystemExit(f"unknown backend(s) {bad}; choose from {', '.join(ALL_BACKENDS)}")
    return cfg


def backend_args(backend: str) -> tuple[str, dict[str, Any]]:
    if backend == "asyncio+uvloop":
        return "asyncio", {"use_uvloop": True}
    return backend, {}


def backend_unavailable(backend: str) -> str | None:
    try:
        if backend == "trio":
            import trio  # noqa: F401
        elif backend == "asyncio+uvloop":
            import uvloop  # noqa: F401
    except ImportError as exc:
        return f"{backend} skipped: {exc}"
    return None


def import_stopscope() -> tuple[ModuleType | None, str | None]:
    try:
        import stopscope

        stopscope.StopSignal  # noqa: B018
        stopscope.TaskScope  # noqa: B018
    except (ImportError, AttributeError) as exc:
        return None, f"stopscope strategies skipped: {exc!r}"
    return stopscope, None


# --------------------------------------------------------------------------- measuring


@dataclass
class Results:
    latency: list[dict[str, Any]] = field(default_factory=list)
    thread_wake: list[dict[str, Any]] = field(default_factory=list)
    micro: list[dict[str, Any]] = field(default_factory=list)
    memory: list[dict[str, Any]] = field(default_factory=list)
    idle_cpu: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


#: a latency run that another process preempted is run again, at most this many times
MAX_RETRIES = 3


async def run_one(
    env: Env, strategy: Strategy, n: int, rng: random.Random, *, retry: bool = False,
    **probe_args: Any,
) -> tuple[Probe, int]:
    """One run of one strategy, with a full collection before it and none during it.

    With ``retry``, a run whose timed windows lost CPU to another process (wall time well
    beyond this thread's CPU time) is run again; returns the probe and the retries made.
    The seed's loop sleeps by design, so it is never judged that way.
    """
    attempt = 0
    while True:
        env.seed_delay = 0.0
        if strategy.name == "seed-poll" and not probe_args.get("idle_window"):
            env.seed_delay = rng.uniform(0.0, env.seed_interval)
        p = Probe(n, **probe_args)
        gc.collect()
        gc.disable()
        try:
            await strategy.run(env, p)
        finally:
            gc.enable()
        if (not retry or attempt == MAX_RETRIES or strategy.name == "seed-poll"
                or not disturbed(p)):
            return p, attempt
        attempt += 1


async def backend_round(
    cfg: Config,
    backend: str,
    rnd: int,
    ss: ModuleType | None,
    results: Results,
    rng: random.Random,
    progress: Progress,
) -> None:
    env = Env(backend=backend, ss=ss, seed_interval=cfg.seed_interval)
    names = []
    for s in STRATEGIES:
        why = available(s, env)
        if why is None:
            names.append(s.name)
        else:
            results.skipped[f"{backend}/{s.name}"] = why

    # -- stop request -> exit, for every N
    for n in cfg.ns:
        reps = split_evenly(cfg.reps[n], cfg.rounds, rnd)
        t_start = time.perf_counter()
        for rep in range(-cfg.warmup, reps):
            order = names[:]
            rng.shuffle(order)
            for pos, name in enumerate(order):
                p, retries = await run_one(env, BY_NAME[name], n, rng, retry=True)
                if rep >= 0:
                    results.latency.append(
                        {"backend": backend, "n": n, "strategy": name, "round": rnd,
                         "rep": rep, "pos": pos, "seed_delay": env.seed_delay,
                         "retries": retries,
                         "disturbed": name != "seed-poll" and disturbed(p),
                         **summarize_run(p)}
                    )
        progress(f"round {rnd + 1}/{cfg.rounds} {backend}: latency N={n:,} "
                 f"x{reps} reps ({time.perf_counter() - t_start:.1f}s)")

    # -- set() in another thread -> waiter running
    kinds = [k for k in THREAD_STRATEGIES if k != "ss-set" or ss is not None]
    reps = split_evenly(cfg.thread_reps, cfg.rounds, rnd)
    pinger = Pinger()
    try:
        for rep in range(-min(cfg.warmup, 1) * 5, reps):
            order = kinds[:]
            rng.shuffle(order)
            gc.collect()
            gc.disable()
            try:
                for kind in order:
                    dt = await thread_wake(env, pinger, kind)
                    if rep >= 0:
                        results.thread_wake.append(
                            {"backend": backend, "strategy": kind, "round": rnd, "rep": rep,
                             "wake": dt}
                        )
            finally:
                gc.enable()
    finally:
        pinger.close()
    progress(f"round {rnd + 1}/{cfg.rounds} {backend}: thread wake x{reps}")

    # -- memory per member (tracemalloc), once: it does not vary between rounds
    if rnd == 0:
        mem_names = [m for m in MEMORY_STRATEGIES if m in names]
        tracemalloc.start()
        try:
            for rep in range(cfg.memory_reps):
                order = mem_names[:]
                rng.shuffle(order)
                for name in order:
                    p, _ = await run_one(env, BY_NAME[name], cfg.memory_n, rng, memory=True)
                    results.memory.append(
                        {"backend": backend, "strategy": name, "rep": rep, "n": cfg.memory_n,
                         "bytes_per_member": (p.mem1 - p.mem0) / cfg.memory_n}
                    )
        finally:
            tracemalloc.stop()
        progress(f"round {rnd + 1}/{cfg.rounds} {backend}: memory N={cfg.memory_n:,}")

    # -- CPU while idle: N workers ticking every `period`, over a fixed wall window
    idle_env = Env(backend=backend, ss=ss, seed_interval=cfg.idle_period,
                   period=cfg.idle_period)
    idle_names = [m for m in IDLE_STRATEGIES if m in names]
    reps = split_evenly(cfg.idle_reps, cfg.rounds, rnd)
    for n in cfg.idle_ns:
        for rep in range(reps):
            order = idle_names[:]
            rng.shuffle(order)
            for name in order:
                p, _ = await run_one(idle_env, BY_NAME[name], n, rng,
                                     idle_window=cfg.idle_window)
                results.idle_cpu.append(
                    {"backend": backend, "strategy": name, "n": n, "round": rnd, "rep": rep,
                     "period": cfg.idle_period, "cpu": p.cpu, "wall": p.wall,
                     "ticks": p.ticks}
                )
    if reps:
        progress(f"round {rnd + 1}/{cfg.rounds} {backend}: idle CPU x{reps}")


async def micro_round(
    cfg: Config, rnd: int, ss: ModuleType | None, results: Results, rng: random.Random
) -> None:
    makers = micro_makers(ss)
    reps = split_evenly(cfg.micro_reps, cfg.rounds, rnd)
    for rep in range(-1, reps):
        order = list(makers)
        rng.shuffle(order)
        for name in order:
            gc.collect()
            gc.disable()
            try:
                figures = micro_once(name, makers[name], cfg.micro_loops)
            finally:
                gc.enable()
            if rep >= 0:
                results.micro.append({"object": name, "round": rnd, "rep": rep, **figures})


def measure(cfg: Config, ss: ModuleType | None, progress: Progress) -> Results:
    results = Results()
    rng = random.Random(cfg.rng_seed)
    backends = []
    for b in cfg.backends:
        why = backend_unavailable(b)
        if why:
            results.skipped[b] = why
            progress(why)
        else:
            backends.append(b)
    for rnd in range(cfg.rounds):
        anyio.run(micro_round, cfg, rnd, ss, results, rng, backend="asyncio")
        order = backends[:]
        rng.shuffle(order)
        for backend in order:
            name, options = backend_args(backend)
            anyio.run(backend_round, cfg, backend, rnd, ss, results, rng, progress,
                      backend=name, backend_options=options)
    return results


# --------------------------------------------------------------------------- analysis


_GROUPS: dict[tuple[int, tuple[str, ...]], dict[tuple[Any, ...], list[dict[str, Any]]]] = {}


def _select(samples: Sequence[dict[str, Any]], match: dict[str, Any]) -> list[dict[str, Any]]:
    """The samples whose fields equal ``match`` (indexed once per list and key set)."""
    names = tuple(sorted(match))
    index = _GROUPS.get((id(samples), names))
    if index is None:
        index = defaultdict(list)
        for s in samples:
            index[tuple(s.get(k) for k in names)].append(s)
        _GROUPS[(id(samples), names)] = index
    return index.get(tuple(match[k] for k in names), [])


def _paired(
    samples: Sequence[dict[str, Any]], field_name: str, a: dict[str, Any], b: dict[str, Any]
) -> tuple[list[float], list[float], bool]:
    """Values of ``field_name`` for the samples matching ``a`` and ``b``, paired by
    repetition when both have the same repetitions."""

    def pick(match: dict[str, Any]) -> dict[tuple[Any, ...], float]:
        return {
            (s.get("round", 0), s.get("rep", 0), s.get("n")): s[field_name]
            for s in _select(samples, match)
        }

    va, vb = pick(a), pick(b)
    keys = sorted(set(va) & set(vb))
    if keys and len(keys) == len(va) == len(vb):
        return [va[k] for k in keys], [vb[k] for k in keys], True
    return list(va.values()), list(vb.values()), False


def compare(
    samples: Sequence[dict[str, Any]],
    field_name: str,
    a: dict[str, Any],
    b: dict[str, Any],
    rng: random.Random,
    *,
    ci: bool = True,
) -> dict[str, Any] | None:
    """Median of ``a``'s samples, ratio to ``b``'s, and (if ``ci``) a bootstrap CI of it."""
    xa, xb, paired = _paired(samples, field_name, a, b)
    if not xa or not xb:
        return None
    ma, mb = median(xa), median(xb)
    ratio = ma / mb if mb else math.nan
    lo, hi = bootstrap_ratio_ci(xa, xb, rng, paired=paired) if ci else (math.nan, math.nan)
    return {"median": ma, "ref_median": mb, "ratio": ratio, "ci": [lo, hi],
            "p_mwu": mann_whitney_p(xa, xb), "samples": len(xa), "paired": paired}


def latency_figure(strategy: str) -> str:
    return "scope_exit" if BY_NAME[strategy].group == "scope" else "last_exit"


def reference_of(strategy: str) -> str | None:
    group = BY_NAME[strategy].group
    ref, ref_of_ref = REFERENCES[group]
    return ref_of_ref if strategy == ref else ref


def analyze(cfg: Config, results: Results) -> dict[str, Any]:
    rng = random.Random(cfg.rng_seed + 1)
    summary: dict[str, Any] = {"latency": [], "thread_wake": [], "micro": [], "memory": [],
                               "idle_cpu": []}
    present = {(s["backend"], s["n"], s["strategy"]) for s in results.latency}

    # latency: every figure of every strategy, with its ratio to the group's reference
    for backend, n, strategy in sorted(present, key=lambda k: (k[0], k[1], k[2])):
        row: dict[str, Any] = {"backend": backend, "n": n, "strategy": strategy,
                               "reference": reference_of(strategy)}
        mine = {"backend": backend, "n": n, "strategy": strategy}
        for fig in ("last_exit", "scope_exit", "w_p50", "w_p99", "set", "spawn"):
            ref = row["reference"]
            if fig == "spawn":
                ref = "anyio-event"  # spawn cost is compared with a bare anyio task
            cmp = None
            if ref and (backend, n, ref) in present:
                # CIs (the slow part) for the figures the targets and plot use
                key = fig == latency_figure(strategy) or (fig == "spawn"
                                                          and strategy == "taskscope")
                cmp = compare(results.latency, fig, mine,
                              {"backend": backend, "n": n, "strategy": ref}, rng, ci=key)
            vals = [s[fig] for s in _select(results.latency, mine)]
            row[fig] = {"median": median(vals), **({"vs": ref, **cmp} if cmp else {})}
        if strategy == "taskscope" and (backend, n, "native-group") in present:
            row["scope_exit_vs_native_group"] = {
                "vs": "native-group",
                **(compare(results.latency, "scope_exit", mine,
                           {"backend": backend, "n": n, "strategy": "native-group"}, rng)
                   or {}),
            }
        summary["latency"].append(row)

    for backend in sorted({s["backend"] for s in results.thread_wake}):
        for kind in THREAD_STRATEGIES:
            cmp = compare(results.thread_wake, "wake",
                          {"backend": backend, "strategy": kind},
                          {"backend": backend, "strategy": "native-threadsafe"}, rng)
            if cmp:
                summary["thread_wake"].append({"backend": backend, "strategy": kind, **cmp})

    for obj in sorted({s["object"] for s in results.micro}):
        row = {"object": obj}
        for fig in ("is_set", "set"):
            row[fig] = compare(results.micro, fig, {"object": obj},
                               {"object": "asyncio.Event"}, rng)
        summary["micro"].append(row)

    for backend in sorted({s["backend"] for s in results.memory}):
        for name in MEMORY_STRATEGIES:
            cmp = compare(results.memory, "bytes_per_member",
                          {"backend": backend, "strategy": name},
                          {"backend": backend, "strategy": "anyio-event"}, rng)
            if cmp:
                summary["memory"].append({"backend": backend, "strategy": name, **cmp})

    for s in results.idle_cpu:
        s["cpu_frac"] = s["cpu"] / s["wall"]
        s["cpu_per_tick"] = s["cpu"] / s["ticks"] if s["ticks"] else math.nan
        s["ticks_per_s"] = s["ticks"] / s["wall"]
    for backend, n in sorted({(s["backend"], s["n"]) for s in results.idle_cpu}):
        for name in IDLE_STRATEGIES:
            mine = {"backend": backend, "n": n, "strategy": name}
            ref = {"backend": backend, "n": n, "strategy": "seed-poll"}
            cmp = compare(results.idle_cpu, "cpu_frac", mine, ref, rng)
            if cmp:
                per_tick = compare(results.idle_cpu, "cpu_per_tick", mine, ref, rng)
                tps = median([s["ticks_per_s"] for s in _select(results.idle_cpu, mine)])
                summary["idle_cpu"].append({**mine, **cmp, "ticks_per_s": tps,
                                            "cpu_per_tick": per_tick})

    return summary


@dataclass(frozen=True)
class Target:
    key: str
    title: str
    limit: float
    stretch: bool = False


TARGETS = [
    Target("ss-wait", "ss-wait: stop -> last exit / native-floor", 1.5),
    Target("ss-every", "ss-every: stop -> last exit / native-floor", 1.5),
    Target("ss-sleep", "ss-sleep: stop -> last exit / native-floor", 1.5),
    Target("taskscope", "taskscope: stop -> scope exit / hand-scope", 1.2),
    Target("taskscope-native", "taskscope: stop -> scope exit / native-group", 2.0, True),
    Target("spawn", "taskscope: spawn per member / anyio task", 1.2),
    Target("memory", "taskscope: memory per member / anyio task", 1.2),
    Target("is_set", "StopSignal.is_set() / asyncio.Event.is_set()", 1.2),
    Target("idle", "ss-every: idle CPU per tick / seed-poll", 1.0),
    Target("thread", "set() in a thread -> waiter runs / threadsafe call", 2.0),
]


def evaluate_targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per target and condition (backend, N): the ratio, its CI, the verdict."""
    out: list[dict[str, Any]] = []

    def add(t: Target, backend: str, n: int | None, cmp: dict[str, Any] | None) -> None:
        if not cmp or "ratio" not in cmp:
            return
        lo, hi = cmp["ci"]
        ok = cmp["ratio"] <= t.limit
        out.append({
            "target": t.key, "title": t.title, "backend": backend, "n": n, "limit": t.limit,
            "stretch": t.stretch, "ratio": cmp["ratio"], "ci": [lo, hi], "p_mwu": cmp["p_mwu"],
            "pass": ok,
            # "sure": the whole 95% CI is on the verdict's side of the limit
            "sure": (hi <= t.limit) if ok else (lo > t.limit),
        })

    lat = {(r["backend"], r["n"], r["strategy"]): r for r in summary["latency"]}
    for (backend, n, strategy), row in sorted(lat.items()):
        if strategy in ("ss-wait", "ss-every", "ss-sleep"):
            add(TARGETS_BY_KEY[strategy], backend, n, row["last_exit"])
        elif strategy == "taskscope":
            add(TARGETS_BY_KEY["taskscope"], backend, n, row["scope_exit"])
            add(TARGETS_BY_KEY["taskscope-native"], backend, n,
                row.get("scope_exit_vs_native_group"))
            if n >= 100:
                add(TARGETS_BY_KEY["spawn"], backend, n, row["spawn"])
    for r in summary["memory"]:
        if r["strategy"] == "taskscope":
            add(TARGETS_BY_KEY["memory"], r["backend"], None, r)
    for r in summary["micro"]:
        if r["object"] == "StopSignal":
            add(TARGETS_BY_KEY["is_set"], "-", None, r["is_set"])
    for r in summary["idle_cpu"]:
        if r["strategy"] == "ss-every":
            add(TARGETS_BY_KEY["idle"], r["backend"], r["n"], r["cpu_per_tick"])
    for r in summary["thread_wake"]:
        if r["strategy"] == "ss-set":
            add(TARGETS_BY_KEY["thread"], r["backend"], None, r)
    return out


TARGETS_BY_KEY = {t.key: t for t in TARGETS}


# --------------------------------------------------------------------------- the table


def _cell(fig: dict[str, Any] | None, fmt: Any = fmt_time) -> str:
    if not fig or math.isnan(fig.get("median", math.nan)):
        return "-"
    if "ratio" in fig:
        return f"{fmt(fig['median'])} {fmt_ratio(fig['ratio'])}"
    return fmt(fig["median"])


def render(cfg: Config, meta: dict[str, Any], results: Results, summary: dict[str, Any],
           targets: list[dict[str, Any]]) -> str:
    v = meta["versions"]
    out: list[str] = []
    w = out.append
    w(f"stopscope stop-latency benchmark ({cfg.mode} mode), {meta['date']}")
    w(f"Python {meta['python']} ({meta['implementation']}), {meta['platform']}, "
      f"{meta['cpu_count']} CPUs")
    commit = meta.get("git_commit")  # None outside a git checkout (an unpacked sdist)
    src = (f" (git {commit[:10]}{', src/ modified' if meta.get('git_src_dirty') else ''})"
           if commit else "")
    w(", ".join(f"{k} {v[k] or 'not installed'}" for k in ("stopscope", "anyio", "trio",
                                                            "uvloop"))
      + src)
    reps = ", ".join(f"N={n:,}: {r}" for n, r in cfg.reps.items())
    w(f"repetitions ({reps}) in {cfg.rounds} round(s), +{cfg.warmup} warm-up per N; "
      f"strategies interleaved in random order; gc collected before and off during each run")
    w(f"seed-poll interval: {cfg.seed_interval:g}s; every()/sleep()/move_on_after period "
      f"while measuring latency: {PARK_PERIOD:g}s; settle: all-parked counter + "
      f"{SETTLE_CHECKPOINTS} checkpoints")
    for note in cfg.notes:
        w(f"NOTE: {note}")
    judged = [s for s in results.latency if s["strategy"] != "seed-poll"]
    if judged:
        redone = sum(1 for s in judged if s["retries"])
        left = sum(1 for s in judged if s["disturbed"])
        w(f"runs preempted by another process and run again: {redone} of {len(judged)}; "
          f"still preempted after {MAX_RETRIES} retries (kept): {left}")
    for why in sorted(set(results.skipped.values())):
        what = sorted(k for k, v in results.skipped.items() if v == why)
        w(f"skipped: {', '.join(what)}: {why}")
    w("Cells: median over repetitions, then the ratio to the reference in column 'vs', "
      "measured in the same run.")

    lat = {(r["backend"], r["n"], r["strategy"]): r for r in summary["latency"]}
    backends = [b for b in cfg.backends if any(k[0] == b for k in lat)]
    ns = sorted({k[1] for k in lat})
    order = [s.name for s in STRATEGIES]

    def strategies_in(group: set[str], backend: str) -> list[str]:
        return [s for s in order if BY_NAME[s].group in group
                and any((backend, n, s) in lat for n in ns)]

    w("")
    w("== Stop request -> last worker exited (worker strategies) ==")
    for b in backends:
        w(f"-- {b}")
        rows = []
        for s in strategies_in({"native", "anyio"}, b):
            rows.append([s, reference_of(s) or "", *[
                _cell(lat.get((b, n, s), {}).get("last_exit")) for n in ns]])
        w(render_table(["strategy", "vs", *[f"N={n:,}" for n in ns]], rows))

    w("")
    w("== Stop request -> scope exited (scope strategies) ==")
    for b in backends:
        w(f"-- {b}")
        rows = []
        for s in strategies_in({"scope"}, b):
            rows.append([s, reference_of(s) or "", *[
                _cell(lat.get((b, n, s), {}).get("scope_exit")) for n in ns]])
            if s == "taskscope":
                rows.append(["taskscope", "native-group", *[
                    _cell(lat.get((b, n, s), {}).get("scope_exit_vs_native_group"))
                    for n in ns]])
        w(render_table(["strategy", "vs", *[f"N={n:,}" for n in ns]], rows))

    nmax = max(ns) if ns else 0
    w("")
    w(f"== Per worker at N={nmax:,}: stop -> exit p50 / p99 (max is the table above), "
      "and the set() call itself ==")
    for b in backends:
        w(f"-- {b}")
        rows = []
        for s in strategies_in({"native", "anyio", "scope"}, b):
            r = lat.get((b, nmax, s), {})
            rows.append([s, reference_of(s) or "", _cell(r.get("w_p50")), _cell(r.get("w_p99")),
                         _cell(r.get("set"))])
        w(render_table(["strategy", "vs", "p50", "p99", "set() call"], rows))

    w("")
    w("== Spawn cost per member (start -> all parked, / N) ==")
    spawn_rows = ["anyio-event", "native-floor", "hand-scope", "native-group", "taskscope",
                  "ss-wait/tg"]
    for b in backends:
        w(f"-- {b}")
        rows = []
        for s in spawn_rows:
            if not any((b, n, s) in lat for n in ns):
                continue
            cells = []
            for n in ns:
                f = lat.get((b, n, s), {}).get("spawn")
                cells.append("-" if not f else _cell({**f, "median": f["median"] / n}))
            rows.append([s, "anyio-event" if s != "anyio-event" else "", *cells])
        w(render_table(["strategy", "vs", *[f"N={n:,}" for n in ns]], rows))

    if summary["memory"]:
        w("")
        w(f"== Memory per member (tracemalloc, N={cfg.memory_n:,}, spawn -> all parked) ==")
        mem = {(r["backend"], r["strategy"]): r for r in summary["memory"]}
        rows = []
        for s in MEMORY_STRATEGIES:
            if any((b, s) in mem for b in backends):
                rows.append([s, "" if s == "anyio-event" else "anyio-event",
                             *[_cell(mem.get((b, s)), fmt_bytes) for b in backends]])
        w(render_table(["strategy", "vs", *backends], rows))

    if summary["thread_wake"]:
        w("")
        w("== set() in another thread -> the waiting task runs ==")
        tw = {(r["backend"], r["strategy"]): r for r in summary["thread_wake"]}
        labels = {"native-threadsafe": "call_soon_threadsafe / run_sync_soon (ev.set)",
                  "anyio-from-thread": "anyio.from_thread.run_sync(ev.set)",
                  "ss-set": "StopSignal.set()"}
        rows = []
        for k in THREAD_STRATEGIES:
            if any((b, k) in tw for b in backends):
                rows.append([labels[k], *[_cell(tw.get((b, k))) for b in backends]])
        w(render_table(["(ratio to the backend's own thread-safe call)", *backends], rows))

    if summary["micro"]:
        w("")
        w("== is_set() in a hot loop, and set() with no waiters (per call; vs asyncio.Event) ==")
        rows = [[r["object"], _cell(r["is_set"]), _cell(r["set"])] for r in summary["micro"]]
        w(render_table(["object", "is_set()", "set()"], rows))

    if summary["idle_cpu"]:
        w("")
        w(f"== CPU while idle: N workers ticking every {cfg.idle_period:g}s, "
          f"{cfg.idle_window:g}s wall window (process CPU / wall; vs seed-poll) ==")
        for b in backends:
            rows = []
            for r in summary["idle_cpu"]:
                if r["backend"] != b:
                    continue
                pt = r["cpu_per_tick"]
                rows.append([f"{r['strategy']} N={r['n']:,}",
                             f"{r['median'] * 100:.2f}% {fmt_ratio(r['ratio'])}",
                             f"{r['ticks_per_s']:,.0f}",
                             _cell(pt) if pt else "-"])
            if rows:
                w(f"-- {b}")
                w(render_table(["strategy", "CPU", "ticks/s", "CPU per tick"], rows))

    w("")
    w("== Targets: ratio of medians, same run; the worst condition (N) shown with its 95% "
      "bootstrap CI; '?': the CI straddles the limit (not significant) ==")
    by: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for t in targets:
        by[(t["target"], t["backend"])].append(t)
    rows = []
    for t in TARGETS:
        for b in [*backends, "-"]:
            entries = by.get((t.key, b))
            if not entries:
                continue
            ok = all(e["pass"] for e in entries)
            sure = all(e["sure"] for e in entries) if ok else any(
                e["sure"] for e in entries if not e["pass"])
            verdict = ("PASS" if ok else "MISS") + ("" if sure else "?")
            worst = max(entries, key=lambda e: e["ratio"])
            lo, hi = worst["ci"]
            ci = f"[{lo:.2f}-{hi:.2f}]" if not math.isnan(lo) else ""
            where = f"N={worst['n']:,}" if worst["n"] is not None else ""
            if len(entries) > 1:
                where += f" (of {len(entries)})"
            rows.append([t.title, f"{t.limit:g}x", b,
                         verdict + (" stretch" if t.stretch else ""),
                         f"{worst['ratio']:.2f}", ci, where])
    if rows:
        w(render_table(["target", "limit", "backend", "verdict", "worst", "95% CI", "at"],
                       rows))
    else:
        w("  (no stopscope figures: nothing to check)")
    return "\n".join(out)


#: where a newcomer reads what each figure means and why each MISS is what it is
RESULTS_PAGE = "docs/benchmarks.md"
#: the compact table's width limit (quick mode, N <= 1,000, three backends)
COMPACT_WIDTH = 100


def _ratio_cell(ratio: float | None, flag: str = "", unit: str = "") -> str:
    if ratio is None or math.isnan(ratio):
        return "-"
    text = f"{ratio:.2f}" if ratio < 10 else f"{ratio:.1f}" if ratio < 100 else f"{ratio:.0f}"
    return text + unit + flag


def render_compact(cfg: Config, meta: dict[str, Any], results: Results,
                   summary: dict[str, Any], targets: list[dict[str, Any]]) -> str:
    """One table of at most 100 columns: the ratios the targets judge, per backend and N,
    with the misses flagged, then a line per figure that has no N and a pointer to the
    page that explains them.  The full tables stay in the JSON file (``table_full``)."""
    v = meta["versions"]
    out: list[str] = []
    w = out.append
    w(f"stopscope stop-latency benchmark, {cfg.mode} mode, {meta['date']}")
    w(f"Python {meta['python']} ({meta['implementation']}), {meta['cpu_count']} CPUs; "
      + ", ".join(f"{k} {v[k] or 'not installed'}"
                  for k in ("stopscope", "anyio", "trio", "uvloop")))
    for note in cfg.notes:
        w(textwrap.fill(f"NOTE: {note}", width=COMPACT_WIDTH, subsequent_indent="  "))
    for why in sorted(set(results.skipped.values())):
        w(textwrap.fill(f"skipped: {why}", width=COMPACT_WIDTH, subsequent_indent="  "))

    lat = {(r["backend"], r["n"], r["strategy"]): r for r in summary["latency"]}
    backends = [b for b in cfg.backends if any(k[0] == b for k in lat)]
    ns = sorted({k[1] for k in lat})
    verdict = {(t["target"], t["backend"], t["n"]): t for t in targets}

    def judged(key: str, b: str, n: int | None, fig: dict[str, Any] | None,
               unit: str = "") -> str:
        if not fig:
            return "-"
        t = verdict.get((key, b, n))
        flag = "" if t is None or t["pass"] else ("*" if t["sure"] else "*?")
        return _ratio_cell(fig.get("ratio"), flag, unit)

    def latency_row(label: str, limit: str, strategy: str, figname: str,
                    key: str | None) -> list[str]:
        cells = []
        for b in backends:
            for n in ns:
                fig = lat.get((b, n, strategy), {}).get(figname)
                if key is None:
                    cells.append(_ratio_cell(fig.get("ratio")) if fig else "-")
                else:
                    cells.append(judged(key, b, n, fig))
        return [label, limit, *cells]

    floor = ["backend's own Event (time)", "", *[
        fmt_time(lat.get((b, n, "native-floor"), {}).get("last_exit", {}).get("median",
                                                                                math.nan))
        for b in backends for n in ns]]
    rows = [
        floor,
        latency_row(f"seed's {cfg.seed_interval:g}s loop / Event", "", "seed-poll",
                    "last_exit", None),
        latency_row("sig.wait() / Event", "1.5", "ss-wait", "last_exit", "ss-wait"),
        latency_row("sig.sleep() / Event", "1.5", "ss-sleep", "last_exit", "ss-sleep"),
        latency_row("sig.every() / Event", "1.5", "ss-every", "last_exit", "ss-every"),
        latency_row("TaskScope / by hand", "1.2", "taskscope", "scope_exit", "taskscope"),
        latency_row("TaskScope / native group", "(2)", "taskscope",
                    "scope_exit_vs_native_group", "taskscope-native"),
        latency_row("spawn / anyio task", "1.2", "taskscope", "spawn", "spawn"),
    ]
    mem = {r["backend"]: r for r in summary["memory"] if r["strategy"] == "taskscope"}
    if mem and cfg.memory_n in ns:
        rows.append(["memory / anyio task", "1.2", *[
            judged("memory", b, None, mem.get(b)) if n == cfg.memory_n else ""
            for b in backends for n in ns]])

    cell_w = max(6, *(len(c) for r in rows for c in r[2:]))
    group = len(ns) * cell_w + (len(ns) - 1)
    label_w = max(len(r[0]) for r in rows)
    limit_w = len("limit")

    def line(label: str, limit: str, groups: list[str]) -> str:
        return (f"{label.ljust(label_w)}  {limit.rjust(limit_w)}  "
                + "  ".join(g.ljust(group) for g in groups)).rstrip()

    def cells(row: list[str]) -> list[str]:
        it = iter(row[2:])
        return [" ".join(next(it).rjust(cell_w) for _ in ns) for _ in backends]

    w("")
    w("Stop request -> last worker exited (TaskScope: scope exited), median ratio to the "
      "reference,")
    w("measured in the same run; limit: the performance contract's ('*' above it, '?' "
      "not significant).")
    w(line("", "", backends))
    w(line("", "limit", [" ".join(f"N={n:,}" if i == 0 else f"{n:,}".rjust(cell_w)
                                  for i, n in enumerate(ns)).rjust(group) for _ in backends]))
    for row in rows:
        w(line(row[0], row[1], cells(row)))

    def per_backend(rows_: list[dict[str, Any]], key: str, strategy_field: str,
                    strategy: str, fig: str | None = None) -> str:
        by_b = {r["backend"]: r for r in rows_ if r.get(strategy_field) == strategy}
        return " / ".join(
            judged(key, b, by_b[b].get("n") if key == "idle" else None,
                   by_b[b][fig] if fig else by_b[b], "x")
            for b in backends if b in by_b)

    w("")
    thread = per_backend(summary["thread_wake"], "thread", "strategy", "ss-set")
    if thread:
        w(f"set() from another thread -> waiter runs: {thread} the backend's own call "
          "(limit 2)")
    idle = per_backend(summary["idle_cpu"], "idle", "strategy", "ss-every", "cpu_per_tick")
    if idle:
        w(f"idle CPU per tick of every(): {idle} the seed's loop (limit 1)")
    micro = {r["object"]: r for r in summary["micro"]}
    if "StopSignal" in micro and micro["StopSignal"]["is_set"]:
        w("is_set() in a hot loop: "
          + judged("is_set", "-", None, micro["StopSignal"]["is_set"], "x")
          + " asyncio.Event.is_set() (limit 1.2)")

    misses = [t for t in targets if not t["pass"]]
    sure = [t for t in misses if t["sure"]]
    w("")
    w(f"Targets: {len(targets) - len(misses)} of {len(targets)} verdicts PASS; "
      f"{len(misses)} MISS ({len(sure)} significant; "
      f"{sum(1 for t in misses if t['stretch'])} on the stretch goal, in parentheses).")
    w(f"What each figure measures and why each MISS is what it is: {RESULTS_PAGE}")
    w("(the full run, with p50/p99/max and N=10,000: python3 dev.py bench --full).")
    return "\n".join(out)


# --------------------------------------------------------------------------- plot


def plot(cfg: Config, summary: dict[str, Any], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install matplotlib)"
    lat = summary["latency"]
    backends = [b for b in cfg.backends if any(r["backend"] == b for r in lat)]
    if not backends:
        return "plot skipped: no latency figures"
    fig, axes = plt.subplots(3, len(backends), figsize=(5.2 * len(backends), 12.5),
                             squeeze=False, sharex=True)
    for col, b in enumerate(backends):
        for row, (groups, figname, title) in enumerate([
            ({"native", "anyio"}, "last_exit", "stop -> last worker exited"),
            ({"scope"}, "scope_exit", "stop -> scope exited"),
        ]):
            ax = axes[row][col]
            for s in STRATEGIES:
                if s.group not in groups:
                    continue
                pts = sorted((r["n"], r[figname]["median"]) for r in lat
                             if r["backend"] == b and r["strategy"] == s.name)
                if not pts:
                    continue
                ours = s.name.startswith(("ss-", "taskscope"))
                ax.plot([p[0] for p in pts], [p[1] * 1e6 for p in pts],
                        marker="o" if ours else ".", linestyle="-" if ours else "--",
                        linewidth=2 if ours else 1, label=s.name)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{b}: {title}", fontsize=10)
            ax.set_ylabel("median latency (us)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, framealpha=0.6)
        # the targets: stopscope's ratios to their references, with the limits
        ax = axes[2][col]
        for name, figname, ref in [("ss-wait", "last_exit", "native-floor"),
                                   ("ss-sleep", "last_exit", "native-floor"),
                                   ("ss-every", "last_exit", "native-floor"),
                                   ("taskscope", "scope_exit", "hand-scope")]:
            pts = sorted((r["n"], r[figname].get("ratio", math.nan)) for r in lat
                         if r["backend"] == b and r["strategy"] == name)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                        label=f"{name} / {ref}")
        ax.axhline(1.5, color="grey", linestyle="--", linewidth=1)
        ax.axhline(1.2, color="grey", linestyle=":", linewidth=1)
        ax.axhline(1.0, color="black", linewidth=0.5)
        ax.set_xscale("log")
        ax.set_title(f"{b}: ratio to reference (limits 1.5x workers, 1.2x scope)",
                     fontsize=10)
        ax.set_xlabel("N workers")
        ax.set_ylabel("ratio of medians")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, framealpha=0.6)
    fig.suptitle(f"stopscope stop latency ({cfg.mode} mode, seed-poll interval "
                 f"{cfg.seed_interval:g}s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot written to {path}"


# --------------------------------------------------------------------------- main




def default_out(cfg: Config, name: str) -> Path:
    if cfg.mode == "smoke":
        return RESULTS / "smoke.json"
    return RESULTS / (f"{name}-quick.json" if cfg.mode == "quick" else f"{name}.json")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="under a minute: N <= 1,000")
    mode.add_argument("--smoke", action="store_true", help="harness check: tiny N, 1 rep")
    parser.add_argument("--out", type=Path, help="JSON path (the PNG goes next to it)")
    parser.add_argument("--name", default="stop_latency", help="results file stem")
    parser.add_argument("--backends", help="comma-separated subset of " + ",".join(ALL_BACKENDS))
    parser.add_argument("--n", help="comma-separated fan-outs, e.g. 1,100")
    parser.add_argument("--reps", type=int, help="repetitions per N (overrides the mode)")
    parser.add_argument("--rounds", type=int, help="rounds over the backends")
    parser.add_argument("--seed-interval", type=float, help="the seed loop's sleep interval")
    parser.add_argument("--seed", type=int, default=20240601, help="random seed (order)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument(
        "--table", choices=["compact", "full"],
        help="what stdout shows: one table of <= 100 columns (the default in --quick and "
             "--smoke) or every table (the default in the full run); the JSON has both")
    args = parser.parse_args(argv)

    cfg = make_config(args)
    progress = Progress()
    meta = run_metadata(sys.argv if argv is None else ["bench_stop_latency.py", *argv],
                        cfg.mode, HERE.parent)
    ss, why = import_stopscope()
    if why:
        progress(why)
        cfg.notes.append(why)
    progress(f"measuring, {cfg.mode} mode: {', '.join(cfg.backends)}; "
             f"N={', '.join(f'{n:,}' for n in cfg.ns)}; a line per step")
    t0 = time.perf_counter()
    results = measure(cfg, ss, progress)
    meta["seconds"] = round(time.perf_counter() - t0, 1)
    progress("analysing")
    summary = analyze(cfg, results)
    targets = evaluate_targets(summary)
    table_full = render(cfg, meta, results, summary, targets)
    style = args.table or ("full" if cfg.mode == "full" else "compact")
    table = (table_full if style == "full"
             else render_compact(cfg, meta, results, summary, targets))
    print(table, flush=True)

    out: Path = args.out or default_out(cfg, args.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "schema": SCHEMA,
        "meta": meta,
        "config": {**asdict(cfg), "reps": {str(k): v for k, v in cfg.reps.items()},
                   "grace": GRACE, "park_period": PARK_PERIOD,
                   "settle_checkpoints": SETTLE_CHECKPOINTS,
                   "asyncio_taskgroup": hasattr(asyncio, "TaskGroup")},
        "strategies": {s.name: {"group": s.group, "description": s.description,
                                "reference": reference_of(s.name)} for s in STRATEGIES},
        "skipped": results.skipped,
        "samples": {"latency": results.latency, "thread_wake": results.thread_wake,
                    "micro": results.micro, "memory": results.memory,
                    "idle_cpu": results.idle_cpu},
        "summary": summary,
        "targets": targets,
        "table": table,  # what stdout showed
        "table_full": table_full,
    }
    out.write_text(dump_json(doc))
    print(f"\nresults written to {out} ({meta['seconds']}s of measuring)", file=sys.stderr)
    if cfg.plot:
        print(plot(cfg, summary, out.with_suffix(".png")), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
