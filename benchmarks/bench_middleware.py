#!/usr/bin/env python3
"""What does :class:`~stopscope.servers.ReadinessMiddleware` cost per request, with no
server around it?  A trivial raw-ASGI app (``http.response.start`` then the body) is
called N times directly, then N times through the middleware (default settings, state
``ready``), in one task of a real event loop: asyncio, asyncio+uvloop and trio.  Each
pass is timed in CPU time (``time.process_time``); the best of several passes is kept.

    python benchmarks/bench_middleware.py              # N=200,000, best of 5
    python benchmarks/bench_middleware.py -n 50000 --repeat 3

Printed: µs per request for the bare app and through the middleware, and the
difference (the middleware's own cost per request).  A server adds tens of µs per
request on top of either (see ``bench_serving.py``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio

from stopscope.servers import Readiness, ReadinessMiddleware

Message = MutableMapping[str, Any]
App = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]

_START: Message = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")],
}
_BODY: Message = {"type": "http.response.body", "body": b"ok"}
_SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "GET",
    "path": "/",
    "headers": [],
}


async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    await send(_START)
    await send(_BODY)


async def receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: Message) -> None:
    pass


async def one_pass(target: App, n: int) -> float:
    """CPU seconds per request over n requests (a fresh scope each, as servers make)."""
    scope = _SCOPE
    start = time.process_time()
    for _ in range(n):
        await target(dict(scope), receive, send)
    return (time.process_time() - start) / n


async def measure(n: int, repeat: int) -> tuple[float, float]:
    readiness = Readiness()
    readiness.mark_ready()
    middleware = ReadinessMiddleware(app, readiness)
    bare: list[float] = []
    wrapped: list[float] = []
    await one_pass(middleware, n // 10)  # warm up both paths
    await one_pass(app, n // 10)
    for _ in range(repeat):  # interleaved, so drift hits both alike
        bare.append(await one_pass(app, n))
        wrapped.append(await one_pass(middleware, n))
    return min(bare), min(wrapped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=200_000, help="requests per pass")
    parser.add_argument("--repeat", type=int, default=5, help="passes per path (best kept)")
    args = parser.parse_args()
    backends: list[tuple[str, str, dict[str, Any]]] = [
        ("asyncio", "asyncio", {}),
        ("asyncio+uvloop", "asyncio", {"use_uvloop": True}),
        ("trio", "trio", {}),
    ]
    print(f"{'backend':<16}{'bare app':>12}{'middleware':>12}{'difference':>12}  (µs/request)")
    for label, backend, options in backends:
        bare, wrapped = anyio.run(
            measure, args.n, args.repeat, backend=backend, backend_options=options
        )
        print(
            f"{label:<16}{bare * 1e6:>12.3f}{wrapped * 1e6:>12.3f}{(wrapped - bare) * 1e6:>12.3f}"
        )


if __name__ == "__main__":
    main()
