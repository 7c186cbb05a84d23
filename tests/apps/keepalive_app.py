"""Server keepalive: pings every 0.5 s, 1 s to answer (close 1011 otherwise)."""

import time

from flask import Flask, request

from uwsgi_ws import WebSocket

app = Flask(__name__)
ws = WebSocket(app, ping_interval=0.5, ping_timeout=1.0, close_timeout=1.0)


@ws.route("/echo")
def echo(conn):
    for message in conn:
        conn.send(message)


@ws.route("/ticker")
def ticker(conn):
    """Only sends: a tick every `every` seconds, waiting in receive(timeout)."""
    every = float(request.args.get("every", 0.2))
    n = 0
    while conn.connected:
        n += 1
        conn.send(f"tick {n}")
        deadline = time.monotonic() + every
        while conn.connected and time.monotonic() < deadline:
            conn.receive(timeout=deadline - time.monotonic())
