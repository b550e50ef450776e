"""The service level: a program that stops gracefully on SIGTERM / SIGINT.

:func:`run` is the ``main()`` of a service; :func:`stop_on_signals` does the same
inside a program that is already running.  Both follow the contract of orchestrators
(Kubernetes, systemd, a person at a terminal):

1. the first signal sets a :class:`~stopscope.StopSignal` (the reason is the
   :class:`signal.Signals` member), and starts the optional ``grace`` timer;
2. a second signal cancels the block (hard, anyio cancellation);
3. a third exits the process at once, by that signal, even if the event loop is stuck.

How the signals arrive (the why of the code below):

* One plain :func:`signal.signal` handler per signal counts the signals.  It is the
  only way to honour the third signal while the loop is stuck in a blocking call:
  a loop-level handler (``loop.add_signal_handler``, ``trio.open_signal_receiver``)
  runs only when the loop gets to it.
* The first two actions still run *on the loop*: the handler only queues the signal
  and wakes the loop with its signal-safe call (``loop.call_soon_threadsafe``, trio's
  ``TrioToken.run_sync_soon``).  ``loop.add_signal_handler`` itself is not used: its
  removal resets the disposition to SIG_DFL before we could restore the previous
  handler, so a SIGTERM in that window would kill the process.
* Plain asyncio sets no wake-up fd, so a signal that the kernel hands to another thread
  would leave the loop asleep until its next timer.  On plain asyncio we set one for
  the life of the block (uvloop and trio have their own): the backend decides
  (``open_signal_wakeup()`` in ``_backends/``), as it gives the hop and the clock.
* Removing the handlers restores the previous ones (CPython runs pending handlers
  before it swaps).  A signal that our handler caught but the loop has not acted on
  yet when the block ends is raised again, so the previous handler gets it: nothing
  is lost, nothing is acted on twice.
* A signal sent to the whole process group (Ctrl-C, ``tini -g``, systemd's
  ``KillMode=control-group``) also reaches the process members, which may die of it
  before the loop has acted on it.  A trap is known to the tasks of its block (a
  context variable), so a process member that dies of a signal the trap has caught
  asks the trap to act on it at once and is reported STOPPED, not FAILED
  (:func:`_signal_behind_exit`, in ``_members.py``, where the process members live).
* The same context variable tells a :class:`~stopscope.TaskScope` which traps it runs
  under: each scope hands its frozen report to them as it exits
  (:func:`_note_scope_report`, in ``_members.py``; they keep a count of the members that needed
  cancellation and the first few, not the reports), so ``run(fail_if_cut_short=True)``
  knows whether any member, at any depth, had to be cancelled or abandoned.
* systemd notification (``NOTIFY_SOCKET``) is one datagram per state change, sent on
  the loop (never from the raw signal handler): ``READY=1`` as ``main`` starts (or when
  it calls ``task_status.started()``), ``STOPPING=1`` and ``EXTEND_TIMEOUT_USEC`` when
  the first signal is acted on.  A notification that cannot be sent is logged once and
  never stops the service.
"""

from __future__ import annotations

import contextvars
import importlib.util
import inspect
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import suppress
from types import FrameType, TracebackType
from typing import Any, Final, Literal, NoReturn, TypeVar, final

import anyio
import anyio.abc

from . import _scope
from ._backends import current
from ._members import _abandoned_threads, _open_traps, _Trap
from ._members import _note_scope_report as _note_scope_report
from ._members import _signal_behind_exit as _signal_behind_exit
from ._report import LOG_FIELD, TaskRecord, Timeline, _timeline
from ._scope import _check_grace as _check_grace_of_scope
from ._signal import StopSignal, _to_seconds, logger

if sys.version_info >= (3, 11):
    from typing import TypeVarTuple, Unpack
else:  # anyio depends on typing_extensions on 3.10
    from typing_extensions import TypeVarTuple, Unpack

__all__ = [
    "DEFAULT_GRACE",
    "DEFAULT_SIGNALS",
    "EXIT_CUT_SHORT",
    "SignalTrap",
    "run",
    "stop_on_signals",
]

T = TypeVar("T")
PosArgsT = TypeVarTuple("PosArgsT")

#: What one signal does: set the stop signal, cancel the block, or exit the process.
Action = Literal["stop", "cancel", "exit"]
_ACTIONS: Final = ("stop", "cancel", "exit")
#: first signal stops gracefully, the second cancels, the third (and later) exits at once
DEFAULT_ESCALATION: Final[tuple[Action, ...]] = ("stop", "cancel", "exit")
#: the signals :func:`run` handles unless told otherwise
DEFAULT_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)
#: :func:`run`'s grace (seconds): inside Kubernetes' default terminationGracePeriodSeconds
#: (30 s), with room left for cancelled code to unwind
DEFAULT_GRACE: Final = 25.0
#: :func:`run`'s exit status with ``fail_if_cut_short=True`` when ``main`` returned but a
#: member of a scope inside it had to be cancelled or was abandoned (``EX_SOFTWARE`` of
#: sysexits.h: a member did not honour its stop, which is a defect to look at)
EXIT_CUT_SHORT: Final = 70
#: what :func:`run` adds to its grace in ``EXTEND_TIMEOUT_USEC``: room for cancelled code
#: to unwind once the grace is over
_UNWIND_ALLOWANCE: Final = 5.0
#: what ``budget=`` keeps after the grace unless told otherwise (seconds): cancelled
#: code unwinding, a lifespan shutdown, a telemetry flush, the process exit
DEFAULT_RESERVE: Final = _UNWIND_ALLOWANCE
#: how often (real seconds) a trap checks that nobody replaced its signal handlers
_WATCH_PERIOD: Final = 0.5
#: how often (real seconds) run() looks for a signal while the telemetry flush runs
_FLUSH_POLL: Final = 0.05
#: how many cut-short members a trap keeps to name (it counts them all)
_CUT_RECORDS_KEPT: Final = 10
#: when :func:`run` tells systemd it is ready
Ready = Literal["at_start", "task_status"]

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None
_UNCATCHABLE: Final = frozenset(
    getattr(signal, name) for name in ("SIGKILL", "SIGSTOP") if hasattr(signal, name)
)


# ------------------------------------------------------------------ argument checks


def _check_grace(value: float | None) -> float | None:
    return _check_grace_of_scope(value, none_means="to wait for a second signal")


def _check_seconds(name: str, value: object, *, zero: bool) -> float:
    """A finite number of seconds (positive, or also 0 with ``zero``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"`{name}` must be a number of seconds, got {value!r}"
            + (
                " (Kubernetes' terminationGracePeriodSeconds or systemd's TimeoutStopSec, "
                "in seconds)"
                if name == "budget"
                else ""
            )
        )
    seconds = _to_seconds(value)  # an int beyond any float: not finite, refused below
    if math.isnan(seconds) or seconds == math.inf or seconds < 0 or (seconds == 0 and not zero):
        kind = "non-negative" if zero else "positive"
        raise ValueError(f"`{name}` must be a finite, {kind} number of seconds, got {value!r}")
    return seconds


#: how far over the budget a stop may be and still fit: the float error of adding and
#: subtracting seconds (0.2 + 0.1 > 0.3), far below any clock's resolution
_BUDGET_SLACK: Final = 1e-9


def _fmt(seconds: float) -> str:
    return f"{round(seconds, 6):g} s"  # to the microsecond: never "shorten by 0 s"


def _check_budget(
    budget: object,
    reserve: object,
    grace: float | None,
    owner: str,
    drain_delay: float = 0.0,
) -> tuple[float | None, float]:
    """Check that the stop fits the orchestrator's budget: the drain delay and the grace
    (which includes it), then ``reserve`` for what comes after the grace.

    :return: the budget (``None``: not given) and the reserve, as floats
    :raises ValueError: naming the phase to shorten, and by how much
    """
    reserve_s = _check_seconds("reserve", reserve, zero=True)
    if budget is None:
        return None, reserve_s
    budget_s = _check_seconds("budget", budget, zero=False)
    room = budget_s - reserve_s
    if room <= 0:
        raise ValueError(
            f"{owner}: `reserve` ({_fmt(reserve_s)}) leaves nothing of the budget "
            f"({_fmt(budget_s)}) for the stop itself: shorten `reserve` to less than "
            f"{_fmt(budget_s)}, or raise the budget"
        )
    if drain_delay and drain_delay >= room:
        raise ValueError(
            f"{owner}: the drain delay ({_fmt(drain_delay)}) does not fit the budget "
            f"({_fmt(budget_s)}) less the reserve ({_fmt(reserve_s)}): shorten "
            f"`drain_delay` by more than {_fmt(drain_delay - room)} (to less than "
            f"{_fmt(room)}, leaving the server time to finish its requests), or raise the "
            f"budget to more than {_fmt(drain_delay + reserve_s)}"
        )
    if grace is None:
        raise ValueError(
            f"{owner}: grace=None (or inf) waits for ever, which no budget holds: give a "
            f"`grace` of at most {_fmt(room)} (the budget, {_fmt(budget_s)}, less the reserve, "
            f"{_fmt(reserve_s)})"
        )
    if grace > room + _BUDGET_SLACK:
        what = f"grace {_fmt(grace)}"
        if drain_delay:
            what += f" (the drain delay's {_fmt(drain_delay)} included)"
        raise ValueError(
            f"{owner}: the stop does not fit the orchestrator's budget: {what} + reserve "
            f"{_fmt(reserve_s)} = {_fmt(grace + reserve_s)} > budget {_fmt(budget_s)}; "
            f"shorten `grace` by {_fmt(grace - room)} (to {_fmt(room)}), or `reserve`, or "
            f"raise the budget (terminationGracePeriodSeconds, TimeoutStopSec) to "
            f"{_fmt(grace + reserve_s)}"
        )
    return budget_s, reserve_s


def _check_signals(signums: Iterable[int | str]) -> tuple[signal.Signals, ...]:
    if isinstance(signums, int):
        raise TypeError("`signals` must be a sequence of signals, such as (SIGINT, SIGTERM)")
    out: list[signal.Signals] = []
    for value in signums:
        if isinstance(value, str):  # a name: "SIGTERM" (or "TERM") stands for signal.SIGTERM
            name = value.upper() if value.upper().startswith("SIG") else f"SIG{value.upper()}"
            if name not in signal.Signals.__members__:
                raise ValueError(
                    f"`signals`: {value!r} is not a signal name of this platform; pass a "
                    f"signal such as signal.SIGTERM (or its name, 'SIGTERM')"
                )
            value = signal.Signals[name]
        elif isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(
                f"`signals`: {value!r} is not a signal; pass one such as signal.SIGTERM "
                f"(or its name, 'SIGTERM')"
            )
        try:
            sig = signal.Signals(value)
        except ValueError:
            raise ValueError(f"`signals`: {value!r} is not a signal of this platform") from None
        if sig in _UNCATCHABLE:
            raise ValueError(f"`signals`: {sig.name} cannot be caught; leave it out")
        if sig not in out:
            out.append(sig)
    return tuple(out)


#: what ``run(backend=...)`` takes: anyio's backends, and uvloop as asyncio's loop
_BACKENDS: Final = ("asyncio", "trio", "uvloop")


def _check_backend(
    backend: str, options: dict[str, Any] | None
) -> tuple[str, dict[str, Any] | None]:
    """``"uvloop"`` is asyncio with uvloop's loop; anything else is anyio's to run."""
    if backend not in _BACKENDS:
        names = ", ".join(map(repr, _BACKENDS))
        raise ValueError(f"`backend` must be one of {names}, got {backend!r}")
    module = "asyncio" if backend == "asyncio" else backend
    if module != "asyncio" and importlib.util.find_spec(module) is None:
        raise RuntimeError(
            f"backend={backend!r} needs {module}, which is not installed: "
            f"pip install 'stopscope[{module}]'"
        )
    if backend == "uvloop":
        return "asyncio", {**(options or {}), "use_uvloop": True}
    return backend, options


def _check_main(main: object, args: tuple[Any, ...], task_status: bool) -> None:
    """``main`` must take the stop signal first, then ``args`` (and ``task_status``)."""
    if not callable(main):
        raise TypeError(f"`main` must be an async function taking the stop signal, got {main!r}")
    try:
        params = inspect.signature(main)
    except (TypeError, ValueError):  # a builtin or an object without a signature: try it
        return
    extra = {"task_status": None} if task_status else {}
    try:
        params.bind(None, *args, **extra)
    except TypeError as exc:
        shown = "main(signal, *args" + (", task_status=...)" if task_status else ")")
        raise TypeError(
            f"`main` is called as {shown} with the service's StopSignal first "
            f"and the {len(args)} extra argument(s) given to run(); "
            f"{_callable_label(main)}{params} cannot take them: {exc}"
        ) from None


def _callable_label(func: object) -> str:
    return getattr(func, "__qualname__", None) or repr(func)


def _check_escalation(escalation: Sequence[str]) -> tuple[Action, ...]:
    if isinstance(escalation, str):
        raise TypeError(
            "`escalation` must be a sequence of actions such as ('stop', 'cancel', 'exit'), "
            "not a string"
        )
    actions = tuple(escalation)
    if not actions:
        raise ValueError("`escalation` must name at least one action: 'stop', 'cancel', 'exit'")
    for action in actions:
        if action not in _ACTIONS:
            raise ValueError(
                f"`escalation` actions must be 'stop', 'cancel' or 'exit', got {action!r}"
            )
    return actions  # type: ignore[return-value]


def _ordinal(n: int) -> str:
    return {1: "first", 2: "second", 3: "third"}.get(n, f"{n}th")


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _describe_handler(signum: int, handler: object) -> str:
    """Name what replaced a handler, for a log line."""
    if handler is None:
        return "a handler installed outside Python"
    if handler == signal.SIG_DFL:
        return "SIG_DFL (the default action)"
    if handler == signal.SIG_IGN:
        return "SIG_IGN (ignored)"
    name = getattr(handler, "__qualname__", None) or repr(handler)
    module = getattr(handler, "__module__", None) or ""
    if name == "_sighandler_noop" or module.startswith(("asyncio", "uvloop")):
        # the loop's add_signal_handler(): its callback is what replaced ours
        callback: object = None
        with suppress(Exception):
            import asyncio

            handlers = getattr(asyncio.get_running_loop(), "_signal_handlers", None)
            entry = handlers.get(signum) if isinstance(handlers, dict) else None
            callback = getattr(entry, "_callback", None)
        if callback is not None:
            return f"loop.add_signal_handler({_signal_name(signum)}, {_callable_text(callback)})"
        return "the event loop's add_signal_handler()"
    return _callable_text(handler)


def _callable_text(fn: object) -> str:
    name = getattr(fn, "__qualname__", None)
    module = getattr(fn, "__module__", None)
    if name is None:
        return repr(fn)
    return f"{module}.{name}" if module else str(name)


# ------------------------------------------------------------------------ exit now


def _exit_now(signum: int, count: int) -> NoReturn:
    """Leave the process at once, killed by ``signum`` as if nobody had handled it.

    Runs in the raw signal handler: no logging (its locks), no flushing (a full pipe
    would block), only a direct write to fd 2.  Dying by the signal (not ``exit(n)``)
    is what shells and supervisors understand as "interrupted" (128 + n in a shell).
    """
    with suppress(Exception):
        os.write(
            2,
            f"stopscope: {_signal_name(signum)} ({_ordinal(count)} signal): "
            f"exiting at once\n".encode(),
        )
    try:
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)
    finally:
        os._exit(128 + signum)  # the signal's default action is not to terminate


def _redeliver(signums: list[int]) -> None:
    """Raise each signal again, for the handler that is now installed."""
    if not signums:
        return
    try:
        signal.raise_signal(signums[0])
    finally:
        _redeliver(signums[1:])


# ------------------------------------------------------------------- the trap


def _foreign(handler: _Handler) -> bool:
    """Whether a handler is a server's, to pass signals on to (uvicorn's ``handle_exit``,
    gunicorn's or hypercorn's, a GracefulApp's); any other handler is replaced, as
    before, while the trap is open."""
    if not callable(handler):
        return False
    module = getattr(handler, "__module__", None) or ""
    return module.split(".")[0] in _SERVERS or module == "stopscope.asgi._hooks"


#: the traps open in this process, in the order they were entered: only the innermost
#: one that handles a signal takes its handler back (an enclosing one would take the
#: inner trap's handler for a library's, and the two would re-chain each other for ever)
_open_stack: list[SignalTrap] = []

#: the packages whose signal handlers a trap passes signals on to
_SERVERS: Final = frozenset({"uvicorn", "uvicorn_worker", "gunicorn", "hypercorn", "granian"})


@final
class SignalTrap:
    """The async context manager :func:`stop_on_signals` returns.

    After (or during) the block it tells what happened: :attr:`received` and
    :attr:`cancelled`.  It may be used for a single ``async with`` block.
    """

    __slots__ = (
        "_after",
        "_arrived_at",
        "_cancel_cause",
        "_chained",
        "_clock",
        "_close_wakeup",
        "_console",
        "_count",
        "_cut_count",
        "_cut_records",
        "_delivered",
        "_escalation",
        "_first_at",
        "_grace",
        "_grace_armed",
        "_hop",
        "_installed",
        "_label",
        "_notifier",
        "_pending",
        "_previous",
        "_received",
        "_relaying",
        "_scope",
        "_signals",
        "_state",
        "_stop",
        "_token",
        "_watch_done",
    )

    def __init__(
        self,
        stop: StopSignal,
        signals: tuple[signal.Signals, ...],
        grace: float | None,
        escalation: tuple[Action, ...],
        label: str,
        notifier: _SystemdNotifier | None = None,
        console: _StderrFallback | None = None,
        # (the frame as Any: strict Sphinx cannot link types.FrameType in the signature)
        after: Callable[[int, Any], None] | None = None,
    ) -> None:
        self._stop = stop
        #: under run(): the handler left in place of the previous ones when the block
        #: ends (run() counts on the signals that come until its exit, then restores)
        self._after = after
        self._notifier = notifier
        #: under run(): says the first signal on stderr when logging is not set up
        self._console = console
        #: time.monotonic() when the first signal arrived (the raw handler notes it: the
        #: loop may act on it later, if something blocks it), and when it was acted on
        self._arrived_at: float | None = None
        self._first_at: float | None = None
        # members of the scopes that exited in the block that needed cancellation: how
        # many, and the first few (a long-running service may open scopes per request)
        self._cut_count = 0
        self._cut_records: list[TaskRecord] = []
        self._signals = signals
        self._grace = grace
        self._escalation = escalation
        self._label = label
        self._state = "new"
        self._count = 0  # signals seen by the raw handler
        self._delivered = 0  # signals acted on by the loop
        self._pending: deque[int] = deque()  # caught, not yet acted on
        self._received: list[signal.Signals] = []
        self._previous: dict[signal.Signals, _Handler] = {}
        #: the previous handlers that belong to someone else (a server's): each signal
        #: is passed on to them, on the loop, so the server still hears it
        self._chained: dict[int, Callable[[int, FrameType | None], Any]] = {}
        self._scope: anyio.CancelScope | None = None
        self._hop: Callable[[Callable[[], object]], object] | None = None
        self._clock: Callable[[], float] | None = None
        self._grace_armed = False
        self._cancel_cause: str | None = None
        #: undoes what the backend did so that a signal wakes the loop (None: nothing)
        self._close_wakeup: Callable[[], None] | None = None
        self._token: contextvars.Token[tuple[_Trap, ...]] | None = None
        #: the handler this trap last installed for each signal (its own, or a chain)
        self._installed: dict[signal.Signals, Callable[[int, FrameType | None], None]] = {}
        #: signals whose replacement handler a chain is calling right now
        self._relaying: set[int] = set()
        #: set when the block ends: the thread that watches the handlers stops
        self._watch_done: threading.Event | None = None

    @property
    def received(self) -> tuple[signal.Signals, ...]:
        """The signals acted on so far, in order of arrival."""
        return tuple(self._received)

    @property
    def cancelled(self) -> bool:
        """Whether this trap cancelled the block (a second signal, or grace ran out)."""
        return self._scope is not None and self._scope.cancel_called

    def __repr__(self) -> str:
        names = ", ".join(s.name for s in self._signals)
        return f"<SignalTrap {self._state} signals=({names}) received={len(self._received)}>"

    # -- entering and leaving ---------------------------------------------------

    async def __aenter__(self) -> SignalTrap:
        if self._state != "new":
            raise RuntimeError(
                "a stop_on_signals() trap may only be used for a single `async with` block; "
                "call stop_on_signals() again"
            )
        if self._signals and threading.current_thread() is not threading.main_thread():
            raise RuntimeError(
                "stop_on_signals() must run in the main thread: Python runs signal handlers "
                "only there, so run the event loop in the main thread"
            )
        backend = current()
        self._hop = backend.hop
        self._clock = backend.clock
        self._close_wakeup = backend.open_signal_wakeup()
        try:
            for signum in self._signals:
                handler = self._on_signal
                previous = signal.signal(signum, handler)
                self._previous[signum] = previous
                self._installed[signum] = handler
                if callable(previous) and _foreign(previous):
                    self._chained[signum] = previous
        except BaseException:
            self._uninstall()
            raise
        if self._signals:
            _open_stack.append(self)
            self._start_watch()
        self._scope = anyio.CancelScope().__enter__()
        self._state = "open"
        self._token = _open_traps.set((*_open_traps.get(), self))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        scope = self._scope
        assert scope is not None
        try:
            suppressed = scope.__exit__(exc_type, exc, tb)
        finally:
            self._state = "closed"
            self._uninstall()
            self._leave_context()
        if scope.cancelled_caught:
            cause = self._cancel_cause or (
                f"it did not finish within the service's grace ({self._grace:g} s) after "
                f"{self._received[0].name if self._received else 'the signal'}"
            )
            logger.warning("%s was cancelled: %s", self._label, cause)
        return bool(suppressed)

    def _uninstall(self) -> None:
        # From here on _deliver does nothing; what it did not get to is redelivered.
        self._state = "closed"
        with suppress(ValueError):
            _open_stack.remove(self)
        done, self._watch_done = self._watch_done, None
        if done is not None:
            done.set()
        self._installed.clear()
        after = self._after
        for signum, previous in reversed(self._previous.items()):
            with suppress(OSError, ValueError, TypeError):
                # None: the previous handler was not installed from Python; SIG_DFL is
                # the closest we can give back
                if after is not None:
                    previous = after
                signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()
        self._chained.clear()
        self._close_wakeup_fd()
        leftover = list(self._pending)
        self._pending.clear()
        _redeliver(leftover)

    def _leave_context(self) -> None:
        token, self._token = self._token, None
        if token is None:
            return
        try:
            _open_traps.reset(token)
        except (ValueError, RuntimeError):  # left in another context than it was entered
            _open_traps.set(tuple(t for t in _open_traps.get() if t is not self))

    # -- the wake-up fd (the backend decides: plain asyncio needs one) ------------

    def _close_wakeup_fd(self) -> None:
        close, self._close_wakeup = self._close_wakeup, None
        if close is not None:
            close()

    # -- signal handling ---------------------------------------------------------

    def _action(self, n: int) -> Action:
        return self._escalation[min(n, len(self._escalation)) - 1]

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """The raw handler: count, exit at once if that is the action, else queue."""
        if signum in self._relaying:
            return  # a replacement that chains to us, called by our chain: counted
        self._count_signal(signum)

    def _count_signal(self, signum: int) -> None:
        if self._arrived_at is None:
            self._arrived_at = time.monotonic()
        self._count += 1
        if self._action(self._count) == "exit":
            _exit_now(signum, self._count)
        self._pending.append(signum)
        hop = self._hop
        if hop is not None:
            # the loop is gone: __aexit__ hands the signal to the previous handler
            with suppress(Exception):
                hop(self._deliver)

    # -- a handler replaced inside the block ---------------------------------------

    def _start_watch(self) -> None:
        """Watch, from a thread, that nobody replaces this trap's handlers.

        A library that installs its own handler inside the block (``uvicorn``,
        ``aiohttp``, ``hypercorn`` call ``loop.add_signal_handler``; trio code opens
        ``trio.open_signal_receiver``) silently takes the signal: no graceful stop, no
        escalation, no exit at once.  Reading a handler is allowed on any thread and
        costs nothing, so a thread reads them twice a second in real time (a loop
        timer would wake the loop, and make a virtual clock jump for ever); only when
        one changed does it hand the check to the loop (:meth:`_check_handlers`).
        """
        done = self._watch_done = threading.Event()
        hop = self._hop
        installed = self._installed

        def watch() -> None:
            while not done.wait(_WATCH_PERIOD):
                try:
                    changed = any(
                        signal.getsignal(signum) is not handler
                        for signum, handler in list(installed.items())
                    )
                    if changed and hop is not None and not done.is_set():
                        hop(self._check_handlers)
                except Exception:  # the loop is gone: the block is ending
                    return

        thread = threading.Thread(target=watch, name="stopscope signal watch", daemon=True)
        # The thread must never receive the signals: the kernel may hand a process
        # signal to any thread that does not block it, and the main thread, maybe
        # stuck in a blocking call, would then not be interrupted to run our handler.
        # A new thread inherits its creator's mask: block them around the start.
        block = getattr(signal, "pthread_sigmask", None)
        if block is None:  # pragma: no cover - Windows: no per-thread delivery
            thread.start()
            return
        previous = block(signal.SIG_BLOCK, self._signals)
        try:
            thread.start()
        finally:
            block(signal.SIG_SETMASK, previous)

    def _check_handlers(self) -> None:
        """On the loop (main thread): take back a signal whose handler was replaced.

        A replacement that is a Python callable is chained: this trap's handler is put
        back, and calls it after doing its own work, so both keep working (a loop's
        ``add_signal_handler`` callbacks still run, through the loop's wake-up fd).
        ``SIG_DFL``, ``SIG_IGN`` or :func:`signal.default_int_handler` (a library that
        removed its handler) is simply replaced by this trap's again.  Each replacement
        is logged once, as a WARNING.
        """
        if self._state != "open":
            return
        inner: set[int] = set()
        if self in _open_stack:
            for trap in _open_stack[_open_stack.index(self) + 1 :]:
                inner.update(trap._installed)
        for signum, expected in list(self._installed.items()):
            if signum in inner:
                continue  # a trap entered inside this block owns it until it ends
            current = signal.getsignal(signum)
            if current is expected:
                continue
            if current == self._on_signal or getattr(current, "_stopscope_trap", None) is self:
                # our own handler or chain, put back by whoever replaced it (trio does)
                self._installed[signum] = current  # type: ignore[assignment]
                continue
            what = _describe_handler(signum, current)
            # Python's own SIGINT handler (what asyncio's remove_signal_handler puts
            # back) is a default, as SIG_DFL: chained, it would raise KeyboardInterrupt
            # at a random point of the program instead of a graceful stop
            if callable(current) and current is not signal.default_int_handler:
                handler = self._chain(signum, current)
                outcome = f"{self._label} keeps handling {signum.name}: both run on each signal"
            else:
                handler = self._on_signal
                outcome = f"{self._label} handles {signum.name} again"
            try:
                signal.signal(signum, handler)
            except (OSError, ValueError, TypeError) as exc:
                logger.warning(
                    "%s: the handler of %s was replaced by %s; it could not be taken "
                    "back (%s): a stop signal may be missed",
                    signum.name,
                    self._label,
                    what,
                    exc,
                )
                del self._installed[signum]
                continue
            self._installed[signum] = handler
            logger.warning(
                "%s: the handler of %s was replaced by %s; %s",
                signum.name,
                self._label,
                what,
                outcome,
            )

    def _chain(
        self, signum: signal.Signals, theirs: Callable[[int, FrameType | None], Any]
    ) -> Callable[[int, FrameType | None], None]:
        """This trap's handler, then ``theirs`` (which may call back into ours)."""
        relaying = self._relaying
        inside = False  # theirs is running, called by this chain

        def chained(signum: int, frame: FrameType | None) -> None:
            nonlocal inside
            if inside:
                # Python calls the installed handler (this one) for a new signal that
                # arrives while theirs runs; theirs calling back the handler it
                # replaced reaches _on_signal or an older chain.  Count it: a stuck
                # handler must not swallow the escalation.
                self._count_signal(signum)
                return
            if signum in relaying:
                return  # theirs chains to the handler it replaced: an older chain
            self._on_signal(signum, frame)
            relaying.add(signum)
            inside = True
            try:
                theirs(signum, frame)
            finally:
                inside = False
                relaying.discard(signum)

        chained._stopscope_trap = self  # type: ignore[attr-defined]

        return chained

    def _deliver(self) -> None:
        """On the loop: act on the queued signals, in order."""
        while self._state == "open" and self._pending:
            signum = signal.Signals(self._pending.popleft())
            self._delivered += 1
            if self._first_at is None:  # the summary counts from the signal's arrival
                self._first_at = self._arrived_at or time.monotonic()
            self._received.append(signum)
            if self._delivered == 1 and self._notifier is not None:
                self._notify_stopping(signum)
            self._perform(self._action(self._delivered), signum)
            chained = self._chained.get(signum)
            if chained is not None:
                chained(signum, None)  # the server we run inside hears it too

    def _perform(self, action: Action, signum: signal.Signals) -> None:
        scope = self._scope
        assert scope is not None
        assert self._clock is not None
        n = self._delivered
        after = self._what_next(n + 1)
        if action == "stop":
            self._stop.set(signum)
            if self._grace is not None and not self._grace_armed:
                self._grace_armed = True
                scope.deadline = min(scope.deadline, self._clock() + self._grace)
            if n == 1:
                limit = (
                    ""
                    if self._grace is None
                    else f" within the service's grace of {self._grace:g} s (each TaskScope "
                    f"inside keeps its own)"
                )
                message = f"{signum.name}: stopping {self._label} gracefully{limit}; {after}"
                logger.info("%s", message)
                if self._console is not None:
                    self._console.say(logging.INFO, message)
            else:
                logger.info("%s (%s signal): already stopping; %s", signum.name, _ordinal(n), after)
        elif action == "cancel":
            self._stop.set(signum)
            if self._cancel_cause is None:
                self._cancel_cause = f"{signum.name} was the {_ordinal(n)} signal"
            scope.cancel()
            logger.warning(
                "%s (%s signal): cancelling %s; %s", signum.name, _ordinal(n), self._label, after
            )

    def _notify_stopping(self, signum: signal.Signals) -> None:
        assert self._notifier is not None
        fields = ["STOPPING=1", f"STATUS=stopping on {signum.name}"]
        if self._action(1) == "stop" and self._grace is not None:
            # the drain is legitimate for the grace, and cancelled code needs to unwind
            usec = int((self._grace + _UNWIND_ALLOWANCE) * 1_000_000)
            fields.append(f"EXTEND_TIMEOUT_USEC={usec}")
        self._notifier.send(*fields)

    def _note_cut_short(self, records: tuple[TaskRecord, ...]) -> None:
        self._cut_count += len(records)
        self._cut_records.extend(records[: max(0, _CUT_RECORDS_KEPT - len(self._cut_records))])

    def _explains(self, returncode: int) -> signal.Signals | None:
        """The signal this trap caught (acted on or not yet) that a child's exit status
        says it ended by: killed by it (``-n``), ``128 + n`` (a shell, a JVM), or 0."""
        if self._state != "open":
            return None
        for signum in (*self._received, *tuple(self._pending)):
            if returncode in (0, -signum, 128 + signum):
                return signal.Signals(signum)
        return None

    def _what_next(self, n: int) -> str:
        action = self._action(n)
        which = "a second" if n == 2 else "a third" if n == 3 else "another"
        if action == "exit":
            return f"{which} signal exits at once"
        if action == "cancel":
            return f"{which} signal cancels it"
        return "further signals change nothing"


# ------------------------------------------------------------ systemd notification


@final
class _SystemdNotifier:
    """Sends ``sd_notify`` datagrams to ``NOTIFY_SOCKET`` (a path, or ``@name`` for an
    abstract socket).  Never raises: a service must not fail because its manager went
    away; the first failure is logged."""

    __slots__ = ("_address", "_failed", "_sock")

    def __init__(self, address: str | bytes) -> None:
        self._address = address
        self._sock: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_environment(cls) -> _SystemdNotifier | None:
        value = os.environ.get("NOTIFY_SOCKET", "")
        if not value or not hasattr(socket, "AF_UNIX"):
            return None
        if value.startswith("@"):
            return cls("\0" + value[1:])  # abstract namespace (Linux)
        if value.startswith("/"):
            return cls(value)
        logger.warning(
            "NOTIFY_SOCKET=%r is not a unix socket path or @name; not notifying systemd",
            value,
        )
        return None

    def send(self, *fields: str) -> bool:
        """Send one datagram of ``KEY=value`` lines; whether it was sent."""
        payload = "\n".join(fields).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
            self._sock.sendto(payload, self._address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                logger.warning("could not notify systemd (%s): %s", ", ".join(fields), exc)
            return False
        return True

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


@final
class _ReadyStatus(anyio.abc.TaskStatus[None]):
    """The ``task_status`` :func:`run` gives ``main`` with ``ready="task_status"``."""

    __slots__ = ("_notifier", "_started")

    def __init__(self, notifier: _SystemdNotifier | None) -> None:
        self._notifier = notifier
        self._started = False

    def started(self, value: None = None) -> None:
        if self._started:
            raise RuntimeError("task_status.started() was already called")
        self._started = True
        if self._notifier is not None:
            self._notifier.send("READY=1", "STATUS=ready")


def stop_on_signals(
    sig: StopSignal,
    *signals: int | str,
    grace: float | None = None,
    escalation: Sequence[Action] = DEFAULT_ESCALATION,
) -> SignalTrap:
    """Turn OS signals into a graceful stop for the ``async with`` block.

    ::

        sig = StopSignal()
        async with stop_on_signals(sig, SIGINT, SIGTERM):
            async with TaskScope(signal=sig) as scope:
                scope.start_soon(worker, scope.signal)
                await sig.wait()

    The first signal sets ``sig`` (the reason is the :class:`signal.Signals` member), a
    second cancels the block (which then ends as a ``move_on_after`` would: execution
    continues after it), a third exits the process at once, by that signal, even if
    the event loop is stuck in a blocking call.  The handlers that were installed
    before are restored on exit; a signal caught but not yet acted on when the block
    ends is raised again for them.  A server's handler installed before (uvicorn's,
    gunicorn's or hypercorn's, as inside an app's lifespan; a ``GracefulApp``'s)
    still hears every signal: it is called on the loop after the trap's own action, so
    the block never keeps the server it runs inside from stopping.

    Must run in the main thread (Python delivers signals only there).

    :param signals: the signals to handle (default: SIGINT and SIGTERM), as
        :class:`signal.Signals` or by name (``"SIGTERM"``)
    :param grace: after the first signal, cancel the block if it has not ended within
        this many seconds; ``None`` waits for the next signal
    :param escalation: what the first, second, ... signal does: ``"stop"``,
        ``"cancel"`` or ``"exit"``; the last action repeats.  ``("stop",)`` never
        escalates; ``("stop", "exit")`` skips hard cancellation.
    :raises ValueError: for a bad ``grace``, ``escalation`` or signal
    """
    if not isinstance(sig, StopSignal):
        raise TypeError(f"stop_on_signals() needs a StopSignal first, got {sig!r}")
    return SignalTrap(
        sig,
        _check_signals(signals or DEFAULT_SIGNALS),
        _check_grace(grace),
        _check_escalation(escalation),
        "the `async with stop_on_signals()` block",
    )


# ------------------------------------------------------------------------- run()


class _CurrentStderr(logging.Handler):
    """Writes each record to ``sys.stderr`` as it is when the record comes (a test
    runner or an application may have replaced it since the handler was made)."""

    def emit(self, record: logging.LogRecord) -> None:
        self._write(record)

    def _write(self, record: logging.LogRecord) -> None:
        stream = sys.stderr
        if stream is None:
            return
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


class _StderrFallback(_CurrentStderr):
    """Under :func:`run`: write stopscope's warnings to stderr if no handler would.

    Checked per record, so an application that configures logging later (inside
    ``main``) takes over from then on, with no duplicate lines.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))

    def say(self, level: int, message: str) -> None:
        """Write one line in this handler's format, whatever the logger's level, if the
        application has set up no logging at all (then it sees its own handlers')."""
        record = logger.makeRecord(logger.name, level, __file__, 0, "%s", (message,), None)
        if self._handled_elsewhere(record, any_level=True):
            return
        self._write(record)

    def emit(self, record: logging.LogRecord) -> None:
        if self._handled_elsewhere(record):
            return
        self._write(record)

    def _handled_elsewhere(self, record: logging.LogRecord, any_level: bool = False) -> bool:
        current: logging.Logger | None = logging.getLogger(record.name)
        while current is not None:
            for handler in current.handlers:
                if (
                    handler is not self
                    and not isinstance(handler, logging.NullHandler)
                    and (any_level or record.levelno >= handler.level)
                ):
                    return True
            if not current.propagate:
                break
            current = current.parent
        return False


def _leave_abandoned_threads(code: int) -> None:
    """Exit now if abandoned thread members would keep the interpreter from exiting.

    Python waits for non-daemon threads at exit, and asyncio's worker threads are not
    daemon threads: a thread that ignored its stop would hold the process until the
    orchestrator kills it.  Nothing can stop such a thread, so leave without it.
    """
    alive = sorted(
        name
        for thread, name in list(_abandoned_threads.items())
        if thread.is_alive() and not thread.daemon
    )
    if not alive:
        return
    logger.warning(
        "thread member(s) %s ignored the stop and are still running; exiting without "
        "waiting for them",
        ", ".join(repr(n) for n in alive),
    )
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):
            if stream is not None:
                stream.flush()
    os._exit(code)


def _summary(
    console: _StderrFallback,
    trap: SignalTrap | None,
    label: str,
    ended: str,
    code: int | None,
    timeline: Timeline,
) -> None:
    """After a stop signal: one line on how ``main`` ended, and the exit status (INFO,
    and on stderr if logging is not set up, as the first signal's line).  With a
    budget, the line ends with how much of it each phase used.  The record carries the
    stop as fields (``extra``), built only when a handler may take it."""
    if trap is None or trap._first_at is None or not trap._received:
        return
    first = trap._received[0].name
    now = time.monotonic()
    took = now - trap._first_at
    status = "" if code is None else f"; exit status {code}"
    message = f"{label} {ended} {took:.3g} s after {first}{status}"
    timeline.started_at = trap._first_at  # the service's stop began at its first signal
    if timeline.budget is not None:
        message += f"; {timeline.text(now)}"
    if logger.isEnabledFor(logging.INFO):
        fields = _service_fields(trap, label, ended, code, took, timeline, now)
        logger.info("%s", message, extra={LOG_FIELD: fields})
    console.say(logging.INFO, message)


def _service_fields(
    trap: SignalTrap,
    label: str,
    ended: str,
    code: int | None,
    took: float,
    timeline: Timeline,
    now: float,
) -> dict[str, Any]:
    """The structured form of the service's stop (see docs/observability.md)."""
    fields: dict[str, Any] = {
        "event": "service.stopped",
        "service": label,
        "ended": ended.replace(" ", "_"),
        "signal": trap._received[0].name,
        "signals": [s.name for s in trap._received],
        "reason": f"Signals.{trap._received[0].name}",
        "grace": trap._grace,
        "cancelled": trap.cancelled,
        "exit_status": code,
        "took": round(took, 6),
        "cut_short": trap._cut_count,
        "cut_short_members": [r.to_dict() for r in trap._cut_records],
    }
    fields.update(timeline.to_dict(now))
    return fields


class _Outcome:
    __slots__ = ("result", "returned", "trap")

    def __init__(self) -> None:
        self.returned = False
        self.result: Any = None
        self.trap: SignalTrap | None = None


@final
class _AfterMain:
    """Under :func:`run`: the handler of the service's signals from the end of the
    trap's block (which leaves it in place of the previous handlers) until ``run()``
    has flushed its telemetry and puts the previous handlers back.

    The signals keep their escalation there, counted on from those the trap acted on
    (a signal it caught but had not acted on when the block ended is raised again,
    for this handler): "exit" exits at once; the others are noted, for the flush to
    act on.  Without it, a signal in the loop's teardown met Python's handlers (a
    ``KeyboardInterrupt``, a silent death by SIGTERM)."""

    __slots__ = ("_originals", "actions", "got", "handler", "outcome")

    def __init__(
        self, signums: tuple[signal.Signals, ...], actions: tuple[Action, ...], outcome: _Outcome
    ) -> None:
        self.actions = actions
        self.outcome = outcome
        #: (count, signal) of each signal that came, in order
        self.got: list[tuple[int, signal.Signals]] = []
        #: the one handler object installed (restore() knows it by identity)
        self.handler: Callable[[int, FrameType | None], None] = self._on_signal
        self._originals = {signum: signal.getsignal(signum) for signum in signums}

    def action(self, n: int) -> Action:
        return self.actions[min(n, len(self.actions)) - 1]

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        trap = self.outcome.trap
        assert trap is not None  # the trap installs this handler as its block ends
        count = trap._delivered + len(self.got) + 1
        if self.action(count) == "exit":
            _exit_now(signum, count)
        self.got.append((count, signal.Signals(signum)))

    def cut(self) -> bool:
        """Whether a signal asked to cut short what runs now."""
        return any(self.action(n) == "cancel" for n, _ in self.got)

    def restore(self) -> None:
        """Put back the handlers found before run() (where this one is installed)."""
        for signum, handler in self._originals.items():
            with suppress(OSError, ValueError, TypeError):
                if signal.getsignal(signum) is self.handler:
                    signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def _flush_telemetry(
    timeline: Timeline, after: _AfterMain | None, console: _StderrFallback
) -> signal.Signals | None:
    """``main`` is done: stopscope.otel exports the stop, within its reserve (if on);
    the time it took is the budget's "telemetry flush" phase.

    The trap's handlers are gone by then, yet the service's signals keep their
    escalation (``after``): a signal whose action is "stop" lets the flush go on,
    "cancel" cuts it short, "exit" exits at once.

    :return: if a signal cut the flush short, the first signal that came after ``main``
    """
    observer = _scope._observer
    if observer is None:
        return None
    if after is None:
        began = time.monotonic()
        try:
            observer.at_exit()
        finally:
            timeline.add("telemetry flush", time.monotonic() - began)
        return None
    got = after.got
    said = 0

    def say_going_on() -> None:
        nonlocal said
        for n, signum in got[said:]:
            if after.action(n) != "stop":
                return
            said += 1
            message = (
                f"{signum.name} ({_ordinal(n)} signal) during the telemetry flush: it goes "
                f"on, within its reserve; {'a second' if n == 1 else 'another'} signal cuts "
                f"it short"
            )
            logger.info("%s", message)
            console.say(logging.INFO, message)

    began = time.monotonic()
    try:
        # on a thread of its own, waited for in slices: the kernel may hand the signal
        # to any thread, and a main thread blocked in a lock would run the handler only
        # once the whole reserve is spent
        flusher = threading.Thread(
            target=observer.at_exit, name="stopscope telemetry flush", daemon=True
        )
        flusher.start()
        while flusher.is_alive() and not after.cut():
            flusher.join(_FLUSH_POLL)
            say_going_on()
        # decided once: a signal once the flush is over cuts nothing
        cut = flusher.is_alive()
    finally:
        took = time.monotonic() - began
        timeline.add("telemetry flush", took)
    say_going_on()
    if not cut:
        return None
    n, signum = got[said]
    logger.warning(
        "%s (%s signal) during the telemetry flush: cut short after %.3g s; what had not "
        "left is lost",
        signum.name,
        _ordinal(n),
        took,
    )
    return got[0][1]


def _check_flush_reserve(budget: float | None, reserve: float) -> None:
    """With a budget, the telemetry flush (stopscope.otel, if on) must fit ``reserve``."""
    observer = _scope._observer
    if budget is None or observer is None:
        return
    flush = float(observer.reserve)
    if flush > reserve:
        raise ValueError(
            f"run(): stopscope.otel may spend {_fmt(flush)} flushing telemetry after the "
            f"stop, more than `reserve` ({_fmt(reserve)}): raise `reserve` to at least "
            f"{_fmt(flush)} (and keep grace + reserve within the budget), or pass a "
            f"smaller `flush_reserve` to stopscope.otel.instrument()"
        )


def run(
    main: Callable[[StopSignal, Unpack[PosArgsT]], Awaitable[T]],
    *args: Unpack[PosArgsT],
    backend: str = "asyncio",
    backend_options: dict[str, Any] | None = None,
    signals: Iterable[int | str] = DEFAULT_SIGNALS,
    grace: float | None = DEFAULT_GRACE,
    escalation: Sequence[Action] = DEFAULT_ESCALATION,
    fail_if_cut_short: bool = False,
    ready: Ready = "at_start",
    budget: float | None = None,
    reserve: float = DEFAULT_RESERVE,
) -> T:
    """Run ``main(signal, *args)`` as a service that stops gracefully on SIGINT/SIGTERM.

    ::

        async def main(signal: StopSignal) -> None:
            async with TaskScope(signal=signal, grace=10) as scope:
                scope.start_soon(consumer, scope.signal)
                await signal.wait()

        if __name__ == "__main__":
            stopscope.run(main, backend="trio")

    The first signal sets ``signal`` (reason: the :class:`signal.Signals` member);
    ``main`` then has ``grace`` seconds to return before it is cancelled.  A second
    signal cancels it at once; a third exits the process at once (see
    :func:`stop_on_signals`).  Previous signal handlers are restored on return.  While
    ``main`` runs, warnings of the ``stopscope`` logger (members cancelled after their
    grace, ...) reach stderr even if the application configured no logging.

    Exit status, for systemd and Kubernetes:

    * ``main`` returned (on its own, or after a signal, within grace): ``run()``
      returns what it returned, and the process exits 0 -- a graceful stop is a
      success, after SIGTERM and after SIGINT alike.  To exit otherwise, return a
      status from ``main`` and ``sys.exit(stopscope.run(main))``.
    * ``main`` had to be cancelled (grace ran out, or a second signal): ``run()``
      raises ``SystemExit(128 + n)``, ``n`` being the first signal's number (143
      after SIGTERM, 130 after SIGINT), which systemd and Kubernetes count as a
      failure: work may have been cut short.
    * ``main`` returned, but with ``fail_if_cut_short=True`` a member of a
      :class:`~stopscope.TaskScope` inside it (at any depth) had to be cancelled after
      its grace or was abandoned (``ShutdownReport.needed_cancellation``): ``run()``
      logs who and raises ``SystemExit(70)`` (:data:`EXIT_CUT_SHORT`, ``EX_SOFTWARE``),
      so that an orchestrator can alert on it.  The default (``False``) keeps status 0:
      the scope already logged a warning for each such member.
    * a third signal: the process dies by that signal at once.
    * ``main`` raised: the exception propagates (status 1).

    The signals keep this escalation during the telemetry flush that follows ``main``
    (``stopscope.otel``): a second signal cuts the flush short, and ``run()`` raises
    ``SystemExit(128 + n)`` as after a hard stop.

    systemd (``Type=notify``): when ``NOTIFY_SOCKET`` is set (a path, or ``@name``),
    ``run()`` sends ``READY=1`` once ``main`` has started -- as it is called with
    ``ready="at_start"`` (the signal handlers are already in place), or when it calls
    ``task_status.started()`` with ``ready="task_status"``: ``main`` then takes a
    keyword ``task_status`` as an :meth:`anyio.abc.TaskGroup.start` target does (call
    it once the service accepts work, e.g. when the server listens).  On the first
    signal it sends ``STOPPING=1`` and, when ``main`` has a ``grace``,
    ``EXTEND_TIMEOUT_USEC`` for the grace plus 5 s to unwind, so that a
    ``TimeoutStopSec`` shorter than the drain does not kill it midway.  Without
    ``NOTIFY_SOCKET`` nothing is sent.

    If a thread member ignored its stop and is still running when ``main`` is done,
    ``run()`` exits the process with ``os._exit`` (after flushing stdio and logging)
    rather than wait for it forever at interpreter exit.

    :param backend: ``"asyncio"`` or ``"trio"``, as for :func:`anyio.run`, or
        ``"uvloop"``: asyncio with uvloop's loop (``use_uvloop`` in ``backend_options``)
    :param backend_options: as for :func:`anyio.run` (``{"use_uvloop": True}``)
    :param signals: the signals that stop the service
    :param grace: seconds ``main`` may take after the first signal; ``None`` waits
        until a second signal.  Keep it below the orchestrator's limit
        (``terminationGracePeriodSeconds``, ``TimeoutStopSec``).
    :param escalation: what successive signals do (see :func:`stop_on_signals`)
    :param fail_if_cut_short: exit with status 70 (:data:`EXIT_CUT_SHORT`) instead of 0
        when ``main`` returned but a scope member needed cancellation or was abandoned
    :param ready: when to send systemd ``READY=1``: ``"at_start"`` (as ``main`` is
        called) or ``"task_status"`` (``main(signal, *args, task_status=...)`` calls
        ``task_status.started()``)
    :param budget: the orchestrator's limit, seconds from the first signal to SIGKILL
        (Kubernetes' ``terminationGracePeriodSeconds`` less any ``preStop``, systemd's
        ``TimeoutStopSec``); ``None``: not checked.  ``run()`` checks at once that
        ``grace + reserve`` fits in it, and its summary line (and the structured log
        record) says how much of it each phase of the stop used
    :param reserve: seconds of the budget kept after the grace, for cancelled code to
        unwind, a lifespan shutdown or a telemetry flush, and the process exit
        (default 5)
    :raises SystemExit: after a stop that needed cancellation
    :raises RuntimeError: outside the main thread
    :raises ValueError: for a ``grace`` (or ``reserve``) that does not fit ``budget``:
        the message says which to shorten, and by how much
    """
    backend, backend_options = _check_backend(backend, backend_options)
    _check_main(main, args, ready == "task_status")
    signums = _check_signals(signals)
    grace = _check_grace(grace)
    budget_s, reserve_s = _check_budget(budget, reserve, grace, "run()")
    _check_flush_reserve(budget_s, reserve_s)
    actions = _check_escalation(escalation)
    if not isinstance(fail_if_cut_short, bool):
        raise TypeError(f"`fail_if_cut_short` must be True or False, got {fail_if_cut_short!r}")
    if ready not in ("at_start", "task_status"):
        raise ValueError(f"`ready` must be 'at_start' or 'task_status', got {ready!r}")
    if signums and threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "stopscope.run() must be called from the main thread: Python runs signal "
            "handlers only there (or pass signals=() to handle none)"
        )
    label = f"{getattr(main, '__qualname__', None) or 'main'}()"
    outcome = _Outcome()

    notifier = _SystemdNotifier.from_environment()

    fallback = _StderrFallback()

    timeline = Timeline(budget_s, reserve_s)
    after = _AfterMain(signums, actions, outcome) if signums else None

    async def runner() -> None:
        _timeline.set(timeline)  # the server members inside record their phases in it
        stop = StopSignal()
        trap = SignalTrap(
            stop,
            signums,
            grace,
            actions,
            label,
            notifier,
            fallback,
            after.handler if after is not None else None,
        )
        outcome.trap = trap
        async with trap:
            if ready == "task_status":
                call: Any = main
                awaitable = call(stop, *args, task_status=_ReadyStatus(notifier))
            else:
                if notifier is not None:
                    notifier.send("READY=1", "STATUS=running")
                awaitable = main(stop, *args)
            if not inspect.isawaitable(awaitable):
                raise TypeError(
                    f"`main` must be an async function (run() awaits what it returns); "
                    f"{label} returned {awaitable!r}"
                )
            outcome.result = await awaitable
            outcome.returned = True

    logger.addHandler(fallback)
    flush_cut: signal.Signals | None = None
    try:
        try:
            try:
                anyio.run(runner, backend=backend, backend_options=backend_options)
            finally:
                try:
                    flush_cut = _flush_telemetry(timeline, after, fallback)
                finally:
                    if after is not None:
                        after.restore()
        except Exception as exc:
            _summary(fallback, outcome.trap, label, "raised", None, timeline)
            if _abandoned_threads:
                sys.excepthook(type(exc), exc, exc.__traceback__)
                _leave_abandoned_threads(1)
            raise
        if outcome.returned:
            trap = outcome.trap
            if fail_if_cut_short and trap is not None and trap._cut_count:
                named = ", ".join(f"{r.name!r} {r.outcome.value}" for r in trap._cut_records)
                more = trap._cut_count - len(trap._cut_records)
                logger.warning(
                    "%s returned, but %d member(s) did not stop within their grace (%s%s); "
                    "exiting with status %d (fail_if_cut_short=True)",
                    label,
                    trap._cut_count,
                    named,
                    f", and {more} more" if more else "",
                    EXIT_CUT_SHORT,
                )
                _summary(fallback, trap, label, "returned", EXIT_CUT_SHORT, timeline)
                _leave_abandoned_threads(EXIT_CUT_SHORT)
                raise SystemExit(EXIT_CUT_SHORT)
            if flush_cut is not None:  # a hard stop of the flush: as after a second signal
                received = trap.received if trap is not None else ()
                code = 128 + (received[0] if received else flush_cut)
                _summary(fallback, trap, label, "returned", code, timeline)
                _leave_abandoned_threads(code)
                raise SystemExit(code)
            _summary(fallback, trap, label, "returned", 0, timeline)
            _leave_abandoned_threads(0)
            return outcome.result  # type: ignore[no-any-return]
        received = outcome.trap.received if outcome.trap is not None else ()
        code = 128 + received[0] if received else 1
        _summary(fallback, outcome.trap, label, "was cancelled", code, timeline)
        _leave_abandoned_threads(code)
        raise SystemExit(code)
    finally:
        logger.removeHandler(fallback)
        if notifier is not None:
            notifier.close()
