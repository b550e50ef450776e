"""StopSignal.linked(): a signal set when any of several parents is set, leak-free."""

from __future__ import annotations

import gc
import threading
import weakref

import anyio
import pytest

from stopscope import StopSignal

pytestmark = pytest.mark.anyio

HANG_GUARD = 10.0


def hooks_of(sig: StopSignal) -> dict[object, None] | None:
    return sig._hooks  # what the parent holds strongly


class TestLinked:
    def test_set_by_any_parent_with_its_reason(self) -> None:
        for which in range(3):
            parents = [StopSignal() for _ in range(3)]
            linked = StopSignal.linked(*parents)
            assert not linked.is_set()
            assert parents[which].set(f"parent {which}")
            assert linked.is_set()
            assert linked.reason == f"parent {which}"
            assert [p.is_set() for p in parents] == [i == which for i in range(3)]

    def test_setting_it_leaves_the_parents_alone(self) -> None:
        a, b = StopSignal(), StopSignal()
        linked = StopSignal.linked(a, b)
        assert linked.set("own")
        assert not a.is_set()
        assert not b.is_set()
        a.set("later")
        assert linked.reason == "own"

    def test_born_set_when_a_parent_is_set(self) -> None:
        a, b = StopSignal(), StopSignal()
        b.set("b first")
        linked = StopSignal.linked(a, b)
        assert linked.is_set()
        assert linked.reason == "b first"
        assert not linked.set("again")

    def test_one_parent_and_the_same_parent_twice(self) -> None:
        a = StopSignal()
        linked = StopSignal.linked(a, a)
        fired: list[object] = []
        linked.on_set(fired.append)
        a.set("once")
        assert fired == ["once"]

    def test_callbacks_fire_although_nobody_holds_it(self) -> None:
        a, b = StopSignal(), StopSignal()
        fired: list[object] = []
        StopSignal.linked(a, b).on_set(fired.append)
        gc.collect()
        b.set("from b")
        assert fired == ["from b"]
        a.set("from a")
        assert fired == ["from b"]

    def test_children_and_links_compose(self) -> None:
        a, b = StopSignal(), StopSignal()
        fired: list[object] = []
        StopSignal.linked(a.child(), StopSignal.linked(b).child()).child().on_set(fired.append)
        gc.collect()
        b.set("deep")
        assert fired == ["deep"]

    def test_a_parent_that_descends_from_another(self) -> None:
        a = StopSignal()
        fired: list[object] = []
        handle = StopSignal.linked(a, a.child()).on_set(fired.append)
        assert hooks_of(a)  # pinned
        assert handle.remove()
        assert hooks_of(a) == {}
        StopSignal.linked(a, a.child()).on_set(fired.append)
        a.set("a")
        assert fired == ["a"]

    def test_bad_arguments(self) -> None:
        with pytest.raises(TypeError, match="at least one parent"):
            StopSignal.linked()
        with pytest.raises(TypeError, match="StopSignal parents"):
            StopSignal.linked(StopSignal(), object())  # type: ignore[arg-type]

    def test_set_from_another_thread(self) -> None:
        a, b = StopSignal(), StopSignal()
        linked = StopSignal.linked(a, b)
        thread = threading.Thread(target=b.set, args=("thread",))
        thread.start()
        assert linked.wait_blocking(HANG_GUARD)
        thread.join()
        assert linked.reason == "thread"


class TestNoLeak:
    def test_unreferenced_linked_signals_are_freed(self) -> None:
        a, b = StopSignal(), StopSignal()
        refs = [weakref.ref(StopSignal.linked(a, b)) for _ in range(10_000)]
        gc.collect()
        assert all(r() is None for r in refs)
        assert hooks_of(a) == {}
        assert hooks_of(b) == {}
        # the parents' weak lists are pruned as they grow: they stay small
        for _ in range(10_000):
            StopSignal.linked(a, b)
        assert len(a._kids or ()) <= 10_000
        StopSignal.linked(a, b)
        assert len(a._kids or ()) < 100

    def test_pinned_only_while_it_has_hooks(self) -> None:
        a, b = StopSignal(), StopSignal()
        linked = StopSignal.linked(a, b)
        ref = weakref.ref(linked)
        handle = linked.on_set(lambda reason: None)
        assert linked in hooks_of(a)  # type: ignore[operator]
        assert linked in hooks_of(b)  # type: ignore[operator]
        del linked
        gc.collect()
        assert ref() is not None  # its callback keeps it linked
        assert handle.remove()
        assert hooks_of(a) == {}
        assert hooks_of(b) == {}
        del handle  # it refers to its signal
        gc.collect()
        assert ref() is None

    def test_set_through_one_parent_the_other_lets_go(self) -> None:
        a, b = StopSignal(), StopSignal()
        fired: list[object] = []
        refs = []
        for _ in range(1000):
            linked = StopSignal.linked(a, b.child())
            linked.on_set(fired.append)
            refs.append(weakref.ref(linked))
        del linked
        a.set("a")
        assert len(fired) == 1000
        assert hooks_of(b) == {}  # b's pinned children were released
        gc.collect()
        assert all(r() is None for r in refs)

    def test_set_itself_lets_every_parent_go(self) -> None:
        a, b = StopSignal(), StopSignal()
        linked = StopSignal.linked(a, b)
        linked.on_set(lambda reason: None)
        linked.set("own")
        assert hooks_of(a) == {}
        assert hooks_of(b) == {}
        ref = weakref.ref(linked)
        del linked
        gc.collect()
        assert ref() is None


class TestWaiting:
    async def test_waiters_wake_on_any_parent(self) -> None:
        a, b = StopSignal(), StopSignal()
        woken: list[object] = []

        async def waiter() -> None:
            linked = StopSignal.linked(a, b)
            await linked.wait()
            woken.append(linked.reason)

        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                gc.collect()  # the waiters hold their linked signals; nothing is lost
                b.set("b")
        assert woken == ["b"] * 5
        assert hooks_of(a) == {}

    async def test_a_cancelled_waiter_unpins(self) -> None:
        a, b = StopSignal(), StopSignal()
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(StopSignal.linked(a, b).wait)
                await anyio.wait_all_tasks_blocked()
                assert hooks_of(a)
                assert hooks_of(b)
                tg.cancel_scope.cancel()
        assert hooks_of(a) == {}
        assert hooks_of(b) == {}

    async def test_sleep_and_every(self) -> None:
        a, b = StopSignal(), StopSignal()
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                results: list[object] = []

                async def sleeper() -> None:
                    results.append(await StopSignal.linked(a, b).sleep(HANG_GUARD * 10))

                async def ticker() -> None:
                    ticks = [tick async for tick in StopSignal.linked(a, b).every(HANG_GUARD)]
                    results.append(ticks)

                tg.start_soon(sleeper)
                tg.start_soon(ticker)
                await anyio.wait_all_tasks_blocked()
                a.set("a")
        assert sorted(map(repr, results)) == sorted(map(repr, [True, [0]]))
