"""The mechanisms under StopSignal that a contract test cannot time: deferral inside
a critical section, claimed waiters refusing their abort, timer entries dropping
references, and children released once set."""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref

import anyio
import anyio.lowlevel
import pytest

from stopscope import StopSignal, _backends
from stopscope import _signal as impl

pytestmark = pytest.mark.anyio


class TestDeferredSet:
    """What a signal handler sees when it interrupts a critical section on its thread."""

    async def test_set_inside_a_critical_section_defers_the_wake_not_the_flags(self) -> None:
        sig = StopSignal()
        kid = sig.child()
        keep = kid.on_set(lambda reason: None)  # pins kid: it is held strongly
        woke = anyio.Event()

        async def waiter() -> None:
            await sig.wait()
            woke.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            fired: list[object] = []
            sig.on_set(fired.append)
            with impl._lock:  # as if a handler interrupted a section holding the lock
                assert sig.set("handler") is True
                assert sig.set("again") is False
                # flags of the whole subtree are raised at once...
                assert sig.is_set()
                assert kid.is_set()
                assert kid.reason == "handler"
                assert sig.child().is_set()
                # ...but nothing ran inside the critical section
                assert fired == []
            # the holder drains the queue when it leaves a critical section
            assert impl._pending
            sig.child()
            assert not impl._pending
            assert fired == ["handler"]
            with anyio.fail_after(10):
                await woke.wait()
        assert keep.remove() is False


class TestClaimedWaiter:
    async def test_cancel_after_set_claimed_the_waiter_is_not_swallowed(self) -> None:
        sig = StopSignal()
        returned: list[bool] = []
        with anyio.CancelScope() as cs:
            async with anyio.create_task_group() as tg:

                async def waiter() -> None:
                    await sig.wait()
                    returned.append(True)  # trio: abort refused, wait() returns...
                    await anyio.lowlevel.checkpoint()  # ...and the checkpoint raises
                    returned.append(False)

                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                sig.set()  # claims the waiter
                cs.cancel()  # then its abort is attempted
        assert cs.cancelled_caught
        assert False not in returned  # the cancellation reached the waiter


class TestTimers:
    @pytest.mark.parametrize("use", ["sleep", "every"])
    async def test_ended_waits_do_not_keep_references_until_their_deadline(
        self, use: str, anyio_backend_name: str
    ) -> None:
        sig = StopSignal()
        refs: list[weakref.ref[object]] = []

        class Payload:
            pass

        async def sleeper() -> None:
            payload = Payload()
            refs.append(weakref.ref(payload))
            if use == "sleep":
                await sig.sleep(3600)
            else:
                async for _ in sig.every(3600):
                    pass
            del payload

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(sleeper)
            await anyio.wait_all_tasks_blocked()
            sig.set()
        gc.collect()
        assert all(ref() is None for ref in refs)
        heap: _backends.TimerHeap = _backends.current().timers
        entries = heap.entries()
        assert len(entries) == 10  # still there: deleted lazily...
        assert all(entry[2] is None and entry[3] is None for entry in entries)  # ...but empty


class TestChildLinks:
    async def test_a_set_child_is_released_by_its_parent(self) -> None:
        parent = StopSignal()
        kid = parent.child()
        async with anyio.create_task_group() as tg:
            tg.start_soon(kid.wait)
            await anyio.wait_all_tasks_blocked()
            assert parent._hooks == {kid: None}  # pinned while it has a waiter
            kid.set("own")
        assert parent._hooks == {}
        ref = weakref.ref(kid)
        del kid
        gc.collect()
        assert ref() is None
        assert not parent.is_set()

    async def test_dead_children_do_not_accumulate(self) -> None:
        parent = StopSignal()
        for _ in range(10_000):
            parent.child()
        assert parent._kids is not None
        assert len(parent._kids) < 100

    async def test_removing_the_last_hook_unpins_the_whole_chain(self) -> None:
        root = StopSignal()
        chain = [root]
        for _ in range(50):
            chain.append(chain[-1].child())
        handle = chain[-1].on_set(lambda reason: None)
        assert all(sig._hooks for sig in chain)
        assert handle.remove() is True
        assert all(sig._hooks == {} for sig in chain)


class TestFreshProcess:
    """Entry points that load trio lazily, each as the first trio use of a process."""

    @pytest.mark.parametrize(
        "body",
        [
            "await sig.sleep(0.01)",
            "await sig.sleep(0)",
            "await sig.wait()",
            "[t async for t in sig.every(0.01) if sig.set() or True]",
            "sig.set(); await sig.wait()",
            "with sig.cancel_scope():\n        sig.set()\n        await trio.sleep(1)",
        ],
    )
    def test_trio_first_use(self, body: str) -> None:
        code = (
            "import trio, threading, stopscope\n"
            "async def main():\n"
            "    sig = stopscope.StopSignal()\n"
            "    threading.Timer(0.05, sig.set).start()\n"
            f"    {body}\n"
            "trio.run(main)\n"
            "print('ok')\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "ok\n"
