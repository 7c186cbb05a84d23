"""uWSGI's ``--http`` router in front of WebSocket routes (issue 18, new-user findings).

Without ``--http-websockets`` the router (plugins/http/http.c, uWSGI 2.0) forwards
the worker's 101 to the client but then drops every byte the client sends (a
request without a body that was not switched to raw mode): each WebSocket opened
and hung in silence. Now the handshake is answered at once with HTTP 501 and the
fix, the fix is logged at start and once per worker at the handshake; with
``--http-websockets`` the echo works through the router. Real uWSGI, threads and
gevent, a real client on a raw socket (the refusal) and websocket-client (the echo).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Tuple

import pytest
import websocket

from uwsgi_ws import startup

from harness import MODELS, UWSGI

REQUEST = (b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def router(tmp_path, model: str, *extra: str) -> UWSGI:
    """echo_app behind the http router (the router's port is the one waited for), 2 workers."""
    server = UWSGI(["--master", "--http", "127.0.0.1:{port}", "--module", "echo_app:app", "--need-app",
                    "--die-on-term", *MODELS[model], *extra], tmp_path)
    server.wait_for_log(r"spawned uWSGI worker 2 ")  # the workers' uwsgi socket is bound before the fork
    return server


def handshake(port: int) -> Tuple[int, bytes]:
    """(status, body) of a WebSocket handshake answered with plain HTTP; a 101 (the hang
    this test is about) returns (101, b"") at once; a silent server fails the test."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(REQUEST)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"the router closed without an answer: {data!r}"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split()[1])
        if status == 101:
            return status, b""
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(body) < length:
            chunk = sock.recv(65536)
            assert chunk, body
            body += chunk
        return status, body


@pytest.mark.parametrize("model", ["threads", "gevent"])
def test_without_http_websockets_the_handshake_is_refused_at_once(tmp_path, model):
    server = router(tmp_path, model)
    try:
        server.wait_for_log(r"Add `http-websockets: true` next to `http:`")  # said at start
        answers = [handshake(server.port) for _ in range(6)]
        for status, body in answers:
            assert status == 501, (status, body, server.log())
            assert b"http-websockets: true" in body and b"next to `http:`" in body, body
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(server.url + "/echo", timeout=20)
        assert refused.value.status_code == 501
        log = server.log()
        said = log.count("a WebSocket handshake came through the http router and was refused (501)")
        assert 1 <= said <= 2, log  # once per worker (2 workers), not once per handshake
    finally:
        server.stop()
    assert not server.crashes(), server.log()


@pytest.mark.parametrize("model", ["threads", "gevent"])
def test_with_http_websockets_the_echo_works_through_the_router(tmp_path, model):
    server = router(tmp_path, model, "--http-websockets")
    try:
        conns = [websocket.create_connection(server.url + "/echo", timeout=20) for _ in range(3)]
        for i, conn in enumerate(conns):
            conn.send(f"through the router {i}")
        for i, conn in enumerate(conns):
            assert conn.recv() == f"through the router {i}"
        conns[0].send_binary(b"\x00\xff" * 5000)
        assert conns[0].recv() == b"\x00\xff" * 5000
        for conn in conns:
            conn.close()
        log = server.log()
        assert startup.ROUTER_WITHOUT_WEBSOCKETS not in log, log
        assert "refused (501)" not in log, log
    finally:
        server.stop()
    assert not server.crashes(), server.log()


# -- what the docs and the shipped configs say about the router ----------------------------------

ROOT = Path(__file__).resolve().parent.parent
BASE_CONFIGS = sorted(p for p in (ROOT / "uwsgi_ws" / "conf").iterdir()
                      if p.stem in ("threads", "gevent", "async") and p.suffix in (".yaml", ".ini"))


def test_the_migration_guide_asks_for_http_websockets_behind_the_router():
    text = (ROOT / "docs" / "migration.md").read_text()
    assert "No `--http-websockets`" not in text
    assert "--http-websockets" in text and "501" in text


@pytest.mark.parametrize("path", BASE_CONFIGS, ids=lambda p: p.name)
def test_the_base_configs_state_the_measured_router_cost(path):
    text = path.read_text()
    assert "88 ms" not in text, path  # re-measured by bench/http_router.py: +0.17 ms (docs/deployment.md)
    assert "+0.17 ms" in text and "bench/http_router.py" in text, path
    assert "http-websockets" in text, path
