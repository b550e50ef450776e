"""An ASGI app that stops gracefully under the command its server already runs with.

    uvicorn graceful_app:app --port 8000
    hypercorn graceful_app:app --bind 127.0.0.1:8000 -k trio        # or -k asyncio
    gunicorn graceful_app:app -k uvicorn_worker.UvicornWorker -w 2 -b 127.0.0.1:8000
    kill -TERM <pid>                     # what Kubernetes, systemd and supervisors send

(``fastapi run graceful_fastapi.py`` is the same app written with FastAPI.)

Routes: ``GET /`` answers at once, ``GET /slow?seconds=S`` after S seconds, ``GET
/events`` is a server-sent event stream that ends when the server drains, ``GET
/readyz`` answers 200 while serving and 503 from SIGTERM on.  Every answered request
hands an event to a background flusher, started from the app's lifespan.

On SIGTERM, before the server's own handler: /readyz turns 503, the server keeps
serving for ``DRAIN_DELAY`` seconds, then the server goes on with its own shutdown
(closes its listener, finishes in-flight requests, ends the event streams); only then
is the flusher stopped, and it writes out every event it was given.  The report is
logged at the end.

Settings come from the environment (the server's command line is the server's):
``DRAIN_DELAY`` (seconds, default 0) and ``GRACE`` (seconds, default 20).

stdout carries one line per step, with the process id: ``flusher <pid>: started``,
``slow <pid>: started`` (a slow request is in flight), ``flusher <pid>: stop
requested`` (at SIGTERM: ``graceful.stopping``), ``flusher <pid>: stop heard`` (after
the drain: ``graceful.signal``),
``flusher <pid>: flushed N events``; the server's log and ours go to stderr.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from stopscope import StopSignal
from stopscope.asgi import GracefulApp
from stopscope.servers import request_signal

log = logging.getLogger("graceful_app")

send_events, receive_events = anyio.create_memory_object_stream[str](10_000)


def say_slow() -> None:
    sys.stdout.write(f"slow {os.getpid()}: started\n")
    sys.stdout.flush()


def say(line: str) -> None:
    sys.stdout.write(f"flusher {os.getpid()}: {line}\n")  # one write: workers share the pipe
    sys.stdout.flush()


async def flusher(signal: StopSignal, events: MemoryObjectReceiveStream[str]) -> None:
    """Writes events out in batches; once stopped (after the HTTP side has drained, so
    no request can add more), flushes what is left."""
    say("started")
    flushed = 0
    async for _ in signal.every(0.5):
        while True:
            try:
                events.receive_nowait()
            except anyio.WouldBlock:
                break
            flushed += 1
    say("stop heard")
    while True:
        try:
            events.receive_nowait()
        except anyio.WouldBlock:
            break
        flushed += 1
    say(f"flushed {flushed} events")


async def intake(stopping: StopSignal) -> None:
    """Hears the stop at once (a queue consumer would stop taking jobs here)."""
    await stopping.wait()
    say("stop requested")


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    graceful.start_soon(intake, graceful.stopping, name="intake")  # at SIGTERM
    graceful.start_soon(flusher, graceful.signal, receive_events, name="flusher")  # after
    yield


async def index(request: Request) -> PlainTextResponse:
    send_events.send_nowait("GET /")
    return PlainTextResponse("ok\n")


async def slow(request: Request) -> PlainTextResponse:
    seconds = float(request.query_params.get("seconds", "1"))
    if not 0 <= seconds <= 3600:
        return PlainTextResponse("seconds must be between 0 and 3600\n", status_code=400)
    say_slow()
    await anyio.sleep(seconds)
    send_events.send_nowait("GET /slow")
    return PlainTextResponse(f"slept {seconds:g} s\n")


async def events(request: Request) -> StreamingResponse:
    stop = request_signal(request)  # set when the client leaves or the server drains

    async def stream() -> AsyncIterator[str]:
        yield "retry: 1000\n\n"
        async for _ in stop.every(0.2):
            yield "data: tick\n\n"
        send_events.send_nowait("GET /events")

    return StreamingResponse(stream(), media_type="text/event-stream")


graceful = GracefulApp(
    Starlette(
        routes=[Route("/", index), Route("/slow", slow), Route("/events", events)],
        lifespan=lifespan,
    ),
    drain_delay=float(os.environ.get("DRAIN_DELAY", "0")),
    grace=float(os.environ.get("GRACE", "20")),
)
app = graceful
