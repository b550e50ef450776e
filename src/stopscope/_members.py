"""Members of a TaskScope that are not coroutines: threads and subprocesses.

:meth:`TaskScope.start_thread` and :meth:`TaskScope.start_process` call the functions
here, which use only the scope's member surface (``_member_signal``, ``start_soon``,
``start``) and :func:`~stopscope._report.current_record`.  Each thread or process is
watched by an ordinary member task, so grace, cancellation and the report work as for
any member.
"""

from __future__ import annotations

import os
import shlex
import signal as _signal
import subprocess
import sys
import threading
import traceback
import weakref
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.abc

from ._report import Outcome, _callable_name, current_record
from ._signal import StopSignal, logger

if TYPE_CHECKING:
    from anyio.abc import Process

    StrOrBytesPath = str | bytes | os.PathLike[str] | os.PathLike[bytes]

__all__: list[str] = []


#: threads that ignored their stop and were left running, with their member names
#: (``run()`` will not wait for them at exit)
_abandoned_threads: weakref.WeakKeyDictionary[threading.Thread, str] = weakref.WeakKeyDictionary()


class _Scope(Protocol):
    """The part of TaskScope the mixin relies on."""

    @property
    def signal(self) -> StopSignal: ...

    @property
    def _member_signal(self) -> StopSignal: ...

    def start_soon(
        self,
        func: Callable[..., Awaitable[Any]],
        *args: Any,
        name: object = None,
        grace: float | None = None,
    ) -> None: ...

    async def start(
        self,
        func: Callable[..., Awaitable[Any]],
        *args: Any,
        name: object = None,
        grace: float | None = None,
    ) -> Any: ...


def _command_name(cmd: Any) -> str:
    if isinstance(cmd, (str, bytes, os.PathLike)):
        return os.fsdecode(cmd)
    return shlex.join(os.fsdecode(part) for part in cmd)


def start_thread(
    scope: _Scope,
    func: Callable[..., object],
    args: tuple[Any, ...],
    name: object,
    grace: float | None,
) -> None:
    """:meth:`TaskScope.start_thread`: a member task that runs ``func`` in a thread."""
    if not callable(func):
        raise TypeError(f"start_thread() needs a callable, got {func!r}")
    label = _callable_name(func) if name is None else str(name)
    call = _ThreadCall(func, scope._member_signal, args, label)
    scope.start_soon(_run_thread, call, name=label, grace=grace)


async def start_process(
    scope: _Scope,
    cmd: StrOrBytesPath | Sequence[StrOrBytesPath],
    name: object,
    grace: float | None,
    popen_kwargs: dict[str, Any],
) -> Process:
    """:meth:`TaskScope.start_process`: a member task that owns a subprocess."""
    for stream in ("stdin", "stdout", "stderr"):
        popen_kwargs.setdefault(stream, None)
    label = _command_name(cmd) if name is None else str(name)
    process: Process = await scope.start(
        _run_process, scope._member_signal, cmd, popen_kwargs, name=label, grace=grace
    )
    return process


# ------------------------------------------------------------------------ threads


class _ThreadCall:
    """One call of a thread member's function, and whether it was left behind."""

    __slots__ = ("args", "func", "lock", "name", "signal", "state", "thread")

    def __init__(
        self,
        func: Callable[..., object],
        signal: StopSignal,
        args: tuple[Any, ...],
        name: str,
    ) -> None:
        self.func = func
        self.signal = signal
        self.args = args
        self.name = name
        self.lock = threading.Lock()
        # queued -> running -> done, or queued -> skipped, or running -> abandoned -> done
        self.state = "queued"
        self.thread: threading.Thread | None = None

    def __call__(self) -> object:
        """Runs in the worker thread."""
        thread = threading.current_thread()
        with self.lock:
            if self.state != "queued":
                return None  # cancelled before it started: never run it
            self.state = "running"
            self.thread = thread
        old_name = thread.name
        thread.name = f"stopscope: {self.name}"
        failed = True
        try:
            result = self.func(self.signal, *self.args)
            failed = False
            return result
        except BaseException:
            with self.lock:
                abandoned = self.state == "abandoned"
            if not abandoned:
                raise
            # nobody awaits an abandoned thread: log its error, or it would be lost
            logger.exception("abandoned thread member %r raised", self.name)
            return None
        finally:
            thread.name = old_name
            with self.lock:
                abandoned = self.state == "abandoned"
                self.state = "done"
            if abandoned:
                _abandoned_threads.pop(thread, None)
                if not failed:
                    logger.info("abandoned thread member %r returned after all", self.name)

    def abandon(self) -> bool:
        """The member was cancelled: leave the thread behind if it is running."""
        with self.lock:
            if self.state == "queued":
                self.state = "skipped"
                return False
            if self.state != "running":
                return False
            self.state = "abandoned"
            assert self.thread is not None
            _abandoned_threads[self.thread] = self.name
            return True


async def _run_thread(call: _ThreadCall) -> None:

    record = current_record()
    record.kind = "thread"
    try:
        await anyio.to_thread.run_sync(
            call, abandon_on_cancel=True, limiter=anyio.CapacityLimiter(1)
        )
    except anyio.get_cancelled_exc_class():
        if call.abandon():
            record.outcome = Outcome.ABANDONED
            logger.warning(
                "thread member %r ignored its stop and was abandoned (a thread cannot be "
                "cancelled); it is at:\n%s",
                call.name,
                _thread_stack(call.thread),
            )
        raise


def _thread_stack(thread: threading.Thread | None) -> str:
    """Where the thread is now, from the member's function inwards."""
    frame = sys._current_frames().get(thread.ident) if thread and thread.ident else None
    frames = []
    while frame is not None and frame.f_code is not _ThreadCall.__call__.__code__:
        frames.append((frame, frame.f_lineno))
        frame = frame.f_back
    if not frames:
        return "(no frames)"
    summary = traceback.StackSummary.extract(reversed(frames))
    return "".join(summary.format()).rstrip()


# ---------------------------------------------------------------------- processes


async def _run_process(
    signal: StopSignal,
    cmd: Any,
    popen_kwargs: dict[str, Any],
    *,
    task_status: anyio.abc.TaskStatus[Process],
) -> None:

    record = current_record()
    record.kind = "process"
    process = await anyio.open_process(cmd, **popen_kwargs)
    try:
        task_status.started(process)
        with signal.cancel_scope():
            await process.wait()
        if process.returncode is None:  # stop requested: ask it to exit
            _send(process, _SIGTERM)
            await process.wait()  # the scope cancels this when grace is over
        elif not signal.is_set():  # it exited before any stop of this member
            if _ended_by_the_services_signal(process.returncode, record.name):
                record.outcome = Outcome.STOPPED
            elif process.returncode != 0:
                record.exit_code = process.returncode
                raise subprocess.CalledProcessError(process.returncode, cmd)
    except anyio.get_cancelled_exc_class():
        if process.returncode is None:
            _send(process, _SIGKILL)
            record.outcome = Outcome.CANCELLED
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await process.wait()  # reap it: no zombie, whatever happened
        record.exit_code = process.returncode


_SIGTERM: int = _signal.SIGTERM
_SIGKILL: int = getattr(_signal, "SIGKILL", _signal.SIGTERM)  # Windows: both terminate


def _send(process: Process, signum: int) -> None:
    """Send ``signum`` (SIGTERM or SIGKILL) to a process not known to have exited.

    On POSIX with :func:`os.kill`, not ``terminate()``/``kill()``: on asyncio these go
    to :meth:`subprocess.Popen.send_signal`, which first reaps a child that has just
    died (``poll()``), and asyncio's child watcher, which waits for the same pid, then
    reports status 255 ("Unknown child process pid") instead of the real one.  That is
    the usual case when a process-group signal killed the child just as the service
    stops on the same signal.
    """
    with suppress(ProcessLookupError):
        if sys.platform != "win32":
            os.kill(process.pid, signum)
        elif signum == _SIGTERM:
            process.terminate()
        else:
            process.kill()


def _ended_by_the_services_signal(returncode: int, name: str) -> bool:
    """Whether an exit before any stop is the stop of a service (``run()``,
    ``stop_on_signals()``) whose signal reached the process too; see ``start_process``."""
    from ._service import _signal_behind_exit

    signum = _signal_behind_exit(returncode)
    if signum is None:
        return False
    logger.info(
        "process member %r exited (status %s) on %s, which the service is stopping on: "
        "stopped, not failed",
        name,
        returncode,
        signum.name,
    )
    return True
