"""Peer 2: Flask-SocketIO 5.x under gevent (``socketio.run``).

Socket.IO is not plain WebSocket: clients connect to
``/socket.io/?EIO=4&transport=websocket`` and receive ``42["msg", payload]``.
``POST /publish`` calls ``socketio.emit("msg", body)`` (all clients of the
default namespace).

Server: ``socketio.run(app)`` with ``async_mode="gevent"``, which Flask-SocketIO
documents as a production server; WebSocket support comes from
gevent-websocket (installed in bench/.venv, preferred by ``socketio.run``).

Usage: ``python socketio_server.py PORT``
"""
from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

from flask import Flask, request  # noqa: E402
from flask_socketio import SocketIO  # noqa: E402

app = Flask(__name__)
socketio = SocketIO(app, async_mode="gevent")


@app.post("/publish")
def publish() -> tuple[str, int]:
    """Broadcast the body as event ``msg`` to every connected client."""
    socketio.emit("msg", request.get_data(as_text=True))
    return "", 204


if __name__ == "__main__":
    try:
        socketio.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_output=False)
    except KeyboardInterrupt:
        pass
