"""The backend matrix: every test of the public contract runs on all three."""

from __future__ import annotations

import gc
import sys
from typing import Any

import pytest


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
