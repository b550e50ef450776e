"""The app of ``graceful_app.py``, written with FastAPI, for ``fastapi run``.

    fastapi run graceful_fastapi.py --port 8000
    kill -TERM <pid>

``fastapi run`` wants a FastAPI app at the top, so the GracefulApp is added as a
middleware, and the lifespan finds it with ``GracefulApp.current()``.  The same
settings (``DRAIN_DELAY``, ``GRACE``), routes and output as ``graceful_app.py``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, StreamingResponse

from stopscope import StopSignal
from stopscope.asgi import GracefulApp
from stopscope.servers import request_signal

send_events, receive_events = anyio.create_memory_object_stream[str](10_000)


def say_slow() -> None:
    sys.stdout.write(f"slow {os.getpid()}: started\n")
    sys.stdout.flush()


def say(line: str) -> None:
    sys.stdout.write(f"flusher {os.getpid()}: {line}\n")  # one write: workers share the pipe
    sys.stdout.flush()


def take_all() -> int:
    taken = 0
    while True:
        try:
            receive_events.receive_nowait()
        except anyio.WouldBlock:
            return taken
        taken += 1


async def flusher(signal: StopSignal) -> None:
    say("started")
    flushed = 0
    async for _ in signal.every(0.5):  # set once the HTTP side has drained
        flushed += take_all()
    say("stop heard")
    flushed += take_all()
    say(f"flushed {flushed} events")


async def intake(stopping: StopSignal) -> None:
    await stopping.wait()  # at SIGTERM, before the drain delay
    say("stop requested")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    graceful = GracefulApp.current()
    graceful.start_soon(intake, graceful.stopping, name="intake")
    graceful.start_soon(flusher, graceful.signal, name="flusher")  # after the drain
    yield


app = FastAPI(lifespan=lifespan)
app.add_middleware(
    GracefulApp,
    drain_delay=float(os.environ.get("DRAIN_DELAY", "0")),
    grace=float(os.environ.get("GRACE", "20")),
)


@app.get("/", response_class=PlainTextResponse)
async def index() -> str:
    send_events.send_nowait("GET /")
    return "ok\n"


@app.get("/slow", response_class=PlainTextResponse)
async def slow(seconds: float = 1.0) -> str:
    say_slow()
    await anyio.sleep(min(max(seconds, 0.0), 3600.0))
    send_events.send_nowait("GET /slow")
    return f"slept {seconds:g} s\n"


@app.get("/events")
async def events(request: Request) -> StreamingResponse:
    stop = request_signal(request)  # set when the client leaves or the server drains

    async def stream() -> AsyncIterator[str]:
        yield "retry: 1000\n\n"
        async for _ in stop.every(0.2):
            yield "data: tick\n\n"
        send_events.send_nowait("GET /events")

    return StreamingResponse(stream(), media_type="text/event-stream")
