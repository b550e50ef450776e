"""Behaviour the conformance suites did not reach, found by branch coverage.

Each test goes through the public API and checks what a user sees: argument errors
that name the parameter, the timer service after many cancelled waits, callbacks that
raise ``BaseException``, the stderr fallback of ``run()`` when logging goes nowhere,
and the version of a package whose metadata is missing.  Async tests run on asyncio
(debug), asyncio+uvloop and trio; the in-process ``run()`` tests take the same matrix.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from types import FrameType
from typing import Any

import anyio
import pytest

import stopscope
from stopscope import CallbackHandle, Outcome, StopSignal, TaskScope, stop_on_signals

#: Hang guard only: a correct implementation never comes near it.
GUARD = 10.0

posix_only = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs SIGUSR1 (POSIX)")


# ------------------------------------------------------------------ StopSignal


class TestSignalArguments:
    """Bad input to StopSignal's methods: a clear error, raised before any waiting."""

    pytestmark = pytest.mark.anyio

    @pytest.mark.parametrize("seconds", [None, object(), [1.0]])
    async def test_sleep_needs_a_number(self, seconds: Any) -> None:
        with pytest.raises(TypeError, match="`seconds` must be a number of seconds"):
            await StopSignal().sleep(seconds)

    @pytest.mark.parametrize("period", [None, object()])
    async def test_every_needs_a_number(self, period: Any) -> None:
        with pytest.raises(TypeError, match="`period` must be a number of seconds"):
            StopSignal().every(period)

    async def test_every_needs_a_positive_period(self) -> None:
        with pytest.raises(ValueError, match="`period` must be a positive"):
            StopSignal().every(0)

    async def test_on_set_needs_a_callable(self) -> None:
        with pytest.raises(TypeError, match="`callback` must be callable"):
            StopSignal().on_set("not callable")  # type: ignore[arg-type]


class TestSignalOutsideALoop:
    def test_wait_driven_without_an_event_loop_says_what_to_do(self) -> None:
        coro = StopSignal().wait()
        with pytest.raises(RuntimeError, match="awaited from a task running on asyncio or trio"):
            coro.send(None)

    def test_reprs_say_whether_set_and_why(self) -> None:
        sig = StopSignal()
        assert repr(sig) == "<StopSignal not set>"

        def callback(reason: object) -> None:
            pass

        handle = sig.on_set(callback)
        assert handle.callback is callback
        assert repr(handle) == f"<CallbackHandle {callback!r} on <StopSignal not set>>"
        sig.set("deploy")
        assert repr(sig) == "<StopSignal set reason='deploy'>"


class TestCallbacksRaisingBaseException:
    """KeyboardInterrupt/SystemExit from a callback: logged, the rest still run, then raised."""

    def test_others_still_run_and_the_first_is_raised_after_them(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        sig = StopSignal()
        ran: list[str] = []

        def interrupt(reason: object) -> None:
            ran.append("interrupt")
            raise KeyboardInterrupt

        def exit_(reason: object) -> None:
            ran.append("exit")
            raise SystemExit(3)

        sig.on_set(interrupt)
        sig.on_set(exit_)
        sig.on_set(lambda reason: ran.append(f"last {reason}"))
        with caplog.at_level(logging.ERROR, logger="stopscope"), pytest.raises(KeyboardInterrupt):
            sig.set("why")
        assert ran == ["interrupt", "exit", "last why"]
        assert sig.is_set()
        assert sig.reason == "why"
        logged = [r for r in caplog.records if "other callbacks still run" in r.getMessage()]
        assert len(logged) == 2
        assert all(r.exc_info is not None for r in logged)

    def test_on_set_of_a_signal_already_set_raises_it_at_once(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        sig = StopSignal()
        sig.set()

        def interrupt(reason: object) -> None:
            raise KeyboardInterrupt

        with caplog.at_level(logging.ERROR, logger="stopscope"), pytest.raises(KeyboardInterrupt):
            sig.on_set(interrupt)
        assert any("other callbacks still run" in r.getMessage() for r in caplog.records)


class TestTrees:
    def test_setting_a_parent_keeps_the_reason_of_a_child_set_before(self) -> None:
        root = StopSignal()
        child = root.child()
        grandchild = child.child()
        cousin = root.child()
        assert child.set("child first")
        assert root.set("root")
        assert (child.reason, grandchild.reason, cousin.reason) == (
            "child first",
            "child first",
            "root",
        )

    def test_callback_on_a_child_of_a_set_parent_runs_at_once(self) -> None:
        root = StopSignal()
        root.set("done")
        got: list[object] = []
        handle = root.child().on_set(got.append)
        assert isinstance(handle, CallbackHandle)
        assert got == ["done"]
        assert handle.remove() is False


@pytest.mark.anyio
class TestTimerServiceAfterManyCancelledWaits:
    async def test_sleeps_still_time_out_after_hundreds_of_early_wakes(self) -> None:
        """Waits that end early leave stale timer entries; a later sleep still works."""
        sig = StopSignal()
        n = 300  # the timer heap compacts past 256 stale entries
        woke: list[bool] = []

        async def sleeper() -> None:
            woke.append(await sig.sleep(1000))

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                for _ in range(n):
                    tg.start_soon(sleeper)
                await anyio.wait_all_tasks_blocked()
                sig.set()
            assert woke == [True] * n
            # A fresh signal's short sleep runs its full course through the same service
            other = StopSignal()
            assert await other.sleep(0.001) is False
            assert await other.sleep(0.001) is False
            ticks = [tick async for tick in _take(other.every(0.001), 3)]
            assert ticks == [0, 1, 2]
            # ... and a sleep on it is still woken by set()
            async with anyio.create_task_group() as tg:
                results: list[bool] = []

                async def one() -> None:
                    results.append(await other.sleep(1000))

                tg.start_soon(one)
                await anyio.wait_all_tasks_blocked()
                other.set()
            assert results == [True]


async def _take(ticks: Any, n: int) -> Any:
    async for tick in ticks:
        yield tick
        n -= 1
        if n == 0:
            return


# ------------------------------------------------------------------ TaskScope


class TestScopeArguments:
    @pytest.mark.parametrize("grace", ["5", b"5", [5], True])
    def test_grace_of_a_wrong_type(self, grace: Any) -> None:
        with pytest.raises(TypeError, match="`grace` must be a number of seconds or None"):
            TaskScope(grace=grace)

    @pytest.mark.parametrize("parent", [object(), "stop"])
    def test_signal_of_a_wrong_type(self, parent: Any) -> None:
        with pytest.raises(TypeError, match="`signal` must be a StopSignal or None"):
            TaskScope(signal=parent)


async def _obeys(sig: StopSignal) -> None:
    await sig.wait()


@pytest.mark.anyio
class TestScopeMembers:
    async def test_start_soon_refuses_what_is_not_callable(self) -> None:
        async with TaskScope() as scope:
            with pytest.raises(TypeError, match=r"start_soon\(\) needs an async function"):
                scope.start_soon(42)  # type: ignore[arg-type]
        assert len(scope.report.tasks) == 0

    async def test_infinite_grace_is_no_grace_limit(self) -> None:
        with anyio.fail_after(GUARD):
            async with TaskScope(grace=float("inf")) as scope:
                scope.start_soon(_obeys, scope.signal, name="w")
        (record,) = scope.report.tasks
        assert record.outcome is Outcome.STOPPED

    async def test_a_partial_member_is_named_after_its_function(self) -> None:
        async def worker(sig: StopSignal, label: str) -> None:
            await sig.wait()

        with anyio.fail_after(GUARD):
            async with TaskScope() as scope:
                scope.start_soon(functools.partial(functools.partial(worker), scope.signal), "x")
        (record,) = scope.report.tasks
        assert record.name.endswith("worker")
        assert record.outcome is Outcome.STOPPED

    async def test_start_soon_with_wrong_arguments_raises_at_once(self) -> None:
        async def worker(sig: StopSignal, label: str) -> None:
            await sig.wait()

        async with TaskScope() as scope:
            with pytest.raises(TypeError, match="label"):
                scope.start_soon(worker, scope.signal)  # type: ignore[arg-type]
        assert len(scope.report.tasks) == 0

    async def test_grace_repr_and_live_report(self) -> None:
        assert TaskScope(grace=2).grace == 2.0
        assert TaskScope(grace=float("inf")).grace is None
        scope = TaskScope(grace=2, name="pool")
        assert "'pool'" in repr(scope)
        assert "grace=2.0" in repr(scope)
        with anyio.fail_after(GUARD):
            async with scope:
                scope.start_soon(_obeys, scope.signal, name="w")
                assert "members=1" in repr(scope)
                live = scope.report  # a snapshot while the scope runs
                assert [r.name for r in live.tasks] == ["w"]
                assert live.reason is None
        assert scope.report.tasks[0].outcome is Outcome.STOPPED
        assert "members=0" in repr(scope)

    async def test_start_needs_the_scope_open(self) -> None:
        scope = TaskScope()
        with pytest.raises(RuntimeError, match="inside `async with scope:`"):
            await scope.start(_obeys, scope.signal)


# ------------------------------------------------------------------ run() and traps


LOG = logging.getLogger("stopscope")


@contextlib.contextmanager
def logging_goes_nowhere() -> Iterator[None]:
    """What an application that configured no logging has: no handler above ``stopscope``.

    pytest's log capture sits on the root logger (and on loggers that do not propagate
    when a test phase starts); cutting propagation mid-test leaves run()'s stderr
    fallback as the only handler.
    """
    LOG.propagate = False
    try:
        yield
    finally:
        LOG.propagate = True


class BrokenStream:
    """A stderr whose reader went away: every write fails."""

    def __init__(self) -> None:
        self.attempts = 0

    def write(self, text: str) -> int:
        self.attempts += 1
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


class TestRunStderrFallback:
    def test_warnings_reach_stderr_when_logging_goes_nowhere(
        self,
        anyio_backend: tuple[str, dict[str, Any]],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        async def main(sig: StopSignal) -> str:
            with logging_goes_nowhere():
                LOG.warning("gap-check %s", "warning")
                LOG.info("gap-check info")  # below the fallback's level
            return "done"

        backend, options = anyio_backend
        assert stopscope.run(main, backend=backend, backend_options=options, signals=()) == "done"
        err = capsys.readouterr().err
        assert err.count("stopscope: WARNING: gap-check warning\n") == 1
        assert "gap-check info" not in err

    def test_no_stderr_at_all_drops_the_warning_quietly(
        self,
        anyio_backend: tuple[str, dict[str, Any]],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        async def main(sig: StopSignal) -> str:
            with logging_goes_nowhere(), monkeypatch.context() as patch:
                patch.setattr(sys, "stderr", None)  # pythonw, or a daemon that closed it
                LOG.warning("nowhere to go")
            return "done"

        backend, options = anyio_backend
        assert stopscope.run(main, backend=backend, backend_options=options, signals=()) == "done"

    def test_a_broken_stderr_does_not_break_the_service(
        self,
        anyio_backend: tuple[str, dict[str, Any]],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        broken = BrokenStream()

        async def main(sig: StopSignal) -> str:
            with logging_goes_nowhere(), monkeypatch.context() as patch:
                patch.setattr(sys, "stderr", broken)
                LOG.warning("into a closed pipe")
            return "done"

        backend, options = anyio_backend
        assert stopscope.run(main, backend=backend, backend_options=options, signals=()) == "done"
        assert broken.attempts >= 1


class TestSignalArgumentsOfTheService:
    def test_a_single_signal_is_not_a_sequence(self) -> None:
        async def main(sig: StopSignal) -> None:
            raise AssertionError("not reached")

        with pytest.raises(TypeError, match="`signals` must be a sequence of signals"):
            stopscope.run(main, signals=signal.SIGTERM)  # type: ignore[arg-type]


class Recorder:
    def __init__(self) -> None:
        self.got: list[int] = []

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.got.append(signum)


def _installed(signum: int, handler: object) -> bool:
    return signal.getsignal(signum) is handler


@pytest.fixture
def usr1_recorder() -> Iterator[Recorder]:
    recorder = Recorder()
    old = signal.signal(signal.SIGUSR1, recorder)
    try:
        yield recorder
    finally:
        signal.signal(signal.SIGUSR1, old)


@posix_only
@pytest.mark.anyio
class TestRepeatedSignal:
    async def test_a_signal_named_twice_is_trapped_once_and_restored(
        self, usr1_recorder: Recorder
    ) -> None:
        sig = StopSignal()
        with anyio.fail_after(GUARD):
            async with stop_on_signals(sig, signal.SIGUSR1, signal.SIGUSR1):
                signal.raise_signal(signal.SIGUSR1)
                await sig.wait()
        assert sig.reason is signal.Signals.SIGUSR1
        assert _installed(signal.SIGUSR1, usr1_recorder)  # not our handler
        assert usr1_recorder.got == []
        signal.raise_signal(signal.SIGUSR1)
        assert usr1_recorder.got == [signal.SIGUSR1]


# ------------------------------------------------------------------ the package


class TestVersionWithoutMetadata:
    def test_a_source_tree_never_installed_reports_an_unknown_version(self) -> None:
        code = textwrap.dedent(
            """
            import importlib.metadata

            def missing(name):
                raise importlib.metadata.PackageNotFoundError(name)

            importlib.metadata.version = missing
            import stopscope
            print(stopscope.__version__)
            """
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "0+unknown"
