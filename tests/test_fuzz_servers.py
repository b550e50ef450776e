"""A small fuzzer of server members: a tiny ASGI app under uvicorn and hypercorn, with
slow and streaming requests in flight when the stop comes (issue 15).

Each example is one :class:`~stopscope.TaskScope` run with its own ``anyio.run``: the
server is a member, a set of requests (drawn by hypothesis) is started and held by
the app until every one of them is in flight, then the scope is stopped.  The model:
a request that ends by itself once the stop comes (a held request that answers, a
stream that closes, a request that takes a moment more) completes with its whole
body; one that never ends by itself (stuck, or a stream that never closes) is cut
when the grace runs out.  The server's record is ``STOPPED`` exactly when no request
was cut, and ``CANCELLED`` when one was: ``STOPPED`` is a promise that nothing of the
member was cut.  Servers listen on 127.0.0.1 only; the only wall-clock assumption is
that a request which ends by itself does so well within the grace.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stopscope import Outcome, StopSignal, TaskScope
from stopscope.servers import ServerInfo, start_hypercorn, start_uvicorn

#: the scope's grace (real seconds): what a cut costs each example
GRACE = 0.6
#: how long a "slow" request takes after the stop; well within GRACE
SLOW = 0.05
#: seconds; only a guard against hangs, never a timing assertion
HANG_GUARD = 30.0
#: examples per (server, backend) pair in CI, and with --long
CI_EXAMPLES = 8
LONG_EXAMPLES = 100

ServerName = Literal["uvicorn", "hypercorn"]
Backend = tuple[str, dict[str, Any]]

COMBOS = [
    pytest.param(("asyncio", {"debug": True}), "uvicorn", id="uvicorn-asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), "uvicorn", id="uvicorn-uvloop"),
    pytest.param(("asyncio", {"debug": True}), "hypercorn", id="hypercorn-asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), "hypercorn", id="hypercorn-uvloop"),
    pytest.param(("trio", {}), "hypercorn", id="hypercorn-trio"),
]

#: requests that end by themselves once the stop comes
ENDING = ("answer", "slow", "stream")
#: requests that never end by themselves: the server must cut them
STUCK = ("stuck", "stream_stuck")
KINDS = (*ENDING, *STUCK)


@dataclass(frozen=True)
class ServerPlan:
    requests: tuple[str, ...]
    #: the scope's stop: scope.stop() from the body, or the body ending
    stop: str  # stop | body_end


server_plans = st.builds(
    ServerPlan,
    requests=st.lists(st.sampled_from(KINDS), max_size=4).map(tuple),
    stop=st.sampled_from(["stop", "body_end"]),
)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class App:
    """A tiny ASGI app: the path says what the request does; every request says when it
    is in flight (its first byte is out, or it is waiting for the stop)."""

    def __init__(self, stop: StopSignal, count: int) -> None:
        self.stop = stop
        self.in_flight = 0
        self.all_in = anyio.Event()
        self.count = count

    def _entered(self) -> None:
        self.in_flight += 1
        if self.in_flight == self.count:
            self.all_in.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert scope["type"] == "http"
        kind = scope["path"].strip("/")
        head = {"type": "http.response.start", "status": 200, "headers": []}
        if kind in ("stream", "stream_stuck"):
            await send(head)
            await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
            self._entered()
            if kind == "stream":
                await self.stop.wait()
            else:
                await anyio.sleep_forever()
            await send({"type": "http.response.body", "body": b"end\n"})
            return
        self._entered()
        if kind == "stuck":
            await anyio.sleep_forever()
        await self.stop.wait()
        if kind == "slow":
            await anyio.sleep(SLOW)
        await send(head)
        await send({"type": "http.response.body", "body": b"end\n"})


async def _client(info: ServerInfo, kind: str, results: dict[int, str], i: int) -> None:
    """One request on a connection of its own; records its whole body, or the error."""
    try:
        async with (
            httpx.AsyncClient(base_url=info.url, timeout=HANG_GUARD) as client,
            client.stream("GET", f"/{kind}") as response,
        ):
            body = b""
            async for chunk in response.aiter_bytes():
                body += chunk
            results[i] = f"{response.status_code} {body.decode()!r}"
    except httpx.HTTPError as exc:
        results[i] = f"error {type(exc).__name__}"


async def _run(plan: ServerPlan, server: ServerName) -> tuple[TaskScope, dict[int, str], list[str]]:
    results: dict[int, str] = {}
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    keep = Keep(logging.WARNING)
    logger = logging.getLogger("stopscope")
    logger.addHandler(keep)
    try:
        with anyio.fail_after(HANG_GUARD):
            scope = TaskScope(grace=GRACE, name="fuzz")
            async with scope:
                app = App(scope.signal, len(plan.requests))
                if server == "uvicorn":
                    options: dict[str, Any] = {"log_config": None, "access_log": False}
                    info = await start_uvicorn(scope, app, **options)
                else:
                    info = await start_hypercorn(scope, app)
                async with anyio.create_task_group() as clients:
                    for i, kind in enumerate(plan.requests):
                        clients.start_soon(_client, info, kind, results, i)
                    if plan.requests:
                        await app.all_in.wait()
                    if plan.stop == "stop":
                        scope.stop("fuzz")
                    else:  # the body ends; its requests end with the scope
                        clients.cancel_scope.cancel()
                        results.update({i: "left" for i in range(len(plan.requests))})
    finally:
        logger.removeHandler(keep)
    return scope, results, messages


def check(plan: ServerPlan, server: ServerName, backend: Backend) -> None:
    scope, results, messages = anyio.run(
        _run, plan, server, backend=backend[0], backend_options=backend[1]
    )
    record = scope.report.by_name(server)
    cut = any(kind in STUCK for kind in plan.requests)
    problems = []
    want = Outcome.CANCELLED if cut else Outcome.STOPPED
    if record.outcome is not want:
        problems.append(f"the server is {record.outcome.name}/{record.phase}; model: {want.name}")
    if record.outcome is Outcome.STOPPED and record.phase != "grace":
        problems.append(f"STOPPED in phase {record.phase!r}")
    if plan.stop == "stop":
        for i, kind in enumerate(plan.requests):
            got = results.get(i)
            if kind in ENDING:
                whole = "200 'first\\nend\\n'" if kind == "stream" else "200 'end\\n'"
                if got != whole:
                    problems.append(
                        f"request {i} ({kind}) ended by itself: got {got}, want {whole}"
                    )
            elif got is not None and got.startswith("200") and got.endswith("end\\n'"):
                problems.append(f"request {i} ({kind}) never ends by itself, yet got {got}")
    if any("did it catch the cancellation?" in m for m in messages):
        problems.append(f"a server member accused of catching the cancellation: {messages}")
    if problems:
        lines = "\n  ".join(problems)
        raise AssertionError(f"{plan!r} on {server} {backend}:\n  {lines}")


@pytest.mark.parametrize(("anyio_backend", "server"), COMBOS)
def test_fuzz_servers(
    anyio_backend: Backend, server: ServerName, pytestconfig: pytest.Config
) -> None:
    """Requests in flight at the stop: the server is STOPPED only if none was cut."""
    long = bool(pytestconfig.getoption("--long"))

    @settings(
        max_examples=LONG_EXAMPLES if long else CI_EXAMPLES,
        deadline=None,
        derandomize=not long,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
        print_blob=True,
    )
    @given(plan=server_plans)
    def fuzz(plan: ServerPlan) -> None:
        check(plan, server, anyio_backend)

    fuzz()
