"""WebSocket routes on Werkzeug's development server (``flask --app app run --debug``).

Werkzeug's threaded development server runs each request in a thread of its
own and hands the application the request's raw socket in
``environ["werkzeug.socket"]`` (the test client, `uwsgi_ws.testing`, does the
same with one end of a socket pair). The upgrade there: this module writes the
101 Switching Protocols on that socket itself, then the extension hands the
socket to the same `Connection` and protocol engine as under uWSGI (the
"threads" runtime), and the broadcast is the in-process one
(`uwsgi_ws.broadcast.use_in_process`).

Werkzeug's own answer: once the handler returns, the server would write its
status line; `upgrade` has told it the status is ``101`` and the connection has
shut the socket by then, so that write fails with a broken pipe, which
Werkzeug counts as a dropped connection and answers with nothing (it still
logs the request line, ``"GET /echo HTTP/1.1" 101 -``). Under ``--debug``,
Werkzeug's debugger wraps the app and sees no exception.

gevent's pywsgi server with gevent-websocket's ``WebSocketHandler`` (Flask-Sockets'
``python app.py``) is served here too: that handler has sent the 101 already, so
`upgrade` takes its socket without writing one (`uwsgi_ws.geventws`), and the
connection runs on the gevent runtime.

For development only: uWSGI stays the production server (``app.run(...)``
launches uWSGI; README "Which server for what").
"""

from __future__ import annotations

import logging
import socket
from typing import Any, Callable, Dict, List, Tuple

from . import geventws
from .broadcast import use_in_process

#: The environ key where Werkzeug's development server puts the request's socket.
SOCKET_KEY = "werkzeug.socket"

log = logging.getLogger("uwsgi_ws.devserver")
_warned = False


def serves(environ: Dict[str, Any]) -> bool:
    """True when `environ` comes from Werkzeug's development server (or the test
    client), or from gevent-websocket's handler (`uwsgi_ws.geventws.upgraded`), rather
    than uWSGI: the request's raw socket is there to take over."""
    if "uwsgi.version" in environ:
        return False
    return isinstance(environ.get(SOCKET_KEY), socket.socket) or geventws.upgraded(environ)


def prepare(environ: Dict[str, Any]) -> None:
    """Before the handler runs: this process serves the app without uWSGI, so its
    broadcast is the in-process one (`use_in_process`). Warns once when the server
    runs one request at a time (``flask run --without-threads``): a WebSocket then
    holds the whole server until it closes."""
    global _warned
    use_in_process()
    if geventws.upgraded(environ):  # pywsgi: one greenlet per request (wsgi.multithread is False there)
        geventws.prepare(environ)
    elif not environ.get("wsgi.multithread", True) and not _warned:
        _warned = True
        log.warning("this development server handles one request at a time (--without-threads?): each "
                    "WebSocket holds it until it closes; run flask run with threads (the default)")


def upgrade(environ: Dict[str, Any], start_response: Callable[..., Any],
            headers: List[Tuple[str, str]]) -> socket.socket:
    """Send the 101 with `headers` on the request's socket and return the socket
    for the connection (a new socket object on the same fd: detach it, never close
    it, when done; the server closes its own).

    Raises:
        OSError: the client is gone (the socket fails while writing the 101).

    Under gevent-websocket's handler (`uwsgi_ws.geventws`) the 101 is sent
    already: `headers` are not sent (they say what the route negotiated, and
    `prepare` left nothing to negotiate) and `start_response` is not called.

    Blocks the calling thread until the 101 is written.
    """
    if geventws.upgraded(environ):
        return geventws.take(environ)
    raw: socket.socket = environ[SOCKET_KEY]
    head = "HTTP/1.1 101 Switching Protocols\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers)
    raw.sendall((head + "\r\n").encode("latin-1"))
    start_response("101 Switching Protocols", [])  # Werkzeug's later write of it fails: see the docstring
    return socket.socket(fileno=raw.fileno())
