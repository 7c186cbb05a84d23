"""Access control before the upgrade: Origin policies, authentication hooks,
decorators on handlers, connection limits.

One Flask app, several extensions (each has its own options and hooks):
`ws` (defaults), `ws_any` ("*"), `ws_listed` (a list), `ws_auth`
(a before_connect hook) and `ws_limited` (max_connections_per_worker=2).
Connection limits count every WebSocket of the worker, whatever extension.
"""

import functools
import os

from flask import Flask, abort, redirect, request, session

from uwsgi_ws import WebSocket

app = Flask(__name__)
app.secret_key = "tests"

ws = WebSocket(app, ping_interval=None)
ws_any = WebSocket(app, ping_interval=None, allowed_origins="*")
ws_listed = WebSocket(app, ping_interval=None,
                      allowed_origins=["https://example.com", "https://*.trusted.test", "http://localhost:9", "null"])
ws_auth = WebSocket(app, ping_interval=None)
ws_limited = WebSocket(app, ping_interval=None, max_connections_per_worker=2, retry_after=7,
                       max_connections=int(os.environ.get("ACCESS_MAX_CONNECTIONS", "0")) or None)


def echo_with_pid(conn):
    conn.send(f"pid:{os.getpid()}")
    for message in conn:
        conn.send(message)


@ws.route("/echo")
def echo(conn):
    echo_with_pid(conn)


@ws_any.route("/any/echo")
def any_echo(conn):
    echo_with_pid(conn)


@ws_listed.route("/listed/echo")
def listed_echo(conn):
    echo_with_pid(conn)


@ws_limited.route("/limited/echo")
def limited_echo(conn):
    echo_with_pid(conn)


# -- a before_connect hook: ?token=... says what it does ----------------------


@ws_auth.before_connect
def check_token():
    token = request.args.get("token")
    if token == "good":
        return None
    if token == "true":
        return True
    if token == "false":
        return False
    if token == "redirect":
        return redirect("/login")
    if token == "teapot":
        return "short and stout", 418
    if token == "boom":
        raise RuntimeError("before_connect failed on purpose")
    abort(401)


@ws_auth.route("/auth/echo")
def auth_echo(conn):
    echo_with_pid(conn)


@app.errorhandler(401)
def unauthorized(exc):
    return "custom 401: log in first\n", 401, {"WWW-Authenticate": 'Bearer realm="tests"'}


@app.route("/login")
def login():
    session["user"] = request.args.get("user", "alice")
    return "logged in"


# -- plain Flask decorators under @ws.route ---------------------------------


def login_required(view):
    """What Flask-Login's decorator does: abort(401) unless logged in."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        if "user" not in session:
            abort(401)
        return view(*args, **kwargs)

    return wrapper


def login_or_redirect(view):
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        if "user" not in session:
            return redirect("/login")
        return view(*args, **kwargs)

    return wrapper


def admin_only(view):
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        if session.get("user") != "admin":
            abort(403)
        return view(*args, **kwargs)

    return wrapper


def broken_decorator(view):
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        raise RuntimeError("decorator failed on purpose")

    return wrapper


@ws.route("/private/echo")
@login_required
def private_echo(conn):
    conn.send(f"user:{session['user']}")
    for message in conn:
        conn.send(message)


@ws.route("/private/redirect")
@login_or_redirect
def private_redirect(conn):
    conn.send(f"user:{session['user']}")


@ws.route("/admin/<room>")
@login_required
@admin_only
def admin_room(conn, room):
    conn.send(f"admin:{room}:{type(conn).__name__}")
    for message in conn:
        conn.send(message)


@ws.route("/broken")
@broken_decorator
def broken(conn):
    conn.send("unreachable")


@ws.route("/silent")
def silent(conn):
    """Never touches its connection: the client still gets a 101, then close 1000."""


@app.route("/instance-count")
def instance_count():
    """What this worker counts as open WebSockets of the instance (a plain view: it
    never makes this worker claim its row of the metrics table)."""
    from uwsgi_ws import access

    return {"pid": os.getpid(), "open": access.instance_connections(access.worker_connections.value)}


@ws.route("/set-first")
def set_first(conn):
    """Sets an option before any other use of the connection: it must stick."""
    conn.write_limit = 12345
    conn.send(f"write_limit:{conn.write_limit}:{type(conn).__name__}")
