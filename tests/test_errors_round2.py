"""Issue 17, item 8: bad input gets an error that says what to do, and nothing is left
behind (no "never awaited" coroutine).  The async cases run on every backend."""

from __future__ import annotations

import gc
import inspect
import logging
import signal
import sys
from typing import Any

import anyio
import pytest

import stopscope
from stopscope import StopSignal, TaskScope, stop_on_signals
from stopscope.testing import virtual_time


class TestDurations:
    @pytest.mark.parametrize("period", [0, -1, -0.5])
    def test_every_says_positive_for_zero_and_negatives(self, period: float) -> None:
        with pytest.raises(ValueError, match=r"`period` must be a positive number of seconds"):
            StopSignal().every(period)


class TestRun:
    def test_main_that_is_not_async_is_named(self) -> None:
        with pytest.raises(TypeError, match=r"`main` must be an async function .* returned 42"):
            stopscope.run(lambda sig: 42, signals=())  # type: ignore[arg-type, return-value]

    def test_main_without_a_signal_parameter_is_named(self) -> None:
        async def main_without_a_signal() -> None:
            pass

        with pytest.raises(TypeError, match=r"called as main\(signal, \*args\) .*StopSignal"):
            stopscope.run(main_without_a_signal, signals=())  # type: ignore[arg-type]

    def test_extra_arguments_that_main_cannot_take(self) -> None:
        async def main(signal: StopSignal) -> None:
            pass

        with pytest.raises(TypeError, match=r"the 1 extra argument\(s\) given to run\(\)"):
            stopscope.run(main, "extra", signals=())  # type: ignore[arg-type]

    def test_main_that_is_not_callable(self) -> None:
        with pytest.raises(TypeError, match=r"`main` must be an async function"):
            stopscope.run(42, signals=())  # type: ignore[arg-type]

    @pytest.mark.skipif(sys.platform == "win32", reason="uvloop is POSIX only")
    def test_uvloop_is_a_backend_name(self) -> None:
        async def main(signal: StopSignal) -> str:
            import asyncio

            return type(asyncio.get_running_loop()).__module__

        assert stopscope.run(main, backend="uvloop", signals=()).startswith("uvloop")

    def test_unknown_backend_lists_the_names(self) -> None:
        async def main(signal: StopSignal) -> None:
            pass

        with pytest.raises(ValueError, match=r"'asyncio', 'trio', 'uvloop', got 'uvlooop'"):
            stopscope.run(main, backend="uvlooop", signals=())

    def test_a_backend_not_installed_says_what_to_install(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        async def main(signal: StopSignal) -> None:
            pass

        monkeypatch.setitem(sys.modules, "trio", None)  # find_spec: not installed
        with pytest.raises(RuntimeError, match=r"pip install 'stopscope\[trio\]'"):
            stopscope.run(main, backend="trio", signals=())


@pytest.mark.anyio
class TestStopOnSignals:
    async def test_signal_names_are_accepted(self) -> None:
        sig = StopSignal()
        async with stop_on_signals(sig, "SIGTERM", "int") as trap:
            assert trap is not None
        assert not sig.is_set()

    async def test_an_unknown_name_points_to_the_signal_module(self) -> None:
        with pytest.raises(ValueError, match=r"'SIGFOO' is not a signal name.*signal\.SIGTERM"):
            async with stop_on_signals(StopSignal(), "SIGFOO"):
                pass

    @pytest.mark.parametrize("value", [True, 1.5, None])
    async def test_a_value_that_is_no_signal(self, value: Any) -> None:
        with pytest.raises(TypeError, match=r"is not a signal; pass one such as signal\.SIGTERM"):
            async with stop_on_signals(StopSignal(), value):
                pass

    async def test_signals_module_values_still_work(self) -> None:
        async with stop_on_signals(StopSignal(), signal.SIGINT):
            pass


@pytest.mark.anyio
class TestMembers:
    async def test_a_coroutine_object_is_refused_and_closed(self) -> None:
        async def job() -> None:
            pass

        coro = job()
        async with TaskScope() as scope:
            with pytest.raises(TypeError, match=r"not a coroutine object: pass `fn, arg`"):
                scope.start_soon(coro)  # type: ignore[arg-type]
        assert inspect.getcoroutinestate(coro) == "CORO_CLOSED"  # no "never awaited" warning
        del coro
        gc.collect()

    async def test_name_must_be_a_string(self) -> None:
        async with TaskScope() as scope:
            with pytest.raises(TypeError, match=r"`name` must be a string or None, got 42"):
                scope.start_soon(anyio.sleep, 0, name=42)
            with pytest.raises(TypeError, match=r"`name` must be a string or None"):
                await scope.start(anyio.sleep, 0, name=42)

    async def test_by_name_refuses_an_ambiguous_name(self) -> None:
        async with TaskScope() as scope:
            scope.start_soon(scope.signal.wait, name="worker")
            scope.start_soon(scope.signal.wait, name="worker")
        with pytest.raises(LookupError, match=r"2 members are named 'worker'"):
            scope.report.by_name("worker")
        with pytest.raises(KeyError):
            scope.report.by_name("nobody")

    async def test_a_member_grace_above_the_scopes_is_said(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        with caplog.at_level(logging.WARNING, logger="stopscope"):
            async with TaskScope(grace=1) as scope:
                scope.start_soon(scope.signal.wait, name="greedy", grace=30)
        assert "its grace (30 s) is longer than the scope's (1 s)" in caplog.text
        assert scope.report.by_name("greedy").outcome.name == "STOPPED"


def test_virtual_time_without_looptime_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "looptime", None)  # find_spec: not installed
    with pytest.raises(RuntimeError, match=r"needs looptime.*pip install 'stopscope\[testing\]'"):
        virtual_time("asyncio")
