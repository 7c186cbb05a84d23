"""Echo and friends: the app most end-to-end tests talk to.

Handlers that have something to tell the test (close codes, what raised,
teardown order) append JSON lines to the file named by the `report` query
argument: the tests pass a path under their tmp_path, which works whatever
worker process serves the connection.
"""

import json
import os
import time

from flask import Blueprint, Flask, current_app, g, request, session, url_for

from uwsgi_ws import ConnectionClosed, WebSocket

app = Flask(__name__)
app.secret_key = "tests"
ws = WebSocket(app, max_message_size=64 * 1024, ping_interval=None)


def report(**fields):
    path = request.args.get("report")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(fields) + "\n")


def nap(seconds):
    """Sleep without blocking the other connections of this worker's model."""
    if ws.runtime().NAME == "gevent":
        import gevent

        gevent.sleep(seconds)
    else:
        time.sleep(seconds)


@app.before_request
def set_g():
    g.marker = "g-" + request.path


@app.teardown_request
def teardown(exc):
    report(event="teardown", endpoint=request.endpoint, exc=repr(exc) if exc else None)


@ws.route("/echo")
def echo(conn):
    for message in conn:
        conn.send(message)


@ws.route("/rooms/<name>")
def room(conn, name):
    conn.send(f"room:{name}")
    for message in conn:
        conn.send(f"{name}:{message}")


bp = Blueprint("bp", __name__)


@ws.route("/bp-echo", bp=bp)
def bp_echo(conn):
    conn.send(f"bp:{request.blueprint}:{request.endpoint}")
    for message in conn:
        conn.send(message)


@bp.route("/hello")
def bp_hello():
    return "bp hello"


app.register_blueprint(bp, url_prefix="/x")


@ws.route("/urls")
def urls(conn):
    conn.send(json.dumps({
        "echo": url_for("echo"),
        "room": url_for("room", name="a b"),
        "room_external": url_for("room", name="blue", _external=True),
        "bp": url_for("bp.bp_echo"),
        "self": url_for(request.endpoint),
        "http_view": url_for("login"),
    }))


@app.route("/urls")
def urls_http():
    return json.dumps({"echo": url_for("echo"), "bp": url_for("bp.bp_echo")})


# The same rule twice: plain GETs reach the HTTP view, upgrades the handler.
@app.route("/both")
def both_http():
    return "plain http view"


@ws.route("/both", endpoint="both_ws")
def both_ws(conn):
    conn.send("websocket handler")


@ws.route("/proto", subprotocols=["v2.chat", "v1.chat"])
def proto(conn):
    conn.send(repr(conn.subprotocol))


@app.route("/login")
def login():
    session["user"] = request.args.get("user", "alice")
    return "logged in"


@ws.route("/context")
def context(conn):
    conn.send(json.dumps({
        "args": request.args.to_dict(flat=False),
        "cookie": request.cookies.get("flavor"),
        "user": session.get("user"),
        "g": g.get("marker"),
        "app": current_app.name,
        "same_app": current_app._get_current_object() is app,
        "path": request.path,
        "endpoint": request.endpoint,
        "environ_is_request": conn.environ is request.environ,
    }))
    for message in conn:
        conn.send(message)
    report(event="handler-end", pid=os.getpid())


@ws.route("/close-server")
def close_server(conn):
    code = int(request.args.get("code", 4000))
    conn.close(code, request.args.get("reason", "bye"))
    outcome = {"event": "closed", "close_code": conn.close_code, "close_reason": conn.close_reason,
               "closed": conn.closed, "connected": conn.connected}
    try:
        conn.send("too late")
        outcome["send"] = "no exception"
    except ConnectionClosed as exc:
        outcome["send"] = ["ConnectionClosed", exc.code]
    try:
        outcome["receive"] = repr(conn.receive(timeout=1))
    except ConnectionClosed as exc:
        outcome["receive"] = ["ConnectionClosed", exc.code]
    outcome["iteration"] = list(conn)
    report(**outcome)


@ws.route("/close-client")
def close_client(conn):
    received = []
    for message in conn:  # ends when the client closes
        received.append(message)
        conn.send(message)
    outcome = {"event": "closed", "close_code": conn.close_code, "close_reason": conn.close_reason,
               "received": received, "closed": conn.closed}
    try:
        outcome["receive"] = repr(conn.receive())
    except ConnectionClosed as exc:
        outcome["receive"] = ["ConnectionClosed", exc.code, exc.reason]
    try:
        conn.send("too late")
        outcome["send"] = "no exception"
    except ConnectionClosed as exc:
        outcome["send"] = ["ConnectionClosed", exc.code]
    report(**outcome)


@ws.route("/raise")
def raises(conn):
    message = conn.receive()
    raise RuntimeError(f"handler failed on purpose: {message}")


@ws.route("/receive-loop")
def receive_loop(conn):
    """Never catches ConnectionClosed: the client's close ends it with that exception."""
    while True:
        conn.send(conn.receive())


@ws.route("/timeout")
def timeout(conn):
    started = time.monotonic()
    got = conn.receive(timeout=0.1)
    conn.send(json.dumps({"got": repr(got), "elapsed": time.monotonic() - started}))
    for message in conn:
        conn.send(message)


@ws.route("/recv-nb")
def recv_nb(conn):
    first = conn.recv_nb()
    conn.send(json.dumps({"first": repr(first)}))  # the client sends only after this
    deadline = time.monotonic() + 5
    polls = 0
    got = None
    while got is None and time.monotonic() < deadline:
        got = conn.recv_nb()
        polls += 1
        if got is None:
            nap(0.01)
    conn.send(json.dumps({"got": got, "polls": polls}))
    for message in conn:
        conn.send(message)


@app.route("/sharedarea", methods=["POST"])
def sharedarea_write():
    import uwsgi

    uwsgi.sharedarea_write(0, int(request.args["pos"]), request.get_data())
    return "ok"


@ws.route("/sharedarea")
def sharedarea_send(conn):
    pos, length = int(request.args["pos"]), int(request.args.get("length", 0))
    if request.args.get("binary"):
        conn.send_binary_from_sharedarea(0, pos, length)
    else:
        conn.send_from_sharedarea(0, pos, length)
    for message in conn:
        conn.send(message)
