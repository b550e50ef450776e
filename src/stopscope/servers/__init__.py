"""Web servers as scope members: uvicorn and hypercorn, readiness and drain.

::

    from stopscope.servers import WebService

    async def main(signal: StopSignal) -> None:
        async with WebService(signal=signal, grace=20) as service:
            service.start_soon(flusher, service.signal)        # stopped after the server
            server = await service.serve(app, server="hypercorn", port=8000, drain_delay=5)
            await signal.wait()

The servers are optional: ``pip install 'stopscope[uvicorn]'`` or
``'stopscope[hypercorn]'``; they are imported only when a server is started.
"""

from ._drain import ServerInfo as ServerInfo
from ._hypercorn import start_hypercorn as start_hypercorn
from ._readiness import Readiness as Readiness
from ._readiness import ReadinessMiddleware as ReadinessMiddleware
from ._readiness import RequestStop as RequestStop
from ._readiness import request_signal as request_signal
from ._uvicorn import start_uvicorn as start_uvicorn
from ._web import WebService as WebService

__all__ = [
    "Readiness",
    "ReadinessMiddleware",
    "RequestStop",
    "ServerInfo",
    "WebService",
    "request_signal",
    "start_hypercorn",
    "start_uvicorn",
]

for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
