"""A WebSocket echo service wrapped in GracefulApp, for the server's own command.

    uvicorn ws_drain_app:app --port 8000
    hypercorn ws_drain_app:app --bind 127.0.0.1:8000 -k trio

The echo handler is the common naive loop: it never looks at the stop.  Settings
from the environment: ``DRAIN_DELAY`` (seconds, default 0), ``GRACE`` (seconds,
default 20), ``WS_CLOSE_CODE`` (default 1001), ``SLOW_CLOSE`` (``1``: the library's
closing of the sessions never ends, as with thousands of them on a loaded machine:
the grace runs out in the middle of it).
"""

from __future__ import annotations

import os

import anyio
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from stopscope.asgi import GracefulApp
from stopscope.servers import _drain

if os.environ.get("SLOW_CLOSE") == "1":

    async def _never_done(self: object, overhead: float = 0.0) -> None:
        await anyio.sleep_forever()

    _drain.Drain.close_websockets = _never_done  # type: ignore[method-assign]


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    while True:  # WebSocketDisconnect ends it, as in most tutorials
        await websocket.send_text(await websocket.receive_text())


app = GracefulApp(
    Starlette(routes=[WebSocketRoute("/ws", echo)]),
    drain_delay=float(os.environ.get("DRAIN_DELAY", "0")),
    grace=float(os.environ.get("GRACE", "20")),
    websocket_close_code=int(os.environ.get("WS_CLOSE_CODE", "1001")),
)
