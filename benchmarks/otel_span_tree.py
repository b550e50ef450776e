"""The span tree of a real stop, drawn as a timeline from the spans stopscope.otel exported.

A small service runs under ``stopscope.run()`` with ``stopscope.otel`` on (the SDK's
in-memory exporter), and sends itself a real SIGTERM once its members run.  Its scope
has a member outside any stage (a poller), three stages started in dependency order
(``db`` first, so stopped last; ``workers``; ``http``, stopped first), and a member
that ignores the stop, cancelled when the scope's grace runs out.  The exported spans
are saved as JSON, then drawn: one row per span, indented by depth, coloured by
outcome, with the events (escalation, cancelled at) marked.

    python benchmarks/otel_span_tree.py   # writes docs/_static/otel-span-tree.svg
                                          # and benchmarks/results/otel_span_tree.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import stopscope
import stopscope.otel
from stopscope import StopSignal, TaskScope

ROOT = Path(__file__).resolve().parent.parent

#: seconds of cleanup each member does once its stop comes (a real sleep: a real stop)
CLEANUP = {"poller": 0.0, "server": 0.12, "worker-1": 0.03, "worker-2": 0.06,
           "worker-3": 0.045, "db-writer": 0.08}


async def member(signal: StopSignal, name: str) -> None:
    await signal.wait()
    with anyio.CancelScope(shield=True):
        await anyio.sleep(CLEANUP[name])  # drain, flush, close: what a real stop does


async def ignores_the_stop() -> None:
    await anyio.sleep_forever()


async def service(stop: StopSignal) -> None:
    async with TaskScope(grace=0.4, signal=stop, name="service") as scope:
        scope.start_soon(member, scope.signal, "poller", name="poller")
        scope.start_soon(ignores_the_stop, name="stuck-export")
        db = scope.stage("db")
        scope.start_soon(member, db, "db-writer", name="db-writer")
        workers = scope.stage("workers")
        for i in (1, 2, 3):
            scope.start_soon(member, workers, f"worker-{i}", name=f"worker-{i}")
        http = scope.stage("http")
        scope.start_soon(member, http, "server", name="server")
        await anyio.wait_all_tasks_blocked()
        os.kill(os.getpid(), signal.SIGTERM)  # a real signal, as an orchestrator sends
        await stop.wait()


def record_stop() -> list[dict[str, Any]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    stopscope.otel.instrument(tracer_provider=provider)
    try:
        stopscope.run(service, grace=5)
    finally:
        stopscope.otel.uninstrument()
    return [_as_dict(span) for span in exporter.get_finished_spans()]


def _as_dict(span: ReadableSpan) -> dict[str, Any]:
    assert span.context is not None
    return {
        "name": span.name,
        "span_id": f"{span.context.span_id:016x}",
        "parent_id": None if span.parent is None else f"{span.parent.span_id:016x}",
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "events": [
            {"name": e.name, "time_ns": e.timestamp, "attributes": dict(e.attributes or {})}
            for e in span.events
        ],
    }


def _tree_order(spans: Sequence[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in spans:
        children.setdefault(span["parent_id"], []).append(span)
    out: list[tuple[int, dict[str, Any]]] = []

    def walk(parent: str | None, depth: int) -> None:
        # members before stages, then by start time: the order of the stop
        kids = sorted(children.get(parent, []),
                      key=lambda s: (s["name"].startswith("stage"), s["start_ns"]))
        for span in kids:
            out.append((depth, span))
            walk(span["span_id"], depth + 1)

    walk(None, 0)
    return out


COLOURS = {"stopped": "#2e7d32", "cancelled": "#c62828", "failed": "#6a1b9a",
           "abandoned": "#ef6c00"}


def draw(spans: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: small, searchable
    matplotlib.rcParams["svg.hashsalt"] = "stopscope"  # stable ids between runs
    import matplotlib.pyplot as plt

    rows = _tree_order(spans)
    t0 = min(s["start_ns"] for s in spans)
    fig, ax = plt.subplots(figsize=(10, 0.42 * len(rows) + 1.4))
    for y, (depth, span) in enumerate(rows):
        attrs = span["attributes"]
        start = (span["start_ns"] - t0) / 1e6
        width = max((span["end_ns"] - span["start_ns"]) / 1e6, 0.4)
        if span["parent_id"] is None:
            colour, label = "#1565c0", (f"{span['name']}  reason={attrs['stopscope.reason']}"
                                        f"  signal={attrs.get('stopscope.signal')}"
                                        f"  grace={attrs.get('stopscope.grace')} s")
        elif span["name"].startswith("stage"):
            colour, label = "#78909c", span["name"]
        else:
            colour = COLOURS.get(attrs["stopscope.outcome"], "#455a64")
            label = (f"{span['name']}  {attrs['stopscope.outcome']} ({attrs['stopscope.phase']})"
                     f"  latency={attrs.get('stopscope.latency', 0) * 1000:.0f} ms")
        ax.barh(y, width, left=start, height=0.6, color=colour)
        ax.text(-0.25 + 0.02 * depth, y, span["name"], ha="left", va="center", fontsize=9,
                family="monospace", transform=ax.get_yaxis_transform())
        ax.text(start + width + 4, y, label.split("  ", 1)[1] if "  " in label else "",
                va="center", fontsize=8, color="#37474f")
        for event in span["events"]:
            at = (event["time_ns"] - t0) / 1e6
            marker = "v" if event["name"] == "stopscope.escalation" else "x"
            ax.plot(at, y, marker=marker, color="black", markersize=7)
            ax.text(at, y - 0.42, event["name"].removeprefix("stopscope."), ha="center",
                    fontsize=7)
    ax.set_ylim(len(rows) - 0.4, -0.8)
    ax.set_yticks([])
    ax.set_xlabel("milliseconds since the stop was requested (SIGTERM)")
    ax.set_xlim(left=0, right=max((s["end_ns"] - t0) / 1e6 for s in spans) * 1.9)
    ax.spines[["left", "top", "right"]].set_visible(False)
    ax.set_title("The span tree of one stop (stopscope.otel, exported by the OpenTelemetry SDK)",
                 fontsize=10)
    fig.subplots_adjust(left=0.22, right=0.98)
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--svg", type=Path,
                        default=ROOT / "docs" / "_static" / "otel-span-tree.svg")
    parser.add_argument("--json", type=Path,
                        default=ROOT / "benchmarks" / "results" / "otel_span_tree.json")
    args = parser.parse_args(argv)
    spans = record_stop()
    args.json.write_text(json.dumps({"spans": spans}, indent=1) + "\n")
    draw(spans, args.svg)
    print(f"wrote {args.json} and {args.svg} ({len(spans)} spans)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
