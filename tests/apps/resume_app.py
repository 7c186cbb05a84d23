"""Resume on any instance (tests/test_resume_instances.py, tests/test_browser_resume.py).

WebSocket /live (uwsgi_ws.events, presence on, join/leave events): on connect
sets the identity from `?name=` and sends `hello` {pid} to the connection.
Events:
    echo   ack = the data
HTTP:
    POST /emit-many/<room>?n=&src=&interval=   emits `n` with {"src", "i"} for i in 0..n-1, in order
                                              (paced by `interval` seconds); 200 {"emitted": n},
                                              503 with the PublishError's text when refused
    GET  /position                             {"epoch": str, "seq": int, "bridge": the bridge's counters}
    GET  /presence/<room>                      live.presence(room)
    GET  /page                                 the browser test's page (tests/test_browser_resume.py)
"""

import os
import time

from flask import Flask, jsonify, request

from uwsgi_ws import WebSocket
from uwsgi_ws.exceptions import PublishError

app = Flask(__name__)
ws = WebSocket(app, ping_interval=None)
live = ws.events("/live", presence=True, join_leave=True)


@live.on("connect")
def connected(conn):
    name = request.args.get("name")
    if name:
        conn.identity = {"user": name}
    conn.emit("hello", {"pid": os.getpid()})


@live.on("echo")
def echo(conn, data):
    return data


def _nap(seconds):
    import uwsgi

    if uwsgi.opt.get("gevent"):
        import gevent

        gevent.sleep(seconds)
    else:
        time.sleep(seconds)


@app.post("/emit-many/<room>")
def emit_many(room):
    n = int(request.args.get("n", "1"))
    src = request.args.get("src", "x")
    interval = float(request.args.get("interval", "0"))
    try:
        for i in range(n):
            live.emit("n", {"src": src, "i": i}, to=room)
            if interval:
                _nap(interval)
    except PublishError as exc:
        return f"PublishError: {exc}", 503
    return jsonify(emitted=n)


@app.get("/position")
def position():
    from uwsgi_ws.broadcast import redis as bridge

    where = ws.broadcast().position()
    return jsonify(epoch=str(where.epoch), seq=where.seq, bridge=bridge.stats())


@app.get("/presence/<room>")
def presence(room):
    return jsonify(live.presence(room))
