"""Broadcast: subscribers per channel, publish over HTTP."""

import os

from flask import Flask, request

from uwsgi_ws import WebSocket

app = Flask(__name__)
ws = WebSocket(app, ping_interval=None, write_limit=int(os.environ.get("WRITE_LIMIT", 1 << 20)))


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


@app.post("/publish")
@app.post("/publish/<channel>")
def publish(channel=None):
    data = request.get_data()
    if request.args.get("binary"):
        ws.publish(data, channel=channel)
    else:
        ws.publish(data.decode("utf-8"), channel=channel)
    return "", 204


@app.post("/publish-many/<int:count>")
def publish_many(count):
    prefix = request.args.get("prefix", "m")
    channel = request.args.get("channel") or None
    for i in range(count):
        ws.publish("%s%d" % (prefix, i), channel=channel)
    return "", 204


@app.get("/pid")
def pid():
    return str(os.getpid())
