"""examples/web_service.py as a real process: real uvicorn / hypercorn, real signals.

For every server and backend pair the example supports, the test starts the example
on a free port, talks to it with httpx over TCP and sends it real SIGTERMs.  It
synchronises on the lines the service writes (``listening on ...`` on stdout, the log
lines on stderr), never on sleeps; the only wall-clock assumption is that a drain delay
of DRAIN_DELAY seconds outlasts a few local requests.  Every process is killed at the
end, whatever happens.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "web_service.py"
#: seconds; only a guard against hangs, never a timing assertion
HANG_GUARD = 30.0
#: long enough for a few requests over loopback to happen inside it
DRAIN_DELAY = 3.0

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

COMBOS = [
    pytest.param("uvicorn", "asyncio", id="uvicorn-asyncio"),
    pytest.param("uvicorn", "uvloop", id="uvicorn-uvloop"),
    pytest.param("hypercorn", "asyncio", id="hypercorn-asyncio"),
    pytest.param("hypercorn", "uvloop", id="hypercorn-uvloop"),
    pytest.param("hypercorn", "trio", id="hypercorn-trio"),
]


class Service:
    """The example, running; its output lines collected by reader threads."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLE), "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: dict[str, queue.Queue[str]] = {"stdout": queue.Queue(), "stderr": queue.Queue()}
        self.seen: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._threads = [
            threading.Thread(target=self._read, args=(name, stream), daemon=True)
            for name, stream in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr))
        ]
        for thread in self._threads:
            thread.start()
        self.url = ""

    def _read(self, name: str, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            self.lines[name].put(line.rstrip("\n"))

    def expect(self, stream: str, pattern: str) -> re.Match[str]:
        """Wait for a line matching ``pattern`` (a regular expression) on ``stream``."""
        deadline = time.monotonic() + HANG_GUARD
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines[stream].get(timeout=max(left, 0.001))
            except queue.Empty:
                raise AssertionError(
                    f"no line matching {pattern!r} on {stream} within {HANG_GUARD} s; "
                    f"seen: {self.seen}"
                ) from None
            self.seen[stream].append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def start(self) -> str:
        match = self.expect("stdout", r"^listening on (http://127\.0\.0\.1:(\d+))$")
        self.url = match.group(1)
        self.port = int(match.group(2))
        return self.url

    def kill(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def wait(self) -> int:
        code = self.proc.wait(timeout=HANG_GUARD)
        for thread in self._threads:
            thread.join(timeout=HANG_GUARD)
        for name in self.lines:
            while not self.lines[name].empty():
                self.seen[name].append(self.lines[name].get_nowait())
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=HANG_GUARD)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def services() -> Iterator[list[Service]]:
    started: list[Service] = []
    try:
        yield started
    finally:
        for service in started:
            service.close()


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD):
            return False
    except OSError:
        return True


def in_thread(url: str, results: list[httpx.Response | Exception]) -> threading.Thread:
    """A request of its own, on a connection of its own, in a thread."""

    def run() -> None:
        try:
            results.append(httpx.get(url, timeout=HANG_GUARD))
        except Exception as exc:
            results.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(("server", "backend"), COMBOS)
def test_sigterm_drains_in_order_and_exits_0(
    services: list[Service], server: str, backend: str
) -> None:
    service = Service(
        "--server", server, "--backend", backend,
        "--drain-delay", str(DRAIN_DELAY), "--grace", "20",
    )  # fmt: skip
    services.append(service)
    url = service.start()
    for _ in range(3):
        assert httpx.get(f"{url}/", timeout=HANG_GUARD).status_code == 200
    assert httpx.get(f"{url}/readyz", timeout=HANG_GUARD).status_code == 200
    # two slow requests in flight, each long enough to outlast the drain delay
    slow: list[httpx.Response | Exception] = []
    threads = [in_thread(f"{url}/slow?seconds={DRAIN_DELAY + 1}", slow) for _ in range(2)]
    for _ in threads:
        service.expect("stderr", r"slow: started")

    service.kill(signal.SIGTERM)
    service.expect("stderr", r"SIGTERM: stopping main\(\) gracefully")
    # the drain delay: not ready, but new connections are still served
    probe = httpx.get(f"{url}/readyz", timeout=HANG_GUARD)
    assert (probe.status_code, probe.text) == (503, "not ready: stopping\n")
    served = httpx.get(f"{url}/", timeout=HANG_GUARD)
    assert served.status_code == 200
    assert served.headers["connection"] == "close"
    assert not refused(service.port)
    # then the listener closes; the slow requests still complete
    service.expect("stderr", r"closing the listener")
    deadline = time.monotonic() + HANG_GUARD
    while not refused(service.port):  # uvicorn looks at its stop flag every 0.1 s
        assert time.monotonic() < deadline, "the listener never closed"
        time.sleep(0.01)
    for thread in threads:
        thread.join(timeout=HANG_GUARD)
    assert [getattr(r, "status_code", r) for r in slow] == [200, 200]

    assert service.wait() == 0
    # every answered request's event was flushed: 3 + 1 during the delay + 2 slow
    assert service.seen["stdout"][-1] == "worker: flushed 6 events", service.seen
    assert not [line for line in service.seen["stderr"] if "WARNING" in line or "ERROR" in line]
    # each of the server's own lines once, in the service's log format (hypercorn's
    # "Running on" came out twice: through logging, and from its own stderr handler)
    running = [line for line in service.seen["stderr"] if "Running on" in line]
    assert len(running) == (1 if server == "hypercorn" else 0), running


@pytest.mark.parametrize(("server", "backend"), COMBOS)
def test_a_second_sigterm_during_the_drain_cancels(
    services: list[Service], server: str, backend: str
) -> None:
    service = Service(
        "--server", server, "--backend", backend, "--drain-delay", "10", "--grace", "20"
    )  # fmt: skip
    services.append(service)
    service.start()
    service.kill(signal.SIGTERM)
    service.expect("stderr", r"SIGTERM: stopping main\(\) gracefully")
    service.kill(signal.SIGTERM)
    assert service.wait() == 128 + signal.SIGTERM  # as documented: cancelled, 143
    assert any("cancelling main()" in line for line in service.seen["stderr"])


@pytest.mark.parametrize(
    ("server", "backend"), [COMBOS[0], COMBOS[4]]
)  # one per server path is enough here
def test_requests_longer_than_the_grace_are_cut_and_reported(
    services: list[Service], server: str, backend: str
) -> None:
    service = Service("--server", server, "--backend", backend, "--grace", "3")
    services.append(service)
    url = service.start()
    slow: list[httpx.Response | Exception] = []
    thread = in_thread(f"{url}/slow?seconds=60", slow)
    service.expect("stderr", r"slow: started")
    service.kill(signal.SIGTERM)
    thread.join(timeout=HANG_GUARD)
    assert len(slow) == 1
    assert getattr(slow[0], "status_code", None) != 200
    # the server cut it within the grace, so main() returned: exit 0, and the report
    # names the server CANCELLED (an exit-status policy can turn that into a failure)
    assert service.wait() == 0
    stderr = "\n".join(service.seen["stderr"])
    assert "1 request(s) did not finish within the grace period and were cancelled" in stderr
    assert re.search(rf"report: {server}\s+server\s+cancelled", stderr), stderr
    assert service.seen["stdout"][-1] == "worker: flushed 0 events"


def test_the_command_line_refuses_what_a_server_cannot_do() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--server", "uvicorn", "--backend", "trio"],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )
    assert result.returncode == 2
    assert "uvicorn supports --backend asyncio, uvloop" in result.stderr
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--drain-delay", "5", "--grace", "5"],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )
    assert result.returncode == 2
    assert "--drain-delay < --grace" in result.stderr
