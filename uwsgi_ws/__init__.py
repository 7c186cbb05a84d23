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

__all__ = [
    "AsyncWebSocket",
    "Connection",
    "ConnectionClosed",
    "GeventWebSocket",
    "ThreadedWebSocket",
    "WebSocket",
]
__version__ = "0.1.0"
