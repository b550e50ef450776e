#!/usr/bin/env python3
"""What does SIGTERM do to an app started by its server's own command, with and without
``stopscope.asgi.GracefulApp``?

    pip install -e '.[uvicorn,hypercorn,trio]' httpx starlette gunicorn uvicorn-worker
    python benchmarks/asgi_deployments.py                  # the committed results
    python benchmarks/asgi_deployments.py --servers uvicorn --rounds 1

For each server command (``uvicorn main:app``, ``hypercorn main:app -k asyncio`` and
``-k trio``, ``gunicorn main:app -k uvicorn_worker.UvicornWorker -w 2``), the same
Starlette app runs plain (its lifespan owns a ``TaskScope`` with a background member, as
users write) and wrapped (``GracefulApp``, ``drain_delay=1``, ``grace=10``, the
background member started with ``graceful.start_soon``).  Two scenarios:

* ``slow``: a 2 s request in flight when SIGTERM goes to the server's process, and a
  client sending ``GET /readyz`` every 20 ms: when it first fails (503, refused, or no
  answer within 1 s), when a new connection first fails, when the background hears its
  stop (per worker), the request's status, when the process exits;
* ``sse``: one server-sent-event client connected, its stream never ending by itself
  (``sse``) or watching its request signal (``sse-watching``, wrapped only): when the
  process exits (``null``: still running after ``--cap`` seconds, then SIGKILLed).

Every process runs in a process group of its own, bound to 127.0.0.1 on a free port,
and is killed by that group at the end.  Times are seconds after SIGTERM.  The result
JSON (``benchmarks/results/asgi_deployments.json``) records the conditions and every
run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "asgi_deployments.json"
SERVERS = ("uvicorn", "hypercorn-asyncio", "hypercorn-trio", "gunicorn")
DRAIN_DELAY = 1.0
GRACE = 10.0
SLOW = 2.0

PLAIN_APP = """
import os, sys, time
from contextlib import asynccontextmanager
import anyio
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route
from stopscope import StopSignal, TaskScope

def say(what):
    sys.stdout.write(f"{what} {os.getpid()} {time.time():.3f}\\n")
    sys.stdout.flush()

async def background(signal: StopSignal) -> None:
    await signal.wait()
    say("heard")

@asynccontextmanager
async def lifespan(app):
    async with TaskScope(grace=10) as scope:
        scope.start_soon(background, scope.signal)
        yield
        scope.stop("lifespan shutdown")

async def readyz(request):
    return PlainTextResponse("ready\\n")

async def slow(request):
    say("slow")
    await anyio.sleep(float(request.query_params["seconds"]))
    return PlainTextResponse("ok\\n")

async def events(request):
    async def stream():
        say("sse")
        while True:
            yield "data: tick\\n\\n"
            await anyio.sleep(0.2)
    return StreamingResponse(stream(), media_type="text/event-stream")

routes = [Route("/readyz", readyz), Route("/slow", slow), Route("/events", events)]
app = Starlette(routes=routes, lifespan=lifespan)
"""

WRAPPED_APP = """
import os
from contextlib import asynccontextmanager
from starlette.applications import Starlette
from starlette.responses import StreamingResponse
from starlette.routing import Route
from stopscope.asgi import GracefulApp
from stopscope.servers import request_signal
from plain_app import background, events, say, slow

async def events_watching(request):
    stop = request_signal(request)
    async def stream():
        say("sse")
        async for _ in stop.every(0.2):
            yield "data: tick\\n\\n"
    return StreamingResponse(stream(), media_type="text/event-stream")

@asynccontextmanager
async def lifespan(app):
    graceful = GracefulApp.current()
    graceful.start_soon(background, graceful.signal)
    yield

watching = os.environ.get("SSE") == "watching"
routes = [Route("/slow", slow), Route("/events", events_watching if watching else events)]
app = GracefulApp(
    Starlette(routes=routes, lifespan=lifespan),
    drain_delay=float(os.environ["DRAIN_DELAY"]),
    grace=float(os.environ["GRACE"]),
)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def command(server: str, module: str, port: int) -> list[str]:
    py = sys.executable
    app = f"{module}:app"
    if server == "uvicorn":
        return [py, "-m", "uvicorn", app, "--port", str(port), "--no-access-log"]
    if server.startswith("hypercorn"):
        worker = server.split("-")[1]
        return [py, "-m", "hypercorn", app, "--bind", f"127.0.0.1:{port}", "-k", worker]
    return [
        *(py, "-m", "gunicorn", app, "-k", "uvicorn_worker.UvicornWorker", "-w", "2"),
        *("-b", f"127.0.0.1:{port}", "--no-control-socket"),
    ]


def run(server: str, app: str, scenario: str, workdir: Path, cap: float) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    module = "plain_app" if app == "plain" else "wrapped_app"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(workdir)]),
        "DRAIN_DELAY": str(DRAIN_DELAY),
        "GRACE": str(GRACE),
        "SSE": "watching" if scenario == "sse-watching" else "",
    }
    proc = subprocess.Popen(
        command(server, module, port),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=workdir,
        start_new_session=True,
    )
    lines: queue.Queue[list[str]] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout

    def read() -> None:
        for line in stdout:
            lines.put(line.split())

    threading.Thread(target=read, daemon=True).start()
    result: dict[str, Any] = {"server": server, "app": app, "scenario": scenario}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(0.05)
        time.sleep(1.0)  # every worker up
        client: dict[str, Any] = {}

        def request() -> None:
            try:
                if scenario == "slow":
                    client["status"] = httpx.get(
                        f"{url}/slow?seconds={SLOW}", timeout=cap
                    ).status_code
                else:
                    with httpx.stream("GET", url + "/events", timeout=cap) as response:
                        for _ in response.iter_lines():
                            pass
                    client["status"] = "stream ended"
            except httpx.HTTPError as exc:
                client["status"] = type(exc).__name__
            client["at"] = time.monotonic()

        thread = threading.Thread(target=request, daemon=True)
        thread.start()
        while lines.get(timeout=30)[0] not in ("slow", "sse"):
            pass
        t0 = time.monotonic()
        wall0 = time.time()
        os.kill(proc.pid, signal.SIGTERM)
        not_ready: tuple[float, int | str] | None = None
        failed: tuple[float, str] | None = None
        while proc.poll() is None and time.monotonic() - t0 < cap:
            try:
                probe = httpx.get(url + "/readyz", timeout=1)
                if probe.status_code != 200 and not_ready is None:
                    not_ready = (time.monotonic() - t0, probe.status_code)
            except httpx.HTTPError as exc:
                at = time.monotonic() - t0
                if not_ready is None:
                    not_ready = (at, type(exc).__name__)
                if failed is None:
                    failed = (at, type(exc).__name__)
            if not_ready is not None and failed is not None:
                break
            time.sleep(0.02)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.1, cap - (time.monotonic() - t0)))
        exited = proc.poll()
        result["exit"] = None if exited is None else round(time.monotonic() - t0, 3)
        result["returncode"] = exited
        heard = []
        while True:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                break
            if line[0] == "heard":
                heard.append(round(float(line[2]) - wall0, 3))
        thread.join(1)
        result["readyz_fails"] = not_ready and [round(not_ready[0], 3), not_ready[1]]
        result["connections_fail"] = failed and [round(failed[0], 3), failed[1]]
        result["background_heard"] = sorted(heard)
        result["client"] = client.get("status")
        result["client_done"] = "at" in client and round(client["at"] - t0, 3)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group we started
        proc.wait()
        stdout.close()
    return result


def versions() -> dict[str, str]:
    found = {}
    for name in (
        "stopscope",
        "uvicorn",
        "hypercorn",
        "gunicorn",
        "uvicorn-worker",
        "starlette",
        "anyio",
        "trio",
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--cap", type=float, default=40.0, help="seconds to wait for an exit")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    servers = args.servers.split(",")
    unknown = set(servers) - set(SERVERS)
    if unknown:
        parser.error(f"unknown servers {sorted(unknown)}; choose among {SERVERS}")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "plain_app.py").write_text(PLAIN_APP)
        (workdir / "wrapped_app.py").write_text(WRAPPED_APP)
        for round_ in range(args.rounds):
            for server in servers:
                for app, scenario in (
                    ("plain", "slow"),
                    ("wrapped", "slow"),
                    ("plain", "sse"),
                    ("wrapped", "sse"),
                    ("wrapped", "sse-watching"),
                ):
                    result = run(server, app, scenario, workdir, args.cap)
                    result["round"] = round_
                    print(json.dumps(result), flush=True)
                    runs.append(result)
    report = {
        "schema": 1,
        "meta": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "versions": versions(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "config": {"drain_delay": DRAIN_DELAY, "grace": GRACE, "slow": SLOW, "cap": args.cap},
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
