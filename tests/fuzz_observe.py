"""What the observers of a stop say, checked against its report: the structured log
record (``extra={"stopscope": {...}}``, the scope's one INFO line) and the
OpenTelemetry listener (:mod:`stopscope.otel`: a span per stop, stage and member, and
three counters), recorded by the SDK's in-memory exporter and reader.

The fuzzers (``fuzz_model``, ``test_fuzz_servers``) run every generated scope with
both on, and call :func:`disagreements` once the run is over: for each member, the
outcome, phase and cut count the observers give must be the report's, and so must the
stop's totals.  The report itself is judged by each fuzzer's model; this only checks
that what an operator sees in the logs and traces tells the same story.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import stopscope.otel
from stopscope import Outcome, ShutdownReport
from stopscope._report import LOG_FIELD

#: seconds a flush of the listener may take; only a guard against hangs
FLUSH_GUARD = 20.0
#: the counters of stopscope.otel
COUNTERS = ("stopscope.stops", "stopscope.members.cancelled", "stopscope.cut")


class StructuredRecords(logging.Handler):
    """Keeps the structured field of each record on the ``stopscope`` logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.fields: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, LOG_FIELD, None)
        if isinstance(fields, dict) and fields.get("event") == "scope.stopped":
            self.fields.append(fields)


@contextmanager
def structured_records() -> Iterator[StructuredRecords]:
    """Collect the scopes' structured records, with the ``stopscope`` logger at INFO
    (the summary line is only made when INFO is enabled)."""
    logger = logging.getLogger("stopscope")
    handler = StructuredRecords()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(min(level or logging.INFO, logging.INFO))
    try:
        yield handler
    finally:
        logger.setLevel(level)
        logger.removeHandler(handler)


@dataclass
class Telemetry:
    """The SDK's in-memory exporter and reader, wired to stopscope.otel while active."""

    exporter: InMemorySpanExporter = field(default_factory=InMemorySpanExporter)
    reader: InMemoryMetricReader = field(default_factory=InMemoryMetricReader)
    #: each counter's total per (counter, frozen attributes), as last read
    totals: dict[tuple[str, frozenset[tuple[str, Any]]], int] = field(default_factory=dict)

    @contextmanager
    def active(self) -> Iterator[Telemetry]:
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        meter_provider = MeterProvider(metric_readers=[self.reader])
        stopscope.otel.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
        try:
            yield self
        finally:
            stopscope.otel.uninstrument()
            meter_provider.shutdown()
            tracer_provider.shutdown()

    def take(self) -> tuple[list[ReadableSpan], dict[tuple[str, frozenset[tuple[str, Any]]], int]]:
        """The spans recorded since the last take, and what each counter grew by
        (call it off the event loop, once the scope exited)."""
        if not stopscope.otel.flush(FLUSH_GUARD):
            raise AssertionError(f"stopscope.otel.flush() did not finish in {FLUSH_GUARD} s")
        spans = list(self.exporter.get_finished_spans())
        self.exporter.clear()
        now: dict[tuple[str, frozenset[tuple[str, Any]]], int] = {}
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name not in COUNTERS:
                        continue
                    for point in metric.data.data_points:
                        key = (metric.name, frozenset((point.attributes or {}).items()))
                        now[key] = int(point.value)  # type: ignore[union-attr]
        grown = {k: v - self.totals.get(k, 0) for k, v in now.items()}
        self.totals = now
        return spans, {k: v for k, v in grown.items() if v}


def _counter(
    grown: dict[tuple[str, frozenset[tuple[str, Any]]], int], name: str, **labels: Any
) -> int:
    """What counter ``name`` grew by, over the points whose attributes hold ``labels``."""
    want = {(f"stopscope.{k}", v) for k, v in labels.items()}
    return sum(v for (n, attrs), v in grown.items() if n == name and want <= attrs)


def disagreements(
    report: ShutdownReport,
    name: str,
    fields: list[dict[str, Any]],
    spans: list[ReadableSpan] | None,
    grown: dict[tuple[str, frozenset[tuple[str, Any]]], int] | None,
) -> list[str]:
    """Where the structured record and the telemetry of scope ``name`` disagree with
    its report (``spans``/``grown`` ``None``: no telemetry was recorded)."""
    problems: list[str] = []
    records = report.tasks
    stopped = report.requested_at is not None
    mine = [f for f in fields if f.get("scope") == name]
    cut = sum(r.cut for r in records)
    cut_members = Counter(
        r.outcome for r in records if r.outcome in (Outcome.CANCELLED, Outcome.ABANDONED)
    )
    # the structured record: one per stop, telling the report's facts
    if len(mine) != (1 if stopped else 0):
        problems.append(f"{len(mine)} structured record(s) for scope {name!r}; stopped={stopped}")
    for f in mine:
        outcomes = Counter(r.outcome.value for r in records)
        if f["members"] != len(records) or f["outcomes"] != dict(outcomes):
            problems.append(
                f"structured record: {f['members']} member(s) {f['outcomes']}; "
                f"report: {len(records)} {dict(outcomes)}"
            )
        if f["cut"] != cut:
            problems.append(f"structured record: cut {f['cut']}; report: {cut}")
        if f["requested_at"] != report.requested_at:
            problems.append(
                f"structured record: requested_at {f['requested_at']}; "
                f"report: {report.requested_at}"
            )
        got = [(t["name"], t["outcome"], t["phase"], t["cut"]) for t in f["tasks"]]
        want = [(r.name, r.outcome.value, r.phase, r.cut) for r in records]
        if got != want:
            problems.append(f"structured record tasks {got}; report: {want}")
    if spans is None or grown is None:
        return problems
    # the spans: one root per stop, a member span per member not FINISHED
    roots = [
        s for s in spans if s.parent is None and (s.attributes or {}).get("stopscope.scope") == name
    ]
    if len(roots) != (1 if stopped else 0):
        problems.append(f"{len(roots)} root span(s) for scope {name!r}; stopped={stopped}")
        return problems
    if stopped:
        root = roots[0]
        assert root.context is not None
        attrs = dict(root.attributes or {})
        want_root = {
            "stopscope.members": len(records),
            "stopscope.members.cut": sum(cut_members.values()),
            "stopscope.cut": cut,
        }
        got_root = {k: attrs.get(k) for k in want_root}
        if got_root != want_root:
            problems.append(f"root span {got_root}; report: {want_root}")
        failed = any(r.outcome is Outcome.FAILED for r in records)
        if (root.status.status_code is StatusCode.ERROR) != failed:
            problems.append(f"root span status {root.status.status_code.name}; failed={failed}")
        trace_id = root.context.trace_id
        ours = [s for s in spans if s.context is not None and s.context.trace_id == trace_id]
        members = {
            str((s.attributes or {}).get("stopscope.member")): dict(s.attributes or {})
            for s in ours
            if s.name.startswith("member ")
        }
        want_members = {r.name: r for r in records if r.outcome is not Outcome.FINISHED}
        if sorted(members) != sorted(want_members):
            problems.append(f"member spans {sorted(members)}; report: {sorted(want_members)}")
        for member, r in want_members.items():
            a = members.get(member)
            if a is None:
                continue
            got_m = (a.get("stopscope.outcome"), a.get("stopscope.phase"), a.get("stopscope.cut"))
            want_m = (r.outcome.value, r.phase, r.cut)
            if got_m != want_m:
                problems.append(f"span of member {member!r}: {got_m}; report: {want_m}")
    # the counters grew by this stop's facts
    got_counts = (
        _counter(grown, "stopscope.stops", scope=name),
        _counter(grown, "stopscope.members.cancelled", scope=name, outcome="cancelled"),
        _counter(grown, "stopscope.members.cancelled", scope=name, outcome="abandoned"),
        _counter(grown, "stopscope.cut", scope=name),
    )
    want_counts = (
        1 if stopped else 0,
        cut_members[Outcome.CANCELLED],
        cut_members[Outcome.ABANDONED],
        cut,
    )
    if got_counts != want_counts:
        problems.append(
            f"counters (stops, cancelled, abandoned, cut) grew by {got_counts}; "
            f"report: {want_counts}"
        )
    return problems
