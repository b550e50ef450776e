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
from typing import Any, Final, Literal, final

import anyio

from .._signal import StopSignal, _backend, logger

#: ``asyncio.current_task()``: the C function where there is one (Python 3.12+; the
#: public name is a Python wrapper around it), as it runs for every request
_current_task: Callable[[], Any] = (
    getattr(sys.modules.get("_asyncio"), "current_task", None) or asyncio.current_task
)

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
        sse_retry: float | None = 1.0,
    ) -> ReadinessMiddleware:
        """Wrap an ASGI application: see :class:`ReadinessMiddleware`."""
        return ReadinessMiddleware(
            app, self, path=path, request_signals=request_signals, sse_retry=sse_retry
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
      reusing one that the server will close when it stops listening.
    * With ``request_signals=True``, each HTTP request and WebSocket session can have a
      :class:`StopSignal` (:func:`request_signal`), set when the client disconnects
      before the response is complete (reason :attr:`RequestStop.CLIENT_DISCONNECTED`)
      or when the server begins its drain (:attr:`RequestStop.SERVER_DRAINING`).  It
      costs nothing until a handler asks for it: the signal, and the task that reads
      ``receive()`` on the application's behalf to hear a disconnect (one message at a
      time, so the server's flow control still works), are made on that first call.

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
    timeout); :attr:`streams_ended` counts the event streams the middleware ended at
    the drain (not cut: the client got a complete stream).  All are plain counters.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
       A request's signal and disconnect watching are made only when a handler asks;
       WebSocket sessions have a signal too; event streams are ended at the drain
       (``sse_retry``).
    """

    __slots__ = (
        "_idle",
        "_trio",
        "app",
        "cancelled",
        "in_flight",
        "path",
        "readiness",
        "request_signals",
        "sse_retry",
        "streams_ended",
    )

    def __init__(
        self,
        app: ASGIApp,
        readiness: Readiness,
        *,
        path: str | None = "/readyz",
        request_signals: bool = True,
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
        #: seconds of the ``retry:`` field that ends an event stream at the drain
        #: (``None``: the stream ends without one)
        self.sse_retry = check_sse_retry(sse_retry)
        #: HTTP requests and WebSocket sessions being handled now
        self.in_flight = 0
        #: those that ended by cancellation (cut short by a drain timeout)
        self.cancelled = 0
        #: event streams ended by the middleware at the drain (complete, not cut)
        self.streams_ended = 0
        self._idle: anyio.Event | None = None  # set when in_flight drops to 0
        self._trio: bool | None = None  # the backend, known from the first request on

    async def wait_idle(self) -> None:
        """Return once nothing is in flight (the requests cancelled have unwound)."""
        while self.in_flight:
            idle = self._idle = anyio.Event()
            await idle.wait()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if (
                scope.get("path") == self.path
                and self.path is not None
                and scope.get("method") in ("GET", "HEAD")
            ):
                await self._answer_probe(scope, self._closing_sender(scope, send))
                return
            if self.readiness._state != "ready":  # from the stop on: clients move on
                send = self._closing_sender(scope, send)
        elif kind != "websocket":
            await self.app(scope, receive, send)
            return
        self.in_flight += 1
        exchange: _Exchange | None = None
        try:
            if self.request_signals:
                exchange = _Exchange(self.readiness._draining, receive, send)
                # in place, as servers make a scope per request (and as Starlette does):
                # a copy per request would cost more than all the rest
                scope[SCOPE_KEY] = exchange
                await self._run_stoppable(scope, exchange)
            else:
                await self.app(scope, receive, send)
        except BaseException as exc:
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                self.cancelled += 1
            raise
        finally:
            if exchange is not None:
                exchange.close()
            self.in_flight -= 1
            if not self.in_flight and self._idle is not None:
                self._idle.set()

    async def _run_stoppable(self, scope: Scope, exchange: _Exchange) -> None:
        """Run the app for one request in a way the middleware can stop it (an event
        stream it ends at the drain): a trio cancel scope, or the asyncio task itself
        (a native ``cancel()``: no anyio cancel scope on the request path)."""
        on_trio = self._trio
        if on_trio is None:
            on_trio = self._trio = _backend() == "trio"
        if on_trio:
            import trio

            with trio.CancelScope() as stopper:  # only an event stream's end cancels it
                exchange._stopper = stopper.cancel
                await self.app(scope, exchange.receive, exchange.send)
            end = exchange._stream_end
            if end is not None and end.ending:
                await self._end_stream(end)
            return
        # no local for the task: a frame that holds its own task, in the traceback of a
        # cancellation, is a reference cycle that keeps the request's task alive
        exchange._stopper = _current_task().cancel
        try:
            await self.app(scope, exchange.receive, exchange.send)
        except _AsyncioCancelled:
            end = exchange._stream_end
            if end is None or not end.ending:
                raise
            if _take_back(_current_task()):  # cancelled by someone else too
                raise
        else:
            end = exchange._stream_end
            if end is None or not end.ending:
                return
            _take_back(_current_task())  # the handler swallowed our cancellation
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
        """``send``, adding ``Connection: close`` to an HTTP/1 response once stopping."""
        if scope.get("http_version") not in ("1.0", "1.1"):
            return send  # HTTP/2 and 3 forbid the Connection header
        readiness = self.readiness

        async def sender(message: Message) -> None:
            if message["type"] == "http.response.start" and readiness._state in (
                "stopping",
                "draining",
            ):
                headers = list(message.get("headers", ()))
                if not any(name.lower() == b"connection" for name, _ in headers):
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        return sender


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
        self._stopper: Callable[[], object] | None = None  # cancels the request's app
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


def check_sse_retry(value: float | None) -> float | None:
    """``sse_retry``: seconds (finite, not negative), or ``None``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`sse_retry` must be a number of seconds or None, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"`sse_retry` must be a finite, non-negative number of seconds, got {value!r}"
        )
    return value


def _take_back(task: Any) -> bool:
    """Undo the middleware's ``cancel()`` of a request's task; whether the task is still
    being cancelled (by someone else).  Python 3.10 does not count cancellations: there,
    the middleware's is the only one it can know of."""
    uncancel = getattr(task, "uncancel", None)
    return bool(uncancel and uncancel())


@final
class _StreamEnd:
    """An event stream's end at the drain: a task that waits for the drain, gives the
    handler :data:`SSE_END_AFTER` seconds to end the response itself, and otherwise
    stops it (the middleware then sends the ``retry:`` field and the end).

    The task is the backend's own (as :class:`_Watch`'s pump), started with the stream
    and cancelled when the request is over.
    """

    __slots__ = ("_cancel", "_exchange", "_send", "ended", "ending")

    def __init__(self, exchange: _Exchange) -> None:
        self._exchange: _Exchange | None = exchange
        self._send: Send | None = None  # the server's send, kept once the app's is cut off
        self._cancel: Callable[[], object] | None = None
        self.ending = False  # the handler is being stopped: the middleware ends the stream
        self.ended = False  # the middleware sent the end of the stream
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
        stopper()

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
