"""What a person reads in the logs when a scope stops (issue 8): the cancelled member's
warning names the user's own frame first and keeps library frames out unless the
``stopscope`` logger is at DEBUG, and each stop gets one INFO line."""

from __future__ import annotations

import logging

import anyio
import pytest

from stopscope import StopSignal, TaskScope

pytestmark = pytest.mark.anyio

HANG_GUARD = 10.0


async def stuck_in_a_queue_read(signal: StopSignal) -> None:
    send, receive = anyio.create_memory_object_stream[int]()
    async with send, receive:
        await receive.receive()  # the line the warning must name


async def outer_helper(signal: StopSignal) -> None:
    await stuck_in_a_queue_read(signal)


def stopscope_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "stopscope" and r.levelno == level]


async def test_cancelled_member_warning_names_the_users_frame_first(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="stopscope")
    with anyio.fail_after(HANG_GUARD):
        async with TaskScope(grace=0, name="svc") as scope:
            scope.start_soon(outer_helper, scope.signal, name="reader")
            await anyio.wait_all_tasks_blocked()
    (warning,) = stopscope_records(caplog, logging.WARNING)
    text = warning.getMessage()
    headline, _, stack = text.partition("\n")
    assert headline.startswith(
        "TaskScope 'svc': member 'reader' did not stop within its grace period (0 s) "
        "and was cancelled at "
    )
    assert "test_logs.py:" in headline
    assert "in stuck_in_a_queue_read(): await receive.receive()" in headline
    # the user's frames, outermost first, and none of the libraries'
    assert stack.startswith("Its stack, outermost first:")
    assert "outer_helper" in stack
    assert stack.index("outer_helper") < stack.index("stuck_in_a_queue_read")
    for internal in ("stopscope/_scope.py", "anyio/", "trio/", "asyncio/"):
        assert internal not in text, internal


async def test_debug_level_keeps_library_frames(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="stopscope")
    with anyio.fail_after(HANG_GUARD):
        async with TaskScope(grace=0) as scope:
            scope.start_soon(stuck_in_a_queue_read, scope.signal, name="reader")
            await anyio.wait_all_tasks_blocked()
    (warning,) = stopscope_records(caplog, logging.WARNING)
    assert "stopscope/_scope.py" in warning.getMessage()
    assert "anyio" in warning.getMessage()


async def test_one_info_line_per_stop(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="stopscope")
    with anyio.fail_after(HANG_GUARD):
        async with TaskScope(grace=30, name="svc") as scope:
            scope.start_soon(StopSignal.wait, scope.signal, name="obeys")
            scope.start_soon(StopSignal.wait, scope.signal, name="also")
            await anyio.wait_all_tasks_blocked()
            scope.stop("deploy")
    (info,) = stopscope_records(caplog, logging.INFO)
    text = info.getMessage()
    assert text.startswith("TaskScope 'svc' stopped in ")
    assert "(reason: deploy; grace 30 s): 2 member(s): 2 stopped; slowest " in text
    assert "\n" not in text


async def test_no_info_line_when_nothing_was_stopped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="stopscope")

    async def job() -> None:
        await anyio.lowlevel.checkpoint()

    async with TaskScope(stop_on_exit=False) as scope:
        scope.start_soon(job)
    assert stopscope_records(caplog, logging.INFO) == []


async def test_grace_none_is_described_in_words(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="stopscope")
    async with TaskScope(grace=None) as scope:
        scope.stop(ValueError("bad input"))
    (info,) = stopscope_records(caplog, logging.INFO)
    assert "(reason: ValueError: bad input; grace none: it waits forever)" in info.getMessage()
