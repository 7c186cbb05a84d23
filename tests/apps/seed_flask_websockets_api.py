"""Not a page example: flask-websockets' API as its docstrings show it, beyond the docs'
examples (seed_flask_websockets*.py): ``subscribe(ws, [...])`` and ``publish(data, [...])``
with lists of channels (a name given twice counts once, as its ``set(channels)``), and
``ws.close(reason=1000, message="bye")``."""

from flask import Flask, request

from uwsgi_ws import WebSocket, WebSockets

app = Flask(__name__)
websockets = WebSockets(app)


@websockets.route("/sub")
def subscriber(ws: WebSocket) -> None:
    with websockets.subscribe(ws, ["a", "b", "a"]):
        ws.send("subscribed")
        for data in ws.iter_data():
            if data == "bye":
                ws.close(reason=1000, message="bye")
                return


@app.route("/publish/<path:channels>", methods=["POST"])
def publish(channels: str) -> str:
    websockets.publish(request.get_data(as_text=True), channels.split(","))
    return "ok"
