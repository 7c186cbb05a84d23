"""Peer 3: flask-sock with threads, served by Gunicorn's ``gthread`` worker.

flask-sock documents Gunicorn with ``--threads`` for thread-based production
serving (one worker thread per open WebSocket, plus one reader thread per
connection inside simple-websocket). uWSGI is not an option: simple-websocket
cannot get the raw socket from uWSGI's WSGI environ.

Broadcast is in-process: a set of connections guarded by a lock; ``POST
/publish`` sends the body to each of them while holding the lock (so frames
of concurrent publishes never interleave on one socket).

Run: ``gunicorn -k gthread --threads T --worker-connections C flask_sock_server:app``
"""
from __future__ import annotations

import threading

from flask import Flask, request
from flask_sock import ConnectionClosed, Sock

app = Flask(__name__)
sock = Sock(app)
clients: set = set()
lock = threading.Lock()


@sock.route("/ws")
def subscriber(ws) -> None:  # type: ignore[no-untyped-def]
    """Register the connection and read until it closes."""
    with lock:
        clients.add(ws)
    try:
        while True:
            ws.receive()
    except ConnectionClosed:
        pass
    finally:
        with lock:
            clients.discard(ws)


@app.post("/publish")
def publish() -> tuple[str, int]:
    """Send the body as a text frame to every registered connection."""
    body = request.get_data(as_text=True)
    with lock:
        dead = []
        for ws in clients:
            try:
                ws.send(body)
            except Exception:  # closed under our feet
                dead.append(ws)
        clients.difference_update(dead)
    return "", 204
