"""Echo and friends: the app most end-to-end tests talk to."""

from flask import Blueprint, Flask, g, request, session, url_for

from uwsgi_ws import WebSocket

app = Flask(__name__)
app.secret_key = "tests"
ws = WebSocket(app, max_message_size=64 * 1024, ping_interval=None)


@ws.route("/echo")
def echo(conn):
    for message in conn:
        conn.send(message)
