"""Issue 19: the stop as a structured log record, and the phase budget.

Each stop's summary record carries the report as one field, ``stopscope`` (a dict of
plain JSON types), for JSON formatters and structlog; the text stays as it was.
``run(budget=...)`` and ``GracefulApp(budget=...)`` check the stop against the
orchestrator's limit at once, and say how much of it each phase used.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import anyio
import pytest
import structlog
from pythonjsonlogger.json import JsonFormatter
from starlette.applications import Starlette

import stopscope
from stopscope import StopSignal, TaskScope
from stopscope._report import Timeline
from stopscope._scope import current_record
from stopscope.asgi import GracefulApp
from stopscope.servers import WebService
from stopscope.servers._readiness import ASGIApp, Message, Receive, Scope, Send

HANG_GUARD = 20.0
TERM = signal.SIGTERM
BACKENDS = ["asyncio", "uvloop", "trio"]


def fields_of(caplog: pytest.LogCaptureFixture, event: str) -> tuple[logging.LogRecord, Any]:
    """The one record of ``event`` and its ``stopscope`` field."""
    found = [
        r
        for r in caplog.records
        if r.name == "stopscope" and getattr(r, "stopscope", {}).get("event") == event
    ]
    assert len(found) == 1, [r.getMessage() for r in caplog.records]
    record = found[0]
    fields = record.stopscope  # type: ignore[attr-defined]
    assert json.loads(json.dumps(fields, allow_nan=False)) == fields  # plain JSON
    return record, fields


async def obey(signal: StopSignal) -> None:
    await signal.wait()


async def stuck_reading(signal: StopSignal) -> None:
    send, receive = anyio.create_memory_object_stream[int]()
    async with send, receive:
        await receive.receive()  # where the record must say it was stuck


async def cut_three(signal: StopSignal) -> None:
    await signal.wait()
    current_record().cut += 3  # as a server member counts the requests it cut


# ------------------------------------------------------------ the scope's record


@pytest.mark.anyio
class TestScopeRecord:
    async def test_the_summary_carries_the_report_as_fields(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="stopscope")
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=30, name="svc") as scope:
                scope.start_soon(obey, scope.signal, name="obeys")
                scope.start_soon(stuck_reading, scope.signal, name="stuck", grace=0)
                await anyio.wait_all_tasks_blocked()
                scope.stop("deploy")
        record, fields = fields_of(caplog, "scope.stopped")
        # the human text is what it was
        assert record.getMessage().startswith("TaskScope 'svc' stopped in ")
        assert record.levelno == logging.INFO
        report = scope.report
        assert fields["scope"] == "svc"
        assert fields["reason"] == "deploy"
        assert fields["signal"] is None
        assert fields["grace"] == 30.0
        assert fields["members"] == 2
        assert fields["outcomes"] == {"stopped": 1, "cancelled": 1}
        assert fields["cut"] == 0
        assert fields["requested_at"] == report.requested_at
        last_exit = max(r.exited_at for r in report.tasks if r.exited_at is not None)
        assert report.requested_at is not None
        assert fields["took"] == round(last_exit - report.requested_at, 6)
        assert fields["tasks"] == [r.to_dict() for r in report.tasks]
        obeys, stuck = fields["tasks"]
        assert (obeys["name"], obeys["outcome"], obeys["phase"]) == ("obeys", "stopped", "grace")
        assert obeys["where"] is None
        assert (stuck["outcome"], stuck["phase"]) == ("cancelled", "cancelled")
        assert stuck["latency"] is not None
        assert "test_observability.py:" in stuck["where"]
        assert "in stuck_reading(): await receive.receive()" in stuck["where"]
        assert report.by_name("stuck").where == stuck["where"]

    async def test_an_os_signal_is_named_and_cuts_are_summed(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="stopscope")
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=30) as scope:
                scope.start_soon(cut_three, scope.signal, name="server")
                await anyio.wait_all_tasks_blocked()
                scope.stop(TERM)
        _, fields = fields_of(caplog, "scope.stopped")
        assert fields["scope"] is None
        assert (fields["signal"], fields["reason"]) == ("SIGTERM", "Signals.SIGTERM")
        assert fields["cut"] == 3
        assert fields["tasks"][0]["cut"] == 3
        assert fields["outcomes"] == {"cancelled": 1}  # a member that cut is not STOPPED

    async def test_an_error_whose_repr_raises_is_not_lost(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        class Unprintable(Exception):
            def __repr__(self) -> str:
                raise RuntimeError("no repr")

        class Reason:
            def __str__(self) -> str:
                raise RuntimeError("no str")

        async def fail() -> None:
            raise Unprintable("boom")

        async def stop() -> None:
            async with TaskScope(grace=30, name="svc") as scope:
                scope.start_soon(obey, scope.signal, name="obeys")
                scope.stop(Reason())
                scope.start_soon(fail, name="fails")

        caplog.set_level(logging.INFO, logger="stopscope")
        group = r"error\(s\) in TaskScope 'svc'"
        with anyio.fail_after(HANG_GUARD), pytest.raises(Exception, match=group) as caught:
            await stop()
        # the member's error in the scope's group, not one raised while describing it
        assert [type(e) for e in getattr(caught.value, "exceptions", ())] == [Unprintable]
        _, fields = fields_of(caplog, "scope.stopped")
        assert fields["reason"] == "<Reason object: its str() raised RuntimeError>"
        failed = fields["tasks"][1]
        assert failed["error"] == "<Unprintable object: its repr() raised RuntimeError>"
        assert failed["error_type"].endswith("Unprintable")

    async def test_a_scope_without_members(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.INFO, logger="stopscope")
        async with TaskScope(grace=1) as scope:
            scope.stop("nothing to do")
        _, fields = fields_of(caplog, "scope.stopped")
        assert (fields["members"], fields["outcomes"], fields["tasks"]) == (0, {}, [])
        assert fields["took"] is None

    async def test_nothing_is_built_when_info_is_not_enabled(
        self, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def refuse(*args: object) -> dict[str, Any]:
            raise AssertionError("the record was built for nobody")

        monkeypatch.setattr(stopscope._scope, "scope_fields", refuse)
        caplog.set_level(logging.WARNING, logger="stopscope")
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=30) as scope:
                scope.start_soon(obey, scope.signal)
                await anyio.wait_all_tasks_blocked()
                scope.stop("deploy")
        assert [r for r in caplog.records if r.levelno == logging.INFO] == []


# ------------------------------------------------ real formatters: JSON, structlog


@pytest.fixture
def stream_handler() -> Iterator[tuple[io.StringIO, logging.Handler]]:
    """A handler on the stopscope logger, at INFO, writing to a string."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    log = logging.getLogger("stopscope")
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield out, handler
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


async def stop_a_scope() -> None:
    with anyio.fail_after(HANG_GUARD):
        async with TaskScope(grace=30, name="svc") as scope:
            scope.start_soon(obey, scope.signal, name="obeys")
            scope.start_soon(stuck_reading, scope.signal, name="stuck", grace=0)
            await anyio.wait_all_tasks_blocked()
            scope.stop(TERM)


@pytest.mark.anyio
async def test_python_json_logger_writes_the_fields(
    stream_handler: tuple[io.StringIO, logging.Handler],
) -> None:
    out, handler = stream_handler
    handler.setFormatter(JsonFormatter("%(levelname)s %(name)s %(message)s"))
    await stop_a_scope()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    (line,) = [x for x in lines if x["levelname"] == "INFO"]
    assert line["message"].startswith("TaskScope 'svc' stopped in ")
    fields = line["stopscope"]
    assert (fields["event"], fields["signal"], fields["grace"]) == (
        "scope.stopped",
        "SIGTERM",
        30.0,
    )
    assert [(t["name"], t["outcome"]) for t in fields["tasks"]] == [
        ("obeys", "stopped"),
        ("stuck", "cancelled"),
    ]
    assert "stuck_reading()" in fields["tasks"][1]["where"]


@pytest.mark.anyio
async def test_structlog_through_stdlib_gets_the_fields(
    stream_handler: tuple[io.StringIO, logging.Handler],
) -> None:
    out, handler = stream_handler
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.ExtraAdder()],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    await stop_a_scope()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    (line,) = [x for x in lines if "stopscope" in x]
    assert line["event"].startswith("TaskScope 'svc' stopped in ")
    assert line["stopscope"]["outcomes"] == {"stopped": 1, "cancelled": 1}


# ----------------------------------------------------------------- run(budget=...)


def term_then_return(fn: Any = None) -> Any:
    async def main(stop: StopSignal) -> str:
        signal.raise_signal(TERM)
        await stop.wait()
        if fn is not None:
            await fn(stop)
        return "done"

    return main


def run_in_process(backend: str, main: Any, **options: Any) -> Any:
    if backend == "uvloop":
        pytest.importorskip("uvloop")
    return stopscope.run(main, backend=backend, **options)


@pytest.mark.parametrize("backend", BACKENDS)
def test_run_says_how_much_of_the_budget_the_stop_used(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stopscope")
    result = run_in_process(backend, term_then_return(), grace=10, budget=30, reserve=4)
    assert result == "done"
    record, fields = fields_of(caplog, "service.stopped")
    text = record.getMessage()
    assert text.startswith("term_then_return.<locals>.main() returned ")
    assert " s after SIGTERM; exit status 0; budget 30 s: no phase recorded; " in text
    assert text.endswith(" s left")
    assert fields["service"] == "term_then_return.<locals>.main()"
    assert (fields["ended"], fields["exit_status"], fields["cancelled"]) == ("returned", 0, False)
    assert (fields["signal"], fields["signals"]) == ("SIGTERM", ["SIGTERM"])
    assert fields["reason"] == "Signals.SIGTERM"
    assert (fields["grace"], fields["budget"], fields["reserve"]) == (10.0, 30.0, 4.0)
    assert fields["phases"] == {}
    assert fields["cut_short"] == 0
    assert fields["cut_short_members"] == []
    assert fields["left"] == pytest.approx(30.0 - fields["used"], abs=2e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_run_without_a_budget_keeps_its_line(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stopscope")
    run_in_process(backend, term_then_return())
    record, fields = fields_of(caplog, "service.stopped")
    assert record.getMessage().endswith(" s after SIGTERM; exit status 0")
    assert (fields["budget"], fields["reserve"], fields["left"]) == (None, 5.0, None)
    assert fields["used"] is not None


@pytest.mark.parametrize("backend", BACKENDS)
def test_run_cancelled_names_the_exit_status_and_the_members_cut(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main(stop: StopSignal) -> None:
        async with TaskScope(signal=stop, grace=0, name="inner") as scope:
            scope.start_soon(stuck_reading, scope.signal, name="stuck")
            await anyio.wait_all_tasks_blocked()
            signal.raise_signal(TERM)
        await anyio.sleep_forever()  # cancelled by run()'s grace

    caplog.set_level(logging.INFO, logger="stopscope")
    with pytest.raises(SystemExit) as exited:
        run_in_process(backend, main, grace=0, budget=6)
    assert exited.value.code == 128 + TERM
    _, fields = fields_of(caplog, "service.stopped")
    assert (fields["ended"], fields["exit_status"]) == ("was_cancelled", 128 + TERM)
    assert fields["cancelled"] is True
    assert fields["cut_short"] == 1
    (member,) = fields["cut_short_members"]
    assert (member["name"], member["outcome"]) == ("stuck", "cancelled")
    assert "stuck_reading()" in member["where"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_run_that_raised_still_logs_the_record(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def fail(stop: StopSignal) -> None:
        raise LookupError("gone")

    caplog.set_level(logging.INFO, logger="stopscope")
    with pytest.raises(LookupError):
        run_in_process(backend, term_then_return(fail), budget=30)
    _, fields = fields_of(caplog, "service.stopped")
    assert (fields["ended"], fields["exit_status"]) == ("raised", None)


async def plain_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
    elif scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize(
    ("backend", "server"), [("asyncio", "uvicorn"), ("uvloop", "uvicorn"), ("trio", "hypercorn")]
)
def test_run_records_the_server_members_drain_phases(
    backend: str, server: Literal["uvicorn", "hypercorn"], caplog: pytest.LogCaptureFixture
) -> None:
    async def main(stop: StopSignal) -> None:
        async with WebService(signal=stop, grace=8) as service:
            await service.serve(
                plain_app, server=server, host="127.0.0.1", port=0, drain_delay=0.05
            )
            signal.raise_signal(TERM)
            await stop.wait()

    caplog.set_level(logging.INFO, logger="stopscope")
    run_in_process(backend, main, grace=10, budget=20)
    record, fields = fields_of(caplog, "service.stopped")
    assert list(fields["phases"]) == ["drain delay", "HTTP drain"]
    assert fields["used"] >= sum(fields["phases"].values()) - 1e-5
    assert "; budget 20 s: drain delay " in record.getMessage()


def test_run_builds_no_record_when_info_is_not_enabled(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object) -> dict[str, Any]:
        raise AssertionError("the record was built for nobody")

    monkeypatch.setattr(stopscope._service, "_service_fields", refuse)
    caplog.set_level(logging.WARNING, logger="stopscope")
    assert run_in_process("asyncio", term_then_return(), budget=30) == "done"


# ---------------------------------------------------------------- the budget check


async def never(stop: StopSignal) -> None:
    raise AssertionError("main must not start")


class TestBudgetCheck:
    def test_a_grace_that_does_not_fit_says_by_how_much_to_shorten_it(self) -> None:
        with pytest.raises(ValueError, match="budget") as caught:
            stopscope.run(never, grace=28, budget=30, reserve=5)
        assert str(caught.value) == (
            "run(): the stop does not fit the orchestrator's budget: grace 28 s + reserve "
            "5 s = 33 s > budget 30 s; shorten `grace` by 3 s (to 25 s), or `reserve`, or "
            "raise the budget (terminationGracePeriodSeconds, TimeoutStopSec) to 33 s"
        )

    def test_the_default_grace_fits_kubernetes_default(self) -> None:
        with pytest.raises(ValueError, match=r"shorten `grace` by 0.5 s \(to 24.5 s\)"):
            stopscope.run(never, budget=30, reserve=5.5)
        # and fits exactly with the default reserve: checked, then main runs
        with pytest.raises(AssertionError, match="main must not start"):
            stopscope.run(never, budget=30, signals=())

    def test_a_stop_that_fits_exactly_despite_float_rounding(self) -> None:
        # 0.3 - 0.1 < 0.2 in floats: the check must not refuse "0.3 s > budget 0.3 s"
        with pytest.raises(AssertionError, match="main must not start"):
            stopscope.run(never, grace=0.2, budget=0.3, reserve=0.1, signals=())
        app = GracefulApp(Starlette(), grace=0.2, drain_delay=0.1, budget=0.3, reserve=0.1)
        assert app.readiness.state != "draining"

    def test_a_tiny_overrun_names_how_much_to_shorten(self) -> None:
        with pytest.raises(ValueError, match=r"shorten `grace` by 0.0004 s \(to 25 s\)"):
            stopscope.run(never, grace=25.0004, budget=30, reserve=5)

    @pytest.mark.parametrize("grace", [None, float("inf")])
    def test_no_grace_fits_no_budget(self, grace: float | None) -> None:
        # the message names what was passed: inf is the same endless grace as None
        with pytest.raises(ValueError, match=r"grace=None \(or inf\) waits for ever.*at most 25 s"):
            stopscope.run(never, grace=grace, budget=30)

    def test_a_reserve_that_leaves_nothing(self) -> None:
        with pytest.raises(ValueError, match=r"`reserve` \(5 s\) leaves nothing of the budget"):
            stopscope.run(never, grace=1, budget=5)

    @pytest.mark.parametrize("budget", ["30", b"30", [30], True])
    def test_a_budget_that_is_not_a_number(self, budget: Any) -> None:
        with pytest.raises(
            TypeError,
            match=r"`budget` must be a number of seconds.*"
            r"terminationGracePeriodSeconds",
        ):
            stopscope.run(never, budget=budget)

    @pytest.mark.parametrize(
        "budget", [0, -1, float("nan"), float("inf"), pytest.param(10**400, id="1e400")]
    )
    def test_a_budget_out_of_range(self, budget: float) -> None:
        with pytest.raises(ValueError, match=r"`budget` must be a finite, positive number"):
            stopscope.run(never, budget=budget)

    @pytest.mark.parametrize("reserve", [-1, float("nan"), pytest.param(10**400, id="1e400")])
    def test_a_reserve_out_of_range(self, reserve: float) -> None:
        with pytest.raises(ValueError, match=r"`reserve` must be a finite, non-negative"):
            stopscope.run(never, reserve=reserve)

    def test_a_reserve_that_is_not_a_number(self) -> None:
        with pytest.raises(TypeError, match=r"`reserve` must be a number of seconds, got '5'$"):
            stopscope.run(never, reserve="5")  # type: ignore[arg-type]

    def test_graceful_app_drain_delay_longer_than_the_budget(self) -> None:
        with pytest.raises(ValueError, match="budget") as caught:
            GracefulApp(Starlette(), grace=None, drain_delay=8, budget=10, reserve=3)
        assert str(caught.value) == (
            "GracefulApp: the drain delay (8 s) does not fit the budget (10 s) less the "
            "reserve (3 s): shorten `drain_delay` by more than 1 s (to less than 7 s, "
            "leaving the server time to finish its requests), or raise the budget to "
            "more than 11 s"
        )

    def test_graceful_app_grace_counts_the_drain_delay(self) -> None:
        with pytest.raises(ValueError, match="budget") as caught:
            GracefulApp(Starlette(), grace=25, drain_delay=5, budget=25)
        assert str(caught.value) == (
            "GracefulApp: the stop does not fit the orchestrator's budget: grace 25 s (the "
            "drain delay's 5 s included) + reserve 5 s = 30 s > budget 25 s; shorten "
            "`grace` by 5 s (to 20 s), or `reserve`, or raise the budget "
            "(terminationGracePeriodSeconds, TimeoutStopSec) to 30 s"
        )

    def test_graceful_app_that_fits(self) -> None:
        app = GracefulApp(Starlette(), grace=20, drain_delay=5, budget=30, reserve=10)
        assert app.readiness.state != "draining"


class TestTimeline:
    def test_a_phase_recorded_twice_keeps_the_longer_time(self) -> None:
        timeline = Timeline(30.0, 5.0)
        timeline.add("drain delay", 2.0)
        timeline.add("HTTP drain", 0.5)
        timeline.add("drain delay", 1.0)
        timeline.add("HTTP drain", 0.75)
        timeline.add("clock step", -0.1)  # a negative interval counts as none
        assert timeline.phases == {"drain delay": 2.0, "HTTP drain": 0.75, "clock step": 0.0}

    def test_before_the_stop(self) -> None:
        timeline = Timeline(None, 5.0)
        assert timeline.used() is None
        assert timeline.to_dict() == {
            "budget": None,
            "reserve": 5.0,
            "phases": {},
            "phases_cut_short": [],
            "used": None,
            "left": None,
        }
        assert timeline.text() == "no budget given: no phase recorded"

    def test_a_long_budget_is_not_written_in_exponent_form(self) -> None:
        timeline = Timeline(3600.0, 5.0)  # a batch worker's terminationGracePeriodSeconds
        timeline.start(0.0)
        timeline.add("HTTP drain", 1200.5)
        assert timeline.text(1234.4) == (
            "budget 3600 s: HTTP drain 1200.50 s; 1234 s used, 2366 s left"
        )
        assert timeline.text(3610.0).endswith("; 3610 s used, -10 s left")

    def test_after_the_stop(self) -> None:
        timeline = Timeline(30.0, 5.0)
        timeline.start(100.0)
        timeline.start(200.0)  # the first call wins
        timeline.add("drain delay", 3.0)
        assert timeline.used(104.5) == 4.5
        assert timeline.to_dict(104.5)["left"] == 25.5
        assert timeline.text(104.5) == "budget 30 s: drain delay 3.00 s; 4.5 s used, 25.5 s left"
        assert timeline.used(99.0) == 0.0

    def test_used_without_a_budget(self) -> None:
        timeline = Timeline(None, 5.0)
        timeline.start(10.0)
        assert timeline.text(12.0) == "no budget given: no phase recorded; 2 s used"


# ------------------------------------------------- GracefulApp: phases in its report


class Recorder:
    """A server's SIGTERM handler, as uvicorn's ``handle_exit``."""

    def __init__(self) -> None:
        self.called = anyio.Event()

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.called.set()


@pytest.fixture
def server_handler() -> Iterator[Recorder]:
    recorder = Recorder()
    old = signal.signal(TERM, recorder)
    try:
        yield recorder
    finally:
        signal.signal(TERM, old)


async def lifespan_step(app: ASGIApp, steps: list[str], server: Recorder) -> list[Message]:
    """Drive an app's lifespan as a server does: one message per step."""
    to_app, app_in = anyio.create_memory_object_stream[Message](10)
    app_out, from_app = anyio.create_memory_object_stream[Message](10)
    replies: list[Message] = []

    async def serve() -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        await app(scope, app_in.receive, app_out.send)

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        for step in steps:
            if step == "SIGTERM":
                signal.raise_signal(TERM)
                await server.called.wait()  # after the app's handler, on the loop
                continue
            await to_app.send({"type": f"lifespan.{step}"})
            replies.append(await from_app.receive())
    for stream in (to_app, app_in, app_out, from_app):
        stream.close()
    return replies


def background_app() -> Starlette:
    async def background(signal: StopSignal) -> None:
        await signal.wait()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        graceful = GracefulApp.current()
        graceful.start_soon(background, graceful.signal, name="flusher")
        yield

    return Starlette(lifespan=lifespan)


@pytest.mark.anyio
@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM is raised for real")
class TestGracefulAppRecord:
    async def test_the_report_carries_the_phases_against_the_budget(
        self, server_handler: Recorder, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="stopscope")
        graceful = GracefulApp(background_app(), grace=20, budget=30, reserve=5, name="web")
        with anyio.fail_after(HANG_GUARD):
            replies = await lifespan_step(
                graceful, ["startup", "SIGTERM", "shutdown"], server_handler
            )
        assert [r["type"] for r in replies] == [
            "lifespan.startup.complete",
            "lifespan.shutdown.complete",
        ]
        record, fields = fields_of(caplog, "app.stopped")
        assert record.getMessage().startswith("web report: stop reason: Signals.SIGTERM")
        assert (fields["scope"], fields["signal"], fields["grace"]) == ("web", "SIGTERM", 20.0)
        assert (fields["budget"], fields["reserve"], fields["drain_delay"]) == (30.0, 5.0, 0.0)
        assert list(fields["phases"]) == [
            "drain delay",
            "HTTP drain",
            "background stop",
            "lifespan shutdown",
        ]
        assert [(t["name"], t["outcome"]) for t in fields["tasks"]] == [
            ("flusher", "stopped"),
            ("http", "stopped"),
        ]
        assert fields["used"] >= sum(fields["phases"].values()) - 1e-5
        lines = [
            r.getMessage() for r in caplog.records if r.getMessage().startswith("web report: ")
        ]
        assert lines[-1].startswith("web report: budget 30 s: drain delay ")
        assert " s used, " in lines[-1]
        # only the first line carries the fields
        assert (
            sum(
                hasattr(r, "stopscope")
                for r in caplog.records
                if r.getMessage().startswith("web report: ")
            )
            == 1
        )

    async def test_without_a_budget_the_report_is_as_it_was(
        self, server_handler: Recorder, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="stopscope")
        graceful = GracefulApp(background_app(), grace=20, name="web")
        with anyio.fail_after(HANG_GUARD):
            await lifespan_step(graceful, ["startup", "SIGTERM", "shutdown"], server_handler)
        _, fields = fields_of(caplog, "app.stopped")
        assert (fields["budget"], fields["left"]) == (None, None)
        lines = [
            r.getMessage() for r in caplog.records if r.getMessage().startswith("web report: ")
        ]
        assert lines[-1].startswith("web report: http ")
        assert len(lines) == 5  # the reason, the header, the rule, two members

    async def test_no_fields_when_info_is_not_enabled(
        self, server_handler: Recorder, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, logger="stopscope")
        graceful = GracefulApp(background_app(), grace=20, budget=30, name="web")
        with anyio.fail_after(HANG_GUARD):
            await lifespan_step(graceful, ["startup", "SIGTERM", "shutdown"], server_handler)
        assert not [r for r in caplog.records if hasattr(r, "stopscope")]


# ------------------------------------------------- examples/stop_budget.py, for real

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "stop_budget.py"


def example(*options: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(EXAMPLE.parent.parent / "src")}
    return subprocess.Popen(
        [sys.executable, str(EXAMPLE), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM")
def test_the_example_logs_its_stop_as_json_against_the_budget() -> None:
    proc = example(
        "--port", "0", "--budget", "6", "--grace", "4", "--reserve", "1", "--drain-delay", "0.2"
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line
        proc.send_signal(TERM)
        _, err = proc.communicate(timeout=HANG_GUARD)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    lines = [json.loads(text) for text in err.splitlines()]
    (service,) = [x for x in lines if x.get("stopscope", {}).get("event") == "service.stopped"]
    fields = service["stopscope"]
    assert (fields["budget"], fields["reserve"], fields["grace"]) == (6.0, 1.0, 4.0)
    assert list(fields["phases"]) == ["drain delay", "HTTP drain"]
    assert service["message"].startswith("main() returned ")
    assert "; budget 6 s: drain delay " in service["message"]
    (scope,) = [x for x in lines if x.get("stopscope", {}).get("event") == "scope.stopped"]
    assert scope["stopscope"]["tasks"][0]["kind"] == "server"


def test_the_example_refuses_a_grace_that_does_not_fit() -> None:
    proc = example("--grace", "28", "--budget", "30")
    out, err = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == 1
    assert out == ""
    assert err.strip() == (
        "stop_budget.py: run(): the stop does not fit the orchestrator's budget: grace 28 s "
        "+ reserve 5 s = 33 s > budget 30 s; shorten `grace` by 3 s (to 25 s), or "
        "`reserve`, or raise the budget (terminationGracePeriodSeconds, TimeoutStopSec) "
        "to 33 s"
    )
