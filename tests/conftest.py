"""The backend matrix: every test of the public contract runs on all three."""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from loop_leaks import LeakRecords


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        default=False,
        help="run the long profiles: the scope fuzzer (10,000 examples per backend) and soak",
    )


BACKENDS = [
    pytest.param(("asyncio", {"debug": True}), id="asyncio"),
    pytest.param(
        ("asyncio", {"use_uvloop": True}),
        id="asyncio+uvloop",
        marks=pytest.mark.skipif(sys.platform == "win32", reason="uvloop is POSIX only"),
    ),
    pytest.param(("trio", {}), id="trio"),
]


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    value: tuple[str, dict[str, Any]] = request.param
    return value


@pytest.fixture
def anyio_backend_name(anyio_backend: tuple[str, dict[str, Any]]) -> str:
    return anyio_backend[0]


@pytest.fixture(autouse=True)
def _garbage_of_earlier_tests(request: pytest.FixtureRequest) -> None:
    """A test that reads its log (``caplog``) starts with the garbage of the tests
    before it collected: what the collector logs then (asyncio's "exception was never
    retrieved" for a future an earlier server test left) goes to the setup phase, not
    to the test's own records."""
    if "caplog" in request.fixturenames:
        gc.collect()


@pytest.fixture
def python_sigint() -> Iterator[None]:
    """SIGINT handled by Python's own handler during the test, as in a process started
    from a terminal, whatever this one started with (a job started in the background
    by a shell without job control starts with SIGINT ignored): for tests that check
    what ``run()`` puts back."""
    import signal

    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


#: the modules whose tests start servers in-process: each test there fails if asyncio
#: reports, during it, an error nobody retrieved or a task destroyed while pending
_SERVER_MODULES = (
    "test_asgi_",
    "test_fuzz_servers",
    "test_many_connections_smoke",
    "test_observability",
    "test_one_host",
    "test_review_round3_serving",
    "test_scope_trust",
    "test_servers",
    "test_serving_",
    "test_trust_round4",
    "test_websocket",
)


@pytest.fixture(autouse=True)
def _nothing_lost_by_servers(request: pytest.FixtureRequest) -> Iterator[None]:
    """In a server test module: collect the garbage before the test (what earlier tests
    left is not this one's) and after it, and fail the test if asyncio reported, in
    between, an exception never retrieved or a pending task destroyed: the leak fails
    the test that made it, not whichever test the collector happens to run in."""
    if not request.module.__name__.startswith(_SERVER_MODULES):
        yield
        return
    gc.collect()
    records = LeakRecords()
    asyncio_logger = logging.getLogger("asyncio")
    asyncio_logger.addHandler(records)
    try:
        yield
        gc.collect()
    finally:
        asyncio_logger.removeHandler(records)
    if records.found:
        pytest.fail(f"asyncio reported something lost during this test: {records.found}")
