"""Not a page example: what Flask-uWSGI-WebSocket's GeventWebSocket did when a user left,
written as its users' handlers are. /stay keeps its connection in `stayed` for good (a
handler that forgets to remove itself: no `del`); /shout sends each message to every
kept connection, closed ones included, then tells its client how many were closed."""

from flask import Flask

from uwsgi_ws import GeventWebSocket

app = Flask(__name__)
ws = GeventWebSocket(app)

stayed = []


@ws.route("/stay")
def stay(ws):
    stayed.append(ws)
    ws.send(ws.id)
    while ws.receive() is not None:
        pass
    ws.send("never delivered")  # the client left: ends the handler quietly (ConnectionClosed)


@ws.route("/shout")
def shout(ws):
    while True:
        msg = ws.receive()
        if msg is None:
            break
        for other in stayed:
            other.send(msg)  # a closed one: dropped, not an error for this sender
        ws.send(f"sent closed={sum(other.closed for other in stayed)}")
