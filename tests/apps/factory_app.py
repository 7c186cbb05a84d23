"""An application factory as Flask's docs write one: the extension, its routes and an
event endpoint declared at module level, `init_app` in `create_app(config)`; each app
has its own config (secret key, allowed origins, the user a session names)."""

from flask import Blueprint, Flask, session

from uwsgi_ws import WebSocket

ws = WebSocket()
live = ws.events("/live")  # before any app exists
bp = Blueprint("notes", __name__)


@ws.before_connect
def logged_in():
    return "user" in session or ("Unauthorized", 401)


@ws.route("/whoami")
def whoami(conn):
    from flask import current_app

    conn.send(f"{session['user']}@{current_app.config['NAME']}")


@live.on("connect")
def connected(peer):
    return None


@bp.route("/login/<user>")
def login(user):
    session["user"] = user
    return "ok"


def create_app(config=None):
    app = Flask(__name__)
    app.config.update(SECRET_KEY="dev", NAME="app")
    app.config.update(config or {})
    app.register_blueprint(bp)
    ws.init_app(app)
    return app
