"""Members of a TaskScope that are not coroutines: threads and subprocesses.

:meth:`TaskScope.start_thread` and :meth:`TaskScope.start_process` call the functions
here, which use only the scope's member surface (``_member_signal``, ``start_soon``,
``start``) and :func:`~stopscope._report.current_record`.  Each thread or process is
watched by an ordinary member task, so grace, cancellation and the report work as for
any member.

Two options of process members serve orchestrators (the why of the code below):

* ``process_group=True`` (the default on POSIX): the child leads a group of its own
  (``setsid()``, through anyio's ``start_new_session``, the one way every backend
  offers); the stop's SIGTERM and the SIGKILL after grace go to the whole group, and
  the member lasts until the group is empty, so a grandchild cannot outlive its
  member.  It is the default because the parent owns its children's stop: a signal
  sent to the service's group (a terminal's Ctrl-C, ``tini -g``) would otherwise reach
  the child too, beside the member's own SIGTERM (a Python child prints a
  KeyboardInterrupt traceback; a stopscope child reads the second signal as "cancel").
* ``die_with_parent=True``: the child stops when this process dies, even by SIGKILL.
  ``PR_SET_PDEATHSIG`` set in the child is not enough: Linux ties it to the *thread*
  that forked, and trio forks in a worker thread that exits after 10 idle seconds
  (which would kill a healthy child); ``preexec_fn`` is unsafe with threads.  So the
  command is started through a tiny Python launcher that forks a guard and then execs
  the command (same pid, same exit status).  The guard holds the read end of a pipe
  whose only write end this process holds: the kernel closes it when this process
  dies, however it dies, and the guard then sends SIGTERM to the command (its group
  with ``process_group``) and SIGKILL after the member's grace.  The guard lives in a
  session of its own and ignores the stop signals, so what kills the service (a
  terminal's hang-up or Ctrl-C to the whole group, a supervisor's ``killpg``) cannot
  kill it, nor can its own signal to the command's group.  It exits with the command
  (``PR_SET_PDEATHSIG`` on Linux, whose forking thread is the command's main thread,
  else a poll of ``getppid()``), or with ``process_group`` once the group is empty.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import os
import shlex
import shutil
import signal as _signal
import subprocess
import sys
import threading
import traceback
import weakref
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio
import anyio.abc

from ._judge import clean_stop_status
from ._report import ShutdownReport, TaskRecord, _callable_name, current_facts
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

    @property
    def grace(self) -> float | None: ...


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
    _check_thread_function(func)
    label = _callable_name(func) if name is None else str(name)
    call = _ThreadCall(func, scope._member_signal, args, label)
    scope.start_soon(_run_thread, call, name=label, grace=grace)


def _check_thread_function(func: object) -> None:
    """Refuse what cannot run in a thread: a non-callable, a coroutine object, and an
    async function (its call would only make a coroutine that nobody awaits)."""
    if inspect.iscoroutine(func):
        raise TypeError(
            "start_thread() takes a plain function and its arguments, not a coroutine "
            "object; for async code use start_soon(fn, arg)"
        )
    if not callable(func):
        raise TypeError(f"start_thread() needs a callable, got {func!r}")
    if _is_async_callable(func):
        raise TypeError(
            f"start_thread() runs a plain function in a thread, and "
            f"{_callable_name(func)} is an async function: start it with "
            f"scope.start_soon() instead (or call it through anyio.from_thread.run() "
            f"from a plain function)"
        )


def _is_async_callable(func: object) -> bool:
    """Whether calling ``func`` makes a coroutine or an async generator: an async
    function, a partial of one, or an object whose ``__call__`` is one."""
    while isinstance(func, functools.partial):
        func = func.func
    if inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func):
        return True
    if inspect.isfunction(func) or inspect.ismethod(func) or isinstance(func, type):
        return False
    call = type(func).__call__
    return inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call)


async def start_process(
    scope: _Scope,
    cmd: StrOrBytesPath | Sequence[StrOrBytesPath],
    name: object,
    grace: float | None,
    popen_kwargs: dict[str, Any],
) -> Process:
    """:meth:`TaskScope.start_process`: a member task that owns a subprocess.

    Besides :func:`anyio.open_process`'s keywords, ``popen_kwargs`` may hold
    ``process_group`` and ``die_with_parent`` (booleans; see the module docstring).
    """
    group = _flag(popen_kwargs.pop("process_group", _GROUP_BY_DEFAULT), "process_group")
    guarded = _flag(popen_kwargs.pop("die_with_parent", False), "die_with_parent")
    for stream in ("stdin", "stdout", "stderr"):
        popen_kwargs.setdefault(stream, None)
    label = _command_name(cmd) if name is None else str(name)
    if (group or guarded) and sys.platform == "win32":
        raise RuntimeError("`process_group` and `die_with_parent` need a POSIX system")
    if group:
        if popen_kwargs.get("start_new_session", True) is not True:
            raise ValueError(
                "`process_group=True` (the default) starts a new session; leave out "
                "`start_new_session`, or pass `process_group=False`"
            )
        popen_kwargs["start_new_session"] = True
    if guarded:
        own = grace if grace is not None else scope.grace
        cmd = _guarded_command(cmd, popen_kwargs, group, _GUARD_KILL_AFTER if own is None else own)
    options = _ProcessOptions(group=group)
    process: Process = await scope.start(
        _run_process, scope._member_signal, cmd, popen_kwargs, options, name=label, grace=grace
    )
    return process


#: a child leads a process group of its own unless told otherwise (not on Windows)
_GROUP_BY_DEFAULT: Final = sys.platform != "win32"


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False, got {value!r}")
    return value


# ------------------------------------------------------------------------ threads


class _ThreadCall:
    """One call of a thread member's function, and who takes its result.

    The thread and the member task settle, under ``lock``, which of them owns the end
    of the call.  The thread finishes ``running -> done`` and keeps what the function
    returned or raised; the member task, once cancelled, calls :meth:`abandon`.  If
    the thread is still running, it is left behind (``abandoned``) and owns its result:
    it logs an error, since nobody awaits it.  If it is ``done``, the member owns the
    result even though anyio dropped it (``abandon_on_cancel`` drops a result that was
    not delivered before the cancellation): a thread that raised fails the member, one
    that returned counts as returned.  So an error comes out once, whatever the race.
    """

    __slots__ = (
        "args",
        "error",
        "func",
        "lock",
        "name",
        "signal",
        "state",
        "stopped",
        "thread",
    )

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
        #: what the function raised (kept only if the thread was not abandoned)
        self.error: BaseException | None = None
        #: whether the member's signal was set when the function ended
        self.stopped = False

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
        result: object = None
        error: BaseException | None = None
        try:
            result = self.func(self.signal, *self.args)
            if inspect.iscoroutine(result) or inspect.isasyncgen(result):
                error = _made_async(result, self.func)
                result = None
        except BaseException as exc:
            error = exc
        finally:
            thread.name = old_name
        stopped = self.signal.is_set()
        with self.lock:
            abandoned = self.state == "abandoned"
            self.state = "done"
            if not abandoned:
                self.error, self.stopped = error, stopped
        if abandoned:
            _abandoned_threads.pop(thread, None)
            if error is not None:
                # nobody awaits an abandoned thread: log its error, or it would be lost
                logger.error("abandoned thread member %r raised", self.name, exc_info=error)
            else:
                logger.info("abandoned thread member %r returned after all", self.name)
            return None
        if error is not None:
            try:
                raise error
            finally:
                del error  # no cycle through this frame
        return result

    def abandon(self) -> str:
        """The member was cancelled: leave the thread behind if it is still running.

        :return: the state that decides the member: ``"abandoned"`` (left running),
            ``"done"`` (it had ended: see ``error`` and ``stopped``) or ``"skipped"``
            (it never started)
        """
        with self.lock:
            if self.state == "queued":
                self.state = "skipped"
            elif self.state == "running":
                self.state = "abandoned"
                assert self.thread is not None
                _abandoned_threads[self.thread] = self.name
            return self.state


def _made_async(result: object, func: Callable[..., object]) -> TypeError:
    """The error for a thread function that returned a coroutine (an async callable
    that :func:`start_thread` could not tell from a plain one, a lambda around one)."""
    close = getattr(result, "close", None)
    if inspect.iscoroutine(result) and close is not None:
        close()  # no "never awaited" warning on top of the error
    return TypeError(
        f"the thread member's function {_callable_name(func)} returned {result!r}: "
        f"async code cannot run in a thread; start it with scope.start_soon() instead"
    )


async def _run_thread(call: _ThreadCall) -> None:

    facts = current_facts()
    facts.record.kind = "thread"
    try:
        await anyio.to_thread.run_sync(
            call, abandon_on_cancel=True, limiter=anyio.CapacityLimiter(1)
        )
        return
    except anyio.get_cancelled_exc_class():
        state = call.abandon()
        if state == "abandoned":
            facts.abandoned = True  # a fact: the scope judges the outcome
            logger.warning(
                "thread member %r ignored its stop and was abandoned (a thread cannot be "
                "cancelled); it is at:\n%s",
                call.name,
                _thread_stack(call.thread),
            )
        elif state == "done" and call.error is None:
            # it returned before the cancellation reached its member, and a thread is
            # never interrupted: nothing of it was cut (a fact for the judge)
            facts.returned_first = True
            facts.returned_asked = call.stopped
        if state != "done" or call.error is None:
            raise
    except BaseException:
        call.error = None  # delivered by anyio: raised once, and no cycle through it
        raise
    # the thread raised before the cancellation reached its member: its error, not
    # the cancellation, ends the member (anyio dropped it; raised here, it comes out once)
    error, call.error = call.error, None
    assert error is not None
    try:
        raise error
    finally:
        del error


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


class _ProcessOptions:
    __slots__ = ("group",)

    def __init__(self, *, group: bool) -> None:
        self.group = group  # the child leads its own process group: signal all of it


async def _run_process(
    signal: StopSignal,
    cmd: Any,
    popen_kwargs: dict[str, Any],
    options: _ProcessOptions,
    *,
    task_status: anyio.abc.TaskStatus[Process],
) -> None:

    facts = current_facts()
    record = facts.record
    record.kind = "process"
    process = await anyio.open_process(cmd, **popen_kwargs)
    pgid = process.pid if options.group else None
    killed = False
    try:
        task_status.started(process)
        with signal.cancel_scope():
            await process.wait()
            if pgid is not None and process.returncode == 0:
                await _group_gone(pgid)  # the member is the whole group
        if process.returncode is None or (pgid is not None and signal.is_set()):
            # stop requested: ask it (and its group) to exit, unless it has exited
            # already (a group's signal reached it first; not reaped yet)
            sent = process.returncode is None and not _has_exited(process.pid)
            if sent or pgid is not None:
                _send(process, _SIGTERM, pgid)
            await process.wait()  # the scope cancels these when grace is over
            if pgid is not None:
                await _group_gone(pgid)
            _check_stop_status(process.returncode, cmd, record, sent=sent)
        elif signal.is_set():  # it exited after its stop, before we sent it anything
            _check_stop_status(process.returncode, cmd, record, sent=False)
        else:  # it exited before any stop of this member
            if _ended_by_the_services_signal(process.returncode, record.name):
                facts.stop_seen = True  # a fact: the scope judges it STOPPED
                if pgid is not None and signal.is_set():  # the rest of its group too
                    _send(process, _SIGTERM, pgid)
                    await _group_gone(pgid)
            elif process.returncode != 0:
                record.exit_code = process.returncode
                raise subprocess.CalledProcessError(process.returncode, cmd)
    except anyio.get_cancelled_exc_class():
        if process.returncode is None or (pgid is not None and _group_alive(pgid)):
            _send(process, _SIGKILL, pgid)
            killed = True
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await process.wait()  # reap it: no zombie, whatever happened
        record.exit_code = process.returncode
        if pgid is not None and not killed and _group_alive(pgid):
            # the leader failed, or its member ended otherwise: nothing outlives it
            logger.warning(
                "process member %r: its leader exited; killing what is left of its group",
                record.name,
            )
            with suppress(OSError):
                os.killpg(pgid, _SIGKILL)


#: how often a member polls whether its process group is empty (seconds): first, and
#: at most (the interval doubles: a group a leader left behind may live for long)
_GROUP_POLL = 0.02
_GROUP_POLL_MAX = 1.0


async def _group_gone(pgid: int) -> None:
    """Return once no live process is left in the group (polled; cancellable)."""
    interval = _GROUP_POLL
    while _group_alive(pgid):
        await anyio.sleep(interval)
        interval = min(interval * 2, _GROUP_POLL_MAX)


def _group_alive(pgid: int) -> bool:
    """Whether the process group holds a process that has not exited (zombies, which
    an init that does not reap can leave for ever, do not count on Linux)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False  # not even a zombie: no need to read /proc
    except PermissionError:
        pass
    if sys.platform.startswith("linux"):
        try:
            entries = os.listdir("/proc")
        except OSError:
            entries = []
        if entries:
            for entry in entries:
                if not entry.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry}/stat", "rb") as stat:
                        fields = stat.read().rsplit(b")", 1)[1].split()
                except (OSError, IndexError):
                    continue  # gone meanwhile
                # fields: state, ppid, pgrp, ...
                if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                    return True
            return False
    return True


_SIGTERM: int = _signal.SIGTERM
_SIGKILL: int = getattr(_signal, "SIGKILL", _signal.SIGTERM)  # Windows: both terminate


def _send(process: Process, signum: int, pgid: int | None = None) -> None:
    """Send ``signum`` (SIGTERM or SIGKILL) to a process not known to have exited, or
    to its whole process group ``pgid``.

    On POSIX with :func:`os.kill`, not ``terminate()``/``kill()``: on asyncio these go
    to :meth:`subprocess.Popen.send_signal`, which first reaps a child that has just
    died (``poll()``), and asyncio's child watcher, which waits for the same pid, then
    reports status 255 ("Unknown child process pid") instead of the real one.  That is
    the usual case when a process-group signal killed the child just as the service
    stops on the same signal.
    """
    with suppress(ProcessLookupError):
        if pgid is not None:
            os.killpg(pgid, signum)
        elif sys.platform != "win32":
            os.kill(process.pid, signum)
        elif signum == _SIGTERM:
            process.terminate()
        else:
            process.kill()


def _has_exited(pid: int) -> bool:
    """Whether the child has exited, without reaping it (``waitid`` with ``WNOWAIT``)."""
    waitid = getattr(os, "waitid", None)
    if waitid is None:  # pragma: no cover - Windows
        return False
    try:
        return waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # reaped meanwhile (a child watcher): it has exited
        return True
    except OSError:  # pragma: no cover - not ours to ask about
        return False


def _check_stop_status(returncode: int | None, cmd: Any, record: TaskRecord, *, sent: bool) -> None:
    """A process that exited after its stop stopped cleanly only if it exited 0 or died
    of the SIGTERM it was sent or of the service's own stop signal; any other status is
    its failure, ``128 + n`` included (see ``docs/semantics.md``).  One that exited
    before it was sent anything follows the rule of an exit before the stop: a status
    the service's caught signal explains (``-n``, ``128 + n``, 0) is a stop."""
    assert returncode is not None
    if clean_stop_status(returncode):
        return
    if sys.platform == "win32" and sent and returncode == 1:  # pragma: no cover
        return  # terminate() is TerminateProcess(handle, 1): Windows' "killed by us"
    if returncode < 0 or not sent:
        signum = _signal_behind_exit(returncode)
        if signum is not None and (not sent or clean_stop_status(returncode, int(signum))):
            return
    record.exit_code = returncode
    raise subprocess.CalledProcessError(returncode, cmd)


def _ended_by_the_services_signal(returncode: int, name: str) -> bool:
    """Whether an exit before any stop is the stop of a service (``run()``,
    ``stop_on_signals()``) whose signal reached the process too; see ``start_process``."""
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


# ------------------------------------------------------------- die with the parent

#: seconds between the guard's SIGTERM and its SIGKILL when the member has no grace
_GUARD_KILL_AFTER = 10.0

#: the launcher: argv = [fd, group (0/1), kill_after, command...].  It forks the guard,
#: waits until the guard has left for a session of its own, then execs the command in
#: its own pid.  Kept to the standard library, run with -I -S.
#:
#: The guard must not share the fate it watches: in a session (so a process group) of
#: its own, no signal sent to a group (a terminal's Ctrl-C or hang-up, ``tini -g``, a
#: supervisor's ``killpg``) reaches it, nor its own ``killpg`` of the command's group;
#: and it ignores SIGHUP, SIGINT, SIGQUIT and SIGTERM sent to it alone (systemd's
#: ``KillMode=control-group`` signals every process of the unit).  It exits once its
#: job is done: when the command is gone (its group, with ``process_group``), or after
#: it has stopped the command of a dead service.  Those signals stay blocked from before
#: the fork until the guard ignores them and the launcher is about to exec, so none is
#: lost or misdirected on the way: the command starts with the mask and dispositions
#: the service gave it.
_LAUNCHER = r"""
import os, signal, sys
fd, group, kill_after, argv = int(sys.argv[1]), sys.argv[2] == "1", float(sys.argv[3]), sys.argv[4:]
leader = os.getpid()
shield = {signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM}  # POSIX only
if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as exec would leave it
signal.pthread_sigmask(signal.SIG_BLOCK, shield)
ready, set_up = os.pipe()
if os.fork() == 0:
    try:
        os.setsid()
        for s in shield:
            signal.signal(s, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, shield)
        if not group:  # dies with the command; with a group it waits for the group
            try:
                import ctypes
                ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
            except Exception:
                pass
        os.closerange(0, fd)  # set_up too: the launcher may exec the command now
        os.closerange(fd + 1, 65536)
        if fd:  # to 0: select() takes no descriptor above FD_SETSIZE (1024)
            fd = os.dup2(fd, 0)
            os.closerange(1, 65536)
        import select, time
        def alive():
            if os.getppid() == leader or not group:  # a leader alive: its group is too
                return os.getppid() == leader
            try:
                os.killpg(leader, 0)
            except ProcessLookupError:
                return False
            except OSError:
                pass
            if sys.platform.startswith("linux"):  # zombies do not count
                try:
                    entries = [e for e in os.listdir("/proc") if e.isdigit()]
                except OSError:
                    entries = []
                for entry in entries:
                    try:
                        with open(f"/proc/{entry}/stat", "rb") as stat:
                            fields = stat.read().rsplit(b")", 1)[1].split()
                        if int(fields[2]) == leader and fields[0] not in (b"Z", b"X"):
                            return True
                    except (OSError, IndexError, ValueError):
                        continue
                if entries:
                    return False
            return True
        def send(s):
            try:
                os.killpg(leader, s) if group else os.kill(leader, s)
            except OSError:
                pass
        while alive():
            if select.select([fd], [], [], 1.0)[0] and not os.read(fd, 1):
                break  # EOF: the service that started the command is gone
        else:
            os._exit(0)  # the command is gone
        if alive():  # not gone meanwhile: never signal an id that may be reused
            send(signal.SIGTERM)
        deadline = time.monotonic() + kill_after
        while alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive():
            send(signal.SIGKILL)
    except BaseException:
        pass
    os._exit(0)
os.close(set_up)
os.read(ready, 1)  # EOF: the guard is out of this group (or gone)
os.close(ready)
os.close(fd)
for name in ("SIGPIPE", "SIGXFSZ"):  # Python ignores these; give the command the defaults
    if hasattr(signal, name):
        signal.signal(getattr(signal, name), signal.SIG_DFL)
signal.pthread_sigmask(signal.SIG_UNBLOCK, shield)
try:
    os.execvp(argv[0], argv)
except OSError as exc:
    sys.stderr.write(f"stopscope: cannot run {argv[0]!r}: {exc}\n")
    os._exit(127)
"""

_alive_pipe: tuple[int, int, int] | None = None  # (pid, read end, write end)
_alive_lock = threading.Lock()


def _parent_alive_fd() -> int:
    """The read end of a pipe whose only write end this process holds (non-inheritable):
    it reads EOF once this process is gone, however it died."""
    global _alive_pipe
    with _alive_lock:
        if _alive_pipe is None or _alive_pipe[0] != os.getpid():  # none yet, or forked
            read_end, write_end = os.pipe()
            _alive_pipe = (os.getpid(), read_end, write_end)
        return _alive_pipe[1]


def _guarded_command(
    cmd: Any, popen_kwargs: dict[str, Any], group: bool, kill_after: float
) -> list[str | bytes | os.PathLike[str] | os.PathLike[bytes]]:
    """The command line that runs ``cmd`` through the launcher (``die_with_parent``)."""
    argv: list[Any]
    if isinstance(cmd, (str, bytes)):
        argv = ["/bin/sh", "-c", cmd]  # what anyio does with a string: the shell
    elif isinstance(cmd, os.PathLike):
        argv = [cmd]
    else:
        argv = list(cmd)
        if not argv:
            raise ValueError("`cmd` must not be empty")
    _check_executable(argv[0], popen_kwargs)
    fd = _parent_alive_fd()
    popen_kwargs["pass_fds"] = (*popen_kwargs.get("pass_fds", ()), fd)
    launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(fd), "1" if group else "0"]
    return [*launcher, repr(float(kill_after)), *argv]


def _check_executable(program: Any, popen_kwargs: dict[str, Any]) -> None:
    """Raise as Popen would if ``program`` cannot be found: the launcher could only
    exit 127 once it is running."""
    name = os.fsdecode(program)
    if os.sep in name:
        cwd = popen_kwargs.get("cwd")
        path = os.path.join(os.fsdecode(cwd), name) if cwd is not None else name
        if not os.access(path, os.X_OK):
            raise FileNotFoundError(2, "No such file or directory (or not executable)", name)
        return
    env = popen_kwargs.get("env")
    search = env.get("PATH", os.defpath) if env is not None else None
    if shutil.which(name, path=search) is None:
        raise FileNotFoundError(2, "No such file or directory", name)


# ------------------------------------------------------------------ service traps
# The services (``run()``, ``stop_on_signals()`` in ``_service.py``) register their
# signal traps here, in a context variable the members' tasks inherit: a process member
# asks them whether a signal explains its exit, and every scope hands them its report.


class _Trap(Protocol):
    """The part of ``_service.SignalTrap`` the members rely on."""

    _state: str

    def _explains(self, returncode: int) -> _signal.Signals | None: ...

    def _deliver(self) -> None: ...

    def _note_cut_short(self, records: tuple[TaskRecord, ...]) -> None: ...


#: the open traps whose block the running task is in, innermost last; a task started in
#: the block inherits them with its context
_open_traps: Final[contextvars.ContextVar[tuple[_Trap, ...]]] = contextvars.ContextVar(
    "stopscope_open_traps", default=()
)


def _signal_behind_exit(returncode: int) -> _signal.Signals | None:
    """Whether a process member that exited before its stop ended by a signal that the
    service (a trap around the calling task) is stopping on; if so, act on it now.

    Exact, not timed.  A signal sent to a process group (``kill(-pgid)``, a terminal's
    Ctrl-C) is queued on every process of the group before any of them can be reported
    dead (Linux holds the task list lock across the whole group), and a supervisor
    that signals one process at a time (systemd) signals the main process first.  So
    signal n is pending here before the child's death can wake the loop; the kernel
    runs the C-level handler on the main thread (its first choice) before that thread
    returns to user code, so only the Python handler (``SignalTrap._on_signal``, in
    ``_service.py``) may still be pending.  The no-op ``pthread_sigmask()`` makes
    CPython run pending Python handlers before it returns; after it, a trap that caught
    n holds n queued (not yet acted on) or in ``received`` (acted on).  The trap then
    acts on its queue at once, from this task, so the member's scope is stopping when
    the member exits.

    Returns the signal, or ``None`` (then nothing happened): outside any trap, or for
    a status no caught signal explains (SIGKILL, a signal the trap does not handle, a
    signal nobody sent to this process, exit status 1).
    """
    traps = _open_traps.get()
    if not traps:
        return None
    if hasattr(_signal, "pthread_sigmask"):
        # changes no mask; CPython runs the pending Python signal handlers before it returns
        _signal.pthread_sigmask(_signal.SIG_BLOCK, ())
    for trap in reversed(traps):
        signum = trap._explains(returncode)
        if signum is not None:
            trap._deliver()
            return signum
    return None


def _note_scope_report(report: ShutdownReport) -> None:
    """A TaskScope exited in the calling task: every trap around it keeps its report."""
    cut = report.needed_cancellation
    if not cut:
        return
    for trap in _open_traps.get():
        if trap._state == "open":
            trap._note_cut_short(cut)


# ------------------------------------------------------------------ scope reports


def scope_exited(report: ShutdownReport) -> None:
    """Called by every TaskScope as it exits, in the task that ran its block: hands the
    frozen report to the services (``run()``, ``stop_on_signals()``) around that task,
    for ``run(fail_if_cut_short=True)``."""
    _note_scope_report(report)
