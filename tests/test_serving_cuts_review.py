"""A server member cut while the server's cleanup is held up (review of issue 16).

The member gives the server's cleanup at most ``CUT_UNWIND`` seconds after the cut,
then ends and leaves the rest to finish in the background, with a warning of its own.
That bounded wait is the library's, not a member swallowing its cancellation: the
scope must not report it as a laggard ("is still running 1 s after it was cancelled
... swallows cancellation", ``phase="after-cancel"``), which it did whenever the
bound was used up, the bound being the scope's laggard delay itself.

Real servers on 127.0.0.1, raw TCP clients; the app holds its cleanup on an event set
only once the member has ended.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import anyio
import pytest

from loop_leaks import is_leak
from stopscope import Outcome, TaskScope
from stopscope.servers import _hypercorn, start_hypercorn, start_uvicorn

pytestmark = pytest.mark.anyio

#: seconds; only a guard against hangs, never a timing assertion
HANG_GUARD = 30.0
#: the scope's grace: short, as the test waits for it for real
GRACE = 0.3

Message = MutableMapping[str, Any]

on_asyncio = pytest.mark.parametrize(
    "anyio_backend",
    [
        pytest.param(("asyncio", {"debug": True}), id="asyncio"),
        pytest.param(
            ("asyncio", {"use_uvloop": True}),
            id="asyncio+uvloop",
            marks=pytest.mark.skipif(sys.platform == "win32", reason="uvloop is POSIX only"),
        ),
    ],
)


class HeldApp:
    """A request that outlives its cancellation, or a lifespan shutdown that takes its
    time: each holds on until ``release`` is set."""

    def __init__(self, *, hold: Literal["request", "lifespan"]) -> None:
        self.hold = hold
        self.entered = anyio.Event()
        self.release = anyio.Event()
        self.shutdown_begun = anyio.Event()
        self.ended = anyio.Event()
        self.shutdowns = 0

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    self.shutdowns += 1
                    self.shutdown_begun.set()
                    if self.hold == "lifespan":
                        await self.release.wait()
                    await send({"type": "lifespan.shutdown.complete"})
                    self.ended.set()
                    return
        self.entered.set()
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await self.release.wait()


def laggard_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "is still running" in r.getMessage()]


@on_asyncio
@pytest.mark.parametrize("server", ["hypercorn", "uvicorn"])
async def test_the_bounded_wait_after_a_cut_is_not_a_laggard(
    server: Literal["hypercorn", "uvicorn"], caplog: pytest.LogCaptureFixture
) -> None:
    """The grace runs out while the server's cleanup is held up (hypercorn: a request
    that outlives its cancellation; uvicorn: the app's lifespan shutdown): the member
    waits for it for ``CUT_UNWIND`` seconds, then ends, CANCELLED with
    ``phase="cancelled"`` and its own warning; the scope does not accuse it of
    swallowing the cancellation."""
    caplog.set_level(logging.INFO, "stopscope")
    app = HeldApp(hold="request" if server == "hypercorn" else "lifespan")
    with anyio.fail_after(HANG_GUARD):
        async with TaskScope(grace=GRACE) as scope:
            if server == "hypercorn":
                info = await start_hypercorn(scope, app)
                stream = await anyio.connect_tcp("127.0.0.1", info.port)
                await stream.send(b"GET /held HTTP/1.1\r\nHost: test\r\n\r\n")
                await app.entered.wait()
            else:
                await start_uvicorn(scope, app, log_config=None)
            scope.stop("deploy")
        record = scope.report.by_name(server)
        lagged = laggard_warnings(caplog)
        # the app lets go only now, the member having ended: what it held ends too
        app.release.set()
        if server == "hypercorn":
            (task,) = _hypercorn._left_behind
            await asyncio.wait({task})
            await stream.aclose()
        else:
            await app.ended.wait()
    assert any("left to finish in the background" in r.message for r in caplog.records)
    assert lagged == []
    assert (record.outcome, record.phase) == (Outcome.CANCELLED, "cancelled")


class ReadsOnApp:
    """A lifespan that keeps reading after its shutdown (it does not return), with a
    shutdown held until ``release`` is set; counts the shutdowns it ran."""

    def __init__(self) -> None:
        self.release = anyio.Event()
        self.shutdown_begun = anyio.Event()
        self.shutdowns = 0
        self.completed = anyio.Event()

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.shutdowns += 1
                self.shutdown_begun.set()
                await self.release.wait()
                if self.shutdowns == 1:
                    await send({"type": "lifespan.shutdown.complete"})
                    self.completed.set()


@on_asyncio
async def test_a_cut_during_uvicorns_own_lifespan_shutdown_does_not_repeat_it() -> None:
    """The grace runs out while uvicorn's own shutdown waits for the app's lifespan
    shutdown: the cut member waits for that shutdown, and does not send the app a
    second shutdown message (an app that reads on ran its shutdown twice)."""
    app = ReadsOnApp()
    with anyio.fail_after(HANG_GUARD):
        async with TaskScope(grace=GRACE) as scope:
            await start_uvicorn(scope, app, log_config=None)
            scope.stop("deploy")
            await app.shutdown_begun.wait()  # uvicorn's own: the grace runs out in it
        assert scope.report.by_name("uvicorn").outcome is Outcome.CANCELLED
        app.release.set()
        await app.completed.wait()
        # a second message, if sent, is in the queue: the app reads it at once
        await anyio.wait_all_tasks_blocked()
    assert app.shutdowns == 1


@pytest.mark.parametrize(
    "use_uvloop",
    [
        pytest.param(False, id="asyncio"),
        pytest.param(
            True,
            id="asyncio+uvloop",
            marks=pytest.mark.skipif(sys.platform == "win32", reason="uvloop is POSIX only"),
        ),
    ],
)
def test_a_cleanup_left_behind_ends_at_the_loops_close(
    use_uvloop: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """hypercorn's cleanup is left behind (a request outlives its cancellation) and
    the program ends, as ``run()`` does after a second SIGTERM: ``asyncio.Runner``
    cancels what is left at the loop's close.  hypercorn's cleanup, cancelled a second
    time, raised ``InvalidStateError`` ("unhandled exception during asyncio.run()
    shutdown", and the member's "the server raised after the member was cut") and
    left its connections' error unretrieved; now it ends its cleanup."""
    caplog.set_level(logging.INFO)
    tasks: list[asyncio.Task[None]] = []

    async def main() -> None:
        app = HeldApp(hold="request")
        with anyio.fail_after(HANG_GUARD):
            with anyio.CancelScope() as outer:
                async with TaskScope(grace=HANG_GUARD) as scope:
                    info = await start_hypercorn(scope, app)
                    stream = await anyio.connect_tcp("127.0.0.1", info.port)
                    await stream.send(b"GET /held HTTP/1.1\r\nHost: test\r\n\r\n")
                    await app.entered.wait()
                    outer.cancel()
            await stream.aclose()
        tasks.extend(_hypercorn._left_behind)  # the request holds on: left behind

    anyio.run(main, backend="asyncio", backend_options={"use_uvloop": use_uvloop})
    gc.collect()
    (task,) = tasks
    assert task.done()
    assert task.cancelled() or task.exception() is None
    assert _hypercorn._left_behind == set()
    lost = [
        r.getMessage()
        for r in caplog.records
        if is_leak(r.getMessage())
        or "unhandled exception" in r.getMessage()
        or "raised after the member was cut" in r.getMessage()
    ]
    assert lost == []
