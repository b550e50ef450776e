"""A stopscope service whose process member is itself a stopscope service.

    python tests/apps/nested_service.py parent --backend trio [--process-group]
    python tests/apps/nested_service.py child --backend trio

Run by tests/test_supervisors.py under a real ``tini``, as the container recipe of
``docs/how-to/services.md`` says, to check that the child gets exactly one SIGTERM
(from its parent's stop, not a second one from the init) and finishes its drain.

The child writes ``child got SIGTERM`` on stdout each time a SIGTERM reaches its
handler (it wraps the handler :func:`stopscope.run` installs), ``child ready``
once it runs, and ``child drained`` once the drain that follows its stop is done
(``DRAIN`` seconds of work; a second SIGTERM would cancel it, and ``run()`` would
exit 143).  The parent writes ``parent ready <its pid> <the child's pid>`` once it
has started the child (the child shares its stdout), and the child's record once its
scope has ended:
``member child <outcome> exit_code=<n>``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

import anyio

import stopscope
from stopscope import StopSignal, TaskScope

BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "asyncio": ("asyncio", {}),
    "asyncio+uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}

HERE = os.path.abspath(__file__)
#: seconds of work the child does after its stop
DRAIN = 1.0
#: the parent's grace: far more than the child's drain
GRACE = 30.0


def say(line: str) -> None:
    print(line, flush=True)


def count_sigterms() -> None:
    """Wrap every SIGTERM handler installed from now on with a line on stdout."""
    install = signal.signal

    def counting(signum: Any, handler: Any) -> Any:
        if signum == signal.SIGTERM and callable(handler):
            inner = handler

            def handler(number: int, frame: Any) -> None:
                os.write(1, b"child got SIGTERM\n")
                inner(number, frame)

        return install(signum, handler)

    signal.signal = counting  # type: ignore[assignment]


async def child(sig: StopSignal) -> None:
    say("child ready")
    await sig.wait()
    await anyio.sleep(DRAIN)  # the drain: flush, finish what is in flight
    say("child drained")


async def parent(sig: StopSignal, backend: str, process_group: bool) -> None:
    async with TaskScope(signal=sig, grace=GRACE, name="parent") as scope:
        command = [sys.executable, HERE, "child", "--backend", backend]
        # the child inherits stdout: its lines land beside ours
        process = await scope.start_process(command, name="child", process_group=process_group)
        say(f"parent ready {os.getpid()} {process.pid}")
        await sig.wait()
    record = scope.report.by_name("child")
    say(f"member child {record.outcome.name} exit_code={record.exit_code}")


def cli() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["parent", "child"])
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="asyncio")
    parser.add_argument("--process-group", action="store_true")
    args = parser.parse_args()
    backend, options = BACKENDS[args.backend]
    if args.role == "child":
        count_sigterms()
        stopscope.run(child, backend=backend, backend_options=options)
    else:
        stopscope.run(
            parent, args.backend, args.process_group, backend=backend, backend_options=options
        )


if __name__ == "__main__":
    cli()
