"""Leaks: tasks and threads a worker started and left running after it returned.

Go's goleak and synctest's bubbles fail a test that leaves goroutines behind; the kit
does the same for one run.  While the worker runs, it notes every task spawned and
every thread started from user code, with the line that did it:

* asyncio (and uvloop): a task factory set on the loop for the run (wrapping the one
  already there, if any);
* trio: an instrument's ``task_spawned`` / ``task_exited`` hooks, which also see tasks
  spawned into a nursery the worker was given, and system tasks;
* threads: ``threading.Thread.start``, for the run.

Once the worker has exited (and every task of its own nurseries with it), what is
still running was left behind.  Thread pools the libraries keep (anyio's and trio's
worker threads, ``concurrent.futures``) are started from library code, so they are
not counted; neither are tasks whose spawn has no user frame (the kit's own).
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import sys
import sysconfig
import threading
import weakref
from collections.abc import Callable, Iterable
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

import anyio

if TYPE_CHECKING:
    import trio

__all__ = ["LeakWatch"]

#: real seconds a thread left running gets to finish before it is called a leak
_THREAD_JOIN: Final = 0.05
#: loop turns a task left running gets to finish (a task cancelled on the way out)
_SETTLE_TURNS: Final = 3

_THREADING_FILE: Final = threading.__file__
_STDLIB: Final = os.path.join(sysconfig.get_paths()["stdlib"], "")

#: the kit's own files
_KIT: Final = os.path.join(os.path.dirname(__file__), "")

#: where a task or thread was started: "`code` (file:N, in fn)"
Site = str


def _show(frame: FrameType) -> Site:
    import linecache

    code = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip() or "?"
    name = os.path.basename(frame.f_code.co_filename)
    return f"`{code}` ({name}:{frame.f_lineno}, in {frame.f_code.co_name})"


class LeakWatch:
    """Notes the tasks and threads started during one run, and which are left."""

    def __init__(
        self, backend: str, is_library: Callable[[str], bool], allow: Iterable[str] = ()
    ) -> None:
        self._backend = backend
        self._is_library = is_library
        self._allow = tuple(allow)
        self._tasks: dict[Any, tuple[str, Site]] = {}  # task -> (name, site)
        self._threads: weakref.WeakKeyDictionary[threading.Thread, Site] = (
            weakref.WeakKeyDictionary()
        )
        self._undo: list[Callable[[], None]] = []
        # the worker's task and every task spawned from one of them: only their spawns
        # are the worker's (another task of the test, a fake server, is not)
        self._family: set[Any] = set()
        self._loop_thread: threading.Thread | None = None

    # -- where ---------------------------------------------------------------------

    def _user_site(self, frame: FrameType | None) -> Site | None:
        """The first frame of user code from *frame* outwards; ``None`` if the kit's
        own code comes first (what the kit starts for a run is not the worker's)."""
        while frame is not None:
            filename = frame.f_code.co_filename
            if filename.startswith(_KIT):
                return None
            if not self._is_library(filename):
                return _show(frame)
            frame = frame.f_back
        return None

    def _thread_site(self, frame: FrameType | None) -> Site | None:
        """The caller of ``Thread.start``, if it is user code (a library's thread pool
        starts its threads itself)."""
        while frame is not None and (
            frame.f_code.co_filename == _THREADING_FILE or frame.f_code.co_filename.startswith(_KIT)
        ):
            frame = frame.f_back
        if frame is None:
            return None
        filename = frame.f_code.co_filename
        if self._is_library(filename) or filename.startswith(_STDLIB):
            return None
        return _show(frame)

    # -- watching ------------------------------------------------------------------

    def _current_task(self) -> Any:
        """The task running now, on the loop's thread; ``None`` outside a task."""
        if threading.current_thread() is not self._loop_thread:
            return None
        if self._backend == "trio":
            import trio

            try:
                return trio.lowlevel.current_task()
            except RuntimeError:  # pragma: no cover - a spawn outside any task
                return None
        return asyncio.current_task()

    def _stranger(self) -> bool:
        """Whether the spawn or start happening now comes from a task of the loop that
        is not of the worker's family (before the worker runs, every task is one)."""
        current = self._current_task()
        return current is not None and current not in self._family

    def adopt_current(self) -> None:
        """The worker's task: call from it, as it starts."""
        self._family.add(self._current_task())

    def start(self) -> None:
        """Watch from now on (call from the run's task, before the worker starts)."""
        self._loop_thread = threading.current_thread()
        if self._backend == "trio":
            import trio

            instrument = _TrioSpawns(self)
            trio.lowlevel.add_instrument(instrument)  # type: ignore[arg-type]
            self._undo.append(lambda: trio.lowlevel.remove_instrument(instrument))  # type: ignore[arg-type]
        else:
            loop = asyncio.get_running_loop()
            previous = loop.get_task_factory()

            def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
                if previous is None:
                    task: Any = asyncio.Task(coro, loop=loop, **kwargs)
                else:
                    task = previous(loop, coro, **kwargs)
                self.spawned(task, sys._getframe(1))
                return task

            loop.set_task_factory(factory)
            self._undo.append(lambda: loop.set_task_factory(previous))
        original = threading.Thread.start
        watch = self

        def start(thread: threading.Thread) -> None:
            site = None if watch._stranger() else watch._thread_site(sys._getframe(1))
            if site is not None:
                watch._threads[thread] = site
            original(thread)

        threading.Thread.start = start  # type: ignore[method-assign,assignment]
        self._undo.append(lambda: setattr(threading.Thread, "start", original))

    def stop(self) -> None:
        """Stop watching (idempotent)."""
        while self._undo:
            self._undo.pop()()

    def spawned(self, task: Any, frame: FrameType | None) -> None:
        if self._stranger():
            return
        if self._current_task() is not None:
            self._family.add(task)  # what it spawns is the worker's too
        site = self._user_site(frame)
        if site is not None:
            self._tasks[task] = ("", site)

    def exited(self, task: Any) -> None:
        self._tasks.pop(task, None)

    # -- the verdict ---------------------------------------------------------------

    async def leaks(self) -> tuple[str, ...]:
        """What the worker left running, each in words (call once it has exited)."""
        self.stop()
        for _ in range(_SETTLE_TURNS):  # a task cancelled on its way out ends here
            if not self._running_tasks():
                break
            await anyio.lowlevel.checkpoint()
        out = [
            f"the worker left a task running: {name!r}, started at {site}"
            for name, site in self._running_tasks()
            if not self._allowed(name, site)
        ]
        for thread, site in list(self._threads.items()):
            if thread.is_alive():
                thread.join(_THREAD_JOIN)
            if thread.is_alive() and not self._allowed(thread.name, site):
                out.append(f"the worker left a thread running: {thread.name!r}, started at {site}")
        self._tasks.clear()
        self._family.clear()
        return tuple(out)

    def _running_tasks(self) -> list[tuple[str, Site]]:
        out = []
        for task, (_, site) in self._tasks.items():
            if self._backend == "trio":
                out.append((task.name, site))  # exited tasks were dropped
            elif not task.done():
                out.append((task.get_name(), site))
        return out

    def _allowed(self, name: str, site: Site) -> bool:
        short = site.rpartition("(")[2].partition(",")[0]  # file:N
        return any(
            fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(short, pattern)
            for pattern in self._allow
        )


class _TrioSpawns:
    """Sees every task spawned and exited on trio while the run is watched."""

    def __init__(self, watch: LeakWatch) -> None:
        self._watch = watch

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self._watch.spawned(task, sys._getframe(1))

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        self._watch.exited(task)
