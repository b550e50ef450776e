"""The drain's edges: a stop from another thread, and requests cut at the drain timeout.

Real uvicorn and hypercorn servers on 127.0.0.1 and a real httpx client, on every
backend the server supports; requests are held open by events, never by sleeps.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Literal

import anyio
import httpx
import pytest

from stopscope import Outcome, TaskScope
from stopscope.servers import Readiness, ServerInfo, WebService, start_hypercorn, start_uvicorn

pytestmark = pytest.mark.anyio

#: seconds; only a guard against hangs, never a timing assertion
HANG_GUARD = 30.0
#: the grace of the tests that cut requests: its reserve (10 %) is the time the
#: server has to unwind them, which a loaded machine needs
GRACE = 4.0

Backend = tuple[str, dict[str, Any]]
ServerName = Literal["uvicorn", "hypercorn"]
Message = MutableMapping[str, Any]

ASYNCIO: Backend = ("asyncio", {"debug": True})
UVLOOP: Backend = ("asyncio", {"use_uvloop": True})
TRIO: Backend = ("trio", {})

COMBOS = [
    pytest.param(ASYNCIO, "uvicorn", id="uvicorn-asyncio"),
    pytest.param(UVLOOP, "uvicorn", id="uvicorn-uvloop"),
    pytest.param(ASYNCIO, "hypercorn", id="hypercorn-asyncio"),
    pytest.param(UVLOOP, "hypercorn", id="hypercorn-uvloop"),
    pytest.param(TRIO, "hypercorn", id="hypercorn-trio"),
]
combos = pytest.mark.parametrize(("anyio_backend", "server"), COMBOS)
uvicorn_only = pytest.mark.parametrize(
    ("anyio_backend", "server"),
    [
        pytest.param(ASYNCIO, "uvicorn", id="uvicorn-asyncio"),
        pytest.param(UVLOOP, "uvicorn", id="uvicorn-uvloop"),
    ],
)


def starter(server: ServerName) -> Callable[..., Awaitable[ServerInfo]]:
    return start_uvicorn if server == "uvicorn" else start_hypercorn


def quiet(server: ServerName) -> dict[str, Any]:
    return {"log_config": None, "access_log": False} if server == "uvicorn" else {}


class Held:
    """A raw ASGI app without lifespan support: ``/`` answers, ``/held`` waits for
    :attr:`release` (forever if it is never set); it counts entries and unwinds."""

    def __init__(self) -> None:
        self.entered = 0
        self.all_entered = anyio.Event()
        self.expected = 1
        self.release = anyio.Event()
        self.unwound = 0

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan here")  # the servers go on without it
        if scope["path"] == "/held":
            self.entered += 1
            if self.entered == self.expected:
                self.all_entered.set()
            try:
                await self.release.wait()
            finally:
                self.unwound += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done\n"})


async def get_status(client: httpx.AsyncClient, path: str, into: list[object]) -> None:
    try:
        into.append((await client.get(path)).status_code)
    except httpx.HTTPError as exc:
        into.append(type(exc))


class TestStopFromAnotherThread:
    @combos
    async def test_the_loop_may_run_before_the_stop_callbacks(self, server: ServerName) -> None:
        """The stopping thread runs ``set()``'s callbacks after it woke the server's
        waiter; held here until the server drains, it lets the loop win that race every
        time (it used to: ``AssertionError`` in the member, the request cut)."""
        app = Held()
        readiness = Readiness()
        statuses: list[object] = []
        held_until_draining: list[bool] = []
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=HANG_GUARD) as scope:

                def hold(reason: object) -> None:
                    held_until_draining.append(readiness.draining.wait_blocking(5.0))

                scope.signal.on_set(hold)  # registered first: runs before the member's
                info = await starter(server)(scope, app, readiness=readiness, **quiet(server))
                async with (
                    httpx.AsyncClient(base_url=info.url) as client,
                    anyio.create_task_group() as tg,
                ):
                    tg.start_soon(get_status, client, "/held", statuses)
                    await app.all_entered.wait()
                    await anyio.to_thread.run_sync(scope.stop, "deploy from a thread")
                    app.release.set()
        assert held_until_draining == [True]
        assert statuses == [200]
        record = scope.report.by_name(server)
        assert (record.outcome, record.error) == (Outcome.STOPPED, None)
        assert readiness.state == "draining"


class TestRequestsCutAtTheDrainTimeout:
    @combos
    @pytest.mark.parametrize("held", [1, 20])
    async def test_counted_once_unwound_and_reported(
        self, server: ServerName, held: int, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An app without lifespan: the server returns as soon as it has cancelled the
        requests, before they unwound (uvicorn); they are counted all the same."""
        caplog.set_level(logging.WARNING, logger="stopscope")
        app = Held()
        app.expected = held
        statuses: list[object] = []
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=GRACE) as scope:
                info = await starter(server)(scope, app, **quiet(server))
                async with (
                    httpx.AsyncClient(base_url=info.url) as client,
                    anyio.create_task_group() as tg,
                ):
                    for _ in range(held):
                        tg.start_soon(get_status, client, "/held", statuses)
                    await app.all_entered.wait()
                    scope.stop("deploy")
        assert app.unwound == held
        assert len(statuses) == held
        assert 200 not in statuses
        record = scope.report.by_name(server)
        assert record.outcome is Outcome.CANCELLED
        messages = [r.getMessage() for r in caplog.records]
        assert any(
            f"{held} request(s) did not finish within the grace period" in m for m in messages
        ), messages

    @uvicorn_only
    async def test_with_uvicorn_lifespan_off(
        self, server: ServerName, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, logger="stopscope")
        app = Held()
        statuses: list[object] = []
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=GRACE) as scope:
                info = await start_uvicorn(scope, app, lifespan="off", **quiet(server))
                async with (
                    httpx.AsyncClient(base_url=info.url) as client,
                    anyio.create_task_group() as tg,
                ):
                    tg.start_soon(get_status, client, "/held", statuses)
                    await app.all_entered.wait()
                    scope.stop("deploy")
        assert app.unwound == 1
        assert scope.report.by_name(server).outcome is Outcome.CANCELLED
        assert any("1 request(s) did not finish" in r.getMessage() for r in caplog.records), (
            caplog.records
        )

    @combos
    async def test_streams_under_a_web_service(
        self, server: ServerName, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Streams that never end, under ``WebService``: not event streams (those the
        middleware ends at the drain, see test_serving_streams.py), so they are cut."""
        caplog.set_level(logging.WARNING, logger="stopscope")
        streams = 30
        started = anyio.Event()
        opened = 0

        async def events(scope: Message, receive: Any, send: Any) -> None:
            nonlocal opened
            if scope["type"] != "http":
                raise RuntimeError("no lifespan here")
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/x-ndjson")],
                }
            )
            await send({"type": "http.response.body", "body": b'{"hi": 1}\n', "more_body": True})
            opened += 1
            if opened == streams:
                started.set()
            await anyio.sleep_forever()

        async def listen(client: httpx.AsyncClient) -> None:
            try:
                async with client.stream("GET", "/events") as response:
                    async for _ in response.aiter_bytes():
                        pass
            except httpx.HTTPError:
                pass

        with anyio.fail_after(HANG_GUARD):
            async with WebService(grace=GRACE) as service:
                info = await service.serve(events, server=server, **quiet(server))
                async with (
                    httpx.AsyncClient(base_url=info.url) as client,
                    anyio.create_task_group() as tg,
                ):
                    for _ in range(streams):
                        tg.start_soon(listen, client)
                    await started.wait()
                    service.stop("deploy")
        assert service.scope.report.by_name(server).outcome is Outcome.CANCELLED
        assert any(
            f"{streams} request(s) did not finish" in r.getMessage() for r in caplog.records
        ), caplog.records
