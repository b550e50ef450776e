"""Readiness for load balancers, and a stop signal per request (ASGI middleware)."""

from __future__ import annotations

import enum
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final, Literal, final

import anyio

from .._signal import StopSignal

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
        self, app: ASGIApp, path: str | None = "/readyz", *, request_signals: bool = True
    ) -> ReadinessMiddleware:
        """Wrap an ASGI application: see :class:`ReadinessMiddleware`."""
        return ReadinessMiddleware(app, self, path=path, request_signals=request_signals)

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
    * From the stop request on, HTTP/1 responses carry ``Connection: close``: a client
      with a keep-alive connection opens a new one for its next request, which the
      load balancer sends to another replica, instead of reusing one that the server
      will close when it stops listening.
    * With ``request_signals=True``, each HTTP request gets a :class:`StopSignal`
      (:func:`request_signal`) set when the client disconnects before the response is
      complete (reason :attr:`RequestStop.CLIENT_DISCONNECTED`) or when the server
      begins its drain (:attr:`RequestStop.SERVER_DRAINING`).  It costs a task per
      request, which reads ``receive()`` on the application's behalf (one message at a
      time, so the server's flow control still works).

    :attr:`in_flight` counts the HTTP requests being handled; :attr:`cancelled` counts
    those cut short by cancellation (the server's drain timeout).

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_idle",
        "app",
        "cancelled",
        "in_flight",
        "path",
        "readiness",
        "request_signals",
    )

    def __init__(
        self,
        app: ASGIApp,
        readiness: Readiness,
        *,
        path: str | None = "/readyz",
        request_signals: bool = True,
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
        #: HTTP requests being handled now
        self.in_flight = 0
        #: HTTP requests that ended by cancellation (cut short by a drain timeout)
        self.cancelled = 0
        self._idle: anyio.Event | None = None  # set when in_flight drops to 0

    async def wait_idle(self) -> None:
        """Return once no request is in flight (those cancelled have unwound)."""
        while self.in_flight:
            idle = self._idle = anyio.Event()
            await idle.wait()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if (
            self.path is not None
            and scope.get("path") == self.path
            and scope.get("method") in ("GET", "HEAD")
        ):
            await self._answer_probe(scope, self._sender(scope, send))
            return
        self.in_flight += 1
        try:
            if self.request_signals:
                await self._call_with_signal(scope, receive, send)
            else:
                await self.app(scope, receive, self._sender(scope, send))
        except BaseException as exc:
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
            if not self.in_flight and self._idle is not None:
                self._idle.set()

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

    def _sender(self, scope: Scope, send: Send) -> Send:
        if scope.get("http_version") not in ("1.0", "1.1"):
            return send  # HTTP/2 and 3 forbid the Connection header

        async def sender(message: Message) -> None:
            if message["type"] == "http.response.start" and self.readiness.state in (
                "stopping",
                "draining",
            ):
                headers = list(message.get("headers", ()))
                if not any(name.lower() == b"connection" for name, _ in headers):
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        return sender

    async def _call_with_signal(self, scope: Scope, receive: Receive, send: Send) -> None:
        signal = self.readiness.draining.child()
        scope = {**scope, SCOPE_KEY: signal}
        inner_send = self._sender(scope, send)
        complete = False
        failure: list[Exception] = []
        # one message of slack: the pump hands over the request's last body chunk and
        # goes back to receive() to hear a disconnect, even if the app never reads the
        # body; a longer body still waits for the app (the server's flow control holds)
        to_app, from_pump = anyio.create_memory_object_stream[Message](1)

        async def tracking_send(message: Message) -> None:
            nonlocal complete
            await inner_send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True

        async def pump() -> None:
            async with to_app:
                while True:
                    try:
                        message = await receive()
                    except Exception as exc:  # the app gets it from its own receive()
                        failure.append(exc)
                        return
                    if message["type"] == "http.disconnect":
                        if not complete:
                            signal.set(RequestStop.CLIENT_DISCONNECTED)
                        await to_app.send(message)
                        return
                    await to_app.send(message)

        async def app_receive() -> Message:
            try:
                return await from_pump.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                if failure:
                    raise failure[0] from None
                return {"type": "http.disconnect"}

        error: Exception | None = None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(pump)
                try:
                    await self.app(scope, app_receive, tracking_send)
                except Exception as exc:  # raised as it is, not in a group
                    error = exc
                finally:
                    tg.cancel_scope.cancel()
        finally:
            to_app.close()  # the pump may not have run at all
            from_pump.close()
        if error is not None:
            try:
                raise error
            finally:
                error = None


def request_signal(request: object) -> StopSignal:
    """The stop signal of an HTTP request served through :class:`ReadinessMiddleware`.

    ::

        async def export(request: Request) -> Response:
            stop = request_signal(request)
            async for chunk in produce(stop):    # ends when the client leaves or the
                ...                              # server drains

    It is set when the client disconnects before the response is complete, or when
    the server begins its drain; its reason is a :class:`RequestStop`.

    :param request: the ASGI scope, or an object with a ``scope`` attribute (a
        Starlette or FastAPI ``Request``)
    :raises RuntimeError: if the request did not go through the middleware with
        ``request_signals=True``
    """
    scope = getattr(request, "scope", request)
    try:
        signal = scope[SCOPE_KEY]  # type: ignore[index]
    except (KeyError, TypeError):
        raise RuntimeError(
            "this request has no stop signal: serve the app through start_uvicorn(), "
            "start_hypercorn() or Readiness.asgi(app) with request_signals=True"
        ) from None
    if not isinstance(signal, StopSignal):
        raise RuntimeError(f"the ASGI scope's {SCOPE_KEY!r} is not a StopSignal: {signal!r}")
    return signal
