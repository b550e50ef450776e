"""uvicorn as a member of a TaskScope (asyncio and uvloop)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from .._scope import TaskScope
from .._signal import StopSignal, _backend, logger
from ._drain import (
    CUT_UNWIND,
    Drain,
    ServerInfo,
    check_drain_delay,
    check_port,
    check_scope,
    refuse_options,
)
from ._readiness import ASGIApp, Readiness

if TYPE_CHECKING:
    import uvicorn

__all__ = ["start_uvicorn"]

#: seconds uvicorn spends around its own timeout: up to 0.1 s to see ``should_exit``,
#: 0.1 s of sleep after it closes the listener, 0.1 s polls while it waits
_OVERHEAD = 0.3

_REFUSED = {
    "host": "pass it as start_uvicorn(host=...)",
    "port": "pass it as start_uvicorn(port=...)",
    "timeout_graceful_shutdown": (
        "the member derives it from the scope's grace (less the drain delay); set "
        "`grace` on the scope or on start_uvicorn()"
    ),
    "fd": "the member binds the listener itself",
    "uds": "the member binds a TCP listener",
}


def _import_uvicorn() -> Any:
    try:
        import uvicorn
    except ImportError:
        raise RuntimeError(
            "start_uvicorn() needs uvicorn: pip install 'stopscope[uvicorn]'"
        ) from None
    return uvicorn


async def start_uvicorn(
    scope: TaskScope,
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    drain_delay: float = 0.0,
    readiness_path: str | None = "/readyz",
    request_signals: bool = True,
    websocket_close_code: int = 1001,
    sse_retry: float | None = 1.0,
    readiness: Readiness | None = None,
    signal: StopSignal | None = None,
    grace: float | None = None,
    name: str = "uvicorn",
    **options: Any,
) -> ServerInfo:
    """Start a uvicorn server as a member of ``scope``; return once it accepts connections.

    ::

        async with TaskScope(signal=signal, grace=20) as scope:
            server = await start_uvicorn(scope, app, port=8000, drain_delay=5)
            print(f"listening on {server.url}")
            await signal.wait()

    On the stop request its readiness turns "not ready" at once (``readiness_path``
    answers 503); it keeps serving for ``drain_delay`` seconds (the time load
    balancers take to stop sending traffic); then it closes its listener (new
    connections are refused), lets in-flight requests finish within what is left of
    the grace (less a reserve of 10 %, at most 1 s, for the app's lifespan shutdown),
    cancels those still running, and runs the lifespan shutdown.  Requests cut short
    are logged and make the member ``CANCELLED`` in the report.

    Open WebSocket sessions are closed when the drain begins: each handler's
    :func:`request_signal` is set, and the sessions still open 0.2 s later get a
    close frame with ``websocket_close_code`` from the library.  uvicorn closes the
    WebSocket connections itself (code 1012, at once) when its own shutdown begins:
    this member closes the listener itself and lets uvicorn's shutdown begin only once
    the sessions have ended (or the grace is spent).

    uvicorn never touches the process's signal handlers: :func:`stopscope.run` (or
    :func:`stopscope.stop_on_signals`) owns SIGINT and SIGTERM, and the stop reaches
    uvicorn through the scope's signal.  uvicorn runs on asyncio and uvloop only.

    :param scope: the scope the server is a member of; its grace is the budget
    :param app: the ASGI application (wrapped in :class:`ReadinessMiddleware`)
    :param host: the address to listen on
    :param port: the port (0: a free port; :attr:`ServerInfo.port` tells which)
    :param drain_delay: seconds to keep serving, not ready, after the stop request;
        must be shorter than the grace
    :param readiness_path: the readiness probe's path; ``None``: no probe route
    :param request_signals: let handlers ask for their request's stop signal
        (:func:`request_signal`); nothing is made for a request until its handler asks
    :param websocket_close_code: the close code the library sends, when the drain
        begins, to each WebSocket session its handler has not closed within
        0.2 s of its signal: 1001
        ("going away", the default) or 1012 ("service restart": come back soon), or
        any code an endpoint may send (1000-1003, 1007-1014, 3000-4999)
    :param sse_retry: an event stream (``text/event-stream``) still open when the
        listener closes is ended by the member (see :class:`ReadinessMiddleware`) with
        a last ``retry:`` field of this many seconds (the client's wait before it
        reconnects); ``None``: no ``retry:`` field.  Needs ``request_signals``
    :param readiness: a :class:`Readiness` to drive (default: a new one)
    :param signal: the signal that stops the server (default: the signal of the
        scope's current stage, or the scope's own)
    :param grace: a shorter grace for this member
    :param name: the member's name in the report and logs
    :param options: passed to :class:`uvicorn.Config` (``log_level``,
        ``access_log``, ``limit_concurrency``, ...)
    :raises RuntimeError: on trio, if uvicorn is not installed, or if the server could
        not start (the address is in use, the app's lifespan startup failed)
    """
    scope = check_scope(scope, "start_uvicorn")
    uvicorn = _import_uvicorn()
    if _backend() != "asyncio":
        raise RuntimeError(
            "uvicorn runs on asyncio (and uvloop) only; on trio, use start_hypercorn()"
        )
    refuse_options(options, _REFUSED, "uvicorn")
    port = check_port(port)
    delay = check_drain_delay(drain_delay)
    if signal is None:
        signal = scope._member_signal
    elif not isinstance(signal, StopSignal):
        raise TypeError(f"`signal` must be a StopSignal or None, got {signal!r}")
    readiness = Readiness() if readiness is None else readiness
    drain = Drain(
        scope, signal, readiness, delay, grace, name if name == "uvicorn" else f"{name} (uvicorn)"
    )
    wrapped = drain.wrap(app, readiness_path, request_signals, websocket_close_code, sse_retry)
    drain.quiet_logger = "uvicorn.error"
    config = uvicorn.Config(wrapped, host=host, port=port, **options)
    info: ServerInfo = await scope.start(_serve, config, drain, name, name=name, grace=grace)
    return info


def _server_class() -> type[uvicorn.Server]:
    import uvicorn

    class _Server(uvicorn.Server):
        """A uvicorn server that leaves the process's signals alone and says when it
        listens."""

        listening: anyio.Event
        failure: BaseException | None

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # run() owns SIGINT/SIGTERM; the stop comes through the scope's signal

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            _shutdown_once(self.lifespan)  # made by uvicorn just before
            try:
                await super().startup(sockets)
            except SystemExit as exc:  # uvicorn's way to say the startup failed
                self.should_exit = True
                self.failure = RuntimeError(
                    f"uvicorn could not start (exit status {exc.code}); its log says why"
                )
                return
            if self.started:
                self.listening.set()

    return _Server


_server_cls: type[uvicorn.Server] | None = None


def _new_server(config: uvicorn.Config) -> Any:
    global _server_cls
    if _server_cls is None:
        _server_cls = _server_class()
    server: Any = _server_cls(config)
    server.listening = anyio.Event()
    server.failure = None
    return server


async def _serve(
    config: uvicorn.Config,
    drain: Drain,
    name: str,
    *,
    task_status: anyio.abc.TaskStatus[ServerInfo],
) -> None:
    from .._scope import current_record

    current_record().kind = "server"
    server = _new_server(config)
    try:
        await _serve_and_settle(server, drain, name, task_status)
    except anyio.get_cancelled_exc_class():
        drain.cut_short()  # the member is cut: what was in flight with it
        raise
    finally:
        drain.unquiet()  # the server failed before its drain was over


async def _serve_and_settle(
    server: Any, drain: Drain, name: str, task_status: anyio.abc.TaskStatus[ServerInfo]
) -> None:
    drain.open()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_run_server, server, tg.cancel_scope, drain.label)
            await server.listening.wait()
            host, port = server.servers[0].sockets[0].getsockname()[:2]
            drain.readiness.mark_ready()
            task_status.started(ServerInfo(name, host, port, drain.readiness))
            await drain.wait_for_stop()
            timeout = drain.timeout(overhead=_OVERHEAD)
            server.config.timeout_graceful_shutdown = timeout
            for listener in server.servers:
                listener.close()  # uvicorn's shutdown closes them again: no harm
            drain.draining(timeout)
            # before uvicorn's shutdown, which cuts every WebSocket connection at once
            await drain.close_websockets(overhead=_OVERHEAD)
            server.config.timeout_graceful_shutdown = drain.timeout(overhead=_OVERHEAD)
            server.should_exit = True  # uvicorn looks at it every 0.1 s
    finally:
        drain.close()
    if server.failure is not None:
        raise server.failure
    if not server.started:
        raise RuntimeError("uvicorn stopped before it listened; its log says why")
    await drain.settle()


async def _run_server(server: Any, cancel_scope: anyio.CancelScope, label: str) -> None:
    try:
        await server.serve()
    except Exception as exc:  # raised from the member as it is, not in a group
        _abort(server)
        if server.failure is None:
            server.failure = exc
    except BaseException:
        _abort(server)
        await _lifespan_shutdown(server, label)
        raise
    finally:
        cancel_scope.cancel()  # returned on its own (or failed to start): stop waiting


async def _lifespan_shutdown(server: Any, label: str) -> None:
    """The member is cut: uvicorn's own shutdown, which runs the app's lifespan shutdown,
    will not run.  Run that here, shielded, within :data:`CUT_UNWIND` seconds: else the
    app's lifespan task is left waiting for a message that never comes, and destroyed,
    still pending, by the garbage collector.  (Longer, it is left to finish.)"""
    # uvicorn makes it, then starts its task, with no await in between
    lifespan = getattr(server, "lifespan", None)
    done = getattr(lifespan, "shutdown_event", None)  # None: no lifespan (lifespan="off")
    if done is None or done.is_set():  # none, or it has ended already
        return
    assert lifespan is not None
    with anyio.CancelScope(shield=True), anyio.move_on_after(CUT_UNWIND) as bounded:
        await lifespan.shutdown()
    if bounded.cancelled_caught:
        logger.warning(
            "%s: the app's lifespan shutdown still runs %.3g s after the member was cut; "
            "left to finish in the background",
            label,
            CUT_UNWIND,
        )


def _shutdown_once(lifespan: Any) -> None:
    """Make the lifespan's ``shutdown()`` send the app its shutdown message once: a
    second call (the member cut while uvicorn's own shutdown waited for the app's) waits
    for that one to end.  Sent twice, an app that reads on after its shutdown would run
    its shutdown twice."""
    done = getattr(lifespan, "shutdown_event", None)
    if done is None:  # no lifespan (lifespan="off"): nothing to send
        return
    ask = lifespan.shutdown
    asked = False

    async def shutdown() -> None:
        nonlocal asked
        if asked:
            await done.wait()
            return
        asked = True
        await ask()

    lifespan.shutdown = shutdown


def _abort(server: Any) -> None:
    """Hard cancellation: close the listener and cut the connections at once."""
    server.should_exit = server.force_exit = True
    for listener in getattr(server, "servers", ()):
        listener.close()
    for task in list(server.server_state.tasks):
        task.cancel()
    for connection in list(server.server_state.connections):
        transport = getattr(connection, "transport", None)
        if transport is not None:
            transport.close()
