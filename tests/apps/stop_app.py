"""A small stopscope service that tests/test_service.py runs as a child process.

    python tests/apps/stop_app.py SCENARIO --backend trio --out DIR [options]

It prints ``ready`` once its signal handlers are in place and its members run, and
other marker lines the test synchronises on.  Members that clean up write a file in
``--out``.  Scenarios:

graceful  a worker that exits on the signal; ``--laggard`` adds a member that ignores
          the stop, ``--thread-laggard`` a thread member that ignores it
stubborn  grace=None everywhere and a member that ignores the stop: only a second
          signal ends it; ``--stuck-on-cancel`` makes that member block the event loop
          when it is cancelled (only the third signal ends it then)
slow-main main itself ignores the signal; run()'s grace cancels it
stuck     main blocks the event loop in time.sleep(); handles SIGINT, SIGTERM, SIGHUP
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from pathlib import Path
from typing import Any

import anyio

import stopscope
from stopscope import StopSignal, TaskScope

BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "asyncio": ("asyncio", {}),
    "asyncio+uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}

#: lets a thread that ignores its stop end once the process is exiting (never, here)
_never = threading.Event()


def say(line: str) -> None:
    print(line, flush=True)


async def worker(sig: StopSignal, out: Path) -> None:
    """Works until stopped, then cleans up (the file is the test's evidence)."""
    async for _ in sig.every(0.05):
        pass
    await anyio.Path(out / "worker-cleanup").write_text(f"stopped: {sig.reason!r}\n")


async def laggard() -> None:
    """Ignores the stop: only cancellation ends it."""
    await anyio.sleep(3600)


async def stuck_on_cancel() -> None:
    """Ignores the stop; when cancelled, blocks the whole event loop."""
    try:
        await anyio.sleep(3600)
    finally:
        say("cancelled")
        time.sleep(3600)  # noqa: ASYNC251 - the point: a loop stuck in a blocking call


async def announce_stop(sig: StopSignal) -> None:
    await sig.wait()
    say(f"stopping: {sig.reason!r}")


def thread_laggard(sig: StopSignal) -> None:
    """A thread that ignores its stop."""
    _never.wait()


async def graceful(sig: StopSignal, args: argparse.Namespace) -> str:
    async with TaskScope(signal=sig, grace=args.scope_grace) as scope:
        scope.start_soon(worker, scope.signal, args.out, name="worker")
        if args.laggard:
            scope.start_soon(laggard, name="laggard")
        if args.thread_laggard:
            scope.start_thread(thread_laggard, name="stuck-thread")
        say("ready")
        await sig.wait()
    return "done"


async def stubborn(sig: StopSignal, args: argparse.Namespace) -> None:
    async with TaskScope(signal=sig, grace=None) as scope:
        scope.start_soon(worker, scope.signal, args.out, name="worker")
        scope.start_soon(announce_stop, scope.signal)
        if args.stuck_on_cancel:
            scope.start_soon(stuck_on_cancel, name="stuck-on-cancel")
        else:
            scope.start_soon(laggard, name="laggard")
        say("ready")
        await sig.wait()


async def slow_main(sig: StopSignal, args: argparse.Namespace) -> None:
    say("ready")
    await anyio.sleep(3600)


async def stuck(sig: StopSignal, args: argparse.Namespace) -> None:
    say("ready")
    time.sleep(3600)  # noqa: ASYNC251 - the point: a loop stuck in a blocking call


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["graceful", "stubborn", "slow-main", "stuck"])
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="asyncio")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scope-grace", type=float, default=30.0)
    parser.add_argument("--run-grace", type=float, default=None)
    parser.add_argument("--laggard", action="store_true")
    parser.add_argument("--thread-laggard", action="store_true")
    parser.add_argument("--stuck-on-cancel", action="store_true")
    args = parser.parse_args()
    backend, options = BACKENDS[args.backend]
    if args.scenario == "graceful":
        result = stopscope.run(graceful, args, backend=backend, backend_options=options)
        say(f"main returned {result!r}")
    elif args.scenario == "stubborn":
        stopscope.run(stubborn, args, backend=backend, backend_options=options, grace=None)
    elif args.scenario == "slow-main":
        stopscope.run(
            slow_main, args, backend=backend, backend_options=options, grace=args.run_grace
        )
    else:
        stopscope.run(
            stuck,
            args,
            backend=backend,
            backend_options=options,
            signals=(signal.SIGINT, signal.SIGTERM, signal.SIGHUP),
        )


if __name__ == "__main__":
    main()
