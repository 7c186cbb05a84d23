"""One access policy for both transports of an event endpoint (uwsgi_ws.admission).

`/live` (WebSocket) and `/live/sse` (Server-Sent Events) of one extension whose
before_connect hook reads ``?token=`` (each value says what the hook does) and
whose join hook allows only rooms ``public`` and ``pub-*`` (``abort-*``: abort(451)).
MAX_PER_WORKER and RETRY_AFTER (env) set max_connections_per_worker and retry_after.
/emit publishes to a room; /metrics is the Prometheus text (the refusal counters);
/page is a blank page with the browser client loaded. The `uwsgi_ws` logger
writes the refusal lines to the uWSGI log.
"""

import logging
import os
import sys

from flask import Flask, abort, redirect, request

from uwsgi_ws import WebSocket

handler = logging.StreamHandler(sys.stderr)
handler.setFormatter(logging.Formatter("LOG %(name)s %(levelname)s %(message)s"))
logging.getLogger("uwsgi_ws").addHandler(handler)
logging.getLogger("uwsgi_ws").setLevel(logging.INFO)

app = Flask(__name__)
ws = WebSocket(app, ping_interval=None, metrics_route="/metrics", retry_after=int(os.environ.get("RETRY_AFTER", "7")),
               max_connections_per_worker=int(os.environ.get("MAX_PER_WORKER", "0")) or None)


@ws.before_connect
def check_token():
    token = request.args.get("token")
    if token == "good":
        return None
    if token == "true":
        return True
    if token == "false":
        return False
    if token == "redirect":
        return redirect("/login")
    if token == "teapot":
        return "short and stout", 418
    if token == "boom":
        raise RuntimeError("before_connect failed on purpose")
    abort(401)


@app.errorhandler(401)
def unauthorized(exc):
    return "custom 401: log in first\n", 401, {"WWW-Authenticate": 'Bearer realm="tests"'}


live = ws.events("/live")


@live.on("join")
def may_join(conn, room):
    if room.startswith("abort-"):
        abort(451)
    return room == "public" or room.startswith("pub-")


@live.on("connect")
def hello(conn):
    conn.emit("hello", {"pid": os.getpid()})


@app.route("/page")
def page():
    return '<!doctype html><meta charset="utf-8"><title>client</title><script src="/_uwsgi_ws/uwsgi_ws.js"></script>'


@app.route("/emit")
def emit():
    live.emit("news", request.args.get("text", ""), to=request.args["room"])
    return "ok"
