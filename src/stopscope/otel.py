"""OpenTelemetry for stops: a span tree and counters for every :class:`~stopscope.TaskScope` stop.

::

    import stopscope
    import stopscope.otel

    stopscope.otel.instrument()          # the global providers your SDK set up
    # or: stopscope.otel.instrument(exporter="otlp")   # OTLP/HTTP, from OTEL_* variables
    stopscope.run(main)                  # flushes the telemetry before the process exits

Needs the ``otel`` extra (``pip install "stopscope[otel]"``, the OpenTelemetry API);
``exporter="otlp"`` and ``"console"`` need the SDK too.  Once instrumented, every
scope that stops yields one span for the stop, a child span per stage, and a child span
(of its stage, or of the stop) per member that was running when the stop came, with
the report's facts as attributes and an event per escalation, cut and laggard warning.
The spans are built from the scope's recorded times once the stop is over, off the
event loop (a worker thread), so the stop itself pays for none of it.
"""

from __future__ import annotations

import atexit
import itertools
import signal as _signal_module
import threading
import time
from collections import deque
from collections.abc import Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from . import _scope
from ._report import Outcome, TaskRecord
from ._signal import _to_seconds, logger

if TYPE_CHECKING:
    from ._scope import TaskScope

__all__ = [
    "DEFAULT_FLUSH_RESERVE",
    "EXPORTERS",
    "flush",
    "flush_reserve",
    "instrument",
    "is_instrumented",
    "uninstrument",
]

#: seconds :func:`~stopscope.run` gives the telemetry to leave before the process exits
DEFAULT_FLUSH_RESERVE: Final = 1.0

#: the ``exporter`` names :func:`instrument` knows (``None``: the providers you set up)
EXPORTERS: Final = ("otlp", "console")

_INSTALL_API: Final = 'pip install "stopscope[otel]"'
_INSTALL_SDK: Final = {
    "otlp": "pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-http",
    "console": "pip install opentelemetry-sdk",
}

#: The worker looks for finished stops this often (seconds), and builds the spans of
#: those that ended at least _SETTLE seconds ago; a flush takes them all at once.  A
#: stop never wakes it: a thread woken there takes the GIL from the loop right when the
#: service is busiest (measured: a p90 of milliseconds on a stop of microseconds).
_POLL = 0.5
_SETTLE = 0.1

_lock = threading.Lock()
_listener: _Listener | None = None


class _Stop(NamedTuple):
    """What a finished stop leaves for the worker thread (all of it final)."""

    name: str | None
    grace: float | None
    reason: object
    requested: float  # time.monotonic()
    ended: float  # time.monotonic()
    hard: bool
    records: tuple[TaskRecord, ...]
    stages: tuple[tuple[str, float | None, int], ...]  # name, set (monotonic), first
    events: Sequence[tuple[int, TaskRecord | None, str, dict[str, Any]]]
    context: Any  # the OpenTelemetry context of the task that ran the block


def _reason_text(reason: object) -> str:
    return _scope._reason_text(reason)


def _signal_name(reason: object) -> str | None:
    if isinstance(reason, _signal_module.Signals):
        return reason.name
    return None


class _Listener:
    """The observer a scope calls (``_scope._observer``), and the worker that exports."""

    def __init__(
        self,
        tracer_provider: Any,
        meter_provider: Any,
        reserve: float,
        owned: bool,
    ) -> None:
        from opentelemetry import context, metrics, trace

        from . import __version__

        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.reserve = reserve
        self.owned = owned  # providers made by instrument(exporter=...): shut down at the end
        self._trace = trace
        # the OpenTelemetry context of the task that ran the block: with the API's own
        # runtime context (a ContextVar), read in one C call; else through the API
        var = getattr(getattr(context, "_RUNTIME_CONTEXT", None), "_current_context", None)
        self._context = var.get if isinstance(var, ContextVar) else context.get_current
        self.tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer(
            "stopscope", __version__
        )
        meter = (meter_provider or metrics.get_meter_provider()).get_meter("stopscope", __version__)
        self.stops = meter.create_counter(
            "stopscope.stops", unit="{stop}", description="TaskScope stops"
        )
        self.cancelled = meter.create_counter(
            "stopscope.members.cancelled",
            unit="{member}",
            description="members cancelled (or threads abandoned) after their grace",
        )
        self.cut = meter.create_counter(
            "stopscope.cut",
            unit="{request}",
            description="requests, connections and cleanups cut short by a stop",
        )
        self._pending: dict[TaskScope, list[tuple[int, TaskRecord | None, str, dict[str, Any]]]]
        self._pending = {}
        # finished stops, as a scope hands them over: (scope, name, hard, ended,
        # context), one append (atomic under the GIL, no lock); the worker takes them
        # from there into _queue, where they become _Stop fields
        self._finished: deque[tuple[Any, ...]] = deque()
        self._queue: list[tuple[Any, ...]] = []  # _Stop fields
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._urgent = 0  # flushes waiting
        # The providers' force_flush() runs on the worker too, never on the caller: the
        # SDK's batch processor ignores its timeout (an export blocks for the exporter's
        # own, 10 s by default, and a metric reader raises when it runs out), so only a
        # wait on this thread keeps a flush within its time
        self._flush_asked = 0  # flushes asked of the worker (a ticket each)...
        self._flushed = 0  # ...and the last it has done
        self._flush_deadline = 0.0  # time.monotonic(): the latest a flush asked
        self._flush_ok = True
        # one tick per stop recorded and per at_exit() (next() is atomic under the GIL)
        self._ticks = itertools.count()
        self._exit_flushed: int | None = None  # the tick of the last at_exit() that flushed
        self._closed = False
        self._thread = threading.Thread(
            target=self._work, name="stopscope.otel exporter", daemon=True
        )
        self._thread.start()

    # -- called by scopes, on their loop: quick, and never raising ------------------

    def event(
        self, scope: TaskScope, record: TaskRecord | None, name: str, attributes: dict[str, Any]
    ) -> None:
        self._pending.setdefault(scope, []).append((time.time_ns(), record, name, attributes))

    def finished(self, scope: TaskScope) -> None:
        # as little as will do: this runs at the end of the stop, on its loop, before
        # the scope's block exits.  What is final once the scope closed (its records,
        # stages, reason, grace, events) the worker reads later; only what could still
        # change (the name, hardness), the end time and the context are taken now
        self._finished.append((scope, scope.name, scope._hard, time.monotonic(), self._context()))
        next(self._ticks)

    def _snapshot(self, handed: tuple[Any, ...]) -> tuple[Any, ...]:
        """A finished scope's stop, as _Stop fields (on the worker thread)."""
        scope, name, hard, ended, ctx = handed
        frozen = scope._frozen
        assert frozen is not None
        reason, requested = frozen
        stages = scope._stages
        return (
            name,
            scope._grace,
            reason,
            requested,
            ended,
            hard,
            tuple(scope._records),
            tuple([(s.name, s.set_real, s.first) for s in stages]) if stages else (),
            self._pending.pop(scope, ()),
            ctx,
        )

    # -- the worker thread -------------------------------------------------------------

    def _take(self) -> list[tuple[Any, ...]] | None:
        """The stops to export now (under the lock): all for a flush, else the settled."""
        queue = self._queue
        finished = self._finished
        while finished:
            queue.append(self._snapshot(finished.popleft()))
        if not queue:
            return None
        n = len(queue)
        if not self._urgent and not self._closed:
            settled = time.monotonic() - _SETTLE
            n = 0
            while n < len(queue) and _Stop._make(queue[n]).ended <= settled:
                n += 1
            if not n:
                return None
        batch = queue[:n]
        del queue[:n]
        return batch

    def _work(self) -> None:
        cond = self._cond
        while True:
            flush_to = 0
            with cond:
                batch = self._take()
                while batch is None:
                    if self._flushed < self._flush_asked:  # every stop asked is exported
                        flush_to, deadline = self._flush_asked, self._flush_deadline
                        break
                    if self._closed:
                        break
                    cond.wait(_POLL)
                    batch = self._take()
            if batch is not None:
                for stop in batch:
                    try:
                        self._export(_Stop._make(stop))
                    except Exception:  # telemetry must never take the service down
                        logger.exception("stopscope.otel: could not record a stop")
                continue
            if not flush_to:  # closed, and nothing left to do
                if self.owned:
                    self._call_providers("shutdown")
                return
            ok = self._call_providers("force_flush", deadline)
            with cond:
                self._flushed, self._flush_ok = flush_to, ok
                cond.notify_all()

    def _call_providers(self, method: str, deadline: float | None = None) -> bool:
        """Call ``method`` of each provider that has it; False if one failed or said so."""
        ok = True
        for provider in self._providers():
            call = getattr(provider, method, None)
            if call is None:
                continue  # the API's no-op providers: nothing to flush
            try:
                if deadline is None:
                    call()
                else:
                    left = max(0.0, deadline - time.monotonic())
                    ok = bool(call(timeout_millis=left * 1000)) and ok
            except Exception:  # never the service's failure, nor in place of its error
                logger.exception("stopscope.otel: %s() of %r failed", method, provider)
                ok = False
        return ok

    def _export(self, stop: _Stop) -> None:
        from opentelemetry.trace import Status, StatusCode

        trace = self._trace
        tracer = self.tracer

        wall_offset = time.time_ns() - time.monotonic_ns()  # the wall clock's, now

        def wall(mono: float) -> int:
            return wall_offset + int(mono * 1e9)

        start, end = stop.requested, max(stop.ended, stop.requested)

        def within(mono: float) -> float:
            return min(max(mono, start), end)

        records = stop.records
        cut_members = [r for r in records if r.outcome in (Outcome.CANCELLED, Outcome.ABANDONED)]
        cut = sum(r.cut for r in records)
        signal_name = _signal_name(stop.reason)
        scope_name = stop.name or "TaskScope"
        attributes: dict[str, Any] = {
            "stopscope.scope": scope_name,
            "stopscope.reason": _reason_text(stop.reason),
            "stopscope.hard": stop.hard,
            "stopscope.members": len(records),
            "stopscope.members.cut": len(cut_members),
            "stopscope.cut": cut,
            "stopscope.latency": end - start,
        }
        if signal_name is not None:
            attributes["stopscope.signal"] = signal_name
        if stop.grace is not None:
            attributes["stopscope.grace"] = stop.grace
        root = tracer.start_span(
            f"stop {scope_name}",
            context=stop.context,  # a child of the span current where the block ran
            attributes=attributes,
            start_time=wall(start),
        )
        failed = [r for r in records if r.outcome is Outcome.FAILED]
        if failed:
            root.set_status(Status(StatusCode.ERROR, f"{len(failed)} member(s) failed"))
        # the stages, each a child of the stop, with the members that belong to it
        # (a member's stop starts with its stage's, or with the scope's)
        parents: list[Any] = [root] * len(records)
        starts = [start] * len(records)
        stage_spans: list[tuple[Any, float, tuple[TaskRecord, ...]]] = []
        bounds = [first for _, _, first in stop.stages] + [len(records)]
        for i, (name, set_at, first) in enumerate(stop.stages):
            mine = records[first : bounds[i + 1]]
            # (every stage is set once the scope stopped; a member that left before its
            # stage was set starts the stage's span)
            begun = within(start if set_at is None else set_at)
            for record in mine:
                if record.outcome is not Outcome.FINISHED and record.exited_at is not None:
                    begun = min(begun, within(record.exited_at))
            span = tracer.start_span(
                f"stage {name}",
                context=trace.set_span_in_context(root),
                attributes={"stopscope.stage": name, "stopscope.members": len(mine)},
                start_time=wall(begun),
            )
            stage_spans.append((span, begun, mine))
            parents[first : bounds[i + 1]] = [span] * len(mine)
            starts[first : bounds[i + 1]] = [begun] * len(mine)
        member_spans: dict[int, Any] = {}
        for record, parent, begun in zip(records, parents, starts, strict=True):
            if record.outcome is Outcome.FINISHED:
                continue  # it ended before the stop: not part of it
            exited = end if record.exited_at is None else within(record.exited_at)
            attrs: dict[str, Any] = {
                "stopscope.member": record.name,
                "stopscope.kind": record.kind,
                "stopscope.outcome": record.outcome.value,
                "stopscope.phase": record.phase,
                "stopscope.cut": record.cut,
            }
            if record.latency is not None:
                attrs["stopscope.latency"] = record.latency
            if record.exit_code is not None:
                attrs["stopscope.exit_code"] = record.exit_code
            span = tracer.start_span(
                f"member {record.name}",
                context=trace.set_span_in_context(parent),
                attributes=attrs,
                start_time=wall(begun),
            )
            if record.error is not None:
                span.record_exception(record.error, timestamp=wall(exited))
                span.set_status(Status(StatusCode.ERROR, _scope._reason_text(record.error)))
            member_spans[id(record)] = (span, exited)
        for at, whose, name, event_attrs in stop.events:
            target = root if whose is None else member_spans.get(id(whose), (root,))[0]
            target.add_event(
                name, {f"stopscope.{k}": v for k, v in event_attrs.items() if v is not None}, at
            )
        for span, exited in member_spans.values():
            span.end(wall(exited))
        for span, begun, mine in stage_spans:
            ends = [within(r.exited_at) for r in mine if r.exited_at is not None]
            span.end(wall(max([begun, *ends])))
        root.end(wall(end))
        labels = {"stopscope.scope": scope_name}
        self.stops.add(1, {**labels, "stopscope.hard": stop.hard})
        for outcome in (Outcome.CANCELLED, Outcome.ABANDONED):
            self.cancelled.add(
                sum(1 for r in cut_members if r.outcome is outcome),
                {**labels, "stopscope.outcome": outcome.value},
            )
        self.cut.add(cut, labels)

    # -- flushing --------------------------------------------------------------------

    def flush(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            self._flush_asked += 1
            ticket = self._flush_asked
            self._flush_deadline = max(self._flush_deadline, deadline)
            self._urgent += 1
            self._cond.notify_all()
            try:
                while self._flushed < ticket:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False  # the worker goes on; the caller does not wait
                    self._cond.wait(left)
            finally:
                self._urgent -= 1
            return self._flush_ok

    def _providers(self) -> list[Any]:
        from opentelemetry import metrics, trace

        return [
            self.tracer_provider or trace.get_tracer_provider(),
            self.meter_provider or metrics.get_meter_provider(),
        ]

    def close(self, timeout: float) -> None:
        """No more stops; the worker exports what is left and shuts down the providers
        that instrument() made (on its thread: this waits *timeout* at most, and not
        at all while the worker is still in a flush that ran out of time: that flush
        has had its reserve)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            stuck = self._flushed < self._flush_asked
        if not stuck:
            self._thread.join(timeout)

    def at_exit(self) -> None:
        """Flush within the reserve: once for run() and the atexit hook together (again
        only if a stop was recorded since), so that a process exits within one reserve."""
        with self._lock:
            tick = next(self._ticks)
            if self._exit_flushed == tick - 1:  # nothing recorded since the last one
                self._exit_flushed = tick
                return
            self._exit_flushed = tick
        self.flush(self.reserve)


def _import_api() -> None:
    try:
        import opentelemetry.metrics
        import opentelemetry.trace  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"stopscope.otel needs the OpenTelemetry API, which is not installed: {_INSTALL_API}"
        ) from exc


def _make_providers(exporter: str) -> tuple[Any, Any]:
    """SDK providers that send to ``exporter`` (a name of :data:`EXPORTERS`)."""
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        if exporter == "otlp":
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            spans: Any = OTLPSpanExporter()
            metrics: Any = OTLPMetricExporter()
        else:
            from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            spans, metrics = ConsoleSpanExporter(), ConsoleMetricExporter()
    except ImportError as exc:
        raise ImportError(
            f"stopscope.otel.instrument(exporter={exporter!r}) needs the OpenTelemetry SDK "
            f"and that exporter: {_INSTALL_SDK[exporter]}"
        ) from exc
    resource = Resource.create()  # service.name and the rest from OTEL_* variables
    tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    tracer_provider.add_span_processor(BatchSpanProcessor(spans))
    reader = PeriodicExportingMetricReader(metrics)
    meter_provider = MeterProvider(
        resource=resource, metric_readers=[reader], shutdown_on_exit=False
    )
    return tracer_provider, meter_provider


def _check_reserve(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`flush_reserve` must be a number of seconds, got {value!r}")
    value = _to_seconds(value)  # an int too large for a float: inf, refused below
    # a wait longer than threading.TIMEOUT_MAX raises OverflowError (from run()'s end)
    if not 0 <= value <= threading.TIMEOUT_MAX:  # (False for nan too)
        raise ValueError(
            f"`flush_reserve` must be a number of seconds from 0 to "
            f"{threading.TIMEOUT_MAX:.0f}, got {value!r}"
        )
    return value


def instrument(
    *,
    tracer_provider: Any = None,
    meter_provider: Any = None,
    exporter: str | None = None,
    flush_reserve: float = DEFAULT_FLUSH_RESERVE,
) -> None:
    """Record every :class:`~stopscope.TaskScope` stop as spans and counters, from now on.

    ::

        stopscope.otel.instrument()                  # the global providers
        stopscope.otel.instrument(exporter="otlp")   # or: an OTLP/HTTP pipeline of its own

    Call it once, at startup, before the scopes you want to see stop.  Spans are
    built when a stop is over, from its recorded times, by a worker thread.
    :func:`~stopscope.run` flushes them (and the counters) when ``main`` is done,
    spending at most ``flush_reserve`` seconds, so count that reserve in the
    orchestrator's budget on top of ``grace``; without ``run()``, call
    :func:`flush` before the process exits.

    :param tracer_provider: where spans go (default: the global one,
        ``opentelemetry.trace.get_tracer_provider()``, read when a stop is recorded)
    :param meter_provider: where the counters go (default: the global one)
    :param exporter: ``None`` (use the providers above), or a name of
        :data:`EXPORTERS`: ``"otlp"`` builds SDK providers with the OTLP/HTTP
        exporters (configured by the standard ``OTEL_EXPORTER_OTLP_*`` variables),
        ``"console"`` prints to stdout; either needs the OpenTelemetry SDK
    :param flush_reserve: the seconds :func:`~stopscope.run` may spend flushing
        telemetry after ``main`` is done (see :func:`flush_reserve`)
    :raises ImportError: if the OpenTelemetry API (the ``otel`` extra) or, for
        ``exporter``, the SDK is not installed; the message says what to install
    :raises ValueError: for an unknown ``exporter``, or an ``exporter`` together with
        providers
    :raises RuntimeError: if already instrumented (call :func:`uninstrument` first)
    """
    global _listener
    reserve = _check_reserve(flush_reserve)
    if exporter is not None:
        if exporter not in EXPORTERS:
            names = ", ".join(repr(n) for n in EXPORTERS)
            raise ValueError(
                f"`exporter` must be None (your own providers) or one of {names}, got {exporter!r}"
            )
        if tracer_provider is not None or meter_provider is not None:
            raise ValueError(
                "pass either `exporter` or your own `tracer_provider`/`meter_provider`, not both"
            )
    for value, param, method in (
        (tracer_provider, "tracer_provider", "get_tracer"),
        (meter_provider, "meter_provider", "get_meter"),
    ):
        if value is not None and not callable(getattr(value, method, None)):
            raise TypeError(
                f"`{param}` must be an OpenTelemetry {param} (with .{method}()), got {value!r}"
            )
    _import_api()
    with _lock:
        if _listener is not None:
            raise RuntimeError(
                "stopscope.otel is already instrumented; call stopscope.otel.uninstrument() "
                "first to change how"
            )
        owned = exporter is not None
        if owned:
            assert exporter is not None
            tracer_provider, meter_provider = _make_providers(exporter)
        listener = _Listener(tracer_provider, meter_provider, reserve, owned)
        _listener = listener
        _scope._observer = listener
        atexit.register(listener.at_exit)


def uninstrument() -> None:
    """Stop recording stops; flush what was recorded (within the reserve).

    Providers that :func:`instrument` made for an ``exporter`` are shut down; yours
    are left as they are.  Does nothing if not instrumented.  It spends the reserve
    at most, and shares it with :func:`~stopscope.run`'s flush and the ``atexit``
    hook: it flushes only if a stop was recorded since they did.
    """
    global _listener
    with _lock:
        listener = _listener
        if listener is None:
            return
        _listener = None
        _scope._observer = None
    atexit.unregister(listener.at_exit)
    # one reserve in all, shared with run()'s flush and the atexit hook: the flush is
    # skipped if no stop was recorded since theirs, and the close gets what is left
    began = time.monotonic()
    listener.at_exit()
    listener.close(max(0.0, listener.reserve - (time.monotonic() - began)))


def is_instrumented() -> bool:
    """Whether :func:`instrument` is in effect."""
    return _listener is not None


def flush(timeout: float | None = None) -> bool:
    """Export what was recorded so far: wait for the worker, then flush the providers.

    :param timeout: seconds to spend at most (default: the reserve given to
        :func:`instrument`)
    :return: ``True`` if everything was exported in time (also when not instrumented)
    """
    seconds = None if timeout is None else _check_timeout(timeout)
    listener = _listener
    if listener is None:
        return True
    return listener.flush(listener.reserve if seconds is None else seconds)


def _check_timeout(value: object) -> float:
    try:
        return _check_reserve(value)
    except (TypeError, ValueError) as exc:
        raise type(exc)(str(exc).replace("`flush_reserve`", "`timeout`")) from None


def flush_reserve() -> float:
    """The seconds :func:`~stopscope.run` spends at most flushing telemetry as it ends.

    ``0.0`` when not instrumented.  A budget check (``grace`` + drain + reserves
    against ``terminationGracePeriodSeconds``) adds it.
    """
    listener = _listener
    return 0.0 if listener is None else listener.reserve
