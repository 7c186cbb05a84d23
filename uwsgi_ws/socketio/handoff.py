"""Engine.IO sessions across uWSGI workers without sticky routing: a request for
a session another worker owns is handed to that worker, client socket and all.

uWSGI gives each request to whichever worker accepts it; an Engine.IO session
(its packet queue, its Socket.IO rooms and handlers) lives in the worker that
answered the client's first request. Session ids name that worker
(``<worker id>.<random>``, `engine.EngineServer.generate_id`). When a polling
GET/POST or the WebSocket upgrade of a session reaches another worker, that
worker sends the owner, over the owner's Unix socket, a description of the
request (method, query, headers, the body it already read) **and the client's
file descriptor** (SCM_RIGHTS). The owner answers on that descriptor itself:
an HTTP response (``Connection: close``) for polling, or the 101 and then the
whole WebSocket session on our protocol engine. The forwarding worker returns
without calling ``start_response`` (uWSGI then writes nothing) and closes only
its own copy of the descriptor, so its request slot is free at once, even
for a 25-second long poll.

Wire format on the owner's socket, one request per stream connection:

    u32 big-endian length | JSON meta (UTF-8)          sent with the fd (SCM_RIGHTS)
    body (meta["length"] bytes)
    <- b"k"                                             the owner holds the fd

meta: ``kind`` ("http" or "websocket"), ``method``, ``path``, ``query``,
``protocol``, ``headers`` (WSGI ``HTTP_*``, ``CONTENT_TYPE``, ``CONTENT_LENGTH``),
``remote_addr``, ``remote_port``, ``scheme``, ``server_name``, ``server_port``.

Address: the abstract Unix socket ``\\0uwsgi_ws-socketio-<master pid>-<worker id>``
(abstract: nothing on disk, gone with the process; a respawned worker binds
it again).
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import struct
from typing import Any, Callable, Dict, Optional, Tuple

log = logging.getLogger("uwsgi_ws.socketio.handoff")

_LEN = struct.Struct(">I")
_MAX_META = 256 * 1024
_ENVIRON_KEYS = ("CONTENT_TYPE", "CONTENT_LENGTH")
#: Seconds a forwarding worker waits for the owner to take a request.
HANDOFF_TIMEOUT = 5.0

Serve = Callable[[Dict[str, Any], socket.socket], None]


def address(masterpid: int, worker: int) -> str:
    """The abstract socket name of `worker`'s hand-off listener."""
    return f"\0uwsgi_ws-socketio-{masterpid}-{worker}"


def describe(environ: Dict[str, Any], kind: str, body: bytes) -> Dict[str, Any]:
    """The meta of a request to hand off (see the module docstring)."""
    return {
        "kind": kind,
        "method": environ.get("REQUEST_METHOD", "GET"),
        "path": environ.get("PATH_INFO", "/"),
        "script_name": environ.get("SCRIPT_NAME", ""),
        "query": environ.get("QUERY_STRING", ""),
        "protocol": environ.get("SERVER_PROTOCOL", "HTTP/1.1"),
        "headers": {k: v for k, v in environ.items()
                    if isinstance(v, str) and (k.startswith("HTTP_") or k in _ENVIRON_KEYS)},
        "remote_addr": environ.get("REMOTE_ADDR", ""),
        "remote_port": str(environ.get("REMOTE_PORT", "")),
        "scheme": environ.get("wsgi.url_scheme", "http"),
        "server_name": environ.get("SERVER_NAME", "localhost"),
        "server_port": str(environ.get("SERVER_PORT", "")),
        "length": len(body),
    }


def environ_of(meta: Dict[str, Any], body: bytes) -> Dict[str, Any]:
    """A WSGI environ rebuilt from `meta` and `body` in the owner."""
    environ: Dict[str, Any] = dict(meta["headers"])
    environ.update({
        "REQUEST_METHOD": meta["method"],
        "SCRIPT_NAME": meta.get("script_name", ""),
        "PATH_INFO": meta["path"],
        "QUERY_STRING": meta["query"],
        "SERVER_PROTOCOL": meta["protocol"],
        "SERVER_NAME": meta["server_name"],
        "SERVER_PORT": meta["server_port"],
        "REMOTE_ADDR": meta["remote_addr"],
        "REMOTE_PORT": meta["remote_port"],
        "wsgi.url_scheme": meta["scheme"],
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": io.StringIO(),
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "uwsgi_ws.socketio.handed_off": True,
    })
    environ["CONTENT_LENGTH"] = str(len(body))
    return environ


def http_response(status: str, headers: Any, body: bytes, protocol: str = "HTTP/1.1") -> bytes:
    """The bytes of a complete HTTP response that closes the connection."""
    version = "HTTP/1.0" if protocol == "HTTP/1.0" else "HTTP/1.1"
    lines = [f"{version} {status}"]
    lines += [f"{k}: {v}" for k, v in headers if k.lower() not in ("content-length", "connection")]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


class Forwarder:
    """The sending side: hand a request and its client socket to the owner.

    `sockets` is the socket module of the worker's model (``socket``, or
    ``gevent.socket`` so a greenlet waits without blocking the worker).
    Blocks the calling thread/greenlet for at most HANDOFF_TIMEOUT seconds.
    """

    def __init__(self, sockets: Any, masterpid: int) -> None:
        self._sockets = sockets
        self._masterpid = masterpid

    def hand_off(self, worker: int, meta: Dict[str, Any], body: bytes, fd: int) -> bool:
        """Send the request to `worker`. Returns True once the owner holds the
        client's fd (the caller then returns without answering), False when the
        owner is not there (respawned, gone): the caller answers itself."""
        data = json.dumps(meta).encode("utf-8")
        link = self._sockets.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            link.settimeout(HANDOFF_TIMEOUT)
            link.connect(address(self._masterpid, worker))
            socket.send_fds(link, [_LEN.pack(len(data)) + data], [fd])
            if body:
                link.sendall(body)
            return bool(link.recv(1) == b"k")
        except OSError as exc:
            log.info("uwsgi_ws.socketio: worker %d did not take a request (%s)", worker, exc)
            return False
        finally:
            link.close()


class Listener:
    """The owning side: accepts handed-off requests and runs `serve(meta_and_environ, sock)`
    for each in its own task (`spawn`, the model's). `sock` is the client's socket
    (blocking, or gevent-cooperative); `serve` owns it and must close it."""

    def __init__(self, sockets: Any, spawn: Callable[..., Any], masterpid: int, worker: int, serve: Serve) -> None:
        self._sockets = sockets
        self._spawn = spawn
        self._serve = serve
        self.address = address(masterpid, worker)
        self._server = sockets.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.address)  # OSError (EADDRINUSE) if a predecessor still holds it
        self._server.listen(128)
        spawn(self._accept_loop)

    def _accept_loop(self) -> None:
        while True:
            try:
                link, _ = self._server.accept()
            except OSError as exc:  # pragma: no cover - EMFILE and the like
                log.error("uwsgi_ws.socketio: hand-off accept failed: %s", exc)
                continue
            self._spawn(self._take, link)

    def _take(self, link: Any) -> None:
        try:
            received = self._receive(link)
        except (OSError, ValueError) as exc:
            log.error("uwsgi_ws.socketio: a bad hand-off request: %s", exc)
            link.close()
            return
        link.close()
        if received is None:
            return
        meta, body, fd = received
        client = socket.socket(fileno=fd)
        if self._sockets is not socket:
            client = self._sockets.socket(fileno=client.detach())
        try:
            self._serve({"meta": meta, "environ": environ_of(meta, body)}, client)
        except Exception:
            log.exception("uwsgi_ws.socketio: serving a handed-off request failed")
            try:
                client.close()
            except OSError:
                pass

    def _receive(self, link: Any) -> Optional[Tuple[Dict[str, Any], bytes, int]]:
        link.settimeout(HANDOFF_TIMEOUT)
        msg, fds, _, _ = socket.recv_fds(link, 65536, 1)
        if not fds:
            raise ValueError("no file descriptor came with the request")
        fd = fds[0]
        for extra in fds[1:]:
            os.close(extra)
        try:
            return self._read_request(link, msg, fd)
        except BaseException:
            os.close(fd)  # a bad request: the client's socket is closed, not leaked
            raise

    def _read_request(self, link: Any, msg: bytes, fd: int) -> Tuple[Dict[str, Any], bytes, int]:
        buf = bytearray(msg)
        while len(buf) < _LEN.size:
            chunk = link.recv(65536)
            if not chunk:
                raise ValueError("truncated request")
            buf += chunk
        (size,) = _LEN.unpack_from(buf)
        if size > _MAX_META:
            raise ValueError(f"request meta of {size} bytes")
        while len(buf) < _LEN.size + size:
            chunk = link.recv(65536)
            if not chunk:
                raise ValueError("truncated request")
            buf += chunk
        meta = json.loads(bytes(buf[_LEN.size:_LEN.size + size]))
        body = bytearray(buf[_LEN.size + size:])
        while len(body) < meta["length"]:
            chunk = link.recv(65536)
            if not chunk:
                raise ValueError("truncated body")
            body += chunk
        link.sendall(b"k")
        return meta, bytes(body), fd
