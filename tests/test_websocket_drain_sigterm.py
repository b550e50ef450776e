"""WebSocket sessions drained on a real SIGTERM: the server started with its own
command (``uvicorn app:app``, ``gunicorn -k uvicorn_worker.UvicornWorker``,
``hypercorn app:app -k asyncio|trio``) around a :class:`GracefulApp`, many clients of
the ``websockets`` package, the signal sent by PID to the process the test started
(in a process group of its own, killed in ``finally``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"
#: seconds; only guards against hangs, never a timing assertion
HANG_GUARD = 60.0
#: the many-clients case of the issue
MANY = 200
DRAIN_DELAY = 0.5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def argv(server: str, port: int) -> list[str]:
    py = sys.executable
    if server == "uvicorn":
        return [py, "-m", "uvicorn", "ws_drain_app:app", "--host", "127.0.0.1", "--port", str(port)]
    if server == "gunicorn":
        return [
            *(py, "-m", "gunicorn", "ws_drain_app:app", "-k", "uvicorn_worker.UvicornWorker"),
            *("-w", "1", "-b", f"127.0.0.1:{port}", "--no-control-socket"),
            *("--graceful-timeout", "20"),
        ]
    worker = server.split()[-1]
    return [py, "-m", "hypercorn", "ws_drain_app:app", "--bind", f"127.0.0.1:{port}", "-k", worker]


class Served:
    def __init__(self, server: str, tmp_path: Path, code: int, **settings: str) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(APPS)]),
            "DRAIN_DELAY": str(DRAIN_DELAY),
            "GRACE": "20",
            "WS_CLOSE_CODE": str(code),
            "PYTHONUNBUFFERED": "1",
            **settings,
        }
        self.stderr_path = tmp_path / "stderr.txt"
        self._stderr = self.stderr_path.open("w")
        self.proc = subprocess.Popen(
            argv(server, self.port),
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            env=env,
            cwd=tmp_path,
            start_new_session=True,  # a process group of its own, killed in finally
        )

    @property
    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text()

    def wait_listening(self) -> None:
        """Poll another process's listener (no event reaches us from there), bounded."""
        deadline = time.monotonic() + HANG_GUARD
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited: {self.stderr}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if time.monotonic() > deadline:
                pytest.fail(f"not listening within {HANG_GUARD} s: {self.stderr}")
            time.sleep(0.05)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group we started
        self.proc.wait()
        self._stderr.close()


@pytest.fixture
def started() -> Iterator[list[Served]]:
    servers: list[Served] = []
    try:
        yield servers
    finally:
        for served in servers:
            served.kill()


async def clients_through_sigterm(served: Served) -> tuple[list[int | None], float]:
    """Connect MANY clients, SIGTERM the server, return each close code and the
    seconds from SIGTERM until the last session closed."""
    url = f"ws://127.0.0.1:{served.port}/ws"
    connections: list[ClientConnection] = await asyncio.wait_for(
        asyncio.gather(
            *(connect(url, open_timeout=HANG_GUARD, ping_interval=None) for _ in range(MANY))
        ),
        HANG_GUARD,
    )
    for ws in connections[:5]:  # they are served
        await ws.send("hello")
        assert await asyncio.wait_for(ws.recv(), HANG_GUARD) == "hello"
    sent = time.monotonic()
    served.proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(asyncio.gather(*(ws.wait_closed() for ws in connections)), HANG_GUARD)
    took = time.monotonic() - sent
    return [ws.close_code for ws in connections], took


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn", "hypercorn asyncio", "hypercorn trio"])
@pytest.mark.parametrize("code", [1001, 1012])
def test_sigterm_closes_every_session_with_the_code(
    server: str, code: int, started: list[Served], tmp_path: Path
) -> None:
    served = Served(server, tmp_path, code)
    started.append(served)
    served.wait_listening()
    codes, took = asyncio.run(clients_through_sigterm(served))
    assert Counter(codes) == Counter({code: MANY}), served.stderr
    try:
        served.proc.wait(timeout=HANG_GUARD)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {HANG_GUARD} s after SIGTERM: {served.stderr}")
    log = served.stderr
    assert "Traceback" not in log, log
    assert "Exception in ASGI" not in log, log
    assert f"{MANY} WebSocket session(s) closed by the drain (code {code})" in log, log
    assert "did not finish within the grace" not in log, log
    http = next(line for line in log.splitlines() if "report: http " in line)
    assert " stopped " in http, log
    print(f"{server}: {MANY} sessions closed with {code}, {took:.3f} s after SIGTERM")


async def one_client_through_sigterm(served: Served) -> None:
    url = f"ws://127.0.0.1:{served.port}/ws"
    async with connect(url, open_timeout=HANG_GUARD, ping_interval=None) as ws:
        await ws.send("hello")
        assert await asyncio.wait_for(ws.recv(), HANG_GUARD) == "hello"
        served.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(ws.wait_closed(), HANG_GUARD)


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
def test_uvicorn_exits_when_the_grace_ends_while_the_library_closes_sessions(
    server: str, started: list[Served], tmp_path: Path
) -> None:
    # with thousands of sessions on a loaded machine, closing them outlasted the grace:
    # the app was cancelled before it let uvicorn go on, and uvicorn never exited
    served = Served(server, tmp_path, 1001, GRACE="1", SLOW_CLOSE="1")
    started.append(served)
    served.wait_listening()
    asyncio.run(one_client_through_sigterm(served))
    try:
        served.proc.wait(timeout=HANG_GUARD)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {HANG_GUARD} s after SIGTERM: {served.stderr}")
    log = served.stderr
    http = next(line for line in log.splitlines() if "report: http " in line)
    assert " cancelled " in http, log
