"""stopscope.otel: the span tree, attributes, events and counters of a stop, recorded by
the OpenTelemetry SDK's in-memory exporter and reader, on every backend; and the errors
of instrument()."""

from __future__ import annotations

import http.server
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import stopscope.otel
from stopscope import Outcome, StopSignal, TaskScope, _scope
from stopscope._report import current_record

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup  # type: ignore[import-not-found, unused-ignore]

#: seconds; only a guard against hangs, never a timing assertion
HANG_GUARD = 20.0
APP = Path(__file__).resolve().parent / "apps" / "otel_service.py"


class Telemetry:
    """The SDK's in-memory exporter and reader, wired to stopscope.otel."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    async def spans(self) -> dict[str, ReadableSpan]:
        """Every span recorded so far, by name (after a flush, off the loop)."""
        assert await anyio.to_thread.run_sync(stopscope.otel.flush, HANG_GUARD)
        spans = self.exporter.get_finished_spans()
        by_name = {span.name: span for span in spans}
        assert len(by_name) == len(spans), "span names are unique in these tests"
        return by_name

    def counters(self) -> dict[str, list[tuple[dict[str, Any], int]]]:
        """Each counter's data points: (attributes, value)."""
        data = self.reader.get_metrics_data()
        assert data is not None
        out: dict[str, list[tuple[dict[str, Any], int]]] = {}
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    points = out.setdefault(metric.name, [])
                    for point in metric.data.data_points:
                        points.append((dict(point.attributes or {}), int(point.value)))  # type: ignore[union-attr]
        return out


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    kit = Telemetry()
    stopscope.otel.instrument(
        tracer_provider=kit.tracer_provider, meter_provider=kit.meter_provider
    )
    try:
        yield kit
    finally:
        stopscope.otel.uninstrument()


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def times(span: ReadableSpan) -> tuple[int, int]:
    assert span.start_time is not None
    assert span.end_time is not None
    return span.start_time, span.end_time


def events(span: ReadableSpan, name: str) -> list[dict[str, Any]]:
    return [dict(e.attributes or {}) for e in span.events if e.name == name]


async def until_stopped(signal: StopSignal) -> None:
    await signal.wait()


async def stuck() -> None:
    await anyio.sleep_forever()


@pytest.mark.anyio
class TestSpanTree:
    async def test_a_span_per_stop_with_a_child_per_stage_and_per_member(
        self, telemetry: Telemetry
    ) -> None:
        async def quick() -> None:
            pass

        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=30, name="svc") as scope:
                scope.start_soon(quick, name="job")  # finished before the stop: no span
                scope.start_soon(until_stopped, scope.signal, name="plain")
                db = scope.stage("db")
                scope.start_soon(until_stopped, db, name="writer")
                scope.start_soon(quick, name="db-job")  # no span either, but counted
                http = scope.stage("http")
                scope.start_soon(until_stopped, http, name="server1")
                scope.start_soon(until_stopped, http, name="server2")
                await anyio.wait_all_tasks_blocked()
                scope.stop("deploy")
        spans = await telemetry.spans()
        assert set(spans) == {
            "stop svc",
            "stage db",
            "stage http",
            "member plain",
            "member writer",
            "member server1",
            "member server2",
        }
        root = spans["stop svc"]
        assert parent_of(root) is None
        for name in ("stage db", "stage http", "member plain"):
            assert parent_of(spans[name]) == span_id(root)
        assert parent_of(spans["member writer"]) == span_id(spans["stage db"])
        assert spans["stage db"].attributes == {"stopscope.stage": "db", "stopscope.members": 2}
        assert parent_of(spans["member server1"]) == span_id(spans["stage http"])
        assert parent_of(spans["member server2"]) == span_id(spans["stage http"])
        assert {span.context.trace_id for span in spans.values() if span.context} == {
            root.context.trace_id if root.context else 0
        }
        # every child lies within its parent, and the stages run in their order
        start, end = times(root)
        for span in spans.values():
            child_start, child_end = times(span)
            assert start <= child_start <= child_end <= end
        assert times(spans["stage http"])[1] <= times(spans["stage db"])[0]
        assert times(spans["member server1"])[0] == times(spans["stage http"])[0]

        assert root.attributes is not None
        assert dict(root.attributes) == {
            "stopscope.scope": "svc",
            "stopscope.reason": "deploy",
            "stopscope.hard": False,
            "stopscope.members": 6,
            "stopscope.members.cut": 0,
            "stopscope.cut": 0,
            "stopscope.latency": pytest.approx((end - start) / 1e9, abs=1e-6),
            "stopscope.grace": 30.0,
        }
        writer = spans["member writer"]
        record = scope.report.by_name("writer")
        assert writer.attributes is not None
        assert dict(writer.attributes) == {
            "stopscope.member": "writer",
            "stopscope.kind": "task",
            "stopscope.outcome": "stopped",
            "stopscope.phase": "grace",
            "stopscope.cut": 0,
            "stopscope.latency": record.latency,
        }
        assert root.status.status_code is StatusCode.UNSET
        counters = telemetry.counters()
        assert counters["stopscope.stops"] == [
            ({"stopscope.scope": "svc", "stopscope.hard": False}, 1)
        ]
        assert counters["stopscope.cut"] == [({"stopscope.scope": "svc"}, 0)]
        assert sum(v for _, v in counters["stopscope.members.cancelled"]) == 0

    async def test_the_stop_is_a_child_of_the_span_current_where_the_block_ran(
        self, telemetry: Telemetry
    ) -> None:
        tracer = telemetry.tracer_provider.get_tracer("test")
        with anyio.fail_after(HANG_GUARD), tracer.start_as_current_span("request"):
            async with TaskScope(grace=30) as scope:
                scope.start_soon(until_stopped, scope.signal, name="worker")
        spans = await telemetry.spans()
        assert parent_of(spans["stop TaskScope"]) == span_id(spans["request"])
        assert parent_of(spans["member worker"]) == span_id(spans["stop TaskScope"])

    async def test_a_runtime_context_of_its_own_still_parents_the_stop(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # the API's runtime context is pluggable: one that is not the API's ContextVar
        # is read through opentelemetry.context.get_current()
        import opentelemetry.context
        from opentelemetry.context.context import Context, _RuntimeContext

        inner = opentelemetry.context._RUNTIME_CONTEXT

        class Delegating(_RuntimeContext):
            def attach(self, context: Context) -> Any:
                return inner.attach(context)

            def get_current(self) -> Context:
                return inner.get_current()

            def detach(self, token: Any) -> None:
                inner.detach(token)

        monkeypatch.setattr(opentelemetry.context, "_RUNTIME_CONTEXT", Delegating())
        kit = Telemetry()
        stopscope.otel.instrument(
            tracer_provider=kit.tracer_provider, meter_provider=kit.meter_provider
        )
        try:
            listener = stopscope.otel._listener
            assert listener is not None
            assert listener._context == opentelemetry.context.get_current
            tracer = kit.tracer_provider.get_tracer("test")
            with anyio.fail_after(HANG_GUARD), tracer.start_as_current_span("request"):
                async with TaskScope(grace=30) as scope:
                    scope.start_soon(until_stopped, scope.signal, name="worker")
            spans = await kit.spans()
        finally:
            stopscope.otel.uninstrument()
        assert parent_of(spans["stop TaskScope"]) == span_id(spans["request"])

    async def test_a_stop_by_a_signal_names_it(self, telemetry: Telemetry) -> None:
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=30) as scope:
                scope.start_soon(until_stopped, scope.signal, name="worker")
                await anyio.wait_all_tasks_blocked()
                scope.stop(signal.SIGTERM)
        root = (await telemetry.spans())["stop TaskScope"]
        assert root.attributes is not None
        assert root.attributes["stopscope.signal"] == "SIGTERM"
        assert root.attributes["stopscope.reason"] == "Signals.SIGTERM"

    async def test_a_start_refused_leaves_the_stages_members_in_place(
        self, telemetry: Telemetry
    ) -> None:
        """start() of a callable that returns no coroutine forgets its record; a stage
        created meanwhile (here by that very callable) still owns the right members."""
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=30) as scope:
                scope.start_soon(until_stopped, scope.signal, name="first")

                late: list[StopSignal] = []

                def not_async(task_status: object) -> int:
                    late.append(scope.stage("late"))
                    return 42

                with pytest.raises(TypeError, match="start\\(\\) needs an async function"):
                    await scope.start(not_async)  # type: ignore[arg-type]
                scope.start_soon(until_stopped, late[0], name="in-late")
                stage = scope.stage("last")
                scope.start_soon(until_stopped, stage, name="staged")
                await anyio.wait_all_tasks_blocked()
        spans = await telemetry.spans()
        assert parent_of(spans["member first"]) == span_id(spans["stop TaskScope"])
        assert parent_of(spans["member staged"]) == span_id(spans["stage last"])
        assert parent_of(spans["member in-late"]) == span_id(spans["stage late"])
        assert spans["stage late"].attributes == {"stopscope.stage": "late", "stopscope.members": 1}

    async def test_without_grace_the_stop_has_no_grace_attribute(
        self, telemetry: Telemetry
    ) -> None:
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=None) as scope:
                scope.start_soon(until_stopped, scope.signal, name="worker")
        root = (await telemetry.spans())["stop TaskScope"].attributes
        assert root is not None
        assert "stopscope.grace" not in root
        assert "stopscope.signal" not in root
        assert root["stopscope.reason"] == "body exited"  # as the log line says it

    async def test_no_span_when_the_scope_never_stopped(self, telemetry: Telemetry) -> None:
        async def quick() -> None:
            pass

        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=30, stop_on_exit=False) as scope:
                scope.start_soon(quick)
        assert await telemetry.spans() == {}

    async def test_a_failed_member_is_an_error_span_with_its_exception(
        self, telemetry: Telemetry
    ) -> None:
        async def boom() -> None:
            raise ValueError("broken")

        scope = TaskScope(grace=30)

        async def stop_by_failure() -> None:
            async with scope:
                scope.start_soon(until_stopped, scope.signal, name="worker")
                scope.start_soon(boom, name="boom")

        with anyio.fail_after(HANG_GUARD), pytest.raises(ExceptionGroup):
            await stop_by_failure()
        spans = await telemetry.spans()
        failed = spans["member boom"]
        assert failed.status.status_code is StatusCode.ERROR
        assert failed.attributes is not None
        assert failed.attributes["stopscope.outcome"] == "failed"
        assert [e.name for e in failed.events] == ["exception"]
        assert spans["stop TaskScope"].status.status_code is StatusCode.ERROR
        assert spans["member worker"].status.status_code is StatusCode.UNSET

    async def test_a_hard_stop_from_outside_says_so(self, telemetry: Telemetry) -> None:
        with anyio.fail_after(HANG_GUARD):
            with anyio.CancelScope() as outer:
                async with TaskScope(grace=30) as scope:
                    scope.start_soon(stuck, name="stuck")
                    await anyio.wait_all_tasks_blocked()
                    outer.cancel()
                    await anyio.sleep_forever()
        spans = await telemetry.spans()
        assert spans["stop TaskScope"].attributes is not None
        assert spans["stop TaskScope"].attributes["stopscope.hard"] is True
        member = spans["member stuck"].attributes
        assert member is not None
        assert member["stopscope.phase"] == "cancelled-from-outside"


@pytest.mark.anyio
class TestEscalation:
    async def test_grace_expired_and_where_each_member_was_cancelled(
        self, telemetry: Telemetry, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.ERROR, logger="stopscope")  # the warnings are expected
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=0.01, name="svc") as scope:
                scope.start_soon(stuck, name="stuck")
                scope.start_soon(until_stopped, scope.signal, name="good")
                await anyio.wait_all_tasks_blocked()
                scope.stop("deploy")
        spans = await telemetry.spans()
        assert events(spans["stop svc"], "stopscope.escalation") == [{"stopscope.live": 1}]
        (cancelled,) = events(spans["member stuck"], "stopscope.cancelled")
        assert "test_otel.py" in cancelled["stopscope.where"]
        assert "in stuck()" in cancelled["stopscope.where"]
        assert spans["member good"].events == ()
        root = spans["stop svc"].attributes
        assert root is not None
        assert root["stopscope.members.cut"] == 1
        counters = dict(
            (attrs["stopscope.outcome"], value)
            for attrs, value in telemetry.counters()["stopscope.members.cancelled"]
        )
        assert counters == {"cancelled": 1, "abandoned": 0}

    async def test_a_members_own_grace_running_out(
        self, telemetry: Telemetry, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.ERROR, logger="stopscope")
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=30) as scope:
                scope.start_soon(stuck, name="stuck", grace=0.01)
                await anyio.wait_all_tasks_blocked()
                scope.stop("deploy")
        spans = await telemetry.spans()
        assert events(spans["member stuck"], "stopscope.escalation") == [{"stopscope.grace": 0.01}]
        assert events(spans["stop TaskScope"], "stopscope.escalation") == []

    async def test_a_laggard_warning_is_an_event_with_where_it_is_stuck(
        self,
        telemetry: Telemetry,
        caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(_scope, "AFTER_CANCEL_REPORT_DELAY", 0.01)
        caplog.set_level(logging.WARNING, logger="stopscope")
        seen = anyio.Event()

        def reported() -> bool:
            return any("still running" in r.getMessage() for r in caplog.records)

        async def stubborn() -> None:
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True):
                    while not reported():  # keeps running until the scope has noticed
                        await anyio.sleep(0.005)
                seen.set()

        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=0) as scope:
                scope.start_soon(stubborn, name="stubborn")
                await anyio.wait_all_tasks_blocked()
        assert seen.is_set()
        spans = await telemetry.spans()
        member = spans["member stubborn"]
        laggard = events(member, "stopscope.laggard")
        assert laggard
        assert "in stubborn()" in laggard[0]["stopscope.where"]
        assert laggard[0]["stopscope.since"] >= 0
        assert member.attributes is not None
        assert member.attributes["stopscope.phase"] == "after-cancel"


@pytest.mark.anyio
class TestCounters:
    async def test_requests_cut_by_the_stop(self, telemetry: Telemetry) -> None:
        async def server(signal: StopSignal) -> None:
            await signal.wait()
            current_record().cut += 3  # three requests cut short, counted as they unwound

        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=30, name="web") as scope:
                scope.start_soon(server, scope.signal, name="server")
                await anyio.wait_all_tasks_blocked()
        spans = await telemetry.spans()
        member = spans["member server"].attributes
        assert member is not None
        assert member["stopscope.cut"] == 3
        assert member["stopscope.outcome"] == "cancelled"  # it cut something: not STOPPED
        assert telemetry.counters()["stopscope.cut"] == [({"stopscope.scope": "web"}, 3)]

    async def test_a_process_member_has_its_exit_code(self, telemetry: Telemetry) -> None:
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=HANG_GUARD) as scope:
                await scope.start_process(
                    [sys.executable, "-c", "import time; time.sleep(60)"], name="child"
                )
        member = (await telemetry.spans())["member child"].attributes
        assert member is not None
        assert member["stopscope.kind"] == "process"
        assert member["stopscope.exit_code"] == scope.report.by_name("child").exit_code
        assert scope.report.by_name("child").outcome is Outcome.STOPPED


class _BrokenTracer:
    def start_span(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("the exporter is down")


class _BlockingTracer:
    def __init__(self) -> None:
        self.release = threading.Event()

    def start_span(self, *args: object, **kwargs: object) -> None:
        self.release.wait(HANG_GUARD)
        raise RuntimeError("released")


class _Provider:
    def __init__(self, tracer: object) -> None:
        self.tracer = tracer

    def get_tracer(self, *args: object, **kwargs: object) -> object:
        return self.tracer


class _FlushingProvider:
    """A real SDK tracer provider whose force_flush() is what a test makes it."""

    def __init__(self, flush: Any) -> None:
        self.provider = TracerProvider()
        self._flush = flush
        self.flushes = 0

    def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
        return self.provider.get_tracer(*args, **kwargs)

    def force_flush(self, timeout_millis: float = 30000) -> bool:
        self.flushes += 1
        return bool(self._flush())


def _failing_flush() -> bool:
    raise RuntimeError("MeterProvider.force_flush failed: the collector is down")


@pytest.mark.anyio
class TestRobustness:
    async def test_a_broken_pipeline_is_logged_and_never_reaches_the_stop(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        stopscope.otel.instrument(tracer_provider=_Provider(_BrokenTracer()))
        try:
            with anyio.fail_after(HANG_GUARD):
                async with TaskScope(grace=30) as scope:
                    scope.start_soon(until_stopped, scope.signal)
            assert await anyio.to_thread.run_sync(stopscope.otel.flush, HANG_GUARD)
        finally:
            stopscope.otel.uninstrument()
        assert scope.report.tasks[0].outcome is Outcome.STOPPED
        assert any("could not record a stop" in r.getMessage() for r in caplog.records)

    async def test_flush_gives_up_at_its_timeout(self, caplog: pytest.LogCaptureFixture) -> None:
        tracer = _BlockingTracer()
        stopscope.otel.instrument(tracer_provider=_Provider(tracer), flush_reserve=0)
        try:
            with anyio.fail_after(HANG_GUARD):
                async with TaskScope(grace=30) as scope:
                    scope.start_soon(until_stopped, scope.signal)
            assert not await anyio.to_thread.run_sync(stopscope.otel.flush, 0.01)
            assert not stopscope.otel.flush()  # the reserve: 0 s
        finally:
            tracer.release.set()
            stopscope.otel.uninstrument()

    async def test_a_flush_never_waits_for_a_provider_past_its_time(self) -> None:
        # the SDK's batch processor ignores force_flush()'s timeout: an OTLP export to a
        # collector that never answers blocks for the exporter's own (10 s by default)
        release, returned = threading.Event(), threading.Event()

        def stuck_flush() -> bool:
            release.wait(HANG_GUARD)
            returned.set()
            return True

        provider = _FlushingProvider(stuck_flush)
        stopscope.otel.instrument(tracer_provider=provider, flush_reserve=0)
        try:
            with anyio.fail_after(HANG_GUARD):
                async with TaskScope(grace=30) as scope:
                    scope.start_soon(until_stopped, scope.signal)
            assert not await anyio.to_thread.run_sync(stopscope.otel.flush, 0.05)
            assert not returned.is_set()  # it gave up while the provider was stuck
        finally:
            release.set()
            stopscope.otel.uninstrument()

    async def test_a_provider_whose_flush_raises_is_logged(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        stopscope.otel.instrument(tracer_provider=_FlushingProvider(_failing_flush))
        try:
            with anyio.fail_after(HANG_GUARD):
                async with TaskScope(grace=30) as scope:
                    scope.start_soon(until_stopped, scope.signal)
            assert not await anyio.to_thread.run_sync(stopscope.otel.flush, HANG_GUARD)
        finally:
            stopscope.otel.uninstrument()
        assert any("force_flush() of" in r.getMessage() for r in caplog.records)

    async def test_spans_leave_by_themselves_shortly_after_the_stop(
        self, telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(stopscope.otel, "_POLL", 0.01)  # the worker looks often,
        monkeypatch.setattr(stopscope.otel, "_SETTLE", 0.1)  # and waits for the stop to settle
        assert stopscope.otel.flush()  # wakes the worker: it polls that often from now on
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=30) as scope:
                scope.start_soon(until_stopped, scope.signal)
            while not telemetry.exporter.get_finished_spans():  # no flush: the worker's poll
                await anyio.sleep(0.01)
        assert len(telemetry.exporter.get_finished_spans()) == 2

    async def test_off_means_no_observer_at_all(self, telemetry: Telemetry) -> None:
        assert _scope._observer is not None
        stopscope.otel.uninstrument()
        assert _scope._observer is None
        assert not stopscope.otel.is_instrumented()
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=30) as scope:
                scope.start_soon(until_stopped, scope.signal)
        assert telemetry.exporter.get_finished_spans() == ()
        stopscope.otel.instrument(
            tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider
        )


class TestRun:
    """run()'s flush as it ends: never its failure, and one reserve with atexit's."""

    def test_a_failing_flush_never_fails_run(
        self, anyio_backend: tuple[str, dict[str, Any]], caplog: pytest.LogCaptureFixture
    ) -> None:
        async def main(signal: StopSignal) -> str:
            async with TaskScope(grace=30, signal=signal) as scope:
                scope.start_soon(until_stopped, scope.signal)
                scope.stop("done")
            return "ran"

        backend, options = anyio_backend
        stopscope.otel.instrument(tracer_provider=_FlushingProvider(_failing_flush))
        try:
            assert stopscope.run(main, backend=backend, backend_options=options) == "ran"
        finally:
            stopscope.otel.uninstrument()
        assert any("force_flush() of" in r.getMessage() for r in caplog.records)

    def test_run_and_the_atexit_hook_flush_once(
        self, anyio_backend: tuple[str, dict[str, Any]]
    ) -> None:
        async def main(signal: StopSignal) -> None:
            async with TaskScope(grace=30, signal=signal) as scope:
                scope.start_soon(until_stopped, scope.signal)
                scope.stop("done")

        backend, options = anyio_backend
        provider = _FlushingProvider(lambda: True)
        stopscope.otel.instrument(tracer_provider=provider)
        try:
            listener = stopscope.otel._listener
            assert listener is not None
            stopscope.run(main, backend=backend, backend_options=options)
            assert provider.flushes == 1
            listener.at_exit()  # the atexit hook: nothing new, so no second reserve
            assert provider.flushes == 1
            anyio.run(main, StopSignal(), backend=backend, backend_options=options)
            listener.at_exit()  # a stop since: flushed
            assert provider.flushes == 2
        finally:
            stopscope.otel.uninstrument()


class TestInstrument:
    def test_unknown_exporter(self) -> None:
        with pytest.raises(ValueError, match=r"`exporter` must be None .* 'otlp', 'console'"):
            stopscope.otel.instrument(exporter="jaeger")
        assert not stopscope.otel.is_instrumented()

    def test_exporter_and_providers_together(self) -> None:
        with pytest.raises(ValueError, match="either `exporter` or your own"):
            stopscope.otel.instrument(exporter="otlp", tracer_provider=TracerProvider())

    @pytest.mark.parametrize("param", ["tracer_provider", "meter_provider"])
    def test_a_provider_of_the_wrong_type(self, param: str) -> None:
        with pytest.raises(TypeError, match=f"`{param}` must be an OpenTelemetry"):
            stopscope.otel.instrument(**{param: object()})  # type: ignore[arg-type]
        assert not stopscope.otel.is_instrumented()

    def test_twice_is_misuse(self, telemetry: Telemetry) -> None:
        with pytest.raises(RuntimeError, match=r"already instrumented; call .*uninstrument"):
            stopscope.otel.instrument()

    def test_uninstrument_when_off_does_nothing(self) -> None:
        stopscope.otel.uninstrument()
        assert not stopscope.otel.is_instrumented()
        assert stopscope.otel.flush() is True
        assert stopscope.otel.flush_reserve() == 0.0

    @pytest.mark.parametrize(
        ("value", "error"),
        [
            (-1, ValueError),
            (float("inf"), ValueError),
            (float("nan"), ValueError),
            (1e10, ValueError),  # beyond threading.TIMEOUT_MAX: run() raised OverflowError
            ("1", TypeError),
            (True, TypeError),
        ],
    )
    def test_bad_reserve_and_timeout(self, value: object, error: type[Exception]) -> None:
        with pytest.raises(error, match="`flush_reserve`"):
            stopscope.otel.instrument(flush_reserve=value)  # type: ignore[arg-type]
        assert not stopscope.otel.is_instrumented()
        with pytest.raises(error, match="`timeout`"):
            stopscope.otel.flush(value)  # type: ignore[arg-type]

    def test_the_reserve_is_exposed(self, telemetry: Telemetry) -> None:
        assert stopscope.otel.flush_reserve() == stopscope.otel.DEFAULT_FLUSH_RESERVE
        stopscope.otel.uninstrument()
        stopscope.otel.instrument(tracer_provider=telemetry.tracer_provider, flush_reserve=2.5)
        assert stopscope.otel.flush_reserve() == 2.5

    @pytest.mark.parametrize("missing", ["opentelemetry.trace", "opentelemetry.metrics"])
    def test_without_the_extra_the_error_names_the_fix(
        self, monkeypatch: pytest.MonkeyPatch, missing: str
    ) -> None:
        monkeypatch.setitem(sys.modules, missing, None)
        with pytest.raises(ImportError, match=r'pip install "stopscope\[otel\]"'):
            stopscope.otel.instrument()
        assert not stopscope.otel.is_instrumented()

    @pytest.mark.parametrize(
        ("exporter", "missing", "fix"),
        [
            ("otlp", "opentelemetry.sdk.trace", "opentelemetry-sdk opentelemetry-exporter-otlp"),
            (
                "otlp",
                "opentelemetry.exporter.otlp.proto.http.trace_exporter",
                "exporter-otlp-proto-http",
            ),
            ("console", "opentelemetry.sdk.metrics", "pip install opentelemetry-sdk"),
        ],
    )
    def test_an_exporter_without_the_sdk_names_the_fix(
        self, monkeypatch: pytest.MonkeyPatch, exporter: str, missing: str, fix: str
    ) -> None:
        monkeypatch.setitem(sys.modules, missing, None)
        with pytest.raises(ImportError, match=fix):
            stopscope.otel.instrument(exporter=exporter)
        assert not stopscope.otel.is_instrumented()

    def test_the_console_exporter_builds_sdk_providers_of_its_own(self) -> None:
        stopscope.otel.instrument(exporter="console")
        try:
            listener = stopscope.otel._listener
            assert listener is not None
            assert isinstance(listener.tracer_provider, TracerProvider)
            assert isinstance(listener.meter_provider, MeterProvider)
            seen = InMemorySpanExporter()  # beside the console's (its stdout is pytest's)
            listener.tracer_provider.add_span_processor(SimpleSpanProcessor(seen))

            async def main() -> None:
                async with TaskScope(grace=30, name="printed") as scope:
                    scope.start_soon(until_stopped, scope.signal, name="worker")

            anyio.run(main)
            assert stopscope.otel.flush(HANG_GUARD)
        finally:
            stopscope.otel.uninstrument()  # flushes, then shuts its own providers down
        assert sorted(span.name for span in seen.get_finished_spans()) == [
            "member worker",
            "stop printed",
        ]


# ------------------------------------------------------------------- end to end


class Receiver(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP receiver on 127.0.0.1 that decodes what arrives (protobuf)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)
        self.spans: list[Any] = []
        self.metrics: list[Any] = []
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ReceiverHandler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/traces":
            traces = ExportTraceServiceRequest.FromString(body)
            with self.server.lock:
                for resource in traces.resource_spans:
                    for scope in resource.scope_spans:
                        self.server.spans.extend(scope.spans)
        elif self.path == "/v1/metrics":
            metrics = ExportMetricsServiceRequest.FromString(body)
            with self.server.lock:
                for resource in metrics.resource_metrics:
                    for scope in resource.scope_metrics:
                        self.server.metrics.extend(scope.metrics)
        reply = ExportTraceServiceResponse().SerializeToString()  # empty: all accepted
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet


def _value(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)


def _attributes(attributes: Any) -> dict[str, object]:
    return {a.key: _value(a.value) for a in attributes}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(HANG_GUARD)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("backend", ["asyncio", "asyncio+uvloop", "trio"])
def test_a_real_sigterm_reaches_the_collector(receiver: Receiver, backend: str) -> None:
    """run() under a real SIGTERM: the spans and counters of its stop leave the process
    (OTLP/HTTP) before it exits."""
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": "otel-e2e",
        "OTEL_METRIC_EXPORT_INTERVAL": "600000",  # only run()'s flush sends them
    }
    returncode, stderr = _sigterm_when_ready(["--backend", backend], env)
    assert returncode == 0, stderr
    with receiver.lock:
        spans = {span.name: span for span in receiver.spans}
        metrics = {metric.name: metric for metric in receiver.metrics}
    assert set(spans) == {
        "stop service",
        "stage writer",
        "stage workers",
        "member writer",
        "member worker-1",
        "member worker-2",
        "member stubborn",
    }
    root = spans["stop service"]
    attributes = _attributes(root.attributes)
    assert attributes["stopscope.signal"] == "SIGTERM"
    assert attributes["stopscope.reason"] == "Signals.SIGTERM"
    assert attributes["stopscope.members.cut"] == 1
    assert [e.name for e in root.events] == ["stopscope.escalation"]
    assert spans["stage workers"].parent_span_id == root.span_id
    assert spans["member worker-1"].parent_span_id == spans["stage workers"].span_id
    assert spans["member stubborn"].parent_span_id == root.span_id
    stubborn = _attributes(spans["member stubborn"].attributes)
    assert stubborn["stopscope.outcome"] == "cancelled"
    (cancelled,) = spans["member stubborn"].events
    where = _attributes(cancelled.attributes)["stopscope.where"]
    assert "otel_service.py" in str(where)
    by_outcome = {
        _attributes(point.attributes)["stopscope.outcome"]: point.as_int
        for point in metrics["stopscope.members.cancelled"].sum.data_points
    }
    assert by_outcome == {"cancelled": 1, "abandoned": 0}
    (stops,) = metrics["stopscope.stops"].sum.data_points
    assert stops.as_int == 1


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("backend", ["asyncio", "asyncio+uvloop", "trio"])
def test_a_collector_that_never_answers_costs_only_the_reserve(backend: str) -> None:
    """run() under a real SIGTERM, sending to a collector that accepts connections and
    never answers (the exporters' own timeout: a minute): the process exits cleanly
    once its flush reserve is spent, not when the exporters give up."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel accepts; nobody reads or answers
        env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{silent.getsockname()[1]}",
            "OTEL_EXPORTER_OTLP_TIMEOUT": str(HANG_GUARD * 3),
            "OTEL_METRIC_EXPORT_INTERVAL": "600000",
        }
        returncode, stderr = _sigterm_when_ready(
            ["--backend", backend, "--flush-reserve", "0.5"], env
        )
    assert returncode == 0, stderr
    assert "Traceback" not in stderr


# ------------------------------------------------------------- the scripts behind the docs

SCRIPTS = Path(__file__).resolve().parent.parent / "benchmarks"


class TestScripts:
    """benchmarks/bench_otel.py and otel_span_tree.py still run (smoke: 1 sample each)."""

    def test_bench_otel_smoke(self, tmp_path: Path) -> None:
        out = tmp_path / "otel.json"
        proc = subprocess.run(
            [sys.executable, str(SCRIPTS / "bench_otel.py"), "--smoke", "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=HANG_GUARD * 9,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        results = json.loads(out.read_text())
        cells = {(r["backend"], r["n"], r["variant"]) for r in results["summary"]}
        assert {variant for _, _, variant in cells} == {"without", "off", "on"}
        assert {n for _, n, _ in cells} == {1, 1000}
        assert all(r["samples"] == 1 for r in results["summary"])
        assert results["hook_seconds_per_site"] >= 0

    def test_span_tree_picture(self, tmp_path: Path) -> None:
        svg, spans = tmp_path / "tree.svg", tmp_path / "tree.json"
        proc = subprocess.run(
            [
                sys.executable,
                str(SCRIPTS / "otel_span_tree.py"),
                "--svg",
                str(svg),
                "--json",
                str(spans),
            ],
            capture_output=True,
            text=True,
            timeout=HANG_GUARD * 3,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        names = {span["name"] for span in json.loads(spans.read_text())["spans"]}
        assert {"stop service", "stage http", "member stuck-export"} <= names
        assert svg.read_text().startswith("<?xml")


# --------------------------------------------- the flush in run()'s budget (issue 19)


def _term_then_return() -> Any:
    async def main(stop: StopSignal) -> str:
        signal.raise_signal(signal.SIGTERM)
        await stop.wait()
        return "done"

    return main


@pytest.mark.parametrize("backend", ["asyncio", "uvloop", "trio"])
def test_run_refuses_a_reserve_smaller_than_the_flush_reserve(
    backend: str, telemetry: Telemetry
) -> None:
    stopscope.otel.uninstrument()
    stopscope.otel.instrument(tracer_provider=telemetry.tracer_provider, flush_reserve=3)
    started: list[bool] = []

    async def main(stop: StopSignal) -> None:
        started.append(True)

    with pytest.raises(ValueError, match=r"raise `reserve` to at least 3 s.*`flush_reserve`"):
        stopscope.run(main, backend=backend, grace=10, budget=30, reserve=2)
    assert not started  # refused before anything ran
    # without a budget there is nothing to check against
    assert stopscope.run(_term_then_return(), backend=backend, grace=10, reserve=2) == "done"


@pytest.mark.parametrize("backend", ["asyncio", "uvloop", "trio"])
def test_the_flush_is_a_phase_of_the_budget(
    backend: str, telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stopscope")
    assert stopscope.run(_term_then_return(), backend=backend, grace=10, budget=30) == "done"
    (record,) = [
        r for r in caplog.records if getattr(r, "stopscope", {}).get("event") == "service.stopped"
    ]
    fields = record.stopscope  # type: ignore[attr-defined]
    assert set(fields["phases"]) == {"telemetry flush"}
    assert 0 <= fields["phases"]["telemetry flush"] <= fields["used"]
    assert "telemetry flush " in record.getMessage()


def _sigterm_when_ready(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Start the service app, send it SIGTERM once it says ``ready``, and wait (bounded)
    for its exit status and stderr; the child is killed if it outlives the bound."""
    proc = subprocess.Popen(
        [sys.executable, str(APP), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=HANG_GUARD)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, stderr
