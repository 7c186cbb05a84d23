"""Our package (``uwsgi_ws``) under the common contract.

Launched by uWSGI with 2 worker processes and the package's mule (see the
``uwsgi_ws`` rows in bench/run.py). Broadcasts are delivered by the package
to every open WebSocket of every worker.
"""
from flask import Flask, request

from uwsgi_ws import WebSocket

app = Flask(__name__)
ws = WebSocket(app)


@ws.route("/ws")
def sub(conn):  # type: ignore[no-untyped-def]
    for _ in conn:  # just keep reading until close; broadcasts are delivered by the package
        pass


@app.post("/publish")
def publish():  # type: ignore[no-untyped-def]
    ws.publish(request.get_data(as_text=True))  # channel-less: every open websocket
    return "", 204
