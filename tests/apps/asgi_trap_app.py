"""An app whose lifespan owns a TaskScope under ``stop_on_signals()`` (no GracefulApp):
what users wrote before, which kept uvicorn and gunicorn's workers from stopping.

Prints ``background <pid>: started`` and ``background <pid>: stopped``.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from stopscope import StopSignal, TaskScope, stop_on_signals


def say(line: str) -> None:
    sys.stdout.write(f"background {os.getpid()}: {line}\n")  # one write: workers share stdout
    sys.stdout.flush()


async def background(stop: StopSignal) -> None:
    say("started")
    await stop.wait()
    say("stopped")


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    sig = StopSignal()
    async with stop_on_signals(sig, signal.SIGTERM), TaskScope(signal=sig, grace=5) as scope:
        scope.start_soon(background, scope.signal)
        yield
        scope.stop("lifespan shutdown")


async def readyz(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ready\n")


app = Starlette(routes=[Route("/readyz", readyz)], lifespan=lifespan)
