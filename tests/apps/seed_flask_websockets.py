"""flask-websockets' docs example (the server-time channel), with only the import
line changed (was: ``from flask_websockets import WebSocket, WebSockets``): a
publisher thread started at import and ``app.run`` at module level, as its docs
show; plus the echo route with ``iter_data``/``send_bytes`` and ``close(reason=,
message=)``."""

import time
from threading import Thread
from flask import Flask
from uwsgi_ws import WebSocket, WebSockets

app = Flask(__name__)
websockets = WebSockets(app)


@websockets.route("/ws")
def websocket_route(ws: WebSocket) -> None:
    with websockets.subscribe(ws, ["server_time"]):
        for data in ws.iter_data():    # keep listening to the websocket so it doesn't disconnect
            pass


@websockets.route("/echo")
def echo_route(ws: WebSocket) -> None:
    for data in ws.iter_data():
        if data == "bye":
            ws.close(reason=1000, message="bye")
            return
        ws.send_bytes(data)


def publish_server_time() -> None:
    while True:
        websockets.publish(str(time.time()), ["server_time"])
        time.sleep(1)


Thread(target=publish_server_time).start()
app.run(host="localhost", port=6969)
