"""Review round 3 (serving): defects proven against real servers and clients."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import anyio
import httpx
import pytest

from stopscope.servers import Readiness, request_signal

pytestmark = pytest.mark.anyio

Message = MutableMapping[str, Any]
HANG_GUARD = 30.0

ASYNCIO_BACKENDS = [
    pytest.param(("asyncio", {"debug": False}), id="asyncio"),
    pytest.param(
        ("asyncio", {"use_uvloop": True}),
        id="asyncio+uvloop",
        marks=pytest.mark.skipif(sys.platform == "win32", reason="uvloop is POSIX only"),
    ),
]


@pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS)
async def test_a_cancelled_receive_loses_no_body_chunk_while_the_watch_pumps() -> None:
    """uvicorn's own ``receive()`` is cancel-safe (the body waits in the server); with
    the request's signal asked for, the app's ``receive()`` must stay so.

    The app's task is cancelled as an ``asyncio.timeout()`` or ``asyncio.wait_for()``
    around ``receive()`` cancels it (plain asyncio code, as in many apps), a few loop
    steps after the server handed a chunk over: on some step, after the watch handed it
    to the app's ``receive()`` and before that resumed.  Every
    chunk the client sent must reach the app.
    """
    import uvicorn

    chunks = 48
    size = 100
    waiting: list[asyncio.Task[Any]] = []  # the app's task, while in receive()
    got = bytearray()
    pumping = anyio.Event()

    async def app(scope: Message, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        request_signal(scope)
        await anyio.sleep(0.05)  # the watch takes over the server's receive()
        pumping.set()
        while True:
            task = asyncio.current_task()
            assert task is not None
            waiting.append(task)
            try:
                message = await receive()
            except asyncio.CancelledError:  # what asyncio.timeout() turns into TimeoutError
                if sys.version_info >= (3, 11):
                    task.uncancel()
                continue
            finally:
                waiting.clear()
            got.extend(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(len(got)).encode()})

    def hooked(inner: Any) -> Any:
        """Between the server and the middleware: after each chunk the server hands
        over, expire the app's timeout a different number of loop steps later."""
        handed = 0

        async def outer(scope: Message, receive: Any, send: Any) -> None:
            async def hooked_receive() -> Message:
                nonlocal handed
                message: Message = await receive()
                if message.get("body"):
                    handed += 1
                    loop = asyncio.get_running_loop()

                    def step(left: int) -> None:
                        if left:
                            loop.call_soon(step, left - 1)
                        elif waiting:  # as an expiring asyncio.timeout() does
                            waiting[0].cancel()

                    step(handed % 6)
                return message

            await inner(scope, hooked_receive if scope["type"] == "http" else receive, send)

        return outer

    async def body() -> AsyncIterator[bytes]:
        await pumping.wait()
        for _ in range(chunks):
            yield b"x" * size
            await anyio.sleep(0.002)

    config = uvicorn.Config(
        hooked(Readiness().asgi(app)),
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            while not server.started:
                await anyio.sleep(0.01)
            port = server.servers[0].sockets[0].getsockname()[1]
            try:
                async with httpx.AsyncClient() as client:
                    response = await client.post(f"http://127.0.0.1:{port}/", content=body())
            finally:
                server.should_exit = True
    assert response.status_code == 200
    assert int(response.text) == chunks * size
    assert len(got) == chunks * size


# -- GracefulApp: a WebSocket session the server cuts is a cut -------------------------

WS_CUT_APP = """
import anyio
from stopscope.asgi import GracefulApp


async def inner(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    assert scope["type"] == "websocket"
    await receive()
    await send({"type": "websocket.accept"})
    print("SESSION OPEN", flush=True)
    while True:  # deaf to its signal: only the server's drain timeout ends it
        await anyio.sleep(0.05)


app = GracefulApp(inner, grace=2.0, request_signals=REQUEST_SIGNALS)
"""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize("request_signals", [True, False], ids=["signals", "no-signals"])
@pytest.mark.parametrize("server", ["uvicorn", "hypercorn asyncio", "hypercorn trio"])
def test_graceful_app_reports_a_websocket_session_the_server_cut(
    server: str, request_signals: bool, tmp_path: Any
) -> None:
    """The contract: ``STOPPED`` is a promise that nothing was cut, connection included.

    A WebSocket session that ignores its signal outlives the grace; the server (its
    real command line, SIGTERM sent by PID) cuts it.  The report must say so.
    """
    import os
    import signal
    import subprocess
    import threading
    import time

    from websockets.sync.client import connect

    app = WS_CUT_APP.replace("REQUEST_SIGNALS", repr(request_signals))
    (tmp_path / "ws_cut_app.py").write_text(app)
    port = _free_port()
    py = sys.executable
    if server == "uvicorn":
        argv = [py, "-m", "uvicorn", "ws_cut_app:app", "--host", "127.0.0.1"]
        argv += ["--port", str(port)]
    else:
        argv = [py, "-m", "hypercorn", "ws_cut_app:app", "--bind", f"127.0.0.1:{port}"]
        argv += ["-k", server.split()[1]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen(
        argv,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    opened = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "SESSION OPEN" in line:
                opened.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + HANG_GUARD
        client = None
        while client is None:
            assert process.poll() is None, "".join(lines)
            try:
                client = connect(f"ws://127.0.0.1:{port}/", open_timeout=HANG_GUARD)
            except OSError:
                assert time.monotonic() < deadline, "".join(lines)
                time.sleep(0.05)
        with client:
            assert opened.wait(HANG_GUARD), "".join(lines)
            os.kill(process.pid, signal.SIGTERM)
            process.wait(timeout=HANG_GUARD)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        reader.join(HANG_GUARD)
        assert process.stdout is not None
        process.stdout.close()
    log = "".join(lines)
    report = [line for line in log.splitlines() if "report:" in line and " http " in line]
    assert report, log
    assert "cancelled" in report[-1], log
    assert "did not finish within the grace period" in log, log
