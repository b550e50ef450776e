"""What the server members share: arguments, the grace budget, the drain sequence."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Final

import anyio

from .._report import current_timeline
from .._scope import AFTER_CANCEL_REPORT_DELAY, TaskScope, _check_grace, current_record
from .._signal import CallbackHandle, StopSignal, _to_seconds, logger
from ._readiness import ASGIApp, Readiness, ReadinessMiddleware

__all__ = ["RESERVE_FRACTION", "RESERVE_MAX", "ServerInfo"]

#: part of what is left of the grace kept back from the server's own drain timeout, for
#: the application's lifespan shutdown and for cancelled requests to unwind ...
RESERVE_FRACTION: Final = 0.1
#: ... but never more than this many seconds
RESERVE_MAX: Final = 1.0
#: seconds a server member, once cut itself (its grace spent, a hard stop), gives the
#: server's own cleanup (the cancelled connections, the app's lifespan shutdown) before
#: it ends and leaves the rest to finish in the background (with a warning of its own).
#: Well inside the scope's laggard delay (1 s): a member that waits this bound out must
#: not be reported as one that swallows its cancellation (``phase="after-cancel"``)
CUT_UNWIND: Final = AFTER_CANCEL_REPORT_DELAY / 2
#: seconds before the server's drain timeout at which the library cuts the WebSocket
#: sessions still running (at most a tenth of the time they had)
WEBSOCKET_CUT_MARGIN: Final = 0.1


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """Where a server member listens, and its readiness (what ``start_*()`` returns).

    .. versionadded:: 0.1
    """

    #: the member's name in the scope's report
    name: str
    #: the host (address) the listener is bound to
    host: str
    #: the port the listener is bound to (the real one when 0 was asked for)
    port: int
    #: the server's readiness state (also answered on the readiness path)
    readiness: Readiness

    @property
    def url(self) -> str:
        """``http://host:port`` (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def check_drain_delay(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`drain_delay` must be a number of seconds, got {value!r}")
    value = _to_seconds(value)  # an int too large for a float: inf, refused below
    if math.isnan(value) or value < 0 or value == math.inf:
        raise ValueError(
            f"`drain_delay` must be a finite, non-negative number of seconds, got {value!r}"
        )
    return value


def check_port(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`port` must be an int, got {value!r}")
    if not 0 <= value <= 65535:
        raise ValueError(f"`port` must be between 0 and 65535 (0: any free port), got {value}")
    return value


def check_scope(scope: object, function: str) -> TaskScope:
    if not isinstance(scope, TaskScope):
        raise TypeError(
            f"{function}() needs the TaskScope to start the server in first, got {scope!r}"
        )
    return scope


def refuse_options(options: dict[str, object], refused: dict[str, str], server: str) -> None:
    for key, instead in refused.items():
        if key in options:
            raise ValueError(f"do not pass `{key}` to the {server} member: {instead}")


def log_streams_ended(label: str, middleware: ReadinessMiddleware) -> None:
    """One line for the event streams the middleware ended at the drain (not cut)."""
    ended = middleware.streams_ended
    if not ended:
        return
    retry = middleware.sse_retry
    logger.info(
        "%s: ended %d event stream(s) at the drain, %s",
        label,
        ended,
        "without a retry field" if retry is None else f"with retry: {round(retry * 1000)} ms",
    )


#: what uvicorn logs (on ``uvicorn.error``), with the traceback, for each request task
#: it cancels at its timeout
_UVICORN_APP_ERROR: Final = "Exception in ASGI application\n"
#: what asyncio and uvloop log (on ``asyncio``, before Python 3.13) for each connection
#: task of ``asyncio.start_server()`` that is cancelled (hypercorn's, at its timeout):
#: "Exception in callback" and the callback, which is named this
_STREAMS_CALLBACK: Final = "StreamReaderProtocol.connection_made.<locals>.callback"


class QuietCuts(logging.Filter):
    """On the server's logger while a member drains: drop the traceback logged for each
    request or connection the server's drain timeout cancelled (a ``CancelledError``);
    the member logs one line with their count instead.  Any other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc_info = record.exc_info
        if exc_info is None or not isinstance(exc_info[1], asyncio.CancelledError):
            return True
        message = record.msg
        return not (
            message == _UVICORN_APP_ERROR
            or (
                isinstance(message, str)
                and message.startswith("Exception in callback ")
                and _STREAMS_CALLBACK in message.partition("\n")[0]
            )
        )


class Drain:
    """One server member's stop sequence, from the stop request to the server's timeout.

    The grace budget counts from the moment the *scope* was asked to stop (its signal,
    or the member's own signal if that is set first): the readiness turns "not ready"
    then; the server keeps serving until the drain delay is over; then it closes its
    listener and gets what is left of the grace, less a reserve, to finish in-flight
    requests; then it cancels them itself.
    """

    def __init__(
        self,
        scope: TaskScope,
        signal: StopSignal,
        readiness: Readiness,
        drain_delay: float,
        grace: float | None,
        label: str,
    ) -> None:
        budget = scope.grace
        if grace is not None:
            grace = _check_grace(grace)
            budget = grace if budget is None or grace is None else min(budget, grace)
        if budget is not None and drain_delay and drain_delay >= budget:
            raise ValueError(
                f"`drain_delay` ({drain_delay:g} s) must be shorter than the grace "
                f"({budget:g} s): the server needs time after it to finish in-flight requests"
            )
        self.scope = scope
        self.signal = signal
        self.readiness = readiness
        self.drain_delay = drain_delay
        self.budget = budget
        self.label = label
        self.stopped_at: float | None = None  # time.monotonic() of the stop request
        self._lock = threading.Lock()
        #: requests and connections the server cut at its drain timeout (a fact, counted
        #: once they unwound: see :meth:`settle`); ``None`` until the server returned
        self.cut: int | None = None
        self._cancelled_before = 0  # the middleware's count when the drain began
        self._handles: list[CallbackHandle] = []
        self.middleware: ReadinessMiddleware | None = None
        #: time.monotonic() when the listener was closed (the drain delay's end)
        self._draining_at: float | None = None
        #: the server's logger whose per-request cancellation tracebacks are replaced by
        #: one line from the drain on (``uvicorn.error``, ``asyncio``); ``None``: none
        self.quiet_logger: str | None = None
        self._quiet: QuietCuts | None = None

    def wrap(
        self,
        app: ASGIApp,
        path: str | None,
        request_signals: bool,
        websocket_close_code: int = 1001,
        sse_retry: float | None = 1.0,
    ) -> ASGIApp:
        if not callable(app):
            raise TypeError(f"`app` must be an ASGI application, got {app!r}")
        self.middleware = ReadinessMiddleware(
            app,
            self.readiness,
            path=path,
            request_signals=request_signals,
            websocket_close_code=websocket_close_code,
            sse_retry=sse_retry,
        )
        # no drain delay, no balancer to move clients to: keep-alive connections end
        # the way the server ends them at its shutdown
        self.middleware.close_connections = self.drain_delay > 0
        return self.middleware

    def open(self) -> None:
        """Watch for the stop request (synchronously, in ``set()``: any thread)."""
        if self.scope.signal.is_set():
            self._mark_stopped(self.scope.report.requested_at)
        for signal in (self.scope.signal, self.signal):
            self._handles.append(signal.on_set(self._on_stop))

    def _on_stop(self, reason: object) -> None:
        self._mark_stopped(None)

    def _mark_stopped(self, at: float | None) -> None:
        """Note the stop's moment (the first one wins) and turn "not ready".

        Called from ``set()``'s callbacks, on whatever thread stopped the scope, and
        from :meth:`wait_for_stop` on the loop: a ``set()`` from another thread wakes
        the loop before it runs its callbacks, so either may come first.
        """
        with self._lock:
            if self.stopped_at is None:
                self.stopped_at = time.monotonic() if at is None else at
        self.readiness.mark_stopping()

    def close(self) -> None:
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()

    async def wait_for_stop(self) -> None:
        """Return when the server should close its listener: stop, then the drain delay."""
        await self.signal.wait()
        # set() from another thread may wake us before its callbacks ran: mark it here
        self._mark_stopped(None)
        assert self.stopped_at is not None
        left = self.stopped_at + self.drain_delay - time.monotonic()
        if left > 0:
            logger.info(
                "%s: stop requested; not ready, still serving for the drain delay (%.3g s)",
                self.label,
                left,
            )
            try:
                await anyio.sleep(left)
            except BaseException:  # a hard stop, or the server's own shutdown
                self._delay_cut()
                raise

    def _delay_cut(self) -> None:
        """The drain delay ended early: say so, and record it, cut short, in the stop's
        timeline (the listener closes before the delay the balancer was promised)."""
        assert self.stopped_at is not None
        took = time.monotonic() - self.stopped_at
        timeline = current_timeline()
        if timeline is not None:
            timeline.start(self.stopped_at)
            timeline.add_cut("drain delay", took)
        logger.warning(
            "%s: the drain delay was cut short after %.3g s of %.3g s",
            self.label,
            took,
            self.drain_delay,
        )

    def timeout(self, overhead: float = 0.0) -> float | None:
        """Seconds the server may take to finish in-flight requests (``None``: no limit).

        :param overhead: what the server itself spends around its timeout (uvicorn
            sleeps 0.1 s before it starts the clock, and polls every 0.1 s)
        """
        if self.budget is None:
            return None
        assert self.stopped_at is not None
        left = self.stopped_at + self.budget - time.monotonic()
        reserve = min(RESERVE_MAX, RESERVE_FRACTION * max(left, 0.0))
        return max(0.0, left - reserve - overhead)

    def draining(self, timeout: float | None) -> None:
        self._draining_at = time.monotonic()
        timeline = current_timeline()
        if timeline is not None and self.stopped_at is not None:
            timeline.start(self.stopped_at)
            timeline.add("drain delay", self._draining_at - self.stopped_at)
        middleware = self.middleware
        if middleware is not None:  # what was cut before the drain is not the drain's
            self._cancelled_before = middleware.cancelled
        if self.quiet_logger is not None and self._quiet is None:
            self._quiet = QuietCuts()
            logging.getLogger(self.quiet_logger).addFilter(self._quiet)
        self.readiness.mark_draining()
        logger.info(
            "%s: closing the listener; in-flight requests have %s to finish",
            self.label,
            "all the time they need" if timeout is None else f"{timeout:.3g} s",
        )

    async def close_websockets(self, overhead: float = 0.0) -> None:
        """Once the drain began: the library closes the WebSocket sessions still open,
        and cuts those still running a little before the server's own timeout (see
        :meth:`ReadinessMiddleware.close_websockets`)."""
        middleware = self.middleware
        if middleware is None:
            return
        limit = self.timeout(overhead)
        if limit is not None:  # ahead of the server's own cut, which would log each one
            limit = max(0.0, limit - min(WEBSOCKET_CUT_MARGIN, limit * RESERVE_FRACTION))
        sent = await middleware.close_websockets(limit)
        if sent:
            logger.info(
                "%s: sent a close frame (code %d) to %d open WebSocket session(s)",
                self.label,
                middleware.websocket_close_code,
                sent,
            )

    def unquiet(self) -> None:
        """Give the server's logger back its per-request tracebacks (idempotent)."""
        quiet, self._quiet = self._quiet, None
        if quiet is not None and self.quiet_logger is not None:
            logging.getLogger(self.quiet_logger).removeFilter(quiet)

    async def settle(self) -> None:
        """After the server returned: count the requests its timeout cut, once they
        unwound, and report them (a warning, and the member ``CANCELLED``).

        uvicorn cancels the requests still running at its timeout and returns without
        waiting for them: they are waited for here, within what is left of the
        budget.  A request still running after that was cut too (nobody waits for it
        any more).  The count is kept in :attr:`cut`.
        """
        middleware = self.middleware
        if middleware is not None and middleware.in_flight:
            left: float | None = None
            if self.budget is not None and self.stopped_at is not None:
                left = max(0.0, self.stopped_at + self.budget - time.monotonic())
            with anyio.move_on_after(left):
                await middleware.wait_idle()
        self.finished()

    def cut_short(self) -> None:
        """The member itself is being cut (its grace ran out while the server drained,
        or a hard stop) before it counted what was cut: count it now.  The requests
        still in flight are cut with it; without this the member's record would say
        ``cut=0``.  (Called as the cancellation leaves the member: :meth:`finished`
        has not run, as nothing awaits after it.)"""
        self.finished()

    def finished(self) -> None:
        """After the server returned (and, with :meth:`settle`, its requests unwound):
        record the requests cut in :attr:`cut`, and report them."""
        timeline = current_timeline()
        if timeline is not None and self._draining_at is not None:
            timeline.add("HTTP drain", time.monotonic() - self._draining_at)
        self.unquiet()
        middleware = self.middleware
        cut = 0
        if middleware is not None:
            cut = middleware.cancelled - self._cancelled_before + middleware.in_flight
            log_streams_ended(self.label, middleware)
        self.cut = cut
        closed = 0 if middleware is None else middleware.websockets_closed
        if closed:
            assert middleware is not None
            logger.info(
                "%s: %d WebSocket session(s) closed by the drain (code %d)",
                self.label,
                closed,
                middleware.websocket_close_code,
            )
        if not cut:
            return
        logger.warning(
            "%s: %d request(s) did not finish within the grace period and were cancelled",
            self.label,
            cut,
        )
        try:
            record = current_record()
        except RuntimeError:  # pragma: no cover - a member always has a record
            return
        record.cut += cut  # a fact, counted once the requests unwound: the scope judges
