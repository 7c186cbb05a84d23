"""A Flask-SocketIO app (import changed) whose WebSocket extension has a before_connect
hook: ?token=ok or 403, for the polling handshake as for the WebSocket upgrade."""

from flask import Flask, request

from uwsgi_ws.socketio import SocketIO

app = Flask(__name__)
socketio = SocketIO(app)


@socketio.websocket.before_connect
def gate():
    return request.args.get("token") == "ok"


@socketio.on("ping me")
def ping_me(data):
    return {"pong": data}
