"""permessage-deflate under test (tests/test_deflate_wire.py).

WebSocket:
    /echo           echoes every message (compression on: the app's defaults,
                    compression_min_size 64 bytes)
    /plain          the same, with compression=None on the route
    /sub/<channel>  subscribes to `channel`, sends `ready:<pid>`, then for each
                    text command `direct:<n>` sends a direct message of n bytes
                    (`D<seq>|xxxx...`, in between the broadcasts)
HTTP:
    POST /publish/<channel>   ws.publish(body text, channel); 204
    GET  /stats               this worker's pid and broadcast counters (JSON)

DEFLATE_APP_OFF=1 in the environment turns compression off with the Flask
config (UWSGI_WS_COMPRESSION = None).
"""

import os

from flask import Flask, request

from uwsgi_ws import WebSocket

app = Flask(__name__)
if os.environ.get("DEFLATE_APP_OFF"):
    app.config["UWSGI_WS_COMPRESSION"] = None
ws = WebSocket(app, max_message_size=64 * 1024, ping_interval=None, compression_min_size=64)


@ws.route("/echo")
def echo(conn):
    for message in conn:
        conn.send(message)


@ws.route("/plain", compression=None)
def plain(conn):
    for message in conn:
        conn.send(message)


@ws.route("/sub/<channel>")
def sub(conn, channel):
    with conn.subscribe(channel):
        conn.send(f"ready:{os.getpid()}")
        seq = 0
        for message in conn:
            if isinstance(message, str) and message.startswith("direct:"):
                seq += 1
                head = f"D{seq}|"
                conn.send(head + "x" * (int(message[7:]) - len(head)))


@app.post("/publish/<channel>")
def publish(channel):
    ws.publish(request.get_data(as_text=True), channel=channel)
    return "", 204


@app.get("/stats")
def stats():
    out = {"pid": os.getpid()}
    broadcast = ws.broadcast()
    if broadcast.available:
        out.update(broadcast.stats())
    return out
