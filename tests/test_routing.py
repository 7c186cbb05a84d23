"""Flask routing for WebSocket routes: URL variables, blueprints, url_for, and
what plain HTTP and bad handshakes get."""

from __future__ import annotations

import json
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


def test_server_still_echoes_after_bad_handshakes(server):
    ws = ws_connect(server, "/echo")
    try:
        ws.send("still here")
        assert ws.recv() == "still here"
    finally:
        ws.close()
