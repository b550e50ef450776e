"""Review of the signals during run()'s telemetry flush: each test fails on the code
before its fix."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import stopscope
from stopscope import StopSignal, TaskScope

pytestmark = [
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
    # each test checks the SIGINT handler run() puts back: start from Python's own
    pytest.mark.usefixtures("python_sigint"),
]


#: the longest any wait of these tests may take (never reached when they pass)
HANG_GUARD = 20.0


class _Provider:
    """An SDK tracer provider whose force_flush() hangs until released."""

    def __init__(self, *, hang: bool) -> None:
        from opentelemetry.sdk.trace import TracerProvider

        self.provider = TracerProvider()
        self.release = threading.Event()
        if not hang:
            self.release.set()

    def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
        return self.provider.get_tracer(*args, **kwargs)

    def force_flush(self, timeout_millis: float = 30000) -> bool:
        return self.release.wait(HANG_GUARD)


@pytest.fixture
def otel() -> Iterator[None]:
    pytest.importorskip("opentelemetry.sdk")
    yield
    import stopscope.otel

    stopscope.otel.uninstrument()


async def _second_sigint_as_main_returns(sig: StopSignal) -> str:
    """A scope stops (a stop for the flush to export) on a first Ctrl-C; a second one
    comes as main returns: the trap catches it, and its block ends before the loop
    acts on it."""
    async with TaskScope(grace=HANG_GUARD, signal=sig) as scope:
        scope.start_soon(StopSignal.wait, scope.signal)
        signal.raise_signal(signal.SIGINT)
        await sig.wait()
    signal.raise_signal(signal.SIGINT)  # caught; no await after it
    return "returned"


def test_a_second_signal_as_main_returns_cuts_the_flush(
    anyio_backend: tuple[str, dict[str, Any]], otel: None, caplog: pytest.LogCaptureFixture
) -> None:
    """The signal the trap caught but had not acted on is raised again as its block
    ends: it must keep its place in the escalation (a second signal: the flush is cut
    short, status 130), not meet Python's handler (a KeyboardInterrupt once the flush
    had waited its whole reserve)."""
    import stopscope.otel

    backend, options = anyio_backend
    provider = _Provider(hang=True)
    stopscope.otel.instrument(tracer_provider=provider, flush_reserve=HANG_GUARD)
    caplog.set_level(logging.INFO, logger="stopscope")
    try:
        with pytest.raises(SystemExit) as exc_info:
            stopscope.run(_second_sigint_as_main_returns, backend=backend, backend_options=options)
    finally:
        provider.release.set()
    assert exc_info.value.code == 128 + signal.SIGINT
    assert any(
        "SIGINT (second signal) during the telemetry flush: cut short" in r.getMessage()
        for r in caplog.records
    )
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_a_second_signal_as_main_returns_without_telemetry(
    anyio_backend: tuple[str, dict[str, Any]],
) -> None:
    """Without a flush there is nothing left to cut: main returned, run() returns."""
    backend, options = anyio_backend
    result = stopscope.run(_second_sigint_as_main_returns, backend=backend, backend_options=options)
    assert result == "returned"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


async def _first_sigint(sig: StopSignal) -> str:
    async with TaskScope(grace=HANG_GUARD, signal=sig) as scope:
        scope.start_soon(StopSignal.wait, scope.signal)
        signal.raise_signal(signal.SIGINT)
        await sig.wait()
    return "returned"


#: the handler run() leaves in place after main, by name (and the flush's own before)
_AFTER_MAIN = ("_AfterMain._on_signal", "_flush_telemetry.<locals>.on_signal")


def test_a_signal_once_the_flush_is_over_cuts_nothing(
    anyio_backend: tuple[str, dict[str, Any]],
    otel: None,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A second Ctrl-C that comes once the flush has ended, as the handlers are put
    back: the flush was whole, so run() returns (it said "cut short" and exited 130)."""
    import stopscope.otel

    backend, options = anyio_backend
    stopscope.otel.instrument(tracer_provider=_Provider(hang=False), flush_reserve=HANG_GUARD)
    caplog.set_level(logging.INFO, logger="stopscope")
    real = signal.signal
    pressed: list[bool] = []

    def putting_back(signum: int, handler: Any) -> Any:
        current = signal.getsignal(signum)
        # run()'s handler after main (the flush's own, before the fix) is put back
        after_main = getattr(current, "__qualname__", "") in _AFTER_MAIN
        if signum == signal.SIGINT and after_main and not pressed:
            pressed.append(True)
            signal.raise_signal(signal.SIGINT)  # runs the handler still installed
        return real(signum, handler)

    monkeypatch.setattr(signal, "signal", putting_back)
    result = stopscope.run(_first_sigint, backend=backend, backend_options=options)
    monkeypatch.undo()
    assert pressed
    assert result == "returned"
    assert not any("cut short" in r.getMessage() for r in caplog.records)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_handlers_left_alone_when_the_loop_never_ran() -> None:
    """run()'s handler is put in place only by the trap: when the event loop cannot
    even start, run() leaves the handlers it found as they are."""
    mine = signal.getsignal(signal.SIGTERM)

    def no_loop() -> Any:
        raise RuntimeError("no loop today")

    with pytest.raises(RuntimeError, match="no loop today"):
        stopscope.run(_first_sigint, backend_options={"loop_factory": no_loop})
    assert signal.getsignal(signal.SIGTERM) is mine
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
