"""A/B: what the structured stop record (issue 19) costs a TaskScope's stop.

The scope's summary line carries its report as a field (``extra={"stopscope": ...}``),
built only when the ``stopscope`` logger is enabled for INFO.  A is the code as it is;
B patches the building out (the field is an empty dict, the line and its text stay).
Both are measured with the logger at INFO and a handler that takes every record and
drops it (what the record costs to build, not what a formatter costs to write), and
with the logger at WARNING (the default: nothing is built, so A/B should be 1).

Measured in one process, A and B alternating round by round (their order
alternating too), as the median of the paired ratios A/B of ``scope.stop()`` from the
body -> the scope's exit, with N members in ``sig.wait()``; in brackets the
interquartile range of the ratios, in parentheses B's median stop in microseconds.
First, what building the field takes by itself (the fastest of 20 repeats).

    python benchmarks/ab_stop_record.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import functools
import gc
import logging
import statistics
import time
import timeit
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel

import stopscope
from stopscope import _scope

BACKENDS: list[tuple[str, str, dict[str, Any]]] = [
    ("asyncio", "asyncio", {}),
    ("asyncio+uvloop", "asyncio", {"use_uvloop": True}),
    ("trio", "trio", {}),
]


class Drop(logging.Handler):
    """Takes every record (so the logger is enabled), writes nothing."""

    def emit(self, record: logging.LogRecord) -> None:
        pass


def patch(old: bool) -> Callable[[], None]:
    """B: the record's field built as an empty dict; returns how to undo it."""
    if not old:
        return lambda: None
    saved = _scope.scope_fields
    _scope.scope_fields = lambda report, name, grace: {}  # type: ignore[assignment]

    def undo() -> None:
        _scope.scope_fields = saved

    return undo


async def scope_stop_exit(n: int) -> float:
    async def member(sig: stopscope.StopSignal) -> None:
        await sig.wait()

    async with stopscope.TaskScope(grace=60, name="bench") as scope:
        for _ in range(n):
            scope.start_soon(member, scope.signal)
        await anyio.wait_all_tasks_blocked()
        t0 = time.perf_counter()
        scope.stop("bench")
    return time.perf_counter() - t0


async def measure(rounds: int, level: int) -> dict[str, str]:
    out: dict[str, str] = {}
    await anyio.lowlevel.checkpoint()
    log = logging.getLogger("stopscope")
    log.setLevel(level)
    for n in (1, 100, 1000):
        ratios: list[float] = []
        plain: list[float] = []
        count = rounds if n == 1 else max(10, rounds // (10 if n == 1000 else 2))
        for i in range(count):
            pair: dict[bool, float] = {}
            for old in (False, True) if i % 2 else (True, False):
                undo = patch(old)
                try:
                    gc.collect()
                    gc.disable()
                    pair[old] = await scope_stop_exit(n)
                finally:
                    gc.enable()
                    undo()
            ratios.append(pair[False] / pair[True])
            plain.append(pair[True])
        q1, median, q3 = statistics.quantiles(ratios, n=4)
        b_us = statistics.median(plain) * 1e6
        out[f"N={n}"] = f"{median:.3f} [{q1:.2f}-{q3:.2f}] (B {b_us:.0f} us)"
    return out


def build_cost() -> str:
    """What building the field takes by itself, per N (the fastest of 20 repeats: the
    least disturbed by other work on the machine), against nothing."""
    cells = []
    for n in (1, 100, 1000):
        records = tuple(
            stopscope.TaskRecord(
                f"m{i}",
                outcome=stopscope.Outcome.STOPPED,
                latency=0.001,
                exited_at=1.0,
                phase="grace",
            )
            for i in range(n)
        )
        report = stopscope.ShutdownReport("bench", 0.5, records)
        number = max(1, 2000 // n)
        best = min(
            timeit.repeat(
                functools.partial(_scope.scope_fields, report, "bench", 60.0),
                number=number,
                repeat=20,
            )
        )
        cells.append(f"N={n}: {best / number * 1e6:.1f} us")
    return "  ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    print(f"building the field alone   {build_cost()}", flush=True)
    log = logging.getLogger("stopscope")
    log.addHandler(Drop())
    log.propagate = False
    for level_name, level in (("INFO", logging.INFO), ("WARNING", logging.WARNING)):
        for label, backend, options in BACKENDS:
            figures = anyio.run(
                measure, args.rounds, level, backend=backend, backend_options=options
            )
            cells = "  ".join(f"{k}: {v}" for k, v in figures.items())
            print(f"logger at {level_name:8} {label:15} A/B median  {cells}", flush=True)


if __name__ == "__main__":
    main()
