"""What the uWSGI serving the tests runs: its Python, prefix and library versions,
sent over a WebSocket route of the package (so the package imports and upgrades too)."""

from __future__ import annotations

import importlib.metadata
import json
import sys

import uwsgi
from flask import Flask

from uwsgi_ws import WebSocket

app = Flask(__name__)
ws = WebSocket(app)


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


@ws.route("/versions")
def versions(conn) -> None:  # type: ignore[no-untyped-def]
    conn.send(json.dumps({
        "python": list(sys.version_info[:3]),
        "prefix": sys.prefix,
        "uwsgi": uwsgi.version.decode(),
        "flask": _version("flask"),
        "werkzeug": _version("werkzeug"),
        "gevent": _version("gevent"),
        "loop": uwsgi.opt.get("gevent") is not None,
    }))
