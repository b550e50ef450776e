"""The service's small helpers, directly: how a log line names a signal or a handler,
and the checks run() makes before it starts (not per backend: no loop involved, but
for the one case that reads the running asyncio loop)."""

from __future__ import annotations

import asyncio
import signal
import sys

import pytest

from stopscope._service import (
    _callable_text,
    _check_main,
    _describe_handler,
    _ordinal,
    _signal_name,
)


def handler(signum: int, frame: object) -> None:
    """A library's handler."""


class TestNames:
    def test_signal_names(self) -> None:
        assert _signal_name(signal.SIGTERM) == "SIGTERM"
        assert _signal_name(9999) == "signal 9999"

    def test_ordinals(self) -> None:
        assert [_ordinal(n) for n in (1, 2, 3, 4)] == ["first", "second", "third", "4th"]

    def test_callables(self) -> None:
        assert _callable_text(handler) == f"{__name__}.handler"
        assert _callable_text(42) == "42"  # no __qualname__: its repr

    def test_handlers(self) -> None:
        term = signal.SIGTERM
        assert _describe_handler(term, None) == "a handler installed outside Python"
        assert _describe_handler(term, signal.SIG_DFL) == "SIG_DFL (the default action)"
        assert _describe_handler(term, signal.SIG_IGN) == "SIG_IGN (ignored)"
        assert _describe_handler(term, handler) == f"{__name__}.handler"

    @pytest.mark.skipif(sys.platform == "win32", reason="add_signal_handler is POSIX only")
    def test_a_loops_handler_is_named_by_its_callback(self) -> None:
        async def main() -> tuple[str, str]:
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGUSR2, print)
            try:
                installed = signal.getsignal(signal.SIGUSR2)
                named = _describe_handler(signal.SIGUSR2, installed)
                # a loop handler for a signal the loop does not know: no callback
                unknown = _describe_handler(signal.SIGUSR1, installed)
            finally:
                loop.remove_signal_handler(signal.SIGUSR2)
            return named, unknown

        named, unknown = asyncio.run(main())
        assert named == "loop.add_signal_handler(SIGUSR2, builtins.print)"
        assert unknown == "the event loop's add_signal_handler()"


class TestCheckMain:
    def test_a_callable_without_a_signature_is_tried(self) -> None:
        _check_main(max, (), False)  # inspect cannot read it: run() calls it and sees

    def test_task_status_is_part_of_the_call(self) -> None:
        async def main(signal: object) -> None:
            pass

        with pytest.raises(TypeError, match=r"main\(signal, \*args, task_status=\.\.\.\)"):
            _check_main(main, (), True)


class TestServerHookRefusals:
    """GracefulApp's hook refuses what it cannot chain to, with advice."""

    def test_outside_the_main_thread(self) -> None:
        import threading

        import anyio

        from stopscope.asgi._hooks import ServerHook

        caught: list[BaseException] = []

        async def install() -> None:
            ServerHook(lambda reason: None).install()

        def in_thread() -> None:
            try:
                anyio.run(install)
            except BaseException as exc:
                caught.append(exc)

        thread = threading.Thread(target=in_thread)
        thread.start()
        thread.join()
        assert [type(e) for e in caught] == [RuntimeError]
        assert "must run its lifespan in the main thread" in str(caught[0])

    def test_a_native_handler(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import anyio

        from stopscope.asgi import _hooks

        async def install() -> None:
            _hooks.ServerHook(lambda reason: None).install()

        monkeypatch.setattr("stopscope.asgi._hooks.signal.getsignal", lambda signum: None)
        with pytest.raises(RuntimeError, match=r"handled by native code here"):
            anyio.run(install)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
class TestGroupAlive:
    """Whether a process group still holds a live process, when the kernel's answer
    to ``killpg(pgid, 0)`` is not enough (a group we may not signal, no /proc)."""

    def test_a_group_we_may_not_signal_is_read_from_proc(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import os

        from stopscope import _members

        def refuse(pgid: int, signum: int) -> None:
            raise PermissionError(pgid)

        monkeypatch.setattr("stopscope._members.os.killpg", refuse)
        assert _members._group_alive(os.getpgrp())  # this test runs in it
        assert not _members._group_alive(2**22 + 12345)  # no such group in /proc

    def test_without_proc_a_group_is_taken_for_alive(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from stopscope import _members

        def refuse(pgid: int, signum: int) -> None:
            raise PermissionError(pgid)

        def no_proc(path: str) -> list[str]:
            raise OSError(path)

        monkeypatch.setattr("stopscope._members.os.killpg", refuse)
        monkeypatch.setattr("stopscope._members.os.listdir", no_proc)
        assert _members._group_alive(2**22 + 12345)  # it cannot tell: it waits on
