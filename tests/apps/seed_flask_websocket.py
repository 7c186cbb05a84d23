# Flask-WebSocket's README example (/work/shared/seeds/002).
# Changed: only the import line (was: from flask.ext.websocket import WebSocket).
from flask import Flask
from uwsgi_ws import WebSocket

app = Flask(__name__)
websocket = WebSocket(app)

@websocket.route('/echo')
def echo(websocket):
    while True:
        message = websocket.receive()
        websocket.send(message)
