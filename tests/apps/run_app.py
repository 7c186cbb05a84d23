"""An app started the Flask way: `python run_app.py` calls app.run, which execs uWSGI.

PORT (required) and RUN_DEBUG=1 come from the environment.
"""

import os

from flask import Flask

from uwsgi_ws import WebSocket

app = Flask(__name__)
ws = WebSocket(app)


@ws.route("/echo")
def echo(conn):
    for message in conn:
        conn.send(message)


@app.route("/info")
def info():
    import uwsgi

    return {
        "debug": app.debug,
        "wsgi_app": type(app.wsgi_app).__name__,
        "pid": os.getpid(),
        "masterpid": uwsgi.masterpid(),
        "numproc": uwsgi.numproc,
    }


@app.route("/fail")
def fail():
    raise RuntimeError("for the debugger")


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ["PORT"]), debug=os.environ.get("RUN_DEBUG") == "1",
            threads=4)
