"""Each seed library's own example runs on uwsgi_ws with only its import line
changed (issue 18 item 5), under real uWSGI, threads and gevent.

The apps are tests/apps/seed_*.py: Flask-uWSGI-WebSocket (WebSocket, receive,
recv_nb, ws.id, timeout=), Flask-Sockets (Sockets, a plain Blueprint registered
with sockets.register_blueprint, `while not ws.closed`), flask-websockets
(WebSockets, subscribe/publish with lists of channels from a thread started at
import, iter_data, send_bytes, close(reason=, message=), app.run at module level),
and flask-sock (Sock, bp=, receive(timeout=)), which users compare us with too.
"""

from __future__ import annotations

import re

import pytest
import websocket

from harness import serve
from wsraw import RawWebSocket

# As conf/broadcast.* ships: --py-call-osafterfork, so that a worker's exit does not wait for
# its copy of the master's publisher thread (flask-websockets' non-daemon thread started at import).
EXTRA = ["--sharedarea", "4096", "--mule=uwsgi_ws.mule:run", "--py-call-osafterfork"]


@pytest.fixture(params=["threads", "gevent"])
def model(request):
    return request.param


def start(tmp_path, model, app):
    server = serve(app, tmp_path, model=model, extra=EXTRA)
    server.wait_for_port()
    return server


def test_flask_uwsgi_websocket_example(tmp_path, model):
    with start(tmp_path, model, "seed_flask_uwsgi_websocket:app") as server:
        conn = websocket.create_connection(server.url + "/echo", timeout=5)
        try:
            conn.send("hello")
            assert conn.recv() == "hello"
            conn.send_binary(b"\x00\x01")
            assert conn.recv() == b"\x00\x01"
        finally:
            conn.close()
        ids = []
        for _ in range(3):
            conn = websocket.create_connection(server.url + "/id", timeout=5)
            try:
                ids.append(conn.recv())
                assert conn.recv() == "timeout"  # receive() returned None after timeout=1
            finally:
                conn.close()
        assert len(set(ids)) == 3 and all(re.fullmatch(r"\d+-\d+", i) for i in ids), ids


def test_flask_sockets_blueprint_example(tmp_path, model):
    with start(tmp_path, model, "seed_flask_sockets:app") as server:
        conn = websocket.create_connection(server.url + "/echo", timeout=5)
        try:
            conn.send("through a plain blueprint")
            assert conn.recv() == "through a plain blueprint"
        finally:
            conn.close()
        import urllib.request

        with urllib.request.urlopen(server.url.replace("ws://", "http://") + "/", timeout=5) as answer:
            assert answer.read() == b"Hello World!"
        assert not re.search(r"Traceback", server.log()), server.log()


def test_flask_websockets_example(tmp_path, model):
    with start(tmp_path, model, "seed_flask_websockets:app") as server:
        clients = [websocket.create_connection(server.url + "/ws", timeout=10) for _ in range(4)]
        try:
            for conn in clients:  # the thread started at import publishes every second
                first, second = float(conn.recv()), float(conn.recv())
                assert 0.5 < second - first < 3
        finally:
            for conn in clients:
                conn.close()
        with RawWebSocket(server.port, "/echo") as raw:
            raw.send_text("text")
            frame = raw.recv_frame()
            assert (frame.opcode, frame.payload) == (2, b"text")  # send_bytes: the text's UTF-8 bytes, binary
            raw.send_text("bye")
            close = raw.expect_close()
            assert (close.close_code, close.close_reason) == (1000, "bye")  # close(reason=1000, message="bye")
        log = server.log()
        assert "app.run() was called while uWSGI imports the app" in log
        assert "PublishError" not in log and "Traceback" not in log, log


def test_flask_sock_example(tmp_path, model):
    with start(tmp_path, model, "seed_flask_sock:app") as server:
        conn = websocket.create_connection(server.url + "/echo", timeout=5)
        try:
            conn.send("hi")
            assert conn.recv() == "hi"
        finally:
            conn.close()
        conn = websocket.create_connection(server.url + "/bp/reverse", timeout=5)
        try:
            conn.send("abc")
            assert conn.recv() == "cba"
        finally:
            conn.close()
        with RawWebSocket(server.port, "/echo") as raw:
            raw.send_text("close")
            close = raw.expect_close()
            assert (close.close_code, close.close_reason) == (1000, "bye")
