"""What asyncio says when something was lost: an error nobody retrieved, a task destroyed
while still pending.

asyncio says it late, when the garbage collector takes the future or the task: in
whatever test runs then.  These helpers make a test collect its own garbage and read
those reports itself, so a leak fails the test that made it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Iterator
from typing import Any

import anyio

#: the words of asyncio's reports of something lost (``Future.__del__``, ``Task.__del__``)
LEAK_MARKERS = ("exception was never retrieved", "was destroyed but it is pending")


def is_leak(message: str) -> bool:
    return any(marker in message for marker in LEAK_MARKERS)


@contextlib.contextmanager
def loop_reports() -> Iterator[list[str]]:
    """On the running asyncio loop: the messages of its exception handler's reports
    while the block runs (each still goes to the handler it had, or to asyncio's log)."""
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    messages: list[str] = []

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        messages.append(str(context.get("message")))
        if previous is None:
            loop.default_exception_handler(context)
        else:
            previous(loop, context)

    loop.set_exception_handler(handler)
    try:
        yield messages
    finally:
        loop.set_exception_handler(previous)


async def collect_garbage() -> None:
    """Collect garbage, letting the loop run the callbacks that frees in between."""
    for _ in range(3):
        gc.collect()
        await anyio.lowlevel.checkpoint()


class LeakRecords(logging.Handler):
    """On the ``asyncio`` logger: asyncio's reports of something lost, the way they reach
    the log when no handler of a test's own is on the loop (or the loop is closed)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if is_leak(message):
            self.found.append(message.partition("\n")[0])
