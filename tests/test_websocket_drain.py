"""WebSocket sessions drained by the library: real uvicorn and hypercorn servers, real
WebSocket clients over TCP.

The client is wsproto over an anyio TCP stream, so it runs in the test's own loop on
every backend.  Sessions are held open and ordered by events, never by sleeps; the
servers' logs are captured and must hold no traceback.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from typing import Any, Literal

import anyio
import anyio.abc
import pytest
from anyio.abc import ByteStream
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

import stopscope
from stopscope import Outcome, TaskScope
from stopscope._service import EXIT_CUT_SHORT
from stopscope.asgi import GracefulApp
from stopscope.servers import (
    Readiness,
    ReadinessMiddleware,
    ServerInfo,
    WebService,
    request_signal,
    start_hypercorn,
    start_uvicorn,
)
from stopscope.servers._readiness import _WebSocketSession

pytestmark = pytest.mark.anyio

#: seconds; only guards against hangs, never a timing assertion
HANG_GUARD = 60.0
#: the many-clients case of the issue
MANY = 200

Backend = tuple[str, dict[str, Any]]
ServerName = Literal["uvicorn", "hypercorn"]
Message = MutableMapping[str, Any]

ASYNCIO: Backend = ("asyncio", {})
UVLOOP: Backend = ("asyncio", {"use_uvloop": True})
TRIO: Backend = ("trio", {})

#: the server/backend pairs of the issue, for the many-clients tests
main_combos = pytest.mark.parametrize(
    ("anyio_backend", "server"),
    [
        pytest.param(ASYNCIO, "uvicorn", id="uvicorn-asyncio"),
        pytest.param(ASYNCIO, "hypercorn", id="hypercorn-asyncio"),
        pytest.param(TRIO, "hypercorn", id="hypercorn-trio"),
    ],
)
#: every pair, for the small tests
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


def swallowed_seen(backend: str) -> bool:
    """Whether a cut the handler swallowed is seen, and counted: on trio, and on
    asyncio from Python 3.13 on (before, a task's cancellation count is no evidence)."""
    return backend == "trio" or sys.version_info >= (3, 13)


def assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]
    assert "Traceback" not in caplog.text


class App:
    """A raw ASGI app; the path says how the handler behaves.

    * ``/naive``: reads until the disconnect, ignores the stop (the common loop)
    * ``/goodbye``: on its signal, sends ``goodbye`` and reads on (the library closes)
    * ``/own-close``: on its signal, sends ``goodbye`` and closes with 4000 itself
    * ``/ticker``: sends forever without reading, ignores the stop
    * ``/ticker-wrapped``: the same, turning the send's error into its own
    * ``/stubborn``: accepts, then ignores everything
    * ``/swallow``: the same, but catches the cancellation that cuts it and returns
    * ``/late``: accepts only once the drain has begun and ``/naive`` saw its close
    """

    def __init__(self, expected: int = 1) -> None:
        self.expected = expected
        self.accepted = 0
        self.all_accepted = anyio.Event()
        self.disconnects: list[object] = []
        self.first_disconnect = anyio.Event()
        self.send_errors: list[BaseException] = []
        self.ended = 0
        self.swallowed = 0

    def _accepted(self) -> None:
        self.accepted += 1
        if self.accepted == self.expected:
            self.all_accepted.set()

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            raise RuntimeError("no lifespan here")  # the servers go on without it
        path = scope["path"]
        assert (await receive())["type"] == "websocket.connect"
        if path == "/late":
            await request_signal(scope).wait()
            await self.first_disconnect.wait()
        await send({"type": "websocket.accept"})
        self._accepted()
        if path in ("/naive", "/late"):
            await self._read_until_disconnect(receive)
        elif path in ("/goodbye", "/own-close"):
            await request_signal(scope).wait()
            await send({"type": "websocket.send", "text": "goodbye"})
            if path == "/own-close":
                await send({"type": "websocket.close", "code": 4000})
            await self._read_until_disconnect(receive)
        elif path.startswith("/ticker"):
            while True:
                try:
                    await send({"type": "websocket.send", "text": "tick"})
                except OSError as exc:
                    self.send_errors.append(exc)
                    if path == "/ticker-wrapped":
                        raise RuntimeError("the feed is gone") from exc
                    raise
                await anyio.sleep(0.01)  # the app's own pace, not the test's ordering
        elif path == "/swallow":
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                self.swallowed += 1  # and returns, as if it had ended by itself
        else:
            assert path == "/stubborn"
            await anyio.sleep_forever()
        self.ended += 1

    async def _read_until_disconnect(self, receive: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.disconnects.append(message.get("code"))
                self.first_disconnect.set()
                return


class Client:
    """A WebSocket client: the handshake, then what the server says until it closes."""

    def __init__(self, info: ServerInfo, path: str, *, answer: bool = True) -> None:
        self.info = info
        self.path = path
        self.answer = answer  # reply to the server's close frame (the closing handshake)
        self.texts: list[str] = []
        self.code: int | None = None
        self.eof = False
        self.stream: ByteStream | None = None

    async def run(self, accepted: Callable[[], object] = lambda: None) -> None:
        info = self.info
        stream = self.stream = await anyio.connect_tcp(info.host, info.port)
        ws = WSConnection(ConnectionType.CLIENT)
        try:
            await stream.send(ws.send(Request(host=f"{info.host}:{info.port}", target=self.path)))
            while self.code is None:
                try:
                    data = await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    self.eof = True
                    return
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, AcceptConnection):
                        accepted()
                    elif isinstance(event, TextMessage):
                        self.texts.append(event.data)
                    elif isinstance(event, CloseConnection):
                        self.code = event.code
                        if self.answer:
                            await stream.send(ws.send(event.response()))
            if not self.answer:
                # never answers the closing handshake: holds the connection until the
                # server drops it
                while True:
                    await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            self.eof = True
        finally:
            await stream.aclose()


async def serve_and_stop(
    server: ServerName,
    app: App,
    clients: list[tuple[str, bool]],
    *,
    grace: float = HANG_GUARD,
    **options: Any,
) -> tuple[TaskScope, list[Client]]:
    """Serve ``app``, connect the clients (path, answers the close), wait until the app
    accepted them all, stop the scope; return once the scope and the clients ended."""
    made: list[Client] = []
    with anyio.fail_after(HANG_GUARD * 2):
        async with anyio.create_task_group() as clients_tg, TaskScope(grace=grace) as scope:
            info = await starter(server)(scope, app, **quiet(server), **options)
            for path, answer in clients:
                client = Client(info, path, answer=answer)
                made.append(client)
                clients_tg.start_soon(client.run)
            await app.all_accepted.wait()
            scope.stop("deploy")
    return scope, made


class TestClosedByTheLibrary:
    @main_combos
    async def test_many_sessions_get_1001_and_no_traceback(
        self, server: ServerName, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO)
        app = App(expected=MANY)
        scope, clients = await serve_and_stop(server, app, [("/naive", True)] * MANY)
        assert Counter(c.code for c in clients) == Counter({1001: MANY})
        assert app.disconnects == [1001] * MANY  # receive() said so, with the code
        assert app.ended == MANY
        record = scope.report.by_name(server)
        assert record.outcome is Outcome.STOPPED
        assert record.cut == 0
        assert f"{MANY} WebSocket session(s) closed by the drain (code 1001)" in caplog.text
        assert_no_traceback(caplog)

    @combos
    @pytest.mark.parametrize("code", [1012, 4001])
    async def test_the_code_asked_for(
        self, server: ServerName, code: int, caplog: pytest.LogCaptureFixture
    ) -> None:
        app = App(expected=3)
        scope, clients = await serve_and_stop(
            server, app, [("/naive", True)] * 3, websocket_close_code=code
        )
        assert [c.code for c in clients] == [code] * 3
        assert app.disconnects == [code] * 3
        assert scope.report.by_name(server).outcome is Outcome.STOPPED
        assert_no_traceback(caplog)

    @combos
    async def test_a_handlers_goodbye_reaches_the_client_first(
        self, server: ServerName, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO)
        app = App(expected=2)
        scope, (library, own) = await serve_and_stop(
            server, app, [("/goodbye", True), ("/own-close", True)]
        )
        assert (library.texts, library.code) == (["goodbye"], 1001)
        assert (own.texts, own.code) == (["goodbye"], 4000)  # its own close, untouched
        assert scope.report.by_name(server).outcome is Outcome.STOPPED
        assert "1 WebSocket session(s) closed by the drain (code 1001)" in caplog.text
        assert_no_traceback(caplog)

    @combos
    @pytest.mark.parametrize("path", ["/ticker", "/ticker-wrapped"])
    async def test_a_send_after_the_close_ends_the_session_quietly(
        self, server: ServerName, path: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        app = App(expected=1)
        scope, (client,) = await serve_and_stop(server, app, [(path, True)])
        assert client.code == 1001
        assert client.texts
        assert set(client.texts) == {"tick"}
        assert len(app.send_errors) == 1
        assert isinstance(app.send_errors[0], OSError)  # as the ASGI spec asks
        record = scope.report.by_name(server)
        assert (record.outcome, record.cut) == (Outcome.STOPPED, 0)
        assert_no_traceback(caplog)

    @combos
    async def test_a_session_accepted_after_the_close_is_closed_at_once(
        self, server: ServerName, caplog: pytest.LogCaptureFixture
    ) -> None:
        app = App(expected=1)  # /late accepts only after the stop
        scope, (first, late) = await serve_and_stop(
            server, app, [("/naive", True), ("/late", True)]
        )
        assert (first.code, late.code) == (1001, 1001)
        assert app.disconnects == [1001, 1001]
        assert scope.report.by_name(server).outcome is Outcome.STOPPED
        assert_no_traceback(caplog)


class TestWebService:
    @combos
    async def test_serve_passes_the_code_on(
        self, server: ServerName, caplog: pytest.LogCaptureFixture
    ) -> None:
        app = App(expected=2)
        clients: list[Client] = []
        with anyio.fail_after(HANG_GUARD * 2):
            async with (
                anyio.create_task_group() as clients_tg,
                WebService(grace=HANG_GUARD) as service,
            ):
                info = await service.serve(
                    app, server=server, websocket_close_code=1012, **quiet(server)
                )
                for _ in range(2):
                    client = Client(info, "/naive")
                    clients.append(client)
                    clients_tg.start_soon(client.run)
                await app.all_accepted.wait()
                service.stop("deploy")
        assert [c.code for c in clients] == [1012, 1012]
        assert service.scope.report.by_name(server).outcome is Outcome.STOPPED
        assert_no_traceback(caplog)


class TestCut:
    @combos
    async def test_a_handler_that_ignores_everything_is_cut_and_counted(
        self, server: ServerName, caplog: pytest.LogCaptureFixture
    ) -> None:
        """...with a client that never answers the close handshake either."""
        app = App(expected=2)
        scope, clients = await serve_and_stop(
            server, app, [("/stubborn", False), ("/naive", True)], grace=2.0
        )
        record = scope.report.by_name(server)
        assert record.outcome is Outcome.CANCELLED
        assert record.cut == 1  # the handler that ignored everything
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        cut_lines = [m for m in warnings if "did not finish within the grace" in m]
        assert cut_lines == [
            f"{server}: 1 request(s) did not finish within the grace period and were cancelled"
        ], warnings
        # the other session was closed by the library as usual
        assert clients[1].code == 1001
        assert app.disconnects == [1001]
        assert_no_traceback(caplog)

    @combos
    async def test_a_client_that_never_answers_the_close(
        self, server: ServerName, caplog: pytest.LogCaptureFixture
    ) -> None:
        """It gets the close frame; hypercorn then waits for its answer, which never
        comes: the session is cut at the grace.  uvicorn ends the session as it sends the
        close frame (the handler's receive() says so at once) and drops the connection
        at its shutdown."""
        app = App(expected=1)
        scope, (client,) = await serve_and_stop(server, app, [("/naive", False)], grace=2.0)
        assert client.code == 1001
        record = scope.report.by_name(server)
        if server == "hypercorn":
            assert (record.outcome, record.cut, app.disconnects) == (Outcome.CANCELLED, 1, [])
        else:
            assert (record.outcome, record.cut, app.disconnects) == (Outcome.STOPPED, 0, [1001])
        assert_no_traceback(caplog)


class TestSwallowedCut:
    @combos
    async def test_a_hard_stop_the_handler_swallows_is_counted(
        self, server: ServerName, anyio_backend_name: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A hard stop once the drain began, before the library's close: the server
        cuts the session, its handler catches the cancellation and returns; it was cut
        all the same (and not closed by the library)."""
        caplog.set_level(logging.WARNING)
        app = App(expected=1)
        hard = anyio.CancelScope()
        with anyio.fail_after(HANG_GUARD), hard:
            async with anyio.create_task_group() as clients, TaskScope(grace=HANG_GUARD) as scope:
                info = await starter(server)(scope, app, **quiet(server))
                clients.start_soon(Client(info, "/swallow").run)
                await app.all_accepted.wait()
                scope.stop("deploy")
                await info.readiness.draining.wait()
                hard.cancel()  # a second signal
        assert hard.cancelled_caught
        assert app.swallowed == 1
        record = scope.report.by_name(server)
        seen = swallowed_seen(anyio_backend_name)
        assert (record.outcome, record.cut) == (Outcome.CANCELLED, 1 if seen else 0), record
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        line = f"{server}: 1 request(s) did not finish within the grace period and were cancelled"
        assert (line in warnings) == seen, warnings


class TestBadCode:
    @pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, -1])
    def test_a_code_an_endpoint_may_not_send(self, code: int) -> None:
        readiness = Readiness()
        with pytest.raises(ValueError, match="websocket_close_code"):
            ReadinessMiddleware(App(), readiness, websocket_close_code=code)
        with pytest.raises(ValueError, match="websocket_close_code"):
            readiness.asgi(App(), websocket_close_code=code)
        with pytest.raises(ValueError, match="websocket_close_code"):
            GracefulApp(App(), websocket_close_code=code)

    @pytest.mark.parametrize("code", ["1001", 1001.0, True, None])
    def test_not_an_int(self, code: Any) -> None:
        with pytest.raises(TypeError, match="websocket_close_code"):
            ReadinessMiddleware(App(), Readiness(), websocket_close_code=code)
        with pytest.raises(TypeError, match="websocket_close_code"):
            GracefulApp(App(), websocket_close_code=code)

    @pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1012, 1014, 3000, 4999])
    def test_codes_an_endpoint_may_send(self, code: int) -> None:
        middleware = Readiness().asgi(App(), websocket_close_code=code)
        assert middleware.websocket_close_code == code

    @combos
    async def test_the_members_check_before_they_start(self, server: ServerName) -> None:
        async with TaskScope(grace=5) as scope:
            with pytest.raises(ValueError, match="websocket_close_code"):
                await starter(server)(scope, App(), websocket_close_code=1006)
            with pytest.raises(TypeError, match="websocket_close_code"):
                await starter(server)(scope, App(), websocket_close_code="1001")
        assert scope.report.tasks == ()  # nothing was started


class FakeServer:
    """The server side of one WebSocket session, in memory: what the app sent, and
    messages for its receive()."""

    def __init__(
        self, *, refuse_close: bool = False, close_gate: anyio.Event | None = None
    ) -> None:
        self.sent: list[Message] = []
        self.refuse_close = refuse_close
        self.close_gate = close_gate  # a close frame waits for it (a busy connection)
        self.close_waits = anyio.Event()
        self._queue: list[Message] = [{"type": "websocket.connect"}]
        self._arrived: anyio.Event | None = None

    async def receive(self) -> Message:
        while not self._queue:
            arrived = self._arrived = anyio.Event()
            await arrived.wait()
        return self._queue.pop(0)

    async def send(self, message: Message) -> None:
        if self.close_gate is not None and message["type"] == "websocket.close":
            self.close_waits.set()
            await self.close_gate.wait()
        if self.refuse_close and message["type"] == "websocket.close":
            self.disconnect(1006)  # the client went: the server says so to receive()
            raise OSError("the connection is gone")
        self.sent.append(message)
        if message["type"] == "websocket.close":  # as uvicorn does
            self.disconnect(message["code"])

    def disconnect(self, code: int) -> None:
        self._queue.append({"type": "websocket.disconnect", "code": code})
        if self._arrived is not None:
            self._arrived.set()


class Handler:
    """Accepts, then does what ``then`` says once the library closed the session."""

    def __init__(self, then: str = "read") -> None:
        self.then = then
        self.accepted = anyio.Event()
        self.proceed = anyio.Event()
        self.scopes: list[Message] = []
        self.received: list[Message] = []

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        await receive()
        await send({"type": "websocket.accept"})
        self.accepted.set()
        if self.then == "forever":
            await anyio.sleep_forever()
        if self.then == "swallow":
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                return  # swallowed
        if self.then == "send-later":
            await self.proceed.wait()
            await send({"type": "websocket.send", "text": "late"})
        self.received.append(await receive())
        if self.then == "fail":
            raise ValueError("a bug of the handler's own")
        if self.then == "disconnect":
            raise WebSocketGone(self.received[-1]["code"])
        if self.then == "other-code":
            raise WebSocketGone(1000)


class WebSocketGone(Exception):
    """What a framework raises when receive() says the session is over (a ``code``)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


WS_SCOPE: Message = {"type": "websocket", "path": "/ws"}


@contextlib.asynccontextmanager
async def bounded_group() -> AsyncIterator[anyio.abc.TaskGroup]:
    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            yield tg


class TestSessionsInMemory:
    async def test_a_signal_given_without_request_signals(self) -> None:
        middleware = ReadinessMiddleware(Handler(), Readiness(), request_signals=False)
        handler = middleware.app
        assert isinstance(handler, Handler)
        server = FakeServer()
        signal = middleware.readiness.draining.child()
        async with bounded_group() as tg:
            tg.start_soon(
                middleware._websocket, dict(WS_SCOPE), server.receive, server.send, signal
            )
            await handler.accepted.wait()
            assert request_signal(handler.scopes[0]) is signal
            middleware.readiness.mark_draining()
            assert signal.is_set()
            assert await middleware.close_websockets(None) == 1
        assert server.sent[-1] == {"type": "websocket.close", "code": 1001, "reason": "going away"}
        assert handler.received == [{"type": "websocket.disconnect", "code": 1001}]
        assert (middleware.websockets_closed, middleware.cancelled) == (1, 0)

    async def test_a_cut_by_the_server_is_counted_and_goes_on(self) -> None:
        middleware = ReadinessMiddleware(Handler("forever"), Readiness())
        handler = middleware.app
        assert isinstance(handler, Handler)
        server = FakeServer()
        async with bounded_group() as tg:
            tg.start_soon(middleware, dict(WS_SCOPE), server.receive, server.send)
            await handler.accepted.wait()
            tg.cancel_scope.cancel()  # the server's own cut
        assert (middleware.cancelled, middleware.websockets_closed, middleware.in_flight) == (
            1,
            0,
            0,
        )

    @pytest.mark.parametrize("request_signals", [True, False])
    async def test_a_cut_by_the_server_swallowed_is_counted(
        self, request_signals: bool, anyio_backend_name: str
    ) -> None:
        """The handler catches the server's cancellation and returns: cut all the same
        (with ``request_signals=False``, as GracefulApp serves it, too)."""
        readiness = Readiness()
        middleware = ReadinessMiddleware(
            Handler("swallow"), readiness, request_signals=request_signals
        )
        handler = middleware.app
        assert isinstance(handler, Handler)
        server = FakeServer()
        signal = None if request_signals else readiness.draining.child()
        async with bounded_group() as tg:
            tg.start_soon(
                middleware._websocket, dict(WS_SCOPE), server.receive, server.send, signal
            )
            await handler.accepted.wait()
            tg.cancel_scope.cancel()  # the server's own cut (a hard stop)
        cut = 1 if swallowed_seen(anyio_backend_name) else 0
        assert (middleware.cancelled, middleware.websockets_closed, middleware.in_flight) == (
            cut,
            0,
            0,
        )

    async def test_the_library_cuts_at_its_limit(self) -> None:
        middleware = ReadinessMiddleware(Handler("forever"), Readiness())
        handler = middleware.app
        assert isinstance(handler, Handler)
        server = FakeServer()
        async with bounded_group() as tg:
            tg.start_soon(middleware, dict(WS_SCOPE), server.receive, server.send)
            await handler.accepted.wait()
            tg.start_soon(middleware.wait_idle)  # returns once the cut session unwound
            middleware.readiness.mark_draining()
            assert await middleware.close_websockets(0.3) == 1
        assert (middleware.cancelled, middleware.websockets_closed, middleware.in_flight) == (
            1,
            0,
            0,
        )

    @pytest.mark.parametrize("then", ["fail", "other-code"])
    async def test_an_error_the_close_did_not_cause_is_raised(self, then: str) -> None:
        middleware = ReadinessMiddleware(Handler(then), Readiness())
        handler = middleware.app
        assert isinstance(handler, Handler)
        server = FakeServer()
        errors: list[BaseException] = []

        async def session() -> None:
            try:
                await middleware(dict(WS_SCOPE), server.receive, server.send)
            except Exception as exc:
                errors.append(exc)

        async with bounded_group() as tg:
            tg.start_soon(session)
            await handler.accepted.wait()
            await middleware.close_websockets(None)
        assert [type(e) for e in errors] == [ValueError if then == "fail" else WebSocketGone]
        # closed by the library, but ended by an error of its own: neither closed nor cut
        assert (middleware.websockets_closed, middleware.cancelled) == (0, 0)

    async def test_an_error_with_the_close_code_after_the_disconnect_is_absorbed(
        self,
    ) -> None:
        middleware = ReadinessMiddleware(Handler("disconnect"), Readiness(), request_signals=False)
        handler = middleware.app
        assert isinstance(handler, Handler)
        server = FakeServer()
        async with bounded_group() as tg:
            tg.start_soon(middleware, dict(WS_SCOPE), server.receive, server.send)
            await handler.accepted.wait()
            await middleware.close_websockets(None)
        assert handler.received == [{"type": "websocket.disconnect", "code": 1001}]
        assert (middleware.websockets_closed, middleware.cancelled) == (1, 0)

    async def test_a_close_frame_the_server_cannot_send(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG, "stopscope")
        middleware = ReadinessMiddleware(Handler(), Readiness())
        handler = middleware.app
        assert isinstance(handler, Handler)
        server = FakeServer(refuse_close=True)
        async with bounded_group() as tg:
            tg.start_soon(middleware, dict(WS_SCOPE), server.receive, server.send)
            await handler.accepted.wait()
            await middleware.close_websockets(None)
        assert "the WebSocket close frame was not sent" in caplog.text
        assert handler.received == [{"type": "websocket.disconnect", "code": 1001}]

    async def test_the_session_ends_only_once_the_close_frame_left(self) -> None:
        """hypercorn closes the connection as soon as the handler returns: a handler
        that ends (here: its send after the close raises) while the close frame waits
        for the connection must not end before the frame was handed over."""
        middleware = ReadinessMiddleware(Handler("send-later"), Readiness())
        handler = middleware.app
        assert isinstance(handler, Handler)
        gate = anyio.Event()
        server = FakeServer(close_gate=gate)
        async with bounded_group() as tg:
            tg.start_soon(middleware, dict(WS_SCOPE), server.receive, server.send)
            await handler.accepted.wait()
            tg.start_soon(middleware.close_websockets, None)
            await server.close_waits.wait()  # the close frame waits at the gate
            handler.proceed.set()  # the handler sends, after the close began
            await anyio.wait_all_tasks_blocked()
            assert middleware.in_flight == 1  # held until the frame is out
            assert [m["type"] for m in server.sent] == ["websocket.accept"]
            gate.set()
        assert [m["type"] for m in server.sent] == ["websocket.accept", "websocket.close"]
        assert (middleware.in_flight, middleware.websockets_closed) == (0, 1)

    async def test_a_session_that_ended_gets_no_close_frame(self) -> None:
        readiness = Readiness()
        middleware = ReadinessMiddleware(Handler(), readiness)
        server = FakeServer()
        session = _WebSocketSession(middleware, server.receive, server.send)
        await session.receive()
        await session.send({"type": "websocket.accept"})
        await session.send({"type": "websocket.close", "code": 4000})
        await session.close(1001)  # it is over: nothing more is sent
        assert server.sent == [
            {"type": "websocket.accept"},
            {"type": "websocket.close", "code": 4000},
        ]
        assert not session.closed_by_library
        assert not session.caused(RuntimeError("unrelated"))

    async def test_after_the_close_receive_says_disconnect_and_send_raises(self) -> None:
        middleware = ReadinessMiddleware(Handler(), Readiness(), websocket_close_code=1012)
        server = FakeServer()
        session = _WebSocketSession(middleware, server.receive, server.send)
        await session.receive()
        await session.send({"type": "websocket.accept"})
        await session.close(1012)
        await session.close(1012)  # once
        assert server.sent[1:] == [
            {"type": "websocket.close", "code": 1012, "reason": "service restart"}
        ]
        assert await session.receive() == {"type": "websocket.disconnect", "code": 1012}
        with pytest.raises(OSError, match="closed by the server's drain") as raised:
            await session.send({"type": "websocket.send", "text": "late"})
        assert len(server.sent) == 2  # it did not reach the server
        wrapped = RuntimeError("wrapped")
        wrapped.__cause__ = raised.value
        assert session.caused(wrapped)
        unrelated = RuntimeError("unrelated")
        unrelated.__context__ = RuntimeError("neither")
        assert not session.caused(unrelated)


@pytest.fixture
def usr1_ignored() -> Iterator[None]:
    """A SIGUSR1 that reaches the previous handler must not kill pytest."""
    old = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR1, old)


@pytest.mark.usefixtures("usr1_ignored")
@pytest.mark.parametrize(
    ("backend", "server"),
    [("asyncio", "uvicorn"), ("asyncio", "hypercorn"), ("trio", "hypercorn")],
)
@pytest.mark.parametrize("path", ["/naive", "/stubborn"])
def test_run_fail_if_cut_short(backend: str, server: ServerName, path: str) -> None:
    """A session the library closed leaves run() at 0; one it cut makes it exit 70."""

    async def main(signal_: stopscope.StopSignal) -> str:
        app = App(expected=1)
        async with (
            anyio.create_task_group() as clients,
            WebService(signal=signal_, grace=2.0) as service,
        ):
            info = await service.serve(app, server=server, **quiet(server))
            client = Client(info, path)
            clients.start_soon(client.run)
            await app.all_accepted.wait()
            signal.raise_signal(signal.SIGUSR1)
        assert client.code == 1001
        return "done"

    if path == "/naive":
        assert (
            stopscope.run(main, backend=backend, signals=(signal.SIGUSR1,), fail_if_cut_short=True)
            == "done"
        )
    else:
        with pytest.raises(SystemExit) as info:
            stopscope.run(main, backend=backend, signals=(signal.SIGUSR1,), fail_if_cut_short=True)
        assert info.value.code == EXIT_CUT_SHORT == 70
