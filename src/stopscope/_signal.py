"""StopSignal: a one-shot, thread-safe stop request that async tasks and threads watch.

How it works, in brief (the why is in the comments below):

* All signals share one re-entrant lock.  Each signal keeps its *hooks* (waiting
  futures and tasks, blocked threads, callbacks, cancel scopes, and children that
  must stay alive) in an insertion-ordered dict.  ``set()`` claims the hooks of the
  whole subtree by swapping the dicts out under the lock, then wakes them outside it.
* A waiter is woken directly only from inside a task of its own loop.  From anywhere
  else (another thread, a signal handler while the loop sleeps, a loop callback) the
  wake goes through the loop's thread-safe call, which also wakes a sleeping selector.
  How a task parks, how it is woken, the timers and the clock are the backend's
  (``_backends/``: one object per asyncio loop or trio run); this module only keeps
  the hooks and says when to wake them.
* A signal handler that interrupts a critical section on the same thread cannot take
  the lock's protection for granted (the lock is re-entrant).  It only raises the
  flags and queues the signal; whoever leaves a critical section drains that queue.
  Which call sets a signal (the one ``set()`` that returns ``True``) is decided by one
  ``dict`` operation in ``_claims``, which a Python signal handler cannot split.
* A callback is run by whoever pops it from its handle's one-item list: ``set()``
  (it runs) or ``remove()`` (it never will).
* Children are held weakly by their parent unless they (or a descendant) have hooks;
  then they are *pinned* (held strongly) until they are set or the hooks go away.
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final, final

import anyio

from ._backends import (
    WAKE_INLINE,
    Backend,
    LoopCall,
    current,
    on_loop_thread,
    ops,
    running,
    wake_elsewhere,
)

__all__ = ["CallbackHandle", "StopSignal"]

logger: Final = logging.getLogger("stopscope")

_lock: Final = threading.RLock()
# Signals set by a signal handler that interrupted a critical section on this thread:
# their flags are raised, their hooks wait here until the lock holder leaves.
_pending: list[StopSignal] = []
_is_owned: Final[Callable[[], bool]] = _lock._is_owned  # type: ignore[attr-defined]
_get_ident: Final = threading.get_ident
_LockType: Final = type(threading.Lock())
_new_lock: Final = threading.Lock
_MISSING: Final = object()
_TIMEOUT_MAX: Final = threading.TIMEOUT_MAX

# The signals being set right now, each mapped to the call that is setting it.  A
# signal handler runs between two bytecodes, so a check of ``_flag`` followed by its
# write can be split by a handler that sets the same signal: both calls would win.
# The winner is decided instead by one dict operation (a handler cannot split it):
# store a token, check the flag again, write it, delete the entry.  A call that
# holds the lock and did not re-enter (a "main" call) has no rival below it on its
# stack, so it stores the constant ``_MAIN``; a handler's call (the lock is owned by
# the code it interrupted) uses ``setdefault`` with a token of its own and loses to
# whatever is there.  Entries live only while a flag is being written: no memory per
# signal.
_claims: dict[StopSignal, object] = {}
_MAIN: Final = object()


def _backend() -> str:
    """Name the async library running the current task ("asyncio" or "trio")."""
    return current().name


def _to_seconds(value: float) -> float:
    """``float(value)``, where an ``int`` too large for a float is as good as infinite
    (``math.inf``, or ``-math.inf`` below zero): each check then applies its own rule
    to infinity (wait forever, or refuse it naming the parameter)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _check_duration(value: float, name: str, positive: bool = False) -> float:
    """Validate a duration: an int, a float or another real number (``__float__``).

    A ``str``, ``bytes`` or ``bool`` raises ``TypeError`` (``float("1")`` would accept
    a string), as does anything else without ``__float__``.  A negative value (or 0,
    where ``positive``) raises ``ValueError``.
    """
    if type(value) is not float:
        if isinstance(value, bool) or not (
            isinstance(value, int) or hasattr(type(value), "__float__")
        ):
            raise TypeError(f"`{name}` must be a number of seconds, got {value!r}")
        try:
            value = _to_seconds(value)
        except (TypeError, ValueError):
            raise TypeError(f"`{name}` must be a number of seconds, got {value!r}") from None
    if math.isnan(value) or value < 0 or (positive and value == 0):
        kind = "positive" if positive else "non-negative"
        raise ValueError(f"`{name}` must be a {kind} number of seconds, got {value!r}")
    return value


# --------------------------------------------------------------------------- hooks


@final
class CallbackHandle:
    """Returned by :meth:`StopSignal.on_set`; :meth:`remove` deregisters the callback."""

    __slots__ = ("_callback", "_cell", "_runner", "_signal")

    def __init__(self, signal: StopSignal, callback: Callable[[object], object]) -> None:
        self._signal = signal
        self._callback = callback
        # Whoever pops the callback from this list decides: set() runs it, remove()
        # prevents it.  list.pop() is one C call: neither a thread switch nor a
        # signal handler can split it.
        self._cell = [callback]
        #: (thread id, lock held until it returns) while set() runs the callback
        self._runner: tuple[int, Any] | None = None

    @property
    def callback(self) -> Callable[[object], object]:
        return self._callback

    def remove(self) -> bool:
        """Deregister the callback: once this returns, it is not running and never will.

        A callback that :meth:`StopSignal.set` has claimed but not started yet is
        prevented too.  If ``set()`` is running it on another thread right now, this
        waits until it returns (as C++ ``std::stop_callback``'s destructor does), so
        what the callback uses may be freed afterwards.  Called from inside the
        callback itself, or from a signal handler that interrupted it, it returns at
        once (waiting would deadlock); the callback is then still running below.  So
        does a call from a signal handler that interrupted this library's own
        bookkeeping on its thread (the callback might need the lock held there).

        :return: ``True`` if this prevented the callback from running, ``False`` if it
            has run (or is running on this thread), or was removed already
        """
        sig = self._signal
        # In a signal handler that interrupted a critical section on this thread the
        # hook collections may be mid-update: leave the hook in place, inert (taking
        # the callback below is enough to keep it from ever running).
        in_section = _is_owned()
        if sig._hooks is not None and not in_section:
            with _lock:
                discarded = _discard_hook(sig, self)
            if _pending:
                _drain()
            if discarded:  # no set() will see it; another remove() may race for it
                return self._take()
        if self._take():  # claimed by set(), not started: it never will be
            return True
        runner = self._runner
        # set() runs it on another thread: wait for it, unless this is a signal
        # handler that interrupted a critical section here (the callback could need
        # the lock this thread holds: waiting might never end)
        if runner is not None and runner[0] != _get_ident() and not in_section:
            runner[1].acquire()
            runner[1].release()
        return False

    def _take(self) -> bool:
        try:
            self._cell.pop()
        except IndexError:
            return False
        return True

    def __repr__(self) -> str:
        return f"<CallbackHandle {self._callback!r} on {self._signal!r}>"


def _run_callback(handle: CallbackHandle, reason: object) -> BaseException | None:
    """Run one callback unless removed; log what it raises.

    Returns a BaseException to re-raise later.  The runner is published before the
    callback is taken, so a ``remove()`` that fails to take it finds whom to wait for.
    """
    done = _new_lock()
    done.acquire()
    handle._runner = (_get_ident(), done)
    try:
        try:
            callback = handle._cell.pop()
        except IndexError:  # remove() took it after set() claimed it
            return None
        try:
            callback(reason)
        except Exception:
            logger.exception("stop callback %r raised; other callbacks still run", callback)
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: log, finish, re-raise
            logger.exception("stop callback %r raised; other callbacks still run", callback)
            return exc
        return None
    finally:
        handle._runner = None
        done.release()


# ---------------------------------------------------------------- tree bookkeeping
# Everything below with a leading underscore runs with _lock held unless it says not.


def _pin_up(sig: StopSignal) -> None:
    """``sig`` just got its first hook: make each ancestor hold its child strongly."""
    parent = sig._parent
    while parent is not None:
        if sig._links is not None:  # several parents: walk them all
            _pin_links(sig)
            return
        hooks = parent._hooks
        if hooks is None:
            return
        was_empty = not hooks
        hooks[sig] = None
        if not was_empty:
            return
        sig, parent = parent, parent._parent


def _unpin_up(sig: StopSignal) -> None:
    """``sig`` lost its last hook: release it (and ancestors that held only it)."""
    parent = sig._parent
    while parent is not None:
        if sig._links is not None:
            _unpin_links(sig)
            return
        hooks = parent._hooks
        if hooks is None or hooks.pop(sig, _MISSING) is _MISSING or hooks:
            return
        sig, parent = parent, parent._parent


def _parents_of(sig: StopSignal) -> tuple[StopSignal, ...]:
    parent, links = sig._parent, sig._links
    if parent is None:
        return ()
    return (parent,) if links is None else (parent, *links)


def _pin_links(sig: StopSignal) -> None:
    """:func:`_pin_up` for a linked signal: every parent, and theirs, hold it strongly."""
    stack = [sig]
    while stack:
        node = stack.pop()
        for parent in _parents_of(node):
            hooks = parent._hooks
            if hooks is None:  # set: it holds nothing any more
                continue
            was_empty = not hooks
            hooks[node] = None
            if was_empty:  # the parent just got its first hook: pin it in turn
                stack.append(parent)


def _unpin_links(sig: StopSignal) -> None:
    """:func:`_unpin_up` for a linked signal: release it from every parent."""
    stack = [sig]
    while stack:
        node = stack.pop()
        for parent in _parents_of(node):
            hooks = parent._hooks
            if hooks is None or hooks.pop(node, _MISSING) is _MISSING or hooks:
                continue
            stack.append(parent)  # it held only this one: release it in turn


def _unlink(sig: StopSignal) -> None:
    """``sig`` is being set: no parent needs to hold it for its hooks any more."""
    for parent in _parents_of(sig):
        hooks = parent._hooks
        if hooks is not None and hooks.pop(sig, _MISSING) is not _MISSING and not hooks:
            _unpin_up(parent)


def _add_kid(parent: StopSignal, kid: StopSignal) -> None:
    """List ``kid`` (weakly) among the children ``set()`` walks; prune dead ones."""
    kids = parent._kids
    if kids is None:
        kids = parent._kids = []
    elif len(kids) >= parent._kids_limit:
        kids[:] = [r for r in kids if (k := r()) is not None and k._hooks is not None]
        parent._kids_limit = max(16, 2 * len(kids))
    kids.append(weakref.ref(kid))


def _add_hook(sig: StopSignal, hook: object) -> bool:
    """Register ``hook`` on ``sig``; ``False`` (nothing registered) if ``sig`` is set."""
    with _lock:
        hooks = sig._hooks
        if hooks is None or sig._flag:
            added = False
        else:
            if hooks:
                hooks[hook] = None
            else:
                hooks[hook] = None
                _pin_up(sig)
            added = True
    if _pending:
        _drain()
    return added


def _discard_hook(sig: StopSignal, hook: object) -> bool:
    """Remove ``hook`` if ``set()`` has not claimed it; say whether it was removed."""
    hooks = sig._hooks
    if hooks is None or hooks.pop(hook, _MISSING) is _MISSING:
        return False
    if not hooks:
        _unpin_up(sig)
    return True


def _remove_hook(sig: StopSignal, hook: object) -> bool:
    """Remove ``hook`` unless ``set()`` or a timer claimed it; say whether it was removed."""
    if sig._hooks is None:  # claimed: it never goes back
        return False
    with _lock:
        removed = _discard_hook(sig, hook)
    if _pending:
        _drain()
    return removed


def _claim(root: StopSignal, reason: object, out: list[dict[object, None]]) -> None:
    """Mark the subtree of ``root`` set and append each signal's hook dict to ``out``.

    Every child is in its parent's weak ``_kids`` list (pinned children are also in
    the parent's hooks, only to keep them alive), so the walk needs only the list.
    """
    parent = root._parent
    # root may be pinned in its parent because of hooks it is about to lose
    if root._links is not None:
        _unlink(root)
    elif (
        parent is not None
        and parent._hooks is not None
        and parent._hooks.pop(root, _MISSING) is not _MISSING
        and not parent._hooks
    ):
        _unpin_up(parent)
    stack = [root]
    while stack:
        sig = stack.pop()
        hooks = sig._hooks
        if hooks is None:
            continue
        if sig._links is not None and sig is not root:
            _unlink(sig)  # reached through one parent: the others must let it go
        if not sig._flag:
            _claims[sig] = _MAIN  # a handler's set() of this signal now loses
            try:
                if not sig._flag:  # (unless it won just before)
                    sig._reason = reason
                    sig._flag = True
            finally:  # never left behind, even by a KeyboardInterrupt
                del _claims[sig]
        sig._hooks = None
        if hooks:
            out.append(hooks)
        kids = sig._kids
        if kids:
            sig._kids = None
            for ref in kids:
                kid = ref()
                if kid is not None and kid._hooks is not None:
                    stack.append(kid)


def _mark_deferred(root: StopSignal, reason: object) -> bool:
    """Raise the flags of a subtree without touching its collections (signal handler).

    As in :func:`_claim`, every child is in its parent's ``_kids`` list.  A signal that
    a call lower on this thread's stack is setting is left to it (with its subtree).

    :return: whether this call set ``root``
    """
    token = object()
    won = False
    stack = [root]
    while stack:
        sig = stack.pop()
        if sig._flag or _claims.setdefault(sig, token) is not token:
            continue
        try:
            if sig.is_set():  # set by a call that finished just before the claim
                continue
            sig._reason = reason
            sig._flag = True
        finally:  # never left behind, even by a KeyboardInterrupt
            del _claims[sig]
        won = won or sig is root
        for ref in list(sig._kids or ()):
            kid = ref()
            if kid is not None:
                stack.append(kid)
    return won


def _drain() -> None:
    """Claim and wake what signal handlers queued (called without the lock)."""
    if _is_owned():
        return  # re-entered from a handler inside a critical section: the holder drains
    while _pending:
        with _lock:
            roots = _pending[:]
            del _pending[:]
            groups: list[dict[object, None]] = []
            for root in roots:
                _claim(root, root._reason, groups)
        _fire(groups)


# ------------------------------------------------------------------------- waking


def _fire(groups: list[dict[object, None]]) -> None:
    """Wake every claimed hook, each in the right context (called without the lock).

    The backend of the calling task wakes its own waiters and loop calls in place, in
    one pass (the common case); the waiters and calls of other loops go to theirs,
    through their thread-safe calls; then blocked threads are released and the
    callbacks run, here.
    """
    here = running()
    rest: list[Any] = []
    for hooks in groups:
        if here is not None:
            rest += here.wake_own(hooks)
        else:
            rest += hooks
    if not rest:
        return
    parked: list[Any] = []
    callbacks: list[CallbackHandle] = []
    for hook in rest:
        kind = type(hook)
        if kind is StopSignal:
            continue  # a pinned child: the claim walk reached it through _kids
        if kind is _LockType:
            hook.release()
        elif kind is CallbackHandle:
            callbacks.append(hook)
        else:
            parked.append(hook)
    if parked:
        wake_elsewhere(parked)
    pending_exc: BaseException | None = None
    for handle in callbacks:
        exc = _run_callback(handle, handle._signal._reason)
        if exc is not None and pending_exc is None:
            pending_exc = exc
    if pending_exc is not None:
        raise pending_exc


def _claim_expired(sig: StopSignal, waiter: object) -> bool:
    """A timed wait's deadline passed: take its hook unless ``set()`` claimed it first."""
    with _lock:
        claimed = _discard_hook(sig, waiter)
    if _pending:
        _drain()
    return claimed


ops.add_hook = _add_hook
ops.remove_hook = _remove_hook
ops.claim_expired = _claim_expired


# ------------------------------------------------------------------------ every()


@final
class _Every:
    """The iterator behind :meth:`StopSignal.every`."""

    __slots__ = ("_backend", "_deadline", "_done", "_period", "_signal", "_tick")

    def __init__(self, signal: StopSignal, period: float) -> None:
        self._signal = signal
        self._period = period
        self._tick = -1
        self._deadline = 0.0
        self._backend: Backend | None = None  # chosen at the first tick
        self._done = False

    def __aiter__(self) -> _Every:
        return self

    async def __anext__(self) -> int:
        signal = self._signal
        backend = self._backend
        if backend is None:  # the first tick, at once
            backend = self._backend = current()
            if signal._flag:
                self._done = True
                await backend.checkpoint()
                raise StopAsyncIteration
            self._deadline = backend.clock()
        elif self._done:
            raise StopAsyncIteration
        else:
            current_time = backend.clock()
            deadline = self._deadline + self._period
            if deadline <= current_time:  # the body overran: tick at once, no catch-up burst
                self._deadline = current_time
                await backend.checkpoint()
                stopped = signal._flag
            else:
                self._deadline = deadline
                if signal._flag:
                    stopped = True
                else:  # the timed wait, inline: one coroutine frame less per tick
                    parked = backend.park_until(signal, deadline)
                    if parked is None:  # set meanwhile
                        self._done = True
                        await backend.checkpoint()
                        raise StopAsyncIteration
                    woken, entry = parked
                    try:
                        stopped = await woken or signal._flag  # decided on resume
                    finally:
                        backend.unpark_timed(signal, woken, entry)
            if stopped:
                self._done = True
                raise StopAsyncIteration
        self._tick += 1
        return self._tick


# ------------------------------------------------------------------------ StopSignal


@final
class StopSignal:
    """A one-shot stop request, with a reason, that tasks and threads watch.

    ::

        sig = StopSignal()

        async def poller(sig: StopSignal) -> None:
            async for _ in sig.every(1.0):   # ends the moment sig is set
                await poll_once()

        sig.set("deploy")                    # from any thread or a signal handler

    A signal can be created with no event loop running.  :meth:`set` is safe from any
    thread and from a signal handler; waiters on every loop (asyncio, uvloop, trio,
    several loops in several threads) and blocked threads wake promptly.
    """

    __slots__ = (
        "__weakref__",
        "_flag",
        "_hooks",
        "_kids",
        "_kids_limit",
        "_links",
        "_parent",
        "_reason",
    )

    def __init__(self) -> None:
        self._flag = False
        self._reason: object = None
        self._hooks: dict[object, None] | None = {}
        self._kids: list[weakref.ref[StopSignal]] | None = None
        self._kids_limit = 16
        self._parent: StopSignal | None = None
        #: the parents after the first, for a signal made by linked()
        self._links: tuple[StopSignal, ...] | None = None

    # -- state -----------------------------------------------------------------

    def is_set(self) -> bool:
        """Return ``True`` once :meth:`set` has been called (here or on an ancestor)."""
        return self._flag

    @property
    def reason(self) -> object:
        """The reason given to the :meth:`set` call that set this signal; ``None`` before."""
        return self._reason

    def __bool__(self) -> bool:
        raise TypeError(
            "a StopSignal has no truth value; call sig.is_set() to test it, "
            "or `await sig.wait()` to wait for it"
        )

    def __repr__(self) -> str:
        if self._flag:
            return f"<StopSignal set reason={self._reason!r}>"
        return "<StopSignal not set>"

    # -- setting ---------------------------------------------------------------

    def set(self, reason: object = None) -> bool:
        """Request a stop; idempotent, and the first reason wins.

        Safe from any thread and from a signal handler.  Once it returns, this signal
        and all its children read as set.  Callbacks registered with :meth:`on_set`
        run inside this call; an ``Exception`` they raise is logged, never raised (a
        ``KeyboardInterrupt`` or ``SystemExit`` is logged too, and re-raised once every
        other callback has run: swallowing it would break Ctrl-C).

        :param reason: why (kept in :attr:`reason`; children get the same reason)
        :return: ``True`` only for the call that set the signal
        """
        if _is_owned():
            # A signal handler interrupted a critical section on this thread: the
            # collections may be mid-update, so only raise flags and queue the rest.
            # If the interrupted code is setting this very signal, it wins and this
            # returns False (the flag reads True once that call goes on).
            if self._flag or not _mark_deferred(self, reason):
                return False
            _pending.append(self)
            return True
        groups: list[dict[object, None]] | None = None
        with _lock:
            if self._flag:
                won = False
            else:
                # No set() is in progress below this one on this thread (the lock was
                # not owned): a plain store claims the signal against handlers.
                _claims[self] = _MAIN
                try:
                    won = not self._flag  # False if a handler set it before the claim
                    if won:
                        self._reason = reason
                        self._flag = True
                        if self._kids is None and self._parent is None:  # a lone signal
                            hooks = self._hooks
                            self._hooks = None
                            if hooks:
                                groups = [hooks]
                                if len(hooks) == 1:  # one waiter: the commonest case
                                    for hook in hooks:
                                        # woken here if a task of its loop is calling
                                        inline = WAKE_INLINE.get(type(hook))
                                        if inline is not None and inline(hook):
                                            groups = None
                        else:
                            groups = []
                            _claim(self, reason, groups)
                finally:
                    del _claims[self]
        if _pending:
            _drain()
        if groups:
            _fire(groups)
        return won

    # -- children --------------------------------------------------------------

    def child(self) -> StopSignal:
        """Return a new signal that is set when this one is (with the same reason).

        Setting the child leaves this signal alone.  A child of a set signal is born
        set.  This signal holds the child only weakly, unless the child has waiters or
        callbacks: ``sig.child().on_set(cb)`` fires.
        """
        kid = StopSignal()
        kid._parent = self
        with _lock:
            if self._flag or self._hooks is None:
                kid._flag = True
                kid._reason = self._reason
                kid._hooks = None
            else:
                _add_kid(self, kid)
        if _pending:
            _drain()
        return kid

    @classmethod
    def linked(cls, *parents: StopSignal) -> StopSignal:
        """Return a new signal that is set when any of ``parents`` is (with its reason).

        ::

            stop = StopSignal.linked(service_signal, client_gone)
            await download(stop)          # ends on a deploy or when the client leaves

        As .NET's ``CancellationTokenSource.CreateLinkedTokenSource``.  Setting it
        leaves the parents alone.  If a parent is already set, it is born set, with
        that parent's reason (the first such parent's).  The same no-leak rules as
        :meth:`child`: the parents hold it only weakly, unless it has waiters or
        callbacks (then every parent holds it until it is set or they go away), so
        ``StopSignal.linked(a, b).on_set(cb)`` fires, and a million short-lived
        linked signals that nobody waits on leave nothing behind.

        :raises TypeError: with no parent, or one that is not a :class:`StopSignal`

        .. versionadded:: 0.1
        """
        if not parents:
            raise TypeError("StopSignal.linked() needs at least one parent signal")
        for parent in parents:
            if not isinstance(parent, StopSignal):
                raise TypeError(f"StopSignal.linked() takes StopSignal parents, got {parent!r}")
        unique = tuple(dict.fromkeys(parents))  # the same parent twice is one parent
        kid = cls()
        with _lock:
            for parent in unique:
                if parent._flag or parent._hooks is None:
                    kid._flag = True
                    kid._reason = parent._reason
                    kid._hooks = None
                    break
            else:
                kid._parent = unique[0]
                if len(unique) > 1:
                    kid._links = unique[1:]
                for parent in unique:
                    _add_kid(parent, kid)
        if _pending:
            _drain()
        return kid

    # -- callbacks -------------------------------------------------------------

    def on_set(self, callback: Callable[[object], object]) -> CallbackHandle:
        """Run ``callback(reason)`` once, synchronously, inside the :meth:`set` call.

        If the signal is already set, the callback runs at once.  It may run on any
        thread, or in a signal handler: keep it short and hop to your loop yourself
        (``loop.call_soon_threadsafe``, ``TrioToken.run_sync_soon``).  Errors are
        logged on the ``stopscope`` logger, never raised.

        :return: a handle whose ``remove()`` deregisters the callback
        """
        if not callable(callback):
            raise TypeError(f"`callback` must be callable, got {callback!r}")
        handle = CallbackHandle(self, callback)
        if not _add_hook(self, handle):
            exc = _run_callback(handle, self._reason)
            if exc is not None:
                raise exc
        return handle

    # -- async waiting ---------------------------------------------------------

    async def wait(self) -> None:
        """Return once the signal is set.  Always a checkpoint, even if already set."""
        backend = current()
        if not self._flag:
            parked = backend.park(self)
            if parked is not None:
                try:
                    await parked
                finally:
                    if self._hooks is not None:  # set() did not claim it: cancelled
                        backend.unpark(self, parked)
                return
        await backend.checkpoint()

    async def sleep(self, seconds: float) -> bool:
        """Sleep for ``seconds``, or less if the signal is set meanwhile.

        The result is decided when the sleeping task runs again: if the signal is set
        by then, it is ``True``, even if the time ran out in the same loop turn (so
        ``sleep()`` never returns ``False`` while :meth:`is_set` is already ``True``).

        :param seconds: an ``int``, a ``float`` or another real number (one with
            ``__float__``); ``math.inf`` waits until set
        :return: ``True`` if the signal is set, ``False`` if the time ran out first
        :raises TypeError: if ``seconds`` is not a number (a ``str``, ``bytes`` or
            ``bool`` included)
        :raises ValueError: if ``seconds`` is negative or NaN
        """
        seconds = _check_duration(seconds, "seconds")
        backend = current()
        if self._flag or seconds == 0:
            await backend.checkpoint()
            return self._flag
        if seconds == math.inf:
            await self.wait()
            return True
        parked = backend.park_until(self, backend.clock() + seconds)
        if parked is None:  # set meanwhile
            await backend.checkpoint()
            return True
        woken, entry = parked
        try:
            # decided on resume: a timeout loses to a set() made before the task runs
            return await woken or self._flag
        finally:
            backend.unpark_timed(self, woken, entry)

    def every(self, period: float) -> AsyncIterator[int]:
        """Yield 0, 1, 2, ... at a fixed rate until the signal is set.

        The first tick comes at once.  The next deadline is ``max(previous deadline +
        period, now)``: no drift, and a body that overruns gets the next tick at once
        with no burst of catch-up ticks.  The loop ends the moment the signal is set,
        even in the middle of a wait.  Whether to tick is decided when the waiting task
        runs again: if the signal is set by then, the loop ends without another tick,
        even if the tick fell due in the same loop turn as the stop::

            async for tick in sig.every(5.0):
                await flush()

        It is a plain async iterator, not a generator: breaking out of the loop needs
        no ``aclosing()``.

        :raises TypeError: if ``period`` is not a number (``str``, ``bytes`` and
            ``bool`` included)
        :raises ValueError: if ``period`` is not a positive number of seconds
        """
        return _Every(self, _check_duration(period, "period", positive=True))

    # -- cancel scope ----------------------------------------------------------

    @contextmanager
    def cancel_scope(self) -> Iterator[anyio.CancelScope]:
        """An anyio cancel scope that is cancelled when the signal is set.

        Move-on semantics: the block is abandoned at its next checkpoint and execution
        continues after the ``with``; ``cs.cancelled_caught`` tells whether that
        happened::

            with sig.cancel_scope() as cs:
                data = await stream.receive()
            if cs.cancelled_caught:
                ...  # stopped while waiting
        """
        backend = current()
        with anyio.CancelScope() as scope:
            # a barrier: the waits inside the scope are woken after it is cancelled
            call = LoopCall(scope.cancel, backend, barrier=True)
            if not _add_hook(self, call):
                scope.cancel()
            try:
                yield scope
            finally:
                call.active = False
                _remove_hook(self, call)

    # -- threads ---------------------------------------------------------------

    def wait_blocking(self, timeout: float | None = None) -> bool:
        """Block this (non-async) thread until the signal is set or ``timeout`` passes.

        :return: whether the signal is set
        :raises RuntimeError: if called on a thread that runs an event loop (it would
            freeze the loop; use ``await sig.wait()`` there)
        :raises TypeError: if ``timeout`` is not a number or None (``str``, ``bytes``
            and ``bool`` included)
        :raises ValueError: if ``timeout`` is negative or NaN
        """
        if timeout is not None:
            timeout = _check_duration(timeout, "timeout")
        if on_loop_thread():
            raise RuntimeError(
                "wait_blocking() would freeze the event loop running on this thread; "
                "use `await sig.wait()` here, or call it from a worker thread"
            )
        if self._flag:
            return True
        lock = _new_lock()
        lock.acquire()
        if not _add_hook(self, lock):
            return True
        acquired = False
        try:
            acquired = lock.acquire(timeout=-1 if timeout is None else min(timeout, _TIMEOUT_MAX))
        finally:
            if not acquired:
                _remove_hook(self, lock)
        return self._flag
