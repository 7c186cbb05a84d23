"""Flask routing for WebSocket routes: URL variables, blueprints, url_for, and
what plain HTTP and bad handshakes get."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest
import websocket

from wsraw import http_request, upgrade_request

APP = "echo_app:app"
MODELS = ["threads", "gevent", "async"]


def ws_connect(server, path):
    return websocket.create_connection(server.url + path, timeout=5)


def test_url_variables(server):
    ws = ws_connect(server, "/rooms/kitchen")
    try:
        assert ws.recv() == "room:kitchen"
        ws.send("hello")
        assert ws.recv() == "kitchen:hello"
    finally:
        ws.close()


def test_url_variable_percent_encoded(server):
    ws = ws_connect(server, "/rooms/caf%C3%A9%20bar")
    try:
        assert ws.recv() == "room:café bar"
    finally:
        ws.close()


def test_blueprint_route_with_url_prefix(server):
    ws = ws_connect(server, "/x/bp-echo")
    try:
        assert ws.recv() == "bp:bp:bp.bp_echo"
        ws.send("through the blueprint")
        assert ws.recv() == "through the blueprint"
    finally:
        ws.close()
    # the rule lives under the prefix only
    with pytest.raises(websocket.WebSocketBadStatusException) as exc:
        ws_connect(server, "/bp-echo")
    assert exc.value.status_code == 404


def test_url_for_websocket_endpoints(server):
    ws = ws_connect(server, "/urls")
    try:
        urls = json.loads(ws.recv())
    finally:
        ws.close()
    # Werkzeug always builds websocket rules as full ws:// URLs (browsers need them).
    base = f"ws://127.0.0.1:{server.port}"
    assert urls["echo"] == base + "/echo"
    assert urls["room"] == base + "/rooms/a%20b"
    assert urls["room_external"] == base + "/rooms/blue"
    assert urls["bp"] == base + "/x/bp-echo"
    assert urls["self"] == base + "/urls"
    assert urls["http_view"] == "/login"
    # and the same from an HTTP view (what a page's template would do)
    from_http = json.loads(urllib.request.urlopen(server.http + "/urls", timeout=5).read())
    assert from_http == {"echo": base + "/echo", "bp": base + "/x/bp-echo"}


def test_plain_get_on_websocket_route_is_400_with_a_helpful_body(server):
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(server.http + "/echo", timeout=5)
    assert exc.value.code == 400
    body = exc.value.read().decode()
    assert "WebSocket" in body and "Upgrade: websocket" in body


def test_http_view_on_the_same_rule_answers_plain_gets(server):
    assert urllib.request.urlopen(server.http + "/both", timeout=5).read() == b"plain http view"
    ws = ws_connect(server, "/both")
    try:
        assert ws.recv() == "websocket handler"
    finally:
        ws.close()


def test_upgrade_on_http_only_route_is_400(server):
    status, _, body = http_request(server.port, upgrade_request("/login", server.port))
    assert status == 400
    assert b"not a WebSocket endpoint" in body


def test_unknown_path_is_404(server):
    with pytest.raises(websocket.WebSocketBadStatusException) as exc:
        ws_connect(server, "/nowhere")
    assert exc.value.status_code == 404


def test_version_8_gets_426_with_version_13(server):
    status, headers, body = http_request(server.port, upgrade_request("/echo", server.port, version="8"))
    assert status == 426
    assert headers.get("sec-websocket-version") == "13"
    assert b"13" in body


@pytest.mark.parametrize("key", ["abc", "", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "not base64!!!!!!!!!!!=="])
def test_bad_key_is_400(server, key):
    status, _, body = http_request(server.port, upgrade_request("/echo", server.port, key=key))
    assert status == 400
    assert b"Sec-WebSocket-Key" in body


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_non_get_upgrade_is_refused(server, method):
    raw = upgrade_request("/echo", server.port, method=method, extra="Content-Length: 0\r\n")
    status, headers, _ = http_request(server.port, raw)
    assert status in (400, 405)
    if status == 405:
        assert "GET" in headers.get("allow", "")


def test_missing_connection_upgrade_is_400(server):
    raw = (f"GET /echo HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    status, _, _ = http_request(server.port, raw)
    assert status == 400


def upgrade_head(server, path, headers):
    """Send a handshake with exactly `headers`; the response head (the socket is then closed)."""
    raw = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n{headers}\r\n".encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(raw)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            assert chunk, head
            head += chunk
    return head.split(b"\r\n\r\n")[0].decode("latin-1")


def test_browser_style_upgrade_headers(server):
    # Firefox sends "Connection: keep-alive, Upgrade"; header values are case-insensitive.
    head = upgrade_head(server, "/echo", (
        "Upgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Origin: http://127.0.0.1:{server.port}\r\n"))
    assert head.startswith("HTTP/1.1 101"), head
    assert "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head  # the RFC 6455 example key's accept value


@pytest.mark.parametrize(
    "offered, chosen",
    [("v1.chat", "v1.chat"), ("v1.chat, v2.chat", "v1.chat"), ("other, v2.chat", "v2.chat"), (None, None)],
)
def test_subprotocol_negotiation(server, offered, chosen):
    options = {"subprotocols": [p.strip() for p in offered.split(",")]} if offered else {}
    ws = websocket.create_connection(server.url + "/proto", timeout=5, **options)
    try:
        assert ws.recv() == repr(chosen)
        assert ws.getsubprotocol() == chosen
    finally:
        ws.close()


def test_no_common_subprotocol_means_no_header(server):
    head = upgrade_head(server, "/proto", (
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: other, v3.chat\r\n"))
    assert head.startswith("HTTP/1.1 101"), head
    assert "sec-websocket-protocol" not in head.lower()


def test_server_still_echoes_after_bad_handshakes(server):
    ws = ws_connect(server, "/echo")
    try:
        ws.send("still here")
        assert ws.recv() == "still here"
    finally:
        ws.close()
