"""Metrics, logs and proxies: echo, subscribers, publishing, and /metrics.

The `uwsgi_ws` logger writes to stderr (the uWSGI log) with a fixed format,
so the tests can read the close and rejection lines.
"""

import logging
import os
import socket
import sys

from flask import Flask, request

from uwsgi_ws import WebSocket

handler = logging.StreamHandler(sys.stderr)
handler.setFormatter(logging.Formatter("LOG %(name)s %(levelname)s pid=%(process)d %(message)s"))
logger = logging.getLogger("uwsgi_ws")
logger.addHandler(handler)
logger.setLevel(logging.INFO)

app = Flask(__name__)
app.config["UWSGI_WS_METRICS_ROUTE"] = "/metrics"
ws = WebSocket(app, ping_interval=None, write_limit=int(os.environ.get("WRITE_LIMIT", 1 << 20)))


@ws.route("/echo")
def echo(conn):
    for message in conn:
        conn.send(message)


@ws.route("/hello")
def hello(conn):
    """`pid:<worker pid>`, then echo (no broadcast needed)."""
    conn.send("pid:%d" % os.getpid())
    for message in conn:
        conn.send(message)


@ws.route("/sub/<channel>")
def sub(conn, channel):
    """Subscribe; `sndbuf=` fixes the socket's SO_SNDBUF (a client that stops
    reading then fills the kernel's buffers soon)."""
    if "sndbuf" in request.args:
        dup = socket.fromfd(conn.fd, socket.AF_INET, socket.SOCK_STREAM)
        dup.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, int(request.args["sndbuf"]))
        dup.close()
    with ws.subscribe(conn, channel):
        conn.send("ready:%d" % os.getpid())
        for _ in conn:
            pass


@ws.route("/close-server")
def close_server(conn):
    conn.send(conn.receive())
    conn.close(int(request.args.get("code", 4000)), "bye")


@app.post("/publish/<channel>")
def publish(channel):
    count = int(request.args.get("count", 1))
    data = request.get_data().decode("utf-8")
    for i in range(count):
        ws.publish(data if count == 1 else "%s%d" % (data, i), channel=channel)
    return "", 204


@app.get("/pid")
def pid():
    return str(os.getpid())
