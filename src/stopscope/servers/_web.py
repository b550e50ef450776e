"""WebService: the HTTP server stops first, background members after it."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Literal, final

from .._scope import TaskScope
from .._signal import StopSignal
from ._drain import ServerInfo
from ._hypercorn import start_hypercorn
from ._readiness import ASGIApp

if sys.version_info >= (3, 11):
    from typing import Self, TypeVarTuple, Unpack
else:  # anyio depends on typing_extensions on 3.10
    from typing_extensions import Self, TypeVarTuple, Unpack

__all__ = ["WebService"]

PosArgsT = TypeVarTuple("PosArgsT")


@final
class WebService:
    """A :class:`~stopscope.TaskScope` for a web service, in the right order by default.

    ::

        async def main(signal: StopSignal) -> None:
            async with WebService(signal=signal, grace=20) as service:
                service.start_soon(flusher, service.signal, events)   # background
                server = await service.serve(app, server="uvicorn", port=8000, drain_delay=5)
                print(f"listening on {server.url}", flush=True)
                await signal.wait()

    On stop, the HTTP server goes first (not ready, drain delay, close the listener,
    finish in-flight requests); the background members are stopped only once it has
    exited, so work that in-flight requests hand to them is not dropped.  One grace
    budget covers the whole sequence, as in :meth:`TaskScope.stage`.

    Background members are started before :meth:`serve` with :meth:`start_soon`,
    :meth:`start` or :meth:`start_thread` and watch :attr:`signal`.

    :param grace: the whole stop's budget, seconds (``None``: no limit)
    :param signal: a parent signal (``run()``'s): its stop stops the service
    :param name: the scope's name in logs

    .. versionadded:: 0.1
    """

    __slots__ = ("_background", "_scope", "_servers")

    def __init__(
        self,
        *,
        grace: float | None = 20.0,
        signal: StopSignal | None = None,
        name: str = "web service",
    ) -> None:
        self._scope = TaskScope(grace=grace, signal=signal, name=name)
        self._background: StopSignal | None = None
        self._servers: StopSignal | None = None

    @property
    def scope(self) -> TaskScope:
        """The underlying scope (its :attr:`~stopscope.TaskScope.report`, ``stop()``...)."""
        return self._scope

    @property
    def signal(self) -> StopSignal:
        """What background members watch: set once the HTTP servers have exited."""
        if self._background is None:
            raise RuntimeError("WebService.signal is available inside `async with service:`")
        return self._background

    def stop(self, reason: object = None) -> bool:
        """Request the stop (safe from any thread); see :meth:`TaskScope.stop`."""
        return self._scope.stop(reason)

    def _check_background(self, method: str) -> None:
        if self._background is None:
            raise RuntimeError(f"WebService.{method}() must be called inside `async with service:`")
        if self._servers is not None:
            raise RuntimeError(
                f"WebService.{method}(): start background members before serve(); a member "
                f"started after it would be stopped with the HTTP servers, not after them"
            )

    def start_soon(
        self,
        func: Callable[[Unpack[PosArgsT]], Awaitable[Any]],
        *args: Unpack[PosArgsT],
        name: object = None,
        grace: float | None = None,
    ) -> None:
        """Start a background member (see :meth:`TaskScope.start_soon`)."""
        self._check_background("start_soon")
        self._scope.start_soon(func, *args, name=name, grace=grace)

    async def start(
        self,
        func: Callable[..., Awaitable[Any]],
        *args: object,
        name: object = None,
        grace: float | None = None,
    ) -> Any:
        """Start a background member and wait for ``task_status.started()``."""
        self._check_background("start")
        return await self._scope.start(func, *args, name=name, grace=grace)

    def start_thread(
        self,
        func: Callable[[StopSignal, Unpack[PosArgsT]], object],
        *args: Unpack[PosArgsT],
        name: object = None,
        grace: float | None = None,
    ) -> None:
        """Run ``func(signal, *args)`` in a thread, as a background member."""
        self._check_background("start_thread")
        self._scope.start_thread(func, *args, name=name, grace=grace)

    async def serve(
        self,
        app: ASGIApp,
        *,
        server: Literal["uvicorn", "hypercorn"] = "uvicorn",
        **options: Any,
    ) -> ServerInfo:
        """Start an HTTP server for ``app``; return once it accepts connections.

        :param server: ``"uvicorn"`` (asyncio, uvloop) or ``"hypercorn"`` (also trio)
        :param options: those of :func:`start_uvicorn` / :func:`start_hypercorn`
            (``host``, ``port``, ``drain_delay``, ``readiness_path``,
            ``websocket_close_code``...)
        """
        if self._background is None:
            raise RuntimeError("WebService.serve() must be called inside `async with service:`")
        if server not in ("uvicorn", "hypercorn"):
            raise ValueError(f"`server` must be 'uvicorn' or 'hypercorn', got {server!r}")
        if self._servers is None:
            self._servers = self._scope.stage("http")
        options.setdefault("signal", self._servers)
        if server == "uvicorn":
            from ._uvicorn import start_uvicorn

            return await start_uvicorn(self._scope, app, **options)
        return await start_hypercorn(self._scope, app, **options)

    async def __aenter__(self) -> Self:
        await self._scope.__aenter__()
        self._background = self._scope.stage("background")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return await self._scope.__aexit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        return f"<WebService {self._scope!r}>"
