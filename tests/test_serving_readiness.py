"""Readiness and ReadinessMiddleware, driven by hand as an ASGI server would drive them."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterator, MutableMapping
from typing import Any, ClassVar

import anyio
import pytest

from stopscope import StopSignal
from stopscope.servers import (
    Readiness,
    ReadinessMiddleware,
    RequestStop,
    ServerInfo,
    request_signal,
)

pytestmark = pytest.mark.anyio

Message = MutableMapping[str, Any]
HANG_GUARD = 10.0


def http_scope(path: str = "/", method: str = "GET", http_version: str = "1.1") -> Message:
    return {"type": "http", "path": path, "method": method, "http_version": http_version}


class Exchange:
    """One request's receive and send, as a server offers them."""

    made: list[Exchange] = []  # noqa: RUF012  (closed after each test)

    def __init__(self, *incoming: Message) -> None:
        Exchange.made.append(self)
        self.send_in, self.receive_out = anyio.create_memory_object_stream[Message](10)
        for message in incoming:
            self.send_in.send_nowait(message)
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        return await self.receive_out.receive()

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.sent[0]["headers"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:])

    def close(self) -> None:
        self.send_in.close()
        self.receive_out.close()


@pytest.fixture(autouse=True)
def close_exchanges() -> Iterator[None]:
    yield
    while Exchange.made:
        Exchange.made.pop().close()


async def hello(scope: Message, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]})
    await send({"type": "http.response.body", "body": b"hello"})


def state(readiness: Readiness) -> str:
    """Read through a call: mypy would otherwise narrow the property between steps."""
    return readiness.state


class TestReadiness:
    def test_states_only_move_forward(self) -> None:
        readiness = Readiness()
        assert (state(readiness), readiness.ready) == ("starting", False)
        readiness.mark_ready()
        assert (state(readiness), readiness.ready) == ("ready", True)
        readiness.mark_stopping()
        assert (state(readiness), readiness.ready) == ("stopping", False)
        readiness.mark_ready()  # never back
        assert state(readiness) == "stopping"
        assert not readiness.draining.is_set()
        readiness.mark_draining()
        assert state(readiness) == "draining"
        assert readiness.draining.reason is RequestStop.SERVER_DRAINING
        readiness.mark_stopping()
        assert state(readiness) == "draining"
        assert repr(readiness) == "<Readiness draining>"
        assert repr(RequestStop.CLIENT_DISCONNECTED) == "RequestStop.CLIENT_DISCONNECTED"

    def test_stopping_before_ready(self) -> None:
        readiness = Readiness()
        readiness.mark_stopping()
        readiness.mark_ready()
        assert not readiness.ready

    def test_read_from_another_thread(self) -> None:
        readiness = Readiness()
        readiness.mark_ready()
        seen: list[bool] = []
        thread = threading.Thread(target=lambda: seen.append(readiness.ready))
        thread.start()
        thread.join()
        assert seen == [True]

    def test_server_info_url(self) -> None:
        assert ServerInfo("s", "127.0.0.1", 80, Readiness()).url == "http://127.0.0.1:80"
        assert ServerInfo("s", "::1", 80, Readiness()).url == "http://[::1]:80"

    def test_bad_arguments(self) -> None:
        with pytest.raises(TypeError, match="`app`"):
            ReadinessMiddleware(object(), Readiness())  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="`readiness`"):
            ReadinessMiddleware(hello, object())  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="`path`"):
            ReadinessMiddleware(hello, Readiness(), path="readyz")


class TestProbe:
    @pytest.mark.parametrize(
        ("state", "status", "body"),
        [
            ("starting", 503, b"not ready: starting\n"),
            ("ready", 200, b"ready\n"),
            ("stopping", 503, b"not ready: stopping\n"),
            ("draining", 503, b"not ready: draining\n"),
        ],
    )
    async def test_answers_by_state(self, state: str, status: int, body: bytes) -> None:
        readiness = Readiness()
        for step in ("ready", "stopping", "draining")[
            : ("starting", "ready", "stopping", "draining").index(state)
        ]:
            getattr(readiness, f"mark_{step}")()
        app = readiness.asgi(hello)
        exchange = Exchange()
        await app(http_scope("/readyz"), exchange.receive, exchange.send)
        assert (exchange.status, exchange.body) == (status, body)
        assert exchange.headers[b"cache-control"] == b"no-store"
        assert app.in_flight == 0  # probes are not requests of the app

    async def test_head_has_no_body(self) -> None:
        readiness = Readiness()
        readiness.mark_ready()
        exchange = Exchange()
        await readiness.asgi(hello)(http_scope("/readyz", "HEAD"), exchange.receive, exchange.send)
        assert (exchange.status, exchange.body) == (200, b"")

    async def test_other_methods_and_no_path_reach_the_app(self) -> None:
        readiness = Readiness()
        for app, scope in (
            (readiness.asgi(hello), http_scope("/readyz", "POST")),
            (readiness.asgi(hello, path=None), http_scope("/readyz")),
        ):
            exchange = Exchange({"type": "http.request", "body": b""})
            await app(scope, exchange.receive, exchange.send)
            assert exchange.body == b"hello"


class TestMiddleware:
    @pytest.mark.parametrize("request_signals", [True, False])
    async def test_connection_close_once_stopping(self, request_signals: bool) -> None:
        readiness = Readiness()
        readiness.mark_ready()
        app = readiness.asgi(hello, request_signals=request_signals)
        exchange = Exchange({"type": "http.request", "body": b""})
        await app(http_scope(), exchange.receive, exchange.send)
        assert b"connection" not in exchange.headers
        readiness.mark_stopping()
        for version, expected in (("1.1", b"close"), ("1.0", b"close"), ("2", None)):
            exchange = Exchange({"type": "http.request", "body": b""})
            await app(http_scope(http_version=version), exchange.receive, exchange.send)
            assert exchange.headers.get(b"connection") == expected, version
            assert exchange.headers[b"x-app"] == b"1"
        assert (app.in_flight, app.cancelled) == (0, 0)

    async def test_an_explicit_connection_header_is_kept(self) -> None:
        async def keep(scope: Message, receive: Any, send: Any) -> None:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"Connection", b"upgrade")],
                }
            )
            await send({"type": "http.response.body", "body": b""})

        readiness = Readiness()
        readiness.mark_stopping()
        exchange = Exchange({"type": "http.request", "body": b""})
        await readiness.asgi(keep)(http_scope(), exchange.receive, exchange.send)
        assert exchange.sent[0]["headers"] == [(b"Connection", b"upgrade")]

    async def test_lifespan_passes_through(self) -> None:
        seen: list[str] = []

        async def app(scope: Message, receive: Any, send: Any) -> None:
            seen.append(scope["type"])
            assert "stopscope.signal" not in scope

        middleware = Readiness().asgi(app)
        exchange = Exchange()
        await middleware({"type": "lifespan", "path": "/readyz"}, exchange.receive, exchange.send)
        assert seen == ["lifespan"]
        assert middleware.in_flight == 0

    async def test_app_errors_come_out_as_they_are(self) -> None:
        async def broken(scope: Message, receive: Any, send: Any) -> None:
            raise LookupError("the app's own")

        for request_signals in (True, False):
            app = Readiness().asgi(broken, request_signals=request_signals)
            exchange = Exchange({"type": "http.request", "body": b""})
            with pytest.raises(LookupError, match="the app's own"):
                await app(http_scope(), exchange.receive, exchange.send)
            assert app.in_flight == 0

    async def test_the_body_reaches_the_app_in_order(self) -> None:
        got: list[bytes] = []

        async def echo(scope: Message, receive: Any, send: Any) -> None:
            while True:
                message = await receive()
                got.append(message["body"])
                if not message["more_body"]:
                    break
            await hello(scope, receive, send)

        exchange = Exchange(
            {"type": "http.request", "body": b"a", "more_body": True},
            {"type": "http.request", "body": b"b", "more_body": True},
            {"type": "http.request", "body": b"c", "more_body": False},
        )
        with anyio.fail_after(HANG_GUARD):
            await Readiness().asgi(echo)(http_scope(), exchange.receive, exchange.send)
        assert got == [b"a", b"b", b"c"]


class TestRequestSignal:
    async def test_set_on_disconnect_while_the_app_waits(self) -> None:
        reasons: list[object] = []
        after: list[Message] = []

        async def watcher(scope: Message, receive: Any, send: Any) -> None:
            stop = request_signal(scope)
            await stop.wait()
            reasons.append(stop.reason)
            after.append(await receive())  # the disconnect is still delivered
            after.append(await receive())  # and again, as servers do

        exchange = Exchange({"type": "http.request", "body": b""}, {"type": "http.disconnect"})
        with anyio.fail_after(HANG_GUARD):
            await Readiness().asgi(watcher)(http_scope(), exchange.receive, exchange.send)
        assert reasons == [RequestStop.CLIENT_DISCONNECTED]
        assert after[1:] == [{"type": "http.disconnect"}]

    async def test_not_set_by_the_disconnect_after_the_response(self) -> None:
        signals: list[StopSignal] = []

        async def answer_then_wait(scope: Message, receive: Any, send: Any) -> None:
            signals.append(request_signal(scope))
            await hello(scope, receive, send)
            await receive()  # body
            await receive()  # the disconnect that follows a complete response

        exchange = Exchange({"type": "http.request", "body": b""}, {"type": "http.disconnect"})
        with anyio.fail_after(HANG_GUARD):
            await Readiness().asgi(answer_then_wait)(http_scope(), exchange.receive, exchange.send)
        assert not signals[0].is_set()

    async def test_set_when_the_server_drains(self) -> None:
        readiness = Readiness()
        readiness.mark_ready()
        reasons: list[object] = []

        async def watcher(scope: Message, receive: Any, send: Any) -> None:
            stop = request_signal(scope)
            readiness.mark_draining()  # what the server member does after the delay
            await stop.wait()
            reasons.append(stop.reason)

        exchange = Exchange({"type": "http.request", "body": b""})
        with anyio.fail_after(HANG_GUARD):
            await readiness.asgi(watcher)(http_scope(), exchange.receive, exchange.send)
        assert reasons == [RequestStop.SERVER_DRAINING]

    @pytest.mark.parametrize("kind", ["http", "websocket"])
    @pytest.mark.parametrize("draining", ["outer", "inner"])
    async def test_nested_middleware_hears_either_drain(self, kind: str, draining: str) -> None:
        # an app wrapped in its own middleware, then served by a server member (or
        # GracefulApp, whose WebSocket path puts a bare signal in the scope): the inner
        # middleware used to replace the outer's signal, and the handler missed the
        # server's drain
        outer, inner = Readiness(), Readiness()
        outer.mark_ready()
        inner.mark_ready()
        reasons: list[object] = []
        entered = anyio.Event()

        async def watcher(scope: Message, receive: Any, send: Any) -> None:
            stop = request_signal(scope)
            entered.set()
            await stop.wait()
            reasons.append(stop.reason)

        app = outer.asgi(inner.asgi(watcher))
        scope = http_scope() if kind == "http" else {"type": "websocket", "path": "/ws"}
        exchange = Exchange({"type": "http.request", "body": b""} if kind == "http" else {})
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(app, scope, exchange.receive, exchange.send)
                await entered.wait()
                (outer if draining == "outer" else inner).mark_draining()
        assert reasons == [RequestStop.SERVER_DRAINING]

    async def test_nested_under_a_bare_signal_hears_it(self) -> None:
        # GracefulApp with request_signals=False gives WebSocket sessions a bare signal
        readiness = Readiness()
        readiness.mark_ready()
        server_draining = StopSignal()
        reasons: list[object] = []
        entered = anyio.Event()

        async def watcher(scope: Message, receive: Any, send: Any) -> None:
            stop = request_signal(scope)
            entered.set()
            await stop.wait()
            reasons.append(stop.reason)

        scope = {"type": "websocket", "path": "/ws", "stopscope.signal": server_draining}
        exchange = Exchange()
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(readiness.asgi(watcher), scope, exchange.receive, exchange.send)
                await entered.wait()
                server_draining.set(RequestStop.SERVER_DRAINING)
        assert reasons == [RequestStop.SERVER_DRAINING]

    async def test_a_receive_error_reaches_the_app(self) -> None:
        async def failing_receive() -> Message:
            raise ConnectionResetError("gone")

        async def reader(scope: Message, receive: Any, send: Any) -> None:
            await receive()

        with anyio.fail_after(HANG_GUARD), pytest.raises(ConnectionResetError, match="gone"):
            await Readiness().asgi(reader)(http_scope(), failing_receive, Exchange().send)

    async def test_cancellation_is_counted(self) -> None:
        entered = anyio.Event()

        async def stuck(scope: Message, receive: Any, send: Any) -> None:
            entered.set()
            await anyio.sleep_forever()

        app = Readiness().asgi(stuck)
        exchange = Exchange({"type": "http.request", "body": b""})
        async with anyio.create_task_group() as tg:
            tg.start_soon(app, http_scope(), exchange.receive, exchange.send)
            await entered.wait()
            assert app.in_flight == 1
            tg.cancel_scope.cancel()
        assert (app.in_flight, app.cancelled) == (0, 1)

    async def test_made_only_when_asked(self) -> None:
        """No signal, no watching task, for a request whose handler never asks."""
        seen: list[Message] = []

        async def quiet(scope: Message, receive: Any, send: Any) -> None:
            seen.append(scope)
            await hello(scope, receive, send)

        async def asking(scope: Message, receive: Any, send: Any) -> None:
            seen.append(scope)
            assert request_signal(scope) is request_signal(scope)  # one per request
            await hello(scope, receive, send)

        for app in (quiet, asking):
            exchange = Exchange({"type": "http.request", "body": b""})
            await Readiness().asgi(app)(http_scope(), exchange.receive, exchange.send)
        assert [scope["stopscope.signal"]._watch is None for scope in seen] == [True, False]

    async def test_asked_after_the_app_saw_the_disconnect(self) -> None:
        reasons: list[object] = []

        async def late(scope: Message, receive: Any, send: Any) -> None:
            await receive()  # the body
            assert (await receive())["type"] == "http.disconnect"
            reasons.append(request_signal(scope).reason)  # born set

        exchange = Exchange({"type": "http.request", "body": b""}, {"type": "http.disconnect"})
        with anyio.fail_after(HANG_GUARD):
            await Readiness().asgi(late)(http_scope(), exchange.receive, exchange.send)
        assert reasons == [RequestStop.CLIENT_DISCONNECTED]

    async def test_asked_while_the_app_reads_no_message_is_lost(self) -> None:
        """A handler that asks for its signal while another of its tasks is inside
        ``receive()``: the watch waits its turn, and every message reaches the app once,
        in order (a server's receive hands each message to one caller only)."""
        got: list[Message] = []
        reasons: list[object] = []

        async def reader(scope: Message, receive: Any, send: Any) -> None:
            async def read_all() -> None:
                while True:
                    message = await receive()
                    got.append(message)
                    if message["type"] == "http.disconnect":
                        return

            async with anyio.create_task_group() as tg:
                tg.start_soon(read_all)
                await anyio.wait_all_tasks_blocked()  # read_all waits in receive()
                stop = request_signal(scope)
                exchange.send_in.send_nowait(
                    {"type": "http.request", "body": b"a", "more_body": True}
                )
                exchange.send_in.send_nowait({"type": "http.request", "body": b"b"})
                exchange.send_in.send_nowait({"type": "http.disconnect"})
                await stop.wait()
                reasons.append(stop.reason)

        exchange = Exchange()
        with anyio.fail_after(HANG_GUARD):
            await Readiness().asgi(reader)(http_scope(), exchange.receive, exchange.send)
        assert [m.get("body") for m in got] == [b"a", b"b", None]
        assert reasons == [RequestStop.CLIENT_DISCONNECTED]

    async def test_asked_from_a_worker_thread(self) -> None:
        """A sync handler (Starlette runs them in a worker thread) may ask too."""
        readiness = Readiness()
        reasons: list[object] = []

        def sync_handler(scope: Message) -> None:
            stop = request_signal(scope)
            readiness.mark_draining()
            assert stop.wait_blocking(HANG_GUARD)
            reasons.append(stop.reason)

        async def app(scope: Message, receive: Any, send: Any) -> None:
            await anyio.to_thread.run_sync(sync_handler, scope)

        exchange = Exchange({"type": "http.request", "body": b""})
        with anyio.fail_after(HANG_GUARD):
            await readiness.asgi(app)(http_scope(), exchange.receive, exchange.send)
        assert reasons == [RequestStop.SERVER_DRAINING]

    async def test_a_websocket_session_has_one(self) -> None:
        readiness = Readiness()
        reasons: list[object] = []
        after: list[Message] = []

        async def chat(scope: Message, receive: Any, send: Any) -> None:
            stop = request_signal(scope)
            assert (await receive())["type"] == "websocket.connect"
            await send({"type": "websocket.accept"})
            await stop.wait()
            reasons.append(stop.reason)
            after.append(await receive())

        app = readiness.asgi(chat)
        for incoming, reason in (
            (({"type": "websocket.disconnect", "code": 1001},), RequestStop.CLIENT_DISCONNECTED),
            ((), RequestStop.SERVER_DRAINING),  # last: the readiness drains for good
        ):
            exchange = Exchange({"type": "websocket.connect"}, *incoming)
            scope = {"type": "websocket", "path": "/ws"}
            with anyio.fail_after(HANG_GUARD):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(app, scope, exchange.receive, exchange.send)
                    await anyio.wait_all_tasks_blocked()
                    if reason is RequestStop.SERVER_DRAINING:
                        assert app.in_flight == 1  # a session in flight, as a request
                        readiness.mark_draining()
                        exchange.send_in.send_nowait({"type": "websocket.disconnect", "code": 1000})
            assert reasons.pop() is reason
        assert [m["type"] for m in after] == ["websocket.disconnect"] * 2
        assert app.in_flight == 0

    @pytest.mark.parametrize("asking", [False, True], ids=["not-asking", "asking"])
    async def test_no_reference_cycle_per_request(self, asking: bool) -> None:
        """Servers hand out ``receive``/``send`` as methods of a request object that
        holds the scope; the scope holds the request's entry: a cycle per request for
        the garbage collector (its pauses doubled the p99 latency) unless the
        middleware breaks it when the request ends."""

        class ServerRequest:  # as uvicorn's RequestResponseCycle, hypercorn's HTTPStream
            def __init__(self) -> None:
                self.scope = http_scope()

            async def receive(self) -> Message:
                await anyio.sleep_forever()
                raise AssertionError("unreachable")

            async def send(self, message: Message) -> None:
                pass

        async def app(scope: Message, receive: Any, send: Any) -> None:
            if asking:
                request_signal(scope)
            await hello(scope, receive, send)

        middleware = Readiness().asgi(app)
        request = ServerRequest()
        gone = weakref.ref(request)
        gc.disable()
        try:
            await middleware(request.scope, request.receive, request.send)
            del request
            await anyio.wait_all_tasks_blocked()  # a watch's task unwinds
            assert gone() is None
        finally:
            gc.enable()

    def test_outside_the_middleware(self) -> None:
        with pytest.raises(RuntimeError, match="no stop signal"):
            request_signal(http_scope())
        with pytest.raises(RuntimeError, match="no stop signal"):
            request_signal(object())

        class Request:
            scope: ClassVar = {"stopscope.signal": "not a signal"}

        with pytest.raises(RuntimeError, match="is not a StopSignal"):
            request_signal(Request())
        sig = StopSignal()

        class Good:
            scope: ClassVar = {"stopscope.signal": sig}

        assert request_signal(Good()) is sig


class TestExports:
    def test_all_matches_public_names(self) -> None:
        import stopscope.servers as servers

        public = {
            name
            for name, value in vars(servers).items()
            if not name.startswith("_") and getattr(value, "__module__", None) == servers.__name__
        }
        assert set(servers.__all__) == public
        for name in servers.__all__:
            assert getattr(servers, name).__module__ == "stopscope.servers"

    def test_the_servers_are_imported_only_when_started(self) -> None:
        import subprocess
        import sys

        code = (
            "import sys, stopscope.servers; "
            "print(sorted(m for m in ('uvicorn', 'hypercorn', 'starlette', 'httpx') "
            "if m in sys.modules))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
        )
        assert out.stdout.strip() == "[]"
