"""Peer: the frame-once prototype (issue 11), the floor for uwsgi_ws.

A raw WSGI app under ``uwsgi --gevent``, one worker, no Flask. ``GET /ws``
answers the 101 itself (``start_response`` + an empty ``write`` make uWSGI
send the headers), takes the connection's fd (``uwsgi.connection_fd()``) and
keeps it in a table. ``POST /publish`` frames the body once (one unmasked
text frame, RFC 6455 section 5.2) and ``os.write``s that one buffer to every
fd; a write that does not take the whole frame (``EAGAIN`` or a short count)
hands the rest to that connection's own greenlet, which writes it when the
socket is writable, and every later frame for that connection is appended to
its pending bytes until they are gone (no reordering).

Each connection's request greenlet is its only task: it sleeps on one libev
watcher (read, plus write while output is pending), answers a close or a ping
from the client and returns when the peer closes. So the prototype pays the
same uWSGI HTTP cost per publish as uwsgi_ws (``--http-socket``: one TCP
connection per POST) and the same kernel ``send()`` per delivery; the
distance to it is what uwsgi_ws's own layers cost.

Run: ``uwsgi --master --http-socket 127.0.0.1:PORT --processes 1 --gevent N
--wsgi-file prototype_server.py``
"""
from __future__ import annotations

import base64
import errno
import hashlib
import os
import socket
import struct
from typing import Any, Callable, Dict, Iterable, List

import gevent
import gevent.event
import uwsgi

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
READ, WRITE = 1, 2  # libev EV_READ, EV_WRITE


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked final frame (server to client, RFC 6455 section 5.2)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


class Conn:
    """One upgraded connection: its fd, the bytes not yet written, its wake-up."""

    __slots__ = ("fd", "pending", "event", "closed")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pending = bytearray()
        self.event = gevent.event.Event()
        self.closed = False

    def send(self, data: bytes) -> None:
        """Write now if nothing is pending; else (or for the rest) queue for the greenlet."""
        if self.closed:
            return
        if self.pending:
            self.pending += data
            return
        try:
            n = os.write(self.fd, data)
        except BlockingIOError:
            n = 0
        except OSError:
            self.closed = True
            self.event.set()
            return
        if n < len(data):
            self.pending += data[n:]
            self.event.set()

    def flush(self) -> bool:
        """Write what is pending; True when it is all gone."""
        while self.pending:
            try:
                n = os.write(self.fd, self.pending)
            except BlockingIOError:
                return False
            del self.pending[:n]
        return True


conns: Dict[int, Conn] = {}


def parse(buf: bytearray, conn: Conn) -> bool:
    """Consume complete client frames from ``buf``; False once a close arrived."""
    while len(buf) >= 2:
        b0, b1 = buf[0], buf[1]
        length, pos = b1 & 0x7F, 2
        if length == 126:
            if len(buf) < 4:
                return True
            length, pos = struct.unpack_from("!H", buf, 2)[0], 4
        elif length == 127:
            if len(buf) < 10:
                return True
            length, pos = struct.unpack_from("!Q", buf, 2)[0], 10
        mask_end = pos + 4 if b1 & 0x80 else pos
        if len(buf) < mask_end + length:
            return True
        mask = buf[pos:mask_end]
        payload = bytes(buf[mask_end:mask_end + length])
        if mask:
            payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
        del buf[:mask_end + length]
        opcode = b0 & 0x0F
        if opcode == 0x8:  # close: echo its code, then stop
            conn.send(frame(0x8, payload[:2]))
            return False
        if opcode == 0x9:  # ping -> pong
            conn.send(frame(0xA, payload))
    return True


def websocket(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
    key = environ["HTTP_SEC_WEBSOCKET_KEY"].strip().encode()
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
    write = start_response("101 Switching Protocols", [
        ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", accept)])
    write(b"")  # uWSGI sends the headers now; the fd is ours from here on
    fd = uwsgi.connection_fd()
    os.set_blocking(fd, False)
    sock = socket.socket(fileno=fd)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.detach()  # uWSGI closes the fd when the request ends
    conn = Conn(fd)
    loop = gevent.get_hub().loop
    reader, writer = loop.io(fd, READ), loop.io(fd, WRITE)
    readable = [False]

    def on_read() -> None:
        readable[0] = True
        conn.event.set()

    reader.start(on_read)
    conns[fd] = conn
    buf = bytearray()
    try:
        while not conn.closed:
            conn.event.wait()
            conn.event.clear()
            if readable[0]:
                readable[0] = False
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    data = None
                except OSError:
                    break
                if data == b"":
                    break
                if data:
                    buf += data
                    if not parse(buf, conn):
                        conn.closed = True
            if conn.pending:
                try:
                    done = conn.flush()
                except OSError:
                    break
                if done:
                    writer.stop()
                elif not writer.active:
                    writer.start(conn.event.set)
        if conn.closed and conn.pending:  # let the close frame out (best effort)
            try:
                conn.flush()
            except OSError:
                pass
    except OSError as exc:
        if exc.errno not in (errno.ECONNRESET, errno.EPIPE):
            raise
    finally:
        conn.closed = True
        conns.pop(fd, None)
        reader.stop()
        writer.stop()
    return []


def application(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/ws" and "HTTP_SEC_WEBSOCKET_KEY" in environ:
        return websocket(environ, start_response)
    if path == "/publish" and environ["REQUEST_METHOD"] == "POST":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        data = frame(0x1, environ["wsgi.input"].read(length))  # framed once
        for conn in list(conns.values()):
            conn.send(data)
        start_response("204 No Content", [])
        return []
    start_response("404 Not Found", [("Content-Length", "0")])
    return []
