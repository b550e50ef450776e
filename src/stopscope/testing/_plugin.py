"""The pytest plugin of stopscope.testing (entry point ``pytest11``: ``stopscope``).

It gives the ``stop_kit`` fixture and two options to replay an exploration.  It adds
no async test runner: tests run on anyio's pytest plugin, over the ``anyio_backend``
values the project already has.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

from ._probe import StopKit, StopRequirementError

__all__ = ["pytest_addoption", "pytest_configure", "pytest_runtest_makereport", "stop_kit"]


def _point(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(value)
    return number


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("stopscope", "stopscope.testing: stop-point exploration")
    group.addoption(
        "--stopscope-point",
        type=_point,
        default=None,
        metavar="N",
        help="make stop_kit.explore() run only scheduling point N (replays a failure)",
    )
    group.addoption(
        "--stopscope-seed",
        type=int,
        default=None,
        metavar="SEED",
        help="the seed of stop_kit.explore()'s random mode (sample=...)",
    )


def pytest_configure(config: pytest.Config) -> None:
    # looptime (installed by the `testing` extra for asyncio's virtual time) ships a
    # pytest plugin for pytest-asyncio which, in versions 0.7 to 0.9 at least, fails
    # the setup of every fixture when pytest-asyncio is absent (it reads
    # `getplugin("asyncio").__name__`).  Its loop works without it, and the kit does
    # not use it: unregister it in that case only.
    manager = config.pluginmanager
    if not manager.has_plugin("asyncio"):
        for name in ("looptime_plugin", "looptime"):
            plugin = manager.get_plugin(name)
            if plugin is not None and getattr(plugin, "__name__", "").startswith("looptime"):
                manager.unregister(plugin)


@pytest.fixture
def stop_kit(request: pytest.FixtureRequest) -> StopKit:
    """:func:`stopscope.testing.probe` and :func:`~stopscope.testing.explore` for this test.

    Use it in an anyio test (``@pytest.mark.anyio``); for virtual time, give the
    ``anyio_backend`` fixture :func:`stopscope.testing.virtual_time`.
    """
    config = request.config
    point: int | None = config.getoption("--stopscope-point")
    seed: int | None = config.getoption("--stopscope-seed")
    return StopKit(nodeid=request.node.nodeid, point=point, seed=seed)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A kit failure's line in the test summary is its short summary, not the dotted
    class name followed by a cut first line."""
    report = yield
    excinfo = call.excinfo
    if excinfo is not None and isinstance(excinfo.value, StopRequirementError):
        crash = getattr(report.longrepr, "reprcrash", None)
        if crash is not None:
            crash.message = excinfo.value.summary
    return report
