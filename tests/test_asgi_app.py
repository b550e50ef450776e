"""GracefulApp driven in-process, as a server drives it: the ASGI lifespan, SIGTERM
raised for real and chained to a server handler, bad input and misuse.

The servers' own commands are in tests/test_asgi_servers.py.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from stopscope import Outcome, StopSignal, stop_on_signals
from stopscope.asgi import GracefulApp
from stopscope.servers import RequestStop, request_signal
from stopscope.servers._readiness import ASGIApp, Message, Receive, Scope, Send

pytestmark = pytest.mark.anyio

HANG_GUARD = 20.0
TERM = signal.SIGTERM


class Recorder:
    """A server's SIGTERM handler, as uvicorn's ``handle_exit``: it records the call."""

    def __init__(self) -> None:
        self.got: list[int] = []
        self.called = anyio.Event()

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.got.append(signum)
        self.called.set()


@pytest.fixture
def server_handler() -> Iterator[Recorder]:
    """SIGTERM handled by a recorder (the "server's" handler), restored afterwards."""
    recorder = Recorder()
    old = signal.signal(TERM, recorder)
    try:
        yield recorder
    finally:
        signal.signal(TERM, old)


class Server:
    """What a server does with an app's lifespan, one message at a time."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._to_app, self._app_in = anyio.create_memory_object_stream[Message](10)
        self._app_out, self._from_app = anyio.create_memory_object_stream[Message](10)
        self.returned = anyio.Event()

    async def run(self) -> None:
        try:
            scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
            await self.app(scope, self._app_in.receive, self._app_out.send)
        finally:
            for stream in (self._to_app, self._app_in, self._app_out, self._from_app):
                stream.close()
            self.returned.set()

    async def step(self, step: str) -> Message:
        await self._to_app.send({"type": f"lifespan.{step}"})
        return await self._from_app.receive()

    async def get(self, path: str) -> tuple[int, bytes]:
        return await get(self.app, path)


async def get(app: ASGIApp, path: str) -> tuple[int, bytes]:
    """One GET request, as a server passes it on: the status and body."""
    sent: list[Message] = []
    requested = False

    async def receive() -> Message:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await anyio.sleep_forever()
        raise AssertionError

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [],
        "root_path": "",
        "scheme": "http",
        "server": ("test", 80),
    }
    await app(scope, receive, send)
    return int(sent[0]["status"]), b"".join(m.get("body", b"") for m in sent[1:])


def make_app(steps: list[str], fail_startup: bool = False) -> Starlette:
    """A Starlette app whose lifespan starts a background member that notes when it
    hears its stop."""

    async def background(signal: StopSignal) -> None:
        steps.append("background started")
        await signal.wait()
        steps.append("background stopped")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        graceful = GracefulApp.current()
        graceful.start_soon(background, graceful.signal, name="background")
        if fail_startup:
            raise RuntimeError("no database")
        yield
        steps.append("app shutdown")

    async def index(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/", index)], lifespan=lifespan)


class TestLifespan:
    async def test_sigterm_turns_not_ready_then_reaches_the_server(
        self, server_handler: Recorder
    ) -> None:
        steps: list[str] = []
        graceful = GracefulApp(make_app(steps), grace=10)
        server = Server(graceful)
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.run)
                assert await server.step("startup") == {"type": "lifespan.startup.complete"}
                assert (await server.get("/readyz"))[0] == 200
                signal.raise_signal(TERM)
                await server_handler.called.wait()  # after our handler, on the loop
                assert server_handler.got == [TERM]
                assert graceful.readiness.state == "draining"
                assert (await server.get("/readyz"))[0] == 503
                # the server drains its HTTP side; the background still runs
                await anyio.wait_all_tasks_blocked()
                assert steps == ["background started"]
                reply = await server.step("shutdown")
        assert reply == {"type": "lifespan.shutdown.complete"}
        assert steps == ["background started", "background stopped", "app shutdown"]
        assert graceful.report.reason is TERM
        assert [r.outcome.value for r in graceful.report.tasks] == ["stopped", "stopped"]
        assert signal.getsignal(TERM) is server_handler  # ours is gone

    async def test_a_repeated_sigterm_does_not_cut_the_drain_delay_short(
        self, server_handler: Recorder
    ) -> None:
        # a process-group kill reaches a gunicorn worker twice: from the supervisor,
        # then from its master
        graceful = GracefulApp(make_app([]), grace=3600, drain_delay=3000)
        server = Server(graceful)
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.run)
                await server.step("startup")
                signal.raise_signal(TERM)
                signal.raise_signal(TERM)
                await anyio.wait_all_tasks_blocked()
                assert graceful.readiness.state == "stopping"  # serving the drain delay
                assert server_handler.got == []
                # the server stops on its own (SIGINT): the delay is called off
                assert await server.step("shutdown") == {"type": "lifespan.shutdown.complete"}
        assert server_handler.got == []
        assert graceful.report.reason is TERM

    async def test_server_stopping_on_its_own_stops_the_background_after_it(
        self, server_handler: Recorder, caplog: pytest.LogCaptureFixture
    ) -> None:
        steps: list[str] = []
        graceful = GracefulApp(make_app(steps), grace=10, name="svc")
        server = Server(graceful)
        caplog.set_level(logging.INFO, logger="stopscope")
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.run)
                await server.step("startup")
                assert await server.step("shutdown") == {"type": "lifespan.shutdown.complete"}
        assert server_handler.got == []  # nothing to pass on: the server is stopping
        assert steps == ["background started", "background stopped", "app shutdown"]
        assert graceful.report.reason == "server shutdown"
        assert any("svc report: background" in m for m in caplog.messages)

    async def test_requests_the_server_cut_make_the_http_member_cancelled(
        self, server_handler: Recorder, caplog: pytest.LogCaptureFixture
    ) -> None:
        cleanup = anyio.Event()

        async def hang(request: Request) -> PlainTextResponse:
            try:
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    await cleanup.wait()  # unwinds after the server's lifespan shutdown
            raise AssertionError

        graceful = GracefulApp(Starlette(routes=[Route("/hang", hang)]), grace=10)
        server = Server(graceful)
        request_scope = anyio.CancelScope()
        replies: list[Message] = []

        async def request() -> None:
            with request_scope:
                await get(graceful, "/hang")

        async def shutdown() -> None:
            replies.append(await server.step("shutdown"))

        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.run)
                await server.step("startup")
                tg.start_soon(request)
                await anyio.wait_all_tasks_blocked()
                assert graceful.in_flight == 1
                graceful.stop("deploy")
                await server_handler.called.wait()
                # uvicorn's drain timeout: it cancels the request's task and goes on
                # with the lifespan shutdown at once, before the task has unwound
                request_scope.cancel()
                tg.start_soon(shutdown)
                await anyio.wait_all_tasks_blocked()
                cleanup.set()
        assert replies == [{"type": "lifespan.shutdown.complete"}]
        assert graceful.report.by_name("http").outcome is Outcome.CANCELLED
        assert "1 request(s) did not finish within the grace period" in caplog.text

    async def test_a_failing_background_member_stops_the_server_gracefully(
        self, server_handler: Recorder
    ) -> None:
        failed = anyio.Event()

        async def fragile(signal: StopSignal) -> None:
            await failed.wait()
            raise OSError("disk full")

        @asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            GracefulApp.current().start_soon(fragile, GracefulApp.current().signal)
            yield

        graceful = GracefulApp(Starlette(lifespan=lifespan), grace=10)
        server = Server(graceful)
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.run)
                await server.step("startup")
                failed.set()
                await server_handler.called.wait()  # not ready, drain, then the server
                assert graceful.readiness.state == "draining"
                reply = await server.step("shutdown")
        assert reply["type"] == "lifespan.shutdown.failed"
        assert "disk full" in reply["message"]
        assert isinstance(graceful.report.reason, OSError)

    async def test_stop_from_the_app_stops_the_server_too(self, server_handler: Recorder) -> None:
        graceful = GracefulApp(make_app([]), grace=10)
        server = Server(graceful)
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.run)
                await server.step("startup")
                assert graceful.stop("maintenance")
                await server_handler.called.wait()
                await server.step("shutdown")
        assert graceful.report.reason == "maintenance"

    async def test_app_startup_failure_is_the_servers_startup_failure(
        self, server_handler: Recorder
    ) -> None:
        steps: list[str] = []
        graceful = GracefulApp(make_app(steps, fail_startup=True), grace=10)
        server = Server(graceful)
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.run)
                reply = await server.step("startup")
                await server.returned.wait()
        assert reply["type"] == "lifespan.startup.failed"
        assert "no database" in reply["message"]
        assert steps == ["background started", "background stopped"]
        assert signal.getsignal(TERM) is server_handler

    async def test_an_app_without_lifespan_is_served(self, server_handler: Recorder) -> None:
        async def plain(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                raise ValueError(f"unsupported scope {scope['type']}")
            await PlainTextResponse("plain")(scope, receive, send)

        graceful = GracefulApp(plain, grace=10)
        server = Server(graceful)
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.run)
                assert await server.step("startup") == {"type": "lifespan.startup.complete"}
                assert (await server.get("/"))[1] == b"plain"
                assert await server.step("shutdown") == {"type": "lifespan.shutdown.complete"}

    async def test_websocket_gets_a_connection_stop_signal(self, server_handler: Recorder) -> None:
        heard: list[object] = []

        async def ws(websocket: WebSocket) -> None:
            await websocket.accept()
            stop = request_signal(websocket)
            await websocket.send_text("hello")
            await stop.wait()
            heard.append(stop.reason)
            await websocket.close(1001)

        graceful = GracefulApp(Starlette(routes=[WebSocketRoute("/ws", ws)]), grace=10)
        server = Server(graceful)
        sent: list[Message] = []
        connected = anyio.Event()

        async def ws_receive() -> Message:
            if not sent:
                return {"type": "websocket.connect"}
            await anyio.sleep_forever()
            raise AssertionError

        async def ws_send(message: Message) -> None:
            sent.append(message)
            if message["type"] == "websocket.send":
                connected.set()

        scope: dict[str, Any] = {
            "type": "websocket",
            "path": "/ws",
            "raw_path": b"/ws",
            "query_string": b"",
            "headers": [],
            "root_path": "",
            "scheme": "ws",
            "server": ("test", 80),
            "subprotocols": [],
        }
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.run)
                await server.step("startup")
                async with anyio.create_task_group() as conn:
                    conn.start_soon(graceful, scope, ws_receive, ws_send)
                    await connected.wait()
                    graceful.stop("deploy")
                    await server_handler.called.wait()
                await server.step("shutdown")
        assert heard == [RequestStop.SERVER_DRAINING]
        assert sent[-1] == {"type": "websocket.close", "code": 1001, "reason": ""}


class TestMisuse:
    def test_drain_delay_not_shorter_than_the_grace(self) -> None:
        with pytest.raises(ValueError, match=r"`drain_delay` \(5 s\) must be shorter"):
            GracefulApp(make_app([]), grace=5, drain_delay=5)

    @pytest.mark.parametrize("delay", [-1, float("nan"), float("inf")])
    def test_bad_drain_delay(self, delay: float) -> None:
        with pytest.raises(ValueError, match="`drain_delay`"):
            GracefulApp(make_app([]), drain_delay=delay)

    def test_drain_delay_type(self) -> None:
        with pytest.raises(TypeError, match="`drain_delay`"):
            GracefulApp(make_app([]), drain_delay="5")  # type: ignore[arg-type]

    def test_not_an_app(self) -> None:
        with pytest.raises(TypeError, match="`app` must be an ASGI application"):
            GracefulApp(42)  # type: ignore[arg-type]

    def test_wrapped_twice(self) -> None:
        with pytest.raises(ValueError, match="wrap the application once"):
            GracefulApp(GracefulApp(make_app([])))

    async def test_wrapped_twice_through_middleware(self, server_handler: Recorder) -> None:
        inner = Starlette(middleware=[Middleware(GracefulApp, grace=5)])
        graceful = GracefulApp(inner, grace=10)
        server = Server(graceful)
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.run)
                reply = await server.step("startup")
        assert reply["type"] == "lifespan.startup.failed"
        assert "wrapped in GracefulApp twice" in reply["message"]
        assert "keep only the outer one" in reply["message"]

    async def test_one_instance_per_server(self, server_handler: Recorder) -> None:
        graceful = GracefulApp(make_app([]), grace=10)
        first, second = Server(graceful), Server(graceful)
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(first.run)
                await first.step("startup")
                tg.start_soon(second.run)
                reply = await second.step("startup")
                assert reply["type"] == "lifespan.startup.failed"
                assert "create one per server" in reply["message"]
                await first.step("shutdown")

    async def test_request_without_lifespan_says_what_to_do(self) -> None:
        with pytest.raises(RuntimeError, match="--lifespan on"):
            await get(GracefulApp(make_app([])), "/")

    async def test_background_members_only_from_the_lifespan_startup(
        self, server_handler: Recorder
    ) -> None:
        graceful = GracefulApp(make_app([]), grace=10)
        with pytest.raises(RuntimeError, match="from the app's lifespan startup"):
            graceful.start_soon(anyio.sleep, 1)
        with pytest.raises(RuntimeError, match="lifespan startup on"):
            _ = graceful.signal
        server = Server(graceful)
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.run)
                await server.step("startup")
                with pytest.raises(RuntimeError, match="before its `yield`"):
                    graceful.start_soon(anyio.sleep, 1)
                await server.step("shutdown")

    def test_current_outside_a_lifespan(self) -> None:
        with pytest.raises(RuntimeError, match="in the app's lifespan"):
            GracefulApp.current()


class TestLoopLevelHandler:
    """``loop.add_signal_handler()`` (hypercorn -w 0 on asyncio) acts on the loop's
    wake-up fd whatever Python handler is installed: refused with advice."""

    @pytest.fixture(
        params=[
            pytest.param(("asyncio", {}), id="asyncio"),
            pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio+uvloop"),
        ]
    )
    def anyio_backend(self, request: pytest.FixtureRequest) -> Any:
        return request.param

    async def test_loop_level_handler_is_refused_with_advice(self) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(TERM, lambda: None)
        try:
            server = Server(GracefulApp(make_app([]), grace=10))
            with anyio.fail_after(HANG_GUARD):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(server.run)
                    reply = await server.step("startup")
        finally:
            loop.remove_signal_handler(TERM)
        assert reply["type"] == "lifespan.startup.failed"
        assert "loop.add_signal_handler()" in reply["message"]
        assert "drop `-w 0`" in reply["message"]


class TestStopOnSignalsInsideAServer:
    """``stop_on_signals()`` in an app's lifespan used to take SIGTERM from uvicorn for
    good: the server never stopped (gunicorn's SIGHUP left the old workers serving)."""

    async def test_the_servers_handler_still_hears_the_signal(self) -> None:
        import uvicorn

        server = uvicorn.Server(uvicorn.Config(make_app([])))
        old = signal.signal(TERM, server.handle_exit)
        try:
            sig = StopSignal()
            with anyio.fail_after(HANG_GUARD):
                async with stop_on_signals(sig, TERM):
                    signal.raise_signal(TERM)
                    await sig.wait()
                    while not server.should_exit:
                        await anyio.sleep(0.01)
            assert sig.reason is TERM
            assert signal.getsignal(TERM) == server.handle_exit
        finally:
            signal.signal(TERM, old)

    async def test_inside_a_graceful_app_the_wrapper_still_hears_it(
        self, server_handler: Recorder
    ) -> None:
        trapped = StopSignal()

        @asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            async with stop_on_signals(trapped, TERM):
                yield

        graceful = GracefulApp(Starlette(lifespan=lifespan), grace=10)
        server = Server(graceful)
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.run)
                await server.step("startup")
                signal.raise_signal(TERM)
                await server_handler.called.wait()  # through the trap, then the wrapper
                assert trapped.reason is TERM
                assert graceful.readiness.state == "draining"
                await server.step("shutdown")
        assert signal.getsignal(TERM) is server_handler


class TestExports:
    def test_all_matches_public_names(self) -> None:
        import stopscope.asgi as asgi

        public = {
            name
            for name, value in vars(asgi).items()
            if not name.startswith("_") and getattr(value, "__module__", None) == asgi.__name__
        }
        assert set(asgi.__all__) == public == {"GracefulApp"}
        assert GracefulApp.__module__ == "stopscope.asgi"

    def test_no_server_is_imported(self) -> None:
        import subprocess
        import sys

        code = (
            "import sys, stopscope.asgi; "
            "print(sorted(m for m in ('uvicorn', 'hypercorn', 'gunicorn', 'starlette') "
            "if m in sys.modules))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
        )
        assert out.stdout.strip() == "[]"
