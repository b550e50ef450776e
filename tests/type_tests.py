"""Pins the public types; checked by mypy --strict, never executed (not collected by pytest)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
from typing_extensions import assert_type

from stopscope import (
    CallbackHandle,
    Outcome,
    ShutdownReport,
    StopSignal,
    TaskRecord,
    TaskScope,
)


async def job(signal: StopSignal, count: int) -> str:
    return str(count)


async def checks() -> None:
    sig = StopSignal()
    assert_type(sig.set("why"), bool)
    assert_type(sig.is_set(), bool)
    assert_type(sig.reason, object)
    assert_type(await sig.wait(), None)
    assert_type(await sig.sleep(1.0), bool)
    assert_type(sig.every(1.0), AsyncIterator[int])
    assert_type(sig.child(), StopSignal)
    handle = sig.on_set(lambda reason: None)
    assert_type(handle, CallbackHandle)
    assert_type(handle.remove(), bool)
    with sig.cancel_scope() as cs:
        assert_type(cs, anyio.CancelScope)
    assert_type(sig.wait_blocking(0.5), bool)

    async with TaskScope(grace=1.0) as scope:
        assert_type(scope, TaskScope)
        scope.start_soon(job, scope.signal, 3, name="job", grace=0.5)
        scope.start_soon(job, scope.signal, "3")  # type: ignore[arg-type]
        assert_type(scope.stop("x"), bool)
        assert_type(scope.stage("writer"), StopSignal)
    report = scope.report
    assert_type(report, ShutdownReport)
    record = report.tasks[0]
    assert_type(record, TaskRecord)
    assert_type(record.outcome, Outcome)
    assert_type(record.latency, float | None)
    assert_type(record.error, BaseException | None)
