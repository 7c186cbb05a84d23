"""One task per connection (tests/test_one_task.py).

- ``/idle``: waits in receive; the message "stats" answers with this worker's
  task count (live greenlets under gevent, OS threads otherwise), its open
  connections and how many the worker's fd watcher watches now.
- ``/busy?gate=<path>&report=<path>[&keepalive=0]``: sends "busy", then is busy elsewhere (never in receive) until the
  file `gate` exists, then reads every message left and appends a JSON line
  (messages, close code) to `report`.
"""

import gc
import json
import os
import threading

from flask import Flask, request

from uwsgi_ws import ConnectionClosed, WebSocket

app = Flask(__name__)
ws = WebSocket(app, ping_interval=0.5, ping_timeout=1.0, close_timeout=2.0, max_queue=4,
               max_message_size=1 << 20)
_open = [0]
_lock = threading.Lock()


def tasks():
    """Live greenlets (gevent) or OS threads of this worker. Under threads, uwsgi_ws's
    stop-hooks thread runs once at the worker's start and ends: asked while it runs,
    the answer is None (the caller asks again)."""
    if ws.runtime().NAME == "gevent":
        import greenlet

        return sum(1 for o in gc.get_objects() if isinstance(o, greenlet.greenlet) and not o.dead)
    starter = [t for t in threading.enumerate() if t.name == "uwsgi_ws-stop-hooks"]
    for t in starter:
        t.join()  # a matter of milliseconds: it waits for uWSGI's signal handlers, then ends
    if starter and str(starter[0].native_id) in os.listdir("/proc/self/task"):
        return None  # joined, but its OS thread has not exited yet
    return len(os.listdir("/proc/self/task"))


@ws.route("/idle")
def idle(conn):
    conn.ping_interval = None  # idle clients here never answer pings
    with _lock:
        _open[0] += 1
    try:
        for message in conn:
            if message == "stats":
                conn.send(json.dumps({"pid": os.getpid(), "tasks": tasks(), "open": _open[0],
                                      "model": ws.runtime().NAME,
                                      "watched": ws.runtime().fd_watcher().watched}))
            else:
                conn.send(message)
    finally:
        with _lock:
            _open[0] -= 1


@ws.route("/busy")
def busy(conn):
    gate, path = request.args["gate"], request.args["report"]
    rt = ws.runtime()
    if request.args.get("keepalive") == "0":
        conn.ping_interval = None
    conn.send("busy")  # completes the handshake (the 101 goes out at the first use)
    while not os.path.exists(gate):
        rt.sleep(0.02)  # busy elsewhere: not in receive
    received = []
    try:
        while True:
            received.append(conn.receive())
    except ConnectionClosed:
        pass
    with open(path, "a") as f:
        f.write(json.dumps({"count": len(received),
                            "sizes": sorted({len(m) for m in received}),
                            "order": [m[:8].decode() if isinstance(m, bytes) else m[:8] for m in received],
                            "close_code": conn.close_code}) + "\n")
