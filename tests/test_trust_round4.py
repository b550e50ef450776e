"""Trust defects found in review and left alone until now: each test fails on the code
before its fix."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import stopscope
from stopscope import StopSignal, TaskScope
from stopscope.asgi import GracefulApp
from stopscope.servers import start_hypercorn, start_uvicorn
from stopscope.servers._readiness import check_sse_retry
from stopscope.testing import explore, probe

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")

#: an int too large for a float: float(HUGE) raises OverflowError
HUGE = 10**400


async def _app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("never called")


# ------------------------------------------------- an int too large for a float


class TestHugeInt:
    """An int too large for a float means what ``math.inf`` means for that parameter:
    "no limit" where infinity is allowed, a ``ValueError`` naming it where not; never
    an ``OverflowError`` from the check."""

    @pytest.mark.parametrize(
        "make",
        [
            pytest.param(lambda g: TaskScope(grace=g)._grace, id="TaskScope"),
            pytest.param(lambda g: GracefulApp(_app, grace=g)._grace, id="GracefulApp"),
        ],
    )
    def test_grace_is_forever(self, make: Callable[[object], object]) -> None:
        assert make(HUGE) is None
        assert make(HUGE) == make(math.inf)

    @pytest.mark.parametrize(
        "make",
        [
            pytest.param(lambda g: TaskScope(grace=g), id="TaskScope"),
            pytest.param(lambda g: GracefulApp(_app, grace=g), id="GracefulApp"),
            pytest.param(lambda g: stopscope.stop_on_signals(StopSignal(), grace=g), id="signals"),
            pytest.param(lambda g: stopscope.run(_main, grace=g, signals=()), id="run"),
        ],
    )
    def test_negative_grace_names_it(self, make: Callable[[object], object]) -> None:
        with pytest.raises(ValueError, match="`grace`"):
            make(-HUGE)

    def test_stop_on_signals_grace_is_forever(self) -> None:
        trap = stopscope.stop_on_signals(StopSignal(), grace=HUGE)
        assert trap._grace is None

    def test_run_grace_is_forever(self) -> None:
        assert stopscope.run(_main, grace=HUGE, signals=()) == "done"

    @pytest.mark.parametrize(
        "call",
        [
            pytest.param(lambda v: GracefulApp(_app, drain_delay=v), id="GracefulApp"),
            pytest.param(lambda v: check_sse_retry(v), id="sse_retry"),
        ],
    )
    @pytest.mark.parametrize("sign", [1, -1], ids=["huge", "-huge"])
    def test_finite_parameters_refuse_it(self, call: Callable[[object], object], sign: int) -> None:
        with pytest.raises(ValueError, match=r"`(drain_delay|sse_retry)` must be a finite"):
            call(sign * HUGE)

    @pytest.mark.parametrize("sign", [1, -1], ids=["huge", "-huge"])
    def test_flush_reserve_refuses_it(self, sign: int) -> None:
        pytest.importorskip("opentelemetry")
        import stopscope.otel

        with pytest.raises(ValueError, match="`flush_reserve`"):
            stopscope.otel.instrument(flush_reserve=sign * HUGE)
        assert not stopscope.otel.is_instrumented()
        with pytest.raises(ValueError, match="`timeout`"):
            stopscope.otel.flush(sign * HUGE)


async def _main(signal: StopSignal) -> str:
    await anyio.lowlevel.checkpoint()
    return "done"


@pytest.mark.anyio
class TestHugeIntOnTheLoop:
    async def test_member_grace_is_the_scopes(self) -> None:
        async def worker(signal: StopSignal) -> None:
            await signal.wait()

        with anyio.fail_after(10):
            async with TaskScope(grace=1) as scope:
                scope.start_soon(worker, scope.signal, grace=HUGE, name="w")
                await anyio.wait_all_tasks_blocked()
        (record,) = scope.report.tasks
        assert record.outcome is stopscope.Outcome.STOPPED

    async def test_server_drain_delay_refuses_it(self, anyio_backend_name: str) -> None:
        # uvicorn runs on asyncio only
        starts = [start_hypercorn] + ([start_uvicorn] if anyio_backend_name == "asyncio" else [])
        async with TaskScope(grace=1) as scope:
            for start in starts:
                for value in (HUGE, -HUGE):
                    with pytest.raises(ValueError, match="`drain_delay`"):
                        await start(scope, _app, host="127.0.0.1", port=0, drain_delay=value)

    @pytest.mark.parametrize("name", ["within", "grace", "idle"])
    async def test_testing_kit_times(self, name: str) -> None:
        async def worker(signal: StopSignal) -> None:
            await signal.wait()

        times: dict[str, Any] = {name: HUGE}
        negative: dict[str, Any] = {name: -HUGE}
        with anyio.fail_after(10):
            (await probe(worker, **times)).assert_ok()
            with pytest.raises(ValueError, match=f"`{name}`"):
                await probe(worker, **negative)
            if name != "idle":
                (await explore(worker, **{"within": 1, **times})).assert_ok()


# ------------------------------------------------ stopscope.otel: one reserve in all


class _CountingProvider:
    """An SDK tracer provider whose force_flush() is counted, and can be held stuck
    (the SDK's batch processor ignores its timeout in the same way)."""

    def __init__(self) -> None:
        from opentelemetry.sdk.trace import TracerProvider

        self.provider = TracerProvider()
        self.flushes = 0
        self.release = threading.Event()
        self.release.set()

    def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
        return self.provider.get_tracer(*args, **kwargs)

    def force_flush(self, timeout_millis: float = 30000) -> bool:
        self.flushes += 1
        return self.release.wait(HANG_GUARD)


#: the longest any wait of these tests may take (never reached when they pass)
HANG_GUARD = 20.0


async def _stop_one(signal: StopSignal) -> None:
    async with TaskScope(grace=30, signal=signal) as scope:
        scope.start_soon(StopSignal.wait, scope.signal)
        scope.stop("done")


class TestOtelReserve:
    """run()'s flush, the atexit hook and uninstrument() share one flush reserve."""

    @pytest.fixture(autouse=True)
    def _otel(self) -> Iterator[None]:
        pytest.importorskip("opentelemetry.sdk")
        yield
        import stopscope.otel

        stopscope.otel.uninstrument()

    def test_uninstrument_after_run_does_not_flush_again(
        self, anyio_backend: tuple[str, dict[str, Any]]
    ) -> None:
        import stopscope.otel

        backend, options = anyio_backend
        provider = _CountingProvider()
        stopscope.otel.instrument(tracer_provider=provider)
        stopscope.run(_stop_one, backend=backend, backend_options=options, signals=())
        assert provider.flushes == 1
        stopscope.otel.uninstrument()  # nothing recorded since run()'s flush
        assert provider.flushes == 1
        stopscope.otel.uninstrument()  # off already: nothing at all
        assert provider.flushes == 1

    def test_uninstrument_flushes_a_stop_recorded_since(
        self, anyio_backend: tuple[str, dict[str, Any]]
    ) -> None:
        import stopscope.otel

        backend, options = anyio_backend
        provider = _CountingProvider()
        stopscope.otel.instrument(tracer_provider=provider)
        stopscope.run(_stop_one, backend=backend, backend_options=options, signals=())
        anyio.run(_stop_one, StopSignal(), backend=backend, backend_options=options)
        stopscope.otel.uninstrument()
        assert provider.flushes == 2

    def test_a_stuck_flush_is_not_waited_for_twice(self) -> None:
        import stopscope.otel

        provider = _CountingProvider()
        provider.release.clear()  # its force_flush() hangs, as with a collector that never answers
        stopscope.otel.instrument(tracer_provider=provider, flush_reserve=0.05)
        listener = stopscope.otel._listener
        assert listener is not None
        joins: list[float | None] = []
        real_join = listener._thread.join

        def join(timeout: float | None = None) -> None:
            joins.append(timeout)
            real_join(timeout)

        listener._thread.join = join  # type: ignore[method-assign]
        try:
            stopscope.otel.uninstrument()  # its flush runs out of the reserve
            assert provider.flushes == 1
            # the worker is still in that flush: the close does not wait a second reserve
            assert not [t for t in joins if t is None or t > 0]
        finally:
            provider.release.set()
        real_join(HANG_GUARD)
        assert not listener._thread.is_alive()

    def test_the_budget_counts_the_current_reserve_once(self) -> None:
        import stopscope.otel

        stopscope.otel.instrument(flush_reserve=3)
        with pytest.raises(RuntimeError, match="already instrumented"):
            stopscope.otel.instrument(flush_reserve=3)
        with pytest.raises(ValueError, match="flushing telemetry"):
            stopscope.run(_main, grace=1, budget=10, reserve=2, signals=())
        stopscope.otel.uninstrument()
        stopscope.otel.instrument(flush_reserve=2)
        assert stopscope.otel.flush_reserve() == 2
        assert stopscope.run(_main, grace=1, budget=10, reserve=2, signals=()) == "done"
