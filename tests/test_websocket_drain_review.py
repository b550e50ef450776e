"""WebSocket sessions drained by the library, reviewed: handlers written the usual ways
(a reader and a writer in a task group; cleanup in an ``except OSError``), real uvicorn
and hypercorn servers, a real WebSocket client over TCP (wsproto over an anyio stream).

Ordered by events, never by sleeps; the servers' logs are captured.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any, Literal

import anyio
import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request

from stopscope import Outcome, TaskScope
from stopscope.servers import ServerInfo, start_hypercorn, start_uvicorn

pytestmark = pytest.mark.anyio

#: seconds; only guards against hangs, never a timing assertion
HANG_GUARD = 60.0

ServerName = Literal["uvicorn", "hypercorn"]
Message = MutableMapping[str, Any]

combos = pytest.mark.parametrize(
    ("anyio_backend", "server"),
    [
        pytest.param(("asyncio", {}), "uvicorn", id="uvicorn-asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), "uvicorn", id="uvicorn-uvloop"),
        pytest.param(("asyncio", {}), "hypercorn", id="hypercorn-asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), "hypercorn", id="hypercorn-uvloop"),
        pytest.param(("trio", {}), "hypercorn", id="hypercorn-trio"),
    ],
)


class CleanupBug(Exception):
    """A real bug in a handler's cleanup, after the library's close."""


class Disconnected(Exception):
    """What a framework raises when its send fails (Starlette: ``WebSocketDisconnect``
    with 1006, raised while handling the ``OSError``)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class App:
    """``/pair``: a reader and a writer in a task group (the reader returns on the
    disconnect, the writer sends until its send fails): the usual full-duplex handler.
    ``/cleanup-bug``: sends until the send fails, then its cleanup raises a bug of its
    own while handling that ``OSError``.  ``/framework`` and ``/oserror`` send until
    the send fails, then raise a disconnect error while handling it (a framework's own,
    with a ``code``; another ``OSError``)."""

    def __init__(self) -> None:
        self.accepted = anyio.Event()
        self.errors: list[BaseException] = []

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            raise RuntimeError("no lifespan here")
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        self.accepted.set()
        if scope["path"] in ("/stubborn-error", "/stubborn-swallow"):
            # ignores the stop and the close; its cleanup fails (or it swallows the cut)
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                if scope["path"] == "/stubborn-swallow":
                    return  # swallows the cancellation: returns as if it had ended
                raise
            finally:
                if scope["path"] == "/stubborn-error":
                    raise CleanupBug("the cleanup failed as the session was cut")
        if scope["path"] == "/naive":
            while (await receive())["type"] != "websocket.disconnect":
                pass
            return
        if scope["path"] == "/pair":

            async def reader() -> None:
                while (await receive())["type"] != "websocket.disconnect":
                    pass

            async def writer() -> None:
                while True:
                    await send({"type": "websocket.send", "text": "tick"})
                    await anyio.sleep(0.01)  # the app's own pace

            async with anyio.create_task_group() as tg:
                tg.start_soon(reader)
                tg.start_soon(writer)
        else:
            path = scope["path"]
            try:
                while True:
                    await send({"type": "websocket.send", "text": "tick"})
                    await anyio.sleep(0.01)
            except OSError:
                # raised while handling it, not from it (no `from`): as frameworks do
                if path == "/framework":
                    raise Disconnected(1006)  # noqa: B904
                if path == "/oserror":
                    raise ConnectionResetError("the peer is gone")  # noqa: B904
                assert path == "/cleanup-bug"
                raise CleanupBug("the cleanup itself failed")  # noqa: B904 - a bug


async def client(info: ServerInfo, path: str, codes: list[int | None]) -> None:
    stream = await anyio.connect_tcp(info.host, info.port)
    ws = WSConnection(ConnectionType.CLIENT)
    code: int | None = None
    try:
        await stream.send(ws.send(Request(host=f"{info.host}:{info.port}", target=path)))
        while code is None:
            try:
                data = await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                break
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    pass
                elif isinstance(event, CloseConnection):
                    code = event.code
                    await stream.send(ws.send(event.response()))
    finally:
        codes.append(code)
        await stream.aclose()


async def serve_and_stop(
    server: ServerName, app: App, path: str, grace: float = HANG_GUARD, drain_delay: float = 0.0
) -> tuple[TaskScope, int | None]:
    codes: list[int | None] = []
    start = start_uvicorn if server == "uvicorn" else start_hypercorn
    options: dict[str, Any] = (
        {"log_config": None, "access_log": False} if server == "uvicorn" else {}
    )
    with anyio.fail_after(HANG_GUARD * 2):
        async with anyio.create_task_group() as tg, TaskScope(grace=grace) as scope:
            info = await start(scope, app, drain_delay=drain_delay, **options)
            tg.start_soon(client, info, path, codes)
            await app.accepted.wait()
            scope.stop("deploy")
    return scope, codes[0]


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


@combos
@pytest.mark.parametrize("path", ["/pair", "/framework", "/oserror"])
async def test_errors_the_close_caused_end_the_session_quietly(
    server: ServerName, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``/pair``: the writer's send fails with the library's OSError inside the
    handler's task group: the group carries only errors the close caused.  The others
    raise a disconnect error while handling it.  Each session was closed cleanly
    (counted so, no traceback)."""
    caplog.set_level(logging.INFO)
    app = App()
    scope, code = await serve_and_stop(server, app, path)
    assert code == 1001
    record = scope.report.by_name(server)
    assert (record.outcome, record.cut) == (Outcome.STOPPED, 0)
    assert "1 WebSocket session(s) closed by the drain (code 1001)" in caplog.text
    assert tracebacks(caplog) == []


@combos
async def test_a_bug_in_the_cleanup_after_the_close_is_not_lost(
    server: ServerName, caplog: pytest.LogCaptureFixture
) -> None:
    """An error the handler raises while it handles the library's OSError is its own
    bug, not the close: the server logs it, and the session is not counted as closed
    cleanly by the drain."""
    caplog.set_level(logging.INFO)
    app = App()
    scope, code = await serve_and_stop(server, app, "/cleanup-bug")
    assert code == 1001  # the library's close reached the client
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is CleanupBug]
    assert len(logged) == 1, tracebacks(caplog)  # the server logged the bug, once
    # neither closed cleanly by the drain nor cut
    assert "WebSocket session(s) closed by the drain" not in caplog.text
    assert scope.report.by_name(server).cut == 0


@combos
@pytest.mark.parametrize("path", ["/stubborn-error", "/stubborn-swallow"])
async def test_a_session_the_library_cut_counts_as_cut_however_it_unwinds(
    server: ServerName, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The handler ignores the stop and the close; the library cuts it before the
    server's timeout.  Whether its cleanup then raises an error of its own or it
    swallows the cancellation, the session was cut: counted in ``cut``, the member
    ``CANCELLED`` (so ``fail_if_cut_short`` exits 70), never "closed by the drain"."""
    caplog.set_level(logging.INFO)
    app = App()
    scope, _ = await serve_and_stop(server, app, path, grace=2.0)
    record = scope.report.by_name(server)
    assert (record.outcome, record.cut) == (Outcome.CANCELLED, 1)
    assert "WebSocket session(s) closed by the drain" not in caplog.text
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is CleanupBug]
    assert len(logged) == (1 if path == "/stubborn-error" else 0)  # its own error: logged


@combos
async def test_little_budget_left_at_the_drain_still_closes_before_it_cuts(
    server: ServerName, caplog: pytest.LogCaptureFixture
) -> None:
    """The drain delay leaves less than the 0.2 s window before the library's cut (a
    long delay close to the grace; uvicorn also keeps back what its own shutdown
    spends): the handlers' window shrinks to half of what is left, so a session that
    ends at the close frame is closed, not cut (no 1011, the member not CANCELLED)."""
    caplog.set_level(logging.INFO)
    grace = 2.0
    # what is left when the drain begins: about 0.5 s on uvicorn (0.3 s of it for its
    # own shutdown), 0.2 s on hypercorn; the cut comes after well under 0.2 s either way
    drain_delay = grace - (0.5 if server == "uvicorn" else 0.2)
    app = App()
    scope, code = await serve_and_stop(server, app, "/naive", grace=grace, drain_delay=drain_delay)
    assert code == 1001
    record = scope.report.by_name(server)
    assert (record.outcome, record.cut) == (Outcome.STOPPED, 0)
    assert "1 WebSocket session(s) closed by the drain (code 1001)" in caplog.text
    assert tracebacks(caplog) == []
