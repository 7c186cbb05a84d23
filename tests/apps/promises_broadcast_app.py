"""The app of tests/test_promises_broadcast.py (two workers, the broadcast mule):

    /sub (ws)             sends ``ready:<worker pid>``, then gets every broadcast; answers
                          "ping" with "pong"
    POST /publish/<n>     publishes ``<prefix><i>`` + PAD for i < n (?prefix=, ?pad= bytes)
    GET /hub              this worker's pid, hub counters and the fallback poll it runs with
"""

from __future__ import annotations

import json
import os

from flask import Flask, request

from uwsgi_ws import WebSocket

app = Flask(__name__)
ws = WebSocket(app, ping_interval=None)


@ws.route("/sub")
def sub(conn):
    conn.send("ready:%d" % os.getpid())
    for message in conn:
        if message == "ping":
            conn.send("pong")


@app.post("/publish/<int:count>")
def publish(count):
    prefix = request.args.get("prefix", "m")
    pad = "." * int(request.args.get("pad", 0))
    for i in range(count):
        ws.publish("%s%d%s" % (prefix, i, pad))
    return "", 204


@app.get("/hub")
def hub():
    from uwsgi_ws.broadcast import hub as hub_module

    out = {"pid": os.getpid(), "fallback_poll": hub_module._FALLBACK_POLL}
    out.update(ws.broadcast().stats())
    return json.dumps(out)
