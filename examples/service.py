"""A small service that stops gracefully: run it, press Ctrl-C, watch it drain.

    python examples/service.py                      # asyncio
    python examples/service.py --backend trio       # or uvloop
    kill -TERM <pid>                                # what Kubernetes and systemd send

A producer puts events on a queue; a consumer takes them off and appends them to a
file in batches (a slow disk: each flush takes a while); a thread writes a heartbeat.

On the first Ctrl-C (or SIGTERM) the producer stops and closes the queue, the consumer
drains what is left and flushes its last batch, the thread finishes its beat, and the
process exits 0.  A second Ctrl-C cancels whatever is still running (exit 130); a
third exits at once.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import tempfile
from pathlib import Path

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

import stopscope
from stopscope import StopSignal, TaskScope

log = logging.getLogger("service")


async def producer(signal: StopSignal, queue: MemoryObjectSendStream[str]) -> None:
    """Ten events a second until stopped; then closes the queue (the consumer drains it)."""
    sent = 0
    async with queue:
        async for n in signal.every(0.1):
            with signal.cancel_scope():  # a full queue must not hold up the stop
                await queue.send(f"event {n}")
                sent += 1
        left = queue.statistics().current_buffer_used
        log.info("producer: stopped after %d events; %d still queued", sent, left)


async def consumer(queue: MemoryObjectReceiveStream[str], path: Path) -> None:
    """Appends events to a file, five at a time.  It ends when the queue is closed and
    empty, so it never loses an event that was produced."""
    batch: list[str] = []
    written = 0
    async with queue:
        async for event in queue:
            batch.append(event)
            if len(batch) == 5:
                written += await flush(batch, path)
    written += await flush(batch, path)
    log.info("consumer: queue drained, %d events in %s", written, path)


async def flush(batch: list[str], path: Path) -> int:
    if not batch:
        return 0
    await anyio.sleep(0.6)  # a slow disk: a little slower than the producer
    async with await anyio.open_file(path, "a") as f:
        await f.write("".join(f"{event}\n" for event in batch))
    count = len(batch)
    batch.clear()
    return count


def heartbeat(signal: StopSignal, path: Path) -> None:
    """A blocking worker in a thread: one beat a second, until stopped."""
    beats = 0
    while not signal.wait_blocking(1.0):
        beats += 1
        with path.open("a") as f:
            f.write(f"heartbeat {beats}\n")
    log.info("heartbeat: stopped after %d beats", beats)


async def main(signal: StopSignal, path: Path) -> None:
    log.info("service: writing to %s; press Ctrl-C to stop", path)
    send, receive = anyio.create_memory_object_stream[str](100)
    async with TaskScope(signal=signal, grace=5.0, name="service") as scope:
        scope.start_soon(producer, scope.signal, send, name="producer")
        scope.start_soon(consumer, receive, path, name="consumer")
        scope.start_thread(heartbeat, path, name="heartbeat")
        await signal.wait()
    for line in str(scope.report).splitlines():  # the report prints as a small table
        log.info("report: %s", line)


def _installed(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError:
        return False
    return True


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backend",
        choices=["asyncio", "uvloop", "trio"],
        default="asyncio",
        help="event loop (default: asyncio)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path(tempfile.gettempdir()) / "stopscope-service.log"
    )
    args = parser.parse_args()
    if args.backend != "asyncio" and not _installed(args.backend):
        parser.error(
            f"--backend {args.backend} needs {args.backend}: pip install "
            f"'stopscope[{args.backend}]'"
        )
    logging.basicConfig(
        level=logging.INFO, format="%(relativeCreated)6.0f ms  %(name)-9s  %(message)s"
    )
    backend, options = (
        ("asyncio", {"use_uvloop": True}) if args.backend == "uvloop" else (args.backend, {})
    )
    stopscope.run(main, args.out, backend=backend, backend_options=options, grace=20.0)
