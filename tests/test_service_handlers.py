"""A stop signal's handler replaced inside ``run()`` (issue 15, defect 15).

uvicorn, aiohttp and hypercorn install their own SIGTERM handler with
``loop.add_signal_handler`` once they serve; trio code opens
``trio.open_signal_receiver``.  Before the fix that took the signal over in silence:
three SIGTERMs gave no graceful stop, no escalation, no exit at once and no warning.
Now the service says so, once, and keeps handling the signal, chained with theirs.

Real services (``tests/apps/replaced_handler_app.py``) in a process group of their
own get real signals by PID; the test synchronises on the lines they print.  Timeouts
only guard against hangs.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import IO

import pytest

APP = Path(__file__).resolve().parent / "apps" / "replaced_handler_app.py"
#: seconds; only a guard against hangs, never a timing assertion
HANG_GUARD = 30.0

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


class Service:
    """The app in a process group of its own; its stdout and stderr, line by line."""

    def __init__(self, backend: str, *options: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(APP), backend, *options],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self.seen: list[tuple[str, str]] = []
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=("out", self.proc.stdout), daemon=True),
            threading.Thread(target=self._read, args=("err", self.proc.stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, name: str, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put((name, line.rstrip("\n")))
        self.lines.put(None)

    def wait_for(self, stream: str, *words: str) -> str:
        """The first line on ``stream`` that holds every word (fails on a hang)."""
        for name, line in self.seen:
            if name == stream and all(w in line for w in words):
                return line
        while True:
            try:
                item = self.lines.get(timeout=HANG_GUARD)
            except queue.Empty:
                pytest.fail(f"no line with {words} on std{stream}; seen: {self.seen}")
            if item is None:
                if self.proc.poll() is not None and all(not r.is_alive() for r in self._readers):
                    pytest.fail(f"exited before a line with {words}; seen: {self.seen}")
                continue
            self.seen.append(item)
            name, line = item
            if name == stream and all(w in line for w in words):
                return line

    def term(self) -> None:
        os.kill(self.proc.pid, signal.SIGTERM)

    def finish(self) -> int:
        try:
            return self.proc.wait(timeout=HANG_GUARD)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the service hung; seen: {self.seen}")
        finally:
            self.kill()

    def kill(self) -> None:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.returncode is None:
            self.proc.wait(timeout=HANG_GUARD)
        for reader in self._readers:
            reader.join(timeout=HANG_GUARD)
        while not self.lines.empty():
            item = self.lines.get_nowait()
            if item is not None:
                self.seen.append(item)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with suppress(OSError):
                    stream.close()


@pytest.fixture
def service() -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for svc in started:
        svc.kill()


@pytest.mark.parametrize("backend", ["asyncio", "asyncio+uvloop", "trio"])
def test_a_replaced_stop_handler_is_noticed_and_still_stops_escalates_and_exits(
    backend: str, service: list[Service]
) -> None:
    if backend == "asyncio+uvloop":
        pytest.importorskip("uvloop")
    svc = Service(backend)
    service.append(svc)
    svc.wait_for("out", "ready")
    # said once, naming the signal and what replaced our handler
    warning = svc.wait_for("err", "WARNING", "SIGTERM", "replaced by")
    expected = "trio" if backend == "trio" else "add_signal_handler"
    assert expected in warning
    svc.term()  # first: graceful stop, and their handler still runs
    svc.wait_for("out", "stop seen")
    svc.wait_for("out", "theirs")
    svc.term()  # second: cancelled
    svc.wait_for("out", "cancelled")
    svc.term()  # third: the process exits at once, by the signal
    assert svc.finish() == -signal.SIGTERM
    warnings = [line for name, line in svc.seen if name == "err" and "replaced by" in line]
    assert len(warnings) == 1, svc.seen


@pytest.mark.parametrize("backend", ["asyncio", "asyncio+uvloop", "trio"])
def test_a_draining_service_says_so_on_stderr_without_logging_set_up(
    backend: str, service: list[Service]
) -> None:
    """Issue 17: the first signal printed nothing unless logging was configured, so a
    service draining for its grace looked hung.  Now one line as the drain starts, in
    the format of the escalation lines, and one summary line at the end."""
    if backend == "asyncio+uvloop":
        pytest.importorskip("uvloop")
    svc = Service(backend, "plain")
    service.append(svc)
    svc.wait_for("out", "ready")
    svc.term()
    svc.wait_for("out", "stop seen")
    # said while main is still draining (it returns only when told to, below)
    first = svc.wait_for("err", "SIGTERM")
    assert first.startswith("stopscope: INFO: SIGTERM: stopping main_plain() gracefully")
    assert "grace of 20 s" in first
    assert svc.proc.poll() is None
    assert svc.proc.stdin is not None
    svc.proc.stdin.write("done\n")
    svc.proc.stdin.flush()
    assert svc.finish() == 0
    lines = [line for name, line in svc.seen if name == "err"]
    assert len(lines) == 2, lines
    assert lines[1].startswith("stopscope: INFO: main_plain() returned ")
    assert lines[1].endswith(" s after SIGTERM; exit status 0")
