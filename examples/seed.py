"""The seed article's scenario, written with stopscope.

A background task prints "doing something" every second; after 5 seconds the main
task asks it to stop and waits for it.  The article's version checks an
``asyncio.Event`` between ``asyncio.sleep(1)`` calls, so the stop waits for the
sleep to run out (up to a whole second).  Here the wait ends the moment the stop
is requested, on asyncio, uvloop or trio.

    python examples/seed.py --backend trio
    python examples/seed.py --backend asyncio --original   # the article's pattern
"""

from __future__ import annotations

import argparse
import asyncio
import time

import anyio

from stopscope import StopSignal, TaskScope

stopped_at: dict[str, float] = {}


async def background_task(signal: StopSignal) -> None:
    print("background task started...")
    async for _ in signal.every(1.0):  # first tick at once, then every second
        print("doing something...")
    stopped_at["exit"] = time.perf_counter()
    print("background task stopped.")


async def main(run_for: float) -> float:
    async with TaskScope(grace=2.0, name="seed") as scope:
        scope.start_soon(background_task, scope.signal, name="background_task")
        print(f"main: letting the task run for {run_for:g} seconds...")
        await anyio.sleep(run_for)
        print("main: requesting stop...")
        requested = time.perf_counter()
        scope.stop("main is done")
        print("main: waiting for the background task...")
    # leaving the block waited for the task (and would cancel it after 2 s of grace)
    print("main: all tasks done!")
    return stopped_at["exit"] - requested


async def original(run_for: float) -> float:
    """The article's code, unchanged but for the timing lines."""

    async def background(stop_event: asyncio.Event) -> None:
        print("background task started...")
        while not stop_event.is_set():
            print("doing something...")
            try:
                await asyncio.sleep(1)
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


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "uvloop", "trio"], default="asyncio")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long main waits")
    parser.add_argument(
        "--original", action="store_true", help="run the article's asyncio.Event pattern"
    )
    args = parser.parse_args()
    if args.original:
        if args.backend == "trio":
            parser.error("--original is the article's asyncio code; use --backend asyncio")
        latency = asyncio.run(original(args.seconds))
        label = "original asyncio.Event pattern"
    else:
        backend = "trio" if args.backend == "trio" else "asyncio"
        options = {"use_uvloop": True} if args.backend == "uvloop" else {}
        latency = anyio.run(main, args.seconds, backend=backend, backend_options=options)
        label = f"stopscope on {args.backend}"
    print(f"stop latency ({label}): {latency * 1000:.3f} ms from the stop request to the exit")


if __name__ == "__main__":
    cli()
