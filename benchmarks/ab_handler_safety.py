"""A/B: what the signal-handler rule (issue 15, defect 1) costs on the hot path.

A is the code as it is: ``wake_own`` asks ``may_be_in_signal_handler()`` (a frame walk
on the main thread) before it runs a loop call in place, and trio checks each waiter
for a cancellation in delivery.  B patches both checks out (loop calls always run in
place, every waiter is woken in place): the code before the fix, but for two ``if``s.

Measured in one process, A and B alternating round by round, as the median of the
paired ratios A/B:

* TaskScope stop -> exit: ``scope.stop()`` from the body, N members in ``sig.wait()``;
* wake: ``StopSignal.set()`` from a task -> the last of N waiters running.

    python benchmarks/ab_handler_safety.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel

import stopscope
from stopscope._backends import _asyncio

BACKENDS: list[tuple[str, str, dict[str, Any]]] = [
    ("asyncio", "asyncio", {}),
    ("asyncio+uvloop", "asyncio", {"use_uvloop": True}),
    ("trio", "trio", {}),
]


def patch(old: bool) -> Callable[[], None]:
    """B: the checks patched out; returns how to undo it."""
    if not old:
        return lambda: None
    saved: list[tuple[Any, str, Any]] = []
    modules: list[Any] = [_asyncio]
    try:
        from stopscope._backends import _trio

        modules.append(_trio)
    except ImportError:  # pragma: no cover
        pass
    for module in modules:
        for name in ("may_be_in_signal_handler", "_on_main_thread"):
            if hasattr(module, name):
                saved.append((module, name, getattr(module, name)))
                setattr(module, name, lambda ours=0: False)
        if hasattr(module, "_wakeable"):
            saved.append((module, "_wakeable", module._wakeable))
            module._wakeable = lambda waiter: True

    def undo() -> None:
        for module, name, value in saved:
            setattr(module, name, value)

    return undo


async def scope_stop_exit(n: int) -> float:
    async def member(sig: stopscope.StopSignal) -> None:
        await sig.wait()

    async with stopscope.TaskScope(grace=60) as scope:
        for _ in range(n):
            scope.start_soon(member, scope.signal)
        await anyio.wait_all_tasks_blocked()
        t0 = time.perf_counter()
        scope.stop()
    return time.perf_counter() - t0


async def wake(n: int) -> float:
    sig = stopscope.StopSignal()
    left = n
    done = anyio.Event()
    t1 = 0.0

    async def waiter() -> None:
        nonlocal left, t1
        await sig.wait()
        left -= 1
        if not left:
            t1 = time.perf_counter()
            done.set()

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        t0 = time.perf_counter()
        sig.set()
        await done.wait()
    return t1 - t0


async def measure(rounds: int) -> dict[str, float]:
    out: dict[str, float] = {}
    # the module's trio backend is imported once trio runs: patch after that
    await anyio.lowlevel.checkpoint()
    for name, fn in (("stop->exit", scope_stop_exit), ("wake", wake)):
        for n in (1, 1000):
            ratios: list[float] = []
            count = rounds if n == 1 else max(10, rounds // 10)
            for i in range(count):
                pair: dict[bool, float] = {}
                for old in (False, True) if i % 2 else (True, False):
                    undo = patch(old)
                    try:
                        gc.collect()
                        gc.disable()
                        pair[old] = await fn(n)
                    finally:
                        gc.enable()
                        undo()
                ratios.append(pair[False] / pair[True])
            out[f"{name} N={n}"] = statistics.median(ratios)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    for label, backend, options in BACKENDS:
        figures = anyio.run(measure, args.rounds, backend=backend, backend_options=options)
        cells = "  ".join(f"{k}: {v:.3f}" for k, v in figures.items())
        print(f"{label:15} A/B median  {cells}", flush=True)


if __name__ == "__main__":
    main()
