"""GracefulApp under the servers' own commands: real processes, real clients, real
signals sent by PID.

Each server runs ``examples/graceful_app.py`` (``graceful_fastapi.py`` for ``fastapi
run``) with the command line a user types, bound to 127.0.0.1 on a free port, in a
process group of its own that the test kills in ``finally``.  A slow request is in
flight when SIGTERM comes; the drain delay is longer than the time the test needs to
see the readiness turn 503 and to get one more request answered.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
APPS = Path(__file__).resolve().parent / "apps"
#: seconds; only guards against hangs, never a timing assertion
HANG_GUARD = 40.0
#: the drain delay: long enough to probe the readiness and send one more request
DRAIN_DELAY = 3.0
#: a request that outlives the drain delay: in flight when the listener closes
SLOW = DRAIN_DELAY + 1.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Deployment:
    name: str
    workers: int
    #: the exit status the server's own SIGTERM handling gives (uvicorn re-raises it)
    returncode: int
    #: SIGTERM to the whole process group (systemd's default KillMode, kill -- -PGID),
    #: not only to the server's process
    to_group: bool = False

    @property
    def id(self) -> str:
        return f"{self.name}, process group" if self.to_group else self.name

    def argv(self, port: int, app: str = "graceful_app:app") -> list[str]:
        py = sys.executable
        if self.name == "uvicorn":
            return [py, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
        if self.name == "fastapi run":
            path = str(EXAMPLES / "graceful_fastapi.py")
            return [py, "-m", "fastapi", "run", path, "--host", "127.0.0.1", "--port", str(port)]
        if self.name.startswith("hypercorn"):
            worker = self.name.split()[-1]
            return [py, "-m", "hypercorn", app, "--bind", f"127.0.0.1:{port}", "-k", worker]
        assert self.name == "gunicorn"
        return [
            *(py, "-m", "gunicorn", app, "-k", "uvicorn_worker.UvicornWorker"),
            *("-w", str(self.workers), "-b", f"127.0.0.1:{port}", "--no-control-socket"),
            *("--graceful-timeout", "20"),
        ]


DEPLOYMENTS = [
    Deployment("uvicorn", 1, -signal.SIGTERM),
    Deployment("fastapi run", 1, -signal.SIGTERM),
    Deployment("hypercorn asyncio", 1, 0),
    Deployment("hypercorn trio", 1, 0),
    Deployment("gunicorn", 2, 0),
]
#: a worker gets SIGTERM from the supervisor, then again from its master
GROUP_KILLS = [
    Deployment("hypercorn asyncio", 1, 0, to_group=True),
    Deployment("gunicorn", 2, 0, to_group=True),
]


class Served:
    """A server process started with its own command, read line by line."""

    def __init__(self, argv: list[str], port: int, tmp_path: Path) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(EXAMPLES), str(APPS)]),
            "DRAIN_DELAY": str(DRAIN_DELAY),
            "GRACE": "20",
            "PYTHONUNBUFFERED": "1",
        }
        self.url = f"http://127.0.0.1:{port}"
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.stderr_path = tmp_path / "stderr.txt"
        self._stderr = self.stderr_path.open("w")
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env,
            cwd=tmp_path,
            start_new_session=True,  # a process group of its own, killed in finally
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        assert self.proc.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    @property
    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text()

    def expect(self, prefix: str, count: int = 1) -> list[str]:
        """Wait for ``count`` more lines of stdout that start with ``prefix``."""
        found: list[str] = []
        while len(found) < count:
            try:
                line = self.lines.get(timeout=HANG_GUARD)
            except queue.Empty:
                pytest.fail(f"no {prefix!r} line; stdout {self.stdout}; stderr {self.stderr}")
            if line is None:
                pytest.fail(f"exited before {prefix!r}; stdout {self.stdout}; stderr {self.stderr}")
            self.stdout.append(line)
            if line.startswith(prefix):
                found.append(line)
        return found

    def rest(self) -> list[str]:
        """Every stdout line up to the end (after the process exited)."""
        self._reader.join(HANG_GUARD)
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return self.stdout
            if line is not None:
                self.stdout.append(line)

    def get(self, path: str, timeout: float = HANG_GUARD) -> httpx.Response:
        return httpx.get(self.url + path, timeout=timeout)

    def wait(self) -> int:
        try:
            return self.proc.wait(timeout=HANG_GUARD)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {HANG_GUARD} s on; stderr {self.stderr}")

    def kill(self) -> None:
        # the group we started: the server and every worker it forked
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._stderr.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[list[Served]]:
    started: list[Served] = []
    try:
        yield started
    finally:
        for served in started:
            served.kill()


def start(
    started: list[Served], deployment: Deployment, tmp_path: Path, app: str = "graceful_app:app"
) -> Served:
    """Start the server on a free port; once more on another if a process elsewhere on
    the machine took that port between our look and the server's bind."""
    for attempt in range(3):
        port = free_port()
        served = Served(deployment.argv(port, app), port, tmp_path / f"try{attempt}")
        started.append(served)
        wait_until("listening or exited", functools.partial(up_or_exited, served, port))
        if served.proc.poll() is None or "already in use" not in served.stderr.lower():
            return served
    pytest.fail(f"no free port in 3 attempts: {served.stderr}")


def up_or_exited(served: Served, port: int) -> bool:
    return served.proc.poll() is not None or listens(port)


def listens(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def pid_of(line: str) -> int:
    return int(line.split()[1].rstrip(":"))


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(what: str, predicate: Callable[[], bool]) -> None:
    """Poll another process's state (no event reaches us from there), bounded."""
    deadline = time.monotonic() + HANG_GUARD
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not {what} within {HANG_GUARD} s")
        time.sleep(0.02)


class Slow:
    """``GET /slow?seconds=SLOW`` in a thread."""

    def __init__(self, served: Served) -> None:
        self.response: httpx.Response | BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(served,), daemon=True)
        self._thread.start()

    def _run(self, served: Served) -> None:
        try:
            self.response = served.get(f"/slow?seconds={SLOW}")
        except BaseException as exc:
            self.response = exc

    def result(self) -> httpx.Response:
        self._thread.join(HANG_GUARD)
        assert isinstance(self.response, httpx.Response), self.response
        return self.response


@pytest.mark.parametrize(
    "deployment", DEPLOYMENTS + GROUP_KILLS, ids=[d.id for d in DEPLOYMENTS + GROUP_KILLS]
)
def test_sigterm_drains_then_stops_the_background(
    deployment: Deployment, serve: list[Served], tmp_path: Path
) -> None:
    served = start(serve, deployment, tmp_path)
    workers = {pid_of(line) for line in served.expect("flusher", deployment.workers)}
    assert served.get("/readyz").text == "ready\n"
    assert served.get("/").status_code == 200
    slow = Slow(served)
    served.expect("slow")

    if deployment.to_group:
        os.killpg(served.proc.pid, signal.SIGTERM)  # the group we started
    else:
        served.proc.send_signal(signal.SIGTERM)  # to the server's own process (the master)

    # a member watching `graceful.stopping` hears it at once, while the slow request
    # is still in flight (it outlives the drain delay)
    requested = served.expect("flusher", deployment.workers)
    assert all(line.endswith("stop requested") for line in requested), served.stdout
    assert {pid_of(line) for line in requested} == workers
    assert slow.response is None
    # heard before the server's shutdown: not ready, while the listener still serves
    probes: list[httpx.Response] = []

    def not_ready() -> bool:
        probes.append(served.get("/readyz"))
        return probes[-1].status_code != 200

    wait_until("not ready", not_ready)
    assert (probes[-1].status_code, probes[-1].text) == (503, "not ready: stopping\n")
    during = served.get("/")
    assert during.status_code == 200
    assert during.headers["connection"] == "close"
    assert slow.result().status_code == 200  # in flight when the listener closed

    assert served.wait() == deployment.returncode
    out = served.rest()
    heard = [line for line in out if line.endswith("stop heard")]
    assert {pid_of(line) for line in heard} == workers
    # the background stopped after the HTTP side had drained: it flushed every event,
    # the slow request's included
    flushed = [line for line in out if "flushed" in line]
    assert sum(int(line.split()[3]) for line in flushed) == 3, out
    stderr = served.stderr
    assert stderr.count("closing the listener") == deployment.workers
    assert stderr.count("app report: flusher  task    stopped") == deployment.workers, stderr
    assert stderr.count("app report: intake   task    stopped") == deployment.workers, stderr
    assert "Traceback" not in stderr


def test_gunicorn_sighup_leaves_no_old_worker(serve: list[Served], tmp_path: Path) -> None:
    gunicorn = DEPLOYMENTS[-1]
    served = start(serve, gunicorn, tmp_path)
    old = {pid_of(line) for line in served.expect("flusher", 2)}

    served.proc.send_signal(signal.SIGHUP)

    new: set[int] = set()
    flushed: set[int] = set()
    while len(new) < 2 or flushed != old:  # the new workers start, the old ones drain
        line = served.expect("flusher")[0]
        if line.endswith("started"):
            new.add(pid_of(line))
        elif "flushed" in line:
            flushed.add(pid_of(line))
    assert not new & old
    wait_until("reaped", lambda: not any(alive(pid) for pid in old))
    assert served.get("/readyz").status_code == 200

    served.proc.send_signal(signal.SIGTERM)
    assert served.wait() == 0


class TestStopOnSignalsInAServer:
    """``stop_on_signals()`` in the lifespan used to keep the server from stopping."""

    def test_uvicorn_stops_on_sigterm(self, serve: list[Served], tmp_path: Path) -> None:
        served = start(serve, DEPLOYMENTS[0], tmp_path, app="asgi_trap_app:app")
        served.expect("background")
        assert served.get("/readyz").status_code == 200
        served.proc.send_signal(signal.SIGTERM)
        assert served.wait() == -signal.SIGTERM
        assert any(line.endswith("stopped") for line in served.rest())

    def test_gunicorn_sighup_leaves_no_old_worker(
        self, serve: list[Served], tmp_path: Path
    ) -> None:
        served = start(serve, DEPLOYMENTS[-1], tmp_path, app="asgi_trap_app:app")
        old = {pid_of(line) for line in served.expect("background", 2)}
        served.proc.send_signal(signal.SIGHUP)
        lines = served.expect("background", 4)  # 2 new started, 2 old stopped, in any order
        assert {pid_of(line) for line in lines if line.endswith("stopped")} == old
        wait_until("reaped", lambda: not any(alive(pid) for pid in old))
        served.proc.send_signal(signal.SIGTERM)
        assert served.wait() == 0


class TestHypercornWithoutWorkers:
    """``hypercorn -w 0``: no master, the app's process is the server's."""

    def test_asyncio_is_refused_with_advice(self, serve: list[Served], tmp_path: Path) -> None:
        port = free_port()
        argv = [*Deployment("hypercorn asyncio", 1, 0).argv(port), "-w", "0"]
        served = Served(argv, port, tmp_path)
        serve.append(served)
        wait_until("refused", lambda: "drop `-w 0`" in served.stderr)
        # hypercorn serves even after a failed lifespan startup: never ready, then
        probes: list[httpx.Response] = []

        def answered() -> bool:
            try:
                probes.append(served.get("/readyz"))
            except httpx.ConnectError:
                return False
            return True

        wait_until("listening", answered)
        assert (probes[-1].status_code, probes[-1].text) == (503, "not ready: starting\n")

    def test_trio_serves_the_drain_delay_then_takes_the_default_action(
        self, serve: list[Served], tmp_path: Path
    ) -> None:
        # hypercorn's trio worker installs no SIGTERM handler: the signal's default
        # action (the end of the process) comes after the drain delay
        port = free_port()
        argv = [*Deployment("hypercorn trio", 1, 0).argv(port), "-w", "0"]
        served = Served(argv, port, tmp_path)
        serve.append(served)
        served.expect("flusher")
        served.proc.send_signal(signal.SIGTERM)
        served.expect("flusher")  # intake: stop requested
        probe = served.get("/readyz")
        assert (probe.status_code, probe.text) == (503, "not ready: stopping\n")
        assert served.wait() == -signal.SIGTERM
