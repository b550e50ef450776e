#!/usr/bin/env python3
"""Where does a request's cost go on uvicorn's fastest path, exactly?  uvicorn's own
HTTP protocol (httptools) is driven in one process through an in-memory transport:
no sockets, no client, no other process.  Each variant serves the same requests
(``GET /`` answered 200 ``ok``) on uvloop, and the work per request is counted two ways:

* CPU time (``time.process_time``), variants interleaved, the best of several passes;
* ``--instructions``: machine instructions per request, counted by valgrind
  (``cachegrind``), the difference between a run of 1,000 and one of 6,000 requests:
  exact and repeatable, what the load of a shared machine cannot move.

    pip install -e '.[uvicorn]' uvloop httptools
    python benchmarks/bench_request_path.py                  # CPU time
    apt-get install valgrind
    python benchmarks/bench_request_path.py --instructions   # the committed results

Variants (all behind uvicorn's own proxy-headers layer, as a server runs them):

* ``plain``: the raw app;
* ``pass-through``: one ASGI middleware that only awaits the app;
* ``send wrapper``: the pass-through, with a ``send`` that only hands each message on
  (a closure made per request): the least a middleware costs that must see the
  response go by (to notice an event stream, and the response's end);
* ``request_signals=False``: :class:`~stopscope.servers.ReadinessMiddleware` that
  answers the probe and counts requests in flight, and nothing else;
* ``default``: the middleware as the server members and ``GracefulApp`` run it;
* ``signal``: the default, with a handler that calls ``request_signal()``.

The in-process request does not include the server's system calls and the kernel's
network work, which a real server pays too: ``bench_serving.py`` measures whole
servers under ``wrk``.  The ``estimated`` column turns the extra work into a ratio of
requests per second for a server that spends ``--server-us`` µs of CPU per request
(uvicorn's plain figure in ``benchmarks/results/serving.json``), the extra
instructions taken at the in-process rate.  Results:
``benchmarks/results/request_path.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from _harness import dump_json, render_table, run_metadata

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = (
    "plain",
    "pass-through",
    "send wrapper",
    "request_signals=False",
    "default",
    "signal",
)
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"

Message = MutableMapping[str, Any]
App = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]


async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"3")],
        }
    )
    await send({"type": "http.response.body", "body": b"ok\n"})


async def asking_app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    from stopscope.servers import request_signal

    request_signal(scope)
    await app(scope, receive, send)


def pass_through(inner: App) -> App:
    async def middleware(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        await inner(scope, receive, send)

    return middleware


def send_wrapper(inner: App) -> App:
    async def middleware(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        def wrapped(message: Message) -> Awaitable[None]:
            return send(message)  # type: ignore[no-any-return]

        await inner(scope, receive, wrapped)

    return middleware


def make_app(variant: str) -> App:
    from stopscope.servers import Readiness

    readiness = Readiness()
    readiness.mark_ready()
    if variant == "plain":
        return app
    if variant == "pass-through":
        return pass_through(app)
    if variant == "send wrapper":
        return send_wrapper(app)
    if variant == "request_signals=False":
        return readiness.asgi(app, request_signals=False)
    if variant == "default":
        return readiness.asgi(app)
    return readiness.asgi(asking_app)


class _Transport:
    """Just enough of an asyncio transport for uvicorn's protocol: a response is done
    once its second write (the body) is made."""

    def __init__(self) -> None:
        self.done: asyncio.Future[None] | None = None
        self.writes = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def write(self, data: bytes) -> None:
        self.writes += 1
        if not self.writes % 2 and self.done is not None:
            self.done.set_result(None)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None: ...

    def set_protocol(self, protocol: object) -> None: ...


async def serve(variant: str, n: int) -> float:
    """Serve ``n`` requests on one keep-alive connection; CPU seconds per request."""
    import uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    config = uvicorn.Config(
        make_app(variant), http="httptools", lifespan="off", access_log=False, log_level="warning"
    )
    config.load()
    loop = asyncio.get_running_loop()
    protocol = HttpToolsProtocol(config, ServerState(), {}, _loop=loop)
    transport = _Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    gc.collect()
    started = time.process_time()
    for _ in range(n):
        transport.done = loop.create_future()
        protocol.data_received(REQUEST)
        await transport.done
    return (time.process_time() - started) / n


def run_loop(coro: Awaitable[Any]) -> Any:
    import uvloop

    return uvloop.run(coro)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- modes


def cpu_times(variants: Sequence[str], n: int, passes: int) -> dict[str, float]:
    async def all_passes() -> dict[str, float]:
        best = dict.fromkeys(variants, float("inf"))
        for variant in variants:
            await serve(variant, n // 10)  # warm-up
        for i in range(passes):
            for variant in variants if i % 2 == 0 else list(reversed(variants)):
                best[variant] = min(best[variant], await serve(variant, n))
        return best

    result: dict[str, float] = run_loop(all_passes())
    return result


_IREFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def instructions(variant: str, small: int, large: int) -> tuple[float, list[int]]:
    """Instructions per request (valgrind on a run of ``small`` then of ``large``
    requests), and the two counts."""
    counts = []
    for n in (small, large):
        out = subprocess.run(
            [
                "valgrind",
                "--tool=cachegrind",
                "--cache-sim=no",
                "--cachegrind-out-file=/dev/null",
                sys.executable,
                str(Path(__file__).resolve()),
                "--one",
                variant,
                str(n),
            ],
            capture_output=True,
            text=True,
            check=True,
            env=_env(),
        ).stderr
        match = _IREFS.search(out)
        if match is None:
            raise RuntimeError(f"valgrind said no instruction count:\n{out[-2000:]}")
        counts.append(int(match.group(1).replace(",", "")))
    return (counts[1] - counts[0]) / (large - small), counts


#: the stopscope source tree measured (``--src``)
_src = ROOT / "src"


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(_src), str(ROOT / "benchmarks")]),
        "PYTHONHASHSEED": "0",
    }


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--instructions", action="store_true", help="count with valgrind")
    parser.add_argument("--quick", action="store_true", help="fewer requests and passes")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("-n", type=int, default=30_000, help="requests per pass (CPU time)")
    parser.add_argument("--passes", type=int, default=9, help="passes per variant (CPU time)")
    parser.add_argument(
        "--server-us",
        type=float,
        default=None,
        help="a real server's CPU µs per request, for the estimate (default: uvicorn's "
        "plain figure in benchmarks/results/serving.json)",
    )
    parser.add_argument(
        "--src",
        type=Path,
        default=None,
        help="the stopscope source tree to measure (a src folder; default: this checkout's)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv[1:])
    if args.src is not None:
        global _src
        _src = args.src.resolve()
        sys.path.insert(0, str(_src))
    if args.one:
        # ``--one``: one variant under valgrind (a warm-up, then the counted requests)
        variant, n = args.one[0], int(args.one[1])

        async def once() -> None:
            await serve(variant, 500)
            await serve(variant, n)

        run_loop(once())
        return 0
    if "plain" not in args.variants:
        args.variants.insert(0, "plain")
    if args.quick:
        args.n, args.passes = 5_000, 3
    server_us = args.server_us
    if server_us is None:
        serving = json.loads((ROOT / "benchmarks/results/serving.json").read_text())
        plain = next(
            row
            for row in serving["summary"]
            if row["server"] == "uvicorn" and row["variant"] == "plain"
        )
        server_us = plain["cpu_per_request"] * 1e6
    cpu = cpu_times(args.variants, args.n, args.passes)
    counted: dict[str, float] = {}
    raw_counts: dict[str, list[int]] = {}
    if args.instructions:
        if shutil.which("valgrind") is None:
            print("--instructions needs valgrind: apt-get install valgrind", file=sys.stderr)
            return 2
        small, large = (500, 2_500) if args.quick else (1_000, 6_000)
        for variant in args.variants:
            counted[variant], raw_counts[variant] = instructions(variant, small, large)
            print(f"  {variant}: {counted[variant]:,.0f} instructions per request", file=sys.stderr)
    base_cpu = cpu["plain"]
    rows = []
    for variant in args.variants:
        row: dict[str, Any] = {"variant": variant, "cpu_us": cpu[variant] * 1e6}
        row["cpu_extra_us"] = (cpu[variant] - base_cpu) * 1e6
        extra_us = row["cpu_extra_us"]
        if counted:
            row["instructions"] = counted[variant]
            row["valgrind_totals"] = {
                "requests": [small, large],
                "instructions": raw_counts[variant],
            }
            row["extra_instructions"] = counted[variant] - counted["plain"]
            # the extra instructions at the in-process rate of the plain variant
            extra_us = row["extra_instructions"] / counted["plain"] * base_cpu * 1e6
        row["estimated_ratio"] = server_us / (server_us + extra_us)
        rows.append(row)
    header = ["variant", "CPU µs/req", "extra µs"]
    if counted:
        header += ["instructions/req", "extra"]
    header.append(f"estimated req/s ratio at {server_us:.1f} µs/req")
    table_rows = []
    for row in rows:
        cells = [row["variant"], f"{row['cpu_us']:.2f}", f"{row['cpu_extra_us']:+.2f}"]
        if counted:
            cells += [f"{row['instructions']:,.0f}", f"{row['extra_instructions']:+,.0f}"]
        cells.append(f"{row['estimated_ratio']:.3f}x")
        table_rows.append(cells)
    text = render_table(header, table_rows)
    print(text)
    if args.out is None and not args.quick and counted:
        args.out = ROOT / "benchmarks" / "results" / "request_path.json"
    if args.out is not None:
        meta = run_metadata(argv, "quick" if args.quick else "full", ROOT)
        meta["server_cpu_us_per_request"] = server_us
        meta["src"] = str(_src)
        meta["requests"] = {"cpu_time": args.n, "passes": args.passes}
        doc = {"conditions": meta, "table": text, "samples": {"rows": rows}}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(dump_json(doc))
        print(f"\n  results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
