#!/usr/bin/env python3
"""The lossy take-then-ack worker under stopscope.testing, cancellens, looptime and
trio's MockClock: what each finds, and how long it takes.  One run, medians of --reps.

    python benchmarks/compare_tools.py            # the committed run
    python benchmarks/compare_tools.py --reps 1 --out /tmp/compare.json

The worker takes a message from a broker with acknowledgements, handles it (1 ms) and
acks it; a stop that lands while it handles a message drops that message (taken,
never acked nor given back).  The requirement is "nothing lost".

* stopscope.testing: ``explore()`` (every point) and ``explore(per_site=1)``, on
  asyncio and trio in virtual time, uvloop in real time.
* cancellens 0.1 (asyncio only): ``sweep()`` cancels the operation (``Task.cancel()``)
  at each suspension point it observed; the operation is the same worker, whose stop
  signal the broker sets once it is empty (so that its baseline ends).
* looptime (asyncio) and trio's MockClock: the test one writes with a virtual clock
  alone: run the worker, set the stop signal at a chosen moment, check.  First one
  stop once the worker waits (the usual test), then a hand-written sweep of stop
  moments every 0.25 ms of virtual time until one fails.

Go's testing/synctest is not measured: the Go of this machine's distribution is 1.19
(synctest needs 1.24 with GOEXPERIMENT=synctest, or 1.25).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from stopscope import StopSignal
from stopscope.testing import Scenario, explore, virtual_time

MESSAGES = 30


class Broker:
    def __init__(self, count: int, on_empty: Callable[[], object] | None = None) -> None:
        self._queue = deque(f"m{i}" for i in range(count))
        self.in_flight: list[str] = []
        self._on_empty = on_empty

    async def take(self) -> str:
        await anyio.lowlevel.checkpoint()
        if not self._queue:
            if self._on_empty is not None:
                self._on_empty()
            await anyio.sleep_forever()
        message = self._queue.popleft()
        self.in_flight.append(message)
        return message

    def ack(self, message: str) -> None:
        self.in_flight.remove(message)

    def lost(self) -> list[str]:
        return list(self.in_flight)

    def nothing_lost(self) -> None:
        assert not self.in_flight, f"{self.in_flight} taken, then neither acked nor given back"


async def take_then_ack(signal: StopSignal, broker: Broker) -> None:
    while True:
        with signal.cancel_scope() as waiting:
            message = await broker.take()
        if waiting.cancelled_caught:
            return
        with signal.cancel_scope():  # BUG: a stop while handling drops the message
            await anyio.sleep(0.001)
            broker.ack(message)


# --------------------------------------------------------------------------- tools


def with_stopscope(backend: str, per_site: int | None) -> dict[str, Any]:
    name, options = (
        ("asyncio", {"use_uvloop": True}) if backend == "uvloop" else virtual_time(backend)
    )

    def scenario() -> Scenario:
        broker = Broker(MESSAGES)
        return Scenario(take_then_ack, broker, invariants=[broker.nothing_lost])

    out: dict[str, Any] = {}

    async def main() -> None:
        within = 0.5 if backend == "uvloop" else 0.05
        result = await explore(scenario, within=within, per_site=per_site)
        failure = result.failure
        out["found"] = failure is not None
        out["runs"] = len(result.runs)
        out["point"] = None if failure is None else failure.point
        out["where"] = None if failure is None else failure.where_at_stop
        out["replay"] = result.replay

    started = time.perf_counter()
    anyio.run(main, backend=name, backend_options=options)
    out["seconds"] = time.perf_counter() - started
    return out


def with_cancellens() -> dict[str, Any]:
    from cancellens import Case, Completion, Outcome, require, sweep

    async def factory() -> tuple[StopSignal, Broker]:
        signal = StopSignal()
        return signal, Broker(MESSAGES, on_empty=signal.set)

    async def operation(state: tuple[StopSignal, Broker]) -> None:
        await take_then_ack(*state)

    async def oracle(state: tuple[StopSignal, Broker], completion: Completion) -> None:
        require(not state[1].lost(), "nothing lost")

    async def teardown(state: tuple[StopSignal, Broker]) -> None:
        return None

    out: dict[str, Any] = {}
    started = time.perf_counter()
    report = asyncio.run(sweep(Case(factory, operation, oracle, teardown)))
    out["seconds"] = time.perf_counter() - started
    failed = [a for a in report.attempts if a.outcome is Outcome.FAIL]
    out["found"] = bool(failed)
    out["runs"] = len(report.attempts)
    out["outcome"] = report.outcome.name
    if failed:
        first = failed[0]
        point = first.schedule.cancel_at[0]
        stack = first.schedule.prefix[point - 1].stack if first.schedule.prefix else ()
        own = [f for f in stack if f.file.endswith("compare_tools.py")] or list(stack[-1:])
        out["point"] = point
        # cancellens shows a frame's code as a hash (reports may be shared): file:line
        out["where"] = (
            f"{Path(own[-1].file).name}:{own[-1].line}, in {own[-1].function}" if own else None
        )
    return out


def with_a_virtual_clock(backend: str) -> dict[str, Any]:
    """looptime (asyncio) or MockClock (trio), and a test written by hand."""
    name, options = virtual_time(backend)
    out: dict[str, Any] = {}

    async def one(stop_at: float | None) -> list[str]:
        signal, broker = StopSignal(), Broker(MESSAGES)
        async with anyio.create_task_group() as tg:
            tg.start_soon(take_then_ack, signal, broker)
            if stop_at is None:
                await anyio.wait_all_tasks_blocked()  # the usual test: stop once it waits
            else:
                await anyio.sleep(stop_at)
            signal.set()
        return broker.lost()

    async def main() -> None:
        out["one_stop_found"] = bool(await one(None))
        tried = 0
        out["sweep_found_at"] = None
        for k in range(4 * MESSAGES * 2):  # every 0.25 ms over the worker's 30 ms
            tried += 1
            if await one(k * 0.00025):
                out["sweep_found_at"] = k * 0.00025
                break
        out["runs"] = tried + 1
        out["found"] = out["sweep_found_at"] is not None

    started = time.perf_counter()
    anyio.run(main, backend=name, backend_options=options)
    out["seconds"] = time.perf_counter() - started
    return out


TOOLS: dict[str, Callable[[], dict[str, Any]]] = {
    "stopscope explore, asyncio (virtual)": lambda: with_stopscope("asyncio", None),
    "stopscope explore per_site=1, asyncio (virtual)": lambda: with_stopscope("asyncio", 1),
    "stopscope explore, uvloop (real)": lambda: with_stopscope("uvloop", None),
    "stopscope explore, trio (virtual)": lambda: with_stopscope("trio", None),
    "cancellens sweep, asyncio (real)": with_cancellens,
    "looptime + hand-written stops, asyncio": lambda: with_a_virtual_clock("asyncio"),
    "trio MockClock + hand-written stops": lambda: with_a_virtual_clock("trio"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "compare_tools.json"
    )
    args = parser.parse_args()
    samples: dict[str, list[dict[str, Any]]] = {tool: [] for tool in TOOLS}
    for rep in range(args.reps):
        for tool, run in TOOLS.items() if rep % 2 == 0 else reversed(list(TOOLS.items())):
            samples[tool].append(run())
            print(f"rep {rep} {tool}: {samples[tool][-1]['seconds']:.3f} s", file=sys.stderr)
    lines = [f"{'tool':48} {'found':>5} {'runs':>5} {'median ms':>10}  what it says"]
    summary = {}
    for tool, runs in samples.items():
        last = runs[-1]
        median = statistics.median(r["seconds"] for r in runs)
        summary[tool] = {
            "median_seconds": median,
            **{k: v for k, v in last.items() if k != "seconds"},
        }
        if "where" in last:
            says = f"point {last.get('point')}: {last.get('where')}"
        elif "one_stop_found" in last:
            one = "found" if last["one_stop_found"] else "missed"
            says = f"one stop once it waits: {one}; sweep: lost at t={last['sweep_found_at']}"
        else:
            says = str(last.get("outcome"))
        lines.append(
            f"{tool:48} {'yes' if last['found'] else 'no':>5} {last['runs']:>5} "
            f"{median * 1000:>10.1f}  {says}"
        )
    table = "\n".join(lines)
    print(table)
    doc = {
        "schema": "stopscope-compare-tools/1",
        "meta": {
            "python": sys.version,
            "platform": platform.platform(),
            "reps": args.reps,
            "messages": MESSAGES,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "samples": samples,
        "summary": summary,
        "table": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(f"results written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
