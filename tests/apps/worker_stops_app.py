"""The app of tests/test_worker_stops.py: which worker serves a client, and since when.

- WebSocket ``/info``: sends one text frame, JSON ``{"pid": <worker pid>, "last_spawn":
  <uwsgi.workers()[i]["last_spawn"]: the master's whole epoch second at the fork>}``, then
  echoes every message;
- HTTP ``/``: the same JSON (a plain request, answered by whichever worker takes it).

With ``WORKER_STOPS_GATE`` set (a path), each worker's start waits in uWSGI's post-fork
hook (set before uwsgi_ws is imported: uwsgi_ws's own start runs first, then this) after
creating ``<gate>-<pid>``, until the test creates the file `<gate>`: a worker held in its
start, before uWSGI installs its signal handlers. (It polls: a FIFO's open, interrupted by
a signal and retried after the test's write, would wait for ever.)
"""

import json
import os

import uwsgi

_GATE = os.environ.get("WORKER_STOPS_GATE")
if _GATE:

    def _held_start():
        import time

        open(f"{_GATE}-{os.getpid()}", "w").close()
        while not os.path.exists(_GATE):
            time.sleep(0.02)

    uwsgi.post_fork_hook = _held_start

from flask import Flask  # noqa: E402  (after the hook: uwsgi_ws chains its own before it)

from uwsgi_ws import WebSocket  # noqa: E402

app = Flask(__name__)
ws = WebSocket(app, ping_interval=None)


def info() -> str:
    worker = uwsgi.workers()[uwsgi.worker_id() - 1]
    return json.dumps({"pid": os.getpid(), "last_spawn": worker["last_spawn"]})


@ws.route("/info")
def info_ws(conn):
    conn.send(info())
    for message in conn:
        conn.send(message)


@app.route("/")
def info_http():
    return app.response_class(info(), mimetype="application/json")
