"""Peer 4: Flask-uWSGI-WebSocket 0.6.1 (``GeventWebSocket``) under uWSGI gevent.

Three compatibility patches are applied before the package is used, because
0.6.1 (2018) predates Python 3.11, Flask 3 and Werkzeug 3:

1. ``flask.app.setupmethod`` no longer exists (moved to
   ``flask.sansio.scaffold``): we put it back so the package imports.
2. Werkzeug >= 2.2 matches an upgrade request only against rules declared
   ``websocket=True``; the package builds plain rules, so every handshake
   falls through to Flask and gets 404. We make the package's ``Rule``
   create ``websocket=True`` rules.
3. Its optional asyncio flavour (``_asyncio.py``, unused here) uses
   ``@asyncio.coroutine``, removed in Python 3.11, and the package's import
   guard only catches ImportError: we register an empty stand-in module.

Broadcast is in-process over the package's client objects; ``client.send``
queues the message and wakes the connection's own request greenlet, which
calls ``uwsgi.websocket_send`` (the only way the uWSGI API allows).

Run: ``uwsgi --http-socket ... --gevent N --wsgi-file flask_uwsgi_ws_server.py``
"""
from __future__ import annotations

import functools
import sys
import types

import flask.app
from flask.sansio.scaffold import setupmethod
from werkzeug.routing import Rule

flask.app.setupmethod = setupmethod  # patch 1
sys.modules["flask_uwsgi_websocket._asyncio"] = types.ModuleType("flask_uwsgi_websocket._asyncio")  # patch 3
import flask_uwsgi_websocket.websocket as _fuw  # noqa: E402

_fuw.Rule = functools.partial(Rule, websocket=True)  # patch 2

from flask import Flask, request  # noqa: E402
from flask_uwsgi_websocket import GeventWebSocket  # noqa: E402

app = Flask(__name__)
websocket = GeventWebSocket(app)
clients: set = set()


@websocket.route("/ws")
def subscriber(client) -> None:  # type: ignore[no-untyped-def]
    """Register the client and read until the package reports the close."""
    clients.add(client)
    try:
        while client.receive() is not None:
            pass
    finally:
        clients.discard(client)


@app.post("/publish")
def publish() -> tuple[str, int]:
    """Queue the body on every connected client."""
    body = request.get_data()
    for client in list(clients):
        client.send(body)
    return "", 204
