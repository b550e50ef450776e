#!/usr/bin/env python3
"""Does serving through stopscope cost anything per request?  Each server run plainly,
then as a stopscope member, on the same trivial app, under the same wrk load.

    apt-get install wrk                                   # (or brew install wrk)
    pip install -e '.[uvicorn,hypercorn]' uvloop httptools trio
    python benchmarks/bench_serving.py --quick            # ~2 min: 2 rounds of 4 s
    python benchmarks/bench_serving.py                    # the committed results

Servers: uvicorn (httptools, uvloop), hypercorn on asyncio, hypercorn on trio.  Variants
of each:

* ``plain``: the server's own API (``uvicorn.Server(config).run()``,
  ``hypercorn.asyncio.serve``/``hypercorn.trio.serve``), with its own signal handling;
* ``stopscope``: ``stopscope.run(main)`` with ``start_uvicorn()``/``start_hypercorn()``
  and the default settings (readiness, in-flight counting, a request signal ready to
  be asked for);
* ``stopscope+signal``: the same, with a handler that calls ``request_signal()`` on
  every request (what a request that uses its signal costs: the signal and the task
  that hears a disconnect);
* ``stopscope-signals`` (only with ``--variants``): ``request_signals=False``;
* ``pass-through`` (only with ``--variants``): the plain server, its app behind a
  one-line ASGI middleware that only awaits the app: what any middleware costs at
  least, the floor under the library's.
* ``middleware`` (only with ``--variants``): the plain server, its app behind
  :class:`~stopscope.servers.ReadinessMiddleware` with the default settings (ready),
  without ``run()`` or a member around it: what the middleware costs in a server,
  apart from the rest of the library.

The app is raw ASGI by default (``GET /`` answers 200 ``ok``; it handles the
lifespan), so the servers' and the library's own per-request costs are what is
measured: the worst case for any ASGI middleware.  ``--app starlette`` serves the
same answer from a Starlette route (``PlainTextResponse``), what most services run.  Each run is a
fresh server process pinned to one CPU and ``wrk -t1`` pinned to another (``taskset``,
when there are two CPUs), a warm-up, then the measured ``wrk --latency`` run.  Rounds
interleave the variants (their order alternates round by round), so drift on the
machine hits them alike; ratios are of medians over rounds, with a paired bootstrap
95% interval and a Mann-Whitney p-value.  Everything binds to 127.0.0.1.  Results:
``benchmarks/results/serving.json`` (conditions, every run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _harness import (
    Progress,
    bootstrap_ratio_ci,
    dump_json,
    fmt_ratio,
    mann_whitney_p,
    median,
    render_table,
    run_metadata,
)

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ("uvicorn", "hypercorn-asyncio", "hypercorn-trio")
VARIANTS = (
    "plain",
    "stopscope",
    "stopscope+signal",
    "stopscope-signals",
    "pass-through",
    "middleware",
)
#: seconds; bounds on waits (never a measurement)
START_BOUND = 30.0
STOP_BOUND = 30.0

# --------------------------------------------------------------------------- the server


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``GET /``: 200 ``ok``; the lifespan is answered, as a real app's would be."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"3")],
        }
    )
    await send({"type": "http.response.body", "body": b"ok\n"})


async def asking_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The same app, whose handler asks for its request's stop signal."""
    if scope["type"] == "http":
        from stopscope.servers import request_signal

        request_signal(scope)  # set already if the request arrived during the drain
    await app(scope, receive, send)


def starlette_app(asking: bool) -> Any:
    """``GET /``: 200 ``ok`` from a Starlette route; ``asking``: its handler calls
    ``request_signal(request)``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from stopscope.servers import request_signal

    async def home(request: Request) -> PlainTextResponse:
        if asking:
            request_signal(request)
        return PlainTextResponse("ok\n")

    return Starlette(routes=[Route("/", home)])


def pass_through(inner: Any) -> Any:
    """The least an ASGI middleware does: one coroutine that awaits the app."""

    async def middleware(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await inner(scope, receive, send)

    return middleware


def pick_app(kind: str, variant: str) -> Any:
    """The ASGI app a server process serves."""
    asking = variant == "stopscope+signal"
    if kind == "starlette":
        return starlette_app(asking)
    return asking_app if asking else app


def serve(server: str, variant: str, port: int, kind: str = "raw") -> None:
    """Run one server until SIGTERM (the child process)."""
    served = pick_app(kind, variant)
    if variant == "pass-through":
        _serve_plain(server, port, pass_through(served))
    elif variant == "middleware":
        from stopscope.servers import Readiness

        readiness = Readiness()
        readiness.mark_ready()
        _serve_plain(server, port, readiness.asgi(served))
    elif variant == "plain":
        _serve_plain(server, port, served)
    else:
        _serve_stopscope(server, variant, port, served)


def _serve_plain(server: str, port: int, app: Any) -> None:
    if server == "uvicorn":
        import uvicorn

        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            loop="uvloop",
            http="httptools",
            access_log=False,
            log_level="warning",
        )
        uvicorn.Server(config).run()
        return
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.loglevel = "WARNING"
    if server == "hypercorn-trio":
        import trio
        from hypercorn.trio import serve as trio_serve

        trio.run(trio_serve, app, config)  # type: ignore[arg-type]
    else:
        from hypercorn.asyncio import serve as asyncio_serve

        asyncio.run(asyncio_serve(app, config))  # type: ignore[arg-type]


def _serve_stopscope(server: str, variant: str, port: int, served: Any) -> None:
    import stopscope
    from stopscope import StopSignal, TaskScope
    from stopscope.servers import start_hypercorn, start_uvicorn

    options: dict[str, Any] = {}
    if variant == "stopscope-signals":
        options["request_signals"] = False

    async def main(signal: StopSignal) -> None:
        async with TaskScope(signal=signal, grace=10) as scope:
            if server == "uvicorn":
                await start_uvicorn(
                    scope,
                    served,
                    port=port,
                    http="httptools",
                    **options,
                    access_log=False,
                    log_level="warning",
                )
            else:
                await start_hypercorn(scope, served, port=port, loglevel="WARNING", **options)
            await signal.wait()

    if server == "uvicorn":
        stopscope.run(main, backend="asyncio", backend_options={"use_uvloop": True})
    elif server == "hypercorn-trio":
        stopscope.run(main, backend="trio")
    else:
        stopscope.run(main, backend="asyncio")


# --------------------------------------------------------------------------- the driver


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_BOUND
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"the server did not listen on port {port} within {START_BOUND} s")


def pinned(cpu: int | None, command: list[str]) -> list[str]:
    if cpu is None:
        return command
    return ["taskset", "-c", str(cpu), *command]


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _seconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match[1]) * _UNITS[match[2]]


def parse_wrk(output: str) -> dict[str, float]:
    """Requests per second, latency percentiles (s) and errors from ``wrk --latency``."""
    result: dict[str, float] = {}
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if rps is None:
        raise ValueError(f"no Requests/sec in wrk's output:\n{output}")
    result["rps"] = float(rps[1])
    for pct in ("50", "75", "90", "99"):
        found = re.search(rf"^\s+{pct}%\s+(\S+)", output, re.MULTILINE)
        if found is not None:
            result[f"p{pct}"] = _seconds(found[1])
    total = re.search(r"(\d+) requests in", output)
    result["requests"] = float(total[1]) if total else float("nan")
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    result["socket_errors"] = float(sum(int(n) for n in errors.groups())) if errors else 0.0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    result["non_2xx"] = float(non2xx[1]) if non2xx else 0.0
    return result


def one_run(
    server: str, variant: str, args: argparse.Namespace, cpus: tuple[int | None, int | None]
) -> dict[str, Any]:
    port = free_port()
    command = [sys.executable, str(Path(__file__).resolve()), "--serve", server, variant]
    command += ["--port", str(port), "--app", args.app]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "benchmarks")]),
    }
    process = subprocess.Popen(pinned(cpus[0], command), env=env, start_new_session=True)
    try:
        wait_listening(port, process)
        url = f"http://127.0.0.1:{port}/"
        wrk = ["wrk", f"-t{args.threads}", f"-c{args.connections}", "--latency"]
        subprocess.run(
            pinned(cpus[1], [*wrk, f"-d{args.warmup}s", url]),
            check=True,
            capture_output=True,
            timeout=args.warmup + 30,
        )
        cpu_before = cpu_seconds(process.pid)
        out = subprocess.run(
            pinned(cpus[1], [*wrk, f"-d{args.duration}s", url]),
            check=True,
            capture_output=True,
            text=True,
            timeout=args.duration + 30,
        ).stdout
        cpu = cpu_seconds(process.pid) - cpu_before
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(STOP_BOUND)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    result = {"server": server, "variant": variant, **parse_wrk(out)}
    # the server's own CPU time per request: what contention for the CPU hardly moves
    result["cpu_per_request"] = cpu / result["requests"] if result["requests"] else math.nan
    return result


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summarize(runs: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for server in SERVERS:
        plain = sorted(
            (r for r in runs if r["server"] == server and r["variant"] == "plain"),
            key=lambda r: r["round"],
        )
        if not plain:
            continue
        for variant in VARIANTS:
            mine = sorted(
                (r for r in runs if r["server"] == server and r["variant"] == variant),
                key=lambda r: r["round"],
            )
            if not mine:
                continue
            row: dict[str, Any] = {"server": server, "variant": variant, "rounds": len(mine)}
            for key in ("rps", "p50", "p99", "cpu_per_request"):
                a = [r[key] for r in mine]
                b = [r[key] for r in plain]
                row[key] = median(a)
                if variant != "plain":
                    row[f"{key}_ratio"] = median(a) / median(b)
                    row[f"{key}_ci95"] = bootstrap_ratio_ci(a, b, rng, paired=True)
                    row[f"{key}_p"] = mann_whitney_p(a, b)
            row["errors"] = sum(r["socket_errors"] + r["non_2xx"] for r in mine)
            rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    def ratio(row: dict[str, Any], key: str) -> str:
        if row["variant"] == "plain":
            return "1"
        lo, hi = row[f"{key}_ci95"]
        return f"{fmt_ratio(row[f'{key}_ratio'])} [{lo:.2f}-{hi:.2f}] p={row[f'{key}_p']:.2g}"

    header = ["server", "variant", "req/s", "ratio [95% CI]", "p50 ms", "ratio", "p99 ms", "ratio"]
    header += ["CPU us/req", "ratio"]
    body = [
        [
            row["server"],
            row["variant"],
            f"{row['rps']:.0f}",
            ratio(row, "rps"),
            f"{row['p50'] * 1e3:.2f}",
            "1" if row["variant"] == "plain" else fmt_ratio(row["p50_ratio"]),
            f"{row['p99'] * 1e3:.2f}",
            "1" if row["variant"] == "plain" else fmt_ratio(row["p99_ratio"]),
            f"{row['cpu_per_request'] * 1e6:.1f}",
            "1" if row["variant"] == "plain" else fmt_ratio(row["cpu_per_request_ratio"]),
        ]
        for row in rows
    ]
    return render_table(header, body)


def pick_cpus() -> tuple[int | None, int | None]:
    """The server on one CPU, wrk on another (when taskset and two CPUs are there)."""
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if shutil.which("taskset") is None or len(available) < 2:
        return (None, None)
    return (available[0], available[1])


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", nargs=2, metavar=("SERVER", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 4 s (a smoke run)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=10, help="seconds of each measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of wrk before each run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS[:3]))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--app",
        choices=("raw", "starlette"),
        default="raw",
        help="raw ASGI (the default: the worst case for a middleware) or a Starlette route",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: benchmarks/results/serving.json (serving_starlette.json with "
        "--app starlette)",
    )
    args = parser.parse_args(argv[1:])
    if args.serve:
        serve(args.serve[0], args.serve[1], args.port, args.app)
        return 0
    if args.out is None:
        name = "serving.json" if args.app == "raw" else f"serving_{args.app}.json"
        args.out = ROOT / "benchmarks" / "results" / name
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install wrk (or brew install wrk)", file=sys.stderr)
        return 2
    if "plain" not in args.variants:
        args.variants.insert(0, "plain")  # the reference of every ratio
    if args.quick:
        args.rounds, args.duration, args.warmup = 2, 4, 1
    cpus = pick_cpus()
    progress = Progress()
    runs: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        for server in args.servers:
            order = list(args.variants)
            if round_ % 2:
                order.reverse()  # neither side always runs first
            for variant in order:
                run = one_run(server, variant, args, cpus)
                run["round"] = round_
                runs.append(run)
                progress(
                    f"round {round_ + 1}/{args.rounds} {server} {variant}: "
                    f"{run['rps']:.0f} req/s, p50 {run['p50'] * 1e3:.2f} ms, "
                    f"p99 {run['p99'] * 1e3:.2f} ms"
                )
    rows = summarize(runs, args.seed)
    meta = run_metadata(argv, "quick" if args.quick else "full", ROOT)
    meta["versions"].update(  # type: ignore[union-attr]
        {name: _version(name) for name in ("uvicorn", "hypercorn", "httptools", "h11")}
    )
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    meta["wrk"] = wrk_version.splitlines()[0] if wrk_version else None
    meta["pinning"] = {"server_cpu": cpus[0], "wrk_cpu": cpus[1]}
    meta["app"] = args.app
    meta["load"] = {
        "wrk_threads": args.threads,
        "connections": args.connections,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rounds": args.rounds,
    }
    meta["loadavg_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    doc = {"conditions": meta, "summary": rows, "samples": {"runs": runs}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dump_json(doc))
    print(table(rows))
    print(
        f"\n  results: {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}"
    )
    return 0


def _version(dist: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main(sys.argv))
