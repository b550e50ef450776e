"""A web service whose stop is checked against the orchestrator's budget and logged as JSON.

``stopscope.run(..., budget=30)`` is told Kubernetes' ``terminationGracePeriodSeconds``
(30 s by default): before anything starts it checks that the grace and the reserve fit
in it, and refuses to start, saying what to shorten, when they do not.  On SIGTERM the
server keeps serving, not ready, for the drain delay, then drains its requests; the
log says how much of the budget each phase used.

Every log line is one JSON object on stderr (a plain ``logging.Formatter``: no JSON
library needed); stopscope's summary lines carry the stop as a ``stopscope`` field.

    python examples/stop_budget.py --port 8000 --budget 30 --grace 25 --drain-delay 5
    curl 'http://127.0.0.1:8000/slow?seconds=3' &  kill -TERM <pid>

``GET /`` answers at once, ``GET /slow?seconds=S`` after S seconds, ``GET /readyz``
is the readiness probe (503 once the stop begins).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any
from urllib.parse import parse_qs

import anyio

import stopscope
from stopscope import StopSignal
from stopscope.servers import WebService

#: what run() keeps of its grace for the service inside to finish, and unwind
RUN_MARGIN = 2.0


class JsonLines(logging.Formatter):
    """One JSON object per record: the usual keys, and any ``stopscope`` field."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "stopscope", None)
        if fields is not None:
            line["stopscope"] = fields
        return json.dumps(line)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``GET /`` at once, ``GET /slow?seconds=S`` after S seconds."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        query = parse_qs(scope["query_string"].decode())
        await anyio.sleep(float(query.get("seconds", ["1"])[0]))
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok\n"})


async def main(signal: StopSignal, args: argparse.Namespace) -> None:
    grace = args.grace - RUN_MARGIN  # the service's own, inside run()'s
    async with WebService(signal=signal, grace=grace, name="web") as service:
        server = await service.serve(
            app,
            server="uvicorn",
            host="127.0.0.1",
            port=args.port,
            drain_delay=args.drain_delay,
            log_config=None,
            access_log=False,
        )
        print(f"listening on {server.url}", flush=True)
        await signal.wait()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--port", type=int, default=8000, help="0: any free port")
    parser.add_argument(
        "--budget",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="the orchestrator's limit: terminationGracePeriodSeconds, TimeoutStopSec",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=25.0,
        metavar="SECONDS",
        help="run()'s grace: the whole stop, drain delay included",
    )
    parser.add_argument(
        "--reserve",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="kept after the grace: unwinding, telemetry flush, exit",
    )
    parser.add_argument(
        "--drain-delay",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="keep serving, not ready, this long after SIGTERM",
    )
    args = parser.parse_args(argv)
    if args.grace <= RUN_MARGIN:
        parser.error(f"--grace must be longer than {RUN_MARGIN:g} s")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    try:
        stopscope.run(
            main,
            arguments,
            grace=arguments.grace,
            budget=arguments.budget,
            reserve=arguments.reserve,
        )
    except ValueError as exc:  # the budget check: before anything started
        sys.exit(f"stop_budget.py: {exc}")
