"""The app of tests/test_promises_connection.py: README promises about one connection.

Every engine option comes from Flask config (``UWSGI_WS_<NAME>``), none from keywords,
so the tests see whether the config keys reach the connection:

    /options (ws)      sends the connection's effective options as JSON
    /echo (ws)         echoes (max_message_size from config: 1009 beyond it)
    /hold (ws)         reads nothing until POST /release, then reads until "end" and
                       answers "got <n> in order" or "got <n> out of order: ..."
    POST /release      lets /hold read
    /close (ws)        closes at once; its close() waits for the peer's close frame
    GET /closes        the seconds each /close handler's close() took (JSON)
    /raise (ws)        raises LookupError
    GET /signals       the exceptions got_request_exception was sent with (JSON)
    GET /records       `record.uwsgi_ws` of each uwsgi_ws.metrics record (JSON)
    GET /send-path     which fan-out path the broadcast hub uses (JSON)
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time

from flask import Flask, got_request_exception

from uwsgi_ws import WebSocket

app = Flask(__name__)
app.config.update(
    UWSGI_WS_MAX_MESSAGE_SIZE=1000,
    UWSGI_WS_PING_INTERVAL=None,
    UWSGI_WS_PING_TIMEOUT=7.0,
    UWSGI_WS_CLOSE_TIMEOUT=1.0,
    UWSGI_WS_MAX_QUEUE=2,
    UWSGI_WS_WRITE_LIMIT=12345,
    UWSGI_WS_TIMEOUT=30.0,
)
ws = WebSocket(app)

RELEASED = []  # truthy once POST /release came
CLOSES: list = []
SIGNALS: list = []
RECORDS: list = []


class _Capture(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        RECORDS.append({"name": record.name, "message": record.getMessage(),
                        "uwsgi_ws": getattr(record, "uwsgi_ws", None)})


logging.getLogger("uwsgi_ws.metrics").addHandler(_Capture())
logging.getLogger("uwsgi_ws.metrics").setLevel(logging.INFO)


def _on_exception(sender, exception, **extra):
    SIGNALS.append({"type": type(exception).__name__, "message": str(exception)})


got_request_exception.connect(_on_exception, app)


def _nap(seconds: float) -> None:
    import uwsgi

    if uwsgi.opt.get("gevent"):
        import gevent

        gevent.sleep(seconds)
    else:
        time.sleep(seconds)


@ws.route("/options")
def options(conn):
    conn.send(json.dumps({
        "max_queue": conn.max_queue, "close_timeout": conn.close_timeout,
        "ping_interval": conn.ping_interval, "ping_timeout": conn.ping_timeout,
        "write_limit": conn.write_limit, "receive_timeout": conn.receive_timeout,
    }))
    for _ in conn:
        pass


@ws.route("/echo")
def echo(conn):
    for message in conn:
        conn.send(message)


@ws.route("/hold")
def hold(conn):
    if "rcvbuf" in request_args():
        dup = socket.fromfd(conn.fd, socket.AF_INET, socket.SOCK_STREAM)
        dup.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, int(request_args()["rcvbuf"]))
        dup.close()
    conn.send("ready:%d" % os.getpid())
    while not RELEASED:  # the test's release comes over HTTP: poll the flag it sets
        _nap(0.02)
    count, wrong = 0, []
    while True:
        message = conn.receive()
        if message is None or message == "end":
            break
        if message != "m%d:" % count + "x" * 900 and len(wrong) < 3:
            wrong.append(message[:20])
        count += 1
    conn.send("got %d in order" % count if not wrong else "got %d out of order: %r" % (count, wrong))
    for _ in conn:
        pass


def request_args():
    from flask import request

    return request.args


@app.post("/release")
def release():
    RELEASED.append(True)
    return "", 204


@ws.route("/close")
def close(conn):
    conn.send("ready:%d" % os.getpid())
    t0 = time.monotonic()
    conn.close(1000, "bye")
    CLOSES.append(time.monotonic() - t0)


@app.get("/closes")
def closes():
    return json.dumps(CLOSES)


@ws.route("/raise")
def raises(conn):
    conn.send("ready:%d" % os.getpid())
    raise LookupError("raised on purpose by /raise")


@app.get("/signals")
def signals():
    return json.dumps(SIGNALS)


@app.get("/records")
def records():
    return json.dumps(RECORDS)


@app.get("/send-path")
def send_path():
    from uwsgi_ws.broadcast import hub

    fn = hub._send_many  # what Hub._write_all tests to choose the native path
    return json.dumps({"native": fn is not None, "module": getattr(fn, "__module__", None)})
