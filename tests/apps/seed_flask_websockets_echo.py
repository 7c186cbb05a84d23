# flask-websockets' docs examples "Creating a WebSocket route" + "Sending and receiving data"
# (/work/shared/seeds/004): the app of the first, the echo route of the second.
# Changed: only the import line (was: from flask_websockets import WebSockets). It imports
# WebSocket too, as the page's third example does: the first one annotates with WebSocket
# without importing it (a NameError under flask-websockets as well).
from flask import Flask
from uwsgi_ws import WebSocket, WebSockets

app = Flask(__name__)
websockets = WebSockets(app)

@websockets.route("/ws")
def websocket_route(ws: WebSocket) -> None:
    for data in ws.iter_data():
        ws.send_bytes(data)

app.run(host="localhost", port=6969)
