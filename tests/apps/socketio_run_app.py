"""A Flask-SocketIO application started the Flask-SocketIO way: `python socketio_run_app.py`
calls `socketio.run(app, ...)`, which execs uWSGI (tests/test_socketio_run.py).

PORT (required) comes from the environment; RUN_GEVENT=N or RUN_THREADS=N become
`socketio.run(..., gevent=N)` / `threads=N` (the model, as a user passes it). The script passes Flask-SocketIO's
development-server options as such a script does: `socketio.run` must ignore them
(uWSGI's command line would refuse them).

Event "ping" (any data): the handler replies with a "pong" event to its client:
    {"data", "sid", "pid", "uwsgi", "masterpid", "worker", "workers", "threads", "gevent", "broadcast"}
Event "shout" (any data): a "shouted" event {"data", "worker", "pid"} to every client
(broadcast=True), from the worker that handled it.
"""

import os

from flask import Flask, request

from uwsgi_ws.socketio import SocketIO, emit

app = Flask(__name__)
app.config["SECRET_KEY"] = "secret!"
socketio = SocketIO(app)


@socketio.on("ping")
def ping(data):
    try:
        import uwsgi
    except ImportError:  # not under uWSGI: the test sees "uwsgi": False
        emit("pong", {"data": data, "sid": request.sid, "pid": os.getpid(), "uwsgi": False})
        return
    emit("pong", {
        "data": data,
        "sid": request.sid,
        "pid": os.getpid(),
        "uwsgi": True,
        "masterpid": uwsgi.masterpid(),
        "worker": uwsgi.worker_id(),
        "workers": uwsgi.numproc,
        "threads": int(uwsgi.opt.get("threads", b"0")),
        "gevent": int(uwsgi.opt.get("gevent", b"0")),
        "broadcast": socketio.websocket.broadcast().available,
    })


@socketio.on("shout")
def shout(data):
    import uwsgi

    emit("shouted", {"data": data, "worker": uwsgi.worker_id(), "pid": os.getpid()}, broadcast=True)


if __name__ == "__main__":
    # RUN_GEVENT=N / RUN_THREADS=N: the concurrency model as a user passes it to socketio.run
    model = {name: int(os.environ[f"RUN_{name.upper()}"]) for name in ("gevent", "threads")
             if os.environ.get(f"RUN_{name.upper()}")}
    socketio.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), use_reloader=False, log_output=True,
                 allow_unsafe_werkzeug=True, **model)
