"""Hearing the stop before the server does, and letting the server go on afterwards.

A server started by its own command owns the process's signals.  What it installs, as
read from the servers' sources:

* **uvicorn** (``uvicorn main:app``, ``fastapi run``, gunicorn's ``UvicornWorker``):
  ``signal.signal(SIGTERM, server.handle_exit)`` inside ``Server.capture_signals()``,
  around the whole run, the lifespan included.  ``handle_exit`` only sets flags, so
  calling it later, from the loop, is what the signal would have done then.
* **hypercorn with workers** (its default: one worker process beside the master): the
  master catches SIGTERM and sets a shared ``multiprocessing`` event that each worker
  polls every 0.1 s; the worker's own SIGTERM is left at its default (the process
  dies).  The worker's view of the event is gated: it sees the event set only once the
  drain delay is over.
* **anything else** installed with ``signal.signal`` is chained the same way; the
  default action (``SIG_DFL``) is taken, as it would have been, after the delay.

A loop-level handler (``loop.add_signal_handler``: ``hypercorn -w 0`` on asyncio,
granian's workers) runs from the loop's wake-up fd whatever Python-level handler is
installed, so it cannot be delayed from outside; that set-up is refused with advice.

Our raw handler only counts the signal and hops to the loop (``call_soon_threadsafe``,
trio's token); everything else runs there.
"""

from __future__ import annotations

import functools
import multiprocessing
import signal
import threading
from collections.abc import Callable
from contextlib import suppress
from types import FrameType
from typing import Any, Final

import anyio

from .._backends import current
from .._signal import logger

__all__ = ["ServerHook", "install"]

#: the signal orchestrators send for a graceful stop (Kubernetes, systemd, gunicorn)
STOP_SIGNAL: Final = signal.SIGTERM
#: how often a hypercorn worker's shutdown event is looked at (hypercorn's own period)
EVENT_POLL: Final = 0.1

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class ServerHook:
    """Our SIGTERM handler in front of the server's, and the way to let it go on.

    ``on_stop(reason)`` is called on the loop when the stop is heard (once).  The
    server's own shutdown starts only when :meth:`release` is called; a repeated SIGTERM
    changes nothing.
    """

    def __init__(self, on_stop: Callable[[object], None]) -> None:
        self._on_stop = on_stop
        self._hop: Callable[[Callable[[], object]], object] = current().hop
        self._previous: _Handler = None
        self._installed = False
        self._heard = False
        self.released = False
        #: what the server is, for logs (``"uvicorn"``, ``"hypercorn worker"``...)
        self.server = "the server"
        #: sets the server's own drain timeout (seconds, None: no limit), if we can
        self._set_timeout: Callable[[float | None], None] | None = None
        #: the server's listeners, when the server cuts its WebSocket connections as
        #: its shutdown begins (uvicorn: 1012 at once): the library closes the sessions
        #: first, with the listeners closed by :meth:`close_listeners`
        self._listeners: Callable[[], list[Any]] | None = None
        #: the hypercorn worker's shutdown event, and its own ``is_set``
        self._event: Any = None
        self._event_is_set: Callable[[], bool] | None = None

    # -- installing -----------------------------------------------------------------

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(
                "GracefulApp must run its lifespan in the main thread, where Python runs "
                "signal handlers; run the server's event loop in the main thread"
            )
        previous = signal.getsignal(STOP_SIGNAL)
        _refuse_loop_handler(previous)
        if previous is None:
            raise RuntimeError(
                "SIGTERM is handled by native code here (not installed from Python), which "
                "no handler can be chained to; serve the app with uvicorn, hypercorn or "
                "gunicorn's UvicornWorker, or from your own program with stopscope.servers"
            )
        self._previous = previous
        owner = getattr(previous, "__self__", None)
        if owner is not None and _is_uvicorn_server(owner):
            self.server = "uvicorn"
            self._set_timeout = lambda seconds: _set_attr(
                owner.config, "timeout_graceful_shutdown", seconds
            )
            self._listeners = lambda: list(getattr(owner, "servers", ()))
        self._gate_hypercorn_event()
        signal.signal(STOP_SIGNAL, self._on_signal)
        self._installed = True

    def _gate_hypercorn_event(self) -> None:
        process = multiprocessing.current_process()
        kwargs = getattr(process, "_kwargs", None)
        if process.name == "MainProcess" or not isinstance(kwargs, dict):
            return
        event: Any = kwargs.get("shutdown_event")
        config: Any = kwargs.get("config")
        if event is None or type(config).__module__ != "hypercorn.config":
            return
        self.server = f"hypercorn worker ({config.worker_class})"
        self._event = event
        self._event_is_set = event.is_set
        # hypercorn's worker polls this; it sees the shutdown once we release it
        event.is_set = lambda: self.released
        trio = config.worker_class == "trio"

        def set_timeout(seconds: float | None) -> None:
            if seconds is None:
                seconds = float("inf") if trio else None
            config.graceful_timeout = seconds

        self._set_timeout = set_timeout

    def uninstall(self) -> None:
        if self._event is not None:
            with suppress(AttributeError):
                del self._event.is_set  # the class's own method again
            self._event = None
        if not self._installed:
            return
        self._installed = False
        with suppress(ValueError, OSError, TypeError):
            if signal.getsignal(STOP_SIGNAL) == self._on_signal:
                previous = self._previous
                signal.signal(STOP_SIGNAL, signal.SIG_DFL if previous is None else previous)

    # -- watching ---------------------------------------------------------------------

    async def watch_event(self) -> None:
        """Poll the hypercorn worker's shutdown event (as hypercorn itself would); return
        at once if there is none."""
        is_set = self._event_is_set
        if is_set is None:
            return
        while not self.released:
            if is_set():
                self._hear("shutdown requested by the hypercorn master")
                return
            await anyio.sleep(EVENT_POLL)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """The raw handler: hop to the loop; nothing else."""
        with suppress(Exception):  # the loop is gone: nothing left to drain
            self._hop(functools.partial(self._signalled, signum))

    def _signalled(self, signum: int) -> None:
        """On the loop: the first stop is heard; later ones change nothing.

        Under systemd's default ``KillMode=control-group`` (or ``kill -- -PGID``) every
        worker gets SIGTERM from the supervisor and again from its master, a few
        milliseconds apart: a repeat must not cut the drain delay short."""
        if self._heard:
            if not self.released:
                logger.info(
                    "%s again: already stopping; %s hears it once the drain delay is over",
                    signal.Signals(signum).name,
                    self.server,
                )
        else:
            self._hear(signal.Signals(signum))

    def _hear(self, reason: object) -> None:
        if self._heard:
            return
        self._heard = True
        self._on_stop(reason)

    # -- letting the server go on -------------------------------------------------------

    def set_timeout(self, seconds: float | None) -> bool:
        """Set the server's own drain timeout; ``False`` if this server has none we know."""
        if self._set_timeout is None:
            return False
        self._set_timeout(seconds)
        return True

    @property
    def cuts_websockets(self) -> bool:
        """Whether the server cuts WebSocket connections as its shutdown begins."""
        return self._listeners is not None

    def close_listeners(self) -> None:
        """Stop accepting connections now (before :meth:`release`); only for a server
        that :attr:`cuts_websockets` (its shutdown closes them again, harmlessly)."""
        assert self._listeners is not None
        for listener in self._listeners():
            listener.close()

    def release(self) -> None:
        """On the loop: the server starts its own shutdown now (idempotent)."""
        if self.released:
            return
        self.released = True
        if self._event is not None:
            return  # the worker's next poll sees the event set
        previous = self._previous
        if callable(previous):
            previous(STOP_SIGNAL, None)
        elif previous == signal.SIG_DFL:
            # what the signal would have done: end the process, by that signal
            self.uninstall()
            signal.signal(STOP_SIGNAL, signal.SIG_DFL)
            signal.raise_signal(STOP_SIGNAL)


def _is_uvicorn_server(owner: object) -> bool:
    return type(owner).__module__.startswith("uvicorn") and hasattr(owner, "should_exit")


def _set_attr(obj: object, name: str, value: object) -> None:
    setattr(obj, name, value)


def _refuse_loop_handler(previous: object) -> None:
    """A loop-level SIGTERM handler would run whatever we install: refuse, with advice.

    asyncio's ``add_signal_handler`` leaves a no-op Python handler (the loop acts on
    the wake-up fd); uvloop's leaves a method of the loop."""
    import asyncio

    owner = getattr(previous, "__self__", None)
    module = getattr(previous, "__module__", None) or ""
    if isinstance(owner, asyncio.AbstractEventLoop) or module.startswith("asyncio"):
        raise RuntimeError(
            "the server handles SIGTERM with loop.add_signal_handler() (hypercorn -w 0 on "
            "asyncio, granian's workers), which no other handler can come before; run "
            "hypercorn with its worker processes (drop `-w 0`), uvicorn or gunicorn's "
            "UvicornWorker, or serve the app from your own program with stopscope.servers"
        )


def install(on_stop: Callable[[object], None]) -> ServerHook:
    """Put our SIGTERM handler in front of the server's; see :class:`ServerHook`."""
    hook = ServerHook(on_stop)
    try:
        hook.install()
    except BaseException:
        hook.uninstall()
        raise
    return hook
