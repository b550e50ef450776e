"""A stopscope service with one process member, run by tests/test_service_review.py.

    python tests/apps/process_member_app.py CHILD --backend trio [--stages]

The test starts it in a process group of its own and signals the whole group (as a
terminal's Ctrl-C, ``tini -g``, supervisord's ``stopasgroup`` or systemd's
``KillMode=control-group`` do), or only the member.  The service runs ``main`` under
:func:`stopscope.run` with a :class:`~stopscope.TaskScope` and one
``scope.start_process()`` member, a Python child that sleeps:

sleep     does nothing about signals: SIGINT ends it with KeyboardInterrupt (Python
          then dies by SIGINT: status -2), SIGTERM kills it (-15)
die       SIGINT and SIGTERM kill it at once (default action: -2, -15)
exit-128  waits for SIGINT or SIGTERM and exits with status 128 + n, as a JVM or a shell
          script reports "ended by signal n"

``--stages`` puts the process in a first stage and, in a second stage, a member that
returns only once the process has exited and every task is blocked (so after the
process member has decided its outcome): on stop the scope's signal is set at once,
the process member's (its stage's) only after that.

Lines on stdout, for the test to synchronise on and check:

``ready <pid>``               the member runs (it said so on its stdout): ``pid`` is its pid
``member <name> <outcome> exit_code=<n> error=<type>``   its record, once the scope ended
``main returned``             ``main`` returned: ``run()`` exits 0
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Any

import anyio
from anyio.abc import Process

import stopscope
from stopscope import StopSignal, TaskScope

BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "asyncio": ("asyncio", {}),
    "asyncio+uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}

CHILDREN = {
    "die": """
import signal, time
signal.signal(signal.SIGINT, signal.SIG_DFL)
print("ready", flush=True)
time.sleep(3600)
""",
    "sleep": """
import time
print("ready", flush=True)
time.sleep(3600)
""",
    # sigwait(), not a Python handler around time.sleep(): a signal that lands just
    # before the sleep starts would run its Python handler only after the sleep
    "exit-128": """
import os, signal
signals = {signal.SIGINT, signal.SIGTERM}
signal.pthread_sigmask(signal.SIG_BLOCK, signals)
print("ready", flush=True)
os._exit(128 + signal.sigwait(signals))
""",
}


def say(line: str) -> None:
    print(line, flush=True)


async def hold_until_exited(process: Process) -> None:
    await process.wait()
    await anyio.wait_all_tasks_blocked()


async def main(sig: StopSignal, child: str, stages: bool) -> None:
    scope = TaskScope(signal=sig, grace=30, name="service")
    try:
        async with scope:
            if stages:
                scope.stage("back")
            # in the service's group (not the default): the group's signals reach it
            process = await scope.start_process(
                [sys.executable, "-c", CHILDREN[child]],
                name="child",
                process_group=False,
                stdout=subprocess.PIPE,
            )
            assert process.stdout is not None
            seen = b""
            async for chunk in process.stdout:
                seen += chunk
                if b"\n" in seen:
                    break
            if seen != b"ready\n":
                raise RuntimeError(f"the child said {seen!r}")
            if stages:
                scope.stage("front")
                scope.start_soon(hold_until_exited, process, name="front")
            say(f"ready {process.pid}")
            await scope.signal.wait()
    finally:
        for record in scope.report.tasks:
            error = type(record.error).__name__ if record.error is not None else None
            say(
                f"member {record.name} {record.outcome.name} "
                f"exit_code={record.exit_code} error={error}"
            )


def cli() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("child", choices=sorted(CHILDREN))
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="asyncio")
    parser.add_argument("--stages", action="store_true")
    args = parser.parse_args()
    backend, options = BACKENDS[args.backend]
    stopscope.run(main, args.child, args.stages, backend=backend, backend_options=options)
    say("main returned")


if __name__ == "__main__":
    cli()
