"""Broadcast under test (tests/test_broadcast.py): subscribers that take commands,
publishers that report what the publish raised, per-worker hub counters.

WebSocket /sub and /sub/<channel> (query `write_limit=` overrides the app's
WRITE_LIMIT for that connection; `sndbuf=` fixes the socket's SO_SNDBUF, so a
client that stops reading fills the kernel's buffers soon): sends
`ready:<pid>` once attached (and subscribed), then obeys text commands:

    leave    leave the `with ws.subscribe(...)` block, answer `left`, stay connected
    raise    raise inside the block, catch it outside, answer `raised`, stay connected
    ping     answer `pong` (a round trip through the handler)

HTTP:
    POST /publish[/<channel>][?binary=1]   body = the message; 204, or 413/503 with
                                           "<ExceptionType>: <message>" when publish raises
    POST /publish-many/<count>?prefix=&channel=&interval=
                                           publishes "<prefix><i>" for i in 0..count-1, in
                                           order, from inside uWSGI; 204 once all returned
    POST /mule-publish/<count>?prefix=     asks the publisher mule (tests/apps/
                                           broadcast_test_mule.py, mule 2) to publish
    GET  /stats                            this worker's pid and hub counters (JSON)

WebSocket /set-write-limit/<n>: sets `conn.write_limit = n` first thing, then
sends `write_limit:<conn.write_limit>`.
"""

import json
import os
import socket
import time

from flask import Flask, request

from uwsgi_ws import WebSocket
from uwsgi_ws.exceptions import BroadcastError as RingError  # PublishError and RingError

app = Flask(__name__)
ws = WebSocket(app, ping_interval=None, write_limit=int(os.environ.get("WRITE_LIMIT", 1 << 20)),
               close_timeout=float(os.environ.get("CLOSE_TIMEOUT", "5")))


def _commands(conn):
    """Answer commands until the client says `leave` / `raise` (returned) or goes away."""
    for message in conn:
        if message == "ping":
            conn.send("pong")
        elif message in ("leave", "raise"):
            return message
    return None


@ws.route("/sub")
@ws.route("/sub/<channel>")
def sub(conn, channel=None):
    if "write_limit" in request.args:
        _ = conn.connected  # upgrade first: an attribute set before the first use is lost (see /set-write-limit)
        conn.write_limit = int(request.args["write_limit"])
    if "sndbuf" in request.args:
        dup = socket.fromfd(conn.fd, socket.AF_INET, socket.SOCK_STREAM)
        dup.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, int(request.args["sndbuf"]))
        dup.close()
    if channel is None:
        conn.send("ready:%d" % os.getpid())
        _commands(conn)
        return
    try:
        with ws.subscribe(conn, channel):
            conn.send("ready:%d" % os.getpid())
            command = _commands(conn)
            if command == "raise":
                raise LookupError("raised inside the subscribe block")
    except LookupError:
        conn.send("raised")
    else:
        if command is None:
            return
        conn.send("left")
    _commands(conn)  # still connected, no longer subscribed


@ws.route("/set-write-limit/<int:limit>")
def set_write_limit(conn, limit):
    """Sets `conn.write_limit` as the handler's first statement, then says what it is."""
    conn.write_limit = limit
    conn.send("write_limit:%d" % conn.write_limit)
    for _ in conn:
        pass


def _status(exc):
    text = str(exc)
    too_big = "--mule-msg-size" in text or "limit" in text
    return f"{type(exc).__name__}: {text}", 413 if too_big else 503, {"Content-Type": "text/plain"}


@app.post("/publish")
@app.post("/publish/<channel>")
def publish(channel=None):
    data = request.get_data()
    try:
        ws.publish(data if request.args.get("binary") else data.decode("utf-8"), channel=channel)
    except RingError as exc:
        return _status(exc)
    return "", 204


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
                # pacing of the stream, app-side (not a synchronisation)
                delay = start + (i + 1) * interval - time.monotonic()
                if delay > 0:
                    _nap(delay)
    except RingError as exc:
        return _status(exc)
    return json.dumps({"published": count, "seconds": time.monotonic() - start}), 200


def _nap(seconds):
    import uwsgi

    if uwsgi.opt.get("gevent"):
        import gevent

        gevent.sleep(seconds)
    else:
        time.sleep(seconds)


@app.post("/mule-publish/<int:count>")
def mule_publish(count):
    import uwsgi

    prefix = request.args.get("prefix", "x")
    if not uwsgi.mule_msg(f"go:{count}:{prefix}".encode(), 2):
        return "mule 2 did not take the order", 503
    return "", 204


@app.get("/stats")
def stats():
    out = {"pid": os.getpid()}
    broadcast = ws.broadcast()
    if broadcast.available:
        stats = broadcast.stats()
        out.update(delivered=stats["delivered"], slow_consumers=stats["slow_consumers"], lapped=stats["lapped"],
                   connections=stats["subscribers"])
    from uwsgi_ws import metrics

    out["publish_waits"] = metrics.snapshot().totals[metrics.QUEUE_FULL]  # instance-wide
    return out
