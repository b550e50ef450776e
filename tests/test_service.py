"""The service level: stopscope.run() and stop_on_signals(), with real OS signals.

Two kinds of tests:

* in-process: ``stop_on_signals()`` and ``run()`` with SIGUSR1/SIGUSR2 raised by the
  test itself (``signal.raise_signal`` runs the handler before it returns, so the
  order is exact);
* child processes (``tests/apps/stop_app.py``): a real service gets real SIGTERM /
  SIGINT from ``os.kill``; the test synchronises on the lines the child prints and
  checks its cleanup file, its exit status and its stderr.

No test asserts wall-clock time: timeouts are only guards against hangs.
"""

from __future__ import annotations

import math
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import IO, Any

import anyio
import pytest

import stopscope
from stopscope import SignalTrap, StopSignal, stop_on_signals

APP = Path(__file__).resolve().parent / "apps" / "stop_app.py"
#: seconds; only a guard against hangs, never a timing assertion
HANG_GUARD = 30.0
#: a member that ignores the stop is cancelled after this; the child must still exit
SHORT_GRACE = 0.5

PROCESS_BACKENDS = [
    pytest.param("asyncio", id="asyncio"),
    pytest.param(
        "asyncio+uvloop",
        id="asyncio+uvloop",
        marks=pytest.mark.skipif(sys.platform == "win32", reason="uvloop is POSIX only"),
    ),
    pytest.param("trio", id="trio"),
]

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
USR1 = getattr(signal, "SIGUSR1", signal.SIGTERM)
USR2 = getattr(signal, "SIGUSR2", signal.SIGTERM)


# ------------------------------------------------------------------------ helpers


def installed(signum: int, handler: object) -> bool:
    """Whether ``handler`` is the Python handler of ``signum`` now."""
    return signal.getsignal(signum) is handler


class Recorder:
    """A Python signal handler that records what it gets."""

    def __init__(self) -> None:
        self.got: list[int] = []

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.got.append(signum)


@pytest.fixture
def recorders() -> Iterator[tuple[Recorder, Recorder]]:
    """SIGUSR1 and SIGUSR2 handled by recorders for the test, restored afterwards."""
    first, second = Recorder(), Recorder()
    old1 = signal.signal(USR1, first)
    old2 = signal.signal(USR2, second)
    try:
        yield first, second
    finally:
        signal.signal(USR1, old1)
        signal.signal(USR2, old2)


class Child:
    """A child Python process running tests/apps/stop_app.py, read line by line."""

    def __init__(self, scenario: str, backend: str, out: Path, *options: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(APP), scenario, "--backend", backend, "--out", str(out), *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        self._stderr: list[str] = []
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read_lines, args=(self.proc.stdout,), daemon=True),
            threading.Thread(target=self._read_all, args=(self.proc.stderr,), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_lines(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _read_all(self, stream: IO[str]) -> None:
        self._stderr.append(stream.read())

    def expect(self, prefix: str) -> str:
        """Wait for a line of stdout starting with ``prefix``; return it."""
        while True:
            try:
                line = self.lines.get(timeout=HANG_GUARD)
            except queue.Empty:
                pytest.fail(f"the child printed no {prefix!r} line; stdout: {self.stdout}")
            if line is None:
                self.finish()
                pytest.fail(
                    f"the child exited before printing {prefix!r}; stdout: {self.stdout}; "
                    f"stderr: {self.stderr}"
                )
            self.stdout.append(line)
            if line.startswith(prefix):
                return line

    def send(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

    def finish(self) -> int:
        """Wait for the child to exit (a hang guard, not a timing assertion)."""
        try:
            code = self.proc.wait(timeout=HANG_GUARD)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            for reader in self._readers:
                reader.join(timeout=HANG_GUARD)
            assert self.proc.stdout is not None
            assert self.proc.stderr is not None
            self.proc.stdout.close()
            self.proc.stderr.close()
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.stdout.append(line)
        return code

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.finish()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Child]]:
    children: list[Child] = []

    def start(scenario: str, backend: str, *options: str) -> Child:
        child = Child(scenario, backend, tmp_path, *options)
        children.append(child)
        return child

    try:
        yield start
    finally:
        for child in children:
            child.kill()


# --------------------------------------------------------------- stop_on_signals


@posix_only
@pytest.mark.anyio
class TestStopOnSignals:
    async def test_first_signal_sets_the_stop_signal_with_the_signal_as_reason(
        self, recorders: tuple[Recorder, Recorder]
    ) -> None:
        sig = StopSignal()
        with anyio.fail_after(HANG_GUARD):
            async with stop_on_signals(sig, USR1, USR2) as trap:
                signal.raise_signal(USR2)
                await sig.wait()
                assert sig.reason is signal.Signals(USR2)
        assert isinstance(trap, SignalTrap)
        assert trap.received == (signal.Signals(USR2),)
        assert not trap.cancelled
        assert recorders[1].got == []  # ours took it, not the previous handler

    async def test_handlers_are_installed_only_for_the_block(
        self, recorders: tuple[Recorder, Recorder]
    ) -> None:
        first, second = recorders
        async with stop_on_signals(StopSignal(), USR1):
            assert not installed(USR1, first)
            assert installed(USR2, second)  # not asked for: untouched
        assert installed(USR1, first)
        signal.raise_signal(USR1)
        assert first.got == [USR1]

    async def test_previous_handlers_are_restored_when_the_body_raises(
        self, recorders: tuple[Recorder, Recorder]
    ) -> None:
        with pytest.raises(ZeroDivisionError):
            async with stop_on_signals(StopSignal(), USR1, USR2):
                1 / 0  # noqa: B018
        assert installed(USR1, recorders[0])
        assert installed(USR2, recorders[1])

    async def test_nested_traps_restore_in_order(
        self, recorders: tuple[Recorder, Recorder]
    ) -> None:
        outer_sig, inner_sig = StopSignal(), StopSignal()
        with anyio.fail_after(HANG_GUARD):
            async with stop_on_signals(outer_sig, USR1):
                outer_handler = signal.getsignal(USR1)
                async with stop_on_signals(inner_sig, USR1):
                    signal.raise_signal(USR1)
                    await inner_sig.wait()
                assert installed(USR1, outer_handler)
                assert not outer_sig.is_set()
                signal.raise_signal(USR1)
                await outer_sig.wait()
        assert installed(USR1, recorders[0])

    async def test_second_signal_cancels_the_block(
        self, recorders: tuple[Recorder, Recorder]
    ) -> None:
        sig = StopSignal()
        reached_the_end = False
        with anyio.fail_after(HANG_GUARD):
            async with stop_on_signals(sig, USR1, USR2) as trap:
                signal.raise_signal(USR1)
                await sig.wait()
                assert not trap.cancelled
                signal.raise_signal(USR2)  # a different signal counts too
                await anyio.sleep_forever()
                reached_the_end = True
        assert not reached_the_end
        assert trap.cancelled
        assert trap.received == (signal.Signals(USR1), signal.Signals(USR2))
        assert sig.reason is signal.Signals(USR1)  # the first reason stays

    async def test_grace_cancels_a_block_that_does_not_end(
        self, recorders: tuple[Recorder, Recorder], caplog: pytest.LogCaptureFixture
    ) -> None:
        sig = StopSignal()
        with anyio.fail_after(HANG_GUARD):
            async with stop_on_signals(sig, USR1, grace=0.01) as trap:
                signal.raise_signal(USR1)
                await anyio.sleep_forever()
        assert trap.cancelled
        assert trap.received == (signal.Signals(USR1),)
        warnings = [r.getMessage() for r in caplog.records if r.name == "stopscope"]
        assert any("did not finish within the service's grace (" in m for m in warnings), warnings

    async def test_a_block_that_ends_within_grace_is_not_cancelled(
        self, recorders: tuple[Recorder, Recorder]
    ) -> None:
        sig = StopSignal()
        with anyio.fail_after(HANG_GUARD):
            async with stop_on_signals(sig, USR1, grace=3600) as trap:
                signal.raise_signal(USR1)
                await sig.wait()
        assert not trap.cancelled

    async def test_escalation_stop_only_never_cancels(
        self, recorders: tuple[Recorder, Recorder]
    ) -> None:
        sig = StopSignal()
        with anyio.fail_after(HANG_GUARD):
            async with stop_on_signals(sig, USR1, escalation=("stop",)) as trap:
                for _ in range(4):
                    signal.raise_signal(USR1)
                    await anyio.lowlevel.checkpoint()
                await sig.wait()
                while len(trap.received) < 4:
                    await anyio.lowlevel.checkpoint()
        assert not trap.cancelled
        assert trap.received == (signal.Signals(USR1),) * 4

    async def test_a_signal_not_yet_acted_on_goes_to_the_previous_handler(
        self, recorders: tuple[Recorder, Recorder]
    ) -> None:
        sig = StopSignal()
        async with stop_on_signals(sig, USR1) as trap:
            # the handler runs inside raise_signal() and queues the signal for the
            # loop; the block ends before the loop gets to it
            signal.raise_signal(USR1)
        assert trap.received == ()
        assert not sig.is_set()
        assert recorders[0].got == [USR1]  # not lost: the previous handler got it
        await anyio.lowlevel.checkpoint()
        assert not sig.is_set()  # and not acted on twice

    async def test_the_stop_signal_may_already_be_set(
        self, recorders: tuple[Recorder, Recorder]
    ) -> None:
        sig = StopSignal()
        sig.set("deploy")
        with anyio.fail_after(HANG_GUARD):
            async with stop_on_signals(sig, USR1) as trap:
                signal.raise_signal(USR1)
                while not trap.received:
                    await anyio.lowlevel.checkpoint()
        assert sig.reason == "deploy"

    async def test_a_trap_is_used_once(self, recorders: tuple[Recorder, Recorder]) -> None:
        trap = stop_on_signals(StopSignal(), USR1)
        async with trap:
            pass
        with pytest.raises(RuntimeError, match="single `async with`"):
            async with trap:
                pass

    async def test_outside_the_main_thread_is_refused_and_leaves_nothing_behind(
        self, recorders: tuple[Recorder, Recorder]
    ) -> None:
        trap = stop_on_signals(StopSignal(), USR1)
        result: list[BaseException] = []

        def in_thread() -> None:
            async def enter() -> None:
                async with trap:
                    pass

            try:
                anyio.run(enter)
            except BaseException as exc:
                result.append(exc)

        thread = threading.Thread(target=in_thread)
        thread.start()
        thread.join(HANG_GUARD)
        assert isinstance(result[0], RuntimeError)
        assert "main thread" in str(result[0])
        assert installed(USR1, recorders[0])


class TestArguments:
    @pytest.mark.parametrize("grace", [-1, math.nan, -0.001])
    def test_bad_grace(self, grace: float) -> None:
        with pytest.raises(ValueError, match="`grace`"):
            stop_on_signals(StopSignal(), signal.SIGINT, grace=grace)
        with pytest.raises(ValueError, match="`grace`"):
            stopscope.run(_never_called, grace=grace)

    @pytest.mark.parametrize("escalation", [(), ("stop", "kill"), ("STOP",)])
    def test_bad_escalation(self, escalation: Any) -> None:
        with pytest.raises(ValueError, match="`escalation`"):
            stop_on_signals(StopSignal(), signal.SIGINT, escalation=escalation)

    def test_escalation_is_not_a_string(self) -> None:
        with pytest.raises(TypeError, match="`escalation`"):
            stop_on_signals(StopSignal(), signal.SIGINT, escalation="stop")  # type: ignore[arg-type]

    @posix_only
    def test_uncatchable_signal(self) -> None:
        with pytest.raises(ValueError, match="SIGKILL"):
            stop_on_signals(StopSignal(), signal.SIGKILL)
        with pytest.raises(ValueError, match="SIGKILL"):
            stopscope.run(_never_called, signals=(signal.SIGKILL,))

    def test_not_a_signal(self) -> None:
        with pytest.raises(ValueError, match="not a signal"):
            stop_on_signals(StopSignal(), 12345)

    def test_needs_a_stop_signal(self) -> None:
        with pytest.raises(TypeError, match="StopSignal"):
            stop_on_signals(signal.SIGINT)  # type: ignore[arg-type]


    def test_run_outside_the_main_thread(self) -> None:
        async def main(sig: StopSignal) -> str:
            return "ran"

        results: list[object] = []

        def in_thread() -> None:
            try:
                stopscope.run(main)
            except RuntimeError as exc:
                results.append(exc)
            results.append(stopscope.run(main, signals=()))  # no handlers: any thread

        thread = threading.Thread(target=in_thread)
        thread.start()
        thread.join(HANG_GUARD)
        assert isinstance(results[0], RuntimeError)
        assert "main thread" in str(results[0])
        assert results[1] == "ran"


async def _never_called(sig: StopSignal) -> None:
    raise AssertionError("not reached")


# ------------------------------------------------------------- run(), in process


@posix_only
@pytest.mark.parametrize(
    ("backend", "options"),
    [
        pytest.param("asyncio", {}, id="asyncio"),
        pytest.param(
            "asyncio",
            {"use_uvloop": True},
            id="asyncio+uvloop",
            marks=pytest.mark.skipif(sys.platform == "win32", reason="uvloop is POSIX only"),
        ),
        pytest.param("trio", {}, id="trio"),
    ],
)
class TestRunInProcess:
    def test_returns_what_main_returns(
        self, backend: str, options: dict[str, Any], recorders: tuple[Recorder, Recorder]
    ) -> None:
        async def main(sig: StopSignal, a: int, b: str) -> str:
            assert isinstance(sig, StopSignal)
            return f"{a}{b}"

        assert stopscope.run(main, 1, "x", backend=backend, backend_options=options) == "1x"

    def test_after_a_graceful_stop_run_returns_normally(
        self, backend: str, options: dict[str, Any], recorders: tuple[Recorder, Recorder]
    ) -> None:
        async def main(sig: StopSignal) -> object:
            signal.raise_signal(USR1)
            await sig.wait()
            return sig.reason

        reason = stopscope.run(main, backend=backend, backend_options=options, signals=(USR1,))
        assert reason is signal.Signals(USR1)
        assert installed(USR1, recorders[0])  # restored
        assert recorders[0].got == []

    def test_main_cancelled_after_grace_exits_128_plus_the_signal(
        self, backend: str, options: dict[str, Any], recorders: tuple[Recorder, Recorder]
    ) -> None:
        async def main(sig: StopSignal) -> None:
            signal.raise_signal(USR1)
            await anyio.sleep_forever()  # ignores the stop

        with pytest.raises(SystemExit) as info:
            stopscope.run(
                main, backend=backend, backend_options=options, signals=(USR1,), grace=0
            )
        assert info.value.code == 128 + USR1

    def test_second_signal_cancels_main(
        self, backend: str, options: dict[str, Any], recorders: tuple[Recorder, Recorder]
    ) -> None:
        async def main(sig: StopSignal) -> None:
            signal.raise_signal(USR2)
            await sig.wait()
            signal.raise_signal(USR1)
            await anyio.sleep_forever()

        with pytest.raises(SystemExit) as info:
            stopscope.run(
                main,
                backend=backend,
                backend_options=options,
                signals=(USR1, USR2),
                grace=None,
            )
        assert info.value.code == 128 + USR2  # the first signal names the status

    def test_an_error_of_main_propagates(
        self, backend: str, options: dict[str, Any], recorders: tuple[Recorder, Recorder]
    ) -> None:
        async def main(sig: StopSignal) -> None:
            raise LookupError("boom")

        with pytest.raises(LookupError, match="boom"):
            stopscope.run(main, backend=backend, backend_options=options, signals=(USR1,))
        assert installed(USR1, recorders[0])


# ------------------------------------------------------- real processes, real signals


@posix_only
@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
class TestService:
    @pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
    def test_a_signal_stops_the_service_gracefully_and_it_exits_0(
        self, backend: str, signum: signal.Signals, spawn: Callable[..., Child], tmp_path: Path
    ) -> None:
        child = spawn("graceful", backend)
        child.expect("ready")
        child.send(signum)
        assert child.finish() == 0, child.stderr
        assert (tmp_path / "worker-cleanup").read_text() == f"stopped: {signum!r}\n"
        assert child.stdout[-1] == "main returned 'done'"
        assert "Traceback" not in child.stderr

    def test_a_laggard_is_cancelled_after_grace_and_named_on_stderr(
        self, backend: str, spawn: Callable[..., Child], tmp_path: Path
    ) -> None:
        child = spawn("graceful", backend, "--laggard", "--scope-grace", str(SHORT_GRACE))
        child.expect("ready")
        child.send(signal.SIGTERM)
        assert child.finish() == 0, child.stderr
        assert (tmp_path / "worker-cleanup").exists()
        # no logging configured in the child: run() still shows the warning
        assert "stopscope: WARNING" in child.stderr
        assert "'laggard'" in child.stderr
        assert "'worker'" not in child.stderr

    def test_an_abandoned_thread_does_not_hold_the_process(
        self, backend: str, spawn: Callable[..., Child], tmp_path: Path
    ) -> None:
        child = spawn("graceful", backend, "--thread-laggard", "--scope-grace", str(SHORT_GRACE))
        child.expect("ready")
        child.send(signal.SIGTERM)
        assert child.finish() == 0, child.stderr
        assert (tmp_path / "worker-cleanup").exists()
        assert "'stuck-thread'" in child.stderr

    def test_a_second_sigint_ends_a_service_without_grace(
        self, backend: str, spawn: Callable[..., Child], tmp_path: Path
    ) -> None:
        child = spawn("stubborn", backend)
        child.expect("ready")
        child.send(signal.SIGINT)
        assert child.expect("stopping") == "stopping: <Signals.SIGINT: 2>"
        child.send(signal.SIGINT)
        assert child.finish() == 128 + signal.SIGINT, child.stderr
        assert (tmp_path / "worker-cleanup").exists()
        assert "second signal" in child.stderr
        assert "Traceback" not in child.stderr

    def test_main_that_overruns_its_grace_is_cancelled(
        self, backend: str, spawn: Callable[..., Child]
    ) -> None:
        child = spawn("slow-main", backend, "--run-grace", str(SHORT_GRACE))
        child.expect("ready")
        child.send(signal.SIGTERM)
        assert child.finish() == 128 + signal.SIGTERM, child.stderr
        assert "slow_main() was cancelled" in child.stderr
        assert "grace (0.5 s)" in child.stderr

    def test_a_third_signal_exits_at_once_while_the_loop_is_stuck(
        self, backend: str, spawn: Callable[..., Child]
    ) -> None:
        child = spawn("stuck", backend)
        child.expect("ready")
        # Three different signals: one signal sent twice before its handler ran
        # would count once (the OS and Python keep one pending flag per signal).
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            child.send(signum)
        code = child.finish()
        assert code in (-signal.SIGINT, -signal.SIGTERM, -signal.SIGHUP), child.stderr
        assert "third signal): exiting at once" in child.stderr

    def test_a_third_sigint_exits_while_cancellation_is_stuck(
        self, backend: str, spawn: Callable[..., Child]
    ) -> None:
        child = spawn("stubborn", backend, "--stuck-on-cancel")
        child.expect("ready")
        child.send(signal.SIGINT)
        child.expect("stopping")
        child.send(signal.SIGINT)
        child.expect("cancelled")  # the loop is now stuck in time.sleep()
        child.send(signal.SIGINT)
        assert child.finish() == -signal.SIGINT, child.stderr
        assert "SIGINT (third signal): exiting at once" in child.stderr
