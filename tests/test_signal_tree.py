"""Property test: any tree of child signals, set in any order, matches a simple model.

The model: a node is set iff it or an ancestor was set (before or after the node was
created); its reason is the reason of the first ``set()`` that reached it; each
callback fires exactly once with that reason; every waiter wakes iff its node is set.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stopscope import StopSignal

pytestmark = pytest.mark.anyio

# an operation: ("child", parent index) | ("set", node index, reason) | ("watch", node index)
Op = tuple[Any, ...]

ops_strategy = st.lists(
    st.one_of(
        st.tuples(st.just("child"), st.integers(0, 40)),
        st.tuples(st.just("set"), st.integers(0, 40), st.integers(0, 5)),
        st.tuples(st.just("watch"), st.integers(0, 40)),
    ),
    max_size=60,
)


class TestTreeModel:
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(ops=ops_strategy)
    async def test_tree_matches_model(self, ops: list[Op]) -> None:
        nodes = [StopSignal()]
        parents: list[int | None] = [None]
        model_reason: list[object] = [None]
        model_set = [False]
        fired: list[list[object]] = [[]]
        watches = [0]
        woke: dict[int, anyio.Event] = {}

        def subtree(root: int) -> list[int]:
            out, stack = [], [root]
            while stack:
                i = stack.pop()
                out.append(i)
                stack.extend(j for j, p in enumerate(parents) if p == i)
            return out

        async with anyio.create_task_group() as tg:

            async def waiter(i: int, done: anyio.Event) -> None:
                await nodes[i].wait()
                done.set()

            for op in ops:
                index = op[1] % len(nodes)
                if op[0] == "child":
                    nodes.append(nodes[index].child())
                    parents.append(index)
                    model_set.append(model_set[index])
                    model_reason.append(model_reason[index] if model_set[index] else None)
                    fired.append([])
                    watches.append(0)
                elif op[0] == "set":
                    reason = f"r{op[2]}"
                    first = not model_set[index]
                    assert nodes[index].set(reason) is first
                    for j in subtree(index):
                        if not model_set[j]:
                            model_set[j] = True
                            model_reason[j] = reason
                else:
                    nodes[index].on_set(fired[index].append)
                    watches[index] += 1
                    if index not in woke:
                        woke[index] = anyio.Event()
                        tg.start_soon(waiter, index, woke[index])
                        await anyio.wait_all_tasks_blocked()
                # once set() returns, the whole subtree reads as set
                for j, node in enumerate(nodes):
                    assert node.is_set() is model_set[j], (j, ops)
                    assert node.reason == model_reason[j]
            await anyio.wait_all_tasks_blocked()
            for j, event in woke.items():
                assert event.is_set() is model_set[j]
            for j, calls in enumerate(fired):
                # each callback ran exactly once if its node is set, never otherwise
                assert calls == ([model_reason[j]] * watches[j] if model_set[j] else [])
            tg.cancel_scope.cancel()
