"""Soak tests (issue 7), run only with ``--long``: flat memory over many scope cycles and
short-lived children, and exactly one winner when threads race ``set()``.

"Flat" compares the first tenth of a run with the last: after a full garbage collection,
the traced memory, the number of objects the garbage collector tracks, the open file
descriptors and the live threads must not grow between the two.  Each test prints its
figures (``pytest -s`` shows them).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from stopscope import Outcome, StopSignal, TaskScope

#: scope cycles, short-lived children, racing rounds
SCOPE_CYCLES = 10_000
CHILDREN = 1_000_000
RACE_ROUNDS = 100_000
RACE_THREADS = 8

#: growth allowed between the first and the last tenth (a leak of one object or 100
#: bytes per cycle would be 9,000 objects / 900 kB over the nine tenths)
MAX_OBJECTS_GROWTH = 1_000
MAX_TRACED_GROWTH = 256 * 1024


@pytest.fixture(autouse=True)
def _long_only(pytestconfig: pytest.Config) -> None:
    if not pytestconfig.getoption("--long"):
        pytest.skip("needs --long (soak tests take minutes)")


@dataclass
class Sample:
    traced: int
    objects: int
    fds: int
    threads: int


def _fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except FileNotFoundError:  # not Linux: count what we can
        return len(os.listdir("/dev/fd"))


def sample() -> Sample:
    gc.collect()
    return Sample(
        traced=tracemalloc.get_traced_memory()[0],
        objects=len(gc.get_objects()),
        fds=_fds(),
        threads=threading.active_count(),
    )


@pytest.fixture
def traced() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def assert_flat(what: str, samples: list[Sample], elapsed: float) -> None:
    first, last = samples
    print(
        f"\n{what}: first tenth {first}, last {last}; growth: "
        f"{last.traced - first.traced} B traced, {last.objects - first.objects} objects, "
        f"{last.fds - first.fds} fds, {last.threads - first.threads} threads; {elapsed:.1f}s"
    )
    assert last.traced - first.traced <= MAX_TRACED_GROWTH, what
    assert last.objects - first.objects <= MAX_OBJECTS_GROWTH, what
    assert last.fds <= first.fds, what
    assert last.threads <= first.threads, what


def _obeying_thread(signal: StopSignal) -> None:
    signal.wait_blocking()


@contextlib.contextmanager
def logs_kept_nowhere() -> Iterator[None]:
    """stopscope still logs (the warning path runs), but no handler keeps the records.

    pytest's log capture keeps every record of a test in memory: 1,000 cancelled-member
    warnings with their stacks would read as a leak of the library.  pytest attaches
    its handler when the test starts, so this is switched inside the test body.
    """
    log = logging.getLogger("stopscope")
    saved = log.propagate, log.handlers[:]
    log.propagate = False
    log.handlers[:] = [logging.NullHandler()]
    try:
        yield
    finally:
        log.propagate, log.handlers[:] = saved[0], saved[1]


@pytest.mark.usefixtures("traced")
def test_scope_cycles_memory_is_flat(anyio_backend: tuple[str, dict[str, Any]]) -> None:
    """10,000 scopes, each with members that obey, one that needs cancelling every 10th
    cycle, and a thread member every 100th, all under a long-lived parent signal."""
    parent = StopSignal()
    samples: list[Sample] = []

    async def worker(signal: StopSignal) -> None:
        async for _ in signal.every(3600):
            pass

    async def cycles() -> None:
        for cycle in range(SCOPE_CYCLES):
            if cycle == SCOPE_CYCLES // 10:
                samples.append(sample())
            needs_cancel = cycle % 10 == 0
            async with TaskScope(grace=0 if needs_cancel else None, signal=parent) as scope:
                scope.start_soon(scope.signal.wait, name="waiter")
                scope.start_soon(worker, scope.signal, name="worker")
                if needs_cancel:
                    scope.start_soon(anyio.sleep_forever, name="deaf")
                if cycle % 100 == 5:  # with grace=None: it returns on the signal
                    scope.start_thread(_obeying_thread, name="thread")
                await anyio.wait_all_tasks_blocked()
                scope.stop("cycle")
            outcomes = {r.outcome for r in scope.report.tasks}
            assert Outcome.FAILED not in outcomes
            assert Outcome.RUNNING not in outcomes
        samples.append(sample())

    started = time.perf_counter()
    name, options = anyio_backend
    with logs_kept_nowhere():
        anyio.run(cycles, backend=name, backend_options=options)
    assert_flat(
        f"{SCOPE_CYCLES} scope cycles on {name} {options}", samples, time.perf_counter() - started
    )
    assert not parent._hooks
    assert all(k is None or not k._hooks for k in (ref() for ref in parent._kids or ()))


@pytest.mark.usefixtures("traced")
def test_short_lived_children_memory_is_flat() -> None:
    """1,000,000 children made and dropped at once; the parent keeps none of them."""
    parent = StopSignal()
    samples: list[Sample] = []
    started = time.perf_counter()
    for i in range(CHILDREN):
        if i == CHILDREN // 10:
            samples.append(sample())
        parent.child()
    samples.append(sample())
    kept = len(parent._kids or ())
    print(f"\n{kept} weak references kept by the parent after {CHILDREN} children")
    assert_flat(f"{CHILDREN} short-lived children", samples, time.perf_counter() - started)
    assert kept <= 64  # pruned as it grows: bounded, not one per child ever made
    assert parent.set("done") is True
    assert parent.child().is_set()


def _race(make: Callable[[], StopSignal], rounds: int) -> tuple[int, float]:
    """RACE_THREADS threads call set() on the same fresh signal, round after round."""
    signals = [make() for _ in range(rounds)]
    results = [[False] * rounds for _ in range(RACE_THREADS)]
    barrier = threading.Barrier(RACE_THREADS)

    def racer(me: int) -> None:
        mine = results[me]
        for i, sig in enumerate(signals):
            if i % 64 == 0:
                barrier.wait()  # line the threads up again: they race on the same signals
            mine[i] = sig.set(me)

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(RACE_THREADS)]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter allows
    started = time.perf_counter()
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    elapsed = time.perf_counter() - started
    bad = 0
    contested = 0
    for i, sig in enumerate(signals):
        winners = [n for n in range(RACE_THREADS) if results[n][i]]
        if len(winners) != 1 or sig.reason != winners[0]:
            bad += 1
        contested += winners != [0]
    assert bad == 0, f"{bad} of {rounds} signals had not exactly one winning set()"
    return contested, elapsed


def test_racing_set_has_exactly_one_winner() -> None:
    """8 threads race set() on 100,000 fresh signals (half of them children in a tree,
    with a callback): exactly one call returns True, and its reason is the one kept."""
    root = StopSignal()

    def lone() -> StopSignal:
        return StopSignal()

    def in_tree() -> StopSignal:
        sig = root.child()
        sig.on_set(lambda reason: None)
        return sig

    half = RACE_ROUNDS // 2
    contested_lone, t_lone = _race(lone, half)
    contested_tree, t_tree = _race(in_tree, RACE_ROUNDS - half)
    print(
        f"\n{RACE_ROUNDS} racing rounds x {RACE_THREADS} threads: exactly one winner each; "
        f"won by a thread other than the first in {contested_lone + contested_tree} rounds; "
        f"{t_lone + t_tree:.1f}s"
    )
