"""An app whose module calls app.run() at its top level, without the `__main__` guard
(flask-websockets' examples do): `python module_level_run_app.py` serves it under uWSGI,
while `flask run`, pytest or any importer must get the module back, app.run() ignored.
PORT comes from the environment (default 6969)."""

import os

from flask import Flask

from uwsgi_ws import WebSocket

app = Flask(__name__)
ws = WebSocket(app)


@ws.route("/echo")
def echo(conn):
    for message in conn:
        conn.send(message)


@app.route("/")
def index():
    return "module-level app.run"


app.run(port=int(os.environ.get("PORT", "6969")))
