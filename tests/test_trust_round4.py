"""Trust defects found in review and left alone until now: each test fails on the code
before its fix."""

from __future__ import annotations

import math
from collections.abc import Callable
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
