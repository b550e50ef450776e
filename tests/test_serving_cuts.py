"""A hypercorn member cut (a hard stop, its grace spent) leaves nothing behind (issue 16).

hypercorn's asyncio cleanup was cut by anyio's repeated cancellation: the error of its
cancelled connections was never retrieved and its lifespan task was destroyed pending,
reported by asyncio whenever the garbage collector came, in a later test.  Each test
here collects its garbage itself and reads asyncio's reports (``loop_leaks``).  Real
hypercorn servers on 127.0.0.1, raw TCP clients; a request is known in flight when the
app has entered it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Literal

import anyio
import pytest

from loop_leaks import collect_garbage, is_leak, loop_reports
from stopscope import Outcome, TaskScope
from stopscope.servers import ServerInfo, _hypercorn, _uvicorn, start_hypercorn, start_uvicorn

pytestmark = pytest.mark.anyio

#: seconds; only a guard against hangs, never a timing assertion
HANG_GUARD = 30.0

Backend = tuple[str, dict[str, Any]]
Message = MutableMapping[str, Any]

ASYNCIO: Backend = ("asyncio", {"debug": True})
UVLOOP: Backend = ("asyncio", {"use_uvloop": True})
TRIO: Backend = ("trio", {})

on_asyncio = pytest.mark.parametrize(
    "anyio_backend",
    [
        pytest.param(ASYNCIO, id="asyncio"),
        pytest.param(
            UVLOOP,
            id="asyncio+uvloop",
            marks=pytest.mark.skipif(sys.platform == "win32", reason="uvloop is POSIX only"),
        ),
    ],
)
on_all = pytest.mark.parametrize(
    "anyio_backend",
    [
        pytest.param(ASYNCIO, id="asyncio"),
        pytest.param(
            UVLOOP,
            id="asyncio+uvloop",
            marks=pytest.mark.skipif(sys.platform == "win32", reason="uvloop is POSIX only"),
        ),
        pytest.param(TRIO, id="trio"),
    ],
)


class App:
    """An ASGI app with a lifespan; its one route holds the request until cancelled,
    and its cleanup, once cancelled, until ``unwind`` is set (if ``stubborn``)."""

    def __init__(
        self, *, stubborn: bool = False, failing_shutdown: bool = False, slow_shutdown: bool = False
    ) -> None:
        self.entered = anyio.Event()
        self.unwind = anyio.Event()
        self.cancelled = anyio.Event()
        self.unwound = anyio.Event()
        self.stubborn = stubborn
        self.failing_shutdown = failing_shutdown
        self.slow_shutdown = slow_shutdown
        self.lifespan: list[str] = []
        self.lifespan_ended = anyio.Event()

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        self.entered.set()
        try:
            await anyio.sleep_forever()
        finally:
            self.cancelled.set()
            if self.stubborn:
                with anyio.CancelScope(shield=True):
                    await self.unwind.wait()
            self.unwound.set()

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.lifespan.append("shutdown")
                if self.slow_shutdown:
                    await self.unwind.wait()
                if self.failing_shutdown:
                    await send({"type": "lifespan.shutdown.failed", "message": "no database"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                self.lifespan_ended.set()
                return


async def request(info: ServerInfo, app: App) -> anyio.abc.SocketStream:
    """A request in flight: sent, and entered by the app."""
    stream = await anyio.connect_tcp("127.0.0.1", info.port)
    await stream.send(b"GET /held HTTP/1.1\r\nHost: test\r\n\r\n")
    await app.entered.wait()
    return stream


async def refused(port: int) -> bool:
    try:
        stream = await anyio.connect_tcp("127.0.0.1", port)
    except OSError:
        return True
    await stream.aclose()
    return False


async def wait_refused(port: int) -> None:
    while not await refused(port):
        await anyio.sleep(0.01)


async def cut_from_outside(
    start: Callable[[TaskScope, App], Awaitable[ServerInfo]],
    app: App,
    when: Literal["serving", "draining"],
    on_asyncio: bool,
) -> tuple[list[str], TaskScope]:
    """Start a member, put a request in flight, and cancel an enclosing scope while the
    member serves, or drains (the listener closed, the request still running); then
    collect the garbage.  What the loop reported (asyncio), and the scope."""
    with loop_reports() if on_asyncio else _no_reports() as reports:
        with anyio.fail_after(HANG_GUARD):
            with anyio.CancelScope() as outer:
                async with TaskScope(grace=HANG_GUARD) as scope:
                    info = await start(scope, app)
                    stream = await request(info, app)
                    if when == "draining":
                        scope.stop("deploy")
                        await wait_refused(info.port)  # the server waits for it
                    outer.cancel()
            await stream.aclose()
            await collect_garbage()
    assert outer.cancelled_caught
    return reports, scope


class TestHardStop:
    @on_all
    @pytest.mark.parametrize("when", ["serving", "draining"])
    async def test_a_hard_stop_leaves_nothing_behind(
        self, anyio_backend_name: str, when: Literal["serving", "draining"]
    ) -> None:
        """An enclosing cancel scope cuts the member while it serves, or while hypercorn
        waits for its in-flight request: the request is cut and counted, the member is
        CANCELLED, the cancellation is raised; on asyncio, hypercorn's cleanup ran to
        its end (the app's lifespan shutdown included) and nothing is reported lost."""
        app = App()
        reports, scope = await cut_from_outside(
            start_hypercorn, app, when, anyio_backend_name == "asyncio"
        )
        assert [m for m in reports if is_leak(m)] == []  # first: the leak, if any
        record = scope.report.by_name("hypercorn")
        assert (record.outcome, record.phase) == (Outcome.CANCELLED, "cancelled-from-outside")
        assert record.cut == 1
        assert app.unwound.is_set()
        # asyncio: hypercorn's own cleanup runs the lifespan shutdown; trio cancels the
        # lifespan with the rest (the shutdown is not run, as on a cut uvicorn)
        assert app.lifespan == (["shutdown"] if anyio_backend_name == "asyncio" else [])

    @on_asyncio
    async def test_an_error_of_the_server_after_the_cut_is_logged(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The app's lifespan shutdown fails as hypercorn cleans up after the cut: the
        cancellation still wins (the member is CANCELLED), and the error is logged."""
        caplog.set_level(logging.INFO, "stopscope")
        app = App(failing_shutdown=True)
        reports, scope = await cut_from_outside(start_hypercorn, app, "serving", True)
        assert [m for m in reports if is_leak(m)] == []  # first: the leak, if any
        assert scope.report.by_name("hypercorn").outcome is Outcome.CANCELLED
        errors = [r for r in caplog.records if "raised after the member was cut" in r.message]
        assert len(errors) == 1
        assert errors[0].exc_info is not None
        assert "no database" in str(errors[0].exc_info[1])


class TestGraceSpent:
    @on_asyncio
    @pytest.mark.parametrize("budget", ["scope", "member", "stage"])
    async def test_a_request_that_unwinds_late_leaves_nothing_behind(
        self, budget: Literal["scope", "member", "stage"]
    ) -> None:
        """A request whose cleanup outlasts the grace: the member is cut (its scope's
        grace, its own ``grace=``, its stage's share of the scope's) while hypercorn
        waits for the request it cancelled (at its own timeout, or at the cut).
        hypercorn is left to finish that wait and its lifespan shutdown (within
        ``CUT_UNWIND``); nothing is reported lost."""
        app = App(stubborn=True)
        with loop_reports() as reports:
            with anyio.fail_after(HANG_GUARD):
                # in a function of its own: what the server left is garbage once it returns
                outcome, cut = await self.cut_while_hypercorn_waits(app, budget)
                await collect_garbage()
        assert [m for m in reports if is_leak(m)] == []  # first: the leak, if any
        assert (outcome, cut) == (Outcome.CANCELLED, 1)
        assert app.lifespan == ["shutdown"]  # hypercorn's cleanup ran to its end

    @staticmethod
    async def cut_while_hypercorn_waits(
        app: App, budget: Literal["scope", "member", "stage"]
    ) -> tuple[Outcome, int]:
        grace = 1.0
        scope_grace = grace if budget != "member" else HANG_GUARD
        stopped_at = math.inf

        async def unwind_after_the_cut() -> None:
            # outside the scope, which cancels its body at the cut too.  Once hypercorn's
            # own timeout (or the cut) cancelled the request, the request holds its
            # cleanup until past the member's deadline (the scope's clock is this one):
            # the member is cut while hypercorn waits for the request
            await app.cancelled.wait()
            await anyio.sleep_until(stopped_at + grace + 0.1)
            app.unwind.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(unwind_after_the_cut)
            async with TaskScope(grace=scope_grace) as scope:
                if budget == "stage":
                    scope.stage("http")
                info = await start_hypercorn(
                    scope, app, grace=grace if budget == "member" else None
                )
                stream = await request(info, app)
                stopped_at = anyio.current_time()
                scope.stop("deploy")
        await stream.aclose()
        record = scope.report.by_name("hypercorn")
        return record.outcome, record.cut

    @on_asyncio
    async def test_cleanup_held_up_past_the_bound_is_left_to_finish(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A request that does not unwind within ``CUT_UNWIND`` of the cut: the member
        ends (CANCELLED, with a warning), and hypercorn finishes its cleanup once the
        request unwinds, the lifespan shutdown included; nothing is reported lost."""
        monkeypatch.setattr(_hypercorn, "CUT_UNWIND", 0.05)
        caplog.set_level(logging.INFO, "stopscope")
        app = App(stubborn=True)
        with loop_reports() as reports:
            with anyio.fail_after(HANG_GUARD):
                with anyio.CancelScope() as outer:
                    async with TaskScope(grace=HANG_GUARD) as scope:
                        info = await start_hypercorn(scope, app)
                        stream = await request(info, app)
                        outer.cancel()
                assert not app.unwound.is_set()  # the member ended without it
                (task,) = _hypercorn._left_behind
                app.unwind.set()
                await asyncio.wait({task})  # its cleanup, once the request unwound
                await stream.aclose()
                await collect_garbage()
        assert [m for m in reports if is_leak(m)] == []  # first: the leak, if any
        assert _hypercorn._left_behind == set()
        assert scope.report.by_name("hypercorn").outcome is Outcome.CANCELLED
        assert app.lifespan == ["shutdown"]
        assert any("left to finish in the background" in r.message for r in caplog.records)


class TestUvicornHardStop:
    @on_asyncio
    @pytest.mark.parametrize("when", ["serving", "draining"])
    async def test_a_hard_stop_leaves_nothing_behind(
        self, when: Literal["serving", "draining"]
    ) -> None:
        """The same cut on a uvicorn member: the request is cut and counted, and the
        app's lifespan task is not left pending (its shutdown runs, as on hypercorn)."""
        app = App()
        start = functools.partial(start_uvicorn, log_config=None)
        reports, scope = await cut_from_outside(start, app, when, True)
        assert [m for m in reports if is_leak(m)] == []  # first: the leak, if any
        record = scope.report.by_name("uvicorn")
        assert (record.outcome, record.cut) == (Outcome.CANCELLED, 1)
        assert app.lifespan == ["shutdown"]

    @on_asyncio
    async def test_without_a_lifespan_nothing_is_waited_for(self) -> None:
        """``lifespan="off"``: there is no lifespan to shut down at the cut."""
        app = App()
        with loop_reports() as reports:
            with anyio.fail_after(HANG_GUARD):
                with anyio.CancelScope() as outer:
                    async with TaskScope(grace=HANG_GUARD) as scope:
                        info = await start_uvicorn(scope, app, log_config=None, lifespan="off")
                        stream = await request(info, app)
                        outer.cancel()
                await stream.aclose()
                await collect_garbage()
        assert [m for m in reports if is_leak(m)] == []  # first: the leak, if any
        assert scope.report.by_name("uvicorn").outcome is Outcome.CANCELLED
        assert app.lifespan == []

    @on_asyncio
    async def test_a_slow_lifespan_shutdown_is_left_to_finish(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A lifespan shutdown longer than ``CUT_UNWIND``: the member ends (with a
        warning), and the shutdown finishes in the background; nothing is lost."""
        monkeypatch.setattr(_uvicorn, "CUT_UNWIND", 0.05)
        caplog.set_level(logging.INFO, "stopscope")
        app = App(slow_shutdown=True)
        with loop_reports() as reports:
            with anyio.fail_after(HANG_GUARD):
                with anyio.CancelScope() as outer:
                    async with TaskScope(grace=HANG_GUARD) as scope:
                        info = await start_uvicorn(scope, app, log_config=None)
                        stream = await request(info, app)
                        outer.cancel()
                assert app.lifespan == ["shutdown"]
                assert not app.lifespan_ended.is_set()  # the member ended without it
                app.unwind.set()
                await app.lifespan_ended.wait()
                await stream.aclose()
                await collect_garbage()
        assert [m for m in reports if is_leak(m)] == []  # first: the leak, if any
        assert scope.report.by_name("uvicorn").outcome is Outcome.CANCELLED
        assert any("left to finish in the background" in r.message for r in caplog.records)


class _no_reports:
    """trio: no asyncio loop to read."""

    def __enter__(self) -> list[str]:
        return []

    def __exit__(self, *exc: object) -> None:
        return None
