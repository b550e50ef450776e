"""stopscope.testing on a real worker: the consumer of examples/service.py.

The consumer takes events off a queue and appends them to a file in batches of five
(a slow disk: each flush waits 0.6 s, then writes through anyio's file threads).  It
does not watch the stop signal: the producer closes the queue on stop, and the
consumer drains it.  Every scheduling point of the consumer is explored in virtual
time, with a grace of 5 s as in the example, and no stop point loses an event.

The feeder plays the producer's part of that contract (send until stopped, then
close the queue) at a period of 0.25 s: the example's 0.1 s producer would tie with
the consumer's 0.6 s flush on the same virtual instant, and trio runs the tasks
woken at one instant in a random order, so the point numbers would vary.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Awaitable, Callable
from itertools import count
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from stopscope import Outcome, StopSignal
from stopscope.testing import Scenario, StopKit, StopRequirementError, virtual_time

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent


def _load_service() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "stopscope_example_service", ROOT / "examples" / "service.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


service = _load_service()
Consumer = Callable[..., Awaitable[None]]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    return virtual_time(request.param)


async def feed(signal: StopSignal, send: MemoryObjectSendStream[str], sent: list[str]) -> None:
    """The producer's contract: an event every 0.25 s until stopped, then close the queue."""
    async with send:
        while not await signal.sleep(0.25):
            sent.append(f"event {len(sent)}")
            send.send_nowait(sent[-1])


async def pipeline(
    signal: StopSignal, consumer: Consumer, path: Path, sent: list[str], watches: bool
) -> None:
    """The worker explored: the consumer, fed as the service feeds it."""
    send, receive = anyio.create_memory_object_stream[str](100)
    sent.append("event 0")
    send.send_nowait("event 0")
    async with anyio.create_task_group() as tg:
        tg.start_soon(feed, signal, send, sent)
        if watches:  # a consumer that watches the stop signal itself
            await consumer(receive, path, signal)
        else:
            await consumer(receive, path)


def nothing_lost(path: Path, sent: list[str]) -> Callable[[], None]:
    def every_event_sent_is_in_the_file() -> None:
        written = path.read_text().splitlines() if path.exists() else []
        lost = [e for e in sent if e not in written]
        assert not lost, f"{len(lost)} of {len(sent)} events lost: {', '.join(lost)}"
        assert written == sent, f"the file holds {written}, not {sent}"

    return every_event_sent_is_in_the_file


def scenarios(tmp_path: Path, consumer: Consumer, watches: bool = False) -> Callable[[], Scenario]:
    runs = count()

    def scenario() -> Scenario:
        path = tmp_path / f"run-{next(runs)}.log"
        sent: list[str] = []
        return Scenario(
            pipeline,
            consumer,
            path,
            sent,
            watches,
            invariants=[nothing_lost(path, sent)],
            name=getattr(consumer, "__name__", "consumer"),
        )

    return scenario


class TestServiceConsumer:
    async def test_every_stop_point_passes(self, stop_kit: StopKit, tmp_path: Path) -> None:
        with anyio.fail_after(3600):  # virtual seconds
            exploration = await stop_kit.explore(
                scenarios(tmp_path, service.consumer), within=1.5, grace=5.0, max_points=80
            )
        exploration.assert_ok()
        assert exploration.points == tuple(range(81))
        assert not exploration.exhausted  # the feeder never ends: the limit ends it
        # the runs did flush: late stops wrote several batches through the file threads
        assert max(r.latency or 0 for r in exploration.runs) > 0.6
        assert all(r.virtual for r in exploration.runs)

    async def test_a_broken_copy_is_caught_at_the_exact_point(
        self, stop_kit: StopKit, tmp_path: Path, anyio_backend_name: str
    ) -> None:
        with anyio.fail_after(3600):
            exploration = await stop_kit.explore(
                scenarios(tmp_path, consumer_that_hurries, watches=True),
                within=1.5,
                grace=5.0,
                max_points=80,
            )
        failure = exploration.failure
        assert failure is not None
        with pytest.raises(StopRequirementError) as caught:
            exploration.assert_ok()
        message = str(caught.value)
        point = failure.point
        assert point == FIRST_FAILING_POINT[anyio_backend_name]
        assert exploration.points == tuple(range(point + 1))
        assert message.startswith(
            f"consumer_that_hurries fails when the stop lands at scheduling point {point}; "
            f"points 0-{point - 1} pass\n"
        )
        assert (
            "  - invariant every_event_sent_is_in_the_file failed: 5 of 5 events lost: "
            "event 0, event 1, event 2, event 3, event 4\n" in message
        )
        # where: in the first flush's disk wait, after the batch was taken off
        assert re.search(
            r"when the stop landed the worker was at `await consumer\(receive, path, signal\)` "
            r"\(test_testing_service\.py:\d+, in pipeline\) -> "
            r"`if await signal.sleep\(0.6\):  # BUG: "
            r"stopped during the disk wait, the events are dropped` "
            r"\(test_testing_service\.py:\d+, in hurried_flush\):\n"
            r"    File .*, in pipeline\n.*\n"
            r"    File .*, in consumer_that_hurries\n"
            r"      await hurried_flush\(batch, path, signal\)\n",
            message,
        )
        assert failure.outcome is Outcome.STOPPED  # it stopped at once: only the events are lost
        assert failure.latency == 0
        assert f"--stopscope-point={point} (or explore(..., points=[{point}]))" in message

    async def test_replaying_the_failing_point_alone(
        self, stop_kit: StopKit, tmp_path: Path, anyio_backend_name: str
    ) -> None:
        point = FIRST_FAILING_POINT[anyio_backend_name]
        exploration = await stop_kit.explore(
            scenarios(tmp_path, consumer_that_hurries, watches=True),
            within=1.5,
            grace=5.0,
            points=[point],
        )
        assert exploration.points == (point,)
        assert exploration.failure is not None
        assert exploration.failure.point == point


#: deterministic in virtual time (see the module doc): the point at which the consumer
#: waits in its first flush, with the batch already taken off
FIRST_FAILING_POINT = {"asyncio": 10, "trio": 10}


async def consumer_that_hurries(
    queue: MemoryObjectReceiveStream[str], path: Path, signal: StopSignal
) -> None:
    """A copy of service.consumer "improved" so that a stop never waits for the disk."""
    batch: list[str] = []
    async with queue:
        async for event in queue:
            batch.append(event)
            if len(batch) == 5:
                await hurried_flush(batch, path, signal)
    await service.flush(batch, path)


async def hurried_flush(batch: list[str], path: Path, signal: StopSignal) -> int:
    events = batch[:]
    batch.clear()
    if await signal.sleep(0.6):  # BUG: stopped during the disk wait, the events are dropped
        return 0
    async with await anyio.open_file(path, "a") as f:
        await f.write("".join(f"{event}\n" for event in events))
    return len(events)
