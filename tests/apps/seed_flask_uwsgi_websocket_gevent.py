# Flask-uWSGI-WebSocket's README example for gevent (GeventWebSocket, app.run(gevent=100)).
# Changed: only the import line (was: from flask.ext.uwsgi_websocket import GeventWebSocket).
from flask import Flask
from uwsgi_ws import GeventWebSocket

app = Flask(__name__)
websocket = GeventWebSocket(app)

@websocket.route('/echo')
def echo(ws):
    while True:
        msg = ws.receive()
        ws.send(msg)

if __name__ == '__main__':
    app.run(gevent=100)
