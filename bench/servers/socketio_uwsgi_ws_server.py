"""uwsgi_ws.socketio: Flask-SocketIO's API on uwsgi_ws (the compat layer of issue 14).

Same contract as socketio_server.py (``POST /publish`` emits the body as event
``msg`` to every client) and the same code but for the import line; served by
uWSGI with 2 gevent workers and the broadcast mule (bench/socketio_bench.py):
an emit reaches both workers' clients through the mule and the ring, no Redis.
"""
from flask import Flask, request

from uwsgi_ws.socketio import SocketIO

app = Flask(__name__)
socketio = SocketIO(app)


@app.post("/publish")
def publish() -> tuple[str, int]:
    """Broadcast the body as event ``msg`` to every client of every worker."""
    socketio.emit("msg", request.get_data(as_text=True))
    return "", 204
