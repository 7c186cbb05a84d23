"""The app of tests/test_worker_stops.py: which worker serves a client, and since when.

- WebSocket ``/info``: sends one text frame, JSON ``{"pid": <worker pid>, "last_spawn":
  <uwsgi.workers()[i]["last_spawn"]: the master's whole epoch second at the fork>}``, then
  echoes every message;
- HTTP ``/``: the same JSON (a plain request, answered by whichever worker takes it).
"""

import json
import os

import uwsgi
from flask import Flask

from uwsgi_ws import WebSocket

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
