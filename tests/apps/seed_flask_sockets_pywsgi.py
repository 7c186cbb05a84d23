# Flask-Sockets' first README example ("Simple usage of route decorator", /work/shared/seeds/001),
# run as the README does: `python app.py`, gevent's pywsgi server with gevent-websocket's handler.
# Changed: only the import line (was: from flask_sockets import Sockets).
# Extraction garbling fixed: the page lost the `@sockets.route('/echo')`, `ws.send(message)`,
# `@app.route('/')` and `server.serve_forever()` lines; they are put back as the README has them.
# tests/test_devserver_gevent_websocket.py runs a copy with a free port instead of 5000 and a
# /publish probe route added before the __main__ block.
from flask import Flask
from uwsgi_ws import Sockets

app = Flask(__name__)
sockets = Sockets(app)

@sockets.route('/echo')
def echo_socket(ws):
    while not ws.closed:
        message = ws.receive()
        ws.send(message)

@app.route('/')
def hello():
    return 'Hello World!'

if __name__ == "__main__":
    from gevent import pywsgi
    from geventwebsocket.handler import WebSocketHandler
    server = pywsgi.WSGIServer(('', 5000), app, handler_class=WebSocketHandler)
    server.serve_forever()
