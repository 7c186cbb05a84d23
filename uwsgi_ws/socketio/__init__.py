"""Flask-SocketIO's API on uwsgi_ws: change one import line.

    from uwsgi_ws.socketio import SocketIO, emit, send, join_room, leave_room

in place of ``from flask_socketio import ...``; handlers, rooms, acks and the
browser's ``socket.io-client`` stay as they are. Under uWSGI with several
workers, emits reach every worker's clients through uwsgi_ws's broadcast
(no Redis), and a session's requests may reach any worker. See
docs/socketio.md for the design and the differences.

Needs python-socketio, python-engineio and Flask-SocketIO (the ``socketio``
extra of uwsgi_ws).
"""

from flask_socketio import (
    ConnectionRefusedError,
    Namespace,
    SocketIOTestClient,
    call,
    close_room,
    disconnect,
    emit,
    join_room,
    leave_room,
    rooms,
    send,
)

from .extension import Server, SocketIO
from .manager import BroadcastManager

__all__ = [
    "BroadcastManager",
    "ConnectionRefusedError",
    "Namespace",
    "Server",
    "SocketIO",
    "SocketIOTestClient",
    "call",
    "close_room",
    "disconnect",
    "emit",
    "join_room",
    "leave_room",
    "rooms",
    "send",
]
