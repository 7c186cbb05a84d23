"""Flask-SocketIO 5.x with its Redis message queue: one of several processes.

Same contract as socketio_server.py (``POST /publish`` emits the body as event
``msg`` to every client), but ``SocketIO(message_queue=REDIS_URL)``: an emit
goes through Redis pub/sub to every process started with the same URL, each
of which sends it to its own clients — Flask-SocketIO's documented way to run
several server processes (bench/redis_bench.py starts two).

Usage: ``python socketio_redis_server.py PORT REDIS_URL``
"""
from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

from flask import Flask, request  # noqa: E402
from flask_socketio import SocketIO  # noqa: E402

app = Flask(__name__)
socketio = SocketIO(app, async_mode="gevent", message_queue=sys.argv[2])


@app.post("/publish")
def publish() -> tuple[str, int]:
    """Broadcast the body as event ``msg`` to every client of every process."""
    socketio.emit("msg", request.get_data(as_text=True))
    return "", 204


if __name__ == "__main__":
    try:
        socketio.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_output=False)
    except KeyboardInterrupt:
        pass
