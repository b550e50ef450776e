#!/usr/bin/env python3
"""Where does the time of a stop (or a spawn) go?  cProfile of benchmark strategies.

    python benchmarks/profile_stop_latency.py --backend trio --n 1000 taskscope hand-scope
    python benchmarks/profile_stop_latency.py --phase spawn --n 1000 taskscope anyio-event

Runs the same strategies as ``bench_stop_latency.py`` (interleaved, gc off during each
run) with a profiler enabled only during one phase: ``stop`` (stop request -> joined, the
default), ``spawn`` (first start -> all parked) or ``idle`` (workers ticking every
``--period`` during a ``--window``; for seed-poll, anyio-hand-every, ss-every...).
Prints, per strategy, the functions with the most own time, with calls per run and time
per call.  cProfile inflates small
functions; compare strategies with each other, and read the absolute figures in the
benchmark's table, not here.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import random
import sys
from typing import Any

import anyio

from _strategies import BY_NAME, STRATEGIES, Env, Probe, available

BACKENDS = {"asyncio": ("asyncio", {}), "asyncio+uvloop": ("asyncio", {"use_uvloop": True}),
            "trio": ("trio", {})}


async def profile_all(args: argparse.Namespace, ss: Any, profilers: dict[str, Any]) -> None:
    env = Env(backend=args.backend, ss=ss, seed_interval=0.01)
    if args.phase == "idle":
        env = Env(backend=args.backend, ss=ss, seed_interval=args.period, period=args.period)
    names = []
    for name in args.strategies:
        why = available(BY_NAME[name], env)
        if why:
            print(f"{name}: skipped ({why})", file=sys.stderr)
        else:
            names.append(name)
    rng = random.Random(1)
    for rep in range(-1, args.reps):
        rng.shuffle(names)
        for name in names:
            p = Probe(args.n, idle_window=args.window if args.phase == "idle" else 0.0)
            if rep >= 0:
                p.profiler, p.profile = profilers.setdefault(name, cProfile.Profile()), args.phase
            gc.collect()
            gc.disable()
            try:
                await BY_NAME[name].run(env, p)
            finally:
                gc.enable()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("strategies", nargs="+", choices=[s.name for s in STRATEGIES],
                        metavar="STRATEGY", help=", ".join(s.name for s in STRATEGIES))
    parser.add_argument("--backend", default="asyncio", choices=list(BACKENDS))
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--phase", choices=["stop", "spawn", "idle"], default="stop")
    parser.add_argument("--period", type=float, default=0.1, help="idle phase: tick period")
    parser.add_argument("--window", type=float, default=0.5, help="idle phase: wall window")
    parser.add_argument("--top", type=int, default=18)
    args = parser.parse_args()
    try:
        import stopscope as ss
    except ImportError:
        ss = None
    profilers: dict[str, Any] = {}
    backend, options = BACKENDS[args.backend]
    anyio.run(profile_all, args, ss, profilers, backend=backend, backend_options=options)
    for name in args.strategies:
        if name not in profilers:
            continue
        buf = io.StringIO()
        stats = pstats.Stats(profilers[name], stream=buf)
        total = stats.total_tt  # type: ignore[attr-defined]
        print(f"\n=== {name} on {args.backend}, N={args.n:,}, phase {args.phase}: "
              f"{total / args.reps * 1e3:.2f} ms profiled per run ===")
        rows = []
        for (file, line, func), (_cc, nc, tt, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
            rows.append((tt, ct, nc, f"{file.rsplit('/', 2)[-1]}:{line}({func})"))
        rows.sort(reverse=True)
        print(f"  {'own ms/run':>10} {'cum ms/run':>10} {'calls/run':>9} {'own us/call':>11}  "
              "function")
        for tt, ct, nc, where in rows[: args.top]:
            print(f"  {tt / args.reps * 1e3:10.3f} {ct / args.reps * 1e3:10.3f} "
                  f"{nc / args.reps:9.0f} {tt / nc * 1e6 if nc else 0:11.2f}  {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
