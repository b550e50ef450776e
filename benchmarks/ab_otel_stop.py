"""A/B: what stopscope.otel's listener costs the stop itself (issue 19).

A is ``stopscope.otel.instrument()`` in effect (the SDK's ``TracerProvider`` with a
``BatchSpanProcessor`` to an exporter that drops what it gets, a ``MeterProvider`` with
the in-memory reader); B puts an observer that does nothing in the scope's hook in its
place.  Before every sample, A or B, the same ``stopscope.otel.flush()`` runs (outside
the timing), so the export of earlier stops touches the caches alike for both: what is
left is the work done on the stop's path (``finished()`` and the event calls).

Measured in one process, A and B alternating round by round, as the median of the
paired ratios A/B, for TaskScope stop -> exit: ``scope.stop()`` from the body, one
member in ``signal.wait()``.

    python benchmarks/ab_otel_stop.py [--rounds 500]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from typing import Any

import anyio
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import stopscope
import stopscope.otel
from stopscope import _scope

BACKENDS: list[tuple[str, str, dict[str, Any]]] = [
    ("asyncio", "asyncio", {}),
    ("asyncio+uvloop", "asyncio", {"use_uvloop": True}),
    ("trio", "trio", {}),
]


class Drop(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class Nobody:
    """B: an observer that does nothing."""

    def event(self, *args: object) -> None:
        pass

    def finished(self, scope: object) -> None:
        pass


async def scope_stop_exit() -> float:
    async def member(sig: stopscope.StopSignal) -> None:
        await sig.wait()

    async with stopscope.TaskScope(grace=60) as scope:
        scope.start_soon(member, scope.signal)
        await anyio.wait_all_tasks_blocked()
        t0 = time.perf_counter()
        scope.stop()
    return time.perf_counter() - t0


async def measure(rounds: int, listener: Any) -> tuple[float, float, float]:
    """The median ratio A/B and the medians of A and B (seconds)."""
    nobody = Nobody()
    ratios: list[float] = []
    samples: dict[bool, list[float]] = {True: [], False: []}
    try:
        for i in range(rounds):
            pair: dict[bool, float] = {}
            for on in (True, False) if i % 2 else (False, True):
                _scope._observer = listener if on else nobody
                assert stopscope.otel.flush(60.0)
                gc.collect()
                gc.disable()
                try:
                    pair[on] = await scope_stop_exit()
                finally:
                    gc.enable()
                samples[on].append(pair[on])
            ratios.append(pair[True] / pair[False])
    finally:
        _scope._observer = listener
    return (
        statistics.median(ratios),
        statistics.median(samples[True]),
        statistics.median(samples[False]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=500)
    args = parser.parse_args()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(Drop()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    stopscope.otel.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    try:
        listener = _scope._observer
        for label, backend, options in BACKENDS:
            ratio, on, off = anyio.run(
                measure, args.rounds, listener, backend=backend, backend_options=options
            )
            print(
                f"{label:15} A/B median {ratio:.3f}  (A {on * 1e6:.1f} us, B {off * 1e6:.1f} us)",
                flush=True,
            )
    finally:
        stopscope.otel.uninstrument()


if __name__ == "__main__":
    main()
