"""A service whose ``main`` installs its own SIGTERM handler, as uvicorn does.

``python replaced_handler_app.py asyncio|asyncio+uvloop|trio [plain]``

With ``plain``, ``main`` installs no handler: it prints ``ready``, then ``stop seen``
once stopped, and returns when a line comes on its stdin.

On asyncio (and uvloop) ``main`` calls ``loop.add_signal_handler(SIGTERM, ...)``; on
trio it opens ``trio.open_signal_receiver(SIGTERM)``.  Either way it prints ``theirs``
for each SIGTERM its own handler sees.  It prints ``ready`` once its handler is in
place, ``stop seen`` when the service's stop signal is set, ``cancelled`` when a
second signal cancels it, then stays (shielded) until a third signal ends the process.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

import anyio

import stopscope


async def body(stop: stopscope.StopSignal) -> None:
    print("ready", flush=True)
    await stop.wait()
    print("stop seen", flush=True)
    try:
        await anyio.sleep_forever()
    finally:
        print("cancelled", flush=True)
        with anyio.CancelScope(shield=True):
            await anyio.sleep_forever()


async def main_asyncio(stop: stopscope.StopSignal) -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, print, "theirs", True)
    await body(stop)


async def main_trio(stop: stopscope.StopSignal) -> None:
    import trio

    async def receive(receiver: Any) -> None:
        async for _ in receiver:
            print("theirs", flush=True)

    with trio.open_signal_receiver(signal.SIGTERM) as receiver:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive, receiver)
            await body(stop)


async def main_plain(stop: stopscope.StopSignal) -> None:
    print("ready", flush=True)
    await stop.wait()
    print("stop seen", flush=True)
    await anyio.to_thread.run_sync(sys.stdin.readline)


if __name__ == "__main__":
    backend = sys.argv[1]
    if sys.argv[2:] == ["plain"]:
        options = {"use_uvloop": True} if backend == "asyncio+uvloop" else {}
        name = "trio" if backend == "trio" else "asyncio"
        stopscope.run(main_plain, backend=name, backend_options=options, grace=20)
    elif backend == "trio":
        stopscope.run(main_trio, backend="trio", grace=None)
    else:
        options = {"use_uvloop": True} if backend == "asyncio+uvloop" else {}
        stopscope.run(main_asyncio, backend="asyncio", backend_options=options, grace=None)
