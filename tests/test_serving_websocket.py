"""A WebSocket session's stop signal, through real uvicorn and hypercorn servers.

The client is wsproto over an anyio TCP stream, so it runs on every backend; sessions
are held open by events, never by sleeps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Literal

import anyio
import pytest
from anyio.abc import ByteStream
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request

from stopscope import Outcome, TaskScope
from stopscope.servers import (
    RequestStop,
    ServerInfo,
    request_signal,
    start_hypercorn,
    start_uvicorn,
)

pytestmark = pytest.mark.anyio

HANG_GUARD = 30.0

Backend = tuple[str, dict[str, Any]]
ServerName = Literal["uvicorn", "hypercorn"]
Message = MutableMapping[str, Any]

ASYNCIO: Backend = ("asyncio", {"debug": True})
UVLOOP: Backend = ("asyncio", {"use_uvloop": True})
TRIO: Backend = ("trio", {})

combos = pytest.mark.parametrize(
    ("anyio_backend", "server"),
    [
        pytest.param(ASYNCIO, "uvicorn", id="uvicorn-asyncio"),
        pytest.param(UVLOOP, "uvicorn", id="uvicorn-uvloop"),
        pytest.param(ASYNCIO, "hypercorn", id="hypercorn-asyncio"),
        pytest.param(UVLOOP, "hypercorn", id="hypercorn-uvloop"),
        pytest.param(TRIO, "hypercorn", id="hypercorn-trio"),
    ],
)


def starter(server: ServerName) -> Callable[..., Awaitable[ServerInfo]]:
    return start_uvicorn if server == "uvicorn" else start_hypercorn


def quiet(server: ServerName) -> dict[str, Any]:
    return {"log_config": None, "access_log": False} if server == "uvicorn" else {}


class Session:
    """A raw ASGI app: one WebSocket session that waits for its stop signal."""

    def __init__(self) -> None:
        self.accepted = anyio.Event()
        self.reasons: list[object] = []

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            raise RuntimeError("no lifespan here")  # the servers go on without it
        stop = request_signal(scope)
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        self.accepted.set()
        await stop.wait()
        self.reasons.append(stop.reason)
        if stop.reason is RequestStop.SERVER_DRAINING:
            # the server may have closed the session itself by now (uvicorn: 1012)
            with contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": 1001})


async def connect(info: ServerInfo, path: str = "/ws") -> ByteStream:
    """Open a WebSocket session (the handshake only); return its TCP stream."""
    stream = await anyio.connect_tcp(info.host, info.port)
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.send(ws.send(Request(host=f"{info.host}:{info.port}", target=path)))
    while True:
        ws.receive_data(await stream.receive())
        if any(isinstance(event, AcceptConnection) for event in ws.events()):
            return stream


class TestWebSocketSignal:
    @combos
    async def test_set_when_the_server_drains(self, server: ServerName) -> None:
        app = Session()
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=HANG_GUARD) as scope:
                info = await starter(server)(scope, app, **quiet(server))
                stream = await connect(info)
                await app.accepted.wait()
                scope.stop("deploy")
            await stream.aclose()
        assert app.reasons == [RequestStop.SERVER_DRAINING]
        assert scope.report.by_name(server).outcome is Outcome.STOPPED

    @combos
    async def test_set_when_the_client_goes(self, server: ServerName) -> None:
        app = Session()
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=HANG_GUARD) as scope:
                info = await starter(server)(scope, app, **quiet(server))
                stream = await connect(info)
                await app.accepted.wait()
                await stream.aclose()  # gone without a closing handshake
                while not app.reasons:  # the server notices the closed connection
                    await anyio.sleep(0.01)
                assert info.readiness.ready  # the service itself goes on
        assert app.reasons == [RequestStop.CLIENT_DISCONNECTED]
        assert scope.report.by_name(server).outcome is Outcome.STOPPED
