"""The seed article's scenario, written with stopscope.

A background task prints "doing something" every second; after 5 seconds the main
task asks it to stop and waits for it.  The article's version checks an
``asyncio.Event`` between ``asyncio.sleep(1)`` calls, so the stop waits for the
sleep to run out (up to a whole second).  Here the wait ends the moment the stop
is requested, on asyncio, uvloop or trio.

    python examples/seed.py --backend trio
    python examples/seed.py --original        # the article's pattern next to stopscope's

A single stop says little about the article's pattern: its latency is whatever is left
of the sleep when the stop lands, so it depends on the moment (5 s, a whole number of
ticks, lands on a tick and looks instant).  ``--original`` therefore stops both
versions at several moments spread evenly across one tick and prints the distribution.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import statistics
import time

import anyio

from stopscope import StopSignal, TaskScope

stopped_at: dict[str, float] = {}


async def background_task(signal: StopSignal, tick: float = 1.0) -> None:
    print("background task started...")
    async for _ in signal.every(tick):  # first tick at once, then every second
        print("doing something...")
    stopped_at["exit"] = time.perf_counter()
    print("background task stopped.")


async def main(run_for: float, tick: float = 1.0) -> float:
    async with TaskScope(grace=2.0, name="seed") as scope:
        scope.start_soon(background_task, scope.signal, tick, name="background_task")
        print(f"main: letting the task run for {run_for:g} seconds...")
        await anyio.sleep(run_for)
        print("main: requesting stop...")
        requested = time.perf_counter()
        scope.stop("main is done")
        print("main: waiting for the background task...")
    # leaving the block waited for the task (and would cancel it after 2 s of grace)
    print("main: all tasks done!")
    return stopped_at["exit"] - requested


async def original(run_for: float, tick: float = 1.0) -> float:
    """The article's code, unchanged but for the timing lines (and the tick, a parameter)."""

    async def background(stop_event: asyncio.Event) -> None:
        print("background task started...")
        while not stop_event.is_set():
            print("doing something...")
            try:
                await asyncio.sleep(tick)
            except asyncio.CancelledError:
                print("background task cancelled (caught CancelledError)")
                break  # the article's pattern: this swallows cancellation
        stopped_at["exit"] = time.perf_counter()
        print("background task stopped.")

    stop_event = asyncio.Event()
    task = asyncio.create_task(background(stop_event))
    print(f"main: letting the task run for {run_for:g} seconds...")
    await asyncio.sleep(run_for)
    print("main: requesting stop...")
    requested = time.perf_counter()
    stop_event.set()
    print("main: waiting for the background task...")
    await task
    print("main: all tasks done!")
    return stopped_at["exit"] - requested


def run_stopscope(backend: str, run_for: float, tick: float = 1.0) -> float:
    """``main()`` on ``backend`` (asyncio, uvloop or trio); returns the stop latency."""
    name = "trio" if backend == "trio" else "asyncio"
    options = {"use_uvloop": True} if backend == "uvloop" else {}
    return anyio.run(main, run_for, tick, backend=name, backend_options=options)


def compare(backend: str, moments: int, tick: float) -> None:
    """Stop both versions at ``moments`` moments spread evenly across one tick."""
    print(f"main: the article's pattern (asyncio) and stopscope ({backend}), each stopped at")
    print(f"      {moments} moments spread evenly across the {tick:g} s tick...")
    print("stop moment   original  stopscope   (ms from the stop request to the exit)")
    original_ms, ours_ms = [], []
    for k in range(moments):
        run_for = (k + 0.5) / moments * tick  # never a whole number of ticks
        with contextlib.redirect_stdout(io.StringIO()):  # each run prints the article's lines
            theirs = asyncio.run(original(run_for, tick)) * 1000
            ours = run_stopscope(backend, run_for, tick) * 1000
        original_ms.append(theirs)
        ours_ms.append(ours)
        print(f"{run_for:9.3f} s  {theirs:9.1f}  {ours:9.3f}")
    print(f"stop latency over {moments} stop moments, ms from the stop request to the exit:")
    for label, values in [
        ("original asyncio.Event pattern", original_ms),
        (f"stopscope on {backend}", ours_ms),
    ]:
        print(
            f"  {label + ':':32}median {statistics.median(values):8.3f}   "
            f"max {max(values):8.3f}"
        )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "uvloop", "trio"], default="asyncio")
    parser.add_argument(
        "--seconds", type=float, help="how long main waits before the stop (default: 5)"
    )
    parser.add_argument(
        "--original",
        action="store_true",
        help="the article's asyncio.Event pattern next to stopscope, over several stop moments",
    )
    parser.add_argument(
        "--moments", type=int, default=8, help="with --original: how many stop moments"
    )
    parser.add_argument(
        "--tick", type=float, default=1.0, help="the background task's period in seconds"
    )
    args = parser.parse_args()
    if args.tick <= 0:
        parser.error("--tick must be a positive number of seconds")
    if args.original:
        if args.seconds is not None:
            parser.error("--original picks its own stop moments; leave out --seconds")
        if args.moments < 1:
            parser.error("--moments must be at least 1")
        compare(args.backend, args.moments, args.tick)
        return
    seconds = 5.0 if args.seconds is None else args.seconds
    latency = run_stopscope(args.backend, seconds, args.tick)
    print(
        f"stop latency (stopscope on {args.backend}): {latency * 1000:.3f} ms "
        "from the stop request to the exit"
    )


if __name__ == "__main__":
    cli()
