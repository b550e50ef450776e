"""A web service that drains gracefully: a Starlette app and a background worker.

    python examples/web_service.py --server uvicorn --backend uvloop --port 8000
    python examples/web_service.py --server hypercorn --backend trio --drain-delay 5
    kill -TERM <pid>                      # what Kubernetes and systemd send

It needs Starlette and a server besides stopscope: ``pip install starlette``, then
``pip install "./stopscope[uvicorn]"`` or ``"./stopscope[hypercorn]"`` from a clone.

Routes: ``GET /`` answers at once, ``GET /slow?seconds=S`` answers after S seconds,
``GET /readyz`` answers 200 while serving and 503 from the stop request on.  Each
answered request hands an event to a background worker, which writes them out in
batches.

On SIGTERM (or Ctrl-C): /readyz answers 503 at once, the server keeps serving for
``--drain-delay`` seconds (while load balancers take the replica out), then stops
listening and lets in-flight requests finish; only then is the worker stopped, and it
flushes every event it was given.  Exit status 0 after a graceful stop (see the docs:
how-to/web-services).

stdout carries exactly: ``listening on http://127.0.0.1:N`` once the server accepts
connections, and at the end ``worker: flushed N events``.  Logs go to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

try:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
except ModuleNotFoundError as exc:  # the example's own needs, not stopscope's
    raise SystemExit(
        "examples/web_service.py needs Starlette and a server: "
        "pip install starlette 'stopscope[uvicorn]'  (or 'stopscope[hypercorn]')"
    ) from exc

import stopscope
from stopscope import StopSignal
from stopscope.servers import WebService

log = logging.getLogger("web_service")

#: what each server supports
BACKENDS = {"uvicorn": ("asyncio", "uvloop"), "hypercorn": ("asyncio", "uvloop", "trio")}


def make_app(events: MemoryObjectSendStream[str]) -> Starlette:
    """The HTTP side: every answered request hands one event to the worker."""

    async def index(request: Request) -> PlainTextResponse:
        events.send_nowait("GET /")
        return PlainTextResponse("ok\n")

    async def slow(request: Request) -> PlainTextResponse:
        try:
            seconds = float(request.query_params.get("seconds", "1"))
        except ValueError:
            return PlainTextResponse("seconds must be a number\n", status_code=400)
        if not 0 <= seconds <= 3600:
            return PlainTextResponse("seconds must be between 0 and 3600\n", status_code=400)
        log.info("slow: started (%g s)", seconds)
        await anyio.sleep(seconds)
        events.send_nowait(f"GET /slow?seconds={seconds:g}")
        log.info("slow: done (%g s)", seconds)
        return PlainTextResponse(f"slept {seconds:g} s\n")

    return Starlette(routes=[Route("/", index), Route("/slow", slow)])


async def worker(signal: StopSignal, events: MemoryObjectReceiveStream[str]) -> None:
    """Writes events out in batches, twice a second; once stopped (after the HTTP
    server has exited, so no request can add more), flushes what is left."""
    flushed = 0

    async def flush() -> None:
        nonlocal flushed
        batch = []
        while True:
            try:
                batch.append(events.receive_nowait())
            except anyio.WouldBlock:
                break
        if batch:
            await anyio.sleep(0.05)  # a slow sink: a database, a queue, a log shipper
            flushed += len(batch)
            log.info("worker: flushed a batch of %d events", len(batch))

    async with events:
        async for _ in signal.every(0.5):
            await flush()
        await flush()  # the last batch: everything the server accepted
    print(f"worker: flushed {flushed} events", flush=True)


async def main(signal: StopSignal, args: argparse.Namespace) -> None:
    send, receive = anyio.create_memory_object_stream[str](10_000)
    options: dict[str, Any] = {}
    if args.server == "uvicorn":
        options = {"log_config": None, "access_log": False}
    async with WebService(signal=signal, grace=args.grace, name="web service") as service:
        service.start_soon(worker, service.signal, receive, name="worker")
        server = await service.serve(
            make_app(send),
            server=args.server,
            host="127.0.0.1",
            port=args.port,
            drain_delay=args.drain_delay,
            **options,
        )
        print(f"listening on {server.url}", flush=True)
        await signal.wait()
    send.close()
    for line in str(service.scope.report).splitlines():
        log.info("report: %s", line)


def _installed(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError:
        return False
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--server", choices=sorted(BACKENDS), default="uvicorn", help="server")
    parser.add_argument(
        "--backend", choices=["asyncio", "uvloop", "trio"], default="asyncio", help="event loop"
    )
    parser.add_argument("--port", type=int, default=8000, help="0: any free port")
    parser.add_argument(
        "--drain-delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep serving, not ready, this long after the stop request (Kubernetes: 5)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="the whole stop's budget, drain delay included",
    )
    args = parser.parse_args(argv)
    if args.backend != "asyncio" and not _installed(args.backend):
        parser.error(
            f"--backend {args.backend} needs {args.backend}: pip install "
            f"'stopscope[{args.backend}]'"
        )
    if not _installed(args.server):
        parser.error(
            f"--server {args.server} needs {args.server}: pip install "
            f"'stopscope[{args.server}]'"
        )
    if args.backend not in BACKENDS[args.server]:
        parser.error(f"{args.server} supports --backend {', '.join(BACKENDS[args.server])}")
    if not 0 <= args.port <= 65535:
        parser.error("--port must be between 0 and 65535")
    if args.drain_delay < 0 or args.grace <= 0 or args.drain_delay >= args.grace:
        parser.error("need 0 <= --drain-delay < --grace")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(relativeCreated)6.0f ms  %(name)-10s %(message)s",
    )
    backend, backend_options = (
        ("asyncio", {"use_uvloop": True})
        if arguments.backend == "uvloop"
        else (arguments.backend, {})
    )
    # run()'s grace is the safety net around the service's own: room to unwind
    stopscope.run(
        main,
        arguments,
        backend=backend,
        backend_options=backend_options,
        grace=arguments.grace + 2.0,
    )
