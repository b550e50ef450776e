"""hypercorn as a member of a TaskScope (asyncio, uvloop and trio)."""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any, Final

import anyio
import anyio.abc

from .._scope import TaskScope, current_record
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

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

__all__ = ["start_hypercorn"]

#: seconds: a cut this close to hypercorn's own drain timeout leaves the cancellation of
#: the connections to hypercorn (its timer may have fired already, on this turn of the
#: loop), rather than cancel its task as it begins its cleanup
_OWN_TIMEOUT_MARGIN: Final = 0.1

_REFUSED = {
    "bind": "pass start_hypercorn(host=..., port=...)",
    "insecure_bind": "pass start_hypercorn(host=..., port=...)",
    "quic_bind": "the member serves HTTP/1 and HTTP/2 over TCP",
    "graceful_timeout": (
        "the member derives it from the scope's grace (less the drain delay); set "
        "`grace` on the scope or on start_hypercorn()"
    ),
}


def _import_hypercorn() -> Any:
    try:
        import hypercorn.config
    except ImportError:
        raise RuntimeError(
            "start_hypercorn() needs hypercorn: pip install 'stopscope[hypercorn]'"
        ) from None
    return hypercorn.config


async def start_hypercorn(
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
    name: str = "hypercorn",
    **options: Any,
) -> ServerInfo:
    """Start a hypercorn server as a member of ``scope``; return once it accepts connections.

    ::

        async with TaskScope(signal=signal, grace=20) as scope:
            server = await start_hypercorn(scope, app, port=8000, drain_delay=5)
            print(f"listening on {server.url}")
            await signal.wait()

    The same stop sequence as :func:`start_uvicorn` (not ready at once, serve for
    ``drain_delay``, close the listener, finish in-flight requests within what is left
    of the grace, cancel the rest), on asyncio, uvloop and trio alike: hypercorn's
    ``graceful_timeout`` is set from the grace at the moment the listener closes, so
    it never has to be lined up by hand.  hypercorn installs no signal handler when
    it is given a shutdown trigger, which this member always does.  Open WebSocket
    sessions are closed when the drain begins, as with :func:`start_uvicorn` (hypercorn
    itself would leave them open until its timeout, then cut them).

    :param options: set on :class:`hypercorn.config.Config` (``keep_alive_timeout``,
        ``h11_max_incomplete_size``, ``accesslog``, ...)

    The other parameters are those of :func:`start_uvicorn`.

    :raises RuntimeError: if hypercorn is not installed, or the server could not start
    :raises TypeError: for an option hypercorn's ``Config`` does not have
    """
    scope = check_scope(scope, "start_hypercorn")
    config_module = _import_hypercorn()
    refuse_options(options, _REFUSED, "hypercorn")
    port = check_port(port)
    delay = check_drain_delay(drain_delay)
    if signal is None:
        signal = scope._member_signal
    elif not isinstance(signal, StopSignal):
        raise TypeError(f"`signal` must be a StopSignal or None, got {signal!r}")
    readiness = Readiness() if readiness is None else readiness
    drain = Drain(
        scope,
        signal,
        readiness,
        delay,
        grace,
        name if name == "hypercorn" else f"{name} (hypercorn)",
    )
    wrapped = drain.wrap(app, readiness_path, request_signals, websocket_close_code, sse_retry)
    config = config_module.Config()
    if "errorlog" not in options and logging.getLogger().handlers:
        # logging is set up: hypercorn's records go there, once; its default ("-") adds
        # a stderr handler of its own, and every line came out twice, in two formats
        config.errorlog = logging.getLogger("hypercorn.error")
    for key, value in options.items():
        if not hasattr(config, key):
            raise TypeError(f"hypercorn's Config has no option {key!r}")
        setattr(config, key, value)
    info: ServerInfo = await scope.start(
        _serve, wrapped, config, (host, port), drain, name, name=name, grace=grace
    )
    return info


def _bind(address: tuple[str, int]) -> Any:
    """Our own listening socket, handed to hypercorn: a bind error is raised here, as
    it is, and nothing is left open."""
    from hypercorn.config import Sockets

    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return Sockets(secure_sockets=[], insecure_sockets=[sock], quic_sockets=[])


async def _serve(
    app: ASGIApp,
    config: Any,
    address: tuple[str, int],
    drain: Drain,
    name: str,
    *,
    task_status: anyio.abc.TaskStatus[ServerInfo],
) -> None:
    try:
        await _serve_and_settle(app, config, address, drain, name, task_status)
    except anyio.get_cancelled_exc_class():
        drain.cut_short()  # the member is cut: what was in flight with it
        raise


async def _serve_and_settle(
    app: ASGIApp,
    config: Any,
    address: tuple[str, int],
    drain: Drain,
    name: str,
    task_status: anyio.abc.TaskStatus[ServerInfo],
) -> None:
    current_record().kind = "server"
    trio = _backend() == "trio"
    if not trio:  # one line for the connections its timeout cancels
        drain.quiet_logger = "asyncio"
    if trio:
        from hypercorn.trio import serve
    else:
        from hypercorn.asyncio import serve  # type: ignore[assignment]
    sockets = _bind(address)
    sock: socket.socket = sockets.insecure_sockets[0]
    config.create_sockets = lambda: sockets  # hypercorn listens on it
    listening = anyio.Event()
    stop_now = anyio.Event()

    async def shutdown_trigger() -> None:
        # hypercorn calls it once every listener accepts connections
        listening.set()
        await stop_now.wait()

    failure: list[BaseException] = []
    own_timeout_at = [math.inf]  # see _serve_in_task
    drain.open()
    try:
        async with anyio.create_task_group() as tg:

            async def run_server() -> None:
                run = partial(serve, app, config, shutdown_trigger=shutdown_trigger, mode="asgi")  # type: ignore[arg-type]
                try:
                    if trio:
                        await run()
                    else:
                        await _serve_in_task(run, config, drain.label, own_timeout_at)
                except Exception as exc:
                    failure.append(exc)
                finally:
                    tg.cancel_scope.cancel()

            tg.start_soon(run_server)
            await listening.wait()
            host, port = sock.getsockname()[:2]
            drain.readiness.mark_ready()
            task_status.started(ServerInfo(name, host, port, drain.readiness))
            await drain.wait_for_stop()
            timeout = drain.timeout()
            # read by hypercorn once the trigger returns and the listeners are closed
            config.graceful_timeout = (math.inf if trio else None) if timeout is None else timeout
            drain.draining(timeout)
            if timeout is not None:
                own_timeout_at[0] = time.monotonic() + timeout
            stop_now.set()
            # hypercorn leaves open WebSocket connections alone until its timeout (then
            # cuts them, logging each): the library closes them while it waits for the
            # in-flight requests, and cuts those still running just before it
            await drain.close_websockets()
    finally:
        drain.close()
        sock.close()  # closed already by hypercorn, unless it failed before it listened
    try:
        if failure:
            raise _unwrap(failure[0])
        if not listening.is_set():
            raise RuntimeError("hypercorn stopped before it listened")
        await drain.settle()
    finally:
        drain.unquiet()


async def _serve_in_task(
    serve: Callable[[], Coroutine[Any, Any, None]],
    config: Any,
    name: str,
    own_timeout_at: list[float],
) -> None:
    """Run hypercorn's asyncio ``serve()`` in an asyncio task of its own; when the
    member is cut, cancel that task once (or let hypercorn's own timeout do it), then
    wait for it to end, and raise the member's cancellation.

    hypercorn's cleanup (a ``finally``: cancel the connections and wait for them,
    retrieve their error, run the app's lifespan shutdown, end the lifespan task) is
    written for one cancellation.  Awaited in the member's task, it got anyio's
    cancellation again on every turn of the loop: its wait for the cancelled
    connections was cut, nobody retrieved their error ("_GatheringFuture exception was
    never retrieved" when the garbage collector took it), and the lifespan task was
    left pending, its shutdown never run.

    :param own_timeout_at: ``time.monotonic()`` at which hypercorn's own drain timeout
        cancels the connections (``inf``: not draining yet, or no limit).  From then on
        hypercorn is cancelling them and waiting, then running the lifespan shutdown: a
        cancellation would only cut that short, so the task is left to finish it.
    """
    task = _ServeTask(serve(), loop=asyncio.get_running_loop(), name=f"{name}: serve()")
    done = anyio.Event()
    task.add_done_callback(lambda _: done.set())
    try:
        await done.wait()
    except BaseException:  # the member is cut (or a KeyboardInterrupt)
        # read by hypercorn once its listeners are closed: a cut before the drain cuts
        # the connections at once (read already if the drain began)
        config.graceful_timeout = 0
        if own_timeout_at[0] - time.monotonic() > _OWN_TIMEOUT_MARGIN:
            task.cancel()
        with anyio.CancelScope(shield=True), anyio.move_on_after(CUT_UNWIND):
            await done.wait()
        if task.done():
            _tell_error(task, name)
        else:
            # the app holds hypercorn's cleanup up (a request that outlives its
            # cancellation, a slow lifespan shutdown): cancelled again, hypercorn would
            # leave its own tasks behind, unfinished; the member ends, and hypercorn
            # finishes its cleanup as soon as the app lets it
            logger.warning(
                "%s: the server is still cleaning up %.3g s after the member was cut (a "
                "request that outlives its cancellation, or the app's lifespan shutdown); "
                "left to finish in the background",
                name,
                CUT_UNWIND,
            )
            task.left_behind = True  # asyncio.Runner cancels it at the loop's close
            _left_behind.add(task)
            task.add_done_callback(lambda _: _left_behind.discard(task))
            task.add_done_callback(lambda _: _tell_error(task, name))
        raise
    task.result()


class _ServeTask(asyncio.Task[None]):
    """The task of hypercorn's ``serve()``.  Once left behind, cancelled already and
    cleaning up, it refuses any further cancellation: the one that comes is
    ``asyncio.Runner``'s, at the loop's close, and hypercorn's cleanup, cancelled a
    second time while it waits for the connections it cancelled, raised
    ``InvalidStateError``, skipped the lifespan shutdown and left the connections'
    error unretrieved.  The runner cancels the connections and the lifespan task
    themselves, and waits for this task, which then ends its cleanup."""

    left_behind = False

    def cancel(self, msg: Any = None) -> bool:
        if self.left_behind:
            return False
        return super().cancel(msg)


#: hypercorn tasks still cleaning up after their member was cut: held until they end
_left_behind: set[asyncio.Task[None]] = set()


def _tell_error(task: asyncio.Task[None], name: str) -> None:
    """hypercorn's task ended after the member was cut: the member's cancellation wins,
    and an error of hypercorn's (the app's lifespan shutdown failed...) is logged, not
    lost."""
    if not task.cancelled() and task.exception() is not None:
        logger.error(
            "%s: the server raised after the member was cut", name, exc_info=task.exception()
        )


def _unwrap(error: BaseException) -> BaseException:
    """The one error inside trio's nested nursery groups, as it was raised."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error
