"""Thread members at the edges: a result that races the cancellation, async callables.

Every test runs on asyncio (debug), asyncio+uvloop and trio.  The race is forced, not
hoped for: the loop's thread is held (no await) until the thread's call is over, so its
result waits for a loop turn; then the cancellation comes first.  ``anyio.fail_after``
and the hold's own limit only guard against hangs.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Literal

import anyio
import pytest

from stopscope import Outcome, StopSignal, TaskScope, _members

if sys.version_info < (3, 11):
    from exceptiongroup import (  # type: ignore[import-not-found, unused-ignore]
        BaseExceptionGroup,
        ExceptionGroup,
    )

pytestmark = pytest.mark.anyio

#: seconds; only a guard against hangs, never a timing assertion
HANG_GUARD = 20.0
#: a grace that the race test lets run out while the loop is held
RACE_GRACE = 0.05

Ending = Literal["raises", "returns"]
Trigger = Literal[
    "sibling SystemExit", "stop with grace=0", "grace runs out", "cancelled from outside"
]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[_members._ThreadCall]:
    """The calls the thread members make, to see when one is over."""
    made: list[_members._ThreadCall] = []

    class Recorded(_members._ThreadCall):
        __slots__ = ()

        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(_members, "_ThreadCall", Recorded)
    return made


def hold_the_loop_until_over(call: _members._ThreadCall) -> None:
    """Block the loop's thread (no await) until the thread's call is over: its result
    then waits for a loop turn that has not come yet."""
    limit = time.monotonic() + HANG_GUARD
    while call.state != "done":
        assert time.monotonic() < limit, "the thread's call did not end"
        time.sleep(0.0005)  # polling a condition of another thread, under the guard


def hold_the_loop_past(deadline: float) -> None:
    """Block the loop's thread until its clock has passed *deadline* (the grace timer
    is then due, in the same loop turn as the thread's result)."""
    while anyio.current_time() <= deadline:
        time.sleep(0.001)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "stopscope" and r.levelno >= logging.WARNING
    ]


class TestResultRacesCancellation:
    """The thread ended (raised or returned), then its member was cancelled before the
    loop delivered the result.  An error comes out exactly once; a return is no cut."""

    @pytest.mark.parametrize("ending", ["raises", "returns"])
    @pytest.mark.parametrize(
        "trigger",
        ["sibling SystemExit", "stop with grace=0", "grace runs out", "cancelled from outside"],
    )
    async def test_the_threads_end_is_kept(
        self,
        calls: list[_members._ThreadCall],
        caplog: pytest.LogCaptureFixture,
        trigger: Trigger,
        ending: Ending,
    ) -> None:
        error = ValueError("the thread's own error")
        ready, go = StopSignal(), threading.Event()

        def job(sig: StopSignal) -> str:
            ready.set()
            go.wait(HANG_GUARD)
            if trigger == "grace runs out":
                assert sig.is_set()  # it ends after the stop, within grace
            if ending == "raises":
                raise error
            return "done"

        async def sibling(sig: StopSignal) -> None:
            await ready.wait()
            go.set()
            hold_the_loop_until_over(calls[0])
            raise SystemExit(3)

        grace = {"sibling SystemExit": 60.0, "stop with grace=0": 0.0}.get(trigger, RACE_GRACE)
        scope = TaskScope(grace=grace, stop_on_exit=False)

        async def body() -> None:
            with anyio.CancelScope() as outer:
                await scoped(outer)

        async def scoped(outer: anyio.CancelScope) -> None:
            async with scope:
                scope.start_thread(job, name="job")
                if trigger == "sibling SystemExit":
                    scope.start_soon(sibling, scope.signal, name="sibling")
                    return
                await ready.wait()
                # from here to the end of the block the loop is held: no timer can fire
                if trigger == "grace runs out":
                    scope.stop("deploy")  # arms the grace timer
                    stopped_at = anyio.current_time()
                go.set()
                hold_the_loop_until_over(calls[0])
                if trigger == "stop with grace=0":
                    scope.stop("now")  # grace 0: the cancellation is sent at once
                elif trigger == "cancelled from outside":
                    outer.cancel()
                    await anyio.sleep_forever()
                else:
                    hold_the_loop_past(stopped_at + RACE_GRACE)

        with anyio.fail_after(HANG_GUARD):
            if trigger == "sibling SystemExit":
                with pytest.raises(BaseExceptionGroup) as caught:
                    await body()
                others: tuple[type[BaseException], ...] = (SystemExit,)
            elif ending == "raises":
                with pytest.raises(ExceptionGroup) as caught:
                    await body()
                others = ()
            else:
                await body()
                others = ()

        record = scope.report.by_name("job")
        if ending == "raises":
            # raised once, in the scope's group, and recorded
            assert [type(e) for e in caught.value.exceptions if e is not error] == list(others)
            assert sum(e is error for e in caught.value.exceptions) == 1
            assert record.outcome is Outcome.FAILED
            assert record.error is error
        else:
            if others:
                assert [type(e) for e in caught.value.exceptions] == list(others)
            # it returned by itself before the cancellation reached its member: nothing
            # of it was cut (after the stop within grace: STOPPED; before any: FINISHED)
            expected = Outcome.STOPPED if trigger == "grace runs out" else Outcome.FINISHED
            assert record.outcome is expected
            assert record.error is None
            assert scope.report.needed_cancellation == ()
            assert not any("did not stop within its grace" in m for m in warnings_of(caplog))
        assert not any("abandoned" in m for m in warnings_of(caplog))
        # the error is never logged on top of being raised
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def async_job(sig: StopSignal) -> None:
    await anyio.lowlevel.checkpoint()


async def async_gen_job(sig: StopSignal) -> AsyncIterator[int]:
    yield 1


class AsyncCallable:
    async def __call__(self, sig: StopSignal) -> None:
        await anyio.lowlevel.checkpoint()


class TestAsyncCallablesAreRefused:
    @pytest.mark.parametrize(
        "func",
        [
            async_job,
            functools.partial(async_job),
            functools.partial(functools.partial(async_job)),
            AsyncCallable(),
            functools.partial(AsyncCallable()),
            async_gen_job,
        ],
        ids=[
            "async def",
            "partial",
            "partial of partial",
            "async __call__",
            "partial of async __call__",
            "async generator",
        ],
    )
    async def test_an_async_function_is_refused(self, func: Callable[..., Any]) -> None:
        async with TaskScope() as scope:
            with pytest.raises(
                TypeError,
                match=r"start_thread\(\) runs a plain function .* scope\.start_soon\(\) instead",
            ):
                scope.start_thread(func)
        assert scope.report.tasks == ()

    async def test_a_coroutine_object_is_refused(self) -> None:
        coro = async_job(StopSignal())
        try:
            async with TaskScope() as scope:
                with pytest.raises(TypeError, match="not a coroutine object"):
                    scope.start_thread(coro)  # type: ignore[arg-type]
        finally:
            coro.close()

    async def test_a_callable_that_returns_a_coroutine_fails_its_member(self) -> None:
        """A lambda around an async function cannot be told apart before it runs: the
        member fails with a TypeError, and the coroutine is closed (no warning)."""

        def make(sig: StopSignal) -> Coroutine[Any, Any, None]:
            return async_job(sig)

        scope = TaskScope(grace=60.0)

        async def body() -> None:
            async with scope:
                scope.start_thread(lambda sig: make(sig), name="wrapped")
                await scope.signal.wait()

        with anyio.fail_after(HANG_GUARD), pytest.raises(ExceptionGroup) as caught:
            await body()
        (error,) = caught.value.exceptions
        assert isinstance(error, TypeError)
        assert "async code cannot run in a thread" in str(error)
        record = scope.report.by_name("wrapped")
        assert record.outcome is Outcome.FAILED
        assert record.error is error

    async def test_plain_callables_are_still_accepted(self) -> None:
        class Plain:
            def __call__(self, sig: StopSignal, out: list[str]) -> None:
                out.append("object")

        out: list[str] = []

        def plain(sig: StopSignal, out: list[str]) -> None:
            out.append("function")

        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(stop_on_exit=False) as scope:
                scope.start_thread(plain, out)
                scope.start_thread(functools.partial(plain), out)
                scope.start_thread(Plain(), out)
        assert sorted(out) == ["function", "function", "object"]
