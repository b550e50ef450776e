"""Virtual time for the kit: trio's ``MockClock`` and the ``looptime`` asyncio loop.

The switch is :func:`virtual_time`, applied to an ``anyio_backend`` value.  The kit
itself only asks whether the running loop is virtual (:func:`running_virtual`), and
keeps virtual time from jumping while a worker thread is busy (:class:`ThreadGuard`):
both fake clocks jump to the next deadline as soon as the loop is idle, and a loop
that waits for a thread *is* idle, so a file write taking 2 ms of real time would
otherwise let a 30 s grace period run out.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import anyio

from .._signal import _backend

if TYPE_CHECKING:
    import trio

__all__ = ["ThreadGuard", "running_virtual", "virtual_time"]

#: real seconds the loop naps, without moving virtual time, while a worker thread runs
_GUARD_NAP: Final = 0.0002
#: loop turns in which looptime only polls before it jumps to the next deadline (its
#: default, 42, gives threads and sockets a few more polls; the kit holds time still
#: while a thread is busy instead, and 42 idle turns per timer were 9 in 10 of an
#: exploration's loop turns: see benchmarks/bench_explore.py)
_NOOP_CYCLES: Final = 0


def _split(backend: object) -> tuple[str, dict[str, Any]]:
    if isinstance(backend, str):
        return backend, {}
    if (
        isinstance(backend, tuple)
        and len(backend) == 2
        and isinstance(backend[0], str)
        and isinstance(backend[1], Mapping)
    ):
        return backend[0], dict(backend[1])
    raise TypeError(
        f"`backend` must be an anyio_backend value: a name or a (name, options) tuple, "
        f"got {backend!r}"
    )


class _LooptimeLoopFactory:
    """Makes an asyncio loop whose clock is virtual (``looptime``), for ``asyncio.Runner``."""

    __slots__ = ("_base",)

    def __init__(self, base: Callable[[], asyncio.AbstractEventLoop] | None) -> None:
        self._base = base

    def __call__(self) -> asyncio.AbstractEventLoop:
        import looptime

        loop = asyncio.new_event_loop() if self._base is None else self._base()
        if not isinstance(loop, asyncio.BaseEventLoop):
            loop.close()
            raise TypeError(
                f"virtual time needs a loop built on asyncio.BaseEventLoop; "
                f"{type(loop).__name__} cannot be faked"
            )
        patched = looptime.patch_event_loop(loop, noop_cycles=_NOOP_CYCLES)
        _guard_selector(patched)
        return patched

    def __repr__(self) -> str:
        return "<stopscope.testing virtual-time loop factory>"


def virtual_time(backend: object) -> tuple[str, dict[str, Any]]:
    """Return the ``anyio_backend`` value *backend* with a virtual clock.

    ::

        @pytest.fixture(params=["asyncio", "trio"])
        def anyio_backend(request):
            return stopscope.testing.virtual_time(request.param)

    On trio the run gets ``trio.testing.MockClock(autojump_threshold=0)``; on asyncio
    the loop is a ``looptime`` loop (the ``stopscope[testing]`` extra installs it).
    Either way time stands still while anything can run, and jumps to the next
    deadline the moment every task waits: a 30 s grace period or a one-minute
    ``every()`` passes in a few milliseconds, and the same test runs the same way
    every time.  Under the kit, time also stands still while a worker thread started
    with anyio's default limiter (``anyio.to_thread.run_sync``, ``anyio.open_file``)
    is busy.

    :param backend: ``"asyncio"``, ``"trio"`` or a ``(name, options)`` tuple, as
        anyio's pytest plugin takes it
    :raises ValueError: for uvloop, whose clock is C code that cannot be faked (run
        uvloop tests in real time), or an unknown backend
    :raises TypeError: if *backend* is not an ``anyio_backend`` value
    :raises RuntimeError: for asyncio without looptime (the ``testing`` extra)
    """
    name, options = _split(backend)
    if name == "trio":
        from trio.testing import MockClock

        options["clock"] = MockClock(autojump_threshold=0)
        return name, options
    if name == "asyncio":
        if options.get("use_uvloop"):
            raise ValueError(
                "uvloop's clock cannot be faked (its timers run on libuv's clock, in C): "
                "give virtual time to asyncio and trio, and test uvloop in real time"
            )
        if importlib.util.find_spec("looptime") is None:
            raise RuntimeError(
                "virtual time on asyncio needs looptime, which is not installed: "
                "pip install 'stopscope[testing]'"
            )
        options["loop_factory"] = _LooptimeLoopFactory(options.get("loop_factory"))
        return name, options
    raise ValueError(f"`backend` must be 'asyncio' or 'trio', got {name!r}")


def running_virtual() -> bool:
    """Whether the running loop's clock is virtual (call from a task)."""
    if _backend() == "trio":
        import trio
        from trio.testing import MockClock

        return isinstance(trio.lowlevel.current_clock(), MockClock)
    loop = asyncio.get_running_loop()
    try:
        import looptime
    except ImportError:
        return False
    return isinstance(loop, looptime.LoopTimeEventLoop) and loop.looptime_on


class ThreadGuard:
    """Keeps virtual time still while a thread of anyio's default limiter is busy.

    On asyncio it wraps the ``looptime`` selector's ``select`` (once per loop); on
    trio it is driven by the kit's instrument (:meth:`before_io_wait`), which wakes a
    task parked here so that the run loop is not idle and ``MockClock`` does not
    jump.  Either way the loop naps for a fraction of a millisecond of real time per
    turn until the thread is done, or for *hold* real seconds in which *progress* (the
    worker's points, in a run of the kit's) does not move: a thread that runs longer
    waits for something outside the loop, and time goes on.
    """

    __slots__ = ("_hold", "_limiter", "_parked", "_points", "_progress", "_since", "_task")

    def __init__(self, hold: float = math.inf, progress: Callable[[], int] | None = None) -> None:
        self._limiter = anyio.to_thread.current_default_thread_limiter()
        self._task: trio.lowlevel.Task | None = None
        self._parked = False
        # time stands still for at most *hold* real seconds in which *progress* (the
        # worker's scheduling points) does not move: a thread that runs longer waits
        # for something outside the loop (a blocking read only a stop can end)
        self._hold = hold
        self._progress = progress
        self._since: float | None = None
        self._points = 0

    def holding(self) -> bool:
        """Whether virtual time stands still for a busy thread now."""
        if self._limiter.borrowed_tokens == 0:
            self._since = None
            return False
        real = time.monotonic()
        points = 0 if self._progress is None else self._progress()
        if self._since is None or points != self._points:
            self._since, self._points = real, points
        return real - self._since < self._hold

    _busy = holding

    # -- asyncio ---------------------------------------------------------------

    def install_asyncio(self, loop: asyncio.AbstractEventLoop) -> None:
        """Guard a ``looptime`` loop (one that :func:`virtual_time` did not make too):
        for the run, this guard decides when time stands still."""
        _guard_selector(loop)
        loop._stopscope_guard = self  # type: ignore[attr-defined]

    def uninstall_asyncio(self, loop: asyncio.AbstractEventLoop) -> None:
        loop._stopscope_guard = None  # type: ignore[attr-defined]

    # -- trio ------------------------------------------------------------------

    async def run_trio(self) -> None:
        """The guard task on trio: parked until the instrument finds a thread busy."""
        import trio

        def abort(_: object) -> trio.lowlevel.Abort:
            self._parked = False
            return trio.lowlevel.Abort.SUCCEEDED

        self._task = trio.lowlevel.current_task()
        while True:
            self._parked = True
            await trio.lowlevel.wait_task_rescheduled(abort)
            # real time for the thread, with the loop held: virtual time stands still
            time.sleep(_GUARD_NAP)  # noqa: ASYNC251

    def before_io_wait(self) -> None:
        """From the instrument: the run loop is about to wait (and maybe jump)."""
        if self._parked and self._task is not None and self._busy():
            import trio

            self._parked = False
            trio.lowlevel.reschedule(self._task)


#: looptime's resolution: a wait shorter than this must still move its clock one tick
_TICK: Final = 1e-6


def _guard_selector(loop: asyncio.AbstractEventLoop) -> None:
    """Wrap a ``looptime`` loop's ``select`` (once): time stands still while a thread of
    anyio's default limiter is busy, and a wait of less than one tick takes one tick.

    looptime 0.7 (the last for Python 3.10) rounds a wait shorter than its resolution
    to no time at all, and the loop then spins for ever on a deadline a fraction of a
    microsecond away; later versions add the tick themselves.
    """
    if getattr(loop, "_stopscope_thread_guard", False):
        return
    selector: Any = getattr(loop, "_selector", None)
    if selector is None:  # not a selector loop: nothing to guard
        return
    inner: Callable[[float | None], Any] = selector.select
    limiter: anyio.CapacityLimiter | None = None

    def busy() -> bool:
        nonlocal limiter
        guard: ThreadGuard | None = getattr(loop, "_stopscope_guard", None)
        if guard is not None:  # a run of the kit's
            return guard.holding()
        if limiter is None:  # anyio keeps one per loop; found on first use, in the loop
            limiter = anyio.to_thread.current_default_thread_limiter()
        return limiter.borrowed_tokens > 0

    def select(timeout: float | None = None) -> Any:
        hook = getattr(loop, "_stopscope_turn", None)
        if hook is not None:
            hook()
        if timeout is not None and 0 < timeout < _TICK:
            timeout = _TICK
        if (timeout is None or timeout > 0) and busy():
            ready = inner(0)  # a poll: looptime moves no time for it
            if not ready:
                time.sleep(_GUARD_NAP)
            return ready
        return inner(timeout)

    selector.select = select
    loop._stopscope_thread_guard = True  # type: ignore[attr-defined]


def set_turn_hook(loop: asyncio.AbstractEventLoop, hook: Callable[[], None] | None) -> None:
    """Have a guarded ``looptime`` loop call *hook* once per loop turn (``None``: stop)."""
    loop._stopscope_turn = hook  # type: ignore[attr-defined]


def next_deadline() -> float | None:
    """Seconds from now to the loop's next timer (a sleep, a timeout, a ``call_later``),
    or ``None`` if no timer is pending: what a virtual clock would jump to next.

    Call from a task, once every other task waits.  On trio this is the run's own
    statistic (the one ``MockClock`` jumps by); on asyncio, the loop's timer heap.
    """
    if _backend() == "trio":
        import trio

        seconds: float = trio.lowlevel.current_statistics().seconds_to_next_deadline
        return None if seconds == float("inf") else max(0.0, seconds)
    loop = asyncio.get_running_loop()
    scheduled: Any = getattr(loop, "_scheduled", ())  # a BaseEventLoop's timer heap
    # anyio's sleep_forever() on asyncio is a timer at infinity: no deadline at all
    whens: list[float] = [
        when
        for handle in scheduled
        if not handle.cancelled() and math.isfinite(when := handle.when())
    ]
    if not whens:
        return None
    return max(0.0, min(whens) - loop.time())


async def wait_loop_idle() -> None:
    """Return once every other task waits and nothing is ready to run on the loop.

    On trio this is ``wait_all_tasks_blocked()``; on asyncio, the loop's ready queue is
    empty (no task step or callback pending) when this task runs.  Neither moves time.
    """
    if _backend() == "trio":
        import trio.testing

        await trio.testing.wait_all_tasks_blocked()
        return
    loop = asyncio.get_running_loop()
    ready: Any = getattr(loop, "_ready", ())  # a BaseEventLoop's ready queue
    while True:
        await asyncio.sleep(0)
        if not ready:
            return
