# Flask-uWSGI-WebSocket's example, as its PyPI page (/work/shared/seeds/000) shows it.
# Changed: only the import line (was: from flask.ext.uwsgi_websocket import WebSocket).
# Extraction garbling fixed: the page lost the `@ws.route('/echo')`, `ws.send(msg)` and
# `app.run(debug=True` pieces; they are put back as the project's README has them.
from flask import Flask
from uwsgi_ws import WebSocket

app = Flask(__name__)
ws = WebSocket(app)

@ws.route('/echo')
def echo(ws):
    while True:
        msg = ws.receive()
        ws.send(msg)

if __name__ == '__main__':
    app.run(debug=True, threads=16)
