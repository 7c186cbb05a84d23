"""Publishing from anywhere (tests/test_publish_*.py): threads the app starts itself,
and an events endpoint for publishers outside the instance.

WebSocket /sub: sends `ready:<worker pid>`, then receives every channel-None broadcast.
WebSocket /sub/<channel>: the same for `channel`'s broadcasts.
Events endpoint /live (WebSocket and SSE): `join` allows any room.

POST /thread-publish/<count>?report=&prefix=&channel=&threads=&emit=
    starts `threads` (default 1) `threading.Thread`s in this worker; each publishes
    `count` messages "<prefix><t>-<i>" in order (with `emit=1`: `live.emit("tick",
    {"n": i, "t": t}, to=channel)` instead), then appends one JSON line to the file
    named by the query's `report`:
    {"pid", "thread", "published", "seqs", "error"}. Answers 202 at once (the
    request's greenlet never waits on a thread).
POST /publish?text=&mark=: creates the file `mark` (if given), then publishes `text` from the
    request (204, or 503 with the PublishError).
GET /pid: this worker's pid.
"""

import json
import os
import threading

from flask import Flask, request

from uwsgi_ws import WebSocket

app = Flask(__name__)
ws = WebSocket(app, ping_interval=None)
live = ws.events("/live")
_report_lock = threading.Lock()


@live.on("join")
def may_join(conn, room):
    return True


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


def _report(path, line):
    with _report_lock, open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def _publisher(t, count, prefix, channel, emit, report):
    seqs, error = [], None
    try:
        for i in range(count):
            if emit:
                live.emit("tick", {"n": i, "t": t}, to=channel)
            else:
                seqs.append(ws.publish("%s%d-%d" % (prefix, t, i), channel=channel))
    except Exception as exc:  # reported: the test says what went wrong
        error = f"{type(exc).__name__}: {exc}"
    _report(report, {"pid": os.getpid(), "thread": t, "published": len(seqs) if not emit else (count if error is None else -1),
             "seqs": seqs, "error": error})


@app.post("/thread-publish/<int:count>")
def thread_publish(count):
    prefix = request.args.get("prefix", "m")
    channel = request.args.get("channel") or None
    emit = bool(request.args.get("emit"))
    report = request.args["report"]
    for t in range(int(request.args.get("threads", 1))):
        threading.Thread(target=_publisher, args=(t, count, prefix, channel, emit, report), daemon=True).start()
    return "", 202


@app.post("/publish")
def publish():
    if "mark" in request.args:  # tells the test the publish is about to start
        open(request.args["mark"], "w").close()
    try:
        ws.publish(request.args["text"])
    except Exception as exc:  # the test reads what went wrong
        return f"{type(exc).__name__}: {exc}", 503
    return "", 204


@app.get("/pid")
def pid():
    return str(os.getpid())
