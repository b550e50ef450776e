"""A service whose telemetry flush at exit hangs, for signals sent during it.

    python tests/apps/otel_flush_app.py --backend trio

stopscope.run() with stopscope.otel on a tracer provider whose ``force_flush()``
prints ``flushing`` and then hangs (a collector that never answers), with a flush
reserve longer than any test waits.  It prints ``ready`` once ``main`` runs; the first
SIGINT or SIGTERM stops ``main`` (it returns), and the flush at exit begins.
"""

from __future__ import annotations

import argparse
import sys
import threading
from typing import Any

import anyio
from opentelemetry.sdk.trace import TracerProvider

import stopscope
import stopscope.otel
from stopscope import StopSignal, TaskScope

BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "asyncio": ("asyncio", {}),
    "asyncio+uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}


class HangingProvider:
    def __init__(self) -> None:
        self.provider = TracerProvider()
        self.never = threading.Event()

    def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
        return self.provider.get_tracer(*args, **kwargs)

    def force_flush(self, timeout_millis: float = 30000) -> bool:
        print("flushing", flush=True)
        return self.never.wait(600)


async def main(signal: StopSignal, stop_first: bool) -> None:
    async with TaskScope(grace=5, signal=signal, name="service") as scope:
        scope.start_soon(StopSignal.wait, scope.signal, name="worker")
        await anyio.wait_all_tasks_blocked()
        print("ready", flush=True)
        if stop_first:
            await signal.wait()
        # else main returns by itself: no signal before the flush


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="asyncio")
    parser.add_argument("--no-stop-first", action="store_true")
    options = parser.parse_args()
    backend, backend_options = BACKENDS[options.backend]
    stopscope.otel.instrument(tracer_provider=HangingProvider(), flush_reserve=300)
    stop_first = not options.no_stop_first
    sys.exit(stopscope.run(main, stop_first, backend=backend, backend_options=backend_options))
