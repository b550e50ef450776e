"""The backend seam stays a seam: no import cycles, no backend branches in the core.

Everything that differs between asyncio and trio lives in ``stopscope/_backends/``;
``StopSignal`` (``_signal.py``) and ``TaskScope`` (``_scope.py``) read as the contract.
These tests read the source (``ast``), so they hold on every backend at once.
"""

from __future__ import annotations

import ast
import asyncio
import sys
from pathlib import Path

import anyio
import pytest

import stopscope
from stopscope import StopSignal, TaskScope, _backends

PACKAGE = Path(stopscope.__file__).parent
CORE = ("_signal.py", "_scope.py")


#: seconds; only a guard against hangs, never a timing assertion
HANG_GUARD = 10.0


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def resolve(name: str, level: int, current: str, is_package: bool) -> str:
    """The absolute name of a relative import made in module ``current``."""
    if level == 0:
        return name
    base = current.split(".")
    if not is_package:
        base.pop()
    for _ in range(level - 1):
        base.pop()
    return ".".join([*base, name] if name else base)


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The stopscope modules ``name`` imports, at any depth of the file (functions too)."""
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = resolve(node.module or "", node.level, name, is_package)
            # ``from . import x`` imports the submodule x when there is one
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            # ``import stopscope.a.b`` runs stopscope.a.b: count the deepest module named
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in ``graph`` as a path whose first and last names are the same, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle is not None:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle is not None:
                return cycle
    return None


class TestImportGraph:
    def test_no_module_of_stopscope_imports_itself_back(self) -> None:
        modules = all_modules()
        graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
        assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or ())

    def test_the_graph_is_read_as_imported(self) -> None:
        """The walk sees function-level imports and resolves relative ones."""
        modules = all_modules()
        graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
        assert "stopscope._backends" in graph["stopscope._signal"]
        assert "stopscope._backends._trio" in graph["stopscope._backends"]  # lazy, in a function
        assert "stopscope._signal" not in graph["stopscope._backends._asyncio"]

    def test_the_cycle_finder_finds_one(self) -> None:
        graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
        assert find_cycle(graph) == ["a", "b", "c", "a"]
        assert find_cycle({"a": {"b"}, "b": set()}) is None


def backend_branches(source: str) -> list[str]:
    """What in ``source`` branches on a backend or reaches into one: an import of
    asyncio, trio, sniffio, uvloop or a backend module, a use of such a module
    (``asyncio.sleep``), a comparison with a "trio" or "asyncio" string."""
    found: list[str] = []
    libraries = {"asyncio", "trio", "sniffio", "uvloop"}
    names = {"trio", "asyncio"}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in libraries]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module.split(".")[0] in libraries or module.startswith("_backends."):
                found.append(f"from {module} import ...")
        elif isinstance(node, ast.Name) and node.id in libraries:
            found.append(node.id)
        elif isinstance(node, (ast.Compare, ast.MatchValue)):
            operands = (
                [node.left, *node.comparators] if isinstance(node, ast.Compare) else [node.value]
            )
            found += [
                repr(operand.value)
                for operand in operands
                if isinstance(operand, ast.Constant) and operand.value in names
            ]
    return found


class TestNoBackendBranchesInTheCore:
    @pytest.mark.parametrize("filename", CORE)
    def test_core_module_does_not_name_a_backend(self, filename: str) -> None:
        source = (PACKAGE / filename).read_text()
        assert backend_branches(source) == []
        assert "import trio" not in source

    def test_the_checker_sees_a_branch(self) -> None:
        source = 'import asyncio\nif backend == "trio":\n    asyncio.sleep(0)\n'
        assert sorted(backend_branches(source)) == ["'trio'", "asyncio", "asyncio"]
        assert backend_branches('match name:\n    case "asyncio":\n        pass\n') == ["'asyncio'"]
        assert backend_branches("from ._backends._trio import TrioWaiter\n") != []
        assert backend_branches('"""Works on asyncio and trio."""\nLIBS = ("trio",)\n') == []


@pytest.mark.anyio
class TestOneBackendPerLoop:
    async def test_the_backend_is_chosen_once_per_loop_or_run(
        self, anyio_backend_name: str
    ) -> None:
        backend = _backends.current()
        assert backend.name == anyio_backend_name.partition("+")[0]
        assert _backends.current() is backend
        assert _backends.running() is backend

        async def in_a_task(out: list[object]) -> None:
            out.append(_backends.current())

        seen: list[object] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(in_a_task, seen)
        assert seen == [backend]

    async def test_a_scope_and_a_timed_wait_use_the_loops_backend(self) -> None:
        backend = _backends.current()
        sig = StopSignal()
        assert await sig.sleep(0.001) is False
        assert backend.timers.heap or backend.timers.seq  # the loop's timer service ran it
        async with TaskScope(grace=1) as scope:
            assert scope._backend is backend


class TestOutsideALoop:
    def test_the_error_says_what_to_do(self) -> None:
        with pytest.raises(RuntimeError, match="asyncio or trio"):
            _backends.current()
        assert _backends.running() is None
        assert not _backends.on_loop_thread()


def test_the_core_imports_without_trio() -> None:
    """The seam loads trio's side only when trio runs (tests/test_packaging.py checks an
    installed wheel without trio; this checks the source tree, quickly)."""
    import subprocess

    code = (
        "import sys; sys.modules['trio'] = None\n"
        "import stopscope, anyio\n"
        "async def main():\n"
        "    sig = stopscope.StopSignal()\n"
        "    async with stopscope.TaskScope(grace=1) as scope:\n"
        "        scope.start_soon(sig.wait)\n"
        "        sig.set()\n"
        "    assert await sig.sleep(1)\n"
        "anyio.run(main)\n"
        "assert 'stopscope._backends._trio' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.anyio
class TestBackendEdges:
    async def test_the_repr_names_the_loop_or_run(self, anyio_backend_name: str) -> None:
        backend = _backends.current()
        kind = anyio_backend_name.partition("+")[0]
        assert repr(backend).startswith(f"<stopscope {kind} backend of ")

    async def test_a_loop_call_that_raises_is_logged_and_the_others_still_wake(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        from stopscope._signal import _add_hook

        def boom() -> None:
            raise ValueError("boom")

        sig = StopSignal()
        assert _add_hook(sig, _backends.LoopCall(boom, _backends.current()))
        woken: list[bool] = []

        async def waiter() -> None:
            await sig.wait()
            woken.append(True)

        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                assert sig.set() is True
        assert woken == [True]
        assert "raised while a signal was being set" in caplog.text
        assert "ValueError: boom" in caplog.text

    async def test_a_timer_call_that_raises_is_logged_and_the_next_still_runs(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        backend = _backends.current()
        ran: list[str] = []

        def boom() -> None:
            raise ValueError("timer boom")

        now = backend.clock()
        backend.call_at(now, boom)
        backend.call_at(now, lambda: ran.append("next"))
        with anyio.fail_after(HANG_GUARD):
            # a later deadline on the same heap: both calls above are due before it
            assert await StopSignal().sleep(0.01) is False
        assert ran == ["next"]
        assert "stopscope timer call" in caplog.text
        assert "ValueError: timer boom" in caplog.text


def test_a_loop_that_refuses_attributes_keeps_its_backend_aside() -> None:
    from stopscope._backends import _asyncio as asyncio_backend

    class SlottedLoop(asyncio.SelectorEventLoop):  # as a loop class with __slots__ would
        def __setattr__(self, name: str, value: object) -> None:
            if name == asyncio_backend.LOOP_ATTR:
                raise AttributeError(name)
            super().__setattr__(name, value)

    async def main() -> tuple[object, bool]:
        sig = StopSignal()
        asyncio.get_running_loop().call_soon(sig.set)
        await sig.wait()
        return _backends.current(), sig.is_set()

    loop = SlottedLoop()
    try:
        backend, was_set = loop.run_until_complete(main())
        assert was_set
        assert not hasattr(loop, asyncio_backend.LOOP_ATTR)
        assert asyncio_backend._by_loop[loop] is backend
        assert asyncio_backend.backend_of(loop) is backend  # made once, found again
    finally:
        loop.close()


def test_the_home_of_a_hook() -> None:
    from stopscope._backends import _asyncio as asyncio_backend
    from stopscope._backends._base import home_of

    class MyFuture(asyncio.Future[bool]):  # another loop's Future class
        pass

    loop = asyncio.new_event_loop()
    try:
        assert home_of(MyFuture(loop=loop)) is asyncio_backend.backend_of(loop)
    finally:
        loop.close()
    with pytest.raises(TypeError, match="no backend parks"):
        home_of(object())
