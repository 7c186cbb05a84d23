# flask-websockets' docs example "Managing multiple connections with channels" (/work/shared/seeds/004):
# the server-time channel, a publisher thread started at import, app.run at module level.
# Changed: only the import line (was: from flask_websockets import WebSocket, WebSockets).
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


def publish_server_time() -> None:
    while True:
        websockets.publish(str(time.time()), ["server_time"])
        time.sleep(1)


Thread(target=publish_server_time).start()
app.run(host="localhost", port=6969)
