#!/usr/bin/env python3
"""One host, no load balancer: does SIGTERM under load fail more requests with stopscope
than with the plain server?

    pip install -e '.[uvicorn,hypercorn,trio]'
    python benchmarks/one_host.py                       # the committed results (R=20)
    python benchmarks/one_host.py --quick               # 2 runs, for a smoke test
    python benchmarks/one_host.py --servers uvicorn --runs 5

The same trivial ASGI app (``GET /`` answers ``ok``) is served, on each server, three
ways, all with no drain delay (nothing would take the host out of rotation):

* ``plain``: the server's own command (``uvicorn app:app``, ``hypercorn app:app -k
  asyncio`` or ``-k trio``);
* ``member``: :func:`stopscope.run` with :func:`~stopscope.servers.start_uvicorn` or
  :func:`~stopscope.servers.start_hypercorn` (``drain_delay=0``);
* ``graceful``: the server's own command serving ``GracefulApp(app)``.

Each run starts the server in a process group of its own on 127.0.0.1, connects
``--clients`` keep-alive HTTP/1.1 clients (raw sockets, one connection each, a new
request as soon as the last answer is in), lets them run ``--warmup`` seconds, and sends
SIGTERM to the server's process.  Every client goes on until its connection attempt is
refused (the listener is closed: with no other host there is nowhere to go) or the
server has exited.  Counted per run:

* ``cut``: requests sent that got no complete answer (reset, closed before or during
  the answer): what the stop lost;
* ``refused``: connection attempts refused (each client's last);
* ``failed``: ``cut + refused``, the client's view of failed requests;
* ``ok_after``: requests answered after SIGTERM;
* ``retried``: requests sent again because their reused keep-alive connection closed
  before any byte of the answer came (what real clients do, once: not a failure).

Runs of the configurations are interleaved (round r runs each once, in an order that
turns each round), so that the machine's load drifts over all of them alike.  Printed:
median and range of ``failed`` and ``cut`` per configuration; written:
``benchmarks/results/one_host.json`` (the conditions and every run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "one_host.json"

#: server -> worker classes (event loops) it runs on
SERVERS = {"uvicorn": ("asyncio",), "hypercorn": ("asyncio", "trio")}
WAYS = ("plain", "member", "graceful")
GRACE = 10.0

APP = '''
"""The app every configuration serves: GET / answers "ok"."""
from stopscope.asgi import GracefulApp

BODY = b"ok\\n"
HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"3")]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


graceful = GracefulApp(app, grace=%(grace)r)
'''

MEMBER = '''
"""The app as a server member of stopscope.run() (no drain delay)."""
import sys

import stopscope
from stopscope import StopSignal, TaskScope
from stopscope.servers import start_hypercorn, start_uvicorn

from one_host_app import app

SERVER, BACKEND, PORT = sys.argv[1], sys.argv[2], int(sys.argv[3])


async def main(signal: StopSignal) -> None:
    async with TaskScope(signal=signal, grace=%(grace)r) as scope:
        if SERVER == "uvicorn":
            await start_uvicorn(
                scope, app, port=PORT, drain_delay=0, log_level="warning", access_log=False
            )
        else:
            await start_hypercorn(scope, app, port=PORT, drain_delay=0)
        await signal.wait()


stopscope.run(main, backend=BACKEND, grace=%(grace)r + 2)
'''

REQUEST = b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"


@dataclass
class Counts:
    ok_before: int = 0
    ok_after: int = 0
    cut: int = 0
    refused: int = 0
    retried: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def failure(self, exc: BaseException | str) -> None:
        kind = exc if isinstance(exc, str) else type(exc).__name__
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self.cut += 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_modules(workdir: Path) -> None:
    (workdir / "one_host_app.py").write_text(APP % {"grace": GRACE})
    (workdir / "one_host_member.py").write_text(MEMBER % {"grace": GRACE})


def command(server: str, worker: str, way: str, port: int) -> list[str]:
    """The command line of one configuration."""
    py = sys.executable
    if way == "member":
        return [py, "one_host_member.py", server, worker, str(port)]
    app = "one_host_app:app" if way == "plain" else "one_host_app:graceful"
    if server == "uvicorn":
        return [
            *(py, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)),
            *("--no-access-log", "--log-level", "warning"),
        ]
    return [py, "-m", "hypercorn", app, "--bind", f"127.0.0.1:{port}", "-k", worker]


class _Stale(Exception):
    """The connection closed before any byte of the answer came."""


async def _read_answer(reader: asyncio.StreamReader) -> bool:
    """Read one answer; return whether the server will close the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise _Stale from exc
        raise
    except ConnectionResetError as exc:
        raise _Stale from exc
    length = 0
    close = False
    lines = head.split(b"\r\n")
    if not lines[0].startswith(b"HTTP/1.1 200"):
        raise ValueError(lines[0].decode(errors="replace"))
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            close = True
    await reader.readexactly(length)
    return close


async def _client(port: int, counts: Counts, stopped: list[float], until: float) -> None:
    """One keep-alive client: requests back to back until refused (or ``until``).

    A request sent on a reused connection that closes before any byte of the answer
    came is sent again, once, on a new connection: the keep-alive race every client
    meets (the server closed the idle connection as the request left), which browsers,
    Go's net/http and aiohttp retry for idempotent requests (RFC 9112, 9.3.1).  Any
    other failure counts.
    """
    loop = asyncio.get_running_loop()
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    answered = 0  # answers on the current connection
    retry = False  # the last request failed on a reused connection: send it again
    try:
        while loop.time() < until:
            if writer is None:
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                except ConnectionRefusedError:
                    counts.refused += 1
                    return
                except OSError as exc:  # reset while being accepted
                    counts.failure(exc)
                    retry = False
                    continue
                answered = 0
            assert reader is not None
            try:
                writer.write(REQUEST)
                close = await asyncio.wait_for(_read_answer(reader), until - loop.time())
            except _Stale as exc:
                if answered and not retry:
                    counts.retried += 1
                    retry = True
                else:
                    counts.failure(exc.__cause__ or exc)
                    retry = False
                close = True
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                counts.failure(exc)
                close, retry = True, False
            except ValueError as exc:  # an answer other than 200
                counts.failure(f"status {exc}")
                close, retry = True, False
            else:
                answered += 1
                retry = False
                if stopped:
                    counts.ok_after += 1
                else:
                    counts.ok_before += 1
            if close:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                writer = reader = None
    except TimeoutError:
        counts.failure("no answer before the run's deadline")
    finally:
        if writer is not None:
            writer.close()


async def _wait_ready(port: int, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before it listened")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        try:
            writer.write(REQUEST)
            await asyncio.wait_for(_read_answer(reader), 5)
            return
        except (OSError, ValueError, asyncio.IncompleteReadError, TimeoutError):
            await asyncio.sleep(0.05)
        finally:
            writer.close()
    raise RuntimeError("the server did not answer in time")


def _spawn(argv: list[str], workdir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(workdir), _src()])}
    return subprocess.Popen(
        argv,
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: killed by it at the end
    )


async def one_run(
    server: str,
    worker: str,
    way: str,
    workdir: Path,
    *,
    clients: int,
    warmup: float,
    cap: float = 30.0,
) -> dict[str, Any]:
    """Start one configuration, load it, SIGTERM it; what the clients saw."""
    port = free_port()
    proc = _spawn(command(server, worker, way, port), workdir)
    counts = Counts()
    stopped: list[float] = []
    try:
        await _wait_ready(port, proc, time.monotonic() + cap)
        loop = asyncio.get_running_loop()
        until = loop.time() + cap
        tasks = [asyncio.create_task(_client(port, counts, stopped, until)) for _ in range(clients)]
        await asyncio.sleep(warmup)
        failed_before = counts.cut + counts.refused
        t0 = time.monotonic()
        stopped.append(t0)
        os.kill(proc.pid, signal.SIGTERM)
        await asyncio.gather(*tasks)
        exit_status = await asyncio.to_thread(proc.wait, max(0.1, cap - (time.monotonic() - t0)))
        exited = round(time.monotonic() - t0, 3)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group this run started
        stderr = proc.communicate()[1]
    result = {
        "server": server,
        "worker": worker,
        "way": way,
        "failed": counts.cut + counts.refused,
        **asdict(counts),
        "failed_before_sigterm": failed_before,
        "exit_s": exited,
        "returncode": exit_status,
    }
    if exit_status not in (0, -signal.SIGTERM):
        result["stderr_tail"] = stderr.decode(errors="replace")[-2000:]
    return result


def _src() -> str:
    """Where stopscope is imported from (the servers import the same one)."""
    import stopscope

    return str(Path(stopscope.__file__).resolve().parent.parent)


def configurations(servers: Sequence[str], ways: Sequence[str]) -> list[tuple[str, str, str]]:
    return [
        (server, worker, way) for server in servers for worker in SERVERS[server] for way in ways
    ]


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def summarize(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    keys = sorted({(r["server"], r["worker"], r["way"]) for r in runs})
    for key in keys:
        mine = [r for r in runs if (r["server"], r["worker"], r["way"]) == key]
        failed = [r["failed"] for r in mine]
        cut = [r["cut"] for r in mine]
        out.append(
            {
                "server": key[0],
                "worker": key[1],
                "way": key[2],
                "runs": len(mine),
                "failed_median": median(failed),
                "failed_range": [min(failed), max(failed)],
                "cut_median": median(cut),
                "cut_range": [min(cut), max(cut)],
                "ok_after_median": median([r["ok_after"] for r in mine]),
                "exit_s_median": median([r["exit_s"] for r in mine]),
            }
        )
    return out


async def measure(
    servers: Sequence[str],
    ways: Sequence[str],
    runs: int,
    clients: int,
    warmup: float,
    log: Any = None,
) -> list[dict[str, Any]]:
    configs = configurations(servers, ways)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="one_host_") as tmp:
        workdir = Path(tmp)
        write_modules(workdir)
        for r in range(runs):
            turn = r % len(configs)
            for server, worker, way in configs[turn:] + configs[:turn]:
                result = await one_run(server, worker, way, workdir, clients=clients, warmup=warmup)
                result["round"] = r
                results.append(result)
                if log is not None:
                    log(
                        f"round {r + 1}/{runs} {server}/{worker} {way:8s} "
                        f"failed {result['failed']:3d} (cut {result['cut']}, "
                        f"refused {result['refused']}) ok after {result['ok_after']}"
                    )
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--servers", nargs="+", choices=sorted(SERVERS), default=list(SERVERS))
    parser.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS))
    parser.add_argument("--runs", type=int, default=20, help="runs per configuration (R)")
    parser.add_argument("--clients", type=int, default=20, help="keep-alive clients (N)")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds of load before SIGTERM")
    parser.add_argument("--quick", action="store_true", help="2 runs, 0.2 s of warm-up")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON")
    parser.add_argument("--label", default="", help="a note kept in the JSON (the code measured)")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.warmup = 2, 0.2
    if args.runs < 1 or args.clients < 1 or args.warmup < 0:
        parser.error("need --runs >= 1, --clients >= 1 and --warmup >= 0")

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    runs = asyncio.run(measure(args.servers, args.ways, args.runs, args.clients, args.warmup, log))
    summary = summarize(runs)
    print(
        f"{'server':10s} {'worker':8s} {'way':9s} {'failed: median [range]':24s} "
        f"{'cut: median [range]':22s} ok after"
    )
    for row in summary:
        lo, hi = row["failed_range"]
        clo, chi = row["cut_range"]
        print(
            f"{row['server']:10s} {row['worker']:8s} {row['way']:9s} "
            f"{row['failed_median']:6g} [{lo}-{hi}]{'':13s}"
            f"{row['cut_median']:6g} [{clo}-{chi}]{'':11s}{row['ok_after_median']:g}"
        )
    doc = {
        "benchmark": "one_host",
        "conditions": {
            "clients": args.clients,
            "warmup_s": args.warmup,
            "runs": args.runs,
            "drain_delay": 0,
            "grace": GRACE,
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "stopscope": _src(),
            "label": args.label,
        },
        "summary": summary,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"written: {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
