"""Does stopscope.otel slow the stop?  TaskScope stop -> exit without the extra, with it
installed but off, and with it on, interleaved in one run.

Three worker processes, one per variant, each with a warm interpreter:

* ``without``: ``opentelemetry`` cannot be imported (as when the ``otel`` extra is not
  installed); stopscope never imports it;
* ``off``: the API and SDK imported, ``stopscope.otel`` imported, not instrumented (the
  scope's hook reads ``None``);
* ``on``: ``stopscope.otel.instrument()`` with the SDK's ``TracerProvider`` and
  ``BatchSpanProcessor`` (to an exporter that drops what it gets: no network), and a
  ``MeterProvider`` with the in-memory reader.  After each sample, outside the timing,
  the parent's worker waits for the export (``stopscope.otel.flush()``) and records how
  long that took: the work done off the stop's path.  Then every variant pauses 20 ms,
  so that each stop finds the threads idle, as a real stop does.

For each backend and N (members blocked in ``signal.wait()``), the parent asks the three
workers for a batch of samples in turn, rotating who goes first each round, so that
drift of a loaded machine hits all three alike.  A sample is ``scope.stop()`` from the
body -> the ``async with`` block exited.  Figures: medians, the ratio of each variant's
median to ``without``'s, a bootstrap 95 % interval of that ratio and the Mann-Whitney
p-value; and the cost of the hook when nobody listens (one global read and a ``None``
test per site), timed directly.

    python benchmarks/bench_otel.py [--rounds 15] [--smoke] [--out PATH]
"""

from __future__ import annotations

import argparse
import gc
import importlib.abc
import json
import random
import subprocess
import sys
import time
import timeit
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (  # noqa: E402
    bootstrap_ratio_ci,
    fmt_ratio,
    fmt_time,
    mann_whitney_p,
    median,
    quantile,
    render_table,
    run_metadata,
)

VARIANTS = ("without", "off", "on")
#: seconds between samples, in every variant: the threads that a flush woke go idle
IDLE = 0.02
BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "asyncio": ("asyncio", {}),
    "asyncio+uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}
FAN_OUTS = (1, 1000)
#: samples per request: many for N = 1, fewer for N = 1,000
BATCH = {1: 20, 1000: 3}


# ----------------------------------------------------------------------- the workers


class _NoOpenTelemetry(importlib.abc.MetaPathFinder):
    """``import opentelemetry`` fails, as without the extra."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: 'without')")
        return None


def _setup(variant: str) -> Any:
    """Prepare this worker's variant; return what waits for the export (or None)."""
    if variant == "without":
        sys.meta_path.insert(0, _NoOpenTelemetry())
        import stopscope

        assert "opentelemetry" not in sys.modules, stopscope
        return None
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    import stopscope.otel

    if variant == "off":
        return None

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(Drop()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    stopscope.otel.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    return stopscope.otel.flush


async def _stop_exit(n: int) -> float:
    import anyio

    import stopscope

    async def member(signal: stopscope.StopSignal) -> None:
        await signal.wait()

    async with stopscope.TaskScope(grace=60) as scope:
        for _ in range(n):
            scope.start_soon(member, scope.signal)
        await anyio.wait_all_tasks_blocked()
        t0 = time.perf_counter()
        scope.stop()
    return time.perf_counter() - t0


def worker(variant: str) -> None:
    """Answer ``backend n k`` lines with a JSON line of k samples (and export times)."""
    import anyio

    flush = _setup(variant)
    print("ready", flush=True)
    for line in sys.stdin:
        backend, n_text, k_text = line.split()
        n, k = int(n_text), int(k_text)
        name, options = BACKENDS[backend]

        async def batch(n: int = n, k: int = k) -> tuple[list[float], list[float]]:
            stops: list[float] = []
            exports: list[float] = []
            for _ in range(k):
                gc.collect()
                gc.disable()
                try:
                    stops.append(await _stop_exit(n))
                finally:
                    gc.enable()
                if flush is not None:  # outside the timing: the export, off the stop's path
                    t0 = time.perf_counter()
                    assert flush(60.0)
                    exports.append(time.perf_counter() - t0)
                # every variant: a stop finds the process's threads idle, as a real one
                # does (the exporter threads wait on a condition); without this pause
                # the sample after a flush raced the SDK's threads for the GIL, which
                # the previous results counted as the stop's cost (1.12x on uvloop)
                await anyio.sleep(IDLE)
            return stops, exports

        stops, exports = anyio.run(batch, backend=name, backend_options=options)
        print(json.dumps({"stop": stops, "export": exports}), flush=True)


def hook_cost() -> float:
    """Seconds per hook site when nobody listens: the global read and the None test."""
    from stopscope import _scope

    assert _scope._observer is None
    number = 1_000_000
    code = "observer = _scope._observer\nif observer is not None:\n    pass"
    empty = timeit.timeit("pass", number=number)
    spent = min(timeit.repeat(code, globals={"_scope": _scope}, number=number, repeat=5))
    return max(0.0, spent - empty) / number


# ----------------------------------------------------------------------- the parent


class Worker:
    def __init__(self, variant: str) -> None:
        self.variant = variant
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", variant],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline()
        if ready != "ready\n":
            raise RuntimeError(f"the {variant!r} worker did not start: {ready!r}")

    def ask(self, backend: str, n: int, k: int) -> dict[str, list[float]]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(f"{backend} {n} {k}\n")
        self.proc.stdin.flush()
        answer: dict[str, list[float]] = json.loads(self.proc.stdout.readline())
        return answer

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _backends() -> list[str]:
    names = ["asyncio", "trio"]
    try:
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover - uvloop is POSIX only
        return names
    return ["asyncio", "asyncio+uvloop", "trio"]


def measure(rounds: int, batch: dict[int, int]) -> dict[str, Any]:
    rng = random.Random(20261207)
    workers = {v: Worker(v) for v in VARIANTS}
    samples: dict[str, dict[str, list[float]]] = {}
    try:
        for r in range(rounds):
            for backend in _backends():
                for n in FAN_OUTS:
                    order = list(VARIANTS)
                    rng.shuffle(order)
                    for variant in order:
                        got = workers[variant].ask(backend, n, batch[n])
                        cell = samples.setdefault(f"{backend} N={n} {variant}", {})
                        cell.setdefault("stop", []).extend(got["stop"])
                        cell.setdefault("export", []).extend(got["export"])
            print(f"round {r + 1}/{rounds}", file=sys.stderr, flush=True)
    finally:
        for w in workers.values():
            w.close()
    return samples


def analyze(samples: dict[str, dict[str, list[float]]]) -> list[dict[str, Any]]:
    rng = random.Random(1)
    rows: list[dict[str, Any]] = []
    for backend in _backends():
        for n in FAN_OUTS:
            base = samples[f"{backend} N={n} without"]["stop"]
            for variant in VARIANTS:
                cell = samples[f"{backend} N={n} {variant}"]
                stop = cell["stop"]
                ordered = sorted(stop)
                low, high = bootstrap_ratio_ci(stop, base, rng, paired=False)
                rows.append(
                    {
                        "backend": backend,
                        "n": n,
                        "variant": variant,
                        "samples": len(stop),
                        "median": median(stop),
                        "p90": quantile(ordered, 0.9),
                        "ratio_to_without": median(stop) / median(base),
                        "ratio_ci95": [low, high],
                        "mann_whitney_p": mann_whitney_p(stop, base),
                        "export_median": median(cell["export"]) if cell["export"] else None,
                    }
                )
    return rows


def render(rows: Sequence[dict[str, Any]], hook: float) -> str:
    table = render_table(
        ["backend / N / variant", "median", "p90", "ratio", "95% CI", "p", "export (off path)"],
        [
            [
                f"{r['backend']} N={r['n']} {r['variant']}",
                fmt_time(r["median"]),
                fmt_time(r["p90"]),
                fmt_ratio(r["ratio_to_without"]),
                f"{r['ratio_ci95'][0]:.2f}-{r['ratio_ci95'][1]:.2f}",
                f"{r['mann_whitney_p']:.3f}",
                "-" if r["export_median"] is None else fmt_time(r["export_median"]),
            ]
            for r in rows
        ],
    )
    return (
        "TaskScope stop -> exit (scope.stop() from the body -> the block exited)\n"
        "ratio: median / the median without the extra, same backend and N\n"
        + table
        + f"\n\nthe hook when nobody listens: {fmt_time(hook)} per site (one site per stop,"
        " more only on escalation and laggard reports)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=15, help="rounds over every cell")
    parser.add_argument("--smoke", action="store_true", help="harness check: 1 round, 1 sample")
    parser.add_argument("--out", type=Path, help="the JSON results (default: results/otel.json)")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    rounds = 1 if args.smoke else args.rounds
    batch = {n: 1 for n in FAN_OUTS} if args.smoke else BATCH
    samples = measure(rounds, batch)
    rows = analyze(samples)
    hook = hook_cost()
    text = render(rows, hook)
    print(text)
    out = args.out or ROOT / "benchmarks" / "results" / (
        "otel-smoke.json" if args.smoke else "otel.json"
    )
    meta = run_metadata(sys.argv, "smoke" if args.smoke else "full", ROOT)
    meta["otel_versions"] = {
        name: _dist_version(name) for name in ("opentelemetry-api", "opentelemetry-sdk")
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "schema": "stopscope-bench-otel/1",
                "meta": meta,
                "config": {"rounds": rounds, "batch": batch, "fan_outs": FAN_OUTS},
                "hook_seconds_per_site": hook,
                "summary": rows,
                "samples": samples,
                "table": text,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"\nwrote {out}", file=sys.stderr)
    return 0


def _dist_version(name: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
