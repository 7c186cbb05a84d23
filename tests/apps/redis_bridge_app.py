"""Scale-out under test (tests/test_redis_bridge.py): subscribers, publishers, bridge counters.

WebSocket /sub (every channel-less broadcast) and /sub/<channel>: sends
`ready:<pid>` once subscribed, then reads until the client goes away.

HTTP:
    POST /publish-many/<count>?prefix=&channel=&interval=
                  publishes "<prefix><i>" for i in 0..count-1 in order (paced by
                  `interval` seconds); 200 with {"published", "seconds"}
    GET  /bridge  the Redis bridge's counters (uwsgi_ws.redis_bridge.stats) and this
                  process's view: {"redis_imported": bool}
"""

import json
import os
import sys
import time

from flask import Flask, request

from uwsgi_ws import WebSocket
from uwsgi_ws.exceptions import BroadcastError as RingError  # PublishError and RingError

app = Flask(__name__)
ws = WebSocket(app, ping_interval=None)


@ws.route("/sub")
@ws.route("/sub/<channel>")
def sub(conn, channel=None):
    if channel is None:
        conn.send("ready:%d" % os.getpid())
        for _ in conn:
            pass
        return
    with ws.subscribe(conn, channel):
        conn.send("ready:%d" % os.getpid())
        for _ in conn:
            pass


def _nap(seconds):
    import uwsgi

    if uwsgi.opt.get("gevent"):
        import gevent

        gevent.sleep(seconds)
    else:
        time.sleep(seconds)


@app.post("/publish-many/<int:count>")
def publish_many(count):
    prefix = request.args.get("prefix", "m")
    channel = request.args.get("channel") or None
    interval = float(request.args.get("interval", 0))
    start = time.monotonic()
    try:
        for i in range(count):
            ws.publish("%s%d" % (prefix, i), channel=channel)
            if interval:
                delay = start + (i + 1) * interval - time.monotonic()  # pacing, app-side
                if delay > 0:
                    _nap(delay)
    except RingError as exc:
        return f"{type(exc).__name__}: {exc}", 503
    return json.dumps({"published": count, "seconds": time.monotonic() - start}), 200


@app.get("/bridge")
def bridge():
    from uwsgi_ws.broadcast import redis as redis_bridge

    out = redis_bridge.stats()
    out["redis_imported"] = "redis" in sys.modules
    return out
