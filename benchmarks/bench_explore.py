#!/usr/bin/env python3
"""How long does stopscope.testing take to explore a long worker?  Before and after, in one run.

    python benchmarks/bench_explore.py                  # the committed run
    python benchmarks/bench_explore.py --messages 50 --reps 1 --out /tmp/explore.json

The worker is a batch consumer (take a message, flush every three, flush the rest
in a shielded ``finally``) over a broker with acknowledgements, with *messages*
messages: about 1.3 scheduling points per message.  Three ways to explore it:

* ``before``: every point, on the loop the kit made before issue 18 (looptime's 42
  idle loop turns before each timer jump; trio is unchanged there);
* ``every point``: every point, on today's loop;
* ``per_site=2``: site mode, the first two points of each await site and the last.

asyncio and trio run in virtual time, uvloop in real time (with fewer messages: each
run is real).  Each figure is the median of *reps* repetitions, the modes interleaved.
The lossy take-then-ack worker is explored the same ways, to show where each finds it.
Results go to JSON (``benchmarks/results/explore.json``); a table to stdout.
"""

from __future__ import annotations

import argparse
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

import stopscope.testing._clock as clock
from stopscope import StopSignal
from stopscope.testing import Exploration, Scenario, explore, virtual_time

OLD_NOOP_CYCLES = 42  # looptime's default, which the kit used before issue 18


class Broker:
    def __init__(self, count: int) -> None:
        self._queue = deque(f"m{i}" for i in range(count))
        self.in_flight: list[str] = []

    async def take(self) -> str:
        await anyio.lowlevel.checkpoint()
        if not self._queue:
            await anyio.sleep_forever()
        message = self._queue.popleft()
        self.in_flight.append(message)
        return message

    def ack(self, message: str) -> None:
        self.in_flight.remove(message)

    def nothing_lost(self) -> None:
        assert not self.in_flight, f"{self.in_flight} taken, then neither acked nor given back"


async def flush(batch: list[str], broker: Broker) -> None:
    await anyio.sleep(0.001)
    for message in batch:
        broker.ack(message)
    batch.clear()


async def batch_consumer(signal: StopSignal, broker: Broker) -> None:
    batch: list[str] = []
    try:
        while True:
            with signal.cancel_scope() as waiting:
                batch.append(await broker.take())
            if waiting.cancelled_caught:
                return
            if len(batch) == 3:
                await flush(batch, broker)
    finally:
        with anyio.CancelScope(shield=True):
            await flush(batch, broker)


async def take_then_ack(signal: StopSignal, broker: Broker) -> None:
    while True:
        with signal.cancel_scope() as waiting:
            message = await broker.take()
        if waiting.cancelled_caught:
            return
        with signal.cancel_scope():  # BUG: a stop while handling drops the message
            await anyio.sleep(0.001)
            broker.ack(message)


def scenarios(worker: Callable[..., Any], count: int) -> Callable[[], Scenario]:
    def scenario() -> Scenario:
        broker = Broker(count)
        return Scenario(worker, broker, invariants=[broker.nothing_lost])

    return scenario


MODES: dict[str, dict[str, Any]] = {
    "before": {"noop": OLD_NOOP_CYCLES, "per_site": None},
    "every point": {"noop": clock._NOOP_CYCLES, "per_site": None},
    "per_site=2": {"noop": clock._NOOP_CYCLES, "per_site": 2},
}

BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "asyncio (virtual)": virtual_time("asyncio"),
    "asyncio+uvloop (real)": ("asyncio", {"use_uvloop": True}),
    "trio (virtual)": virtual_time("trio"),
}


def run_once(backend: str, mode: str, worker: Callable[..., Any], count: int) -> dict[str, Any]:
    name, options = BACKENDS[backend]
    settings = MODES[mode]
    clock._NOOP_CYCLES = settings["noop"]  # read when the loop is made
    within = 0.5 if "real" in backend else 0.05
    result: list[Exploration] = []

    async def main() -> None:
        result.append(
            await explore(
                scenarios(worker, count),
                within=within,
                max_points=100_000,
                per_site=settings["per_site"],
            )
        )

    started = time.perf_counter()
    anyio.run(main, backend=name, backend_options=options)
    seconds = time.perf_counter() - started
    exploration = result[0]
    failure = exploration.failure
    return {
        "seconds": seconds,
        "runs": len(exploration.runs),
        "points": list(exploration.points),
        "ok": exploration.ok,
        "failure_point": None if failure is None else failure.point,
        "failure_where": None if failure is None else failure.where_at_stop,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=200, help="virtual-time runs")
    parser.add_argument("--real-messages", type=int, default=40, help="uvloop's real-time runs")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "explore.json"
    )
    args = parser.parse_args()
    original = clock._NOOP_CYCLES
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {}
    try:
        for backend in BACKENDS:
            count = args.real_messages if "real" in backend else args.messages
            samples[backend] = {mode: [] for mode in MODES}
            for rep in range(args.reps):
                for mode in MODES if rep % 2 == 0 else reversed(list(MODES)):
                    if "uvloop" in backend and mode == "before":
                        continue  # uvloop never had looptime: before == every point
                    sample = run_once(backend, mode, batch_consumer, count)
                    samples[backend][mode].append(sample)
                    print(
                        f"{backend:22} {mode:12} rep {rep}: {sample['seconds']:.2f} s, "
                        f"{sample['runs']} runs",
                        file=sys.stderr,
                    )
        lossy = {
            backend: {
                mode: run_once(backend, mode, take_then_ack, 30)
                for mode in MODES
                if not ("uvloop" in backend and mode == "before")
            }
            for backend in BACKENDS
        }
    finally:
        clock._NOOP_CYCLES = original
    summary: dict[str, dict[str, Any]] = {}
    lines = [
        f"{'backend':22} {'mode':12} {'points':>7} {'runs':>5} {'median s':>9} {'speed-up':>9}"
    ]
    for backend, modes in samples.items():
        base = "before" if modes["before"] else "every point"
        base_s = statistics.median(s["seconds"] for s in modes[base])
        for mode, runs in modes.items():
            if not runs:
                continue
            median = statistics.median(s["seconds"] for s in runs)
            deterministic = all(r["points"] == runs[0]["points"] for r in runs)
            summary.setdefault(backend, {})[mode] = {
                "median_seconds": median,
                "runs": runs[0]["runs"],
                "speedup": base_s / median,
                "same_points_every_rep": deterministic,
            }
            lines.append(
                f"{backend:22} {mode:12} {max(runs[0]['points']):>7} {runs[0]['runs']:>5} "
                f"{median:>9.3f} {base_s / median:>8.1f}x"
            )
    lines.append("")
    lines.append("the lossy take-then-ack worker (30 messages):")
    for backend, modes in lossy.items():
        for mode, found in modes.items():
            lines.append(
                f"  {backend:22} {mode:12} fails at point {found['failure_point']} after "
                f"{found['runs']} runs, {found['seconds']:.3f} s: {found['failure_where']}"
            )
    table = "\n".join(lines)
    print(table)
    doc = {
        "schema": "stopscope-bench-explore/1",
        "meta": {
            "python": sys.version,
            "platform": platform.platform(),
            "messages": args.messages,
            "real_messages": args.real_messages,
            "reps": args.reps,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "samples": samples,
        "summary": summary,
        "lossy": lossy,
        "table": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"results written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
