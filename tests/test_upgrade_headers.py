"""Headers on the 101 (issue 12, item 7), on real uWSGI (threads, gevent): the headers
`after_request` added and the session cookie changed in `before_request` reach the
client on the 101 (browsers accept Set-Cookie there), and the cookie is the real
session (a second connection with it sees the count go on). Hop-by-hop headers
(RFC 9110 section 7.6.1), the handshake's own (RFC 6455 section 4.2.2) and a body's
never do: one Upgrade, one Connection, the right Sec-WebSocket-Accept, and a real
client (websocket-client) still completes the handshake."""

from __future__ import annotations

import base64
import hashlib
import os
import socket

import websocket

APP = "upgrade_headers_app:app"
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def handshake(server, path: str, cookie: str = ""):
    """A raw handshake: (status line, [(name, value)] in order, the socket). Caller closes."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}", "Upgrade: websocket",
             "Connection: Upgrade", "Sec-WebSocket-Version: 13", f"Sec-WebSocket-Key: {key}"]
    if cookie:
        lines.append(f"Cookie: {cookie}")
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = [(n.strip(), v.strip()) for n, _, v in (line.partition(":") for line in head[1:])]
    accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    return head[0], headers, sock, accept


def values(headers, name: str) -> list:
    return [v for n, v in headers if n.lower() == name.lower()]


def cookie_pair(set_cookie: str) -> str:
    return set_cookie.split(";", 1)[0]


def test_after_request_headers_and_the_session_cookie_are_on_the_101(server):
    status, headers, sock, accept = handshake(server, "/ws?visit=1")
    sock.close()
    assert status.startswith("HTTP/1.1 101"), status
    assert values(headers, "X-Request-Id") == ["req-42"], headers
    assert values(headers, "Cache-Control") == ["no-store"], headers
    cookies = values(headers, "Set-Cookie")
    session = [c for c in cookies if c.startswith("session=")]
    assert len(session) == 1 and "HttpOnly" in session[0], cookies
    assert any(c.startswith("theme=dark") for c in cookies), cookies
    assert values(headers, "Sec-WebSocket-Accept") == [accept]
    assert values(headers, "Upgrade") == ["websocket"] and values(headers, "Connection") == ["Upgrade"]
    assert not values(headers, "Content-Type") and not values(headers, "Content-Length"), headers
    assert not values(headers, "Vary") or values(headers, "Vary") == ["Cookie"], headers

    # the cookie is the session the app saved: the next connection counts on from it
    ws = websocket.create_connection(server.url + "/ws?visit=1", timeout=5, cookie=cookie_pair(session[0]))
    try:
        assert ws.recv() == "visits:2"
        again = [c for c in values(list(ws.getheaders().items()), "set-cookie") if "session=" in c]
        assert again, ws.getheaders()
    finally:
        ws.close()


def test_no_set_cookie_for_the_session_when_it_did_not_change(server):
    status, headers, sock, _ = handshake(server, "/ws")
    sock.close()
    assert status.startswith("HTTP/1.1 101")
    assert not [c for c in values(headers, "Set-Cookie") if c.startswith("session=")], headers
    assert values(headers, "X-Request-Id") == ["req-42"]


def test_hop_by_hop_and_handshake_headers_from_the_app_never_reach_the_101(server):
    status, headers, sock, accept = handshake(server, "/ws?hostile=1&visit=1")
    try:
        assert status.startswith("HTTP/1.1 101"), status
        assert values(headers, "Sec-WebSocket-Accept") == [accept], headers
        assert values(headers, "Upgrade") == ["websocket"], headers
        assert values(headers, "Connection") == ["Upgrade"], headers
        for name in ("Keep-Alive", "Transfer-Encoding", "TE", "Trailer", "Content-Type", "Content-Length", "X-Hop"):
            assert not values(headers, name), (name, headers)
        assert values(headers, "X-Request-Id") == ["req-42"]
        assert [c for c in values(headers, "Set-Cookie") if c.startswith("session=")]
    finally:
        sock.close()
    # and a real client completes that handshake and talks
    ws = websocket.create_connection(server.url + "/ws?hostile=1", timeout=5)
    try:
        assert ws.recv() == "visits:None"
        ws.send("still a WebSocket")
        assert ws.recv() == "still a WebSocket"
    finally:
        ws.close()
