"""A GracefulApp with a long drain delay and a budget, for its server's own command.

    uvicorn graceful_delay_app:app        (from tests/apps)

Its report ends with the budget line, which names the phases of the stop.
"""

from __future__ import annotations

from typing import Any

from stopscope.asgi import GracefulApp


async def inner(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
    elif scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


app = GracefulApp(inner, drain_delay=30, grace=40, budget=60, reserve=5)
