"""uwsgi_ws: WebSockets for Flask apps served by uWSGI, with cross-worker broadcast.

    from uwsgi_ws import WebSocket
    ws = WebSocket(app)

    @ws.route("/echo")
    def echo(conn):
        for message in conn:
            conn.send(message)
"""

from .connection import Connection, ConnectionClosed
from .extension import AsyncWebSocket, GeventWebSocket, ThreadedWebSocket, WebSocket
from .mule import PublishError, publish
from .sharedarea import RingError

__all__ = [
    "AsyncWebSocket",
    "Connection",
    "ConnectionClosed",
    "GeventWebSocket",
    "PublishError",
    "RingError",
    "ThreadedWebSocket",
    "WebSocket",
    "publish",
]
__version__ = "0.1.0"
