"""gunicorn's settings for ``examples/graceful_app.py`` (see docs: how-to/deploy-gunicorn).

    DRAIN_DELAY=3 GRACE=20 gunicorn graceful_app:app -c gunicorn.conf.py -b 127.0.0.1:8000

Each worker is a uvicorn server running the app wrapped in ``GracefulApp``, which sets
uvicorn's drain timeout from its grace.  gunicorn's own ``graceful_timeout`` is when the
master SIGKILLs a worker that has not exited: it must outlast the app's grace.
"""

import os

worker_class = "uvicorn_worker.UvicornWorker"
workers = 2
#: seconds before the master SIGKILLs a worker still running after the stop: the app's
#: grace (the wrapper holds to it), and room for the process to exit
graceful_timeout = int(float(os.environ.get("GRACE", "20"))) + 10
#: no control socket: several servers on one machine would share its default path
control_socket_disable = True
