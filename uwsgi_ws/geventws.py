"""WebSocket routes behind gevent-websocket's ``WebSocketHandler`` (gevent's pywsgi server).

Flask-Sockets' README runs its example as ``python app.py`` with::

    server = pywsgi.WSGIServer(('', 5000), app, handler_class=WebSocketHandler)
    server.serve_forever()

gevent-websocket (0.10, ``geventwebsocket/handler.py``) performs the opening
handshake itself before it calls the app: for any request with ``Upgrade:
websocket`` it checks the key and version, writes the 101 (no extension, and no
subprotocol unless the app has an ``app_protocol`` method), puts its own
``WebSocket`` object in ``environ["wsgi.websocket"]`` and calls the app with a
start_response that discards what it is given. When the app returns, it closes
its ``WebSocket`` with 1000 unless that is closed already.

So a request arriving here is upgraded already, and this module adopts it:

* `upgraded`: the request came through that handler (``wsgi.websocket`` holds a
  WebSocket whose handler has the request's socket).
* `prepare`: drops the client's offers of permessage-deflate and subprotocols
  from the environ (``HTTP_SEC_WEBSOCKET_EXTENSIONS``/``_PROTOCOL``, kept under
  `OFFERS_KEY`), so that the route negotiates what gevent-websocket's 101
  said: nothing (RFC 6455 section 9.1: no extension the 101 did not accept).
* `take`: the request's socket for our `Connection` (a new socket object on the
  same fd: detach it, never close it; pywsgi closes its own), with no second 101,
  and marks gevent-websocket's ``WebSocket`` closed so that it writes no close
  frame of its own after ours.
* `refuse` (Flask's ``request_tearing_down`` signal, connected by `arm` at the first
  such request): a
  request that the app answered with HTTP instead (Origin refused, before_connect,
  a connection limit, a handler that aborted before its first use, a route that is
  not a WebSocket route) gets a close frame saying so (`close_code_for`), since the
  client already has its 101 and would otherwise see a bare 1000; the status is
  logged once per request.

The connection runs on the gevent runtime (the handler is a pywsgi greenlet;
`uwsgi_ws.runtime.detect` picks gevent there) and the broadcast is the
in-process one, as under ``flask run`` (`uwsgi_ws.devserver`).

What the 101 cannot carry here: headers the app adds to a WebSocket route's
response (``after_request``'s, a refreshed session cookie) are not sent, the 101
being on the wire before the app runs.

RFC 6455 section 4.1 lets no client send before it reads the 101, so no frame
can sit in the handler's read buffer (``rfile``) when the socket is taken.

For development and for apps moving from Flask-Sockets; uWSGI stays the
production server (``app.run(...)`` launches it).
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from typing import Any, Dict, Optional

from flask import Flask, Response, request, request_finished, request_tearing_down

from . import frames

#: The environ key where gevent-websocket's handler puts its upgraded ``WebSocket``.
KEY = "wsgi.websocket"
#: Where `prepare` keeps the client's offers it removed: ``{"extensions": str, "protocol": str}``.
OFFERS_KEY = "uwsgi_ws.geventws.offers"
_TAKEN_KEY = "uwsgi_ws.geventws.taken"
_STATUS_KEY = "uwsgi_ws.geventws.status"
_OFFER_HEADERS = {"extensions": "HTTP_SEC_WEBSOCKET_EXTENSIONS", "protocol": "HTTP_SEC_WEBSOCKET_PROTOCOL"}

log = logging.getLogger("uwsgi_ws.geventws")


def _socket_of(environ: Dict[str, Any]) -> Optional[Any]:
    """gevent-websocket's request socket (a ``gevent.socket.socket``), or None."""
    ws = environ.get(KEY)
    handler = getattr(ws, "handler", None)
    sock = getattr(handler, "socket", None)
    return sock if sock is not None and hasattr(sock, "fileno") else None


def upgraded(environ: Dict[str, Any]) -> bool:
    """True when gevent-websocket's ``WebSocketHandler`` upgraded this request (its
    101 is sent) and its socket is there to take over. Non-blocking."""
    return "uwsgi.version" not in environ and _socket_of(environ) is not None


def prepare(environ: Dict[str, Any]) -> None:
    """Before the route negotiates: remove the client's permessage-deflate and
    subprotocol offers (gevent-websocket's 101 accepted neither), keeping them
    under `OFFERS_KEY`. Non-blocking; `environ` must be `upgraded`."""
    offers = {name: environ.pop(header) for name, header in _OFFER_HEADERS.items() if header in environ}
    environ[OFFERS_KEY] = offers


def take(environ: Dict[str, Any]) -> socket.socket:
    """The request's socket for the connection, without a 101 (gevent-websocket sent
    it): a new socket object on the same fd (detach it, never close it: pywsgi
    closes its own). gevent-websocket's ``WebSocket`` is marked closed, so that it
    sends no close frame after ours when the app returns.

    Raises:
        OSError: the socket is closed already (the client went away).
    """
    ws = environ[KEY]
    sock = socket.socket(fileno=_socket_of(environ).fileno())  # type: ignore[union-attr]
    ws.closed = True
    environ[_TAKEN_KEY] = True
    _arm_ctrl_c()
    return sock


_ctrl_c_armed = False


def _arm_ctrl_c() -> None:
    """Once, when Python's own SIGINT handler is in place: Ctrl-C closes the open
    connections with 1001 (`uwsgi_ws.devserver.close_all`) before KeyboardInterrupt
    reaches the main greenlet (where ``serve_forever`` runs). Python's handler would
    raise it in whatever greenlet runs at that instant, often a WebSocket handler,
    whose socket pywsgi then closes with no close frame. The close runs in a greenlet
    of gevent's signal watcher (``gevent.signal_handler``), a safe point."""
    global _ctrl_c_armed
    if _ctrl_c_armed or threading.current_thread() is not threading.main_thread():
        return
    _ctrl_c_armed = True
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:  # the app's own: left alone
        return
    import gevent

    def interrupted() -> None:
        from . import devserver

        devserver.close_all()
        gevent.get_hub().parent.throw(KeyboardInterrupt)

    gevent.signal_handler(signal.SIGINT, interrupted)


def close_code_for(status: Optional[int]) -> int:
    """The close code (RFC 6455 section 7.4.1) telling a client whose 101 was sent
    already that the app answered with HTTP `status` instead: 1013 "try again later"
    for 503, 1011 for any other 5xx or an unknown status, 1008 "policy violation"
    otherwise (401, 403, 404, 400...)."""
    if status == 503:
        return 1013
    if status is None or status >= 500:
        return 1011
    return 1008


def _record_status(sender: Flask, response: Response, **_: Any) -> None:
    """``request_finished``: keep the view's status (an adopted route's is the
    upgrade's response object, whose answer, if any, comes later)."""
    if upgraded(request.environ):
        request.environ[_STATUS_KEY] = response.status_code


def refuse(sender: Flask, **_: Any) -> None:
    """``request_tearing_down`` (after the WSGI response ran): when the app did not
    take gevent-websocket's upgraded request, close it with `close_code_for` the
    status and a reason naming it, and log why once. Blocks the calling greenlet
    while the close frame is written."""
    environ = request.environ
    if environ.get(_TAKEN_KEY) or not upgraded(environ):
        return
    ws = environ[KEY]
    if getattr(ws, "closed", True):
        return
    status = environ.get(_STATUS_KEY)
    if OFFERS_KEY in environ:  # a WebSocket route whose handler answered before its first use
        status = None
        reason = "the WebSocket handler answered with HTTP before using the connection"
    elif status is not None:
        reason = f"the app answered HTTP {status} instead of the WebSocket"
    else:
        reason = "the app did not serve this WebSocket"
    code = close_code_for(status)
    log.warning("%s %s: %s (gevent-websocket had sent the 101 already); closing with %d",
                environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", ""), reason, code)
    ws.closed = True  # its close() would send the reason as the code (it drops `code`, 0.10.1)
    try:
        _socket_of(environ).sendall(frames.encode(frames.OP_CLOSE, frames.close_payload(code, reason)))  # type: ignore[union-attr]
    except OSError:  # the client is gone
        pass


_signals_connected = False


def arm() -> None:
    """Connect `refuse` (and the status it needs) to Flask's signals, once per process:
    called by the extension's WSGI wrapper at the first request gevent-websocket
    upgraded, so that no other server's requests pay for the two signal handlers."""
    global _signals_connected
    if not _signals_connected:
        _signals_connected = True
        try:
            request_finished.connect(_record_status)
            request_tearing_down.connect(refuse)
        except RuntimeError:  # Flask < 2.3 without blinker: its signals cannot be connected
            log.warning("Flask's signals need the blinker package (pip install blinker): without it a request "
                        "gevent-websocket upgraded that the app answers with HTTP gets gevent-websocket's bare "
                        "close instead of a close code naming the status")
