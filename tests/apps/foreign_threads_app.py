"""A connection and the broadcast used from `threading.Thread`s the handler starts
(tests/test_foreign_threads.py, tests/test_foreign_threads_models.py).

    /first     a thread makes the connection's first use (which sends the 101): the error
               text comes back from the handler's own first send
    /methods   a thread sends text and binary, pings, receives a message, subscribes and
               publishes to the channel (the client answers once the publish reached it),
               then closes with 4000 "bye from a thread"; the handler reports each call's
               result before the close
    /more      the rest, each call in a new thread: recv_nb with nothing waiting, then
               recv_nb until the client's "waiting" came (the client sends it once it got
               "None"), send_binary, send_from_sharedarea and send_binary_from_sharedarea
               (sharedarea 1 holds b"hello"), ws.publish and live.emit (room "r1"; the
               handler subscribed the raw channels "more" and live's "r1" when the model
               has the broadcast), conn.subscribe("more2") and a publish there (the client
               answers once it got it), then conn.unsubscribe("more2"), a publish to
               "more2" and one to "more" (the client tells that "more2" stopped); the
               handler sends "results: " + each call's result joined by " | ", then a
               thread ends it with close_nowait(4001, "nowait from a thread"); the
               handler waits for the connection's end and logs "<tag> ended"
               (/more?tag=...: in the async model, a request that arrives while the
               package's finish still waits for the peer deadlocks the worker, see
               tests/test_async_model.py, and after close_nowait that wait lasts
               close_timeout there)
    /receive-then-close
               a thread receives one message, then closes with 4002 and the message as
               the reason; the handler only waits for it
    /concurrent?n=N
               a thread sends "t0".."t<N-1>" while the handler sends "h0".."h<N-1>"
               (binary every third message, both), then "done"
    /close-while-receiving?tag=T
               a thread closes with 4003 "closed by a thread" while the handler waits in
               receive(); the handler logs "T handler: <what receive raised>"
    /receive-while-closing?tag=T
               a thread waits in receive() while the handler closes with 4004 "closed
               by the handler"; the handler logs "T thread: <what receive raised>"
    /reader    a thread echoes every message ("echo <m>") until the client closes; the
               handler only waits for it
    /send-while-receiving
               a thread sends "from a thread" while the handler itself waits in
               receive(); the handler echoes what it then gets ("echo <m>")
    GET /pid   this worker's pid
The handlers wait for their threads with the model's sleep (other tasks of the worker run).
"""

from __future__ import annotations

import os
import select
import sys
import threading
import time

from flask import Flask

from uwsgi_ws import ConnectionClosed, WebSocket

app = Flask(__name__)
ws = WebSocket(app, allowed_origins="*", ping_interval=None)
live = ws.events("/live")


def wait_for_thread(thread: threading.Thread) -> None:
    """Block the handler until `thread` ends, polling every 10 ms with the model's sleep
    (ws.runtime().sleep, not thread.join()): the worker's other tasks run meanwhile."""
    rt = ws.runtime()
    while thread.is_alive():
        rt.sleep(0.01)


def _outcome(call) -> str:
    try:
        return repr(call())
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def in_thread(call) -> str:
    """Run `call` in a new threading.Thread; its result's repr or its exception's text."""
    out = {}

    def run():
        out["result"] = _outcome(call)

    thread = threading.Thread(target=run)
    thread.start()
    wait_for_thread(thread)
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


def _recv_nb_until_something(conn, seconds: float = 10.0):
    """recv_nb() until a message is there (the fd polled in between), at most `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        message = conn.recv_nb()
        if message is not None:
            return message
        select.select([conn.fileno()], [], [], 0.05)
    return None


@ws.route("/more")
def more(conn):
    import uwsgi
    from flask import request

    uwsgi.sharedarea_write(1, 0, b"hello")
    broadcast = ws.broadcast().available
    if broadcast:
        conn.subscribe("more")
        conn.subscribe(live.channel("r1"))
    conn.send("open")
    results = [in_thread(conn.recv_nb)]
    conn.send(results[0])  # the client sends "waiting" once it has this
    results.append(in_thread(lambda: _recv_nb_until_something(conn)))
    results.append(in_thread(lambda: conn.send_binary(b"binary from a thread")))
    results.append(in_thread(lambda: conn.send_from_sharedarea(1, 0, 5)))
    results.append(in_thread(lambda: conn.send_binary_from_sharedarea(1, 0, 5)))
    results.append(in_thread(lambda: type(ws.publish("published from a thread", channel="more")).__name__))
    results.append(in_thread(lambda: live.emit("tick", {"from": "a thread"}, to="r1")))

    def subscribe_then_unsubscribe():
        conn.subscribe("more2")
        ws.publish("on more2", channel="more2")
        conn.receive(timeout=10)  # the client's answer once "on more2" reached it
        conn.unsubscribe("more2")
        ws.publish("on more2 after unsubscribe", channel="more2")
        ws.publish("on more after unsubscribe", channel="more")
        return sorted(conn.channels)

    results.append(in_thread(subscribe_then_unsubscribe))
    conn.send("results: " + " | ".join(results))
    in_thread(lambda: conn.close_nowait(4001, "nowait from a thread"))
    try:  # the end of the connection, here rather than in the package's finish
        while True:
            conn.receive(timeout=30)
    except ConnectionClosed:
        pass
    print(f"{request.args.get('tag')} ended", file=sys.stderr, flush=True)


@ws.route("/receive-then-close")
def receive_then_close(conn):
    conn.send("open")

    def run():
        message = conn.receive(timeout=30)
        conn.close(4002, str(message))

    thread = threading.Thread(target=run)
    thread.start()
    wait_for_thread(thread)


@ws.route("/concurrent")
def concurrent(conn):
    from flask import request

    count = int(request.args["n"])
    conn.send("open")

    def sends(prefix):
        for i in range(count):
            text = f"{prefix}{i}"
            conn.send(text.encode() if i % 3 == 0 else text)

    thread = threading.Thread(target=sends, args=("t",))
    thread.start()
    sends("h")
    wait_for_thread(thread)
    conn.send("done")


@ws.route("/close-while-receiving")
def close_while_receiving(conn):
    from flask import request

    tag = request.args["tag"]
    conn.send("open")
    thread = threading.Thread(target=lambda: conn.close(4003, "closed by a thread"))
    thread.start()
    print(f"{tag} handler: {_outcome(lambda: conn.receive(timeout=30))}", file=sys.stderr, flush=True)
    wait_for_thread(thread)


@ws.route("/receive-while-closing")
def receive_while_closing(conn):
    from flask import request

    tag = request.args["tag"]
    conn.send("open")
    out = {}
    thread = threading.Thread(target=lambda: out.update(result=_outcome(lambda: conn.receive(timeout=30))))
    thread.start()
    conn.close(4004, "closed by the handler")
    wait_for_thread(thread)
    print(f"{tag} thread: {out['result']}", file=sys.stderr, flush=True)


@ws.route("/reader")
def reader(conn):
    def echo():
        for message in conn:
            conn.send(f"echo {message}")

    conn.send("open %d" % os.getpid())  # the first use, in the handler
    thread = threading.Thread(target=echo)
    thread.start()
    wait_for_thread(thread)


@ws.route("/send-while-receiving")
def send_while_receiving(conn):
    conn.send("open")
    thread = threading.Thread(target=lambda: conn.send("from a thread"))
    thread.start()
    conn.send(f"echo {conn.receive(timeout=30)}")
    thread.join()


@app.get("/pid")
def pid():
    return str(os.getpid())
