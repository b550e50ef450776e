"""Trust defects found in review and left alone until now: each test fails on the code
before its fix."""

from __future__ import annotations

import logging
import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.lowlevel
import pytest

import stopscope
from stopscope import StopSignal, TaskScope
from stopscope.asgi import GracefulApp
from stopscope.servers import start_hypercorn, start_uvicorn
from stopscope.servers._readiness import check_sse_retry
from stopscope.testing import explore, probe

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")

#: an int too large for a float: float(HUGE) raises OverflowError
HUGE = 10**400


async def _app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("never called")


# ------------------------------------------------- an int too large for a float


class TestHugeInt:
    """An int too large for a float means what ``math.inf`` means for that parameter:
    "no limit" where infinity is allowed, a ``ValueError`` naming it where not; never
    an ``OverflowError`` from the check."""

    @pytest.mark.parametrize(
        "make",
        [
            pytest.param(lambda g: TaskScope(grace=g)._grace, id="TaskScope"),
            pytest.param(lambda g: GracefulApp(_app, grace=g)._grace, id="GracefulApp"),
        ],
    )
    def test_grace_is_forever(self, make: Callable[[object], object]) -> None:
        assert make(HUGE) is None
        assert make(HUGE) == make(math.inf)

    @pytest.mark.parametrize(
        "make",
        [
            pytest.param(lambda g: TaskScope(grace=g), id="TaskScope"),
            pytest.param(lambda g: GracefulApp(_app, grace=g), id="GracefulApp"),
            pytest.param(lambda g: stopscope.stop_on_signals(StopSignal(), grace=g), id="signals"),
            pytest.param(lambda g: stopscope.run(_main, grace=g, signals=()), id="run"),
        ],
    )
    def test_negative_grace_names_it(self, make: Callable[[object], object]) -> None:
        with pytest.raises(ValueError, match="`grace`"):
            make(-HUGE)

    def test_stop_on_signals_grace_is_forever(self) -> None:
        trap = stopscope.stop_on_signals(StopSignal(), grace=HUGE)
        assert trap._grace is None

    def test_run_grace_is_forever(self) -> None:
        assert stopscope.run(_main, grace=HUGE, signals=()) == "done"

    @pytest.mark.parametrize(
        "call",
        [
            pytest.param(lambda v: GracefulApp(_app, drain_delay=v), id="GracefulApp"),
            pytest.param(lambda v: check_sse_retry(v), id="sse_retry"),
        ],
    )
    @pytest.mark.parametrize("sign", [1, -1], ids=["huge", "-huge"])
    def test_finite_parameters_refuse_it(self, call: Callable[[object], object], sign: int) -> None:
        with pytest.raises(ValueError, match=r"`(drain_delay|sse_retry)` must be a finite"):
            call(sign * HUGE)

    @pytest.mark.parametrize("sign", [1, -1], ids=["huge", "-huge"])
    def test_flush_reserve_refuses_it(self, sign: int) -> None:
        pytest.importorskip("opentelemetry")
        import stopscope.otel

        with pytest.raises(ValueError, match="`flush_reserve`"):
            stopscope.otel.instrument(flush_reserve=sign * HUGE)
        assert not stopscope.otel.is_instrumented()
        with pytest.raises(ValueError, match="`timeout`"):
            stopscope.otel.flush(sign * HUGE)


async def _main(signal: StopSignal) -> str:
    await anyio.lowlevel.checkpoint()
    return "done"


@pytest.mark.anyio
class TestHugeIntOnTheLoop:
    async def test_member_grace_is_the_scopes(self) -> None:
        async def worker(signal: StopSignal) -> None:
            await signal.wait()

        with anyio.fail_after(10):
            async with TaskScope(grace=1) as scope:
                scope.start_soon(worker, scope.signal, grace=HUGE, name="w")
                await anyio.wait_all_tasks_blocked()
        (record,) = scope.report.tasks
        assert record.outcome is stopscope.Outcome.STOPPED

    async def test_server_drain_delay_refuses_it(self, anyio_backend_name: str) -> None:
        # uvicorn runs on asyncio only
        starts = [start_hypercorn] + ([start_uvicorn] if anyio_backend_name == "asyncio" else [])
        async with TaskScope(grace=1) as scope:
            for start in starts:
                for value in (HUGE, -HUGE):
                    with pytest.raises(ValueError, match="`drain_delay`"):
                        await start(scope, _app, host="127.0.0.1", port=0, drain_delay=value)

    @pytest.mark.parametrize("name", ["within", "grace", "idle"])
    async def test_testing_kit_times(self, name: str) -> None:
        async def worker(signal: StopSignal) -> None:
            await signal.wait()

        times: dict[str, Any] = {name: HUGE}
        negative: dict[str, Any] = {name: -HUGE}
        with anyio.fail_after(10):
            (await probe(worker, **times)).assert_ok()
            with pytest.raises(ValueError, match=f"`{name}`"):
                await probe(worker, **negative)
            if name != "idle":
                (await explore(worker, **{"within": 1, **times})).assert_ok()


# ------------------------------------------------ stopscope.otel: one reserve in all


class _CountingProvider:
    """An SDK tracer provider whose force_flush() is counted, and can be held stuck
    (the SDK's batch processor ignores its timeout in the same way)."""

    def __init__(self) -> None:
        from opentelemetry.sdk.trace import TracerProvider

        self.provider = TracerProvider()
        self.flushes = 0
        self.release = threading.Event()
        self.release.set()

    def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
        return self.provider.get_tracer(*args, **kwargs)

    def force_flush(self, timeout_millis: float = 30000) -> bool:
        self.flushes += 1
        return self.release.wait(HANG_GUARD)


#: the longest any wait of these tests may take (never reached when they pass)
HANG_GUARD = 20.0


async def _stop_one(signal: StopSignal) -> None:
    async with TaskScope(grace=30, signal=signal) as scope:
        scope.start_soon(StopSignal.wait, scope.signal)
        scope.stop("done")


class TestOtelReserve:
    """run()'s flush, the atexit hook and uninstrument() share one flush reserve."""

    @pytest.fixture(autouse=True)
    def _otel(self) -> Iterator[None]:
        pytest.importorskip("opentelemetry.sdk")
        yield
        import stopscope.otel

        stopscope.otel.uninstrument()

    def test_uninstrument_after_run_does_not_flush_again(
        self, anyio_backend: tuple[str, dict[str, Any]]
    ) -> None:
        import stopscope.otel

        backend, options = anyio_backend
        provider = _CountingProvider()
        stopscope.otel.instrument(tracer_provider=provider)
        stopscope.run(_stop_one, backend=backend, backend_options=options, signals=())
        assert provider.flushes == 1
        stopscope.otel.uninstrument()  # nothing recorded since run()'s flush
        assert provider.flushes == 1
        stopscope.otel.uninstrument()  # off already: nothing at all
        assert provider.flushes == 1

    def test_uninstrument_flushes_a_stop_recorded_since(
        self, anyio_backend: tuple[str, dict[str, Any]]
    ) -> None:
        import stopscope.otel

        backend, options = anyio_backend
        provider = _CountingProvider()
        stopscope.otel.instrument(tracer_provider=provider)
        stopscope.run(_stop_one, backend=backend, backend_options=options, signals=())
        anyio.run(_stop_one, StopSignal(), backend=backend, backend_options=options)
        stopscope.otel.uninstrument()
        assert provider.flushes == 2

    def test_a_stuck_flush_is_not_waited_for_twice(self) -> None:
        import stopscope.otel

        provider = _CountingProvider()
        provider.release.clear()  # its force_flush() hangs, as with a collector that never answers
        stopscope.otel.instrument(tracer_provider=provider, flush_reserve=0.05)
        listener = stopscope.otel._listener
        assert listener is not None
        joins: list[float | None] = []
        real_join = listener._thread.join

        def join(timeout: float | None = None) -> None:
            joins.append(timeout)
            real_join(timeout)

        listener._thread.join = join  # type: ignore[method-assign]
        try:
            stopscope.otel.uninstrument()  # its flush runs out of the reserve
            assert provider.flushes == 1
            # the worker is still in that flush: the close does not wait a second reserve
            assert not [t for t in joins if t is None or t > 0]
        finally:
            provider.release.set()
        real_join(HANG_GUARD)
        assert not listener._thread.is_alive()

    def test_the_budget_counts_the_current_reserve_once(self) -> None:
        import stopscope.otel

        stopscope.otel.instrument(flush_reserve=3)
        with pytest.raises(RuntimeError, match="already instrumented"):
            stopscope.otel.instrument(flush_reserve=3)
        with pytest.raises(ValueError, match="flushing telemetry"):
            stopscope.run(_main, grace=1, budget=10, reserve=2, signals=())
        stopscope.otel.uninstrument()
        stopscope.otel.instrument(flush_reserve=2)
        assert stopscope.otel.flush_reserve() == 2
        assert stopscope.run(_main, grace=1, budget=10, reserve=2, signals=()) == "done"


# ------------------------------------------- a signal during the telemetry flush at exit

FLUSH_APP = Path(__file__).resolve().parent / "apps" / "otel_flush_app.py"


def _backend_id(anyio_backend: tuple[str, dict[str, Any]]) -> str:
    name, options = anyio_backend
    return "asyncio+uvloop" if options.get("use_uvloop") else name


class _Service:
    """tests/apps/otel_flush_app.py as a child, its stdout and stderr read by line."""

    def __init__(self, backend: str, *options: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(FLUSH_APP), "--backend", backend, *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: queue.Queue[str | None] = queue.Queue()
        self.err: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: IO[str], lines: queue.Queue[str | None]) -> None:
        for line in stream:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    def expect(self, lines: queue.Queue[str | None], text: str) -> None:
        while True:
            line = lines.get(timeout=HANG_GUARD)
            if line is None:
                pytest.fail(f"the service ended before saying {text!r}: {self.finish()}")
            if lines is self.err:
                self.stderr.append(line)
            if text in line:
                return

    def kill(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)  # the child we started, by its PID

    def finish(self) -> tuple[int, str]:
        try:
            code = self.proc.wait(timeout=HANG_GUARD)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for reader in self._readers:
                reader.join(HANG_GUARD)
            for stream in (self.proc.stdout, self.proc.stderr):
                assert stream is not None
                stream.close()
        while (line := self.err.get_nowait()) is not None:
            self.stderr.append(line)
        return code, "\n".join(self.stderr)


class TestSignalDuringTheFlush:
    """The telemetry flush at exit runs after the trap's handlers are gone; a signal
    then keeps its place in the escalation: "stop" lets the flush go on, "cancel" (a
    second signal) cuts it short with the exit status of a hard stop."""

    @pytest.fixture(autouse=True)
    def _sdk(self) -> None:
        pytest.importorskip("opentelemetry.sdk")

    def test_a_second_signal_cuts_the_flush_short(
        self, anyio_backend: tuple[str, dict[str, Any]]
    ) -> None:
        service = _Service(_backend_id(anyio_backend))
        service.expect(service.out, "ready")
        service.kill(signal.SIGTERM)  # main returns: the flush begins, and hangs
        service.expect(service.out, "flushing")
        service.kill(signal.SIGINT)  # Ctrl-C: the second signal
        code, stderr = service.finish()
        assert "Traceback" not in stderr
        assert "KeyboardInterrupt" not in stderr
        assert "SIGINT (second signal) during the telemetry flush: cut short" in stderr
        assert "main() returned" in stderr
        assert code == 128 + signal.SIGTERM, stderr  # the first signal's, as after a hard stop

    def test_a_first_signal_lets_the_flush_go_on(
        self, anyio_backend: tuple[str, dict[str, Any]]
    ) -> None:
        service = _Service(_backend_id(anyio_backend), "--no-stop-first")
        service.expect(service.out, "ready")  # main returns by itself: the flush begins
        service.expect(service.out, "flushing")
        service.kill(signal.SIGTERM)
        service.expect(service.err, "SIGTERM (first signal) during the telemetry flush: it goes on")
        assert service.proc.poll() is None
        service.kill(signal.SIGINT)
        code, stderr = service.finish()
        assert "Traceback" not in stderr
        assert "SIGINT (second signal) during the telemetry flush: cut short" in stderr
        assert code == 128 + signal.SIGTERM, stderr


# ------------------------------------------ a hard stop during a server's drain delay


def _fields(caplog: pytest.LogCaptureFixture, event: str) -> tuple[str, Any]:
    (record,) = [
        r
        for r in caplog.records
        if r.name == "stopscope" and getattr(r, "stopscope", {}).get("event") == event
    ]
    return record.getMessage(), record.stopscope  # type: ignore[attr-defined]


class TestHardStopDuringTheDrainDelay:
    """A second signal during a server member's drain delay: the budget line and the
    record say the drain delay was cut short, and how long it ran."""

    @pytest.mark.parametrize(
        ("anyio_backend", "server"),
        [
            pytest.param(("asyncio", {}), "uvicorn", id="asyncio-uvicorn"),
            pytest.param(("asyncio", {"use_uvloop": True}), "uvicorn", id="uvloop-uvicorn"),
            pytest.param(("asyncio", {}), "hypercorn", id="asyncio-hypercorn"),
            pytest.param(("trio", {}), "hypercorn", id="trio-hypercorn"),  # no uvicorn on trio
        ],
    )
    def test_under_run(
        self,
        anyio_backend: tuple[str, dict[str, Any]],
        server: str,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        backend, options = anyio_backend
        start = start_uvicorn if server == "uvicorn" else start_hypercorn

        async def main(stop: StopSignal) -> None:
            async with TaskScope(grace=40, signal=stop) as scope:
                await start(scope, _served, host="127.0.0.1", port=0, drain_delay=30)
                signal.raise_signal(signal.SIGTERM)
                await stop.wait()
                await anyio.wait_all_tasks_blocked()  # the member sleeps its drain delay
                signal.raise_signal(signal.SIGTERM)  # the second: a hard stop
                await anyio.sleep_forever()

        caplog.set_level(logging.INFO, logger="stopscope")
        with pytest.raises(SystemExit) as exc_info:
            stopscope.run(main, backend=backend, backend_options=options, grace=50, budget=60)
        assert exc_info.value.code == 128 + signal.SIGTERM
        message, fields = _fields(caplog, "service.stopped")
        assert list(fields["phases"]) == ["drain delay"]
        assert fields["phases_cut_short"] == ["drain delay"]
        assert fields["phases"]["drain delay"] <= fields["used"]
        assert "; budget 60 s: drain delay " in message
        assert " s (cut short);" in message
        assert any("the drain delay was cut short after" in r.getMessage() for r in caplog.records)

    LOCAL = ("--host", "127.0.0.1", "--port", "0")

    def test_graceful_app_when_the_server_shuts_down(self) -> None:
        # SIGTERM: GracefulApp's drain delay; SIGINT: uvicorn's own shutdown, at once
        apps = Path(__file__).resolve().parent / "apps"
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "graceful_delay_app:app", *self.LOCAL],
            cwd=apps,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: list[str] = []
        try:
            assert proc.stderr is not None
            for wanted, then in (
                ("Uvicorn running on", signal.SIGTERM),
                ("still serving for the drain delay", signal.SIGINT),
            ):
                while wanted not in (line := proc.stderr.readline()):
                    assert line, f"uvicorn ended before {wanted!r}: {lines}"
                    lines.append(line)
                os.kill(proc.pid, then)  # the child we started, by its PID
            _, rest = proc.communicate(timeout=HANG_GUARD)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        text = "".join(lines) + rest
        (budget_line,) = [line for line in text.splitlines() if "report: budget 60 s:" in line]
        assert "drain delay " in budget_line, budget_line
        assert " s (cut short)" in budget_line, budget_line
        assert "the drain delay was cut short after" in text


async def _served(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})


# ---------------------------------------- the summary counts from the signal's arrival


class TestSummaryFromTheSignalsArrival:
    def test_a_loop_busy_when_the_signal_arrives(
        self, anyio_backend: tuple[str, dict[str, Any]], caplog: pytest.LogCaptureFixture
    ) -> None:
        """The budget runs from the signal's arrival (the orchestrator's clock), so the
        summary's ``took`` and ``used`` do too, even if the loop acted on it later."""
        backend, options = anyio_backend
        busy: list[float] = []

        async def main(stop: StopSignal) -> None:
            signal.raise_signal(signal.SIGTERM)  # the raw handler has run on return
            since = time.monotonic()
            time.sleep(0.2)  # noqa: ASYNC251 - the loop must be busy when the signal arrives
            busy.append(time.monotonic() - since)
            await stop.wait()

        caplog.set_level(logging.INFO, logger="stopscope")
        stopscope.run(main, backend=backend, backend_options=options, budget=30)
        _, fields = _fields(caplog, "service.stopped")
        assert fields["took"] >= busy[0]
        assert fields["used"] >= busy[0]


@pytest.mark.usefixtures("python_sigint")  # it checks the SIGINT handler put back
class TestSignalDuringTheFlushInProcess:
    """The same as :class:`TestSignalDuringTheFlush`, in this process: a thread sends
    the signals to this process once the flush hangs."""

    @pytest.fixture(autouse=True)
    def _otel(self) -> Iterator[None]:
        pytest.importorskip("opentelemetry.sdk")
        yield
        import stopscope.otel

        stopscope.otel.uninstrument()

    def _hanging(self) -> tuple[_CountingProvider, threading.Event]:
        import stopscope.otel

        provider = _CountingProvider()
        provider.release.clear()
        flushing = threading.Event()
        real = provider.force_flush

        def force_flush(timeout_millis: float = 30000) -> bool:
            flushing.set()
            return real(timeout_millis)

        provider.force_flush = force_flush  # type: ignore[method-assign]
        stopscope.otel.instrument(tracer_provider=provider, flush_reserve=HANG_GUARD)
        return provider, flushing

    def test_first_signal_goes_on_and_second_cuts(
        self, anyio_backend: tuple[str, dict[str, Any]], caplog: pytest.LogCaptureFixture
    ) -> None:
        backend, options = anyio_backend
        provider, flushing = self._hanging()
        caplog.set_level(logging.INFO, logger="stopscope")

        def says(text: str) -> bool:
            return any(text in r.getMessage() for r in list(caplog.records))

        def press() -> None:
            assert flushing.wait(HANG_GUARD)
            os.kill(os.getpid(), signal.SIGTERM)
            deadline = time.monotonic() + HANG_GUARD
            while not says("during the telemetry flush: it goes on"):
                assert time.monotonic() < deadline
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGINT)

        presser = threading.Thread(target=press)
        presser.start()
        try:
            with pytest.raises(SystemExit) as exc_info:
                stopscope.run(_stop_one, backend=backend, backend_options=options)
        finally:
            presser.join(HANG_GUARD)
            provider.release.set()
        assert exc_info.value.code == 128 + signal.SIGTERM  # the first one's, as ever
        assert says("SIGTERM (first signal) during the telemetry flush: it goes on")
        assert says("SIGINT (second signal) during the telemetry flush: cut short")
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


class TestDrainDelayCutShortParts:
    def test_a_phase_cut_twice_is_named_once(self) -> None:
        from stopscope._report import Timeline

        timeline = Timeline(30.0, 5.0)
        timeline.start(0.0)
        timeline.add_cut("drain delay", 0.25)  # two servers, cut side by side
        timeline.add_cut("drain delay", 0.5)
        assert timeline.phases == {"drain delay": 0.5}
        assert timeline.to_dict(1.0)["phases_cut_short"] == ["drain delay"]
        assert timeline.text(1.0) == (
            "budget 30 s: drain delay 0.50 s (cut short); 1 s used, 29 s left"
        )

    @pytest.mark.anyio
    async def test_outside_run_it_is_logged(self, caplog: pytest.LogCaptureFixture) -> None:
        # no run(), so no timeline to record it in: the warning alone says it
        with anyio.fail_after(HANG_GUARD):
            with anyio.CancelScope() as outer:
                async with TaskScope(grace=40) as scope:
                    await start_hypercorn(scope, _served, host="127.0.0.1", port=0, drain_delay=30)
                    scope.stop("deploy")
                    await anyio.wait_all_tasks_blocked()  # the member sleeps its drain delay
                    outer.cancel()  # a hard stop
                    await anyio.sleep_forever()
        assert any("the drain delay was cut short after" in r.getMessage() for r in caplog.records)
        (record,) = scope.report.tasks
        assert (record.outcome, record.phase) == (
            stopscope.Outcome.CANCELLED,
            "cancelled-from-outside",
        )
