"""Event streams ended at the drain, other streams cut at the grace (issue 16, item 3).

Real uvicorn and hypercorn servers on 127.0.0.1, real clients (httpx streaming, and raw
sockets where the exact bytes matter: the ``retry:`` field and the chunked terminator),
on every backend each server supports.  Streams are known open when their client has
read the first event; the stop comes then, never after a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

import stopscope
from stopscope import Outcome, TaskScope
from stopscope._service import EXIT_CUT_SHORT
from stopscope.asgi import GracefulApp
from stopscope.servers import (
    Readiness,
    ReadinessMiddleware,
    ServerInfo,
    WebService,
    _readiness,
    request_signal,
    start_hypercorn,
    start_uvicorn,
)
from stopscope.servers._drain import QuietCuts

pytestmark = pytest.mark.anyio

#: seconds; only a guard against hangs, never a timing assertion
HANG_GUARD = 60.0
#: the grace: what is left of it after the drain bounds how long a stream may run on
GRACE = 4.0
#: the number of naive SSE clients, as in the issue
CLIENTS = 100

Backend = tuple[str, dict[str, Any]]
ServerName = Literal["uvicorn", "hypercorn"]
Message = MutableMapping[str, Any]

ASYNCIO: Backend = ("asyncio", {})
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


def starter(server: ServerName) -> Callable[..., Awaitable[ServerInfo]]:
    return start_uvicorn if server == "uvicorn" else start_hypercorn


def quiet(server: ServerName) -> dict[str, Any]:
    return {"log_config": None, "access_log": False} if server == "uvicorn" else {}


class Counter:
    """Counts streams opened (their client read the first event); set when all are."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.opened = 0
        self.all_open = anyio.Event()

    def one_more(self) -> None:
        self.opened += 1
        if self.opened == self.expected:
            self.all_open.set()


def sse_app() -> Starlette:
    """``/naive``: the common generator that never looks at the stop; ``/watching``:
    one written the documented way, that says goodbye when its signal is set."""

    async def naive(request: Request) -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            n = 0
            while True:
                n += 1
                yield f"id: {n}\ndata: tick {n}\n\n"
                await anyio.sleep(0.05)

        return StreamingResponse(events(), media_type="text/event-stream")

    async def watching(request: Request) -> StreamingResponse:
        stop = request_signal(request)

        async def events() -> AsyncIterator[str]:
            n = 0
            async for _ in stop.every(0.05):
                n += 1
                yield f"id: {n}\ndata: tick {n}\n\n"
            yield "event: bye\ndata: bye\n\n"

        return StreamingResponse(events(), media_type="text/event-stream; charset=utf-8")

    return Starlette(routes=[Route("/naive", naive), Route("/watching", watching)])


async def read_stream(client: httpx.AsyncClient, path: str, counter: Counter) -> bytes:
    """The whole body of a streaming response; raises if it was not complete."""
    body = b""
    async with client.stream("GET", path) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        async for chunk in response.aiter_raw():
            if not body:
                counter.one_more()
            body += chunk
    return body


async def raw_get(port: int, path: str, counter: Counter) -> bytes:
    """The bytes a raw HTTP/1.1 client gets, up to the server's close."""
    data = b""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        opened = False
        try:
            while True:
                data += await stream.receive()
                if not opened and b"\r\n\r\n" in data and len(data.split(b"\r\n\r\n", 1)[1]):
                    opened = True
                    counter.one_more()
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
            pass
    return data


def events_of(body: bytes) -> list[bytes]:
    """The events (blocks ended by a blank line) of an event stream, and what is left."""
    *events, rest = body.split(b"\n\n")
    assert rest == b"", f"the stream ends inside an event: {body[-80:]!r}"
    return events


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


class TestEventStreamsEndedAtTheDrain:
    @combos
    async def test_naive_clients_get_a_retry_and_a_proper_end(
        self, server: ServerName, caplog: pytest.LogCaptureFixture
    ) -> None:
        """100 handlers that never look at the stop: each client gets a complete
        stream, ending with ``retry: 1000``; no traceback; the member stopped."""
        caplog.set_level(logging.INFO)
        counter = Counter(CLIENTS)
        bodies: list[bytes] = []

        async def listen(client: httpx.AsyncClient) -> None:
            bodies.append(await read_stream(client, "/naive", counter))

        limits = httpx.Limits(max_connections=CLIENTS)
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=GRACE) as scope:
                info = await starter(server)(scope, sse_app(), **quiet(server))
                async with (
                    httpx.AsyncClient(base_url=info.url, limits=limits, timeout=None) as client,
                    anyio.create_task_group() as tg,
                ):
                    for _ in range(CLIENTS):
                        tg.start_soon(listen, client)
                    await counter.all_open.wait()
                    scope.stop("deploy")
        assert len(bodies) == CLIENTS  # every one read to its proper end (else it raised)
        for body in bodies:
            events = events_of(body)
            assert events[-1] == b"retry: 1000", body[-80:]
            assert all(event.startswith(b"id: ") for event in events[:-1])
        record = scope.report.by_name(server)
        assert (record.outcome, record.cut) == (Outcome.STOPPED, 0)
        assert tracebacks(caplog) == []
        messages = [r.getMessage() for r in caplog.records]
        assert f"{server}: ended {CLIENTS} event stream(s) at the drain, with retry: 1000 ms" in (
            messages
        )
        assert not any("did not finish" in m for m in messages), messages

    @combos
    @pytest.mark.parametrize(
        ("sse_retry", "last"), [(2.5, b"d\r\nretry: 2500\n\n\r\n"), (None, b"")]
    )
    async def test_the_exact_bytes_end_with_the_chunked_terminator(
        self, server: ServerName, sse_retry: float | None, last: bytes
    ) -> None:
        """Over a raw socket: the ``retry:`` field (or none) in the last chunk, then the
        chunked encoding's terminator: a complete response, not a cut one."""
        counter = Counter(3)
        data: list[bytes] = []

        async def listen(port: int) -> None:
            data.append(await raw_get(port, "/naive", counter))

        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=GRACE) as scope:
                info = await starter(server)(scope, sse_app(), sse_retry=sse_retry, **quiet(server))
                async with anyio.create_task_group() as tg:
                    for _ in range(counter.expected):
                        tg.start_soon(listen, info.port)
                    await counter.all_open.wait()
                    scope.stop("deploy")
        assert scope.report.by_name(server).outcome is Outcome.STOPPED
        for raw in data:
            head, body = raw.split(b"\r\n\r\n", 1)
            assert b"transfer-encoding: chunked" in head.lower()
            assert body.endswith(last + b"0\r\n\r\n"), body[-80:]
            # the chunk before is the handler's last whole event
            assert body[: len(body) - len(last) - 5].endswith(b"\n\n\r\n"), body[-80:]

    @combos
    async def test_a_handler_that_watches_its_signal_ends_first(
        self, server: ServerName, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A handler written the documented way says goodbye itself: no ``retry:`` from
        the middleware, nothing counted as ended by it, still clean."""
        # room for a loaded machine: the handler ends long before the middleware would
        monkeypatch.setattr(_readiness, "SSE_END_AFTER", HANG_GUARD)
        caplog.set_level(logging.INFO)
        counter = Counter(10)
        bodies: list[bytes] = []

        async def listen(client: httpx.AsyncClient) -> None:
            bodies.append(await read_stream(client, "/watching", counter))

        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=HANG_GUARD) as scope:
                info = await starter(server)(scope, sse_app(), **quiet(server))
                async with (
                    httpx.AsyncClient(base_url=info.url, timeout=None) as client,
                    anyio.create_task_group() as tg,
                ):
                    for _ in range(counter.expected):
                        tg.start_soon(listen, client)
                    await counter.all_open.wait()
                    scope.stop("deploy")
        assert len(bodies) == counter.expected
        for body in bodies:
            assert events_of(body)[-1] == b"event: bye\ndata: bye"
            assert b"retry:" not in body
        assert scope.report.by_name(server).outcome is Outcome.STOPPED
        assert tracebacks(caplog) == []
        assert not any("event stream(s)" in r.getMessage() for r in caplog.records)

    @combos
    async def test_a_stream_that_began_during_the_drain_is_ended_too(
        self, server: ServerName
    ) -> None:
        """The drain had begun when the stream started (a kept-alive connection, the
        listener closed): it gets its moment and its end all the same."""
        readiness = Readiness()
        counter = Counter(1)
        data: list[bytes] = []
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=GRACE) as scope:
                info = await starter(server)(scope, sse_app(), readiness=readiness, **quiet(server))
                readiness.mark_draining()  # as the member does when the listener closes
                data.append(await raw_get(info.port, "/naive", counter))
                scope.stop("deploy")
        assert data[0].endswith(b"retry: 1000\n\n\r\n0\r\n\r\n"), data[0][-80:]


def download_app(counter: Counter, length: bool) -> Callable[..., Awaitable[None]]:
    """A download that never ends by itself (with a Content-Length, or chunked)."""

    async def app(scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan here")  # the servers go on without it
        headers = [(b"content-type", b"application/octet-stream")]
        if length:
            headers.append((b"content-length", b"1000000"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"x" * 100, "more_body": True})
        counter.one_more()
        while True:
            await anyio.sleep(0.05)
            await send({"type": "http.response.body", "body": b"y" * 100, "more_body": True})

    return app


class TestOtherStreamsCutAtTheGrace:
    @combos
    @pytest.mark.parametrize("length", [True, False], ids=["content-length", "chunked"])
    async def test_a_download_is_visibly_truncated_and_counted(
        self, server: ServerName, length: bool, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Never ended "cleanly": short of its Content-Length, or without the chunked
        terminator; counted as cut, the member ``CANCELLED``; one line in the log, no
        traceback per stream (uvicorn logs one per request it cancels, asyncio before
        Python 3.13 one per hypercorn connection)."""
        caplog.set_level(logging.WARNING)
        streams = 5
        counter = Counter(streams)
        data: list[bytes] = []

        async def listen(port: int) -> None:
            data.append(await raw_get(port, "/", counter))

        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=GRACE) as scope:
                info = await starter(server)(scope, download_app(counter, length), **quiet(server))
                async with anyio.create_task_group() as tg:
                    for _ in range(streams):
                        tg.start_soon(listen, info.port)
                    await counter.all_open.wait()
                    scope.stop("deploy")
        assert len(data) == streams
        for raw in data:
            head, body = raw.split(b"\r\n\r\n", 1)
            if length:
                assert b"content-length: 1000000" in head.lower()
                assert len(body) < 1000000
            else:
                assert b"transfer-encoding: chunked" in head.lower()
                assert not body.endswith(b"0\r\n\r\n"), body[-40:]
            assert b"retry:" not in body
        record = scope.report.by_name(server)
        assert (record.outcome, record.cut) == (Outcome.CANCELLED, streams)
        assert tracebacks(caplog) == []
        assert any(
            f"{streams} request(s) did not finish within the grace period" in r.getMessage()
            for r in caplog.records
        ), caplog.records


#: the grace of the tests whose requests are cut (real seconds: each waits it out)
CUT_GRACE = 1.0
#: what a handler that swallows the cut does: stream a download, and return; answer
#: (the whole response, late); stream an event stream (served without request signals:
#: the member does not end it), and return
SWALLOWERS = ("download", "answer", "sse")


def swallowed_seen(backend: str) -> bool:
    """Whether a cut the handler swallowed is seen, and counted: on trio, and on
    asyncio from Python 3.13 on (before, a task's cancellation count is no evidence:
    see docs/semantics.md)."""
    return backend == "trio" or sys.version_info >= (3, 13)


def swallowing_app(counter: Counter, then: str) -> Callable[..., Awaitable[None]]:
    """A response that never ends by itself, whose handler catches the cancellation
    that cuts it and returns normally (``then`` says what it does first)."""

    async def app(scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan here")  # the servers go on without it
        if then == "sse":
            await send(SSE_START)
        else:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
        counter.one_more()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            pass  # swallowed: the handler returns as if it had ended by itself
        if then == "answer":  # on trio, the send raises the cancellation again
            await send({"type": "http.response.body", "body": b"late\n"})

    return app


class TestHandlersThatSwallowTheCut:
    """A handler cut by the server's drain timeout, or by a hard stop, that catches the
    cancellation and returns normally was cut all the same: counted in ``cut``, the
    member ``CANCELLED``, the warning line says so.  (An event stream the member ends
    at the drain, whose handler swallows the member's own cancellation, is ended, not
    cut: see ``TestTheMiddlewareInProcess``.)"""

    @combos
    @pytest.mark.parametrize("then", SWALLOWERS)
    async def test_a_cut_at_the_grace_is_counted(
        self,
        server: ServerName,
        then: str,
        anyio_backend_name: str,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.WARNING)
        counter = Counter(1)
        data: list[bytes] = []

        async def listen(port: int) -> None:
            data.append(await raw_get(port, "/", counter))

        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=CUT_GRACE) as scope:
                info = await starter(server)(
                    scope,
                    swallowing_app(counter, then),
                    request_signals=then != "sse",
                    **quiet(server),
                )
                async with anyio.create_task_group() as tg:
                    tg.start_soon(listen, info.port)
                    await counter.all_open.wait()
                    scope.stop("deploy")
        record = scope.report.by_name(server)
        seen = swallowed_seen(anyio_backend_name)
        want = (Outcome.CANCELLED, 1) if seen else (Outcome.STOPPED, 0)
        assert (record.outcome, record.cut) == want, record
        assert seen == any(
            "1 request(s) did not finish within the grace period" in r.getMessage()
            for r in caplog.records
        ), caplog.records
        if then != "answer":  # (one that answers late may get its answer through)
            assert not data[0].endswith(b"0\r\n\r\n"), data[0][-40:]

    @combos
    @pytest.mark.parametrize("then", SWALLOWERS)
    async def test_a_hard_stop_is_counted(
        self,
        server: ServerName,
        then: str,
        anyio_backend_name: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Cut with the member at once, once the drain began; an event stream served
        with request signals included (the hard stop comes before the member's end)."""
        monkeypatch.setattr(_readiness, "SSE_END_AFTER", HANG_GUARD)
        counter = Counter(1)
        hard = anyio.CancelScope()

        async def listen(port: int) -> None:
            await raw_get(port, "/", counter)

        with anyio.fail_after(HANG_GUARD), hard:
            async with TaskScope(grace=HANG_GUARD) as scope:
                info = await starter(server)(scope, swallowing_app(counter, then), **quiet(server))
                async with anyio.create_task_group() as tg:
                    tg.start_soon(listen, info.port)
                    await counter.all_open.wait()
                    scope.stop("deploy")
                    await info.readiness.draining.wait()
                    hard.cancel()  # a second signal
        assert hard.cancelled_caught
        record = scope.report.by_name(server)
        cut = 1 if swallowed_seen(anyio_backend_name) else 0
        assert (record.outcome, record.cut) == (Outcome.CANCELLED, cut), record


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
def test_run_fail_if_cut_short_with_a_swallowed_cut(backend: str, server: ServerName) -> None:
    """A request whose handler swallowed the cut makes ``run(fail_if_cut_short=True)``
    exit 70, as any cut (where it is seen)."""

    async def main(stop: stopscope.StopSignal) -> None:
        counter = Counter(1)
        async with (
            anyio.create_task_group() as clients,
            WebService(signal=stop, grace=CUT_GRACE) as service,
        ):
            info = await service.serve(
                swallowing_app(counter, "download"), server=server, **quiet(server)
            )
            clients.start_soon(raw_get, info.port, "/", counter)
            await counter.all_open.wait()
            signal.raise_signal(signal.SIGUSR1)

    if not swallowed_seen(backend):
        stopscope.run(main, backend=backend, signals=(signal.SIGUSR1,), fail_if_cut_short=True)
        return
    with pytest.raises(SystemExit) as exited:
        stopscope.run(main, backend=backend, signals=(signal.SIGUSR1,), fail_if_cut_short=True)
    assert exited.value.code == EXIT_CUT_SHORT == 70


class TestBadInput:
    @pytest.mark.parametrize("value", [-1, -0.5, math.nan, math.inf, -math.inf])
    def test_a_bad_value_is_refused(self, value: float) -> None:
        with pytest.raises(ValueError, match="`sse_retry`"):
            ReadinessMiddleware(sse_app(), Readiness(), sse_retry=value)
        with pytest.raises(ValueError, match="`sse_retry`"):
            Readiness().asgi(sse_app(), sse_retry=value)
        with pytest.raises(ValueError, match="`sse_retry`"):
            GracefulApp(sse_app(), sse_retry=value)

    @pytest.mark.parametrize("value", ["1", True, b"1", [1]])
    def test_a_wrong_type_is_refused(self, value: Any) -> None:
        with pytest.raises(TypeError, match="`sse_retry`"):
            ReadinessMiddleware(sse_app(), Readiness(), sse_retry=value)
        with pytest.raises(TypeError, match="`sse_retry`"):
            GracefulApp(sse_app(), sse_retry=value)

    @combos
    async def test_the_members_refuse_it_too(self, server: ServerName) -> None:
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=GRACE) as scope:
                with pytest.raises(ValueError, match="`sse_retry`"):
                    await starter(server)(scope, sse_app(), sse_retry=-1, **quiet(server))
                with pytest.raises(TypeError, match="`sse_retry`"):
                    await starter(server)(scope, sse_app(), sse_retry="1", **quiet(server))

    def test_zero_and_none_are_taken(self) -> None:
        assert ReadinessMiddleware(sse_app(), Readiness(), sse_retry=0).sse_retry == 0.0
        assert ReadinessMiddleware(sse_app(), Readiness(), sse_retry=None).sse_retry is None
        assert Readiness().asgi(sse_app(), sse_retry=3).sse_retry == 3.0


SRC = Path(stopscope.__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"
#: naive SSE clients of the server process
PROCESS_CLIENTS = 20
COMMANDS = {
    "uvicorn": ["-m", "uvicorn", "sse_app:app", "--host", "127.0.0.1", "--port"],
    "hypercorn-asyncio": ["-m", "hypercorn", "sse_app:app", "-k", "asyncio", "--bind"],
    "hypercorn-trio": ["-m", "hypercorn", "sse_app:app", "-k", "trio", "--bind"],
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """``tests/apps/sse_app.py`` under a server's own command, in a process group of its
    own (killed by that group in :meth:`kill`)."""

    def __init__(self, command: str, tmp_path: Path) -> None:
        self.port = free_port()
        address = str(self.port) if command == "uvicorn" else f"127.0.0.1:{self.port}"
        env = {
            **os.environ,
            # the stopscope this test imported (the source tree under test)
            "PYTHONPATH": os.pathsep.join([str(SRC), str(APPS)]),
            "GRACE": str(GRACE),
            "PYTHONUNBUFFERED": "1",
        }
        self.stderr_path = tmp_path / "stderr.txt"
        with self.stderr_path.open("w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, *COMMANDS[command], address],
                stdout=stderr,
                stderr=stderr,
                env=env,
                cwd=tmp_path,
                start_new_session=True,
            )

    @property
    def log(self) -> str:
        return self.stderr_path.read_text()

    def wait_listening(self) -> None:
        deadline = time.monotonic() + HANG_GUARD
        while True:  # another process's state: polled, bounded
            assert self.proc.poll() is None, self.log
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            assert time.monotonic() < deadline, f"not listening: {self.log}"
            time.sleep(0.02)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def processes() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    try:
        yield started
    finally:
        for process in started:
            process.kill()


@pytest.mark.parametrize("command", list(COMMANDS))
def test_sigterm_to_a_server_process_ends_naive_streams_cleanly(
    command: str, processes: list[ServerProcess], tmp_path: Path
) -> None:
    """GracefulApp under ``uvicorn sse_app:app`` / ``hypercorn sse_app:app``: a real
    SIGTERM with 20 naive SSE clients and two endless downloads, one whose handler
    swallows the cut.  The SSE clients get ``retry: 1000`` and the chunked terminator;
    the downloads are cut (no terminator); the report counts the two cuts, and the log
    has no traceback."""
    server = ServerProcess(command, tmp_path)
    processes.append(server)
    server.wait_listening()
    counter = Counter(PROCESS_CLIENTS + 2)
    data: dict[str, list[bytes]] = {"/naive": [], "/download": [], "/swallow": []}

    async def listen(path: str) -> None:
        data[path].append(await raw_get(server.port, path, counter))

    async def main() -> None:
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                for _ in range(PROCESS_CLIENTS):
                    tg.start_soon(listen, "/naive")
                tg.start_soon(listen, "/download")
                tg.start_soon(listen, "/swallow")
                await counter.all_open.wait()
                server.proc.send_signal(signal.SIGTERM)  # the process we started

    anyio.run(main)
    server.proc.wait(HANG_GUARD)
    log = server.log
    for raw in data["/naive"]:
        assert raw.endswith(b"retry: 1000\n\n\r\n0\r\n\r\n"), (raw[-80:], log)
    for cut in data["/download"] + data["/swallow"]:
        assert b"transfer-encoding: chunked" in cut.lower()
        assert not cut.endswith(b"0\r\n\r\n")
    assert f"ended {PROCESS_CLIENTS} event stream(s) at the drain, with retry: 1000 ms" in log
    counted = 2 if swallowed_seen("trio" if command.endswith("trio") else "asyncio") else 1
    assert f"{counted} request(s) did not finish within the grace period" in log, log
    assert "app report: http" in log, log
    assert "cancelled" in log, log
    assert "Traceback" not in log
    assert "Exception in" not in log


class TestQuietCuts:
    """The log filter lets through everything but the per-cut tracebacks."""

    def record(self, msg: object, exc: BaseException | None) -> logging.LogRecord:
        exc_info = None if exc is None else (type(exc), exc, None)
        return logging.LogRecord("x", logging.ERROR, __file__, 1, msg, None, exc_info)

    def test_only_cancellation_tracebacks_of_cuts_are_dropped(self) -> None:
        quiet = QuietCuts()
        cancelled = asyncio.CancelledError()
        callback = "Exception in callback StreamReaderProtocol.connection_made.<locals>.callback"
        assert not quiet.filter(self.record("Exception in ASGI application\n", cancelled))
        assert not quiet.filter(self.record(f"{callback}(<Task>)\nhandle: ...", cancelled))
        # the same messages for another error, or other messages, pass
        assert quiet.filter(self.record("Exception in ASGI application\n", ValueError()))
        assert quiet.filter(self.record("Exception in ASGI application\n", None))
        assert quiet.filter(self.record("Exception in callback other()", cancelled))
        assert quiet.filter(self.record(ValueError("not a str"), cancelled))


class FakeServer:
    """The server's side of one HTTP request, in process: what the app sent, and a
    ``receive()`` that waits (the client says nothing more)."""

    def __init__(self, fail_on_end: bool = False) -> None:
        self.sent: list[Message] = []
        self.fail_on_end = fail_on_end
        self.started = anyio.Event()

    async def receive(self) -> Message:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    async def send(self, message: Message) -> None:
        if self.fail_on_end and message.get("more_body") is False:
            raise OSError("the client left")
        self.sent.append(message)
        if message["type"] == "http.response.body":
            self.started.set()

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] != "http.response.start")


HTTP_SCOPE: Message = {"type": "http", "path": "/events", "method": "GET", "http_version": "1.1"}
SSE_START: Message = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"cache-control", b"no-store"), (b"content-type", b"text/event-stream")],
}
EVENT: Message = {"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True}


async def serve_one(
    app: Callable[[Message, Any, Any], Awaitable[None]],
    server: FakeServer,
    drain: Callable[[Readiness], Awaitable[None]] | None = None,
) -> ReadinessMiddleware:
    """Run one request through the middleware; the drain begins once the app has
    streamed its first event (``drain`` does it, or ``mark_draining()``)."""
    readiness = Readiness()
    middleware = ReadinessMiddleware(app, readiness)
    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(middleware, dict(HTTP_SCOPE), server.receive, server.send)
            await server.started.wait()
            if drain is None:
                readiness.mark_draining()
            else:
                await drain(readiness)
    return middleware


class TestTheMiddlewareInProcess:
    """The edges of an event stream's end, with the server's side faked."""

    @pytest.fixture(autouse=True)
    def at_once(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(_readiness, "SSE_END_AFTER", 0)

    async def test_a_handler_that_swallows_the_cancellation_is_ended_too(self) -> None:
        server = FakeServer()
        late: list[str] = []

        async def app(scope: Message, receive: Any, send: Any) -> None:
            await send(SSE_START)
            await send(EVENT)
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                late.append("swallowed")
            await send(EVENT)  # dropped: the stream is the middleware's now

        middleware = await serve_one(app, server)
        assert late == ["swallowed"]
        assert server.body == b"data: 1\n\nretry: 1000\n\n"
        assert server.sent[-1]["more_body"] is False
        assert (middleware.streams_ended, middleware.cancelled) == (1, 0)

    async def test_sends_while_unwinding_are_dropped(self) -> None:
        server = FakeServer()

        async def app(scope: Message, receive: Any, send: Any) -> None:
            await send(SSE_START)
            await send(EVENT)
            try:
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    await send(EVENT)

        middleware = await serve_one(app, server)
        assert server.body == b"data: 1\n\nretry: 1000\n\n"
        assert middleware.streams_ended == 1

    async def test_a_client_gone_before_the_end_is_not_counted(self) -> None:
        server = FakeServer(fail_on_end=True)

        async def app(scope: Message, receive: Any, send: Any) -> None:
            await send(SSE_START)
            await send(EVENT)
            await anyio.sleep_forever()

        middleware = await serve_one(app, server)
        assert server.body == b"data: 1\n\n"
        assert (middleware.streams_ended, middleware.cancelled, middleware.in_flight) == (0, 0, 0)

    async def test_a_response_ended_by_its_handler_is_left_alone(self) -> None:
        """The handler ended the response and still runs (a background task after it):
        nothing is sent, nothing is cancelled."""
        server = FakeServer()
        release = anyio.Event()

        async def app(scope: Message, receive: Any, send: Any) -> None:
            await send(SSE_START)
            await send(EVENT)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            await release.wait()

        async def drain(readiness: Readiness) -> None:
            readiness.mark_draining()
            await anyio.wait_all_tasks_blocked()  # the end's task looked, and left
            release.set()

        middleware = await serve_one(app, server, drain)
        assert server.body == b"data: 1\n\n"
        assert (middleware.streams_ended, middleware.cancelled) == (0, 0)

    async def test_a_short_event_stream_needs_no_end(self) -> None:
        """Over before the drain: the end's task is cancelled (on trio, before it ran)."""
        server = FakeServer()

        async def app(scope: Message, receive: Any, send: Any) -> None:
            await send(SSE_START)
            await send({"type": "http.response.body", "body": b"data: 1\n\n"})

        readiness = Readiness()
        middleware = ReadinessMiddleware(app, readiness)
        await middleware(dict(HTTP_SCOPE), server.receive, server.send)
        readiness.mark_draining()
        await anyio.wait_all_tasks_blocked()
        assert server.body == b"data: 1\n\n"
        assert middleware.streams_ended == 0

    @pytest.mark.parametrize("anyio_backend", [ASYNCIO, UVLOOP], ids=["asyncio", "uvloop"])
    async def test_a_cancellation_from_elsewhere_too_goes_on(self) -> None:
        """The server cancelled the task as well (its timeout, the same moment): the
        middleware takes back only its own cancellation; the request is cut."""
        server = FakeServer()

        async def app(scope: Message, receive: Any, send: Any) -> None:
            await send(SSE_START)
            await send(EVENT)
            try:
                await anyio.sleep_forever()
            except asyncio.CancelledError:
                task = asyncio.current_task()
                assert task is not None
                task.cancel()  # as the server's timeout would
                raise

        readiness = Readiness()
        middleware = ReadinessMiddleware(app, readiness)
        task = asyncio.ensure_future(middleware(dict(HTTP_SCOPE), server.receive, server.send))
        with anyio.fail_after(HANG_GUARD):
            await server.started.wait()
            readiness.mark_draining()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert server.body == b"data: 1\n\n"
        assert (middleware.streams_ended, middleware.cancelled) == (0, 1)


class TestASwallowedCutInProcess:
    """The middleware's count of a cut the handler swallowed, the server faked."""

    @pytest.mark.parametrize("request_signals", [True, False])
    async def test_the_servers_cut_is_counted(
        self, request_signals: bool, anyio_backend_name: str
    ) -> None:
        server = FakeServer()

        async def app(scope: Message, receive: Any, send: Any) -> None:
            await send(SSE_START)
            await send(EVENT)
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                pass  # swallowed

        middleware = ReadinessMiddleware(app, Readiness(), request_signals=request_signals)
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(middleware, dict(HTTP_SCOPE), server.receive, server.send)
                await server.started.wait()
                tg.cancel_scope.cancel()  # the server's cut
        cut = 1 if swallowed_seen(anyio_backend_name) else 0
        assert (middleware.cancelled, middleware.streams_ended, middleware.in_flight) == (cut, 0, 0)

    @pytest.mark.parametrize("request_signals", [True, False])
    async def test_a_handlers_own_timeout_is_not_a_cut(self, request_signals: bool) -> None:
        """A cancellation of the handler's own (its timeout), caught inside it, is taken
        back by its cancel scope: the request ended by itself."""
        server = FakeServer()

        async def app(scope: Message, receive: Any, send: Any) -> None:
            await send(SSE_START)
            with anyio.move_on_after(0):
                try:
                    await anyio.sleep_forever()
                except anyio.get_cancelled_exc_class():
                    pass  # swallowed, inside its own scope
            await send({"type": "http.response.body", "body": b"data: 1\n\n"})

        middleware = ReadinessMiddleware(app, Readiness(), request_signals=request_signals)
        with anyio.fail_after(HANG_GUARD):
            await middleware(dict(HTTP_SCOPE), server.receive, server.send)
        assert server.body == b"data: 1\n\n"
        assert (middleware.cancelled, middleware.streams_ended, middleware.in_flight) == (0, 0, 0)

    @pytest.mark.skipif(sys.version_info < (3, 11), reason="Task.uncancel() is Python 3.11+")
    @pytest.mark.parametrize("anyio_backend", [ASYNCIO, UVLOOP], ids=["asyncio", "uvloop"])
    async def test_ended_and_cut_at_once_is_a_cut(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The middleware ends an event stream as the server cuts it (both cancel the
        task before it runs again), and the handler swallows the one cancellation it
        gets: the middleware takes back its own; the server's makes it a cut, and the
        stream is not ended."""
        monkeypatch.setattr(_readiness, "SSE_END_AFTER", 0)
        server = FakeServer()

        async def app(scope: Message, receive: Any, send: Any) -> None:
            await send(SSE_START)
            await send(EVENT)
            try:
                await anyio.sleep_forever()
            except asyncio.CancelledError:
                task = asyncio.current_task()
                assert task is not None
                task.cancel()  # the server's cut, as the handler returns
            # swallowed

        readiness = Readiness()
        middleware = ReadinessMiddleware(app, readiness)
        task = asyncio.ensure_future(middleware(dict(HTTP_SCOPE), server.receive, server.send))
        with anyio.fail_after(HANG_GUARD):
            await server.started.wait()
            readiness.mark_draining()
            with pytest.raises(asyncio.CancelledError):
                await task  # (the server's cancellation, still pending, ends the task)
        assert server.body == b"data: 1\n\n"
        assert (middleware.streams_ended, middleware.cancelled, middleware.in_flight) == (0, 1, 0)

    @pytest.mark.parametrize("anyio_backend", [TRIO], ids=["trio"])
    async def test_ended_and_cut_at_once_is_a_cut_on_trio(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The same on trio: the server's scope is cancelled as the middleware ends the
        stream, and the handler swallows the cancellation: a cut, not ended."""
        monkeypatch.setattr(_readiness, "SSE_END_AFTER", 0)
        server = FakeServer()
        readiness = Readiness()
        with anyio.CancelScope() as server_scope:  # the server's, around the request

            async def app(scope: Message, receive: Any, send: Any) -> None:
                await send(SSE_START)
                await send(EVENT)
                try:
                    await anyio.sleep_forever()
                except anyio.get_cancelled_exc_class():
                    server_scope.cancel()  # the server's cut, as the handler returns
                # swallowed

            middleware = ReadinessMiddleware(app, readiness)
            with anyio.fail_after(HANG_GUARD):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(middleware, dict(HTTP_SCOPE), server.receive, server.send)
                    await server.started.wait()
                    readiness.mark_draining()
        assert server.body == b"data: 1\n\n"
        assert (middleware.streams_ended, middleware.cancelled, middleware.in_flight) == (0, 1, 0)


async def _failing_child() -> None:
    await asyncio.sleep(0)
    raise ValueError("a child of the handler's task group failed")


async def fan_out_and_catch() -> None:
    """What many handlers do: fan out in an ``asyncio.TaskGroup``, and answer even if a
    child fails.  On Python 3.11 and 3.12 the group leaves its task's ``cancelling()``
    count at 1 (the child fails while the group waits in ``__aexit__``): a count that
    nobody acted on, no cut."""
    try:
        async with asyncio.TaskGroup() as tg:  # type: ignore[attr-defined,unused-ignore]
            tg.create_task(_failing_child())
    except Exception:  # the group's ExceptionGroup: the handler answers all the same
        pass


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.TaskGroup is Python 3.11+")
@pytest.mark.parametrize("anyio_backend", [ASYNCIO, UVLOOP], ids=["asyncio", "uvloop"])
class TestALeftoverCountIsNoCut:
    """A ``cancelling()`` count the handler's own ``asyncio.TaskGroup`` left behind is
    no evidence of a cut (as for the members of a scope: docs/semantics.md)."""

    async def test_an_event_stream_is_ended_not_cut(self) -> None:
        """The member ends an event stream whose handler fanned out first: its own
        cancellation is the only one (ended, with the ``retry:`` field), not a second
        one by someone else."""
        server = FakeServer()

        async def app(scope: Message, receive: Any, send: Any) -> None:
            await fan_out_and_catch()
            await send(SSE_START)
            await send(EVENT)
            await anyio.sleep_forever()  # ignores its signal: the member ends it

        middleware = await serve_one(app, server)
        assert server.body == b"data: 1\n\nretry: 1000\n\n"
        assert (middleware.streams_ended, middleware.cancelled, middleware.in_flight) == (1, 0, 0)

    async def test_an_event_stream_that_swallows_the_end_is_ended(self) -> None:
        server = FakeServer()

        async def app(scope: Message, receive: Any, send: Any) -> None:
            await fan_out_and_catch()
            await send(SSE_START)
            await send(EVENT)
            with contextlib.suppress(asyncio.CancelledError):  # the member's end, swallowed
                await anyio.sleep_forever()

        middleware = await serve_one(app, server)
        assert server.body == b"data: 1\n\nretry: 1000\n\n"
        assert (middleware.streams_ended, middleware.cancelled, middleware.in_flight) == (1, 0, 0)


ASYNCIO_COMBOS = [combo for combo in COMBOS if combo.values[0] != TRIO]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.TaskGroup is Python 3.11+")
@pytest.mark.parametrize(("anyio_backend", "server"), ASYNCIO_COMBOS)
@pytest.mark.parametrize("request_signals", [True, False])
async def test_an_answer_after_a_task_group_is_not_a_cut(
    server: ServerName, request_signals: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A request in flight when the drain begins, whose handler then fans out in an
    ``asyncio.TaskGroup`` (a child fails, the handler catches the group's error) and
    answers in full within the grace, was not cut: the member is ``STOPPED``, ``cut``
    is 0, and no warning says otherwise."""
    caplog.set_level(logging.WARNING)
    counter = Counter(1)
    data: list[bytes] = []
    draining: list[anyio.Event] = []

    async def app(scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan here")  # the servers go on without it
        start = {"type": "http.response.start", "status": 200, "headers": []}
        await send({**start, "headers": [(b"content-length", b"4")]})
        await send({"type": "http.response.body", "body": b"ab", "more_body": True})
        counter.one_more()
        await draining[0].wait()
        await fan_out_and_catch()
        await send({"type": "http.response.body", "body": b"cd"})

    async def listen(port: int) -> None:
        data.append(await raw_get(port, "/", counter))

    with anyio.fail_after(HANG_GUARD):
        async with TaskScope(grace=HANG_GUARD) as scope:
            info = await starter(server)(
                scope, app, request_signals=request_signals, **quiet(server)
            )
            drained = anyio.Event()
            draining.append(drained)
            async with anyio.create_task_group() as tg:
                tg.start_soon(listen, info.port)
                await counter.all_open.wait()
                scope.stop("deploy")
                await info.readiness.draining.wait()
                drained.set()
    record = scope.report.by_name(server)
    assert (record.outcome, record.cut) == (Outcome.STOPPED, 0), record
    assert data[0].endswith(b"\r\n\r\nabcd"), data[0][-40:]
    assert not any("did not finish" in r.getMessage() for r in caplog.records), caplog.records
