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

Interpreter exit (`close_all`, registered with `atexit` by the first `track`):
the connections still open get a close frame, 1012 "service restart" (RFC 6455
section 7.4.1, IANA registry) when Werkzeug's reloader restarts this process
(``flask run --debug``, a file changed), 1001 "going away" otherwise (Ctrl-C,
the end of ``python app.py``), instead of a socket dropped without one.

For development only: uWSGI stays the production server (``app.run(...)``
launches uWSGI; README "Which server for what").
"""

from __future__ import annotations

import atexit
import logging
import socket
import threading
import weakref
from typing import Any, Callable, Dict, List, Tuple

from . import geventws
from .broadcast import use_in_process
from .protocol import GOING_AWAY, SERVICE_RESTART

#: The environ key where Werkzeug's development server puts the request's socket.
SOCKET_KEY = "werkzeug.socket"

#: What Werkzeug's reloader logs (werkzeug/_reloader.py, ``log_reload``) right before
#: ``sys.exit(3)``, the exit its parent answers with a new child.
RELOAD_LOG = "Detected change in"

log = logging.getLogger("uwsgi_ws.devserver")
_warned = False
_open: weakref.WeakSet[Any] = weakref.WeakSet()  # the open connections (a kept finished one: .connected)
_lock = threading.Lock()
_armed = False
_restarting = False


class _ReloadSeen(logging.Filter):
    """On Werkzeug's logger: notes the reloader's "Detected change in ..., reloading"
    line (the process exits right after, for a new one). Lets every record through."""

    def filter(self, record: logging.LogRecord) -> bool:
        global _restarting
        if RELOAD_LOG in str(record.msg):
            _restarting = True
        return True


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


def track(conn: Any) -> None:
    """`conn` (a `Connection` this server upgraded) gets a close frame at interpreter
    exit if still open then (`close_all`). Kept by weak reference (nothing to
    untrack). The first call registers `close_all` with `atexit` and notes Werkzeug's
    reloads. Never blocks (a lock held for a set insert); any thread or greenlet."""
    global _armed
    with _lock:
        _open.add(conn)
        if _armed:
            return
        _armed = True
    logging.getLogger("werkzeug").addFilter(_ReloadSeen())
    atexit.register(close_all)


def close_all() -> None:
    """At interpreter exit: send every open connection a close frame, 1012 "service
    restart" after Werkzeug's reloader logged a change (`RELOAD_LOG`: the client
    reconnects to the new process), else 1001 "going away" (Ctrl-C, SIGTERM, the end
    of ``python app.py``); RFC 6455 section 7.4.1 and IANA's registry. Each frame is
    written and our side of TCP shut (`Connection.close_nowait`), without waiting for
    the peer's answer: the process is exiting, and an unanswered peer (a test
    client's socket pair nobody reads) must not hold it up.

    A reloader whose log line is filtered out below INFO, or a reload by other
    means, gets 1001: the client reconnects all the same. Blocks only while the
    frames are written (a send buffer full of an unread backlog: up to each
    connection's write path, which gives up on a broken socket)."""
    code, reason = (SERVICE_RESTART, "server restarting") if _restarting else (GOING_AWAY, "server shutting down")
    with _lock:
        conns = [conn for conn in _open if getattr(conn, "connected", False)]
    for conn in conns:
        try:
            conn.close_nowait(code, reason)
        except Exception:  # closed meanwhile, socket gone: nothing to say goodbye to
            pass
