"""Flask-Sockets' README example run as the README runs it, ``python app.py`` (gevent's
pywsgi server with gevent-websocket's ``WebSocketHandler``), with only the import changed
to ``from uwsgi_ws import Sockets`` (tests/apps/seed_flask_sockets_pywsgi.py).

gevent-websocket sends the 101 itself before it calls the app; uwsgi_ws/geventws.py takes
the request's socket over (no second 101, nothing negotiated), runs the connection on the
gevent runtime (uwsgi_ws.runtime.detect: a pywsgi greenlet) and the in-process broadcast.

The server is a real ``python app.py`` subprocess on a free port (a copy of the app with the
port put in place of 5000 and a /publish probe route added before its __main__ block),
stopped by its pid; the clients are websocket-client over TCP. Before uwsgi_ws/geventws.py
the client got the 101, then an empty close frame, and nothing was logged (the route
answered 501 "needs uWSGI" into gevent-websocket's dummy start_response)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Iterator

import pytest
import requests
import websocket

from harness import APPS, ScriptServer, free_port, wait_for

pytest.importorskip("geventwebsocket", reason="gevent-websocket (the test extra) is not installed")

PROBE = '''
from flask import request as _request


@app.route('/publish')
def _publish():
    return str(sockets.publish(_request.args['text']))


'''


def hello_world(server: ScriptServer) -> bool:
    """GET / answers the README's "Hello World!"."""
    try:
        return requests.get(server.http + "/", timeout=5).text == "Hello World!"
    except requests.RequestException:
        return False


class PywsgiApp(ScriptServer):
    """``python app.py`` in `where`, its output in ``where/python-app.py-<port>.log``."""

    def __init__(self, where: Path) -> None:
        port = free_port()
        source = (APPS / "seed_flask_sockets_pywsgi.py").read_text()
        assert source.count("('', 5000)") == 1 and source.count('if __name__ == "__main__":') == 1
        source = source.replace("('', 5000)", f"('127.0.0.1', {port})")
        source = source.replace('if __name__ == "__main__":', PROBE + 'if __name__ == "__main__":')
        (where / "app.py").write_text(source)
        super().__init__([sys.executable, "app.py"], where, where, ready=hello_world, port=port, name="python app.py")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PywsgiApp]:
    server = PywsgiApp(tmp_path_factory.mktemp("pywsgi"))
    try:
        yield server
    finally:
        log = server.log()
        server.stop()
    assert "Traceback" not in log, log


def close_frame(conn: websocket.WebSocket) -> tuple:
    """The next frame, which must be a close frame: (code, reason)."""
    opcode, frame = conn.recv_data_frame(True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE, (opcode, frame.data)
    return int.from_bytes(frame.data[:2], "big"), frame.data[2:].decode("utf-8")


def test_two_connections_echo_at_once_and_get_a_broadcast(app: PywsgiApp) -> None:
    """`a` waits in receive() while `b` upgrades and echoes: one greenlet each, the hub
    free (a threads runtime in the pywsgi greenlet would block it: b's handshake hangs).
    A publish from a view reaches both (the in-process broadcast); a client's close
    gets 1000 back."""
    a = websocket.create_connection(app.url + "/echo", timeout=10)
    b = websocket.create_connection(app.url + "/echo", timeout=10)
    assert a.getheaders().get("sec-websocket-extensions") is None  # gevent-websocket's 101: nothing negotiated
    b.send("from b")
    assert b.recv() == "from b"
    a.send("from a")
    b.send_binary(b"\x00\xffb")
    assert a.recv() == "from a"
    assert b.recv() == b"\x00\xffb"
    assert int(requests.get(app.http + "/publish", params={"text": "to all"}, timeout=5).text) > 0
    assert a.recv() == "to all"
    assert b.recv() == "to all"
    for conn in (a, b):
        conn.send_close(1000, b"bye")
        assert close_frame(conn)[0] == 1000
        conn.shutdown()


def test_compression_and_subprotocol_offers_are_not_negotiated(app: PywsgiApp) -> None:
    """The client offers permessage-deflate and a subprotocol; gevent-websocket's 101
    accepted neither, so the route must not compress (an RSV1 frame would fail the
    client) and echoes plain frames."""
    conn = websocket.create_connection(app.url + "/echo", timeout=10,
                                       header=["Sec-WebSocket-Extensions: permessage-deflate"])
    assert conn.getheaders().get("sec-websocket-extensions") is None
    conn.send("x" * 4096)  # over any compression threshold
    opcode, frame = conn.recv_data_frame(True)
    assert (opcode, frame.rsv1, frame.data) == (websocket.ABNF.OPCODE_TEXT, 0, b"x" * 4096)
    conn.close()


def test_a_request_the_app_answers_with_http_gets_a_close_code(app: PywsgiApp) -> None:
    """gevent-websocket upgrades any request with Upgrade: websocket, also to a plain
    route: the client has its 101, so the app's HTTP answer (here 400, `/` is no
    WebSocket route) becomes close 1008 with a reason naming it, and a log line."""
    conn = websocket.create_connection(app.url + "/", timeout=10)
    code, reason = close_frame(conn)
    assert code == 1008 and "HTTP 400" in reason, reason
    conn.shutdown()
    wait_for(lambda: "GET /: the app answered HTTP 400" in app.log(), 10, "the warning in the log")


def test_ctrl_c_closes_open_websockets_with_1001(tmp_path: Path) -> None:
    """Ctrl-C on ``python app.py`` (KeyboardInterrupt in gevent's main greenlet): the open
    WebSocket gets close 1001 (going away) at the interpreter's exit
    (uwsgi_ws.devserver.close_all), not a socket dropped without a close frame."""
    server = PywsgiApp(tmp_path)
    try:
        conn = websocket.create_connection(server.url + "/echo", timeout=30)
        conn.send("before")
        assert conn.recv() == "before"
        server.proc.send_signal(signal.SIGINT)
        opcode, frame = conn.recv_data_frame(True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE
        assert (int.from_bytes(frame.data[:2], "big"), frame.data[2:]) == (1001, b"server shutting down")
        conn.shutdown()
        server.proc.wait(30)
    finally:
        server.stop()
