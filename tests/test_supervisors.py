"""The example web service under real supervisors: supervisord and ``tini``.

Each test starts the supervisor (in its own session, so that cleanup can kill whatever
is left), waits until the service listens on 127.0.0.1, puts a request in flight, asks
the supervisor to stop the service, and checks that the request completed and that the
supervisor recorded a clean stop (supervisord: ``stopped: web (exit status 0)``; tini:
exit status 0).  Timeouts only bound hangs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("hypercorn")

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX supervisors")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "web_service.py"
#: seconds; only guards against hangs
HANG_GUARD = 60.0
DRAIN_DELAY = 0.5
GRACE = 10.0
#: the request in flight when the stop comes
SLOW = 1.0

SERVERS = pytest.mark.parametrize(
    ("server", "backend"),
    [
        pytest.param("uvicorn", "asyncio", id="uvicorn-asyncio"),
        pytest.param("uvicorn", "uvloop", id="uvicorn-uvloop"),
        pytest.param("hypercorn", "trio", id="hypercorn-trio"),
    ],
)


def service_command(server: str, backend: str) -> list[str]:
    return [
        sys.executable,
        str(EXAMPLE),
        "--server",
        server,
        "--backend",
        backend,
        "--port",
        "0",
        "--drain-delay",
        str(DRAIN_DELAY),
        "--grace",
        str(GRACE),
    ]


def wait_for(path: Path, pattern: str, proc: subprocess.Popen[bytes]) -> re.Match[str]:
    """Poll ``path`` until ``pattern`` appears (bounded; fails early if ``proc`` died)."""
    deadline = time.monotonic() + HANG_GUARD
    while True:
        text = path.read_text(errors="replace") if path.exists() else ""
        match = re.search(pattern, text)
        if match:
            return match
        assert proc.poll() is None, f"the supervisor exited; {path}:\n{text}"
        assert time.monotonic() < deadline, f"no {pattern!r} in {path}:\n{text}"
        time.sleep(0.02)


class InFlight:
    """A GET of /slow in a thread."""

    def __init__(self, url: str) -> None:
        self.response: httpx.Response | None = None
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._run, args=(url,), daemon=True)
        self.thread.start()

    def _run(self, url: str) -> None:
        try:
            self.response = httpx.get(f"{url}/slow?seconds={SLOW}", timeout=HANG_GUARD)
        except Exception as exc:
            self.error = exc

    def result(self) -> httpx.Response:
        self.thread.join(HANG_GUARD)
        assert self.error is None, self.error
        assert self.response is not None
        return self.response


class Started:
    """Processes a test started, each the leader of its own session: killed at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def __call__(self, argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        proc: subprocess.Popen[bytes] = subprocess.Popen(
            argv,
            start_new_session=True,
            **kwargs,  # type: ignore[call-overload]
        )
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:  # a failed test: it, and everything in its session
                with_group(proc.pid, signal.SIGKILL)
                proc.wait(HANG_GUARD)


def with_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


@pytest.fixture
def started() -> Iterator[Started]:
    procs = Started()
    try:
        yield procs
    finally:
        procs.cleanup()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (unix socket paths are limited to ~107 bytes)."""
    directory = Path(tempfile.mkdtemp(prefix="ss-sup-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# ---------------------------------------------------------------------- supervisord


SUPERVISORD_CONF = """\
[unix_http_server]
file={dir}/supervisor.sock

[supervisord]
nodaemon=true
logfile={dir}/supervisord.log
pidfile={dir}/supervisord.pid
loglevel=info

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{dir}/supervisor.sock

[program:web]
command={command}
directory={dir}
autostart=true
autorestart=false
startsecs=1
stopsignal=TERM
stopwaitsecs={stopwaitsecs}
stopasgroup=true
killasgroup=true
stdout_logfile={dir}/web.out
stderr_logfile={dir}/web.err
"""


def supervisord_bin(name: str) -> str:
    found = Path(sys.executable).parent / name
    if found.exists():
        return str(found)
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install supervisor)")
    return path


@SERVERS
def test_supervisord_records_a_clean_stop(
    server: str, backend: str, started: Started, short_dir: Path
) -> None:
    conf = short_dir / "supervisord.conf"
    conf.write_text(
        SUPERVISORD_CONF.format(
            dir=short_dir,
            command=subprocess.list2cmdline(service_command(server, backend)),
            stopwaitsecs=int(GRACE + 5),
        )
    )
    daemon = started([supervisord_bin("supervisord"), "-c", str(conf)])
    url = wait_for(short_dir / "web.out", r"listening on (http://127\.0\.0\.1:\d+)", daemon)[1]
    wait_for(short_dir / "supervisord.log", r"success: web entered RUNNING state", daemon)
    request = InFlight(url)
    wait_for(short_dir / "web.err", r"slow: started", daemon)

    ctl = subprocess.run(
        [supervisord_bin("supervisorctl"), "-c", str(conf), "stop", "web"],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )
    assert "web: stopped" in ctl.stdout, ctl.stdout + ctl.stderr

    assert request.result().status_code == 200
    log = (short_dir / "supervisord.log").read_text()
    assert "waiting for web to stop" in log
    assert re.search(r"stopped: web \(exit status 0\)", log), log
    assert "SIGKILL" not in log
    out = (short_dir / "web.out").read_text()
    assert re.search(r"worker: flushed \d+ events", out), out

    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(HANG_GUARD) == 0


# --------------------------------------------- tini, as the container recipe says

NESTED = ROOT / "tests" / "apps" / "nested_service.py"
SERVICES_DOC = ROOT / "docs" / "how-to" / "services.md"


def documented_init() -> list[str]:
    """The init part of the container recipe in docs/how-to/services.md: the words of
    its ``ENTRYPOINT ["tini", ...]`` line before ``python -m myservice``."""
    found = re.findall(r"^ENTRYPOINT (\[\"tini\".*\])$", SERVICES_DOC.read_text(), re.M)
    assert len(found) == 1, found
    argv: list[str] = json.loads(found[0])
    assert argv[-3:] == ["python", "-m", "myservice"], argv
    return argv[:-3]


def tini_bin() -> str:
    path = shutil.which("tini")
    if path is None:
        pytest.skip("tini is not installed (apt-get install tini)")
    return path


@SERVERS
def test_tini_stops_the_service_and_exits_0(
    server: str, backend: str, started: Started, tmp_path: Path
) -> None:
    """The container recipe of docs/how-to/services.md, with the web service."""
    out, err = tmp_path / "out", tmp_path / "err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        # -s: a subreaper, as tini is when it is not PID 1 (here it is not)
        tini = started(
            [tini_bin(), "-s", *documented_init()[1:], *service_command(server, backend)],
            stdout=stdout,
            stderr=stderr,
        )
    url = wait_for(out, r"listening on (http://127\.0\.0\.1:\d+)", tini)[1]
    request = InFlight(url)
    wait_for(err, r"slow: started", tini)

    tini.send_signal(signal.SIGTERM)
    assert tini.wait(HANG_GUARD) == 0, err.read_text()
    assert request.result().status_code == 200
    assert re.search(r"worker: flushed \d+ events", out.read_text())


def test_the_config_is_what_the_docs_show() -> None:
    """The supervisord program section above is the one the how-to recommends."""
    docs = (ROOT / "docs" / "how-to" / "web-services.md").read_text()
    for line in ("[program:web]", "stopsignal=TERM", "stopasgroup=true", "killasgroup=true"):
        assert line in docs, line
        assert line in SUPERVISORD_CONF.splitlines(), line


@pytest.mark.parametrize("backend", ["asyncio", "asyncio+uvloop", "trio"])
@pytest.mark.parametrize("process_group", [False, True], ids=["shared-group", "own-group"])
def test_the_container_recipe_signals_a_child_service_once(
    backend: str, process_group: bool, started: Started, tmp_path: Path
) -> None:
    """Issue 15, item 14: under the documented init, a ``start_process`` child that is
    itself a stopscope service gets one SIGTERM (its parent's), drains, and exits 0."""
    init = documented_init()
    # -s: a subreaper, as tini is when it is not PID 1 (here it is not)
    command = [tini_bin(), "-s", *init[1:], sys.executable, str(NESTED), "parent"]
    command += ["--backend", backend] + (["--process-group"] if process_group else [])
    out, err = tmp_path / "out", tmp_path / "err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        tini = started(command, stdout=stdout, stderr=stderr)
    ready = wait_for(out, r"parent ready (\d+) (\d+)", tini)
    parent, child = int(ready[1]), int(ready[2])
    try:
        wait_for(out, r"child ready", tini)
        tini.send_signal(signal.SIGTERM)
        assert tini.wait(HANG_GUARD) == 0, err.read_text()
        text = out.read_text()
        assert text.count("child got SIGTERM") == 1, text
        assert "child drained" in text, text
        assert "member child STOPPED exit_code=0" in text, text
    finally:  # tini gives the service a group of its own, and the child may have one
        for pid in (parent, child):
            with_group(pid, signal.SIGKILL)


def test_the_web_services_page_uses_the_same_init() -> None:
    docs = (ROOT / "docs" / "how-to" / "web-services.md").read_text()
    found = re.findall(r"`ENTRYPOINT (\[\"tini\"[^`]*\])`", docs)
    assert [json.loads(argv)[:-3] for argv in found] == [documented_init()], found
