"""run() for orchestrators: ``fail_if_cut_short`` and systemd notification.

In process, on every backend: ``main`` raises SIGUSR1 itself (the handler runs before
``raise_signal`` returns, so the order is exact).  systemd notification is checked
against a real ``AF_UNIX`` datagram socket that the test binds, by path and in the
abstract namespace.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

import stopscope
from stopscope import StopSignal, TaskScope
from stopscope._members import _abandoned_threads
from stopscope._service import EXIT_CUT_SHORT

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and sockets")

USR1 = getattr(signal, "SIGUSR1", signal.SIGTERM)

BACKENDS = pytest.mark.parametrize(
    ("backend", "options"),
    [
        pytest.param("asyncio", {}, id="asyncio"),
        pytest.param("asyncio", {"use_uvloop": True}, id="asyncio+uvloop"),
        pytest.param("trio", {}, id="trio"),
    ],
)


@pytest.fixture(autouse=True)
def usr1_ignored() -> Iterator[None]:
    """A SIGUSR1 that reaches the previous handler must not kill pytest."""
    old = signal.signal(USR1, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(USR1, old)


async def ignores_its_stop(sig: StopSignal) -> None:
    with anyio.CancelScope(shield=True):
        await sig.wait()
    await anyio.sleep_forever()  # the cancellation after grace ends it


async def stops(sig: StopSignal) -> None:
    await sig.wait()


# ------------------------------------------------------------ fail_if_cut_short


@BACKENDS
class TestFailIfCutShort:
    def test_a_cancelled_member_exits_70(
        self, backend: str, options: dict[str, Any], caplog: pytest.LogCaptureFixture
    ) -> None:
        async def main(sig: StopSignal) -> str:
            async with TaskScope(signal=sig, grace=0.05) as scope:
                scope.start_soon(ignores_its_stop, scope.signal, name="laggard")
                scope.start_soon(stops, scope.signal, name="good")
                await anyio.wait_all_tasks_blocked()
                signal.raise_signal(USR1)
            return "done"

        with pytest.raises(SystemExit) as info:
            stopscope.run(
                main,
                backend=backend,
                backend_options=options,
                signals=(USR1,),
                fail_if_cut_short=True,
            )
        assert info.value.code == EXIT_CUT_SHORT == 70
        assert "'laggard' cancelled" in caplog.text
        assert "'good'" not in caplog.text.split("exiting with status")[0].split("grace (")[-1]

    def test_by_default_a_cancelled_member_still_exits_0(
        self, backend: str, options: dict[str, Any]
    ) -> None:
        async def main(sig: StopSignal) -> str:
            async with TaskScope(signal=sig, grace=0) as scope:
                scope.start_soon(ignores_its_stop, scope.signal, name="laggard")
                await anyio.wait_all_tasks_blocked()
            assert scope.report.by_name("laggard").outcome is stopscope.Outcome.CANCELLED
            return "done"

        assert (
            stopscope.run(main, backend=backend, backend_options=options, signals=(USR1,)) == "done"
        )

    def test_a_scope_nested_in_a_member_counts(self, backend: str, options: dict[str, Any]) -> None:
        async def inner(sig: StopSignal) -> None:
            async with TaskScope(signal=sig, grace=0, name="inner") as scope:
                scope.start_soon(ignores_its_stop, scope.signal, name="deep")
                await sig.wait()

        async def main(sig: StopSignal) -> None:
            async with TaskScope(signal=sig, grace=5) as scope:
                scope.start_soon(inner, scope.signal, name="inner")
                await anyio.wait_all_tasks_blocked()
            assert scope.report.by_name("inner").outcome is stopscope.Outcome.STOPPED

        with pytest.raises(SystemExit) as info:
            stopscope.run(main, backend=backend, backend_options=options, fail_if_cut_short=True)
        assert info.value.code == EXIT_CUT_SHORT

    def test_an_abandoned_thread_counts(self, backend: str, options: dict[str, Any]) -> None:
        release = threading.Event()
        running = threading.Event()

        def stubborn(sig: StopSignal) -> None:
            running.set()
            release.wait()  # ignores its signal

        async def main(sig: StopSignal) -> None:
            async with TaskScope(signal=sig, grace=0) as scope:
                scope.start_thread(stubborn, name="stubborn")
                await anyio.to_thread.run_sync(running.wait)
            assert scope.report.by_name("stubborn").outcome is stopscope.Outcome.ABANDONED
            release.set()
            with anyio.fail_after(30):
                while _abandoned_threads:  # it returned: run() will not os._exit pytest
                    await anyio.sleep(0.01)

        with pytest.raises(SystemExit) as info:
            stopscope.run(main, backend=backend, backend_options=options, fail_if_cut_short=True)
        assert info.value.code == EXIT_CUT_SHORT

    def test_a_clean_stop_returns(self, backend: str, options: dict[str, Any]) -> None:
        async def main(sig: StopSignal) -> str:
            async with TaskScope(signal=sig, grace=5) as scope:
                scope.start_soon(stops, scope.signal, name="good")
                await anyio.wait_all_tasks_blocked()
                signal.raise_signal(USR1)
            return "done"

        result = stopscope.run(
            main, backend=backend, backend_options=options, signals=(USR1,), fail_if_cut_short=True
        )
        assert result == "done"

    def test_main_cancelled_still_exits_128_plus_n(
        self, backend: str, options: dict[str, Any]
    ) -> None:
        async def main(sig: StopSignal) -> None:
            async with TaskScope(signal=sig, grace=0) as scope:
                scope.start_soon(ignores_its_stop, scope.signal)
                signal.raise_signal(USR1)
                await anyio.sleep_forever()

        with pytest.raises(SystemExit) as info:
            stopscope.run(
                main,
                backend=backend,
                backend_options=options,
                signals=(USR1,),
                grace=0,
                fail_if_cut_short=True,
            )
        assert info.value.code == 128 + USR1


def test_fail_if_cut_short_must_be_a_bool() -> None:
    async def main(sig: StopSignal) -> None:
        raise AssertionError("not reached")

    with pytest.raises(TypeError, match="`fail_if_cut_short`"):
        stopscope.run(main, fail_if_cut_short=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`ready`"):
        stopscope.run(main, ready="now")  # type: ignore[arg-type]


# ------------------------------------------------------------------------ systemd


class Manager:
    """A systemd stand-in: an AF_UNIX datagram socket that collects notifications."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)

    def messages(self) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return out
            out.append(dict(line.split("=", 1) for line in data.decode().splitlines()))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def manager(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Manager]:
    if request.param == "abstract":
        if not sys.platform.startswith("linux"):
            pytest.skip("abstract unix sockets are Linux only")
        name = f"stopscope-test-{os.getpid()}-{id(request)}"
        mgr = Manager("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        try:
            yield mgr
        finally:
            mgr.close()
        return
    # a short directory: unix socket paths are limited to ~107 bytes
    with tempfile.TemporaryDirectory(prefix="ss-") as directory:
        path = os.path.join(directory, "notify")
        mgr = Manager(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        try:
            yield mgr
        finally:
            mgr.close()


@BACKENDS
class TestSystemdNotify:
    def test_ready_at_start_then_stopping_with_an_extended_timeout(
        self, backend: str, options: dict[str, Any], manager: Manager
    ) -> None:
        seen: list[list[dict[str, str]]] = []

        async def main(sig: StopSignal) -> None:
            seen.append(manager.messages())  # READY was sent before main started
            signal.raise_signal(USR1)
            await sig.wait()
            seen.append(manager.messages())

        stopscope.run(main, backend=backend, backend_options=options, signals=(USR1,), grace=7)
        assert [m.get("READY") for m in seen[0]] == ["1"]
        assert len(seen[1]) == 1
        stopping = seen[1][0]
        assert stopping["STOPPING"] == "1"
        assert stopping["EXTEND_TIMEOUT_USEC"] == str((7 + 5) * 1_000_000)
        assert "SIGUSR1" in stopping["STATUS"]
        assert manager.messages() == []  # nothing more: one STOPPING for the first signal

    def test_ready_when_main_says_so(
        self, backend: str, options: dict[str, Any], manager: Manager
    ) -> None:
        seen: list[list[dict[str, str]]] = []

        async def main(
            sig: StopSignal, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
        ) -> None:
            seen.append(manager.messages())
            task_status.started()
            seen.append(manager.messages())
            with pytest.raises(RuntimeError, match="already"):
                task_status.started()

        stopscope.run(main, backend=backend, backend_options=options, ready="task_status")
        assert seen[0] == []
        assert [m.get("READY") for m in seen[1]] == ["1"]

    def test_no_extension_without_grace(
        self, backend: str, options: dict[str, Any], manager: Manager
    ) -> None:
        async def main(sig: StopSignal) -> None:
            signal.raise_signal(USR1)
            await sig.wait()

        stopscope.run(main, backend=backend, backend_options=options, signals=(USR1,), grace=None)
        messages = manager.messages()
        assert [m.get("READY") for m in messages] == ["1", None]
        assert messages[1]["STOPPING"] == "1"
        assert "EXTEND_TIMEOUT_USEC" not in messages[1]


class TestSystemdNotifyEdges:
    def test_nothing_is_sent_without_notify_socket(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
        with tempfile.TemporaryDirectory(prefix="ss-") as directory:
            mgr = Manager(os.path.join(directory, "notify"))
            try:

                async def main(sig: StopSignal) -> None:
                    signal.raise_signal(USR1)
                    await sig.wait()

                stopscope.run(main, signals=(USR1,))
                assert mgr.messages() == []
            finally:
                mgr.close()

    def test_a_manager_that_went_away_is_logged_once_and_harmless(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        with tempfile.TemporaryDirectory(prefix="ss-") as directory:
            monkeypatch.setenv("NOTIFY_SOCKET", str(Path(directory) / "nobody"))

            async def main(sig: StopSignal) -> str:
                signal.raise_signal(USR1)
                await sig.wait()
                return "served"

            with caplog.at_level(logging.WARNING, logger="stopscope"):
                assert stopscope.run(main, signals=(USR1,)) == "served"
        assert caplog.text.count("could not notify systemd") == 1

    def test_an_unsupported_address_is_logged(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")

        async def main(sig: StopSignal) -> str:
            return "ran"

        assert stopscope.run(main) == "ran"
        assert "not a unix socket path" in caplog.text
