"""The graceful stop for an ASGI app started by its server's own command.

::

    from stopscope.asgi import GracefulApp

    app = GracefulApp(FastAPI(lifespan=lifespan), drain_delay=5, grace=25)

    # uvicorn main:app | fastapi run main.py | hypercorn main:app -k trio
    # gunicorn -k uvicorn_worker.UvicornWorker -w 2 main:app

SIGTERM is heard before the server's own handler: not ready at once, the drain delay,
then the server's own shutdown; background members started from the app's lifespan
are stopped after the HTTP side has drained.  To run the server inside your own
program instead, see ``stopscope.servers``.
"""

from ._app import GracefulApp as GracefulApp

__all__ = ["GracefulApp"]

for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
