"""Everything that differs between asyncio and trio, behind one small interface.

``StopSignal`` and ``TaskScope`` ask :func:`current` for the backend of the loop their
task runs on (one object per asyncio event loop, one per trio run: see
:class:`~stopscope._backends._base.Backend`) and never branch on which it is.  The
whole asyncio story is in ``_asyncio.py``, the whole trio story in ``_trio.py``
(imported only once trio runs: the core works without trio installed); what they
share is in ``_base.py``.

Waking is the one place that meets several loops at once: ``set()`` may claim waiters
of several loops and runs, from any thread.  The backend whose task is calling
(:func:`running`) wakes its own in place (``wake_own``); :func:`wake_elsewhere` hands
each other loop its own through that loop's thread-safe call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Final

from . import _asyncio
from ._base import (
    WAKE_INLINE,
    Backend,
    Entry,
    LoopCall,
    TaskGroup,
    TimerHeap,
    home_of,
    in_cancelled_scope,
    ops,
)

__all__ = [
    "WAKE_INLINE",
    "Backend",
    "Entry",
    "LoopCall",
    "TaskGroup",
    "TimerHeap",
    "current",
    "in_cancelled_scope",
    "on_loop_thread",
    "ops",
    "running",
    "wake_elsewhere",
]

_sniffio_local: Any
try:  # trio depends on sniffio and marks its threads through it
    from sniffio import thread_local as _sniffio_local
except ImportError:  # pragma: no cover - sniffio comes with trio; without it trio is absent
    _sniffio_local = None

_get_running_loop: Final = asyncio._get_running_loop
_backend_of_loop: Final = _asyncio.backend_of
_current_task: Final = _asyncio.current_task
_loop_attr: Final = _asyncio.LOOP_ATTR

#: the trio module's RunVar lookup, its maker, and running(), once a run has been seen
_trio_get: Callable[[], Backend] | None = None
_trio_make: Callable[[], Backend]
_trio_running: Callable[[], Backend | None]


def _load_trio() -> None:
    global _trio_get, _trio_make, _trio_running
    from . import _trio

    _trio_make, _trio_running = _trio.make, _trio.running
    _trio_get = _trio.get


def _on_trio() -> bool:
    return _sniffio_local is not None and _sniffio_local.name == "trio"


def current() -> Backend:
    """The backend of the loop or run on this thread.

    :raises RuntimeError: if neither asyncio nor trio runs here
    """
    if _sniffio_local is not None and _sniffio_local.name == "trio":
        if _trio_get is None:
            _load_trio()
        try:
            return _trio_get()  # type: ignore[misc]
        except LookupError:
            return _trio_make()
    loop = _get_running_loop()
    if loop is None:
        raise RuntimeError(
            "this StopSignal method must be awaited from a task running on asyncio or trio"
        )
    backend: Backend | None = getattr(loop, _loop_attr, None)
    if backend is None:
        backend = _backend_of_loop(loop)
    return backend


def running() -> Backend | None:
    """The backend whose *task* is running on this thread (not a loop callback), else None."""
    if _sniffio_local is not None and _sniffio_local.name == "trio":
        if _trio_get is None:
            _load_trio()
        return _trio_running()
    loop = _get_running_loop()
    if loop is None or _current_task(loop) is None:
        return None
    backend: Backend | None = getattr(loop, _loop_attr, None)
    if backend is None:
        backend = _backend_of_loop(loop)
    return backend


def on_loop_thread() -> bool:
    """Whether an event loop or a trio run is running on this thread."""
    return _get_running_loop() is not None or _on_trio()


def wake_elsewhere(items: list[Any]) -> None:
    """Wake claimed hooks (waiters, loop calls) that the calling task's backend did not
    take (:meth:`Backend.wake_own`): each loop gets its own through its thread-safe call.
    """
    elsewhere: dict[Backend, list[Any]] = {}
    for item in items:
        if type(item) is LoopCall:
            item.fired_at = time.monotonic()
        home = home_of(item)
        batch = elsewhere.get(home)
        if batch is None:
            elsewhere[home] = [item]
        else:
            batch.append(item)
    for home, batch in elsewhere.items():
        home.wake_soon(batch)
