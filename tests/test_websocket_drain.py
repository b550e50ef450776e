"""WebSocket sessions drained by the library: real uvicorn and hypercorn servers, real
WebSocket clients over TCP.

The client is wsproto over an anyio TCP stream, so it runs in the test's own loop on
every backend.  Sessions are held open and ordered by events, never by sleeps; the
servers' logs are captured and must hold no traceback.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Literal

import anyio
import pytest
from anyio.abc import ByteStream
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from stopscope import Outcome, TaskScope
from stopscope.asgi import GracefulApp
from stopscope.servers import (
    Readiness,
    ReadinessMiddleware,
    ServerInfo,
    request_signal,
    start_hypercorn,
    start_uvicorn,
)

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
