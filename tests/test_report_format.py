"""How a ShutdownReport reads: ``print(scope.report)`` and ``report.to_dict()``.

The real-scope tests run on every backend; the latency cells are the only figures a run
decides, so the expected text takes them from the records and pins everything else.
"""

from __future__ import annotations

import json
import signal
import sys

import anyio
import pytest

from stopscope import Outcome, ShutdownReport, StopReason, StopSignal, TaskRecord, TaskScope

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup


def _ms(record: TaskRecord) -> str:
    assert record.latency is not None, record
    return f"{record.latency * 1000:.1f}"


async def _finish() -> None:
    pass


async def _watch(signal: StopSignal) -> None:
    await signal.wait()


async def _ignore_stop() -> None:
    await anyio.sleep_forever()


class TestTableFromFixedRecords:
    """The layout, on records whose every figure is known."""

    def test_aligned_table_under_the_reason(self) -> None:
        report = ShutdownReport(
            reason="deploy",
            requested_at=1234.5,
            tasks=(
                TaskRecord("job", outcome=Outcome.FINISHED, phase="running"),
                TaskRecord("poller", outcome=Outcome.STOPPED, latency=0.000123, phase="grace"),
                TaskRecord("heartbeat", kind="thread", outcome=Outcome.ABANDONED, latency=2.5),
                TaskRecord(
                    "indexer", kind="process", outcome=Outcome.CANCELLED, latency=12.34567,
                    phase="cancelled", exit_code=-9,
                ),
                TaskRecord(
                    "parser", outcome=Outcome.FAILED, latency=0.0, phase="grace",
                    error=ValueError("bad\nrow"),
                ),
            ),
        )
        assert str(report) == "\n".join([
            "stop reason: 'deploy' (requested at 1234.500 on the monotonic clock)",
            "name       kind     outcome    latency ms  error",
            "---------  -------  ---------  ----------  -------------------",
            "job        task     finished            -",
            "poller     task     stopped           0.1",
            "heartbeat  thread   abandoned      2500.0",
            "indexer    process  cancelled     12345.7",
            "parser     task     failed            0.0  ValueError: bad row",
        ])

    def test_phases_that_qualify_cancelled(self) -> None:
        report = ShutdownReport(
            reason=StopReason.CANCELLED,
            requested_at=0.0,
            tasks=(
                TaskRecord("a", outcome=Outcome.CANCELLED, latency=0.001,
                           phase="cancelled-from-outside"),
                TaskRecord("b", outcome=Outcome.CANCELLED, latency=0.002, phase="after-cancel"),
            ),
        )
        assert str(report) == "\n".join([
            "stop reason: StopReason.CANCELLED (requested at 0.000 on the monotonic clock)",
            "name  kind  outcome                    latency ms  error",
            "----  ----  -------------------------  ----------  -----",
            "a     task  cancelled (from outside)          1.0",
            "b     task  cancelled (returned late)         2.0",
        ])

    def test_never_stopped_and_empty(self) -> None:
        assert str(ShutdownReport(reason=None, requested_at=None, tasks=())) == (
            "stop never requested (every member finished on its own)\n(no members)"
        )

    def test_one_record_reads_as_a_sentence(self) -> None:
        assert str(TaskRecord("job", outcome=Outcome.FINISHED)) == "job (task): finished"
        assert str(
            TaskRecord("w", kind="thread", outcome=Outcome.FAILED, latency=0.25,
                       error=KeyError("k"))
        ) == "w (thread): failed in 250.0 ms: KeyError: 'k'"

    def test_exception_without_message_shows_its_type(self) -> None:
        report = ShutdownReport(reason=RuntimeError(), requested_at=1.0, tasks=(
            TaskRecord("x", outcome=Outcome.FAILED, latency=0.0, error=RuntimeError()),
        ))
        lines = str(report).splitlines()
        assert lines[0] == "stop reason: RuntimeError (requested at 1.000 on the monotonic clock)"
        assert lines[-1] == "x     task  failed          0.0  RuntimeError"


class TestDictFromFixedRecords:
    @pytest.mark.parametrize(
        ("reason", "expected"),
        [
            (None, None),
            ("deploy", "deploy"),
            (3, 3),
            (2.5, 2.5),
            (True, True),
            (float("nan"), "nan"),
            (StopReason.BODY_EXITED, "StopReason.BODY_EXITED"),
            (signal.SIGTERM, "Signals.SIGTERM"),
            (ValueError("boom"), "ValueError('boom')"),
            (("a", 1), "('a', 1)"),
        ],
    )
    def test_reason_becomes_a_json_value(self, reason: object, expected: object) -> None:
        d = ShutdownReport(reason=reason, requested_at=None, tasks=()).to_dict()
        assert d == {"reason": expected, "requested_at": None, "tasks": []}
        assert json.loads(json.dumps(d, allow_nan=False)) == d

    def test_record_fields_are_plain(self) -> None:
        class Custom(Exception):
            pass

        record = TaskRecord("p", kind="process", outcome=Outcome.FAILED, latency=0.5,
                            error=Custom("x"), phase="grace", exit_code=3, exited_at=9.0)
        assert record.to_dict() == {
            "name": "p",
            "kind": "process",
            "outcome": "failed",
            "latency": 0.5,
            "error": "Custom('x')",
            "error_type": f"{__name__}.TestDictFromFixedRecords."
            "test_record_fields_are_plain.<locals>.Custom",
            "phase": "grace",
            "exit_code": 3,
            "exited_at": 9.0,
            "cut": 0,
            "where": None,
        }
        assert TaskRecord("q", error=OSError(2, "gone")).to_dict()["error_type"] == (
            "FileNotFoundError"
        )


@pytest.mark.anyio
class TestRealScope:
    async def test_print_shows_every_member(self) -> None:
        async with TaskScope(grace=5.0, name="svc") as scope:
            scope.start_soon(_finish, name="job")
            await anyio.wait_all_tasks_blocked()
            scope.start_soon(_watch, scope.signal, name="poller")
            scope.start_soon(_ignore_stop, name="stuck-reader", grace=0)
            await anyio.wait_all_tasks_blocked()
            scope.stop("deploy")
        report = scope.report
        poller, stuck = report.by_name("poller"), report.by_name("stuck-reader")
        assert report.requested_at is not None
        assert str(report) == "\n".join([
            f"stop reason: 'deploy' (requested at {report.requested_at:.3f} "
            "on the monotonic clock)",
            "name          kind  outcome    latency ms  error",
            "------------  ----  ---------  ----------  -----",
            "job           task  finished            -",
            f"poller        task  stopped    {_ms(poller):>10}",
            f"stuck-reader  task  cancelled  {_ms(stuck):>10}",
        ])
        assert json.loads(json.dumps(report.to_dict(), allow_nan=False)) == {
            "reason": "deploy",
            "requested_at": report.requested_at,
            "tasks": [r.to_dict() for r in report.tasks],
        }
        assert [t["outcome"] for t in report.to_dict()["tasks"]] == [
            "finished", "stopped", "cancelled",
        ]

    async def test_print_shows_the_error_that_stopped_the_scope(self) -> None:
        async def fail() -> None:
            raise ValueError("row 7 is bad")

        scope = TaskScope(grace=5.0)

        async def run() -> None:
            async with scope:
                scope.start_soon(_watch, scope.signal, name="poller")
                await anyio.wait_all_tasks_blocked()
                scope.start_soon(fail, name="parser")
                await scope.signal.wait()

        with pytest.raises(ExceptionGroup):
            await run()
        report = scope.report
        poller = report.by_name("poller")
        assert report.requested_at is not None
        assert str(report) == "\n".join([
            f"stop reason: ValueError: row 7 is bad (requested at {report.requested_at:.3f} "
            "on the monotonic clock)",
            "name    kind  outcome  latency ms  error",
            "------  ----  -------  ----------  ------------------------",
            f"poller  task  stopped  {_ms(poller):>10}",
            # the member whose failure requested the stop has no stop latency
            "parser  task  failed            -  ValueError: row 7 is bad",
        ])
        d = report.to_dict()
        assert d["reason"] == "ValueError('row 7 is bad')"
        assert d["tasks"][1]["error"] == "ValueError('row 7 is bad')"
        assert d["tasks"][1]["error_type"] == "ValueError"
        json.dumps(d, allow_nan=False)

    async def test_body_exit_reason_prints_as_its_enum_name(self) -> None:
        async with TaskScope(grace=5.0) as scope:
            scope.start_soon(_watch, scope.signal, name="poller")
        report = scope.report
        assert str(report).splitlines()[0].startswith("stop reason: StopReason.BODY_EXITED ")
        assert report.to_dict()["reason"] == "StopReason.BODY_EXITED"
