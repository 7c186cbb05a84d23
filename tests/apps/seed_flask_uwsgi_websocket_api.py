"""Flask-uWSGI-WebSocket's README example, with only the import line changed
(was: ``from flask.ext.uwsgi_websocket import WebSocket``), plus the names its
users rely on: ``ws.id``, ``recv_nb``, the ``timeout`` option."""

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
