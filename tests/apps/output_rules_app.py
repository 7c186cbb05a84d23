"""Routes that hold the engine's output to the rules its decoder enforces
(tests/test_output_rules.py), and a handler that keeps other connections.

    /close?code=N        conn.close(N): the ValueError text (if any) is sent first, then close 1000
    /ping?size=N         conn.ping(b"x" * N): "ok" or the ValueError text
    /send-type           conn.send(123): the TypeError text
    /sharedarea-text     send_from_sharedarea of bytes that are not UTF-8: the ValueError text
    /unicode             each call given a str with a lone surrogate (send, send_text, send_bytes,
                         ping, close's reason): one line per call, the error text
    /race?n=N            a second task sends text in a loop while the handler closes (1000)
    /room                sends its worker's pid, then keeps the connection in a per-process list for
                         good (the app's bug: closed ones stay); a message goes to every member
"""

from __future__ import annotations

import threading

from flask import Flask, request

from uwsgi_ws import WebSocket

app = Flask(__name__)
ws = WebSocket(app, allowed_origins="*")
_room: dict = {}
_room_lock = threading.Lock()


def _error_text(call) -> str:
    try:
        call()
    except (ValueError, TypeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ok"


@ws.route("/close")
def close(conn):
    code = int(request.args["code"])
    text = _error_text(lambda: conn.close(code, "by the handler"))
    if text != "ok":
        conn.send(text)
        conn.close(1000)


@ws.route("/ping")
def ping(conn):
    conn.send(_error_text(lambda: conn.ping(b"x" * int(request.args["size"]))))


@ws.route("/send-type")
def send_type(conn):
    conn.send(_error_text(lambda: conn.send(123)))


@ws.route("/sharedarea-text")
def sharedarea_text(conn):
    import uwsgi

    uwsgi.sharedarea_write(0, 0, b"\xff\xfe not utf-8")
    conn.send(_error_text(lambda: conn.send_from_sharedarea(0, 0, 12)))


@ws.route("/unicode")
def unicode_rules(conn):
    bad = "ok \ud800 then"
    lines = [_error_text(lambda: conn.send(bad)), _error_text(lambda: conn.send_text(bad)),
             _error_text(lambda: conn.send_bytes(bad)), _error_text(lambda: conn.ping(bad)),
             _error_text(lambda: conn.close(1000, bad))]
    conn.send("\n".join(lines))


@ws.route("/race")
def race(conn):
    """Sends from another task while the handler closes: no data frame may follow
    the close frame on the wire (RFC 6455 section 5.5.1)."""
    n = int(request.args.get("n", "2000"))
    started = ws.runtime().Event()

    def sender() -> None:
        started.set()
        for i in range(n):
            try:
                conn.send(f"m{i}")
            except Exception:  # ConnectionClosed once the close frame is queued
                return

    task = ws.runtime().spawn(sender)
    started.wait(5)
    conn.receive()  # the client's go: close now, while the sender runs
    conn.close(1000, "race")
    task.join(5)


@ws.route("/room")
def room(conn):
    import os

    conn.send(str(os.getpid()))
    with _room_lock:
        _room[id(conn)] = conn  # never removed: a member whose client left raises ConnectionClosed
    for message in conn:
        with _room_lock:
            members = list(_room.values())
        for member in members:
            member.send(message)
