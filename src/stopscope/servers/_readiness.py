"""Readiness for load balancers, and a stop signal per request (ASGI middleware)."""

from __future__ import annotations

import asyncio
import enum
import math
import sys
import threading
from asyncio import CancelledError as _AsyncioCancelled
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final, Literal, Protocol, final

import anyio

from .._signal import StopSignal, _backend, _to_seconds, logger

#: the current asyncio task, as cheaply as it can be had, for every request: the C
#: ``current_task`` where there is one (Python 3.12+; the public name is a Python
#: wrapper around it); before that, the tasks by loop that asyncio keeps (in C), read
#: directly (``asyncio.current_task()`` is a Python function there, about 0.3 µs of
#: the middleware's cost per request)
_current_task: Callable[[], Any] | None = (
    getattr(sys.modules.get("_asyncio"), "current_task", None)
    if sys.version_info >= (3, 12)
    else None
)
_tasks_by_loop: dict[Any, Any] = getattr(asyncio.tasks, "_current_tasks", {})
_running_loop = asyncio.get_running_loop


if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

__all__ = [
    "ASGIApp",
    "Readiness",
    "ReadinessMiddleware",
    "RequestStop",
    "request_signal",
]

#: an ASGI scope, message, receive and send callable, and application (ASGI 3)
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: where :class:`ReadinessMiddleware` puts a request's stop signal in the ASGI scope
SCOPE_KEY: Final = "stopscope.signal"

#: the methods of a readiness probe
_PROBE: Final = ("GET", "HEAD")


class _Cancellable(Protocol):
    """An asyncio task or a trio cancel scope: what stops one request's app."""

    def cancel(self) -> object: ...


#: seconds an event stream (``text/event-stream``) still open when the drain begins is
#: given to end by itself (a handler that watches :func:`request_signal` does), before
#: the middleware ends it: a final ``retry:`` field and the end of the response
SSE_END_AFTER: Final = 0.25

State = Literal["starting", "ready", "stopping", "draining"]


class RequestStop(enum.Enum):
    """Why a request's stop signal (:func:`request_signal`) was set.

    .. versionadded:: 0.1
    """

    #: the client closed the connection before the response was complete
    CLIENT_DISCONNECTED = "client disconnected"
    #: the server stopped accepting connections and asks in-flight requests to finish
    SERVER_DRAINING = "server draining"

    def __repr__(self) -> str:
        return f"RequestStop.{self.name}"


@final
class Readiness:
    """Whether a server should get new traffic: what a readiness probe asks.

    ::

        readiness = Readiness()
        app = readiness.asgi(app, path="/readyz")   # 200 while ready, else 503
        ...
        if readiness.ready: ...                     # the same, for other frameworks

    Its :attr:`state` goes ``"starting"`` -> ``"ready"`` (the server listens) ->
    ``"stopping"`` (stop was requested: not ready, but still serving during the drain
    delay) -> ``"draining"`` (the listener is closed; in-flight requests finish).  It
    never goes back: a stopped server is not reused.  The server members
    (:func:`start_uvicorn`, :func:`start_hypercorn`) drive it; a plain attribute read
    is all a health check needs, from any thread.

    .. versionadded:: 0.1
    """

    __slots__ = ("_draining", "_lock", "_state")

    def __init__(self) -> None:
        self._state: State = "starting"
        self._draining = StopSignal()
        # the moves may come from several threads (a stop from another thread, the
        # loop); reads need no lock
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        """``True`` while the server listens and no stop has been requested."""
        return self._state == "ready"

    @property
    def state(self) -> State:
        """``"starting"``, ``"ready"``, ``"stopping"`` or ``"draining"``."""
        return self._state

    @property
    def draining(self) -> StopSignal:
        """Set when the listener closes (the drain begins); the parent of every
        request's signal (:func:`request_signal`)."""
        return self._draining

    def mark_ready(self) -> None:
        """The server listens: ready, unless a stop was requested already."""
        with self._lock:
            if self._state == "starting":
                self._state = "ready"

    def mark_stopping(self) -> None:
        """Stop was requested: not ready from now on (safe from any thread)."""
        with self._lock:
            if self._state in ("starting", "ready"):
                self._state = "stopping"

    def mark_draining(self) -> None:
        """The listener is closed: set :attr:`draining` (in-flight requests see it)."""
        with self._lock:
            self._state = "draining"
        self._draining.set(RequestStop.SERVER_DRAINING)

    def asgi(
        self,
        app: ASGIApp,
        path: str | None = "/readyz",
        *,
        request_signals: bool = True,
        websocket_close_code: int = 1001,
        sse_retry: float | None = 1.0,
    ) -> ReadinessMiddleware:
        """Wrap an ASGI application: see :class:`ReadinessMiddleware`."""
        return ReadinessMiddleware(
            app,
            self,
            path=path,
            request_signals=request_signals,
            websocket_close_code=websocket_close_code,
            sse_retry=sse_retry,
        )

    def __repr__(self) -> str:
        return f"<Readiness {self._state}>"


@final
class ReadinessMiddleware:
    """ASGI middleware: the readiness path, ``Connection: close`` while stopping, and a
    stop signal per request.

    ::

        app = ReadinessMiddleware(starlette_app, readiness, path="/readyz")

    * ``GET``/``HEAD`` on ``path`` answer ``200 ready`` while :attr:`Readiness.ready`,
      else ``503`` with the state (``starting``, ``stopping``, ``draining``); the
      application never sees these requests.  ``path=None`` leaves them to the app.
    * Requests that arrive from the stop request on get HTTP/1 responses with
      ``Connection: close``: a client with a keep-alive connection opens a new one for
      its next request, which the load balancer sends to another replica, instead of
      reusing one that the server will close when it stops listening.  With
      :attr:`close_connections` false the responses are left as the app made them
      (on asyncio), and keep-alive connections end as the server ends them at its
      own shutdown: what a server alone on its host (no drain delay, no other replica
      to move to) wants.  On trio the responses that begin from the stop on get
      ``Connection: close`` all the same: hypercorn's trio worker would otherwise
      wait its graceful timeout for a connection reused as its shutdown begins.
    * With ``request_signals=True``, each HTTP request and WebSocket session can have a
      :class:`StopSignal` (:func:`request_signal`), set when the client disconnects
      before the response is complete (reason :attr:`RequestStop.CLIENT_DISCONNECTED`)
      or when the server begins its drain (:attr:`RequestStop.SERVER_DRAINING`).  It
      costs nothing until a handler asks for it: the signal, and the task that reads
      ``receive()`` on the application's behalf to hear a disconnect (one message at a
      time, so the server's flow control still works), are made on that first call.

    * When the drain begins, the open WebSocket sessions are closed by the server
      member (:meth:`close_websockets`): each handler's signal is set first, and
      0.2 s later each session still open gets a close frame with
      ``websocket_close_code`` (1001 "going away" by default; 1012 "service restart"
      tells clients to come back soon).  From then on the handler's
      ``receive()`` says ``websocket.disconnect`` with that code, and its ``send()``
      raises :class:`OSError` (as the ASGI spec asks of a closed connection) without
      reaching the client.  The middleware absorbs the errors this close causes in
      the handler (that ``OSError``, an error raised from it, a disconnect error
      raised while handling it, an error carrying the close code once ``receive()``
      said so, as Starlette's ``WebSocketDisconnect``, and a group of only such
      errors from a task group), so the session ends without a traceback; any
      other error (a bug in the handler's cleanup) reaches the server.

    * With ``request_signals=True``, an event stream (a response whose
      ``content-type`` is ``text/event-stream``) still open when the drain begins is
      given 0.25 s to end by itself (its handler's signal is set then); if it has
      not, the middleware ends it cleanly: a last ``retry: <ms>`` field (``sse_retry``
      seconds: how long the client waits before it reconnects, with
      ``Last-Event-ID``, to another replica; ``None``: no field) and the end of the
      response, then it cancels the handler (what it sends from then on is dropped;
      nothing is logged).  Any other response still streaming at the end of
      the grace is cut by the server: the client sees it truncated, never complete.


    :attr:`in_flight` counts the HTTP requests and WebSocket sessions being handled;
    :attr:`cancelled` counts those cut short by cancellation (the server's drain
    timeout, a hard stop), a handler that caught the cancellation and returned
    included (on asyncio from Python 3.13 on: see the semantics page);
    :attr:`websockets_closed` counts the WebSocket sessions the library
    closed that then ended by themselves; :attr:`streams_ended` counts the event
    streams the middleware ended at the drain (not cut: the client got a complete
    stream).  All are plain counters.

    :raises ValueError: for a ``websocket_close_code`` an endpoint may not send (valid:
        1000-1003, 1007-1014, 3000-4999), or a negative or infinite ``sse_retry``
    :raises TypeError: for a ``websocket_close_code`` that is not an ``int``, or an
        ``sse_retry`` that is not a number or ``None``

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
       A request's signal and disconnect watching are made only when a handler asks;
       WebSocket sessions have a signal too; ``websocket_close_code``, and the open
       WebSocket sessions closed by the library when the drain begins; event
       streams ended at the drain (``sse_retry``).
    """

    __slots__ = (
        "_closing_websockets",
        "_idle",
        "_sessions",
        "_sessions_idle",
        "_trio",
        "app",
        "cancelled",
        "close_connections",
        "in_flight",
        "path",
        "readiness",
        "request_signals",
        "sse_retry",
        "streams_ended",
        "websocket_close_code",
        "websockets_closed",
    )

    def __init__(
        self,
        app: ASGIApp,
        readiness: Readiness,
        *,
        path: str | None = "/readyz",
        request_signals: bool = True,
        websocket_close_code: int = 1001,
        sse_retry: float | None = 1.0,
    ) -> None:
        if not callable(app):
            raise TypeError(f"`app` must be an ASGI application, got {app!r}")
        if not isinstance(readiness, Readiness):
            raise TypeError(f"`readiness` must be a Readiness, got {readiness!r}")
        if path is not None and (not isinstance(path, str) or not path.startswith("/")):
            raise ValueError(f"`path` must be a URL path starting with '/', or None; got {path!r}")
        self.app = app
        self.readiness = readiness
        self.path = path
        self.request_signals = bool(request_signals)
        #: add ``Connection: close`` to HTTP/1 responses from the stop on; the server
        #: members and GracefulApp set it to ``drain_delay > 0``: without a drain delay
        #: nothing takes the server out of rotation, and a client told to reconnect
        #: would only reach the same listener as it closes (more failed requests than
        #: the plain server's own shutdown, measured by benchmarks/one_host.py)
        self.close_connections = True
        #: seconds of the ``retry:`` field that ends an event stream at the drain
        #: (``None``: the stream ends without one)
        self.sse_retry = check_sse_retry(sse_retry)
        #: HTTP requests and WebSocket sessions being handled now
        self.in_flight = 0
        #: those that ended by cancellation (cut short by a drain timeout)
        self.cancelled = 0
        #: the close code the library sends to the WebSocket sessions still open when
        #: the drain begins
        self.websocket_close_code = check_close_code(websocket_close_code)
        #: WebSocket sessions closed by the library that then ended (not cut)
        self.websockets_closed = 0
        #: event streams ended by the middleware at the drain (complete, not cut)
        self.streams_ended = 0
        self._idle: anyio.Event | None = None  # set when in_flight drops to 0
        self._trio: bool | None = None  # the backend, known from the first request on
        self._sessions: set[_WebSocketSession] = set()  # being handled now
        self._sessions_idle: anyio.Event | None = None  # set when _sessions empties
        self._closing_websockets = False  # the library closes sessions from now on

    async def wait_idle(self) -> None:
        """Return once nothing is in flight (the requests cancelled have unwound)."""
        while self.in_flight:
            idle = self._idle = anyio.Event()
            await idle.wait()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # the request path, kept flat: each coroutine frame and Python-level call here
        # costs every request (benchmarks/bench_middleware.py measures it)
        kind = scope["type"]
        if kind != "http":
            if kind == "websocket":
                await self._websocket(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        path = self.path
        if path is not None and scope.get("path") == path and scope.get("method") in _PROBE:
            await self._answer_probe(scope, self._closing_sender(scope, send))
            return
        # from the stop on: clients move on; without that (no balancer), on trio, the
        # responses that begin from the stop on, whenever their request came (see
        # _closing_sender)
        if self.readiness._state != "ready":
            send = self._closing_sender(scope, send)
        elif not self.close_connections:
            on_trio = self._trio
            if on_trio is None:
                on_trio = self._on_trio()
            if on_trio:
                send = self._closing_sender(scope, send)
        self.in_flight += 1
        exchange: _Exchange | None = None
        try:
            if not self.request_signals:
                await self.app(scope, receive, send)
                # (no call on asyncio before 3.13, where a swallowed cut leaves no
                # evidence: readiness and the in-flight count stay all this path costs)
                on_trio = self._trio
                if on_trio is None:
                    on_trio = self._on_trio()
                if (_SWALLOWED_EVIDENCE or on_trio) and self._swallowed_cut():
                    self.cancelled += 1
                return
            outer = scope.get(SCOPE_KEY)
            exchange = _Exchange(
                self.readiness._draining if outer is None else self._linked_drain(outer),
                receive,
                send,
            )
            # in place, as servers make a scope per request (and as Starlette does):
            # a copy per request would cost more than all the rest
            scope[SCOPE_KEY] = exchange
            # run the app in a way the middleware can stop it (an event stream it ends
            # at the drain): on asyncio, the request's task itself (a native cancel():
            # no cancel scope and no extra coroutine on the request path)
            on_trio = self._trio
            if on_trio is None:
                on_trio = self._trio = _backend() == "trio"
            if on_trio:
                await self._run_on_trio(scope, exchange)
                return
            # no local for the task: a frame that holds its own task, in the traceback
            # of a cancellation, is a reference cycle that keeps the request's task
            # alive (the exchange lets go of it in close(), before anything propagates)
            exchange._stopper = (
                _tasks_by_loop.get(_running_loop()) if _current_task is None else _current_task()
            )
            try:
                await self.app(scope, exchange.receive, exchange.send)
            except _AsyncioCancelled:
                end = exchange._stream_end
                if end is None or not end.ending or _take_back(exchange._stopper, end):
                    raise  # not ours, or cancelled by someone else too
            else:
                end = exchange._stream_end
                if end is None or not end.ending:
                    if _SWALLOWED_EVIDENCE and _still_cancelled(exchange._stopper):
                        # the handler swallowed the cut
                        self.cancelled += 1  # pragma: no cover - Python 3.13+
                    return
                # the handler swallowed our cancellation; the server's cut too, if
                # someone else cancelled it as well: then it was cut, not ended
                if _take_back(exchange._stopper, end):
                    self.cancelled += 1
                    return
            await self._end_stream(end)
        except BaseException as exc:
            if isinstance(exc, anyio.get_cancelled_exc_class()) or _raised_while_cut(exc):
                self.cancelled += 1
            raise
        finally:
            if exchange is not None:
                # exchange.close(), inline for the common case (no watch, no stream end)
                exchange._raw_receive = _over_receive
                exchange._raw_send = _over_send
                exchange._stopper = None
                if exchange._watch is not None or exchange._stream_end is not None:
                    exchange.close()
            self.in_flight -= 1
            if not self.in_flight and self._idle is not None:
                self._idle.set()

    def _on_trio(self) -> bool:
        on_trio = self._trio
        if on_trio is None:
            on_trio = self._trio = _backend() == "trio"
        return on_trio

    def _swallowed_cut(self) -> bool:
        """The handler returned normally: whether it was cut all the same (it caught
        the cancellation of the server's drain timeout, or of a hard stop, and
        returned).  A cut is a fact, however the handler unwound."""
        if self._on_trio():
            return _trio_cancelled()
        return _SWALLOWED_EVIDENCE and _still_cancelled(
            _tasks_by_loop.get(_running_loop()) if _current_task is None else _current_task()
        )

    def _drain_signal(self, scope: Scope) -> StopSignal:
        """What sets a request's signal at the drain: this readiness's, and also the
        one of a middleware (or GracefulApp) that serves this one, if any: a handler
        behind two hears either drain."""
        outer = scope.get(SCOPE_KEY)
        if outer is None:
            return self.readiness._draining
        return self._linked_drain(outer)

    def _linked_drain(self, outer: Any) -> StopSignal:
        """This readiness's drain signal linked to that of ``outer``: what an outer
        middleware (or GracefulApp) put in the scope."""
        other = outer._draining if type(outer) is _Exchange else outer
        return StopSignal.linked(self.readiness._draining, other)

    async def _websocket(
        self, scope: Scope, receive: Receive, send: Send, signal: StopSignal | None = None
    ) -> None:
        """Serve one WebSocket session: counted in :attr:`in_flight`, closed by the
        library when the drain begins, cut at its end (:meth:`close_websockets`).

        :param signal: with ``request_signals=False``, a stop signal to put in the
            scope all the same (:class:`stopscope.asgi.GracefulApp` gives one)
        """
        session = _WebSocketSession(self, receive, send)
        self._sessions.add(session)
        self.in_flight += 1
        exchange: _Exchange | None = None
        cut = False
        clean = True
        try:
            # the library's own cut (see close_websockets): the handler unwinds, and the
            # server sees the session end as it should, without an error to log
            with session.cut_scope:
                try:
                    if self.request_signals:
                        exchange = _Exchange(
                            self._drain_signal(scope), session.receive, session.send
                        )
                        scope[SCOPE_KEY] = exchange
                        await self.app(scope, exchange.receive, exchange.send)
                    else:
                        if signal is not None:
                            scope = {**scope, SCOPE_KEY: signal}
                        await self.app(scope, session.receive, session.send)
                except Exception as exc:
                    if not session.caused(exc):
                        raise
                    # an error the library's close caused: the session is over, cleanly
            # cut if the library cancelled the handler while it ran, or the server (its
            # drain timeout, a hard stop), however it then unwound (a cancellation it
            # swallowed included: it did not end by itself)
            cut = session.cut_scope.cancel_called or self._swallowed_cut()
            if not cut:
                # the close frame goes out before the server hears that the session
                # ended (hypercorn would close the connection first)
                await session.close_sent()
        except BaseException as exc:
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                cut = True  # the server's cut
            else:
                clean = False  # the handler's own error: the server reports it
                # ...raised as it unwound from a cut (the library's, the server's): cut
                # all the same
                cut = session.cut_scope.cancel_called or _raised_while_cut(exc)
            raise
        finally:
            if exchange is not None:
                exchange.close()
            session.release()
            if cut:
                self.cancelled += 1
            elif clean and session.closed_by_library:
                self.websockets_closed += 1
            self._sessions.discard(session)
            if not self._sessions and self._sessions_idle is not None:
                self._sessions_idle.set()
            self.in_flight -= 1
            if not self.in_flight and self._idle is not None:
                self._idle.set()

    async def close_websockets(self, limit: float | None) -> int:
        """Close the open WebSocket sessions, the library's way; call it once the drain
        began (:meth:`Readiness.mark_draining` set the sessions' signals).

        Waits up to 0.2 s (at most half of ``limit``) for the handlers to close their
        sessions themselves, then
        sends a close frame with :attr:`websocket_close_code` to each session still
        open (a session accepted later gets it right after its accept), then waits for
        the sessions to end.  After ``limit`` seconds (``None``: no limit) it cuts the
        sessions still running (they count in :attr:`cancelled`) and waits a moment
        for them to unwind.  Returns the number of close frames sent.
        """
        self._closing_websockets = True
        if not self._sessions:
            return 0
        sent = 0
        # the handlers' window leaves half the time before the cut, at least, for the
        # close: with little budget left a session that would end at the close frame
        # is closed, not cut
        window = WEBSOCKET_CLOSE_WINDOW if limit is None else min(WEBSOCKET_CLOSE_WINDOW, limit / 2)
        with anyio.move_on_after(limit):
            with anyio.move_on_after(window):
                await self._wait_sessions()
            code = self.websocket_close_code
            sessions = [session for session in self._sessions if session.open]
            sent = len(sessions)
            async with anyio.create_task_group() as tg:
                for session in sessions:
                    tg.start_soon(session.close, code)
            await self._wait_sessions()
            return sent
        for session in self._sessions:
            session.cut_scope.cancel()
        with anyio.move_on_after(WEBSOCKET_UNWIND_WAIT):
            await self._wait_sessions()
        return sent

    async def _wait_sessions(self) -> None:
        while self._sessions:
            idle = self._sessions_idle = anyio.Event()
            await idle.wait()

    async def _run_on_trio(self, scope: Scope, exchange: _Exchange) -> None:
        """Run the app for one request on trio, in a cancel scope that only an event
        stream's end at the drain cancels."""
        import trio

        with trio.CancelScope() as stopper:
            exchange._stopper = stopper
            await self.app(scope, exchange.receive, exchange.send)
        # the app returned (or our own cancellation of an event stream was caught):
        # if an enclosing scope is cancelled too, the handler swallowed the server's
        # cut: it was cut, and the stream is not ended
        if _trio_cancelled():
            self.cancelled += 1
            return
        end = exchange._stream_end
        if end is not None and end.ending:
            await self._end_stream(end)

    async def _end_stream(self, end: _StreamEnd) -> None:
        """The handler of an event stream was stopped at the drain: end the response."""
        await end.finish(self.sse_retry)
        if end.ended:
            self.streams_ended += 1

    async def _answer_probe(self, scope: Scope, send: Send) -> None:
        state = self.readiness.state
        status = 200 if state == "ready" else 503
        body = b"ready\n" if status == 200 else f"not ready: {state}\n".encode()
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )

    def _closing_sender(self, scope: Scope, send: Send) -> Send:
        """``send``, adding ``Connection: close`` to an HTTP/1 response once stopping
        (with :attr:`close_connections` false: on trio only)."""
        if scope.get("http_version") not in ("1.0", "1.1"):
            return send  # HTTP/2 and 3 forbid the Connection header
        readiness = self.readiness
        close_connections = self.close_connections

        async def sender(message: Message) -> None:
            if message["type"] == "http.response.start" and (
                readiness._state in ("stopping", "draining")
                if close_connections
                # on trio, from the stop on all the same: a keep-alive request that
                # reaches hypercorn's trio worker as its shutdown begins leaves the
                # connection paused with nothing to resume it, and the server waits
                # out its graceful timeout (on asyncio, the close would only cost the
                # clients of hypercorn's command one more request: benchmarks/one_host.py)
                else readiness._state != "ready" and self._on_trio()
            ):
                headers = list(message.get("headers", ()))
                if not any(name.lower() == b"connection" for name, _ in headers):
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        return sender


#: seconds between the drain's start (every WebSocket handler's signal is set) and the
#: library's close frame to the sessions still open: the handlers' time to send their
#: own goodbye and close
WEBSOCKET_CLOSE_WINDOW: Final = 0.2
#: seconds the library waits for the WebSocket sessions it cut to unwind
WEBSOCKET_UNWIND_WAIT: Final = 1.0

#: what the close codes the library may send mean (RFC 6455 and the IANA registry)
_CLOSE_REASONS: Final = {1000: "normal closure", 1001: "going away", 1012: "service restart"}


def check_close_code(value: object, name: str = "websocket_close_code") -> int:
    """A close code an endpoint may send in a close frame (RFC 6455, section 7.4)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int WebSocket close code, got {value!r}")
    if not (1000 <= value <= 1003 or 1007 <= value <= 1014 or 3000 <= value <= 4999):
        raise ValueError(
            f"`{name}` must be a close code an endpoint may send (1000-1003, 1007-1014 or "
            f"3000-4999; 1004-1006 and 1015 are reserved), got {value}; 1001 (going away) "
            f"or 1012 (service restart) suit a stopping server"
        )
    return value


class _SessionClosed(OSError):
    """``send()`` after the library closed the WebSocket session (an ``OSError``, as
    the ASGI spec asks of a server for a closed connection)."""


@final
class _WebSocketSession:
    """One WebSocket session's ``receive`` and ``send`` under the middleware: whether
    it is open, and the library's close."""

    __slots__ = (
        "_error",
        "_middleware",
        "_raw_receive",
        "_raw_send",
        "_sending",
        "accepted",
        "closed_by_library",
        "code",
        "cut_scope",
        "ended",
        "told",
    )

    def __init__(self, middleware: ReadinessMiddleware, receive: Receive, send: Send) -> None:
        self._middleware: ReadinessMiddleware | None = middleware
        self._raw_receive = receive
        self._raw_send = send
        self.accepted = False  # the handler accepted the session
        self.ended = False  # closed by either side, or refused
        self.closed_by_library = False
        self.code = 0  # the library's close code, once it closed the session
        self.told = False  # receive() gave the handler the library's disconnect
        self.cut_scope = anyio.CancelScope()  # the handler runs in it (replaced then)
        self._error: _SessionClosed | None = None
        self._sending: anyio.Event | None = None  # set once the close frame was handed over

    @property
    def open(self) -> bool:
        return self.accepted and not self.ended

    async def receive(self) -> Message:
        if self.code:
            await self.close_sent()
            self.told = True
            return {"type": "websocket.disconnect", "code": self.code}
        message = await self._raw_receive()
        if message["type"] == "websocket.disconnect":
            self.ended = True
            return self._disconnect(message)
        return message

    def _disconnect(self, message: Message) -> Message:
        """The server's disconnect; with the library's code if it closed the session
        meanwhile (whatever the server says: hypercorn says 1000)."""
        if self.code:
            self.told = True
            return {"type": "websocket.disconnect", "code": self.code}
        return message

    async def send(self, message: Message) -> None:
        if self.closed_by_library:
            await self.close_sent()
            error = self._error = _SessionClosed(
                f"the WebSocket session was closed by the server's drain (code {self.code})"
            )
            raise error
        kind = message["type"]
        if kind == "websocket.accept":
            await self._raw_send(message)
            self.accepted = True
            middleware = self._middleware
            if middleware is not None and middleware._closing_websockets:
                await self.close(middleware.websocket_close_code)  # accepted too late
            return
        if kind == "websocket.close" or kind == "websocket.http.response.body":
            self.ended = True
        await self._raw_send(message)

    async def close(self, code: int) -> None:
        """The library's close frame (once; not if the session ended meanwhile)."""
        if not self.open or self.closed_by_library:
            return
        self.closed_by_library = True
        self.code = code
        sending = self._sending = anyio.Event()
        try:
            await self._raw_send(
                {"type": "websocket.close", "code": code, "reason": _CLOSE_REASONS.get(code, "")}
            )
        except Exception as exc:  # the client is gone: the server says so to receive()
            logger.debug("the WebSocket close frame was not sent: %r", exc)
        finally:
            sending.set()

    async def close_sent(self) -> None:
        """Return once the library's close frame (if any) was handed to the server."""
        sending = self._sending
        if sending is not None:
            await sending.wait()

    def caused(self, error: BaseException) -> bool:
        """Whether ``error`` comes from the library's close: the handler's send after
        it, an error raised from that (``raise ... from``), or a disconnect error that
        arose while handling it (an ``OSError``, or an error with a close ``code``, as
        Starlette's ``WebSocketDisconnect``); an error that carries the library's close
        code once ``receive()`` gave it (Starlette's ``WebSocketDisconnect`` again,
        from a ``receive_text()`` that got the disconnect); or a group of such errors
        (a handler's task group: a reader and a writer).  Any other error raised while
        handling the close is the handler's own (a bug in its cleanup): not absorbed.
        """
        if isinstance(error, BaseExceptionGroup):
            return all(self.caused(inner) for inner in error.exceptions)
        if self.told and getattr(error, "code", None) == self.code:
            return True
        mine = self._error
        if mine is None:
            return False
        seen: set[int] = set()
        current: BaseException | None = error
        while current is not None and id(current) not in seen:
            if current is mine:
                return True
            seen.add(id(current))
            if current.__cause__ is not None:
                current = current.__cause__
            elif isinstance(current, OSError) or isinstance(getattr(current, "code", None), int):
                current = current.__context__  # a disconnect error, raised while handling
            else:
                return False
        return False

    def release(self) -> None:
        self._middleware = None
        self._sending = None
        self._raw_receive = _over_receive
        self._raw_send = _over_send
        self._error = None


#: what a server sends to ``receive()`` when the client has gone
_DISCONNECT: Final = frozenset({"http.disconnect", "websocket.disconnect"})


@final
class _Exchange:
    """One request's (or WebSocket session's) ``receive`` and ``send`` as the app sees
    them; where :func:`request_signal` finds the request.

    Until a handler asks for the signal, both are thin pass-throughs that note two
    facts: whether the response is complete, and whether a disconnect was seen.
    """

    __slots__ = (
        "_complete",
        "_draining",
        "_gone",
        "_raw_receive",
        "_raw_send",
        "_reading",
        "_stopper",
        "_stream_end",
        "_watch",
    )

    def __init__(self, draining: StopSignal, receive: Receive, send: Send) -> None:
        self._draining = draining
        self._raw_receive = receive
        self._raw_send = send
        self._complete = False  # the response (or the WebSocket close) was sent
        self._gone = False  # a disconnect before the response was complete
        self._reading = 0  # the app is inside the server's receive() (this many calls)
        self._watch: _Watch | None = None
        #: what cancels the request's app: its asyncio task, or its trio cancel scope
        self._stopper: _Cancellable | None = None
        self._stream_end: _StreamEnd | None = None  # an event stream's end at the drain

    def send(self, message: Message) -> Awaitable[None]:
        # a plain function that hands back the server's own awaitable: no coroutine
        # of ours per message (the response counts as complete once it is handed over)
        kind = message["type"]
        if (kind == "http.response.body" and not message.get("more_body", False)) or (
            kind == "websocket.close"
        ):
            self._complete = True
        elif kind == "http.response.start":
            # inline and without a copy, as it runs for every response (ASGI header
            # names are lowercase; so is the media type, as every framework sends it)
            for name, value in message.get("headers", ()):
                if name == b"content-type":
                    if value.startswith(b"text/event-stream"):
                        self._stream_end = _StreamEnd(self)
                    break
        return self._raw_send(message)

    async def receive(self) -> Message:
        watch = self._watch
        if watch is not None and watch.pumping:
            message = await watch.receive()
        else:
            self._reading += 1
            try:
                message = await self._raw_receive()
            finally:
                self._reading -= 1
                watch = self._watch  # it may have begun while the app was reading
                if watch is not None and not self._reading:
                    watch.reader_left()
        if message["type"] in _DISCONNECT:
            self._disconnected()
        return message

    def close(self) -> None:
        """The request is over: stop the watch, and let go of the server's callables.

        They hold the server's request object, which holds the scope, which holds this
        exchange: a reference cycle per request, left to the garbage collector (its
        pauses showed as a doubled p99 latency), unless it is broken here.
        """
        self._raw_receive = _over_receive
        self._raw_send = _over_send
        self._stopper = None
        watch = self._watch
        if watch is not None:
            watch.close()
        end = self._stream_end
        if end is not None:
            end.close()

    def _disconnected(self) -> None:
        if self._complete or self._gone:
            return
        self._gone = True
        watch = self._watch
        if watch is not None:
            watch.signal.set(RequestStop.CLIENT_DISCONNECTED)

    def signal(self) -> StopSignal:
        """The request's stop signal: made, and the disconnect watched, on first call."""
        watch = self._watch
        if watch is None:
            watch = self._watch = _Watch(self)
            if self._gone:
                watch.signal.set(RequestStop.CLIENT_DISCONNECTED)
            elif not self._complete:
                watch.start()
        return watch.signal


def _raised_while_cut(error: BaseException) -> bool:
    """Whether ``error`` was raised as a cancellation unwound the handler (from its
    cleanup): the request was cut, and the error took the cancellation's place."""
    return isinstance(error.__context__, anyio.get_cancelled_exc_class())


def check_sse_retry(value: float | None) -> float | None:
    """``sse_retry``: seconds (finite, not negative), or ``None``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`sse_retry` must be a number of seconds or None, got {value!r}")
    value = _to_seconds(value)  # an int too large for a float: inf, refused below
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"`sse_retry` must be a finite, non-negative number of seconds, got {value!r}"
        )
    return value


#: whether an asyncio task's cancellation count is evidence of a swallowed cut: only
#: from Python 3.13 on.  3.10 keeps no count of a task's cancellations, and the
#: ``asyncio.TaskGroup`` of 3.11 and 3.12 leaves one behind when a child fails while
#: the group waits in ``__aexit__``: a handler that fanned out, caught the group's
#: error and answered in full would count as cut
_SWALLOWED_EVIDENCE: Final = sys.version_info >= (3, 13)


def _still_cancelled(task: Any) -> bool:  # pragma: no cover - with _SWALLOWED_EVIDENCE only
    """Whether an asyncio task that runs on was cancelled, its cancellation caught and
    not taken back (as an anyio cancel scope or ``asyncio.timeout()`` takes back their
    own): a handler swallowed a cut (``Task.cancelling()``)."""
    return task is not None and task.cancelling() > 0


#: trio's "is the running task in a cancelled scope?", once a request ran on trio
_trio_probe: Callable[[], bool] | None = None


def _trio_cancelled() -> bool:
    """Whether the running trio task is in a cancelled scope (a handler that returned
    normally swallowed the cut: trio would raise it again at its next checkpoint).
    The trio backend's probe: ``current_effective_deadline()`` walks the whole tree
    of cancel scopes, microseconds per request under a server."""
    global _trio_probe
    probe = _trio_probe
    if probe is None:
        from .._backends import current

        probe = _trio_probe = current().cancel_probe()
    return probe()


def _take_back(task: Any, end: _StreamEnd) -> bool:
    """Undo the middleware's ``cancel()`` of a request's task; whether the task is still
    being cancelled by someone else: more than before the middleware's own (a count the
    handler left behind earlier, as the ``asyncio.TaskGroup`` of Python 3.11 and 3.12
    does, is no cut).  Python 3.10 does not count cancellations: there, the
    middleware's is the only one it can know of."""
    uncancel = getattr(task, "uncancel", None)
    return uncancel is not None and uncancel() > end.before


@final
class _StreamEnd:
    """An event stream's end at the drain: a task that waits for the drain, gives the
    handler :data:`SSE_END_AFTER` seconds to end the response itself, and otherwise
    stops it (the middleware then sends the ``retry:`` field and the end).

    The task is the backend's own (as :class:`_Watch`'s pump), started with the stream
    and cancelled when the request is over.
    """

    __slots__ = ("_cancel", "_exchange", "_send", "before", "ended", "ending")

    def __init__(self, exchange: _Exchange) -> None:
        self._exchange: _Exchange | None = exchange
        self._send: Send | None = None  # the server's send, kept once the app's is cut off
        self._cancel: Callable[[], object] | None = None
        self.ending = False  # the handler is being stopped: the middleware ends the stream
        self.ended = False  # the middleware sent the end of the stream
        self.before = 0  # the asyncio task's cancellations pending before the end's own
        if _backend() == "trio":
            import trio

            cancel = trio.CancelScope()
            self._cancel = cancel.cancel

            async def watch() -> None:
                with cancel:
                    await self._watch()

            trio.lowlevel.spawn_system_task(watch, name="stopscope event stream end")
        else:
            import asyncio

            task = asyncio.get_running_loop().create_task(self._watch())
            self._cancel = task.cancel

    async def _watch(self) -> None:
        exchange = self._exchange
        if exchange is None:  # the request was over before this task ran (trio runs it
            return  # up to its first checkpoint even when cancelled before)
        await exchange._draining.wait()
        await anyio.sleep(SSE_END_AFTER)  # the handler's moment to end the stream itself
        # close() would have cancelled this task: the request is not over
        stopper = exchange._stopper
        assert stopper is not None
        if exchange._complete:
            return  # the handler ended the response itself (and still runs)
        self._cancel = None  # it returns now: nothing to cancel
        self.ending = True
        # from here on, what the handler sends goes nowhere: the stream is the middleware's
        self._send = exchange._raw_send
        exchange._raw_send = _dropped_send
        cancelling = getattr(stopper, "cancelling", None)  # an asyncio task's count
        if cancelling is not None:
            self.before = cancelling()
        stopper.cancel()

    async def finish(self, retry: float | None) -> None:
        """Send the last ``retry:`` field (if any) and the end of the response."""
        send = self._send
        assert send is not None
        body = b"" if retry is None else b"retry: %d\n\n" % round(retry * 1000)
        try:
            await send({"type": "http.response.body", "body": body, "more_body": False})
        except Exception as exc:  # the client left: nothing to end any more
            logger.debug("an event stream could not be ended (the client left?): %r", exc)
            return
        self.ended = True

    def close(self) -> None:
        """The request is over: stop the task (at once, or as soon as it starts)."""
        self._exchange = None
        self._send = None
        if self._cancel is not None:
            self._cancel()
            self._cancel = None


async def _dropped_send(message: Message) -> None:
    """What an event stream's handler sends once the middleware took the stream over."""


async def _over_receive() -> Message:
    return {"type": "http.disconnect"}  # what servers say once a request is over


async def _over_send(message: Message) -> None:
    raise RuntimeError("the request is over: its response can no longer be sent")


@final
class _Watch:
    """A request's stop signal and the task that hears its client disconnect."""

    __slots__ = (
        "_cancel",
        "_ended",
        "_exchange",
        "_failure",
        "_last",
        "_readable",
        "_reader_left",
        "_slot",
        "_writable",
        "pumping",
        "signal",
    )

    def __init__(self, exchange: _Exchange) -> None:
        self._exchange: _Exchange | None = exchange
        self.signal = exchange._draining.child()
        self.pumping = False  # the pump is the only reader of the server's receive()
        self._cancel: Callable[[], object] | None = None  # cancels the pump (and keeps it)
        self._failure: Exception | None = None
        self._last: Message = {"type": "http.disconnect"}  # said again once the pump ended
        self._reader_left: anyio.Event | None = None
        # one message of slack: the pump hands over the request's last body chunk and
        # goes back to receive() to hear a disconnect, even if the app never reads the
        # body; a longer body still waits for the app (the server's flow control holds).
        # The message stays in the slot until a receive() that resumed takes it: a
        # receive() cancelled after the hand-over loses nothing (as the server's own)
        self._slot: deque[Message] = deque()
        self._ended = False  # the pump will hand over nothing more
        self._readable: anyio.Event | None = None  # a message is in the slot (or ended)
        self._writable: anyio.Event | None = None  # the slot was emptied (or closed)

    def start(self) -> None:
        """Run the pump beside the request (it ends with the request: :meth:`close`).

        A detached task of the backend's own (a trio system task, an asyncio task),
        cancelled by the backend's own means: anyio's cancel scope would cost more
        than the rest of the watch.
        """
        if _backend() == "trio":
            import trio

            cancel = trio.CancelScope()
            self._cancel = cancel.cancel

            async def pump() -> None:
                with cancel:
                    await self._pump()

            trio.lowlevel.spawn_system_task(pump, name="stopscope request watch")
        else:
            import asyncio

            task = asyncio.get_running_loop().create_task(self._pump())
            self._cancel = task.cancel

    def close(self) -> None:
        """The request is over: stop the pump (at once, or as soon as it starts)."""
        if self._cancel is not None:
            self._cancel()
            self._cancel = None
        self._exchange = None  # no cycle left for the garbage collector
        self._slot.clear()  # the request is over: receive() says so, as the server does
        self._end()
        writable = self._writable
        if writable is not None:
            writable.set()

    def _end(self) -> None:
        self._ended = True
        readable = self._readable
        if readable is not None:
            readable.set()

    def reader_left(self) -> None:
        event = self._reader_left
        if event is not None:
            event.set()

    async def _hand_over(self, message: Message) -> bool:
        """Put ``message`` in the slot once it is free; ``False`` if the request is over."""
        while self._slot and self._exchange is not None:
            writable = self._writable = anyio.Event()
            await writable.wait()
        if self._exchange is None:
            return False
        self._slot.append(message)
        readable = self._readable
        if readable is not None:
            readable.set()
        return True

    async def _pump(self) -> None:
        exchange = self._exchange
        if exchange is None:  # the request ended before the pump ran
            return
        try:
            while exchange._reading:  # the app is reading: the pump waits its turn
                event = self._reader_left = anyio.Event()
                await event.wait()
            self.pumping = True  # from here on, the app reads from the pump
            while True:
                message = await exchange._raw_receive()
                if message["type"] in _DISCONNECT:
                    self._last = message
                    exchange._disconnected()
                    await self._hand_over(message)
                    return
                if not await self._hand_over(message):
                    return  # the request is over
        except Exception as exc:  # the app gets it from its own receive()
            self._failure = exc
        finally:
            self._end()

    async def receive(self) -> Message:
        slot = self._slot
        while not slot:
            if self._ended:
                if self._failure is not None:
                    raise self._failure from None
                return self._last
            readable = self._readable
            if readable is None or readable.is_set():
                readable = self._readable = anyio.Event()
            await readable.wait()
        message = slot.popleft()  # taken only once resumed: a cancelled wait loses nothing
        writable = self._writable
        if writable is not None:
            writable.set()
        return message


def request_signal(request: object) -> StopSignal:
    """The stop signal of an HTTP request or WebSocket session served through
    :class:`ReadinessMiddleware` (the server members use it).

    ::

        async def export(request: Request) -> Response:
            stop = request_signal(request)
            async for chunk in produce(stop):    # ends when the client leaves or the
                ...                              # server drains

    It is set when the client disconnects before the response is complete, or when
    the server begins its drain; its reason is a :class:`RequestStop`.  The first call
    for a request makes the signal and starts watching for the client's disconnect;
    later calls return the same signal.  Call it from the request's task (or a task or
    worker thread of the request's handler).

    :param request: the ASGI scope, or an object with a ``scope`` attribute (a
        Starlette or FastAPI ``Request`` or ``WebSocket``)
    :raises RuntimeError: if the request did not go through the middleware with
        ``request_signals=True``
    """
    scope = getattr(request, "scope", request)
    try:
        found = scope[SCOPE_KEY]  # type: ignore[index]
    except (KeyError, TypeError):
        raise RuntimeError(
            "this request has no stop signal: serve the app through start_uvicorn(), "
            "start_hypercorn() or Readiness.asgi(app) with request_signals=True"
        ) from None
    if type(found) is _Exchange:
        watch = found._watch
        if watch is not None:
            return watch.signal
        try:
            _backend()
        except RuntimeError:  # a worker thread (a sync endpoint): make it on the loop
            return anyio.from_thread.run_sync(found.signal)
        return found.signal()
    if not isinstance(found, StopSignal):
        raise RuntimeError(f"the ASGI scope's {SCOPE_KEY!r} is not a StopSignal: {found!r}")
    return found
