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

For development only: uWSGI stays the production server (``app.run(...)``
launches uWSGI; README "Which server for what").
"""

from __future__ import annotations

import logging
import socket
from typing import Any, Callable, Dict, List, Tuple

from .broadcast import use_in_process

#: The environ key where Werkzeug's development server puts the request's socket.
SOCKET_KEY = "werkzeug.socket"

log = logging.getLogger("uwsgi_ws.devserver")
_warned = False


def serves(environ: Dict[str, Any]) -> bool:
    """True when `environ` comes from Werkzeug's development server (or the test
    client) rather than uWSGI: the request's raw socket is there to take over."""
    return "uwsgi.version" not in environ and isinstance(environ.get(SOCKET_KEY), socket.socket)


def prepare(environ: Dict[str, Any]) -> None:
    """Before the handler runs: this process serves the app without uWSGI, so its
    broadcast is the in-process one (`use_in_process`). Warns once when the server
    runs one request at a time (``flask run --without-threads``): a WebSocket then
    holds the whole server until it closes."""
    global _warned
    use_in_process()
    if not environ.get("wsgi.multithread", True) and not _warned:
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

    Blocks the calling thread until the 101 is written.
    """
    raw: socket.socket = environ[SOCKET_KEY]
    head = "HTTP/1.1 101 Switching Protocols\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers)
    raw.sendall((head + "\r\n").encode("latin-1"))
    start_response("101 Switching Protocols", [])  # Werkzeug's later write of it fails: see the docstring
    return socket.socket(fileno=raw.fileno())
