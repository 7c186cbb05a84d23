"""Not a page example: the names Flask-uWSGI-WebSocket's users rely on beyond its
README example (seed_flask_uwsgi_websocket.py): ``ws.id``, ``recv_nb``, the
``timeout`` option, written as its users write them."""

from flask import Flask
from uwsgi_ws import WebSocket

app = Flask(__name__)
ws = WebSocket(app, timeout=1)


@ws.route('/echo')
def echo(ws):
    while True:
        msg = ws.receive()
        if msg is not None:
            ws.send(msg)


@ws.route('/id')
def connection_id(ws):
    ws.send(ws.id)
    ws.receive()  # returns None after the `timeout` option's 1 s: the handler then ends
    ws.send("timeout" if ws.recv_nb() is None else "message")


if __name__ == '__main__':
    app.run(gevent=100)
