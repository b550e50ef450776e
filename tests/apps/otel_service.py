"""A service that tests/test_otel.py runs as a child: stopscope.run() with
stopscope.otel sending OTLP/HTTP to the test's receiver (``OTEL_EXPORTER_OTLP_ENDPOINT``).

    python tests/apps/otel_service.py --backend trio

It prints ``ready`` once its members run; SIGTERM stops it: a stage of two workers,
then a writer stage, and a member that ignores the stop (cancelled after grace).
"""

from __future__ import annotations

import argparse
from typing import Any

import anyio

import stopscope
import stopscope.otel
from stopscope import StopSignal, TaskScope

BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "asyncio": ("asyncio", {}),
    "asyncio+uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}


async def worker(signal: StopSignal) -> None:
    await signal.wait()


async def ignores_the_stop() -> None:
    await anyio.sleep_forever()


async def main(signal: StopSignal) -> None:
    async with TaskScope(grace=0.5, signal=signal, name="service") as scope:
        scope.start_soon(ignores_the_stop, name="stubborn")  # no stage: stopped first
        writer = scope.stage("writer")
        scope.start_soon(worker, writer, name="writer")
        workers = scope.stage("workers")
        scope.start_soon(worker, workers, name="worker-1")
        scope.start_soon(worker, workers, name="worker-2")
        await anyio.wait_all_tasks_blocked()
        print("ready", flush=True)
        await signal.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="asyncio")
    parser.add_argument("--flush-reserve", type=float, default=10)
    options = parser.parse_args()
    backend, backend_options = BACKENDS[options.backend]
    stopscope.otel.instrument(exporter="otlp", flush_reserve=options.flush_reserve)
    stopscope.run(main, backend=backend, backend_options=backend_options, grace=5)
