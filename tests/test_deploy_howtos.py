"""Each deployment how-to's command, run as the page writes it, under a real SIGTERM
with real HTTP clients.

The command is read from the page (the ``console`` block after a ``<!-- deploy: NAME
-->`` comment), so the page and the test cannot drift apart: its ``VAR=value``
prefixes become the environment, its program is the one installed beside this Python
(``python`` is this Python), and its port 8000 becomes a free port on 127.0.0.1.  It
runs from ``examples/`` in a process group of its own, killed by that group at the end.

With a slow request in flight (longer than the drain delay), SIGTERM goes to the PID
the test started; then, seen by the clients: ``/readyz`` answers 503 ("stopping")
while ``GET /`` is still answered (the drain delay), the slow request gets its 200;
then the exit status the page promises, the stop's report in the log (one per worker),
and no traceback.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shlex
import shutil
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
HOWTO = ROOT / "docs" / "how-to"
#: seconds; only guards against hangs, never a timing assertion
HANG_GUARD = 40.0
DEPLOY = re.compile(r"^<!-- deploy: (?P<name>.+?) -->$")
#: the line an app prints (stdout) or logs (stderr) when the slow request has begun
SLOW_STARTED = re.compile(r"slow( \d+)?: started")


@dataclass(frozen=True)
class HowTo:
    page: str
    name: str
    #: the exit status after SIGTERM the page promises
    returncode: int
    #: worker processes, each with its own report
    workers: int
    #: a line of the report, as logged once per worker
    report: str

    @property
    def id(self) -> str:
        return self.name


HOWTOS = [
    HowTo("deploy-uvicorn.md", "uvicorn", -signal.SIGTERM, 1, "app report: http"),
    HowTo("deploy-fastapi.md", "fastapi run", -signal.SIGTERM, 1, "app report: http"),
    HowTo("deploy-gunicorn.md", "gunicorn", 0, 2, "app report: http"),
    HowTo("deploy-hypercorn.md", "hypercorn asyncio", 0, 1, "app report: http"),
    HowTo("deploy-hypercorn.md", "hypercorn trio", 0, 1, "app report: http"),
    HowTo("deploy-run.md", "run", 0, 1, "report: hypercorn"),
]


def command_of(howto: HowTo) -> str:
    """The first ``$`` line of the console block after the page's deploy comment."""
    lines = (HOWTO / howto.page).read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        match = DEPLOY.match(line.strip())
        if match and match["name"] == howto.name:
            assert lines[i + 1].strip() == "```console", f"{howto.page}: a console block"
            for following in lines[i + 2 :]:
                if following.startswith("$ "):
                    return following[2:]
    pytest.fail(f"{howto.page} has no <!-- deploy: {howto.name} --> command")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def program(name: str) -> str:
    if name == "python":
        return sys.executable
    beside = Path(sys.executable).parent / name  # the environment this test runs in
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found is not None, f"{name} is not installed (see the docs extra)"
    return found


def argv_and_env(command: str, port: int) -> tuple[list[str], dict[str, str], float]:
    """The command's argv (on ``port``), its environment, and its drain delay."""
    words = shlex.split(command)
    env: dict[str, str] = {}
    while "=" in words[0]:
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    argv = [program(words[0])]
    for word in words[1:]:
        argv.append(word.replace("8000", str(port)))
    assert str(port) in " ".join(argv), f"the command binds port 8000: {command}"
    delay = env.get("DRAIN_DELAY")
    if delay is None:
        delay = words[words.index("--drain-delay") + 1]
    return argv, env, float(delay)


class Started:
    """The command's process, its stdout read line by line, its stderr in a file."""

    def __init__(self, argv: list[str], env: dict[str, str], port: int, tmp: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.stderr_path = tmp / "stderr.txt"
        self._stderr = self.stderr_path.open("w")
        self.proc = subprocess.Popen(
            argv,
            cwd=EXAMPLES,
            env={
                **os.environ,
                **env,
                "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(EXAMPLES)]),
                "PYTHONUNBUFFERED": "1",
            },
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            start_new_session=True,  # a process group of its own, killed at the end
        )
        self.stdout: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        assert self.proc.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def output(self) -> str:
        """stdout so far and stderr so far."""
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.stdout.append(line)
        self._stderr.flush()
        return "\n".join(self.stdout) + "\n" + self.stderr_path.read_text()

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=HANG_GUARD)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group this test started
        self.proc.wait()
        self._stderr.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def wait_until(what: str, started: Started, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not {what} within {HANG_GUARD} s: {started.output()}")
        if started.proc.poll() is not None and what != "exited":
            pytest.fail(f"exited ({started.proc.returncode}) before {what}: {started.output()}")
        time.sleep(0.02)  # polling an outside process: nothing to wait on instead


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[Started]]:
    processes: list[Started] = []
    try:
        yield processes
    finally:
        for process in processes:
            process.kill()


def ready(started: Started, workers: int) -> bool:
    try:
        if started.get("/readyz").status_code != 200:
            return False
    except httpx.TransportError:
        return False
    # every worker is up (each prints its flusher's start; the run() example prints
    # its listening line)
    out = started.output()
    return out.count(": started") >= workers or "listening on" in out


@pytest.mark.parametrize("howto", HOWTOS, ids=[h.id for h in HOWTOS])
def test_the_howto_command_drains_on_sigterm(
    howto: HowTo, started: list[Started], tmp_path: Path
) -> None:
    port = free_port()
    argv, env, delay = argv_and_env(command_of(howto), port)
    assert delay > 0, "the page's command has a drain delay to see"
    server = Started(argv, env, port, tmp_path)
    started.append(server)
    wait_until("ready", server, lambda: ready(server, howto.workers))

    slow: list[httpx.Response | Exception] = []

    def slow_request() -> None:
        try:
            slow.append(server.get(f"/slow?seconds={delay + 1:g}"))
        except Exception as exc:  # shown by the assertion below
            slow.append(exc)

    thread = threading.Thread(target=slow_request, daemon=True)
    thread.start()
    wait_until("slow", server, lambda: bool(SLOW_STARTED.search(server.output())))

    server.proc.send_signal(signal.SIGTERM)  # the PID the test started

    probes: list[httpx.Response] = []

    def not_ready() -> bool:
        probes.append(server.get("/readyz"))
        return probes[-1].status_code != 200

    wait_until("not ready", server, not_ready)
    assert (probes[-1].status_code, probes[-1].text) == (503, "not ready: stopping\n")
    during = server.get("/")  # the drain delay: still served, on a new connection
    assert (during.status_code, during.text) == (200, "ok\n")
    thread.join(HANG_GUARD)
    assert len(slow) == 1
    assert isinstance(slow[0], httpx.Response), slow
    assert slow[0].status_code == 200

    try:
        returncode = server.proc.wait(timeout=HANG_GUARD)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {HANG_GUARD} s after SIGTERM: {server.output()}")
    assert returncode == howto.returncode, server.output()
    server._reader.join(HANG_GUARD)
    out = server.output()
    reports = [line for line in out.splitlines() if howto.report in line]
    assert len(reports) == howto.workers, out
    # the HTTP side's outcome: stopped (nothing cut), in each worker's report
    assert all(re.search(r" server +stopped ", line) for line in reports), out
    assert "Traceback" not in out
