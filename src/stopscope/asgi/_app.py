"""GracefulApp: the graceful stop for an ASGI app started by its server's own command."""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, Final, Literal, final

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._report import LOG_FIELD, ShutdownReport, Timeline, _timeline, scope_fields
from .._scope import TaskScope, _check_grace, current_record
from .._service import DEFAULT_RESERVE, _check_budget, _CurrentStderr
from .._signal import StopSignal, logger
from ..servers._drain import Drain, check_drain_delay
from ..servers._readiness import (
    ASGIApp,
    Message,
    Readiness,
    ReadinessMiddleware,
    Receive,
    Scope,
    Send,
)
from ._hooks import ServerHook, install

if sys.version_info >= (3, 11):
    from typing import TypeVarTuple, Unpack
else:  # anyio depends on typing_extensions and exceptiongroup on 3.10
    from exceptiongroup import BaseExceptionGroup
    from typing_extensions import TypeVarTuple, Unpack

__all__ = ["GracefulApp"]

PosArgsT = TypeVarTuple("PosArgsT")

#: the key a GracefulApp puts in the lifespan scope it passes on: a second one inside
#: sees it and refuses to start
WRAPPED_KEY: Final = "stopscope.asgi"
#: how long the HTTP member waits, after the server's drain, for the requests it cut
#: to unwind (they are counted then), and how often it looks
UNWIND_WAIT: Final = 1.0
UNWIND_POLL: Final = 0.01
#: seconds uvicorn spends around its own drain timeout (see servers._uvicorn)
_OVERHEAD = {"uvicorn": 0.3}
_DEFAULT_OVERHEAD = 0.1

_NO_LIFESPAN = (
    "GracefulApp got a request before the ASGI lifespan started: the server runs "
    "without lifespan support, so SIGTERM, the drain delay and the background members "
    "are not in place; start the server with lifespan on (uvicorn/fastapi: "
    "`--lifespan on`; gunicorn's UvicornWorker and hypercorn always send it)"
)

#: the GracefulApp whose lifespan runs the current code (see GracefulApp.current())
_current: contextvars.ContextVar[GracefulApp] = contextvars.ContextVar("stopscope.asgi")

State = Literal["new", "starting", "running", "stopping", "stopped"]


@final
class GracefulApp:
    """Wrap an ASGI app for the server's own command: readiness, the drain delay,
    request signals and background members stopped after the HTTP side.

    ::

        from stopscope.asgi import GracefulApp

        @asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            graceful.start_soon(flusher, graceful.signal)   # a background member
            yield

        graceful = GracefulApp(FastAPI(lifespan=lifespan), drain_delay=5, grace=25)
        app = graceful          # uvicorn main:app, fastapi run, hypercorn main:app,
                                # gunicorn -k uvicorn_worker.UvicornWorker main:app

    On SIGTERM, before the server's own handler sees it: the readiness turns "not ready"
    (``readiness_path`` answers 503; with a drain delay, HTTP/1 responses carry
    ``Connection: close``); the server keeps serving for ``drain_delay`` seconds; then
    the server is let go on with its own shutdown (it closes its listener and finishes
    in-flight requests, within what is left of the grace where the server lets us set
    its timeout); once the server has drained the HTTP side (its lifespan shutdown), the
    background members are stopped; then the app's own lifespan shutdown runs, and the
    report is logged.  A repeated SIGTERM changes nothing (a process-group kill reaches a
    worker twice: from the supervisor and from its master).

    It needs the ASGI lifespan (every server named above sends it) and the main
    thread.  Background members are started from the app's lifespan startup with
    :meth:`start_soon`, :meth:`start` or :meth:`start_thread`, and watch
    :attr:`signal`.

    :param app: the ASGI application
    :param grace: the whole stop's budget, seconds, drain delay included (``None``:
        no limit)
    :param drain_delay: seconds to keep serving, not ready, after SIGTERM; must be
        shorter than ``grace``
    :param readiness_path: the readiness probe's path; ``None``: no probe route
    :param request_signals: give each HTTP request a stop signal (``request_signal()``
        of ``stopscope.servers``); WebSocket connections always get one
    :param websocket_close_code: the close code sent, when the drain begins, to each
        WebSocket session its handler has not closed within 0.2 s of its signal: 1001
        ("going away", the default) or 1012 ("service restart"), or any code an
        endpoint may send (1000-1003, 1007-1014, 3000-4999)
    :param sse_retry: an event stream (``text/event-stream``) still open when the
        server starts its drain is ended cleanly, with a last ``retry:`` field of this
        many seconds (``None``: none); needs ``request_signals``
    :param name: the scope's name in logs and in the report
    :param budget: the orchestrator's limit, seconds from SIGTERM to SIGKILL
        (Kubernetes' ``terminationGracePeriodSeconds`` less any ``preStop``, systemd's
        ``TimeoutStopSec``); ``None``: not checked.  Checked at once: the drain delay
        and ``grace`` (which includes it), then ``reserve``, must fit in it; the logged
        report then says how much of it each phase used
    :param reserve: seconds of the budget kept after the grace: the app's lifespan
        shutdown, a telemetry flush, the server's exit (default 5)
    :raises ValueError: for a bad ``grace``, ``drain_delay``,
        ``websocket_close_code`` or ``sse_retry``, an ``app`` that is
        a GracefulApp already, or a stop that does not fit ``budget`` (the message
        says which phase to shorten, and by how much)

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_background",
        "_delay",
        "_failure",
        "_grace",
        "_hook",
        "_http_done",
        "_middleware",
        "_name",
        "_scope",
        "_server_done",
        "_service_done",
        "_state",
        "_timeline",
        "_waiting",
        "app",
        "readiness",
    )

    def __init__(
        self,
        app: ASGIApp,
        *,
        grace: float | None = 20.0,
        drain_delay: float = 0.0,
        readiness_path: str | None = "/readyz",
        request_signals: bool = True,
        websocket_close_code: int = 1001,
        sse_retry: float | None = 1.0,
        name: str = "app",
        budget: float | None = None,
        reserve: float = DEFAULT_RESERVE,
    ) -> None:
        if isinstance(app, GracefulApp):
            raise ValueError(
                "`app` is a GracefulApp already: wrap the application once, with the "
                "drain delay and grace you want"
            )
        if not callable(app):
            raise TypeError(f"`app` must be an ASGI application, got {app!r}")
        delay = check_drain_delay(drain_delay)
        grace = _check_grace(grace)
        if grace is not None and delay and delay >= grace:
            raise ValueError(
                f"`drain_delay` ({delay:g} s) must be shorter than the grace ({grace:g} s): "
                f"the server needs time after it to finish in-flight requests"
            )
        if not isinstance(name, str):
            raise TypeError(f"`name` must be a str, got {name!r}")
        budget_s, reserve_s = _check_budget(budget, reserve, grace, "GracefulApp", delay)
        #: the phases of the stop, against the budget
        self._timeline = Timeline(budget_s, reserve_s)
        #: the wrapped application
        self.app = app
        #: the readiness state (also answered on ``readiness_path``)
        self.readiness = Readiness()
        self._middleware = ReadinessMiddleware(
            app,
            self.readiness,
            path=readiness_path,
            request_signals=request_signals,
            websocket_close_code=websocket_close_code,
            sse_retry=sse_retry,
        )
        # Connection: close only when a balancer may move clients elsewhere
        self._middleware.close_connections = delay > 0
        self._grace = grace
        self._delay = delay
        self._name = name
        self._state: State = "new"
        self._scope: TaskScope | None = None
        self._background: StopSignal | None = None
        self._hook: ServerHook | None = None
        self._waiting: anyio.CancelScope | None = None
        self._server_done: anyio.Event | None = None
        self._service_done: anyio.Event | None = None
        self._failure: BaseException | None = None
        #: time.monotonic() when the HTTP member ended (the background stop's start)
        self._http_done: float | None = None

    # -- what the app's code uses ---------------------------------------------------

    @staticmethod
    def current() -> GracefulApp:
        """The GracefulApp whose lifespan runs this code: for an app that adds it as a
        middleware (``app.add_middleware(GracefulApp, ...)``, as ``fastapi run`` needs a
        FastAPI app at the top), where the instance is Starlette's to create.

        ::

            @asynccontextmanager
            async def lifespan(app: FastAPI) -> AsyncIterator[None]:
                graceful = GracefulApp.current()
                graceful.start_soon(flusher, graceful.signal)
                yield

        :raises RuntimeError: outside the lifespan of an app wrapped in a GracefulApp
        """
        try:
            return _current.get()
        except LookupError:
            raise RuntimeError(
                "GracefulApp.current() is available in the app's lifespan (and what it "
                "starts), once the app is wrapped in a GracefulApp"
            ) from None

    @property
    def signal(self) -> StopSignal:
        """What background members watch: set once the server has drained the HTTP side."""
        if self._background is None:
            raise RuntimeError("GracefulApp.signal is available from the app's lifespan startup on")
        return self._background

    @property
    def stopping(self) -> StopSignal:
        """Set the moment the stop is heard (SIGTERM), before the drain delay: for a
        background member that must stop taking new work at once (a queue consumer);
        :attr:`signal` is set only once the HTTP side has drained."""
        if self._scope is None:
            raise RuntimeError(
                "GracefulApp.stopping is available from the app's lifespan startup on"
            )
        return self._scope.signal

    @property
    def report(self) -> ShutdownReport:
        """The stop's report (frozen once the lifespan shutdown has run)."""
        if self._scope is None:
            raise RuntimeError("GracefulApp.report is available from the lifespan startup on")
        return self._scope.report

    @property
    def in_flight(self) -> int:
        """HTTP requests and WebSocket sessions being handled now."""
        return self._middleware.in_flight

    def stop(self, reason: object = None) -> bool:
        """Request the stop as SIGTERM would (not ready, drain delay, then the server's
        own shutdown); safe from any thread.  ``False`` if the lifespan has not started
        or a stop was requested already."""
        scope = self._scope
        if scope is None:
            return False
        return scope.stop(reason)

    def _background_scope(self, method: str) -> TaskScope:
        if self._state != "starting" or self._scope is None:
            raise RuntimeError(
                f"GracefulApp.{method}() starts background members from the app's lifespan "
                f"startup (before its `yield`), so that they are stopped after the HTTP side"
            )
        return self._scope

    def start_soon(
        self,
        func: Callable[[Unpack[PosArgsT]], Awaitable[Any]],
        *args: Unpack[PosArgsT],
        name: object = None,
        grace: float | None = None,
    ) -> None:
        """Start a background member (see :meth:`stopscope.TaskScope.start_soon`)."""
        self._background_scope("start_soon").start_soon(func, *args, name=name, grace=grace)

    async def start(
        self,
        func: Callable[..., Awaitable[Any]],
        *args: object,
        name: object = None,
        grace: float | None = None,
    ) -> Any:
        """Start a background member and wait for its ``task_status.started()``."""
        scope = self._background_scope("start")
        return await scope.start(func, *args, name=name, grace=grace)

    def start_thread(
        self,
        func: Callable[[StopSignal, Unpack[PosArgsT]], object],
        *args: Unpack[PosArgsT],
        name: object = None,
        grace: float | None = None,
    ) -> None:
        """Run ``func(signal, *args)`` in a thread, as a background member."""
        self._background_scope("start_thread").start_thread(func, *args, name=name, grace=grace)

    def __repr__(self) -> str:
        return f"<GracefulApp {self._name!r} {self._state} {self.readiness.state}>"

    # -- ASGI ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if self._state == "new":
                raise RuntimeError(_NO_LIFESPAN)
            await self._middleware(scope, receive, send)
        elif kind == "websocket":
            if self._state == "new":
                raise RuntimeError(_NO_LIFESPAN)
            # counted as the requests are (a session the server cuts is a cut), with a
            # signal set when the drain begins (or the client leaves), and closed by
            # the library when the drain begins
            middleware = self._middleware
            signal = None if middleware.request_signals else self.readiness.draining.child()
            await middleware._websocket(scope, receive, send, signal)
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":
            raise RuntimeError(f"the ASGI lifespan began with {message['type']!r}")
        refusal = self._refusal(scope)
        if refusal is not None:
            await send({"type": "lifespan.startup.failed", "message": refusal})
            return
        self._state = "starting"
        self._server_done = anyio.Event()
        self._service_done = anyio.Event()
        inner = _InnerLifespan(self.app, {**scope, WRAPPED_KEY: self})
        logging_fallback = _LogFallback.attach()
        token = _current.set(self)  # the app's lifespan task inherits it
        timeline_token = _timeline.set(self._timeline)  # the HTTP member records its drain
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(inner.run)
                try:
                    ok, why = await tg.start(self._run_service, inner)
                except Exception as exc:
                    ok, why = False, f"{type(exc).__name__}: {exc}"
                    logger.error("%s: the lifespan startup failed: %s", self._name, why)
                if not ok:
                    self._state = "stopped"
                    inner.close()
                    await send({"type": "lifespan.startup.failed", "message": why})
                    return
                await send({"type": "lifespan.startup.complete"})
                message = await receive()  # lifespan.shutdown: the HTTP side has drained
                self._on_server_done()
                drained = time.monotonic()
                await self._service_done.wait()
                shutdown = time.monotonic()
                # the background stage is stopped once the HTTP member has ended
                begun = max(drained, self._http_done or drained)
                self._timeline.add("background stop", shutdown - begun)
                ok, why = await inner.exchange("shutdown")
                self._timeline.add("lifespan shutdown", time.monotonic() - shutdown)
                inner.close()
            self._state = "stopped"
            self._log_report()
            if self._failure is not None:
                failure, self._failure = self._failure, None
                ok, why = False, _describe(failure)
            await send(
                {"type": "lifespan.shutdown.complete"}
                if ok
                else {"type": "lifespan.shutdown.failed", "message": why}
            )
        finally:
            inner.close()
            hook, self._hook = self._hook, None
            if hook is not None:
                hook.uninstall()
            _current.reset(token)
            _timeline.reset(timeline_token)
            logging_fallback.detach()

    def _refusal(self, scope: Scope) -> str | None:
        outer = scope.get(WRAPPED_KEY)
        if outer is not None:
            return (
                f"the app is wrapped in GracefulApp twice ({outer!r} around {self!r}): "
                f"keep only the outer one"
            )
        if self._state != "new":
            return (
                f"this GracefulApp runs a lifespan already ({self!r}): a GracefulApp serves "
                f"one server; create one per server"
            )
        return None

    # -- the service: background members and the HTTP side, in one TaskScope -----------

    async def _run_service(
        self,
        inner: _InnerLifespan,
        *,
        task_status: anyio.abc.TaskStatus[tuple[bool, str]],
    ) -> None:
        assert self._server_done is not None
        assert self._service_done is not None
        started = False
        try:
            # uninstalled by _lifespan, after the app's own lifespan shutdown: a handler
            # the app installed on top of it (stop_on_signals) is gone by then
            hook = install(self._heard)
            self._hook = hook
            async with TaskScope(grace=self._grace, name=self._name) as scope:
                self._scope = scope
                self._background = scope.stage("background")
                ok, why = await inner.exchange("startup")
                if not ok:
                    scope.stop("the app's lifespan startup failed")
                    task_status.started((False, why))
                    started = True
                    return
                http = scope.stage("http")
                self._state = "running"
                label = f"{self._name}: http ({hook.server})"
                await scope.start(self._http, http, hook, label, name="http", grace=None)
                task_status.started((True, ""))
                started = True
                await self._server_done.wait()
        except Exception as exc:
            if not started:
                raise
            self._failure = exc
            logger.error("%s: the service failed: %s", self._name, _describe(exc), exc_info=exc)
        finally:
            self._service_done.set()

    def _heard(self, reason: object) -> None:
        """On the loop: the stop was heard (SIGTERM, or hypercorn's shutdown event)."""
        scope = self._scope
        if scope is not None:
            scope.stop(reason)

    async def _http(
        self,
        signal: StopSignal,
        hook: ServerHook,
        label: str,
        *,
        task_status: anyio.abc.TaskStatus[None],
    ) -> None:
        """The HTTP side as a member: it ends when the server has drained it."""
        scope, server_done = self._scope, self._server_done
        assert scope is not None
        assert server_done is not None
        current_record().kind = "server"
        drain = Drain(scope, signal, self.readiness, self._delay, None, label)
        drain.middleware = self._middleware
        if hook.server == "uvicorn":  # one line for the requests its timeout cancels
            drain.quiet_logger = "uvicorn.error"
        elif hook.server.startswith("hypercorn") and not hook.server.endswith("(trio)"):
            drain.quiet_logger = "asyncio"
        drain.open()
        try:
            self.readiness.mark_ready()
            task_status.started()
            async with anyio.create_task_group() as tg:
                tg.start_soon(hook.watch_event)
                with anyio.CancelScope() as waiting:
                    self._waiting = waiting
                    if server_done.is_set():  # it stopped before this member could wait
                        waiting.cancel()
                    await drain.wait_for_stop()
                self._waiting = None
                self._state = "stopping"
                if waiting.cancelled_caught:  # the server stopped on its own
                    self.readiness.mark_draining()
                else:
                    timeout = drain.timeout(_OVERHEAD.get(hook.server, _DEFAULT_OVERHEAD))
                    if not hook.set_timeout(timeout) and timeout is not None:
                        logger.info(
                            "%s: the server's own timeout bounds the in-flight requests",
                            label,
                        )
                    overhead = _OVERHEAD.get(hook.server, _DEFAULT_OVERHEAD)
                    if hook.cuts_websockets:
                        # uvicorn cuts every WebSocket connection (1012) as its shutdown
                        # begins: the library closes them first, with the listener closed
                        hook.close_listeners()
                        drain.draining(timeout)
                        try:
                            await drain.close_websockets(overhead)
                        finally:  # even cancelled by the grace: uvicorn must go on
                            hook.set_timeout(drain.timeout(overhead))
                            hook.release()
                    else:
                        drain.draining(timeout)
                        hook.release()
                        await drain.close_websockets(overhead)
                await server_done.wait()
                tg.cancel_scope.cancel()
            await self._unwound()
        except BaseException:
            drain.unquiet()
            raise
        finally:
            drain.close()
        drain.finished()
        self._http_done = time.monotonic()

    async def _unwound(self) -> None:
        """Wait for the requests the server cut (it cancels them and goes on with the
        lifespan shutdown at once) to unwind through the middleware, so that they are
        counted; bounded by UNWIND_WAIT (the scope's grace bounds it too)."""
        middleware = self._middleware
        if not middleware.in_flight:
            return
        with anyio.move_on_after(UNWIND_WAIT):
            while middleware.in_flight:
                await anyio.sleep(UNWIND_POLL)

    def _on_server_done(self) -> None:
        """The server sent the lifespan shutdown: its HTTP side is over."""
        assert self._server_done is not None
        self._server_done.set()
        waiting = self._waiting
        if waiting is not None:
            waiting.cancel()
        if self._scope is not None:
            self._scope.stop("server shutdown")

    def _log_report(self) -> None:
        """The report, a line at a time; with a budget, a last line on how much of it
        each phase used.  The first record carries the whole stop as fields."""
        scope = self._scope
        if scope is None:
            return
        report = scope.report
        now = time.monotonic()
        timeline = self._timeline
        timeline.start(report.requested_at)  # set by now: the server's shutdown stops it
        lines = str(report).splitlines()
        if timeline.budget is not None:
            lines.append(timeline.text(now))
        fields: dict[str, Any] | None = None
        if logger.isEnabledFor(logging.INFO):
            fields = scope_fields(report, self._name, self._grace)
            fields["event"] = "app.stopped"
            fields["drain_delay"] = self._delay
            fields.update(timeline.to_dict(now))
        for line in lines:
            extra = None if fields is None else {LOG_FIELD: fields}
            logger.info("%s report: %s", self._name, line, extra=extra)
            fields = None  # one record carries them


def _describe(error: BaseException) -> str:
    """One line: the error, and each error inside a group."""
    text = f"{type(error).__name__}: {error}"
    if isinstance(error, BaseExceptionGroup):
        text += ": " + "; ".join(_describe(inner) for inner in error.exceptions)
    return text


class _InnerLifespan:
    """The wrapped app's own lifespan, driven one message at a time."""

    def __init__(self, app: ASGIApp, scope: Scope) -> None:
        self.app = app
        self.scope = scope
        self._to_app: MemoryObjectSendStream[Message]
        self._app_receive: MemoryObjectReceiveStream[Message]
        self._to_app, self._app_receive = anyio.create_memory_object_stream[Message](1)
        self._app_send: MemoryObjectSendStream[Message]
        self._from_app: MemoryObjectReceiveStream[Message]
        self._app_send, self._from_app = anyio.create_memory_object_stream[Message](1)
        self.received = False  # whether the app called receive() at all
        self.unsupported = False
        self.error: Exception | None = None

    async def run(self) -> None:
        try:
            await self.app(self.scope, self._receive, self._send)
        except Exception as exc:
            self.error = exc
        finally:
            self._app_send.close()

    async def _receive(self) -> Message:
        self.received = True
        try:
            return await self._app_receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            return {"type": "lifespan.shutdown"}

    async def _send(self, message: Message) -> None:
        await self._app_send.send(message)

    async def exchange(self, step: Literal["startup", "shutdown"]) -> tuple[bool, str]:
        """Send ``lifespan.<step>``; return whether the app completed it, and why not."""
        if self.unsupported:
            return True, ""
        # the app may have returned already: its answer (or error) is read below
        with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self._to_app.send({"type": f"lifespan.{step}"})
        try:
            reply = await self._from_app.receive()
        except anyio.EndOfStream:
            error = self.error
            if error is None:
                return True, ""  # returned without a word: nothing to do at this step
            if step == "startup" and not self.received:
                # raised before it asked for a message: it has no lifespan (as uvicorn's
                # "auto" mode reads it)
                self.unsupported = True
                logger.debug("the app does not support the ASGI lifespan: %r", error)
                return True, ""
            return False, f"{type(error).__name__}: {error}"
        if reply["type"] == f"lifespan.{step}.complete":
            return True, ""
        return False, str(reply.get("message", f"the app sent {reply['type']!r}"))

    def close(self) -> None:
        for stream in (self._to_app, self._app_receive, self._app_send, self._from_app):
            stream.close()


class _LogFallback(_CurrentStderr):
    """While a GracefulApp runs: stopscope's INFO lines (the steps, the report) go to
    stderr when the server's logging config gives them no handler (uvicorn's, gunicorn's
    and hypercorn's configure their own loggers only)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        self._level = logger.level

    @classmethod
    def attach(cls) -> _LogFallback | _NoFallback:
        if logger.hasHandlers():
            return _NoFallback()
        handler = cls()
        logger.addHandler(handler)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
        return handler

    def detach(self) -> None:
        logger.removeHandler(self)
        logger.setLevel(self._level)


class _NoFallback:
    def detach(self) -> None:
        pass
