"""Publisher threads started at import (issue 18: fork safety of the publish client).

uWSGI imports the app in its master, so these threads run in the master while it
forks the workers and the broadcast mule (and again when it respawns one). Each
of PUBLISH_THREADS threads (default 3) publishes ``{"t": <thread>, "n": 1, 2, ...}``
on channel "pub" every PUBLISH_INTERVAL seconds (default 0.002), for ever.

``/sub`` subscribes to "pub". Every worker and mule appends a JSON line
``{"pid", "worker", "mule"}`` to $PUBLISH_FORK_REPORTS from uWSGI's post-fork hook:
a child that came up stuck (the GIL or a lock copied held) never writes it.

The threads are daemons so that the master's exit does not wait for them (the
seed example tests/apps/seed_flask_websockets.py keeps a non-daemon one).
"""

import json
import os
import threading
import time

import uwsgi
from flask import Flask

from uwsgi_ws import WebSocket, WebSockets

app = Flask(__name__)
websockets = WebSockets(app)
THREADS = int(os.environ.get("PUBLISH_THREADS", "3"))
INTERVAL = float(os.environ.get("PUBLISH_INTERVAL", "0.002"))


@websockets.route("/sub")
def subscriber(ws: WebSocket) -> None:
    with websockets.subscribe(ws, "pub"):
        for _ in ws.iter_data():
            pass


def _report() -> None:
    with open(os.environ["PUBLISH_FORK_REPORTS"], "a") as out:
        out.write(json.dumps({"pid": os.getpid(), "worker": uwsgi.worker_id(), "mule": uwsgi.mule_id()}) + "\n")


uwsgi.post_fork_hook = _report


def _publisher(index: int) -> None:
    n = 0
    while True:
        n += 1
        websockets.publish(json.dumps({"t": index, "n": n}), "pub")
        time.sleep(INTERVAL)


for _index in range(THREADS):
    threading.Thread(target=_publisher, args=(_index,), name=f"publisher-{_index}", daemon=True).start()
