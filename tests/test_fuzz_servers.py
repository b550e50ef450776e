"""A small fuzzer of server members: a tiny ASGI app under uvicorn and hypercorn, with
slow and streaming requests, event streams and WebSocket sessions in flight when the
stop comes (issue 15).

Each example is one :class:`~stopscope.TaskScope` run with its own ``anyio.run``: the
server is a member, a set of requests (drawn by hypothesis) is started and held by
the app until every one of them is in flight, then the scope is stopped, in one of
the ways a scope stops: ``scope.stop()``, the body ending, the server in a stage of
its own (stopped after a later stage), the budget given as the member's own ``grace=``
(the scope waiting forever, or having a longer grace), or a hard stop (the scope
cancelled from outside once the drain began, as a second signal does).  The model,
for a graceful stop:

* a request that ends by itself once the stop comes (a held request that answers, a
  stream that closes, a request that takes a moment more, an event stream whose
  handler ends it on its signal) completes with its whole body; one that never ends
  by itself (stuck, or a plain stream that never closes) is cut at the grace, and
  counted cut even if its handler swallows the cancellation and returns;
* an event stream (``text/event-stream``) whose handler ignores its signal, or
  swallows the cancellation, is ended by the middleware ``SSE_END_AFTER`` after the
  drain began: the client gets the whole stream and a last ``retry:`` field (none
  with ``sse_retry=None``); counted as ended, not cut;
* a WebSocket session whose handler closes it on its signal gets the handler's own
  code; every other one still open ``WEBSOCKET_CLOSE_WINDOW`` after the drain began
  gets the library's close frame with ``websocket_close_code``; it then ends by
  itself (its handler reads the disconnect, or its send after the close raises
  ``OSError``: counted as closed by the drain), or ends with a bug of its own raised
  while it handles that ``OSError`` (logged by the server; neither closed nor cut), or
  is cut at the limit (it ignores everything; raises from its cleanup then; swallows
  the cancellation): counted as cut;
* the server's record is ``STOPPED`` exactly when nothing was cut, ``CANCELLED``
  with ``cut`` = the number cut otherwise; the member's log lines count the sessions
  closed, the event streams ended and the requests cut;
* a hard stop cuts the server: ``CANCELLED``, with what was in flight counted as cut
  (a handler that swallows that cancellation included: an event stream's or a
  WebSocket session's too, as the hard stop comes before the stream's end and the
  library's close).

For every example the structured log record and the OpenTelemetry listener must tell
the report's story (``fuzz_observe``).  Servers listen on 127.0.0.1 only; the only
wall-clock assumption is that a request which ends by itself (within the library's
windows included) does so well within the grace: a failed run in which the event loop
stalled (a loaded machine) is run again, a few times, before it counts.
"""

from __future__ import annotations

import gc
import logging
import re
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from fuzz_observe import Telemetry, disagreements, structured_records
from stopscope import Outcome, StopSignal, TaskScope
from stopscope.servers import ServerInfo, request_signal, start_hypercorn, start_uvicorn

#: the drain's budget (real seconds): what a cut costs each example.  uvicorn keeps
#: 0.3 s of it back for its own shutdown; what is left must hold the library's windows
#: (0.2 s for WebSocket handlers, 0.25 s for event streams) with room to spare
GRACE = 1.0
#: how long a "slow" request takes after the stop; well within GRACE
SLOW = 0.05
#: the drain delays drawn: none, or a short one (the budget counts from the stop)
DRAIN_DELAYS = (0.0, 0.1)
#: seconds; only a guard against hangs, never a timing assertion
HANG_GUARD = 30.0
#: the loop watcher's tick, and the stall (seconds beyond a tick) after which a failed
#: run may be the machine's load, not the library: a fraction of the library's windows
TICK = 0.01
STALL = 0.05
#: runs of a failing example whose loop stalled, before it counts as a failure
ATTEMPTS = 3
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

#: HTTP requests that end by themselves once the stop comes
ENDING = ("answer", "slow", "stream")
#: HTTP requests that never end by themselves: the server must cut them (one raises
#: from its cleanup as it is cut: cut all the same, and its error logged; one is a
#: stream whose handler swallows the cut and returns: cut all the same)
STUCK = ("stuck", "stream_stuck", "stuck_error", "stream_swallow")
#: event streams: ended by the handler on its signal; ended by the middleware (the
#: handler ignores its signal; or it swallows the cancellation and sends on)
SSE_OWN = "sse_end"
SSE_ENDED = ("sse_ignore", "sse_swallow")
#: WebSocket sessions: closed by the handler on its signal (code 4000)
WS_OWN = "ws_own"
#: closed by the library, then ended by themselves: read until the disconnect; send
#: until the send after the close raises OSError
WS_CLOSED = ("ws_naive", "ws_ticker")
#: closed by the library, then raise a bug of their own while handling the OSError
WS_BUG = "ws_cleanup_bug"
#: closed by the library, then cut: ignore everything; raise from their cleanup as
#: they are cut; swallow the cancellation
WS_CUT = ("ws_stuck", "ws_stuck_error", "ws_swallow")
WEBSOCKETS = (WS_OWN, *WS_CLOSED, WS_BUG, *WS_CUT)
KINDS = (*ENDING, *STUCK, SSE_OWN, *SSE_ENDED, *WEBSOCKETS)
#: handlers that ignore everything (their signal, the disconnect, the close), or swallow
#: the cancellation that cuts them: a hard stop (before the event streams' end and the
#: library's close) cuts them whatever the server does
IGNORE_ALL = (*STUCK, "sse_ignore", "sse_swallow", "ws_stuck", "ws_stuck_error", "ws_swallow")
#: the handlers that swallow the server's cut (or a hard stop's): counted as cut on
#: trio, and on asyncio from Python 3.13 on (before, a task's count is no evidence)
SWALLOWERS = ("stream_swallow", "sse_swallow", "ws_swallow")
#: what a request that is cut counts for
CUT = (*STUCK, *WS_CUT)
#: the handler's own close code (WS_OWN)
OWN_CODE = 4000
#: the ways the scope stops (see the module's docstring)
STOPS = ("stop", "body_end", "stage", "own_grace", "own_shorter", "hard")
#: the scope's grace with `own_shorter` (the member's own grace is GRACE)
LONGER = 4 * GRACE


@dataclass(frozen=True)
class ServerPlan:
    requests: tuple[str, ...]
    #: the scope's stop: one of STOPS
    stop: str
    websocket_close_code: int = 1001
    sse_retry: float | None = 1.0
    drain_delay: float = 0.0


server_plans = st.builds(
    ServerPlan,
    requests=st.lists(st.sampled_from(KINDS), max_size=4).map(tuple),
    stop=st.sampled_from(STOPS),
    websocket_close_code=st.sampled_from([1001, 1012, 4001]),
    sse_retry=st.sampled_from([1.0, 0.5, None]),
    drain_delay=st.sampled_from(DRAIN_DELAYS),
)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

SSE_HEAD = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store")],
}
SSE_FIRST = b"data: first\n\n"
SSE_BYE = b"data: bye\n\n"


class CleanupBug(Exception):
    """A bug in a WebSocket handler's cleanup (raised on purpose)."""


class App:
    """A tiny ASGI app: the path says what the request does; every request says when it
    is in flight (its first byte is out, its session accepted, or it is waiting for
    the stop)."""

    def __init__(self, stop: StopSignal, count: int) -> None:
        self.stop = stop
        self.in_flight = 0
        self.all_in = anyio.Event()
        self.count = count
        #: what each WebSocket handler's receive() said at the end ("disconnect <code>"),
        #: or the error its send raised
        self.ws_ends: list[str] = []

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
        kind = scope["path"].strip("/")
        if scope["type"] == "websocket":
            await self._websocket(kind, scope, receive, send)
            return
        assert scope["type"] == "http"
        if kind.startswith("sse"):
            await self._event_stream(kind, scope, send)
            return
        head = {"type": "http.response.start", "status": 200, "headers": []}
        if kind in ("stream", "stream_stuck", "stream_swallow"):
            await send(head)
            await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
            self._entered()
            if kind == "stream":
                await self.stop.wait()
            elif kind == "stream_swallow":
                try:
                    await anyio.sleep_forever()
                except anyio.get_cancelled_exc_class():
                    return  # swallowed the cut: returns as if it had ended by itself
            else:
                await anyio.sleep_forever()
            await send({"type": "http.response.body", "body": b"end\n"})
            return
        self._entered()
        if kind == "stuck":
            await anyio.sleep_forever()
        if kind == "stuck_error":
            try:
                await anyio.sleep_forever()
            finally:
                raise CleanupBug("the cleanup failed as the request was cut")
        await self.stop.wait()
        if kind == "slow":
            await anyio.sleep(SLOW)
        await send(head)
        await send({"type": "http.response.body", "body": b"end\n"})

    async def _event_stream(self, kind: str, scope: Scope, send: Send) -> None:
        await send(SSE_HEAD)
        await send({"type": "http.response.body", "body": SSE_FIRST, "more_body": True})
        signal = request_signal(scope)
        self._entered()
        if kind == SSE_OWN:
            await signal.wait()
            await send({"type": "http.response.body", "body": SSE_BYE})
            return
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            if kind != "sse_swallow":
                raise
        # swallowed the cancellation: what it sends now goes nowhere
        await send({"type": "http.response.body", "body": SSE_BYE})

    async def _websocket(self, kind: str, scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "websocket.connect"
        signal = request_signal(scope)
        await send({"type": "websocket.accept"})
        self._entered()
        if kind == WS_OWN:
            await signal.wait()
            await send({"type": "websocket.close", "code": OWN_CODE})
            # the code of the disconnect it then hears is the server's (hypercorn: 1000)
            await self._read_until_disconnect(receive, "own close")
        elif kind == "ws_naive":
            await self._read_until_disconnect(receive)
        elif kind in ("ws_ticker", WS_BUG):
            try:
                while True:
                    await send({"type": "websocket.send", "text": "tick"})
                    await anyio.sleep(0.01)  # the app's own pace, not the test's ordering
            except OSError:
                self.ws_ends.append("send OSError")
                if kind == WS_BUG:
                    raise CleanupBug("the cleanup failed")  # noqa: B904 - its own bug
        else:
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                self.ws_ends.append("cut")
                if kind == "ws_swallow":
                    return
                raise
            finally:
                if kind == "ws_stuck_error":
                    raise CleanupBug("the cleanup failed as the session was cut")

    async def _read_until_disconnect(self, receive: Receive, say: str = "") -> None:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.ws_ends.append(say or f"disconnect {message.get('code')}")
                return


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


async def _ws_client(info: ServerInfo, kind: str, results: dict[int, str], i: int) -> None:
    """One WebSocket session: records the close code it got (answering the close),
    or how the connection ended without one; the texts are checked to be ticks."""
    stream = await anyio.connect_tcp(info.host, info.port)
    ws = WSConnection(ConnectionType.CLIENT)
    code: int | None = None
    texts: set[str] = set()
    try:
        await stream.send(ws.send(Request(host=f"{info.host}:{info.port}", target=f"/{kind}")))
        while code is None:
            data = await stream.receive()
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    pass
                elif isinstance(event, TextMessage):
                    texts.add(event.data)
                elif isinstance(event, CloseConnection):
                    code = event.code
                    await stream.send(ws.send(event.response()))
        results[i] = f"close {code}" if texts <= {"tick"} else f"close {code} texts {texts}"
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
        results[i] = "eof"
    finally:
        with anyio.CancelScope(shield=True):
            await stream.aclose()


class Logs(logging.Handler):
    """The library's lines (INFO and up) and every error a server logged."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.errors: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("stopscope"):
            if record.levelno >= logging.INFO:
                self.lines.append(record.getMessage())
        elif record.levelno >= logging.ERROR or record.exc_info:
            self.errors.append(record)


@dataclass
class Run:
    scope: TaskScope
    results: dict[int, str]
    logs: Logs
    fields: list[dict[str, Any]]
    ws_ends: list[str]
    #: the longest the event loop stalled during the run (seconds beyond a tick)
    stall: float = 0.0
    #: whether a cut the handler swallowed is seen (see SWALLOWERS)
    seen: bool = True


async def _serve(
    plan: ServerPlan, server: ServerName, app: App, scope: TaskScope, results: dict[int, str]
) -> None:
    own_grace = plan.stop in ("own_grace", "own_shorter")
    hard = anyio.CancelScope()
    with hard:
        async with scope:
            signal = scope.stage("web") if plan.stop == "stage" else None
            options: dict[str, Any] = {
                "websocket_close_code": plan.websocket_close_code,
                "sse_retry": plan.sse_retry,
                "drain_delay": plan.drain_delay,
                "grace": GRACE if own_grace else None,
            }
            if server == "uvicorn":
                info = await start_uvicorn(scope, app, log_config=None, access_log=False, **options)
            else:
                info = await start_hypercorn(scope, app, **options)
            if signal is not None:  # a later stage, stopped first: the server waits for it
                front = scope.stage("front")
                scope.start_soon(front.wait, name="front")
            async with anyio.create_task_group() as clients:
                for i, kind in enumerate(plan.requests):
                    client = _ws_client if kind in WEBSOCKETS else _client
                    clients.start_soon(client, info, kind, results, i)
                if plan.requests:
                    await app.all_in.wait()
                if plan.stop == "body_end":  # the body ends; its requests end with the scope
                    clients.cancel_scope.cancel()
                    results.update({i: "left" for i in range(len(plan.requests))})
                else:
                    scope.stop("fuzz")
                if plan.stop == "hard":  # a second signal: cancel it all once the drain began
                    await info.readiness.draining.wait()
                    hard.cancel()


async def _run(plan: ServerPlan, server: ServerName, logs: Logs) -> Run:
    results: dict[int, str] = {}
    grace = {"own_grace": None, "own_shorter": LONGER}.get(plan.stop, GRACE)
    scope = TaskScope(grace=grace, name="fuzz")
    app = App(scope.signal, len(plan.requests))
    stall = 0.0

    async def watch_the_loop() -> None:
        nonlocal stall
        while True:
            before = anyio.current_time()
            await anyio.sleep(TICK)
            stall = max(stall, anyio.current_time() - before - TICK)

    with structured_records() as records, anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as watcher:
            watcher.start_soon(watch_the_loop)
            await _serve(plan, server, app, scope, results)
            watcher.cancel_scope.cancel()
    return Run(scope, results, logs, records.fields, app.ws_ends, stall)


def run_plan(plan: ServerPlan, server: ServerName, backend: Backend) -> Run:
    """One example, with what the servers logged (the garbage collector's reports of
    what the run left behind included)."""
    logs = Logs()
    root = logging.getLogger()
    root.addHandler(logs)
    # the servers' records reach the root logger, whatever an earlier test left: an
    # in-process uvicorn with its default log_config turns the "uvicorn" logger's
    # propagation off for the rest of the session
    loggers = [logging.getLogger(name) for name in _SERVER_LOGGERS]
    saved = [(logger.propagate, logger.disabled) for logger in loggers]
    for logger in loggers:
        logger.propagate, logger.disabled = True, False
    try:
        run = anyio.run(_run, plan, server, logs, backend=backend[0], backend_options=backend[1])
        run.seen = backend[0] == "trio" or sys.version_info >= (3, 13)
        gc.collect()
    finally:
        for logger, (propagate, disabled) in zip(loggers, saved, strict=True):
            logger.propagate, logger.disabled = propagate, disabled
        root.removeHandler(logs)
    return run


#: the loggers whose records the fuzzer reads, from the root logger
_SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "hypercorn.error", "asyncio", "stopscope")


def expected_body(plan: ServerPlan, kind: str) -> str | None:
    """What the client of a request that ends by itself gets (None: it is cut)."""
    if kind in ("answer", "slow"):
        return "200 'end\\n'"
    if kind == "stream":
        return "200 'first\\nend\\n'"
    if kind == SSE_OWN:
        return f"200 {(SSE_FIRST + SSE_BYE).decode()!r}"
    if kind in SSE_ENDED:
        retry = b"" if plan.sse_retry is None else b"retry: %d\n\n" % round(plan.sse_retry * 1000)
        return f"200 {(SSE_FIRST + retry).decode()!r}"
    if kind == WS_OWN:
        return f"close {OWN_CODE}"
    if kind in WEBSOCKETS:  # the library's close frame reached every other session
        return f"close {plan.websocket_close_code}"
    return None


def check(plan: ServerPlan, server: ServerName, backend: Backend, telemetry: Telemetry) -> None:
    """Run the plan and judge it; a run whose loop stalled (a loaded machine) and
    failed is run again, up to ATTEMPTS times: the model assumes a loop that runs."""
    for attempt in range(1, ATTEMPTS + 1):
        run = run_plan(plan, server, backend)
        problems = judge(plan, server, run, *telemetry.take())
        if not problems:
            return
        if run.stall <= STALL or attempt == ATTEMPTS:
            text = "\n  ".join(problems)
            raise AssertionError(
                f"{plan!r} on {server} {backend} (attempt {attempt}, the loop stalled "
                f"{run.stall:.3f} s at most):\n  {text}"
            )


def judge(
    plan: ServerPlan, server: ServerName, run: Run, spans: list[Any], grown: dict[Any, int]
) -> list[str]:
    """The model's differences with one run."""
    scope, lines = run.scope, run.logs.lines
    record = scope.report.by_name(server)
    kinds = Counter(plan.requests)
    cut = sum(kinds[k] for k in CUT)
    unseen = 0 if run.seen else sum(kinds[k] for k in SWALLOWERS)
    if not run.seen:  # the server's cut it swallowed (the library's cut is seen)
        cut -= kinds["stream_swallow"]
    if plan.stop == "body_end" and server == "hypercorn":
        # the clients left first; a handler that only sends, and ignores its signal (set
        # as its client left), sends on for ever: hypercorn drops what is sent after the
        # client left, where uvicorn raises OSError; the session is over, so the library
        # sends no close frame that would make its send raise: cut at the limit
        cut += kinds["ws_ticker"] + kinds[WS_BUG]
    problems = disagreements(scope.report, "fuzz", run.fields, spans, grown)
    if plan.stop == "hard":
        if record.outcome is not Outcome.CANCELLED:
            problems.append(f"hard stop: the server is {record.outcome.name}/{record.phase}")
        # cut with the member: at least the handlers that ignore everything or swallow
        # the cut (a handler that reads may hear the server's disconnect and end by
        # itself first), at most all
        floor = sum(kinds[k] for k in IGNORE_ALL) - unseen
        if not floor <= record.cut <= len(plan.requests):
            problems.append(f"hard stop: cut={record.cut}; model: {floor}..{len(plan.requests)}")
    else:
        want = Outcome.CANCELLED if cut else Outcome.STOPPED
        if record.outcome is not want or record.cut != cut:
            problems.append(
                f"the server is {record.outcome.name}/{record.phase} cut={record.cut}; "
                f"model: {want.name} cut={cut}"
            )
        if record.outcome is Outcome.STOPPED and record.phase != "grace":
            problems.append(f"STOPPED in phase {record.phase!r}")
        if plan.stop != "body_end":  # (then the clients left first: the sessions and
            problems += _check_graceful(plan, server, kinds, cut, run)  # streams end with them)
    if any("did it catch the cancellation?" in m for m in lines):
        problems.append(f"a server member accused of catching the cancellation: {lines}")
    return problems


def _count_line(lines: list[str], pattern: str) -> int:
    """The count in the member's line that matches ``pattern`` (0: no such line)."""
    found = [int(m.group(1)) for line in lines if (m := re.search(pattern, line))]
    assert len(found) <= 1, found
    return found[0] if found else 0


#: what asyncio logs (at garbage collection) once hypercorn's shutdown was cut short
HYPERCORN_CUT = "_GatheringFuture exception was never retrieved"
#: what uvicorn logs (ERROR, no traceback) when its graceful timeout cancels requests
UVICORN_TIMEOUT = re.compile(r"Cancel \d+ running task\(s\), timeout graceful shutdown exceeded")
#: what uvicorn logs (ERROR) for a handler that returned, its response not complete (a
#: stream whose handler swallowed the cut)
UVICORN_INCOMPLETE = "ASGI callable returned without completing response."


def _check_graceful(
    plan: ServerPlan, server: ServerName, kinds: Counter[str], cut: int, run: Run
) -> list[str]:
    """What the clients, the handlers and the logs saw of a graceful stop, the clients
    there to the end."""
    problems: list[str] = []
    lines, results = run.logs.lines, run.results
    for i, kind in enumerate(plan.requests):
        got = results.get(i)
        whole = expected_body(plan, kind)
        if whole is not None and got != whole:
            problems.append(f"request {i} ({kind}): got {got}, want {whole}")
        elif whole is None and got is not None and got.endswith("end\\n'"):
            problems.append(f"request {i} ({kind}) never ends by itself, yet got {got}")
    code = plan.websocket_close_code
    closed = sum(kinds[k] for k in WS_CLOSED)
    ended = sum(kinds[k] for k in SSE_ENDED)
    sent = sum(kinds[k] for k in WEBSOCKETS if k != WS_OWN)
    counts = {
        "closed by the drain": (_count_line(lines, r"(\d+) WebSocket session\(s\) closed"), closed),
        "close frames sent": (_count_line(lines, r"\(code \d+\) to (\d+) open WebSocket"), sent),
        "event streams ended": (_count_line(lines, r"ended (\d+) event stream"), ended),
        "cut": (_count_line(lines, r"(\d+) request\(s\) did not finish"), cut),
    }
    for what, (got_n, want_n) in counts.items():
        if got_n != want_n:
            problems.append(f"the member's lines say {got_n} {what}; model: {want_n}: {lines}")
    if closed and not any(f"closed by the drain (code {code})" in line for line in lines):
        problems.append(f"no line names the close code {code}: {lines}")
    # what the WebSocket handlers saw: the library's code in receive(), OSError on send
    want_ends = Counter(
        {
            "own close": kinds[WS_OWN],
            f"disconnect {code}": kinds["ws_naive"],
            "send OSError": kinds["ws_ticker"] + kinds[WS_BUG],
            "cut": sum(kinds[k] for k in WS_CUT),
        }
    )
    got_ends = Counter(run.ws_ends)
    if +got_ends != +want_ends:
        problems.append(f"the WebSocket handlers saw {dict(got_ends)}; model: {dict(+want_ends)}")
    # the server logged the handlers' own bugs, and nothing else
    bugs = kinds[WS_BUG] + kinds["ws_stuck_error"] + kinds["stuck_error"]
    errors = run.logs.errors
    logged = [r for r in errors if r.exc_info and r.exc_info[0] is CleanupBug]
    others = [r.getMessage() for r in errors if r not in logged]
    # (a stream that swallows the cut is cut, seen or not)
    if (cut or kinds["stream_swallow"]) and server == "uvicorn":
        # its own line as its timeout cancels (no traceback)
        others = [m for m in others if not UVICORN_TIMEOUT.match(m)]
        # and one per stream whose handler swallowed the cut and returned
        incomplete = sum(m == UVICORN_INCOMPLETE for m in others)
        if incomplete != kinds["stream_swallow"]:
            problems.append(
                f"uvicorn said {incomplete} response(s) incomplete; "
                f"model: {kinds['stream_swallow']}"
            )
        others = [m for m in others if m != UVICORN_INCOMPLETE]
    if any(f"member {server!r} did not stop within its grace period" in m for m in lines):
        # a starved loop (a loaded machine) let the drain overrun the grace: the scope
        # cut the member, and hypercorn's own cleanup with it, which leaves asyncio a
        # gathering future nobody asked (as in a hard stop); the model still holds
        others = [m for m in others if not m.startswith(HYPERCORN_CUT)]
    if len(logged) != bugs or others:
        problems.append(f"the servers logged {len(logged)} CleanupBug (model: {bugs}), {others}")
    return problems


@pytest.mark.parametrize(("anyio_backend", "server"), COMBOS)
def test_fuzz_servers(
    anyio_backend: Backend, server: ServerName, pytestconfig: pytest.Config
) -> None:
    """Requests, event streams and WebSocket sessions in flight at the stop: each ends
    the way the model says, and the server is STOPPED only if none was cut."""
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
        check(plan, server, anyio_backend, telemetry)

    with Telemetry().active() as telemetry:
        fuzz()


# ------------------------------------------------------------------ shrunk failures

#: the grace of the regression tests below (real seconds), and a request's shielded
#: cleanup that outlasts it: the server's own drain cannot end within the grace
SHORT_GRACE = 0.5
LONG_CLEANUP = 2 * SHORT_GRACE


@pytest.mark.parametrize(("anyio_backend", "server"), COMBOS)
def test_a_server_cut_at_the_grace_counts_the_requests_cut_with_it(
    anyio_backend: Backend, server: ServerName
) -> None:
    """Found by the fuzzer on a loaded machine: the server's drain overran the grace
    (here: a request's cleanup is shielded and outlasts it; hypercorn waits for its
    connections), so the scope cut the member.  It is ``CANCELLED``, and the request
    cut with it counts in its ``cut`` (and so in the structured record and the
    telemetry), as when the server's own timeout cuts it."""

    async def main() -> TaskScope:
        entered = anyio.Event()

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "lifespan":
                raise RuntimeError("no lifespan here")  # the servers go on without it
            entered.set()
            try:
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.sleep(LONG_CLEANUP)

        async def client(info: ServerInfo) -> None:
            results: dict[int, str] = {}
            await _client(info, "stuck", results, 0)

        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as clients, TaskScope(grace=SHORT_GRACE) as scope:
                if server == "uvicorn":
                    info = await start_uvicorn(scope, app, log_config=None, access_log=False)
                else:
                    info = await start_hypercorn(scope, app)
                clients.start_soon(client, info)
                await entered.wait()
                scope.stop("deploy")
        return scope

    scope = anyio.run(main, backend=anyio_backend[0], backend_options=anyio_backend[1])
    record = scope.report.by_name(server)
    assert (record.outcome, record.cut) == (Outcome.CANCELLED, 1), record


@pytest.mark.parametrize(("anyio_backend", "server"), COMBOS)
def test_a_request_whose_cleanup_raises_as_it_is_cut_counts_as_cut(
    anyio_backend: Backend, server: ServerName
) -> None:
    """Found by the fuzzer: a request the server's drain timeout cut, whose cleanup then
    raised an error of its own (which took the cancellation's place), was not counted:
    the member said ``STOPPED`` with ``cut=0`` although the client never got its
    response (the server's 500, or nothing).  It is cut: the member is ``CANCELLED``,
    and the error is logged."""
    plan = ServerPlan(requests=("stuck_error",), stop="stop")
    run = run_plan(plan, server, anyio_backend)
    record = run.scope.report.by_name(server)
    assert (record.outcome, record.cut) == (Outcome.CANCELLED, 1), record
    # its response never came (if the grace ran out, the client was cut with the body)
    assert not run.results.get(0, "cut").startswith("200"), run.results
    logged = [r for r in run.logs.errors if r.exc_info and r.exc_info[0] is CleanupBug]
    assert len(logged) == 1


@pytest.mark.parametrize(("anyio_backend", "server"), COMBOS)
@pytest.mark.parametrize(
    "plan",
    [
        ServerPlan(requests=("stream_swallow", "answer"), stop="stop"),
        ServerPlan(requests=("stream_swallow", "sse_swallow", "ws_swallow"), stop="hard"),
    ],
    ids=["graceful", "hard"],
)
def test_a_handler_that_swallows_the_cut_counts_as_cut(
    anyio_backend: Backend, server: ServerName, plan: ServerPlan
) -> None:
    """Found by the fuzzer: a handler cut by the server's drain timeout, or by a hard
    stop, that caught the cancellation and returned normally was not counted (the
    member said ``STOPPED cut=0`` after a graceful stop, and ``cut`` below what was cut
    after a hard stop).  Each is cut, as the model says."""
    with Telemetry().active() as telemetry:
        check(plan, server, anyio_backend, telemetry)
