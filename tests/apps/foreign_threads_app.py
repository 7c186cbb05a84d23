"""A connection used from a `threading.Thread` the handler starts (tests/test_foreign_threads.py).

    /first     a thread makes the connection's first use (which sends the 101): the error
               text comes back from the handler's own first send
    /methods   a thread sends text and binary, pings, receives a message, subscribes and
               publishes to the channel (the client answers once the publish reached it),
               then closes with 4000 "bye from a thread"; the handler reports each call's
               result before the close
The handler waits for its thread with the model's sleep, so other tasks of the worker run.
"""

from __future__ import annotations

import threading

from flask import Flask

from uwsgi_ws import WebSocket

app = Flask(__name__)
ws = WebSocket(app, allowed_origins="*", ping_interval=None)


def in_thread(call) -> str:
    """Run `call` in a new threading.Thread; its result's repr or its exception's text."""
    out = {}

    def run():
        try:
            out["result"] = repr(call())
        except Exception as exc:
            out["result"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=run)
    thread.start()
    rt = ws.runtime()
    while thread.is_alive():
        rt.sleep(0.01)
    return out["result"]


@ws.route("/first")
def first(conn):
    result = in_thread(lambda: conn.send("never sent"))
    conn.send(result)


@ws.route("/methods")
def methods(conn):
    conn.send("open")

    def subscribed():
        with ws.subscribe(conn, "feed"):
            ws.publish("published to feed", channel="feed")
            return conn.receive(timeout=10)  # the client's answer once the publish reached it

    results = [
        in_thread(lambda: conn.send("text from a thread")),
        in_thread(lambda: conn.send(b"binary from a thread")),
        in_thread(lambda: conn.ping(b"from a thread")),
        in_thread(lambda: conn.receive(timeout=10)),
        in_thread(subscribed),
    ]
    conn.send(" | ".join(results))
    in_thread(lambda: conn.close(4000, "bye from a thread"))
