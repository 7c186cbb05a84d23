"""uwsgi_ws: WebSockets for Flask apps served by uWSGI, with cross-worker broadcast.

An echo route::

    from uwsgi_ws import WebSocket
    ws = WebSocket(app)

    @ws.route("/echo")
    def echo(conn):
        for message in conn:
            conn.send(message)
"""

from . import log as _log  # noqa: F401  (the package's log fallback, before anything logs)
from .broadcast import publish
from .connection import Connection
from .exceptions import (
                         BroadcastError,
                         ConfigError,
                         ConnectionClosed,
                         ConnectionClosedError,
                         ConnectionClosedOK,
                         EventError,
                         HandshakeRefused,
                         PublishError,
                         RingError,
                         UwsgiWsError,
)
from .extension import AsyncWebSocket, GeventWebSocket, Sock, Sockets, ThreadedWebSocket, WebSocket, WebSockets
from .protocol import CloseCode

__all__ = [
    "AsyncWebSocket",
    "BroadcastError",
    "CloseCode",
    "ConfigError",
    "Connection",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "EventError",
    "GeventWebSocket",
    "HandshakeRefused",
    "PublishError",
    "RingError",
    "Sock",
    "Sockets",
    "ThreadedWebSocket",
    "UwsgiWsError",
    "WebSocket",
    "WebSockets",
    "publish",
]
__version__ = "0.1.0"
