"""Thread and process members: TaskScope.start_thread() and TaskScope.start_process().

Every test runs on asyncio (debug), asyncio+uvloop and trio.  Ordering comes from
events (a StopSignal set by the thread, a line the child prints), never from sleeps;
``anyio.fail_after`` only guards against hangs.  Members that must end up STOPPED run
under a grace period no test reaches.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any

import anyio
import anyio.from_thread
import pytest
from anyio.abc import Process

from stopscope import Outcome, StopSignal, TaskScope

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup  # type: ignore[import-not-found, unused-ignore]

pytestmark = pytest.mark.anyio

#: seconds; only a guard against hangs, never a timing assertion
HANG_GUARD = 20.0
#: a grace period no test ever reaches: members that exit on the signal are STOPPED
LONG_GRACE = 60.0
#: for members that ignore the stop: they are given up on after this
SHORT_GRACE = 0.1

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def stopscope_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "stopscope" and r.levelno >= logging.WARNING
    ]


# ------------------------------------------------------------------------ threads


def watch_with_wait_blocking(sig: StopSignal, started: StopSignal) -> None:
    started.set()
    while not sig.wait_blocking(0.01):
        pass


def watch_with_is_set(sig: StopSignal, started: StopSignal) -> None:
    started.set()
    while not sig.is_set():
        time.sleep(0.001)


def ignore_the_signal(sig: StopSignal, started: StopSignal, release: threading.Event) -> None:
    started.set()
    release.wait(HANG_GUARD)


class TestStartThread:
    @pytest.mark.parametrize("func", [watch_with_wait_blocking, watch_with_is_set])
    async def test_a_thread_that_watches_the_signal_is_stopped(self, func: Any) -> None:
        started = StopSignal()
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=LONG_GRACE) as scope:
                scope.start_thread(func, started, name="watcher")
                await started.wait()
        record = scope.report.by_name("watcher")
        assert record.kind == "thread"
        assert record.outcome is Outcome.STOPPED
        assert record.latency is not None
        assert record.phase == "grace"

    async def test_a_thread_that_ignores_the_signal_is_abandoned(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        started, release = StopSignal(), threading.Event()
        try:
            with anyio.fail_after(HANG_GUARD):
                async with TaskScope(grace=SHORT_GRACE) as scope:
                    scope.start_thread(ignore_the_signal, started, release, name="stubborn")
                    await started.wait()
            # the scope did not wait for the thread: it is still blocked
            assert not release.is_set()
            record = scope.report.by_name("stubborn")
            assert record.kind == "thread"
            assert record.outcome is Outcome.ABANDONED
            assert record.phase == "cancelled"
            assert scope.report.needed_cancellation == (record,)
            warnings = stopscope_warnings(caplog)
            assert any("'stubborn'" in m and "abandoned" in m for m in warnings), warnings
            assert any("ignore_the_signal" in m for m in warnings)  # the thread's stack
        finally:
            release.set()

    async def test_a_members_own_grace_applies_to_its_thread(self) -> None:
        started, release = StopSignal(), threading.Event()
        try:
            with anyio.fail_after(HANG_GUARD):
                async with TaskScope(grace=LONG_GRACE) as scope:
                    scope.start_thread(
                        ignore_the_signal, started, release, name="stubborn", grace=SHORT_GRACE
                    )
                    await started.wait()
            assert scope.report.by_name("stubborn").outcome is Outcome.ABANDONED
        finally:
            release.set()

    async def test_an_abandoned_thread_that_raises_later_is_logged(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        started, release = StopSignal(), threading.Event()

        def fail_late(sig: StopSignal) -> None:
            started.set()
            release.wait(HANG_GUARD)
            raise KeyError("late")

        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=SHORT_GRACE) as scope:
                scope.start_thread(fail_late, name="late")
                await started.wait()
            release.set()
            while not any(r.levelno == logging.ERROR for r in caplog.records):
                await anyio.sleep(0.01)  # polling a condition, under the hang guard
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert "abandoned thread member 'late' raised" in errors[0].getMessage()
        assert errors[0].exc_info is not None
        assert isinstance(errors[0].exc_info[1], KeyError)
        assert scope.report.by_name("late").outcome is Outcome.ABANDONED

    async def test_a_thread_that_returns_on_its_own_is_finished(self) -> None:
        def quick(sig: StopSignal, out: list[int]) -> None:
            out.append(1)

        out: list[int] = []
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=LONG_GRACE, stop_on_exit=False) as scope:
                scope.start_thread(quick, out, name="quick")
        assert out == [1]
        record = scope.report.by_name("quick")
        assert record.outcome is Outcome.FINISHED
        assert record.kind == "thread"

    async def test_an_error_in_the_thread_fails_the_member(self) -> None:
        error = ValueError("boom")

        def broken(sig: StopSignal) -> None:
            raise error

        scope = TaskScope(grace=LONG_GRACE)

        async def body() -> None:
            async with scope:
                scope.start_thread(broken, name="broken")
                await scope.signal.wait()  # the error stops the scope

        with anyio.fail_after(HANG_GUARD), pytest.raises(ExceptionGroup) as info:
            await body()
        assert info.value.exceptions == (error,)
        record = scope.report.by_name("broken")
        assert record.outcome is Outcome.FAILED
        assert record.error is error
        assert scope.report.reason is error

    async def test_the_thread_is_named_after_the_member_and_gets_the_scope_signal(
        self,
    ) -> None:
        seen: list[Any] = []

        def look(sig: StopSignal, a: int, b: str) -> None:
            seen.extend([sig, a, b, threading.current_thread().name])

        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=LONG_GRACE, stop_on_exit=False) as scope:
                scope.start_thread(look, 1, "two", name="reader")
        assert seen == [scope.signal, 1, "two", "stopscope: reader"]

    async def test_the_default_name_is_the_functions_qualified_name(self) -> None:
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=LONG_GRACE) as scope:
                scope.start_thread(watch_with_wait_blocking, StopSignal())
        assert scope.report.tasks[0].name == "watch_with_wait_blocking"

    async def test_from_thread_works_inside_the_thread(self) -> None:
        got: list[int] = []

        def call_back(sig: StopSignal) -> None:
            anyio.from_thread.run_sync(got.append, 7)

        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=LONG_GRACE, stop_on_exit=False) as scope:
                scope.start_thread(call_back)
        assert got == [7]

    async def test_a_thread_started_while_stopping_sees_the_signal_set(self) -> None:
        seen: list[bool] = []

        def look(sig: StopSignal) -> None:
            seen.append(sig.is_set())

        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=LONG_GRACE) as scope:
                scope.stop("deploy")
                scope.start_thread(look, name="late")
        assert seen == [True]
        assert scope.report.by_name("late").outcome is Outcome.STOPPED

    async def test_outer_cancellation_abandons_a_running_thread(self) -> None:
        started, release = StopSignal(), threading.Event()
        try:
            with anyio.fail_after(HANG_GUARD), anyio.CancelScope() as outer:
                async with TaskScope(grace=LONG_GRACE) as scope:
                    scope.start_thread(ignore_the_signal, started, release, name="stubborn")
                    await started.wait()
                    outer.cancel()
                    await anyio.sleep_forever()
            assert scope.report.by_name("stubborn").outcome is Outcome.ABANDONED
        finally:
            release.set()

    async def test_start_thread_needs_a_callable(self) -> None:
        async with TaskScope() as scope:
            with pytest.raises(TypeError, match="callable"):
                scope.start_thread(42)  # type: ignore[arg-type]

    async def test_start_thread_outside_the_block(self) -> None:
        scope = TaskScope()
        with pytest.raises(RuntimeError, match="inside `async with scope:`"):
            scope.start_thread(watch_with_wait_blocking, StopSignal())


# ---------------------------------------------------------------------- processes


# SIGTERM is blocked and taken with sigwait(): a Python handler around time.sleep()
# would lose a signal that lands just before the sleep starts (it would run only when
# the sleep ends, 60 s later)
CHILD_EXITS_ON_SIGTERM = """
import signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
print("ready", flush=True)
signal.sigtimedwait({signal.SIGTERM}, 60)
sys.exit(0)
"""

CHILD_IGNORES_SIGTERM = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(60)
"""

CHILD_SLEEPS = """
import time
print("ready", flush=True)
time.sleep(60)
"""


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


async def wait_ready(process: Process) -> None:
    """Wait for the child's "ready" line (its signal handling is in place then)."""
    assert process.stdout is not None
    seen = b""
    while b"ready" not in seen:
        seen += await process.stdout.receive()


def assert_reaped(pid: int) -> None:
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


@posix_only
class TestStartProcess:
    async def test_a_process_that_exits_on_sigterm_is_stopped(self) -> None:
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=LONG_GRACE) as scope:
                process = await scope.start_process(
                    python(CHILD_EXITS_ON_SIGTERM), name="child", stdout=subprocess.PIPE
                )
                assert isinstance(process, Process)
                assert process.returncode is None  # running when start_process returns
                await wait_ready(process)
            await process.aclose()
        record = scope.report.by_name("child")
        assert record.kind == "process"
        assert record.outcome is Outcome.STOPPED
        assert record.exit_code == 0
        assert_reaped(process.pid)

    async def test_the_default_sigterm_action_counts_as_stopped(self) -> None:
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=LONG_GRACE) as scope:
                process = await scope.start_process(
                    python(CHILD_SLEEPS), name="child", stdout=subprocess.PIPE
                )
                await wait_ready(process)
            await process.aclose()
        record = scope.report.by_name("child")
        assert record.outcome is Outcome.STOPPED
        assert record.exit_code == -15

    async def test_a_process_that_ignores_sigterm_is_killed_after_grace(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=SHORT_GRACE) as scope:
                process = await scope.start_process(
                    python(CHILD_IGNORES_SIGTERM), name="stubborn", stdout=subprocess.PIPE
                )
                await wait_ready(process)
            await process.aclose()
        record = scope.report.by_name("stubborn")
        assert record.kind == "process"
        assert record.outcome is Outcome.CANCELLED
        assert record.exit_code == -9
        assert scope.report.needed_cancellation == (record,)
        assert any("'stubborn'" in m for m in stopscope_warnings(caplog))
        assert_reaped(process.pid)

    async def test_a_process_that_exits_by_itself_is_finished(self) -> None:
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=LONG_GRACE, stop_on_exit=False) as scope:
                process = await scope.start_process(python("pass"), name="job")
        record = scope.report.by_name("job")
        assert record.outcome is Outcome.FINISHED
        assert record.exit_code == 0
        assert scope.report.reason is None
        assert_reaped(process.pid)

    async def test_a_process_that_fails_by_itself_fails_the_member(self) -> None:
        cmd = python("import sys; sys.exit(3)")
        scope = TaskScope(grace=LONG_GRACE)

        async def body() -> None:
            async with scope:
                await scope.start_process(cmd, name="job")
                await scope.signal.wait()  # the failure stops the scope

        with anyio.fail_after(HANG_GUARD), pytest.raises(ExceptionGroup) as info:
            await body()
        (error,) = info.value.exceptions
        assert isinstance(error, subprocess.CalledProcessError)
        assert error.returncode == 3
        assert "exit status 3" in str(error)
        record = scope.report.by_name("job")
        assert record.outcome is Outcome.FAILED
        assert record.error is error
        assert record.exit_code == 3

    async def test_a_process_that_cannot_start_raises_from_start_process(self) -> None:
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=LONG_GRACE) as scope:
                with pytest.raises(FileNotFoundError):
                    await scope.start_process(["/nonexistent/stopscope-test"], name="missing")
        assert scope.report.by_name("missing").outcome is Outcome.FAILED

    async def test_the_default_name_is_the_command_line(self) -> None:
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=LONG_GRACE, stop_on_exit=False) as scope:
                await scope.start_process([sys.executable, "-c", "pass"])
                await scope.start_process("exit 0")  # a string goes to the shell
        names = [record.name for record in scope.report.tasks]
        assert names == [f"{sys.executable} -c pass", "exit 0"]

    async def test_grace_zero_kills_at_once(self) -> None:
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=LONG_GRACE) as scope:
                process = await scope.start_process(
                    python(CHILD_EXITS_ON_SIGTERM), name="child", grace=0, stdout=subprocess.PIPE
                )
                await wait_ready(process)
            await process.aclose()
        record = scope.report.by_name("child")
        assert record.outcome is Outcome.CANCELLED
        assert record.exit_code == -9

    async def test_outer_cancellation_kills_the_process(self) -> None:
        with anyio.fail_after(HANG_GUARD):
            with anyio.CancelScope() as outer:
                async with TaskScope(grace=LONG_GRACE) as scope:
                    process = await scope.start_process(
                        python(CHILD_EXITS_ON_SIGTERM), name="child", stdout=subprocess.PIPE
                    )
                    await wait_ready(process)
                    outer.cancel()
                    await anyio.sleep_forever()
            await process.aclose()
        record = scope.report.by_name("child")
        assert record.outcome is Outcome.CANCELLED
        assert record.exit_code == -9
        assert_reaped(process.pid)
