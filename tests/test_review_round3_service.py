"""Review round 3 of the service level: defects proven with real signals.

Each test runs a tiny service in a child process (a session of its own), sends it
real signals by PID and reads how it ended.  Timeouts only guard against hangs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

#: seconds; only a guard against hangs, never a timing assertion
HANG_GUARD = 30.0

_RESTORE_DEFAULT_INT = """
import asyncio, signal, sys
import anyio, stopscope

async def main(stop):
    if MODE == "loop":
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        # the loop's removal puts back signal.default_int_handler for SIGINT
        loop.remove_signal_handler(signal.SIGINT)
    else:
        # a library that puts back Python's own SIGINT handler
        signal.signal(signal.SIGINT, signal.default_int_handler)
    with anyio.fail_after(HANG_GUARD):
        # the trap's watch thread takes the signal back
        while signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            await anyio.sleep(0.01)
        print("READY", flush=True)
        await stop.wait()
    return "graceful"

print(stopscope.run(main, backend=BACKEND, backend_options=OPTIONS, grace=None))
"""


def _run_child(script: str, **names: Any) -> subprocess.Popen[str]:
    prelude = "".join(f"{k} = {v!r}\n" for k, v in names.items())
    return subprocess.Popen(
        [sys.executable, "-c", prelude + textwrap.dedent(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=HANG_GUARD)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the service hung; stdout={out!r} stderr={err!r}")
    return proc.returncode, out, err


def _restore_default_int(backend: tuple[str, dict[str, Any]], mode: str) -> None:
    name, options = backend
    proc = _run_child(
        _RESTORE_DEFAULT_INT, BACKEND=name, OPTIONS=options, MODE=mode, HANG_GUARD=HANG_GUARD
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "READY", (line, proc.stderr.read() if proc.stderr else "")
        os.kill(proc.pid, signal.SIGINT)
        code, out, err = _finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "KeyboardInterrupt" not in err, err
    assert (code, out.strip()) == (0, "graceful"), (code, out, err)


def test_python_default_sigint_handler_put_back_is_not_chained(
    anyio_backend: tuple[str, dict[str, Any]],
) -> None:
    """Defect R3-1: a library inside ``main`` puts back ``signal.default_int_handler``
    (as asyncio's ``remove_signal_handler`` does for SIGINT); the watch thread chained
    to it, so Ctrl-C raised KeyboardInterrupt at a random point instead of a graceful
    stop.  It is Python's default, to be replaced as SIG_DFL is."""
    _restore_default_int(anyio_backend, "plain")


@pytest.mark.parametrize("use_uvloop", [False, True], ids=["asyncio", "uvloop"])
def test_loop_add_then_remove_sigint_handler_keeps_graceful_stop(use_uvloop: bool) -> None:
    """Defect R3-1 through its usual trigger: ``loop.add_signal_handler(SIGINT)`` then
    ``loop.remove_signal_handler(SIGINT)`` inside ``main`` (a server started and
    stopped inside the service)."""
    _restore_default_int(("asyncio", {"use_uvloop": use_uvloop}), "loop")


_NESTED = """
import logging, signal
import anyio
from stopscope import StopSignal, stop_on_signals

replaced = []

class Seen(logging.Handler):
    def emit(self, record):
        if "was replaced" in record.getMessage():
            replaced.append(record.getMessage())

logging.getLogger("stopscope").addHandler(Seen())

async def main():
    outer, inner = StopSignal(), StopSignal()
    async with stop_on_signals(outer, signal.SIGTERM) as outer_trap:
        async with stop_on_signals(inner, signal.SIGTERM) as inner_trap:
            handler = signal.getsignal(signal.SIGTERM)
            for _ in range(3):  # what each trap's watch thread hands to the loop
                outer_trap._check_handlers()
                inner_trap._check_handlers()
            print("UNCHANGED", signal.getsignal(signal.SIGTERM) is handler, flush=True)
            print("READY", flush=True)
            with anyio.fail_after(HANG_GUARD):
                await inner.wait()
        print("OUTER", outer.is_set(), flush=True)  # the inner trap owned the signal
    print("WARNINGS", len(replaced), replaced, flush=True)

anyio.run(main, backend=BACKEND, backend_options=OPTIONS)
"""


def test_nested_traps_do_not_fight_over_the_handler(
    anyio_backend: tuple[str, dict[str, Any]],
) -> None:
    """Defect R3-2: ``stop_on_signals()`` inside another (inside ``run()``'s ``main``):
    each trap's watch thread took the other's handler for a library's, chained it and
    logged a WARNING, then again every half second for as long as both were open (a
    log flood and an ever deeper chain), against "logs one WARNING".  The inner trap
    owns the signal for its block, as before the watch thread."""
    name, options = anyio_backend
    proc = _run_child(_NESTED, BACKEND=name, OPTIONS=options, HANG_GUARD=HANG_GUARD)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        ready = proc.stdout.readline().strip()
        assert ready == "READY", (first, ready, proc.stderr.read() if proc.stderr else "")
        os.kill(proc.pid, signal.SIGTERM)
        code, out, err = _finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert first == "UNCHANGED True"
    assert (code, out.split()) == (0, ["OUTER", "False", "WARNINGS", "0", "[]"]), (code, out, err)


#: seconds a stuck library handler blocks in the child (the defect's path waits it out)
STUCK = 10.0

_STUCK_HANDLER = """
import signal, threading
import anyio, stopscope

def stuck(signum, frame):
    print("IN", flush=True)
    threading.Event().wait(STUCK)  # a library's handler blocked (on a lock, a pipe)

async def main(stop):
    signal.signal(signal.SIGTERM, stuck)
    with anyio.fail_after(HANG_GUARD):
        while signal.getsignal(signal.SIGTERM) is stuck:  # until the trap chains it
            await anyio.sleep(0.01)
    print("READY", flush=True)
    await stop.wait()
    return "graceful"

print(stopscope.run(
    main, backend=BACKEND, backend_options=OPTIONS, escalation=("stop", "exit"), grace=None
))
"""


def test_a_signal_during_a_chained_handler_is_not_lost(
    anyio_backend: tuple[str, dict[str, Any]],
) -> None:
    """Defect R3-3: while a chained (replacing) handler ran, a new signal was taken for
    that handler calling back into the trap and dropped: with a library handler stuck,
    the escalation's "exit at once" never came (the process went on, then stopped
    "gracefully" once the handler returned)."""
    name, options = anyio_backend
    proc = _run_child(
        _STUCK_HANDLER, BACKEND=name, OPTIONS=options, HANG_GUARD=HANG_GUARD, STUCK=STUCK
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "READY", (line, proc.stderr.read() if proc.stderr else "")
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.stdout.readline().strip() == "IN"  # the chained handler runs
        os.kill(proc.pid, signal.SIGTERM)  # second signal: exit at once
        code, out, err = _finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert code == -signal.SIGTERM, (code, out, err)
    assert "second signal): exiting at once" in err, err


_RESTORED_CHAIN = """
import logging, signal
import anyio
from stopscope import StopSignal, stop_on_signals

replaced = []
heard = []

class Seen(logging.Handler):
    def emit(self, record):
        if "was replaced" in record.getMessage():
            replaced.append(record.getMessage())

logging.getLogger("stopscope").addHandler(Seen())

def first(signum, frame):  # a library's handler, installed inside the block
    heard.append("first")

def second(signum, frame):  # another one, which puts back what it found
    heard.append("second")

async def main():
    stop = StopSignal()
    async with stop_on_signals(stop, signal.SIGTERM) as trap:
        signal.signal(signal.SIGTERM, first)
        trap._check_handlers()  # what the watch thread hands to the loop: chains it
        found = signal.signal(signal.SIGTERM, second)
        trap._check_handlers()
        signal.signal(signal.SIGTERM, found)  # second is done: it puts back what it found
        trap._check_handlers()
        print("READY", flush=True)
        with anyio.fail_after(HANG_GUARD):
            await stop.wait()
    print("HEARD", heard, "WARNINGS", len(replaced), flush=True)

anyio.run(main, backend=BACKEND, backend_options=OPTIONS)
"""


def test_a_chain_put_back_by_a_library_is_taken_as_the_trap_own(
    anyio_backend: tuple[str, dict[str, Any]],
) -> None:
    """Defect R3-4: a library that replaced the trap's chain and then put back what it
    found (the chain) made the trap chain its own chain: a WARNING that named
    stopscope's own handler, and the library handler the chain was made for was never
    called again (the inner chain took the call for a call-back)."""
    name, options = anyio_backend
    proc = _run_child(_RESTORED_CHAIN, BACKEND=name, OPTIONS=options, HANG_GUARD=HANG_GUARD)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "READY", (line, proc.stderr.read() if proc.stderr else "")
        os.kill(proc.pid, signal.SIGTERM)
        code, out, err = _finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # one warning per replacement: first, second; none for the trap's own chain
    assert (code, out.strip()) == (0, "HEARD ['first'] WARNINGS 2"), (code, out, err)
