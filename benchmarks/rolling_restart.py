#!/usr/bin/env python3
"""Does a rolling restart behind a load balancer fail requests or cut WebSockets?  Each
server run plainly, through stopscope without a drain delay, and through stopscope
with readiness and a drain delay, measured in one run behind a real HAProxy.

    apt-get install haproxy                               # (or brew install haproxy)
    pip install -e '.[uvicorn,hypercorn,trio]' httpx starlette websockets
    python benchmarks/rolling_restart.py --quick          # ~2 min: one round
    python benchmarks/rolling_restart.py                  # the committed results

Each scenario: N replicas (one process each, on 127.0.0.1) behind HAProxy, which checks
``GET /readyz`` every ``--check-interval`` and takes a replica out after 2 failed checks
(in after 2 good ones).  A client sends a steady, open-loop request rate through
HAProxy (10% ``GET /slow?seconds=0.2``, the rest ``GET /``) while the replicas are
replaced one at a time, as a Kubernetes Deployment with ``maxUnavailable: 0`` would:
SIGTERM one, wait for it to exit, start its replacement on the same port, wait until
HAProxy sees it up, next.  A request fails if it gets no response or a status other
than 200.  Meanwhile ``--websockets`` clients hold a WebSocket each to ``/ws`` through
HAProxy and reconnect as soon as it closes (as browsers' reconnecting sockets do, no
back-off); the server names its process on each new connection, so every close is
recorded with its code (``cut``: the connection ended without a close frame) and every
reconnection with the replica it reached.  Everything binds to 127.0.0.1; every count
and wait is bounded.

The servers (``--servers``): ``uvicorn`` (asyncio) and ``hypercorn-trio``.  For each:

* ``plain``: the server's own command and SIGTERM handling (``uvicorn.run(app)``;
  ``hypercorn -k trio``), ``/readyz`` always 200, the same grace as the others;
* ``stopscope``: ``WebService.serve(..., drain_delay=0)`` in a ``stopscope.run()``
  program: stopscope's order and readiness, but the listener closes at once;
* ``stopscope+drain``: the same with ``drain_delay=D``: ``/readyz`` answers 503 from
  SIGTERM on, the replica keeps serving for D seconds (HAProxy takes it out
  meanwhile), then stops listening, closes its WebSockets (1001) and drains.

Each scenario runs behind two HAProxy set-ups: ``retries 0``, a balancer that does not
retry (kube-proxy, most L4 balancers: a refused connection is a failed request), and
HAProxy's default ``retries 3`` (same server, no redispatch), which hides refused
connections behind its 1 s retry delay: they show as latency instead.  The result JSON
(``benchmarks/results/rolling_restart.json``) records the conditions, every round's
counts, and the latency percentiles of the requests sent during the restart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from _harness import mann_whitney_p, run_metadata

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ("uvicorn", "hypercorn-trio")
SCENARIOS = ("plain", "stopscope", "stopscope+drain")
#: seconds; bounds on every wait (never a measurement)
START_BOUND = 30.0
STOP_BOUND = 60.0

#: every replica's app: the same routes plainly and through stopscope (whose readiness
#: middleware answers ``/readyz`` before the app's own route)
REPLICA_APP = """
import os
import anyio
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocketDisconnect

async def index(request):
    return PlainTextResponse("ok\\n")

async def slow(request):
    seconds = float(request.query_params.get("seconds", "1"))
    await anyio.sleep(seconds)
    return PlainTextResponse(f"slept {seconds:g} s\\n")

async def readyz(request):
    return PlainTextResponse("ready\\n")

async def ws(websocket):
    # a chat-like socket that does not watch the stop: the server closes it
    await websocket.accept()
    await websocket.send_text(f"replica {os.getpid()}")
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        pass

routes = [Route("/", index), Route("/slow", slow), Route("/readyz", readyz),
          WebSocketRoute("/ws", ws)]
app = Starlette(routes=routes)
"""

#: the plain uvicorn replica: its own SIGTERM handling
PLAIN_UVICORN = """
import sys
import uvicorn
from rr_app import app

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            timeout_graceful_shutdown=float(sys.argv[2]))
"""

#: the stopscope replica: a WebService in a stopscope.run() program
STOPSCOPE_REPLICA = """
import sys
import stopscope
from stopscope.servers import WebService
from rr_app import app

server, backend, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
delay, grace = float(sys.argv[4]), float(sys.argv[5])

async def main(signal):
    options = {"log_config": None, "access_log": False} if server == "uvicorn" else {}
    async with WebService(signal=signal, grace=grace, name="replica") as service:
        await service.serve(app, server=server, host="127.0.0.1", port=port,
                            drain_delay=delay, **options)
        await signal.wait()

stopscope.run(main, backend=backend)
"""

HAPROXY_CFG = """\
global
    maxconn 4096
    stats socket {dir}/haproxy.sock mode 600 level admin

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout tunnel 1h
    retries {retries}
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter {inter}ms fall 2 rise 2

frontend web
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance roundrobin
{servers}
"""


@dataclass
class Sample:
    sent: float  # on time.monotonic()
    latency: float
    ok: bool
    what: str  # "200", "503", or the error's class name


@dataclass
class Sockets:
    """What the WebSocket clients saw in one round."""

    #: (replica pid, close code or "cut"), for every close the client did not ask for
    closes: list[tuple[str, str]] = field(default_factory=list)
    #: (pid of the replica that closed, pid reached, seconds from the close)
    reconnects: list[tuple[str, str, float]] = field(default_factory=list)
    #: failed (re)connection attempts, by kind
    refused: dict[str, int] = field(default_factory=dict)
    #: connections open when the round ended
    open_at_end: int = 0

    def summary(self) -> dict[str, Any]:
        codes: dict[str, int] = {}
        for _pid, code in self.closes:
            codes[code] = codes.get(code, 0) + 1
        return {
            "closes": len(self.closes),
            "close_codes": dict(sorted(codes.items())),
            "cut": codes.get("cut", 0),
            "reconnects": len(self.reconnects),
            "reconnected_elsewhere": sum(1 for old, new, _ in self.reconnects if old != new),
            "reconnect_ms": percentiles(sorted(gap for *_, gap in self.reconnects)),
            "refused_attempts": dict(sorted(self.refused.items())),
            "open_at_end": self.open_at_end,
        }


@dataclass
class Round:
    server: str
    scenario: str
    retries: int
    round: int
    restart_started: float
    restart_ended: float
    samples: list[Sample] = field(default_factory=list)
    replica_exits: list[int | None] = field(default_factory=list)
    sockets: Sockets = field(default_factory=Sockets)

    def during(self) -> list[Sample]:
        """Requests sent from the first SIGTERM until the last replacement was up."""
        return [s for s in self.samples if self.restart_started <= s.sent <= self.restart_ended]

    def summary(self) -> dict[str, Any]:
        during = self.during()
        failures: dict[str, int] = {}
        for sample in self.samples:
            if not sample.ok:
                failures[sample.what] = failures.get(sample.what, 0) + 1
        latencies = sorted(s.latency for s in during if s.ok)
        return {
            "server": self.server,
            "scenario": self.scenario,
            "lb_retries": self.retries,
            "round": self.round,
            "requests": len(self.samples),
            "failed": sum(1 for s in self.samples if not s.ok),
            "requests_during_restart": len(during),
            "failed_during_restart": sum(1 for s in during if not s.ok),
            "failures_by_kind": failures,
            "restart_seconds": round(self.restart_ended - self.restart_started, 3),
            "latency_ms_during_restart": percentiles(latencies),
            "replica_exit_status": self.replica_exits,
            "websockets": self.sockets.summary(),
        }


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    def pick(q: float) -> float | None:
        if not values:
            return None
        index = min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))
        return round(values[index] * 1000, 2)

    return {"p50": pick(0.50), "p90": pick(0.90), "p99": pick(0.99), "max": pick(1.0)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ------------------------------------------------------------------------ processes


class Replica:
    def __init__(
        self, server: str, scenario: str, port: int, args: argparse.Namespace, log: Path
    ) -> None:
        self.server = server
        self.scenario = scenario
        self.port = port
        self.args = args
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    def command(self) -> list[str]:
        py, grace = sys.executable, str(self.args.grace)
        if self.scenario == "plain" and self.server == "uvicorn":
            return [py, "rr_plain_uvicorn.py", str(self.port), grace]
        if self.scenario == "plain":
            return [
                *(py, "-m", "hypercorn", "rr_app:app", "-k", "trio"),
                # hypercorn's command line takes whole seconds
                *("--bind", f"127.0.0.1:{self.port}"),
                *("--graceful-timeout", str(math.ceil(self.args.grace))),
            ]
        delay = self.args.drain_delay if self.scenario == "stopscope+drain" else 0.0
        server, backend = ("uvicorn", "asyncio") if self.server == "uvicorn" else (
            "hypercorn",
            "trio",
        )
        return [py, "rr_stopscope.py", server, backend, str(self.port), str(delay), grace]

    async def start(self) -> None:
        here = str(self.log.parent)  # the replica's programs were written there
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.command(),
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=here,
                env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), here])},
            )
        deadline = time.monotonic() + START_BOUND
        async with httpx.AsyncClient() as client:
            while True:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"replica on port {self.port} exited; see {self.log}")
                with contextlib.suppress(httpx.HTTPError):
                    response = await client.get(f"http://127.0.0.1:{self.port}/readyz")
                    if response.status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"replica on port {self.port} did not start")
                await asyncio.sleep(0.05)

    async def stop(self) -> int | None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), STOP_BOUND)
        except asyncio.TimeoutError:
            self.kill()
            return None

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)


class HAProxy:
    def __init__(self, directory: Path, ports: list[int], inter_ms: int, retries: int) -> None:
        self.directory = directory
        self.port = free_port()
        servers = "\n".join(
            f"    server r{i} 127.0.0.1:{port} check" for i, port in enumerate(ports)
        )
        self.cfg = directory / "haproxy.cfg"
        self.cfg.write_text(
            HAPROXY_CFG.format(
                dir=directory, inter=inter_ms, port=self.port, servers=servers, retries=retries
            )
        )
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        binary = shutil.which("haproxy") or "haproxy"
        with (self.directory / "haproxy.log").open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                binary,
                "-db",
                "-f",
                str(self.cfg),
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    async def status(self) -> dict[str, str]:
        """Server name -> HAProxy's status (UP, DOWN, ...), from the stats socket."""
        reader, writer = await asyncio.open_unix_connection(str(self.directory / "haproxy.sock"))
        writer.write(b"show stat\n")
        await writer.drain()
        data = await reader.read()
        writer.close()
        out = {}
        lines = data.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == "replicas" and row.get("svname", "").startswith("r"):
                out[row["svname"]] = row["status"]
        return out

    async def wait_all_up(self, count: int) -> None:
        deadline = time.monotonic() + START_BOUND
        while True:
            with contextlib.suppress(OSError, IndexError):
                status = await self.status()
                if len(status) == count and all(s == "UP" for s in status.values()):
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("HAProxy did not see every replica up")
            await asyncio.sleep(0.05)

    async def wait_down(self, name: str) -> None:
        deadline = time.monotonic() + START_BOUND
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, IndexError):
                if (await self.status()).get(name, "").startswith("DOWN"):
                    return
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)


# --------------------------------------------------------------------------- client


async def load(url: str, rate: float, until: asyncio.Event, cap: int, out: list[Sample]) -> None:
    """Open loop: one request every 1/rate s, each in its own task, until told or cap."""
    rng = random.Random(1)
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    async with httpx.AsyncClient(limits=limits, timeout=10.0) as client:

        async def one(path: str) -> None:
            sent = time.monotonic()
            try:
                response = await client.get(url + path)
                ok, what = response.status_code == 200, str(response.status_code)
            except httpx.HTTPError as exc:
                ok, what = False, type(exc).__name__
            out.append(Sample(sent, time.monotonic() - sent, ok, what))

        tasks = set()
        start = time.monotonic()
        for n in range(cap):
            if until.is_set():
                break
            path = "/slow?seconds=0.2" if rng.random() < 0.1 else "/"
            task = asyncio.create_task(one(path))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(max(0.0, start + (n + 1) / rate - time.monotonic()))
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_BOUND)


async def socket_client(url: str, until: asyncio.Event, out: Sockets) -> None:
    """One WebSocket through the balancer, reopened as soon as it closes, until told."""
    import websockets
    from websockets.asyncio.client import connect

    closed_by: str | None = None  # the replica whose close we are reconnecting after
    closed_at = 0.0
    while not until.is_set():
        try:
            async with connect(url, proxy=None, ping_interval=None, open_timeout=5) as ws:
                hello = await ws.recv()
                pid = str(hello).split()[-1]
                if closed_by is not None:
                    out.reconnects.append((closed_by, pid, time.monotonic() - closed_at))
                    closed_by = None
                out.open_at_end += 1
                try:
                    stop = asyncio.ensure_future(until.wait())
                    recv = asyncio.ensure_future(ws.wait_closed())
                    await asyncio.wait({stop, recv}, return_when=asyncio.FIRST_COMPLETED)
                    stop.cancel()
                    recv.cancel()
                finally:
                    out.open_at_end -= 1
                if until.is_set() and ws.protocol.close_rcvd is None:
                    return  # our own end of the round: not the server's close
                received = ws.protocol.close_rcvd
                out.closes.append((pid, "cut" if received is None else str(received.code)))
                closed_by, closed_at = pid, time.monotonic()
        except (OSError, asyncio.TimeoutError, websockets.WebSocketException) as exc:
            what = type(exc).__name__
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status is not None:
                what = f"{what} {status}"
            out.refused[what] = out.refused.get(what, 0) + 1
            await asyncio.sleep(0.05)


# ------------------------------------------------------------------------ scenarios


@contextlib.asynccontextmanager
async def cluster(
    server: str, scenario: str, retries: int, args: argparse.Namespace, directory: Path
) -> AsyncIterator[tuple[HAProxy, list[Replica]]]:
    (directory / "rr_app.py").write_text(REPLICA_APP)
    (directory / "rr_plain_uvicorn.py").write_text(PLAIN_UVICORN)
    (directory / "rr_stopscope.py").write_text(STOPSCOPE_REPLICA)
    ports = [free_port() for _ in range(args.replicas)]
    replicas = [
        Replica(server, scenario, port, args, directory / f"replica{i}.log")
        for i, port in enumerate(ports)
    ]
    proxy = HAProxy(directory, ports, args.check_interval_ms, retries)
    try:
        await asyncio.gather(*(r.start() for r in replicas))
        await proxy.start()
        await proxy.wait_all_up(len(replicas))
        yield proxy, replicas
    finally:
        proxy.stop()
        for replica in replicas:
            replica.kill()
        if proxy.proc is not None:
            await proxy.proc.wait()
        for replica in replicas:
            if replica.proc is not None:
                await replica.proc.wait()


async def one_round(
    server: str, scenario: str, retries: int, number: int, args: argparse.Namespace
) -> Round:
    with tempfile.TemporaryDirectory(prefix="ss-rr-") as name:
        directory = Path(name)
        async with cluster(server, scenario, retries, args, directory) as (proxy, replicas):
            samples: list[Sample] = []
            sockets = Sockets()
            done = asyncio.Event()
            cap = int(args.rate * (args.warmup + args.replicas * (args.grace + 10) + 5))
            client = asyncio.create_task(
                load(f"http://127.0.0.1:{proxy.port}", args.rate, done, cap, samples)
            )
            holders = [
                asyncio.create_task(socket_client(f"ws://127.0.0.1:{proxy.port}/ws", done, sockets))
                for _ in range(args.websockets)
            ]
            await asyncio.sleep(args.warmup)
            began = time.monotonic()
            exits = []
            for i, replica in enumerate(replicas):
                exits.append(await replica.stop())  # SIGTERM, wait for its exit
                await proxy.wait_down(f"r{i}")  # as a new pod gets a new address
                fresh = Replica(server, scenario, replica.port, args, replica.log)
                replicas[i] = fresh
                await fresh.start()
                await proxy.wait_all_up(len(replicas))  # the rollout waits for readiness
            ended = time.monotonic()
            await asyncio.sleep(args.cooldown)
            done.set()
            await client
            await asyncio.wait(holders, timeout=STOP_BOUND)
            for replica in replicas:  # the replacements: a clean end for the next round
                await replica.stop()
        return Round(server, scenario, retries, number, began, ended, samples, exits, sockets)


def key(server: str, scenario: str, retries: int) -> str:
    return f"{server} {scenario}, retries {retries}"


def aggregate(rounds: list[Round], args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for server in args.servers:
        for retries in args.lb_retries:
            for scenario in SCENARIOS:
                mine = [
                    r
                    for r in rounds
                    if (r.server, r.scenario, r.retries) == (server, scenario, retries)
                ]
                out[key(server, scenario, retries)] = _aggregate(mine)
    return out


def _aggregate(mine: list[Round]) -> dict[str, Any]:
    during = [s for r in mine for s in r.during()]
    sockets = Sockets()
    for r in mine:
        sockets.closes += r.sockets.closes
        sockets.reconnects += r.sockets.reconnects
        sockets.open_at_end += r.sockets.open_at_end
        for what, count in r.sockets.refused.items():
            sockets.refused[what] = sockets.refused.get(what, 0) + count
    return {
        "rounds": len(mine),
        "requests": sum(len(r.samples) for r in mine),
        "failed": sum(1 for r in mine for s in r.samples if not s.ok),
        "requests_during_restart": len(during),
        "failed_during_restart": sum(1 for s in during if not s.ok),
        "failed_per_round": [sum(1 for s in r.samples if not s.ok) for r in mine],
        "latency_ms_during_restart": percentiles(sorted(s.latency for s in during if s.ok)),
        "websockets": sockets.summary(),
    }


def significance(rounds: list[Round], args: argparse.Namespace) -> dict[str, float]:
    """Mann-Whitney p of the latencies during the restart, drain against each other."""

    def latencies(server: str, scenario: str, retries: int) -> list[float]:
        return [
            s.latency
            for r in rounds
            if (r.server, r.scenario, r.retries) == (server, scenario, retries)
            for s in r.during()
            if s.ok
        ]

    out = {}
    for server in args.servers:
        for retries in args.lb_retries:
            drain = latencies(server, "stopscope+drain", retries)
            for other in ("plain", "stopscope"):
                lat = latencies(server, other, retries)
                if drain and lat:
                    name = f"{key(server, 'stopscope+drain', retries)} vs {other}"
                    out[name] = round(mann_whitney_p(drain, lat), 6)
    return out


def table(summary: dict[str, Any], args: argparse.Namespace) -> str:
    header = ("server", "scenario", "LB retries", "failed / sent during restart", "all failed")
    rows = [(*header, "p50", "p99", "max ms", "WS closes", "WS reconnected elsewhere")]
    for server in args.servers:
        for retries in args.lb_retries:
            for scenario in SCENARIOS:
                s = summary[key(server, scenario, retries)]
                lat = s["latency_ms_during_restart"]
                ws = s["websockets"]
                codes = " ".join(f"{code}:{n}" for code, n in ws["close_codes"].items())
                rows.append(
                    (
                        server,
                        scenario,
                        str(retries),
                        f"{s['failed_during_restart']} / {s['requests_during_restart']}",
                        f"{s['failed']} ({'+'.join(map(str, s['failed_per_round']))})",
                        f"{lat['p50']}",
                        f"{lat['p99']}",
                        f"{lat['max']}",
                        f"{ws['closes']} ({codes or '-'})",
                        f"{ws['reconnected_elsewhere']} / {ws['reconnects']}",
                    )
                )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


async def measure(args: argparse.Namespace) -> list[Round]:
    rounds: list[Round] = []
    runs = [
        (server, scenario, retries)
        for server in args.servers
        for scenario in SCENARIOS
        for retries in args.lb_retries
    ]
    for number in range(args.rounds):
        order = list(runs)
        random.Random(number).shuffle(order)  # interleaved: drift hits every scenario
        for server, scenario, retries in order:
            label = key(server, scenario, retries)
            print(f"round {number + 1}/{args.rounds}: {label} ...", file=sys.stderr)
            done = await one_round(server, scenario, retries, number, args)
            summary = done.summary()
            failures = json.dumps(summary["failures_by_kind"])
            print(f"  failures: {failures}; websockets: {json.dumps(summary['websockets'])}",
                  file=sys.stderr)
            rounds.append(done)
    return rounds


def main(args: argparse.Namespace) -> int:
    haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if haproxy is None:
        print("haproxy is not installed: apt-get install haproxy", file=sys.stderr)
        return 2
    os.environ["PATH"] = f"{os.path.dirname(haproxy)}{os.pathsep}{os.environ.get('PATH', '')}"
    started = time.monotonic()
    rounds = asyncio.run(measure(args))
    summary = aggregate(rounds, args)
    text = table(summary, args)
    print(text)
    meta = run_metadata(sys.argv, "quick" if args.quick else "full", ROOT)
    meta["seconds"] = round(time.monotonic() - started, 1)
    version = subprocess.run([haproxy, "-v"], capture_output=True, text=True).stdout
    meta["haproxy"] = version.splitlines()[0] if version else None
    versions = meta["versions"]
    assert isinstance(versions, dict)
    with contextlib.suppress(ImportError):
        import uvicorn

        versions["uvicorn"] = uvicorn.__version__
    for name in ("hypercorn", "websockets", "starlette"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    output = {
        "schema": "stopscope-rolling-restart/2",
        "meta": meta,
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "summary": summary,
        "latency_mann_whitney_p": significance(rounds, args),
        "rounds": [r.summary() for r in rounds],
        "table": text,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(output, indent=1, default=str) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round, no file written")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--drain-delay", type=float, default=2.0)
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("--check-interval-ms", type=int, default=200)
    parser.add_argument(
        "--lb-retries",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[0, 3],
        help="HAProxy `retries` settings to run each scenario behind (comma-separated)",
    )
    parser.add_argument(
        "--servers",
        type=lambda text: text.split(","),
        default=list(SERVERS),
        help=f"servers to run each scenario on (comma-separated, among {', '.join(SERVERS)})",
    )
    parser.add_argument(
        "--websockets", type=int, default=30, help="WebSocket clients held through the restart"
    )
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--cooldown", type=float, default=1.0)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/rolling_restart.json"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 1
        args.out = None
    unknown = set(args.servers) - set(SERVERS)
    if unknown:
        parser.error(f"--servers: unknown {sorted(unknown)}; choose among {SERVERS}")
    if args.websockets < 0:
        parser.error("--websockets must be >= 0")
    if args.replicas < 2:
        parser.error("--replicas must be at least 2")
    if args.rounds < 1 or args.rate <= 0:
        parser.error("--rounds and --rate must be positive")
    if not 0 <= args.drain_delay < args.grace:
        parser.error("need 0 <= --drain-delay < --grace")
    return args


if __name__ == "__main__":
    sys.exit(main(parse_args()))
