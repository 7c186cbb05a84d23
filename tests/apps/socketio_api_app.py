"""A Flask-SocketIO application using the documented API a user relies on, with
``from uwsgi_ws.socketio import ...`` as its only uwsgi_ws line (issue 14).
Driven by tests/test_socketio_api.py through socket.io-client v4 and HTTP.
"""
import os

from flask import Flask, jsonify, request

from uwsgi_ws.socketio import (
    ConnectionRefusedError,
    Namespace,
    SocketIO,
    close_room,
    disconnect,
    emit,
    join_room,
    leave_room,
    rooms,
    send,
)

app = Flask(__name__)
app.config["SECRET_KEY"] = "secret!"
socketio = SocketIO(app, cors_allowed_origins=["http://allowed.example"], max_queued_bytes=512 * 1024)


@socketio.on("connect")
def connect(auth):
    token = (auth or {}).get("token")
    if token == "refuse":
        raise ConnectionRefusedError("bad token")
    if token == "false":
        return False
    join_room("everyone")
    emit("welcome", {"sid": request.sid, "auth": auth, "pid": os.getpid()})


@socketio.on("disconnect")
def gone(reason):
    socketio.emit("left", {"sid": request.sid}, to="watchers")


@socketio.on("message")
def message(data):
    send({"echo": data}, json=True)


@socketio.on("json")
def json_event(data):
    send(data, json=True)


@socketio.on("add")
def add(a, b):
    return a + b  # the client's ack


@socketio.on("join")
def join(data):
    join_room(data["room"], sid=data.get("sid"))
    return sorted(rooms())


@socketio.on("leave")
def leave(data):
    leave_room(data["room"], sid=data.get("sid"))
    return sorted(rooms())


@socketio.on("close")
def close(data):
    close_room(data["room"])
    return "closed"


@socketio.on("to room")
def to_room(data):
    kwargs = {}
    if "include_self" in data:
        kwargs["include_self"] = data["include_self"]
    if data.get("skip_me"):
        kwargs["skip_sid"] = request.sid
    emit("room message", data["msg"], to=data["room"], **kwargs)
    if data.get("then"):  # a marker after it, to everyone (emits of one handler keep their order)
        emit("room message", data["then"], to="everyone")


@socketio.on("shout")
def shout(data):
    emit("shouted", data, broadcast=True, include_self=data.get("include_self", True))


@socketio.on("ask me")
def ask_me():
    def answered(answer):
        emit("answer", {"answer": answer, "sid": request.sid})

    emit("question", {"q": 1}, callback=answered)


@socketio.on("kick")
def kick(data):
    if data.get("sid"):
        disconnect(sid=data["sid"])
    else:
        disconnect()


class Chat(Namespace):
    def on_connect(self):
        emit("chat welcome", {"sid": request.sid, "namespace": request.namespace})

    def on_say(self, data):
        emit("said", data, broadcast=True)


socketio.on_namespace(Chat("/chat"))


@socketio.on("ping", namespace="/other")
def other_ping(data):
    emit("pong", {"data": data, "namespace": request.namespace})


@app.post("/announce")
def announce():
    body = request.get_json()
    socketio.emit("announcement", body["data"], to=body.get("to"), namespace=body.get("namespace", "/"))
    return jsonify(pid=os.getpid())


@app.post("/burst/<int:count>")
def burst(count):
    tag = request.args.get("tag", "")
    pad = "x" * int(request.args.get("pad", 0))
    to = request.args.get("to")
    for i in range(count):
        socketio.emit("seq", {"tag": tag, "n": i, "pad": pad}, to=to)
    return jsonify(pid=os.getpid())


@app.post("/call/<sid>")
def call(sid):
    answer = socketio.call("question", {"q": 2}, to=sid, timeout=10)
    return jsonify(answer=answer, pid=os.getpid())


@app.get("/pid")
def pid():
    return str(os.getpid())
