#!/usr/bin/env python3
"""How long does a server take to exit after SIGTERM with thousands of open WebSockets
or server-sent-event streams, plainly and through stopscope, and what do the clients see?

    pip install -e '.[uvicorn,hypercorn,trio]' uvloop
    python benchmarks/many_connections.py                 # the committed results
    python benchmarks/many_connections.py --quick         # ~1 min, no file written
    python benchmarks/many_connections.py --ns 1000 --servers uvicorn --runs 1

One raw ASGI app (no framework, so that the server and the library are what is
measured) serves ``/ws``, a WebSocket that echoes and never ends by itself, and
``/sse``, a ``text/event-stream`` that sends one event every ``--sse-interval`` seconds
and never watches the stop (the common naive generator).  It runs under each server's
own command, plainly (``uvicorn mc_app:app``, ``hypercorn mc_app:app -k asyncio`` and
``-k trio``) and wrapped (``mc_app:graceful``, a ``stopscope.asgi.GracefulApp``), and,
for uvicorn and hypercorn/trio, as a server member in a ``stopscope.run()`` program
(``start_uvicorn`` / ``start_hypercorn``).  The same budget everywhere: the plain
servers get ``--timeout-graceful-shutdown`` / ``--graceful-timeout`` equal to the
stopscope grace (``--grace``), and the drain delay is 0 (no balancer here).

Each run: the server starts (its process's ``RLIMIT_NOFILE`` raised to the hard
limit), one or more client processes (the same) open N connections through raw
sockets (the WebSocket handshake done by hand; the SSE response read as HTTP/1.1
chunks), and once every connection is established SIGTERM goes to the server's
process.  Measured: the seconds from SIGTERM to the process's exit (through a pidfd,
so to the millisecond), what each client connection saw (a WebSocket close frame and
its code, or the connection ending without one: ``cut``; an SSE stream ending with its
last chunk, with or without a ``retry:`` field, or ``cut`` before it), when it saw it,
and the tracebacks the server logged.  Runs are interleaved (every configuration once
per round) and summarized as medians over the rounds.  Everything binds to 127.0.0.1
and every wait is bounded; processes are killed by the process group this script
started.  The result JSON (``benchmarks/results/many_connections.json``) records the
conditions, every run and the summary.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import random
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import median, quantile, render_table, run_metadata

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "many_connections.json"
SERVERS = ("uvicorn", "hypercorn-asyncio", "hypercorn-trio")
VARIANTS = ("plain", "GracefulApp", "member")
KINDS = ("ws", "sse")
#: seconds; bounds on waits, never measurements
START_BOUND = 60.0

APP = '''
import os
import anyio

INTERVAL = float(os.environ["MC_SSE_INTERVAL"])


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": message.get("text") or ""})
    if scope["path"] == "/sse":
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        n = 0
        while True:  # never watches the stop: the common naive generator
            body = f"id: {n}\\ndata: tick {n}\\n\\n".encode()
            await send({"type": "http.response.body", "body": body, "more_body": True})
            n += 1
            await anyio.sleep(INTERVAL)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok\\n"})


def _graceful():
    from stopscope.asgi import GracefulApp

    return GracefulApp(app, drain_delay=0, grace=float(os.environ["MC_GRACE"]))


if os.environ.get("MC_WRAP"):
    graceful = _graceful()
'''

MEMBER = '''
import sys
import stopscope
from stopscope import TaskScope
from stopscope.servers import start_hypercorn, start_uvicorn
from mc_app import app

server, port, grace = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])


async def main(signal):
    async with TaskScope(signal=signal, grace=grace, name="service") as scope:
        if server == "uvicorn":
            await start_uvicorn(scope, app, port=port, log_level="warning",
                                access_log=False, backlog=4096)
        else:
            await start_hypercorn(scope, app, port=port, backlog=4096)
        await signal.wait()


stopscope.run(main, backend="asyncio" if server == "uvicorn" else "trio", grace=grace + 5)
'''


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit, in this process; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------- client


class _Conn(asyncio.Protocol):
    """One raw connection: a WebSocket (handshake by hand, close frames parsed) or an
    SSE stream (HTTP/1.1 chunks parsed).  ``outcome`` once it has ended."""

    def __init__(self, kind: str, port: int, ready: asyncio.Future[bool]) -> None:
        self.kind = kind
        self.port = port
        self.ready = ready
        self.buf = bytearray()
        self.upgraded = False
        self.transport: asyncio.Transport | None = None
        self.outcome: str | None = None
        self.ended_at: float | None = None
        self.retry = False  # an SSE ``retry:`` field was seen
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.kind == "ws":
            key = base64.b64encode(os.urandom(16)).decode()
            request = (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            )
        else:
            request = (
                f"GET /sse HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                "Accept: text/event-stream\r\n\r\n"
            )
        transport.write(request.encode())

    def end(self, outcome: str) -> None:
        if self.outcome is None:
            self.outcome = outcome
            self.ended_at = time.time()
        if not self.ready.done():
            self.ready.set_result(False)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            status = bytes(self.buf[: self.buf.find(b"\r\n")]).split()
            expected = b"101" if self.kind == "ws" else b"200"
            if len(status) < 2 or status[1] != expected:
                self.end(f"refused {status[1].decode() if len(status) > 1 else '?'}")
                assert self.transport is not None
                self.transport.close()
                return
            del self.buf[: head_end + 4]
            self.upgraded = True
            if self.kind == "ws" and not self.ready.done():
                self.ready.set_result(True)
        if self.kind == "ws":
            self._frames()
        else:
            self._chunks()

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        assert self.transport is not None
        assert len(payload) < 126
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.transport.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def _frames(self) -> None:
        while len(self.buf) >= 2:
            opcode = self.buf[0] & 0x0F
            length = self.buf[1] & 0x7F
            at = 2
            if length == 126:
                if len(self.buf) < 4:
                    return
                length = struct.unpack("!H", self.buf[2:4])[0]
                at = 4
            elif length == 127:
                if len(self.buf) < 10:
                    return
                length = struct.unpack("!Q", self.buf[2:10])[0]
                at = 10
            if len(self.buf) < at + length:
                return
            payload = bytes(self.buf[at : at + length])
            del self.buf[: at + length]
            if opcode == 0x9:  # ping
                self._send_frame(0xA, payload)
            elif opcode == 0x8:  # close: answer it, as a client does, and wait for EOF
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.end(f"close {code}")
                with contextlib.suppress(Exception):
                    self._send_frame(0x8, payload[:2])

    def _chunks(self) -> None:
        while True:
            line_end = self.buf.find(b"\r\n")
            if line_end < 0:
                return
            size = int(bytes(self.buf[:line_end]).split(b";")[0] or b"0", 16)
            if size == 0:
                self.end("end, retry" if self.retry else "end")
                del self.buf[:]
                return
            if len(self.buf) < line_end + 2 + size + 2:
                return
            chunk = bytes(self.buf[line_end + 2 : line_end + 2 + size])
            del self.buf[: line_end + 2 + size + 2]
            text = self.tail + chunk
            if b"retry:" in text:
                self.retry = True
            self.tail = text[-8:]
            if not self.ready.done():
                self.ready.set_result(True)

    def connection_lost(self, exc: Exception | None) -> None:
        self.end("cut" if exc is None else f"cut ({type(exc).__name__})")


async def _client(kind: str, port: int, count: int, concurrency: int) -> None:
    loop = asyncio.get_running_loop()
    conns: list[_Conn] = []
    gate = asyncio.Semaphore(concurrency)
    failed: dict[str, int] = {}

    async def open_one() -> None:
        for attempt in range(5):
            async with gate:
                ready: asyncio.Future[bool] = loop.create_future()
                conn = _Conn(kind, port, ready)
                try:
                    await loop.create_connection(lambda c=conn: c, "127.0.0.1", port)
                    ok = await asyncio.wait_for(ready, 30)
                except (OSError, asyncio.TimeoutError) as exc:
                    why = type(exc).__name__
                    failed[why] = failed.get(why, 0) + 1
                    if conn.transport is not None:
                        conn.transport.abort()
                    await asyncio.sleep(0.1 * (attempt + 1))
                    continue
            if ok:
                conns.append(conn)
                return
            failed[conn.outcome or "?"] = failed.get(conn.outcome or "?", 0) + 1
        return

    await asyncio.gather(*(open_one() for _ in range(count)))
    sys.stdout.write(json.dumps({"connected": len(conns), "failed_attempts": failed}) + "\n")
    sys.stdout.flush()
    # until the driver asks for the report (a line on stdin, or EOF)
    await loop.run_in_executor(None, sys.stdin.readline)
    outcomes: dict[str, int] = {}
    ends = []
    for conn in conns:
        outcome = conn.outcome or "still open"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if conn.ended_at is not None:
            ends.append(conn.ended_at)
        if conn.transport is not None:
            conn.transport.abort()
    sys.stdout.write(json.dumps({"outcomes": outcomes, "ends": ends}) + "\n")
    sys.stdout.flush()


def client_main(argv: list[str]) -> None:
    kind, port, count, concurrency = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    raise_nofile()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(_client(kind, port, count, concurrency))


# --------------------------------------------------------------------------- server


def server_command(server: str, variant: str, port: int, grace: float) -> list[str]:
    py = sys.executable
    if variant == "member":
        return [py, "mc_member.py", server.split("-")[0], str(port), str(grace)]
    target = "mc_app:graceful" if variant == "GracefulApp" else "mc_app:app"
    if server == "uvicorn":
        return [
            *(py, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port)),
            *("--no-access-log", "--log-level", "warning", "--backlog", "4096"),
            *("--timeout-graceful-shutdown", f"{grace:g}"),
        ]
    worker = server.split("-")[1]
    return [
        *(py, "-m", "hypercorn", target, "--bind", f"127.0.0.1:{port}", "-k", worker),
        # hypercorn's command line takes whole seconds
        *("--backlog", "4096", "--graceful-timeout", str(math.ceil(grace))),
    ]


def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait for ``proc`` to exit, to the millisecond (a pidfd), at most ``timeout`` s."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfd: Popen's own polling
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if not poller.poll(timeout * 1000):
            return False
    finally:
        os.close(fd)
    proc.wait()
    return True


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # the group we started
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def _ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_BOUND
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited at start ({proc.returncode})")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            if s.recv(64).startswith(b"HTTP/1.1 200"):
                return
        time.sleep(0.05)
    raise RuntimeError("server did not start")


def _lines(stream: Any, out: list[dict[str, Any]], cond: threading.Condition) -> None:
    for line in stream:
        with cond:
            out.append(json.loads(line))
            cond.notify_all()


def one_run(
    server: str, variant: str, kind: str, n: int, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(args.src.get(kind, ROOT / "src")), str(workdir)]),
        "MC_SSE_INTERVAL": str(args.sse_interval),
        "MC_GRACE": str(args.grace),
        "MC_WRAP": "1" if variant == "GracefulApp" else "",
    }
    log = workdir / f"server-{server}-{variant}-{kind}-{n}.log"
    result: dict[str, Any] = {"server": server, "variant": variant, "kind": kind, "n": n}
    clients: list[subprocess.Popen[str]] = []
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            server_command(server, variant, port, args.grace),
            stdout=log_file,
            stderr=log_file,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=workdir,
            start_new_session=True,
            preexec_fn=raise_nofile,  # the only way to raise a child's rlimit before exec
        )
    try:
        _ready(port, proc)
        parts = max(1, math.ceil(n / args.per_client))
        replies: list[list[dict[str, Any]]] = [[] for _ in range(parts)]
        cond = threading.Condition()
        for i in range(parts):
            count = n // parts + (1 if i < n % parts else 0)
            client = subprocess.Popen(
                [sys.executable, __file__, "_client", kind, str(port), str(count),
                 str(args.concurrency)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            clients.append(client)
            threading.Thread(
                target=_lines, args=(client.stdout, replies[i], cond), daemon=True
            ).start()
        connect_bound = START_BOUND + n / 50
        began = time.monotonic()
        with cond:
            if not cond.wait_for(lambda: all(replies), connect_bound):
                raise RuntimeError(f"clients did not connect within {connect_bound:g} s")
        result["connect_seconds"] = round(time.monotonic() - began, 2)
        result["connected"] = sum(r[0]["connected"] for r in replies)
        failed: dict[str, int] = {}
        for r in replies:
            for why, count in r[0]["failed_attempts"].items():
                failed[why] = failed.get(why, 0) + count
        result["failed_attempts"] = failed
        time.sleep(args.settle)
        wall0 = time.time()
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        exited = _wait_exit(proc, args.grace + args.cap)
        result["exit_seconds"] = round(time.monotonic() - t0, 3) if exited else None
        if not exited:
            _kill_group(proc)
        result["returncode"] = proc.returncode
        time.sleep(0.5)  # the last connection ends reach the clients
        for client in clients:
            assert client.stdin is not None
            client.stdin.write("report\n")
            client.stdin.flush()
        with cond:
            cond.wait_for(lambda: all(len(r) >= 2 for r in replies), 60)
        outcomes: dict[str, int] = {}
        ends: list[float] = []
        for r in replies:
            for outcome, count in r[1]["outcomes"].items():
                outcomes[outcome] = outcomes.get(outcome, 0) + count
            ends.extend(at - wall0 for at in r[1]["ends"])
        ends.sort()
        result["client_outcomes"] = dict(sorted(outcomes.items()))
        result["client_end_seconds"] = {
            "p50": round(quantile(ends, 0.5), 3) if ends else None,
            "p99": round(quantile(ends, 0.99), 3) if ends else None,
            "max": round(ends[-1], 3) if ends else None,
        }
    finally:
        _kill_group(proc)
        for client in clients:
            _kill_group(client)
    text = log.read_text(errors="replace")
    result["tracebacks"] = text.count("Traceback (most recent call last)")
    result["log_lines"] = len(text.splitlines())
    return result


# --------------------------------------------------------------------------- driver


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys: list[tuple[str, str, str, int]] = []
    for run in runs:
        key = (run["kind"], run["n"], run["server"], run["variant"])
        if key not in keys:
            keys.append(key)
    out = []
    for kind, n, server, variant in sorted(
        keys, key=lambda k: (k[0], k[1], SERVERS.index(k[2]), VARIANTS.index(k[3]))
    ):
        mine = [
            r
            for r in runs
            if (r["kind"], r["n"], r["server"], r["variant"]) == (kind, n, server, variant)
        ]
        exits = [r["exit_seconds"] for r in mine if r.get("exit_seconds") is not None]
        outcomes: dict[str, int] = {}
        for r in mine:
            for outcome, count in r.get("client_outcomes", {}).items():
                outcomes[outcome] = outcomes.get(outcome, 0) + count
        ends = [r["client_end_seconds"]["max"] for r in mine if r.get("client_end_seconds")]
        out.append(
            {
                "kind": kind,
                "n": n,
                "server": server,
                "variant": variant,
                "runs": len(mine),
                "errors": [r["error"] for r in mine if "error" in r],
                "connected_min": min((r.get("connected", 0) for r in mine), default=0),
                "exit_seconds_median": round(median(exits), 3) if exits else None,
                "exit_seconds": [r.get("exit_seconds") for r in mine],
                "exit_status": sorted({r.get("returncode") for r in mine}, key=str),
                "client_outcomes_total": dict(sorted(outcomes.items())),
                "last_client_end_seconds_median": (
                    round(median([e for e in ends if e is not None]), 3)
                    if any(e is not None for e in ends)
                    else None
                ),
                "tracebacks_median": median([r.get("tracebacks", 0) for r in mine]),
            }
        )
    return out


def table(summary: list[dict[str, Any]]) -> str:
    header = ["kind", "N", "server", "variant", "exit s (median)", "clients saw", "tracebacks"]
    rows = []
    for s in summary:
        seen = ", ".join(f"{k}: {v}" for k, v in s["client_outcomes_total"].items())
        exit_s = "not within cap" if s["exit_seconds_median"] is None else (
            f"{s['exit_seconds_median']:.2f}"
        )
        rows.append(
            [s["kind"], str(s["n"]), s["server"], s["variant"], exit_s, seen,
             f"{s['tracebacks_median']:g}"]
        )
    return render_table(header, rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="N=50, one round, grace 2 s, no file written (unless --out)")
    parser.add_argument("--ns", default="1000,10000", help="connection counts, comma-separated")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--runs", type=int, default=3, help="rounds (medians over them)")
    parser.add_argument("--grace", type=float, default=5.0)
    parser.add_argument("--sse-interval", type=float, default=5.0)
    parser.add_argument("--per-client", type=int, default=5000,
                        help="connections per client process")
    parser.add_argument("--concurrency", type=int, default=200,
                        help="handshakes in flight per client process")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds between the last connection and SIGTERM")
    parser.add_argument("--cap", type=float, default=30.0,
                        help="seconds past the grace before the server is SIGKILLed")
    parser.add_argument(
        "--src",
        action="append",
        default=[],
        metavar="KIND=PATH",
        help="the stopscope source tree (a src folder) the servers import for one kind "
        "(default: this checkout's src), e.g. sse=/tmp/other/src; the JSON records it",
    )
    parser.add_argument("--note", default=None, help="recorded in the JSON's meta")
    parser.add_argument(
        "--combine",
        nargs="+",
        type=Path,
        default=None,
        metavar="JSON",
        help="measure nothing: join these result files' runs into one file (--out), the "
        "summary recomputed and each file's meta and config kept under 'parts'",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    sources = {}
    for item in args.src:
        kind, _, path = item.partition("=")
        if kind not in KINDS or not (Path(path) / "stopscope").is_dir():
            parser.error(f"--src {item!r}: want KIND=PATH, PATH a folder holding stopscope/")
        sources[kind] = Path(path).resolve()
    args.src = sources
    if args.quick:
        args.ns, args.runs, args.grace = "50", 1, 2.0
        args.sse_interval, args.settle, args.cap = 0.5, 0.3, 10.0
    elif args.out is None:
        args.out = RESULTS
    args.ns = [int(n) for n in args.ns.split(",")]
    for name, allowed in (("kinds", KINDS), ("servers", SERVERS), ("variants", VARIANTS)):
        chosen = getattr(args, name).split(",")
        unknown = set(chosen) - set(allowed)
        if unknown:
            parser.error(f"--{name}: unknown {sorted(unknown)}; choose among {allowed}")
        setattr(args, name, chosen)
    if args.runs < 1 or any(n < 1 for n in args.ns) or args.grace <= 0:
        parser.error("--runs, --ns and --grace must be positive")
    return args


def configurations(args: argparse.Namespace) -> list[tuple[str, str, str, int]]:
    out = []
    for n in args.ns:
        for kind in args.kinds:
            for server in args.servers:
                for variant in args.variants:
                    if variant == "member" and server == "hypercorn-asyncio":
                        continue  # the member program runs hypercorn on trio
                    out.append((server, variant, kind, n))
    return out


def combine(files: list[Path], out: Path) -> int:
    parts = [json.loads(path.read_text()) for path in files]
    runs = [run for part in parts for run in part["runs"]]
    summary = summarize(runs)
    text = table(summary)
    print(text)
    doc = {
        "schema": "stopscope-many-connections/1",
        "meta": parts[0]["meta"],
        "config": parts[0]["config"],
        "parts": [
            {"file": path.name, "meta": part["meta"], "config": part["config"]}
            for path, part in zip(files, parts, strict=True)
        ],
        "summary": summary,
        "runs": runs,
        "table": text,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.combine:
        return combine(args.combine, args.out or RESULTS)
    nofile = raise_nofile()
    if max(args.ns) + 100 > nofile:
        print(f"RLIMIT_NOFILE hard limit is {nofile}: N={max(args.ns)} does not fit",
              file=sys.stderr)
        return 2
    started = time.monotonic()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ss-mc-") as tmp:
        workdir = Path(tmp)
        (workdir / "mc_app.py").write_text(APP)
        (workdir / "mc_member.py").write_text(MEMBER)
        for round_ in range(args.runs):
            order = configurations(args)
            random.Random(round_).shuffle(order)
            for server, variant, kind, n in order:
                label = f"{kind} N={n} {server} {variant}"
                print(f"round {round_ + 1}/{args.runs}: {label} ...", file=sys.stderr, end=" ",
                      flush=True)
                try:
                    result = one_run(server, variant, kind, n, args, workdir)
                except RuntimeError as exc:
                    result = {"server": server, "variant": variant, "kind": kind, "n": n,
                              "error": str(exc)}
                result["round"] = round_
                print(json.dumps({k: result.get(k) for k in (
                    "exit_seconds", "connected", "client_outcomes", "tracebacks", "error")}),
                    file=sys.stderr, flush=True)
                runs.append(result)
    summary = summarize(runs)
    text = table(summary)
    print(text)
    meta = run_metadata(sys.argv, "quick" if args.quick else "full", ROOT)
    meta["seconds"] = round(time.monotonic() - started, 1)
    meta["rlimit_nofile"] = nofile
    meta["src"] = {kind: str(args.src.get(kind, ROOT / "src")) for kind in args.kinds}
    meta["note"] = args.note
    versions = meta["versions"]
    assert isinstance(versions, dict)
    import importlib.metadata

    for name in ("uvicorn", "hypercorn", "websockets", "wsproto", "httptools", "h11"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    config = {k: v for k, v in vars(args).items() if k != "out"}
    config["drain_delay"] = 0.0
    doc = {
        "schema": "stopscope-many-connections/1",
        "meta": meta,
        "config": config,
        "summary": summary,
        "runs": runs,
        "table": text,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1, default=str) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_client":
        client_main(sys.argv[2:])
    else:
        sys.exit(main())
