"""Server members in-process: real uvicorn and hypercorn servers, a real HTTP client.

Each test starts a real server on 127.0.0.1 (a free port) as a member of a TaskScope
and talks to it over TCP with httpx, on every backend the server supports.  Requests
are held open by events the test controls, never by sleeps; the only wall-clock
assumption is that a drain delay of DRAIN_DELAY seconds outlasts a few local requests.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import anyio
import httpx
import pytest
from anyio.abc import TaskStatus
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from stopscope import Outcome, StopSignal, TaskScope

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup
from stopscope.servers import (
    Readiness,
    RequestStop,
    ServerInfo,
    WebService,
    request_signal,
    start_hypercorn,
    start_uvicorn,
)

pytestmark = pytest.mark.anyio

#: seconds; only a guard against hangs, never a timing assertion
HANG_GUARD = 30.0
#: long enough for a few requests over loopback to happen inside it
DRAIN_DELAY = 2.0

Backend = tuple[str, dict[str, Any]]
ServerName = Literal["uvicorn", "hypercorn"]

ASYNCIO: Backend = ("asyncio", {"debug": True})
UVLOOP: Backend = ("asyncio", {"use_uvloop": True})
TRIO: Backend = ("trio", {})

#: every (backend, server) pair the servers support
COMBOS = [
    pytest.param(ASYNCIO, "uvicorn", id="uvicorn-asyncio"),
    pytest.param(UVLOOP, "uvicorn", id="uvicorn-uvloop"),
    pytest.param(ASYNCIO, "hypercorn", id="hypercorn-asyncio"),
    pytest.param(UVLOOP, "hypercorn", id="hypercorn-uvloop"),
    pytest.param(TRIO, "hypercorn", id="hypercorn-trio"),
]
combos = pytest.mark.parametrize(("anyio_backend", "server"), COMBOS)

Start = Callable[..., Awaitable[ServerInfo]]


def starter(server: ServerName) -> Start:
    return start_uvicorn if server == "uvicorn" else start_hypercorn


def quiet(server: ServerName) -> dict[str, Any]:
    """Options that keep the server from reconfiguring the test process's logging."""
    return {"log_config": None, "access_log": False} if server == "uvicorn" else {}


class Gate:
    """Holds a request open until the test releases it."""

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.release = anyio.Event()
        self.reasons: list[object] = []
        self.events: list[str] = []


def make_app(gate: Gate) -> Starlette:
    async def index(request: Request) -> PlainTextResponse:
        gate.events.append("index")
        return PlainTextResponse("ok\n")

    async def held(request: Request) -> PlainTextResponse:
        gate.entered.set()
        await gate.release.wait()
        gate.events.append("held")
        return PlainTextResponse("done\n")

    async def watch(request: Request) -> PlainTextResponse:
        stop = request_signal(request)
        gate.entered.set()
        await stop.wait()
        gate.reasons.append(stop.reason)
        return PlainTextResponse(f"{stop.reason!r}\n")

    return Starlette(routes=[Route("/", index), Route("/held", held), Route("/watch", watch)])


async def fresh_get(info: ServerInfo, path: str) -> httpx.Response:
    """A request on a connection of its own (a new client, as a load balancer's probe)."""
    async with httpx.AsyncClient(base_url=info.url) as client:
        return await client.get(path)


async def refused(port: int) -> bool:
    try:
        stream = await anyio.connect_tcp("127.0.0.1", port)
    except OSError:
        return True
    await stream.aclose()
    return False


async def wait_refused(port: int) -> None:
    """Poll until the listener is closed (uvicorn looks at its stop flag every 0.1 s)."""
    with anyio.fail_after(HANG_GUARD):
        while not await refused(port):
            await anyio.sleep(0.01)


class TestServing:
    @combos
    async def test_serves_then_stops(self, server: ServerName) -> None:
        gate = Gate()
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=HANG_GUARD) as scope:
                info = await starter(server)(scope, make_app(gate), **quiet(server))
                assert info.host == "127.0.0.1"
                assert info.port > 0
                assert info.url == f"http://127.0.0.1:{info.port}"
                assert info.name == server
                assert info.readiness.ready
                response = await fresh_get(info, "/")
                assert (response.status_code, response.text) == (200, "ok\n")
                assert "connection" not in response.headers
                probe = await fresh_get(info, "/readyz")
                assert (probe.status_code, probe.text) == (200, "ready\n")
        record = scope.report.by_name(server)
        assert record.kind == "server"
        assert record.outcome is Outcome.STOPPED
        assert info.readiness.state == "draining"
        assert await refused(info.port)

    @combos
    @pytest.mark.parametrize("grace", [HANG_GUARD, None], ids=["grace", "no-grace"])
    async def test_in_flight_request_completes_after_the_listener_closed(
        self, server: ServerName, grace: float | None
    ) -> None:
        gate = Gate()
        responses: list[httpx.Response] = []
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=grace) as scope:
                info = await starter(server)(scope, make_app(gate), **quiet(server))
                async with (
                    httpx.AsyncClient(base_url=info.url) as client,
                    anyio.create_task_group() as tg,
                ):

                    async def slow() -> None:
                        responses.append(await client.get("/held"))

                    tg.start_soon(slow)
                    await gate.entered.wait()
                    scope.stop("deploy")
                    assert not info.readiness.ready  # at once, inside stop()
                    await info.readiness.draining.wait()
                    await wait_refused(info.port)  # no drain delay: closed at once
                    assert not responses  # still in flight
                    gate.release.set()
        assert [r.status_code for r in responses] == [200]
        assert responses[0].text == "done\n"
        assert scope.report.by_name(server).outcome is Outcome.STOPPED

    @combos
    async def test_drain_delay_keeps_serving_while_not_ready(self, server: ServerName) -> None:
        gate = Gate()
        responses: list[httpx.Response] = []
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=HANG_GUARD) as scope:
                info = await starter(server)(
                    scope, make_app(gate), drain_delay=DRAIN_DELAY, **quiet(server)
                )
                async with (
                    httpx.AsyncClient(base_url=info.url) as client,
                    anyio.create_task_group() as tg,
                ):

                    async def slow() -> None:
                        responses.append(await client.get("/held"))

                    tg.start_soon(slow)
                    await gate.entered.wait()
                    scope.stop("deploy")
                    assert info.readiness.state == "stopping"
                    # during the delay: not ready, yet new connections are still served
                    probe = await fresh_get(info, "/readyz")
                    assert (probe.status_code, probe.text) == (503, "not ready: stopping\n")
                    assert probe.headers["connection"] == "close"
                    served = await fresh_get(info, "/")
                    assert served.status_code == 200
                    assert served.headers["connection"] == "close"  # clients move on
                    assert not info.readiness.draining.is_set()
                    assert not await refused(info.port)
                    # after the delay: the listener closes, the held request still completes
                    await info.readiness.draining.wait()
                    await wait_refused(info.port)
                    gate.release.set()
        assert [r.status_code for r in responses] == [200]
        assert gate.events == ["index", "held"]
        assert scope.report.by_name(server).outcome is Outcome.STOPPED

    @combos
    async def test_requests_still_running_at_the_end_of_grace_are_cut(
        self, server: ServerName, caplog: pytest.LogCaptureFixture
    ) -> None:
        gate = Gate()
        outcome: list[object] = []
        caplog.set_level(logging.WARNING, logger="stopscope")
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=3.0) as scope:
                info = await starter(server)(scope, make_app(gate), **quiet(server))
                async with (
                    httpx.AsyncClient(base_url=info.url) as client,
                    anyio.create_task_group() as tg,
                ):

                    async def stuck() -> None:
                        try:
                            outcome.append((await client.get("/held")).status_code)
                        except httpx.HTTPError as exc:
                            outcome.append(type(exc))

                    tg.start_soon(stuck)
                    await gate.entered.wait()
                    scope.stop("deploy")
        # the server cut the request itself, within the grace: the scope did not have to
        assert len(outcome) == 1
        assert outcome != [200]
        record = scope.report.by_name(server)
        assert record.outcome is Outcome.CANCELLED
        messages = [r.getMessage() for r in caplog.records]
        assert any("1 request(s) did not finish within the grace period" in m for m in messages), (
            messages
        )
        assert not any("did not stop within its grace period" in m for m in messages), messages

    @combos
    async def test_hard_cancellation_closes_the_listener(self, server: ServerName) -> None:
        gate = Gate()
        with anyio.fail_after(HANG_GUARD), anyio.CancelScope() as outer:
            async with TaskScope(grace=HANG_GUARD) as scope:
                info = await starter(server)(scope, make_app(gate), **quiet(server))
                async with (
                    httpx.AsyncClient(base_url=info.url) as client,
                    anyio.create_task_group() as tg,
                ):

                    async def slow() -> None:
                        await client.get("/held")

                    tg.start_soon(slow)
                    await gate.entered.wait()
                    outer.cancel()  # from outside: no grace, as anyio users expect
        assert outer.cancelled_caught
        assert scope.report.by_name(server).outcome is Outcome.CANCELLED
        assert await refused(info.port)

    @combos
    async def test_the_process_signal_handlers_are_left_alone(self, server: ServerName) -> None:
        before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=HANG_GUARD) as scope:
                await starter(server)(scope, make_app(Gate()), **quiet(server))
                assert {s: signal.getsignal(s) for s in before} == before
        assert {s: signal.getsignal(s) for s in before} == before

    @combos
    async def test_a_failed_lifespan_startup_fails_the_start(self, server: ServerName) -> None:
        async def no_start(scope: Any, receive: Any, send: Any) -> None:
            assert scope["type"] == "lifespan"
            await receive()
            await send({"type": "lifespan.startup.failed", "message": "no database"})

        caught: list[BaseException] = []
        with anyio.fail_after(HANG_GUARD):
            try:
                async with TaskScope(grace=HANG_GUARD) as scope:
                    try:
                        await starter(server)(scope, no_start, **quiet(server))
                    except Exception as exc:  # the start fails (uvicorn, hypercorn on asyncio)
                        caught.append(exc)
                    else:  # hypercorn on trio listens first, then its lifespan task fails
                        await scope.signal.wait()
            except ExceptionGroup as group:
                caught.extend(group.exceptions)
        assert len(caught) == 1
        expected = "uvicorn could not start" if server == "uvicorn" else "no database"
        assert expected in str(caught[0])
        assert scope.report.by_name(server).outcome is Outcome.FAILED

    @combos
    async def test_started_while_the_scope_is_stopping(self, server: ServerName) -> None:
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=HANG_GUARD) as scope:
                scope.stop("early")
                info = await starter(server)(
                    scope, make_app(Gate()), grace=HANG_GUARD / 2, **quiet(server)
                )
                assert info.readiness.state in ("stopping", "draining")  # never ready
        assert scope.report.by_name(server).outcome is Outcome.STOPPED

    @combos
    async def test_a_port_in_use_fails_the_start(self, server: ServerName) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        try:
            with anyio.fail_after(HANG_GUARD):
                async with TaskScope(grace=HANG_GUARD) as scope:
                    with pytest.raises((OSError, RuntimeError)) as caught:
                        await starter(server)(scope, make_app(Gate()), port=port, **quiet(server))
        finally:
            await listener.aclose()
        if server == "uvicorn":
            assert "uvicorn could not start" in str(caught.value)
        else:
            assert isinstance(caught.value, OSError)
        assert scope.report.by_name(server).outcome is Outcome.FAILED


class TestRequestSignal:
    @combos
    async def test_set_when_the_server_drains(self, server: ServerName) -> None:
        gate = Gate()
        responses: list[httpx.Response] = []
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=HANG_GUARD) as scope:
                info = await starter(server)(scope, make_app(gate), **quiet(server))
                async with (
                    httpx.AsyncClient(base_url=info.url) as client,
                    anyio.create_task_group() as tg,
                ):

                    async def watch() -> None:
                        responses.append(await client.get("/watch"))

                    tg.start_soon(watch)
                    await gate.entered.wait()
                    scope.stop("deploy")
        assert gate.reasons == [RequestStop.SERVER_DRAINING]
        assert [r.status_code for r in responses] == [200]

    @combos
    async def test_an_app_with_its_own_middleware_hears_the_drain(self, server: ServerName) -> None:
        # the app's own Readiness.asgi() used to replace the member's signal
        gate = Gate()
        responses: list[httpx.Response] = []
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=HANG_GUARD / 3) as scope:
                app = Readiness().asgi(make_app(gate), path=None)
                info = await starter(server)(scope, app, **quiet(server))
                async with (
                    httpx.AsyncClient(base_url=info.url) as client,
                    anyio.create_task_group() as tg,
                ):

                    async def watch() -> None:
                        responses.append(await client.get("/watch"))

                    tg.start_soon(watch)
                    await gate.entered.wait()
                    scope.stop("deploy")
        assert gate.reasons == [RequestStop.SERVER_DRAINING]
        assert [r.status_code for r in responses] == [200]

    @combos
    async def test_set_when_the_client_disconnects(self, server: ServerName) -> None:
        gate = Gate()
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=HANG_GUARD) as scope:
                info = await starter(server)(scope, make_app(gate), **quiet(server))
                async with (
                    httpx.AsyncClient(base_url=info.url) as client,
                    anyio.create_task_group() as tg,
                ):

                    async def watch() -> None:
                        await client.get("/watch")

                    tg.start_soon(watch)
                    await gate.entered.wait()
                    tg.cancel_scope.cancel()  # the client gives up: its connection closes
                await client.aclose()
                with anyio.fail_after(HANG_GUARD):
                    while not gate.reasons:  # the server notices the closed connection
                        await anyio.sleep(0.01)
                assert info.readiness.ready  # the service itself goes on
        assert gate.reasons == [RequestStop.CLIENT_DISCONNECTED]


class TestWebService:
    @combos
    async def test_background_members_stop_after_the_server(self, server: ServerName) -> None:
        gate = Gate()
        flushed: list[str] = []
        seen_during_drain: list[bool] = []

        async def flusher(stop: StopSignal) -> None:
            await stop.wait()
            flushed.extend(gate.events)  # whatever requests handed over, all of it

        with anyio.fail_after(HANG_GUARD):
            async with WebService(grace=HANG_GUARD) as service:
                service.start_soon(flusher, service.signal, name="flusher")

                async def ticker(stop: StopSignal, *, task_status: TaskStatus[str]) -> None:
                    task_status.started("ticking")
                    await stop.wait()

                def beat(stop: StopSignal) -> None:
                    stop.wait_blocking(HANG_GUARD)

                assert await service.start(ticker, service.signal, name="ticker") == "ticking"
                service.start_thread(beat, name="beat")
                info = await service.serve(make_app(gate), server=server, **quiet(server))
                async with (
                    httpx.AsyncClient(base_url=info.url) as client,
                    anyio.create_task_group() as tg,
                ):

                    async def slow() -> None:
                        await client.get("/held")

                    tg.start_soon(slow)
                    await gate.entered.wait()
                    service.stop("deploy")
                    await info.readiness.draining.wait()
                    await wait_refused(info.port)
                    seen_during_drain.append(service.signal.is_set())
                    gate.release.set()
        assert seen_during_drain == [False]  # the worker was not stopped mid-request
        assert flushed == ["held"]
        report = service.scope.report
        assert [r.name for r in report.tasks] == ["flusher", "ticker", "beat", server]
        assert all(r.outcome is Outcome.STOPPED for r in report.tasks)

    @combos
    async def test_members_started_after_serve_are_refused(self, server: ServerName) -> None:
        async def idle(stop: StopSignal) -> None:
            await stop.wait()

        with anyio.fail_after(HANG_GUARD):
            async with WebService(grace=HANG_GUARD) as service:
                await service.serve(make_app(Gate()), server=server, **quiet(server))
                with pytest.raises(RuntimeError, match="before serve"):
                    service.start_soon(idle, service.signal)

    async def test_misuse(self) -> None:
        service = WebService()
        with pytest.raises(RuntimeError, match="inside"):
            _ = service.signal
        with pytest.raises(RuntimeError, match="inside"):
            service.start_soon(anyio.sleep, 1)
        with pytest.raises(RuntimeError, match="inside"):
            await service.serve(make_app(Gate()))
        async with WebService(grace=1) as service:
            with pytest.raises(ValueError, match="`server`"):
                await service.serve(make_app(Gate()), server="gunicorn")  # type: ignore[arg-type]
        assert repr(service).startswith("<WebService <TaskScope")


class TestArguments:
    @combos
    async def test_bad_arguments(self, server: ServerName) -> None:
        start = starter(server)
        app = make_app(Gate())
        async with TaskScope(grace=5) as scope:
            with pytest.raises(
                ValueError, match=r"`drain_delay` .* must be shorter than the grace"
            ):
                await start(scope, app, drain_delay=5)
            with pytest.raises(ValueError, match="`drain_delay`"):
                await start(scope, app, drain_delay=-1)
            with pytest.raises(TypeError, match="`drain_delay`"):
                await start(scope, app, drain_delay="1")
            with pytest.raises(ValueError, match="`port`"):
                await start(scope, app, port=70000)
            with pytest.raises(TypeError, match="`port`"):
                await start(scope, app, port="80")
            with pytest.raises(TypeError, match="`signal`"):
                await start(scope, app, signal=object())
            with pytest.raises(TypeError, match="`app`"):
                await start(scope, object())
            with pytest.raises(TypeError, match="TaskScope"):
                await start(object(), app)
            refused_option = (
                "timeout_graceful_shutdown" if server == "uvicorn" else "graceful_timeout"
            )
            with pytest.raises(ValueError, match=refused_option):
                await start(scope, app, **{refused_option: 3})
            assert scope.report.tasks == ()

    @pytest.mark.parametrize("anyio_backend", [TRIO], ids=["trio"])
    async def test_uvicorn_on_trio_is_refused(self) -> None:
        async with TaskScope(grace=5) as scope:
            with pytest.raises(
                RuntimeError, match=r"asyncio .* only; on trio, use start_hypercorn"
            ):
                await start_uvicorn(scope, make_app(Gate()))

    @pytest.mark.parametrize("anyio_backend", [ASYNCIO], ids=["asyncio"])
    async def test_a_missing_server_is_named(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "uvicorn", None)  # import raises ImportError
        monkeypatch.setitem(sys.modules, "hypercorn.config", None)
        async with TaskScope(grace=5) as scope:
            with pytest.raises(RuntimeError, match=r"pip install 'stopscope\[uvicorn\]'"):
                await start_uvicorn(scope, make_app(Gate()))
            with pytest.raises(RuntimeError, match=r"pip install 'stopscope\[hypercorn\]'"):
                await start_hypercorn(scope, make_app(Gate()))

    @pytest.mark.parametrize("anyio_backend", [ASYNCIO], ids=["asyncio"])
    async def test_unknown_hypercorn_option(self) -> None:
        async with TaskScope(grace=5) as scope:
            with pytest.raises(TypeError, match="no option 'nonsense'"):
                await start_hypercorn(scope, make_app(Gate()), nonsense=1)

    @pytest.mark.parametrize("anyio_backend", [ASYNCIO], ids=["asyncio"])
    async def test_a_readiness_of_ones_own(self) -> None:
        readiness = Readiness()
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=HANG_GUARD) as scope:
                info = await start_hypercorn(scope, make_app(Gate()), readiness=readiness)
                assert info.readiness is readiness
                assert readiness.ready
        assert readiness.state == "draining"
