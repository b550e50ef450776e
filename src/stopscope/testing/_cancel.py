"""Hard-cancel runs (``mode="cancel"``), the cleanup await a cancellation cut short, and
the hang guard's messages.

A hard-cancel run is the ground cancellens covers, with the kit's report: the worker
runs in an anyio task group, and right after its N-th scheduling point the kit cancels
it (as ``tg.cancel_scope.cancel()`` would) instead of asking it to stop.  Its stop
signal is never set.  The cancellation is then not a failure; an error, a swallowed
cancellation, a worker that keeps running, a cut cleanup and a broken invariant are.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import linecache
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable, Generator
from types import CodeType, TracebackType
from typing import Any, Final, cast

import anyio

from .._report import Outcome, ShutdownReport, StopReason, TaskRecord
from .._scope import TaskScope
from .._signal import StopSignal, _backend
from ._clock import ThreadGuard, running_virtual
from ._leaks import LeakWatch
from ._probe import (
    ProbeResult,
    Scenario,
    _callable_name,
    _format,
    _invariant_failures,
    _is_library,
    _Tracer,
    _TrioInstrument,
    _until_point_any,
    _where,
)
from ._sites import Site

if sys.version_info >= (3, 11):
    from builtins import BaseExceptionGroup
else:  # anyio depends on the backport on 3.10
    from exceptiongroup import BaseExceptionGroup

__all__ = ["cut_cleanup", "run_cancel"]

#: the try statements whose handlers and finally blocks are cleanup (``except*`` too)
_TRY: Final = tuple(getattr(ast, name) for name in ("Try", "TryStar") if hasattr(ast, name))


# ------------------------------------------------------------------ cut cleanups


#: the lines of each function's awaits that sit in a `finally` or `except` block
_cleanup_cache: dict[tuple[str, CodeType], frozenset[int]] = {}
_MAX_CACHED: Final = 4096


def _is_aclose(node: ast.AST) -> bool:
    """``await x.aclose()``: closes even when cancelled (trio's rule), as ASYNC102 allows."""
    return (
        isinstance(node, ast.Await)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Attribute)
        and node.value.func.attr == "aclose"
        and not node.value.args
        and not node.value.keywords
    )


def _await_lines(body: list[ast.stmt]) -> set[int]:
    lines: set[int] = set()
    stack: list[ast.AST] = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue  # its awaits run in another frame
        if isinstance(node, ast.Await) and not _is_aclose(node):
            lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
        elif isinstance(node, (ast.AsyncWith, ast.AsyncFor)):
            lines.add(node.lineno)
        stack.extend(ast.iter_child_nodes(node))
    return lines


def _function_node(tree: ast.AST, code: CodeType) -> ast.AST | None:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == code.co_name:
            first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
            if code.co_firstlineno in (first, node.lineno):
                return node
    return None


def _cleanup_lines(code: CodeType) -> frozenset[int]:
    """The lines of *code*'s awaits inside a ``finally`` or ``except`` block."""
    key = (code.co_filename, code)  # equal code objects may come from two files
    found = _cleanup_cache.get(key)
    if found is not None:
        return found
    lines: set[int] = set()
    source = "".join(linecache.getlines(code.co_filename))
    try:
        tree = ast.parse(source) if source else None
    except SyntaxError:
        tree = None
    node = None if tree is None else _function_node(tree, code)
    if node is not None:
        stack: list[ast.AST] = list(ast.iter_child_nodes(node))
        while stack:
            child = stack.pop()
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if isinstance(child, _TRY):
                assert isinstance(child, ast.Try)  # TryStar has the same fields
                lines |= _await_lines(child.finalbody)
                for handler in child.handlers:
                    lines |= _await_lines(handler.body)
            stack.extend(ast.iter_child_nodes(child))
    if len(_cleanup_cache) >= _MAX_CACHED:
        _cleanup_cache.clear()
    result = _cleanup_cache[key] = frozenset(lines)
    return result


def _leaves(exc: BaseException, kind: type[BaseException]) -> list[BaseException]:
    if isinstance(exc, kind):
        return [exc]
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub, kind)]
    return []


def cut_cleanup(exc: BaseException | None, is_library: Callable[[str], bool]) -> str | None:
    """Where a cancellation cut a cleanup await short: the innermost line of user code
    that the cancellation *exc* came through and that is an await in a ``finally`` or
    ``except`` block (``"`line` (file:N, in fn)"``), or ``None``.

    The run-time counterpart of flake8-async's ASYNC102: an await there that is not
    shielded, reached while cancelled, raises at once and the cleanup never happens.
    ``await x.aclose()`` is exempt (it closes even when cancelled, by trio's rule).
    """
    if exc is None:
        return None
    found: tuple[TracebackType, int] | None = None
    for leaf in _leaves(exc, anyio.get_cancelled_exc_class()):
        tb = leaf.__traceback__
        while tb is not None:
            code = tb.tb_frame.f_code
            if not is_library(code.co_filename) and tb.tb_lineno in _cleanup_lines(code):
                found = (tb, tb.tb_lineno)
            tb = tb.tb_next
    if found is None:
        return None
    tb, line = found
    code = tb.tb_frame.f_code
    text = linecache.getline(code.co_filename, line).strip() or "?"
    return f"`{text}` ({os.path.basename(code.co_filename)}:{line}, in {code.co_name})"


def cut_cleanup_failure(where: str) -> str:
    return (
        f"a cancellation cut the cleanup await {where} short: an await in a `finally` or "
        f"`except` block that is not shielded raises at once when cancelled, and the "
        f"cleanup never happens (shield it, with a timeout: "
        f"`with anyio.move_on_after(seconds, shield=True):`)"
    )


# ------------------------------------------------------------------ the driver


class _Abandoned(Exception):
    """Raised out of the driver when the kit gives up on a worker that keeps running."""


#: coroutines that refused to close (they caught GeneratorExit and awaited again): kept,
#: so that the garbage collector does not close them a second time, noisily
_kept: list[Any] = []


class _Driven:
    """Drives the worker's coroutine in its task, on either backend: counts its yields,
    sees each cancellation thrown into it, and closes it when the kit gives up on it."""

    __slots__ = ("_coro", "_tracer")

    def __init__(self, coro: Any, tracer: _CancelTracer) -> None:
        self._coro = coro
        self._tracer = tracer

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, tracer = self._coro, self._tracer
        cancelled = anyio.get_cancelled_exc_class()
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                if error is None:
                    yielded = coro.send(value)
                else:
                    yielded, error = coro.throw(error), None
            except StopIteration as done:
                return done.value
            tracer.suspended()
            try:
                value = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # asyncio throws the cancellation in
                value, error = None, exc
                if isinstance(exc, cancelled) and tracer.stop_time is not None:
                    tracer.delivered += _visible(tracer.hard)
            else:  # trio sends it, as an outcome.Error the trap unwraps
                if tracer.stop_time is not None and isinstance(
                    getattr(value, "error", None), cancelled
                ):
                    tracer.delivered += _visible(tracer.hard)
            if tracer.giving_up():
                tracer.abandoned = True
                tracer.last = tracer.last or []
                try:
                    coro.close()  # its finally blocks and cancel scopes unwind
                except RuntimeError:  # it awaited again: it cannot be closed
                    _kept.append(coro)
                except Exception:  # it raised as it closed: it is closed
                    pass
                raise _Abandoned


def _visible(hard: Any) -> bool:
    """Whether the kit's cancellation reaches the worker where it is now, with no
    shield in between (a cancellation the worker gets inside a shield is its own: a
    deadline of its own, say).  Reads the backend's scope stack (private attributes,
    read defensively: without them, every cancellation counts)."""
    try:
        if _backend() == "trio":
            import trio

            status: Any = trio.lowlevel.current_task()._cancel_status
            while status._scope is not hard:  # the kit's scope is in the chain
                if status._scope.shield:
                    return False
                status = status._parent
            return True
        from anyio._backends._asyncio import _task_states

        state = _task_states.get(asyncio.current_task())  # type: ignore[arg-type]
        scope: Any = state.cancel_scope  # type: ignore[union-attr]
        while scope is not hard:  # the kit's scope is in the chain
            if scope._shield:
                return False
            scope = scope._parent_scope
    except (AttributeError, ImportError):  # pragma: no cover - other versions
        pass
    return True


def _new_scope() -> Any:
    """The kit's cancel scope: trio's own on trio (its scope stack is what
    :func:`_visible` reads), anyio's on asyncio."""
    if _backend() == "trio":
        import trio

        return trio.CancelScope()
    return anyio.CancelScope()


class _CancelTracer(_Tracer):
    """The tracer of a hard-cancel run: the stop is a cancellation of the worker."""

    __slots__ = ("abandoned", "cancel_first", "delivered", "gave_up", "hard")

    def __init__(
        self, target: int | None, grace: float | None, now: Callable[[], float], hang_points: int
    ) -> None:
        # no TaskScope: the worker runs in a plain task group, and request_stop is ours
        super().__init__(cast("TaskScope", None), target, grace, now)
        self.hang_points = hang_points
        self.hard: Any = None  # the kit's cancel scope around the worker
        self.cancel_first = False
        self.delivered = 0  # cancellations thrown into the worker after the kit's cancel
        self.abandoned = False
        self.gave_up: str | None = None  # why the kit closed the worker

    def request_stop(self, reason: str) -> None:
        self.stop_time = self.now()
        self.stop_points = self.points
        self.stop_stack = self.last
        if self.hard is not None:
            self.hard.cancel()
        else:
            self.cancel_first = True
        self.wake.set()

    def resumed(self) -> None:
        """Not used: the driver sees each resumption itself."""

    def giving_up(self) -> bool:
        """Whether the worker runs on after the cancel: for *hang_points* points (see
        :meth:`hang`), or longer than its grace (checked each time it resumes)."""
        if self.gave_up is not None:
            return True
        grace, stopped = self.grace, self.stop_time
        if stopped is not None and grace is not None and self.now() - stopped > grace:
            self.gave_up = (
                f"the worker kept running after the cancellation: {_ms(grace)} later it "
                f"was still at {_where(self.last)}, so the kit closed it"
            )
            return True
        return False

    def hang(self) -> None:
        if self.stop_time is None:
            self.hung += (
                f"the worker never waited: {self.points} scheduling points went by "
                f"without an end, at {_where(self.last)} (a busy loop?); the kit cancelled "
                f"it to end the run (hang_points={self.hang_points})",
            )
            self.request_stop("stopscope.testing: the worker never waited")
            self.hang_at = self.points + self.hang_points
            self.hang_stop = self.points
            return
        self.hang_at = math.inf
        self.gave_up = (
            f"the worker kept running after the cancellation: "
            f"{self.points - (self.stop_points or 0)} scheduling points later it was still "
            f"at {_where(self.last)}, so the kit closed it (hang_points={self.hang_points})"
        )

    async def run_hard(
        self, signal: StopSignal, worker: Callable[..., Awaitable[object]], args: tuple[Any, ...]
    ) -> None:
        coro = worker(signal, *args)
        if not inspect.iscoroutine(coro):
            self.exited = True
            self.wake.set()
            raise TypeError(
                f"the worker must be an async function; {_callable_name(worker)} returned {coro!r}"
            )
        self.coro = coro
        if self.leak_watch is not None:
            self.leak_watch.adopt_current()
        try:
            with _new_scope() as hard:
                self.hard = hard
                if self.cancel_first:
                    hard.cancel()
                try:
                    await _Driven(coro, self)
                except BaseException as exc:
                    # the cancellation (caught by `hard`, kept for the cleanup check) or
                    # the worker's error (a fact of the run, not the kit's)
                    self.raised = exc
                    raise
                self.returned = True
        except _Abandoned:
            self.raised = None
        except Exception:
            pass  # kept in self.raised
        finally:
            self.exited = True
            self.exit_time = self.now()
            self.wake.set()


def _split(exc: BaseException | None) -> tuple[bool, BaseException | None]:
    """Whether *exc* is (or holds) a cancellation, and the rest of it: the worker's error."""
    kind = anyio.get_cancelled_exc_class()
    if exc is None:
        return False, None
    if isinstance(exc, kind):
        return True, None
    if isinstance(exc, BaseExceptionGroup):
        match, rest = exc.split(kind)
        return match is not None, rest
    return False, exc


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


# ------------------------------------------------------------------ the run


async def run_cancel(
    scenario: Scenario,
    *,
    at_point: int | None,
    after: float | None,
    grace: float | None,
    within: float | None,
    idle: float | None,
    hang_points: int,
    allow_cut_cleanup: bool,
    sites: list[Site] | None = None,
) -> ProbeResult:
    """One hard-cancel run: like the graceful run of ``_probe._run``, with a cancellation
    of the worker where that run requests its stop."""
    backend = _backend()
    virtual = running_virtual()
    if backend == "trio":
        import trio

        now: Callable[[], float] = trio.current_time
    else:
        now = asyncio.get_running_loop().time
    tracer = _CancelTracer(at_point, grace, now, hang_points)
    tracer.hang_at = (at_point or 0) + hang_points
    tracer.still_at = now() if virtual else None
    tracer.sites = sites
    leaks = LeakWatch(backend, _is_library, scenario.allow_leaks)
    tracer.leak_watch = leaks
    guard = ThreadGuard() if virtual else None
    instrument: _TrioInstrument | None = None
    if backend == "trio":
        # drives the thread guard only: the tracer has no trio task, the driver counts
        instrument = _TrioInstrument(tracer, guard)
        trio.lowlevel.add_instrument(instrument)  # type: ignore[arg-type]
    elif guard is not None:
        guard.install_asyncio(asyncio.get_running_loop())
    signal = StopSignal()  # never set: the worker is cancelled, not asked
    requested_at: float | None = None
    try:
        async with anyio.create_task_group() as helpers:
            if guard is not None and backend == "trio":
                helpers.start_soon(guard.run_trio, name="stopscope.testing thread guard")
            try:
                async with anyio.create_task_group() as group:
                    leaks.start()
                    group.start_soon(
                        tracer.run_hard, signal, scenario.worker, scenario.args, name=scenario.name
                    )
                    if at_point == 0:
                        tracer.request_stop("stopscope.testing: cancel before the first step")
                    elif at_point is not None:
                        await _until_point_any(tracer, idle, virtual)
                    elif after is not None:
                        await tracer.wake.sleep(after)
                        if not tracer.exited:
                            tracer.request_stop(f"stopscope.testing: cancel after {after:g} s")
                    else:
                        await anyio.wait_all_tasks_blocked()
                        if not tracer.exited:
                            tracer.request_stop("stopscope.testing: cancel once the worker waits")
                    if tracer.stop_time is not None:
                        requested_at = time.monotonic()
            finally:
                helpers.cancel_scope.cancel()
    finally:
        leaks.stop()
        if instrument is not None:
            trio.lowlevel.remove_instrument(instrument)  # type: ignore[arg-type]

    raised = tracer.raised
    cancelled, error = _split(raised)
    stopped = tracer.stop_time is not None
    if error is not None:
        outcome = Outcome.FAILED
    elif tracer.abandoned:
        outcome = Outcome.ABANDONED
    elif cancelled or (tracer.returned and tracer.delivered):
        outcome = Outcome.CANCELLED
    elif stopped:
        outcome = Outcome.STOPPED  # it returned before any cancellation reached it
    else:
        outcome = Outcome.FINISHED
    requested = stopped and outcome is not Outcome.FINISHED and not tracer.unreached
    latency = None
    if requested and tracer.exit_time is not None and tracer.stop_time is not None:
        latency = max(0.0, tracer.exit_time - tracer.stop_time)
    swallowed = tracer.returned and tracer.delivered > 0
    if tracer.hang_stop is not None and at_point is None:
        moment = f"by the hang guard, after {tracer.hang_stop} scheduling points"
    elif tracer.unreached:
        moment = f"at scheduling point {at_point}, which it never reached"
    elif at_point is not None:
        moment = "before its first step" if at_point == 0 else f"at scheduling point {at_point}"
    elif after is not None:
        moment = f"after {after:g} s"
    else:
        moment = "once it was waiting"
    extra = list(tracer.hung)
    if tracer.gave_up is not None:
        extra.append(tracer.gave_up)
    if swallowed:
        extra.append(
            f"the worker swallowed the cancellation: cancelled "
            f"{'at ' + _where(tracer.stop_stack) if tracer.stop_stack else 'before its first step'}"
            f", it returned normally instead of letting the cancellation propagate"
        )
    cut = cut_cleanup(raised if cancelled else None, _is_library)
    if cut is not None and not allow_cut_cleanup:
        extra.append(cut_cleanup_failure(cut))
    record = TaskRecord(
        name=scenario.name,
        outcome=outcome,
        latency=latency,
        error=error,
        phase="cancelled-from-outside" if requested else "running",
        exited_at=time.monotonic(),
    )
    report = ShutdownReport(
        reason=StopReason.CANCELLED if stopped else None,
        requested_at=requested_at,
        tasks=(record,),
    )
    stop_stack = tracer.stop_stack or []
    kept = tracer.last if tracer.abandoned else None
    return ProbeResult(
        worker=scenario.name,
        backend=backend,
        virtual=virtual,
        moment=moment,
        point=at_point if requested else None,
        requested=requested,
        outcome=outcome,
        latency=latency,
        error=error,
        swallowed_cancellation=swallowed,
        grace=grace,
        within=within,
        reached=tracer.points if tracer.stop_points is None else tracer.stop_points,
        stack_at_stop=_format(stop_stack) if stop_stack else "",
        stack_at_grace=None if kept is None else _format(kept),
        invariant_failures=await _invariant_failures(scenario),
        record=record,
        report=report,
        where_at_stop=_where(stop_stack),
        where_at_grace=None if kept is None else _where(kept),
        _waited=tracer.unreached,
        mode="cancel",
        cut_cleanup=cut,
        _extra=tuple(extra),
        leaks=await leaks.leaks(),
    )
