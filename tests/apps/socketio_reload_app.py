"""A Flask-SocketIO app with uwsgi_ws's metrics route, for tests/test_socketio_reload.py.

- event "whoami": the handler answers "me" {"sid", "pid", "worker"} (the worker
  that owns the session: its handlers run there).
- GET /metrics: the instance's metrics (Prometheus text).
- SOCKETIO_ARRIVALS (a file path, optional): every Socket.IO request that names a
  session (``sid=`` in its query) appends one JSON line {"event": "arrived",
  "worker", "sid", "upgrade", "method"} in the worker uWSGI gave it, before the
  hand-off middleware (a line whose worker differs from the sid's owner is a
  request handed to the owner, uwsgi_ws/socketio/handoff.py), and one with
  "event": "serving" in the worker where engineio takes it (the owner).
- SOCKETIO_DEBUG: engineio's packet log.
"""

import json
import os
from urllib.parse import parse_qs

from flask import Flask, request

from uwsgi_ws.socketio import SocketIO, emit

app = Flask(__name__)
app.config["SECRET_KEY"] = "secret!"
socketio = SocketIO(app, engineio_logger=bool(os.environ.get("SOCKETIO_DEBUG")))
socketio.websocket.metrics_route("/metrics")
ARRIVALS = os.environ.get("SOCKETIO_ARRIVALS")


@socketio.on("whoami")
def whoami():
    import uwsgi

    emit("me", {"sid": request.sid, "pid": os.getpid(), "worker": uwsgi.worker_id()})


def note(event, environ, sid):
    """Append one line to SOCKETIO_ARRIVALS (O_APPEND: whole lines from every worker)."""
    import uwsgi

    line = json.dumps({"event": event, "worker": uwsgi.worker_id(), "sid": sid,
                       "method": environ.get("REQUEST_METHOD"),
                       "upgrade": "websocket" in environ.get("HTTP_UPGRADE", "").lower()})
    fd = os.open(ARRIVALS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


class Arrivals:
    """WSGI middleware outside the hand-off one: notes where a session's requests land."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        sid = parse_qs(environ.get("QUERY_STRING", "")).get("sid", [None])[0]
        if ARRIVALS and sid and environ.get("PATH_INFO", "").startswith("/socket.io"):
            note("arrived", environ, sid)
        return self.wsgi_app(environ, start_response)


app.wsgi_app = Arrivals(app.wsgi_app)


_handle_request = socketio.server.eio.handle_request


def handle_request(environ, start_response):
    """engineio's entry, in the worker that owns the session (directly or handed off):
    a "serving" line once a session's request is in engineio (a GET then waits there)."""
    sid = parse_qs(environ.get("QUERY_STRING", "")).get("sid", [None])[0]
    if ARRIVALS and sid:
        note("serving", environ, sid)
    return _handle_request(environ, start_response)


socketio.server.eio.handle_request = handle_request
