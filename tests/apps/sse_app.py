"""An app with the common naive SSE handler, wrapped in GracefulApp, for the tests that
run it under a server's own command (``uvicorn sse_app:app``, ``hypercorn sse_app:app``)
and stop it with a real SIGTERM (tests/test_serving_streams.py).

``/naive`` streams an event every 50 ms and never looks at the stop; ``/download``
streams bytes that never end (not an event stream: cut at the grace); ``/swallow``
(plain ASGI) does too, but its handler catches the cancellation that cuts it and
returns (cut all the same).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from stopscope.asgi import GracefulApp


async def naive(request: Request) -> StreamingResponse:
    async def events() -> AsyncIterator[str]:
        n = 0
        while True:
            n += 1
            yield f"id: {n}\ndata: tick {n}\n\n"
            await anyio.sleep(0.05)

    return StreamingResponse(events(), media_type="text/event-stream")


async def download(request: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        while True:
            yield b"x" * 100
            await anyio.sleep(0.05)

    return StreamingResponse(chunks(), media_type="application/octet-stream")


async def swallow(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[Any]],
    send: Callable[[Any], Awaitable[None]],
) -> None:
    headers = [(b"content-type", b"application/octet-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    try:
        while True:
            await send({"type": "http.response.body", "body": b"x" * 100, "more_body": True})
            await anyio.sleep(0.05)
    except anyio.get_cancelled_exc_class():
        return  # swallowed: returns as if the download had ended by itself


routes = Starlette(routes=[Route("/naive", naive), Route("/download", download)])


async def paths(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[Any]],
    send: Callable[[Any], Awaitable[None]],
) -> None:
    if scope["type"] == "http" and scope["path"] == "/swallow":
        await swallow(scope, receive, send)
    else:
        await routes(scope, receive, send)


app = GracefulApp(
    paths,
    drain_delay=float(os.environ.get("DRAIN_DELAY", "0")),
    grace=float(os.environ.get("GRACE", "20")),
)
