"""Each seed library's own example runs on uwsgi_ws with only its import line
changed (issue 18 §5), under real uWSGI, threads and gevent, served by uWSGI and
started as the page starts it (`python app.py`, which calls app.run).

The apps are tests/apps/seed_*.py; each says in its first comment what changed
(the import line only) and which extraction garbling of the page was repaired.
Page examples: Flask-uWSGI-WebSocket (its PyPI echo, the gevent echo, the chat
keyed by ``ws.id``), Flask-Sockets (``@sockets.route``, and a plain Blueprint
with ``sockets.register_blueprint``), Flask-WebSocket, flask-websockets (echo
with ``iter_data``/``send_bytes``; the server-time channel published by a thread
started at import, ``app.run`` at module level). Marked "not a page example":
the API beyond the examples (``ws.id``, ``timeout=``, ``recv_nb``, leaving
users under GeventWebSocket; flask-websockets' channel lists and
``close(reason=, message=)``), and flask-sock, which users compare us with.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import urllib.request
from pathlib import Path

import pytest
import websocket

from uwsgi_ws import startup

from harness import APPS, UWSGI, serve, two_echo_at_once, wait_for
from wsraw import RawWebSocket

# As conf/broadcast.* ships: --py-call-osafterfork, so that a worker's exit does not wait for
# its copy of the master's publisher thread (flask-websockets' non-daemon thread started at import).
EXTRA = ["--sharedarea", "4096", "--mule=uwsgi_ws.mule:run", "--py-call-osafterfork"]


@pytest.fixture(params=["threads", "gevent"])
def model(request):
    return request.param


def start(tmp_path, model, app, extra=()):
    server = serve(app, tmp_path, model=model, extra=[*EXTRA, *extra])
    server.wait_for_port()
    return server


def echo(server, path="/echo", text="hello"):
    conn = websocket.create_connection(server.url + path, timeout=10)
    try:
        conn.send(text)
        return conn.recv()
    finally:
        conn.close()


def get(server, path):
    with urllib.request.urlopen(server.http + path, timeout=10) as answer:
        return answer.read()


def quiet(server):
    """No traceback and no 1011 in the log (the handler ends quietly when its client leaves)."""
    log = server.log()
    assert not server.tracebacks(), log
    assert "internal error" not in log, log


# -- Flask-uWSGI-WebSocket ---------------------------------------------------------------------------


def test_flask_uwsgi_websocket_example(tmp_path, model):
    """The PyPI page's echo (`while True: msg = ws.receive(); ws.send(msg)`): the client
    leaving ends the handler without a traceback."""
    with start(tmp_path, model, "seed_flask_uwsgi_websocket:app") as server:
        assert echo(server) == "hello"
        conn = websocket.create_connection(server.url + "/echo", timeout=10)
        conn.send_binary(b"\x00\x01")
        assert conn.recv() == b"\x00\x01"
        conn.close()
        assert echo(server, text="again") == "again"
        quiet(server)


def test_flask_uwsgi_websocket_gevent_example(tmp_path, model):
    """GeventWebSocket's echo: receive() returns None when the client leaves, and the
    `ws.send(None)` that follows ends the handler quietly (no TypeError). Under a
    threads uWSGI it is served with threads and the start-up log says how to get gevent."""
    with start(tmp_path, model, "seed_flask_uwsgi_websocket_gevent:app") as server:
        for text in ("one", "two"):
            assert echo(server, text=text) == text
        log = server.log()
        mismatch = "GeventWebSocket is for uWSGI's gevent model but this instance runs the threads model"
        assert (mismatch in log) == (model == "threads"), log
        quiet(server)


def test_flask_uwsgi_websocket_api(tmp_path, model):
    """Not a page example: ws.id unique per connection, the `timeout` option makes
    receive() return None after 1 s, recv_nb()."""
    with start(tmp_path, model, "seed_flask_uwsgi_websocket_api:app") as server:
        assert echo(server) == "hello"
        ids = []
        for _ in range(3):
            conn = websocket.create_connection(server.url + "/id", timeout=10)
            try:
                ids.append(conn.recv())
                assert conn.recv() == "timeout"  # receive() returned None after timeout=1
            finally:
                conn.close()
        assert len(set(ids)) == 3 and all(re.fullmatch(r"\d+-\d+", i) for i in ids), ids


def users(server):
    return json.loads(get(server, "/users"))["users"]


def wait_users(server, count, what):
    try:
        wait_for(lambda: len(users(server)) == count, 10, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: users {users(server)}\n{server.log()}") from None


def test_flask_uwsgi_websocket_chat(tmp_path, model):
    """The chat keyed by ws.id: a user who leaves (close frame, or the TCP connection just
    dropped) is removed from `users` by the example's own `del users[ws.id]` (receive()
    returned None), and the others keep chatting: nobody gets 1011.

    The example mutates `users` while other handlers iterate it; under threads a join or a
    leave during someone's fan-out raises "dictionary changed size during iteration" (in
    Flask-uWSGI-WebSocket too: its chat is for gevent). So every join or leave here waits
    until no fan-out can be running: a sender's loop is known done once the sender has
    left and its entry is gone (its handler is sequential)."""
    # one worker: the example's `users` dict lives in one process
    with start(tmp_path, model, "seed_chat_probe:app", extra=["--processes", "1"]) as server:
        alice, bob, carol, dave = (websocket.create_connection(server.url + "/websocket", timeout=10)
                                   for _ in range(4))
        try:
            wait_users(server, 4, "four users")
            carol.close()  # a close frame
            wait_users(server, 3, "carol's entry removed")
            dave.sock.shutdown(socket.SHUT_RDWR)  # no close frame: the TCP connection ends
            dave.sock.close()
            wait_users(server, 2, "dave's entry removed")
            alice.send("hello")  # the others keep chatting
            assert bob.recv() == "hello"
            alice.close()
            wait_users(server, 1, "alice's entry removed (her fan-out done)")
            erin = websocket.create_connection(server.url + "/websocket", timeout=10)
            try:
                assert erin.recv() == "hello"  # the example's backlog
                erin.send("hi bob")
                assert bob.recv() == "hi bob"
            finally:
                erin.close()
            wait_users(server, 1, "erin's entry removed")
        finally:
            alice.close()
            bob.close()
        wait_users(server, 0, "every entry removed")
        quiet(server)


def test_flask_uwsgi_websocket_sending_to_a_user_who_left(tmp_path, model):
    """Not a page example: a handler that keeps a closed connection and sends to it (as the
    chat does in the moment a user leaves) is not failed: the send is dropped, as
    Flask-uWSGI-WebSocket's gevent client queued it; the left user's own handler ends quietly."""
    with start(tmp_path, model, "seed_flask_uwsgi_websocket_leave:app", extra=["--processes", "1"]) as server:
        stayer = websocket.create_connection(server.url + "/stay", timeout=10)
        stayer.recv()  # its id: the handler has kept it
        shouter = websocket.create_connection(server.url + "/shout", timeout=10)
        try:
            shouter.send("first")
            assert shouter.recv() == "sent closed=0"
            assert stayer.recv() == "first"
            stayer.close()

            def closed_one():
                shouter.send("to nobody")
                return shouter.recv() == "sent closed=1"

            wait_for(closed_one, 10, "the kept connection closed, the shouter still answered")
            shouter.send("again")
            assert shouter.recv() == "sent closed=1"
        finally:
            shouter.close()
        quiet(server)


# -- Flask-Sockets, Flask-WebSocket --------------------------------------------------------------


def test_flask_sockets_simple_example(tmp_path, model):
    """`@sockets.route` on the extension, `@app.route` next to it, `while not ws.closed`."""
    with start(tmp_path, model, "seed_flask_sockets_simple:app") as server:
        assert echo(server, text="on the extension") == "on the extension"
        assert get(server, "/") == b"Hello World!"
        quiet(server)


def test_flask_sockets_blueprint_example(tmp_path, model):
    """Routes on a plain Blueprint, served through `sockets.register_blueprint(ws, url_prefix=r'/')`."""
    with start(tmp_path, model, "seed_flask_sockets:app") as server:
        assert echo(server, text="through a plain blueprint") == "through a plain blueprint"
        assert get(server, "/") == b"Hello World!"
        quiet(server)


def test_flask_websocket_example(tmp_path, model):
    with start(tmp_path, model, "seed_flask_websocket:app") as server:
        assert echo(server, text="flask-websocket") == "flask-websocket"
        quiet(server)


# -- flask-websockets -------------------------------------------------------------------------------------


def server_time(server, clients=4):
    """`clients` subscribers each get the publisher thread's server time about every second."""
    conns = [websocket.create_connection(server.url + "/ws", timeout=10) for _ in range(clients)]
    try:
        for conn in conns:
            first, second = float(conn.recv()), float(conn.recv())
            assert 0.5 < second - first < 3
    finally:
        for conn in conns:
            conn.close()


def test_flask_websockets_channel_example(tmp_path, model):
    with start(tmp_path, model, "seed_flask_websockets:app") as server:
        server_time(server)
        log = server.log()
        assert "app.run() was called while uWSGI imports the app" in log
        assert "PublishError" not in log and "Traceback" not in log, log


def test_flask_websockets_echo_example(tmp_path, model):
    """`for data in ws.iter_data(): ws.send_bytes(data)`: text comes back as its UTF-8 bytes."""
    with start(tmp_path, model, "seed_flask_websockets_echo:app") as server:
        with RawWebSocket(server.port, "/ws") as raw:
            raw.send_text("text é")
            frame = raw.recv_frame()
            assert (frame.opcode, frame.payload) == (2, "text é".encode())
        quiet(server)


def test_flask_websockets_channel_lists_and_close(tmp_path, model):
    """Not a page example: subscribe(ws, ["a", "b", "a"]) and publish(data, ["a", "b", "b"]):
    each name counts once (flask-websockets takes set(channels)), a connection on both
    channels gets one copy per channel, as there; close(reason=1000, message="bye")."""
    with start(tmp_path, model, "seed_flask_websockets_api:app") as server:
        with RawWebSocket(server.port, "/sub") as raw:
            assert raw.recv_frame().payload == b"subscribed"

            def publish(data, channels):
                request = urllib.request.Request(f"{server.http}/publish/{channels}", data=data.encode(),
                                                 method="POST")
                with urllib.request.urlopen(request, timeout=30) as answer:
                    assert answer.read() == b"ok"

            publish("m1", "a,b,b")
            publish("end", "a")
            assert [raw.recv_frame().payload for _ in range(3)] == [b"m1", b"m1", b"end"]
            raw.send_text("bye")
            close = raw.expect_close()
            assert (close.close_code, close.close_reason) == (1000, "bye")
        quiet(server)


# -- flask-sock (users compare us with it) -------------------------------------------------------


def test_flask_sock_example(tmp_path, model):
    with start(tmp_path, model, "seed_flask_sock:app") as server:
        assert echo(server, text="hi") == "hi"
        assert echo(server, "/bp/reverse", "abc") == "cba"
        with RawWebSocket(server.port, "/echo") as raw:
            raw.send_text("close")
            close = raw.expect_close()
            assert (close.close_code, close.close_reason) == (1000, "bye")


# -- `python app.py`: the page's own way to start ------------------------------------------------------


#: The broadcast mule's line once it serves (uwsgi_ws.mule).
MULE_SERVES = r"broadcast mule \d+ serving ring"


def as_script(tmp_path: Path, name: str) -> Path:
    """The seed app `name` as app.py, its app.run(...) told the test's port (from $PORT)
    instead of the page's (5000, 6969): the one change the test makes."""
    source = (APPS / name).read_text()
    port = 'port=int(__import__("os").environ["PORT"])'
    call = re.compile(r"^(\s*app\.run\()(.*)\)$", re.M)  # the call on a line of its own, not in a comment

    def tell_port(match: re.Match) -> str:
        args = re.sub(r"port=\d+", port, match.group(2)) if "port=" in match.group(2) else \
            ", ".join(a for a in (port, match.group(2)) if a)
        return f"{match.group(1)}{args})"

    changed = call.sub(tell_port, source)
    assert changed != source and changed.count(port) == 1, changed
    path = tmp_path / "app.py"
    path.write_text(changed)
    return path


def python_app(tmp_path: Path, name: str) -> UWSGI:
    """`python app.py` in a subprocess (it execs uWSGI: the pid stays; stopped by it), once
    its broadcast mule serves (app.run adds it): a SIGINT while the mule is still starting
    can crash it in CPython's finalization (uWSGI 2.0.31), which is not what these test."""
    server = UWSGI([str(as_script(tmp_path, name))], tmp_path, executable=sys.executable, env={"PORT": "{port}"})
    server.wait_for_log(MULE_SERVES)
    return server


@pytest.mark.parametrize("name, option", [
    ("seed_flask_uwsgi_websocket.py", "threads"),         # app.run(debug=True, threads=16)
    ("seed_flask_uwsgi_websocket_gevent.py", "gevent"),   # app.run(gevent=100)
])
def test_python_app_py_flask_uwsgi_websocket(tmp_path, name, option):
    server = python_app(tmp_path, name)
    try:
        two_echo_at_once(server)  # two at once: the model the page asked for is in force
        log = server.log()
        assert re.search(rf"spawned uWSGI master process \(pid: {server.pid}\)", log), log
        assert startup.NO_CONCURRENCY not in log
        assert "is for uWSGI's" not in log, log  # the class and the model agree
        assert "uwsgi_ws: app.run() adds sharedarea=4096" in log, log  # the broadcast, said at start
    finally:
        server.stop()
    assert not server.crashes(), server.log()
    assert not server.tracebacks(), server.log()


def test_python_app_py_flask_uwsgi_websocket_chat(tmp_path):
    server = python_app(tmp_path, "seed_flask_uwsgi_websocket_chat.py")  # app.run(gevent=100)
    try:
        alice, bob = (websocket.create_connection(server.url + "/websocket", timeout=10) for _ in range(2))
        try:
            alice.send("hi")
            assert bob.recv() == "hi"
            bob.send("hello")
            assert alice.recv() == "hello"
        finally:
            alice.close()
            bob.close()
    finally:
        server.stop()
    assert not server.crashes(), server.log()
    assert not server.tracebacks(), server.log()


def test_python_app_py_flask_websockets(tmp_path):
    """The docs' server-time app: module-level app.run (no options) and a publisher thread
    started at import. app.run adds threads and the broadcast, so the channel works
    straight away; the thread's run before the exec publishes nothing and logs nothing."""
    server = python_app(tmp_path, "seed_flask_websockets.py")
    try:
        server_time(server, clients=2)
        log = server.log()
        assert "uwsgi_ws: app.run() adds threads=16, enable_threads=True, sharedarea=4096" in log, log
        assert "broadcast_mule.py" in log, log  # the mule as a file, as conf/broadcast.* runs it
        assert "PublishError" not in log and startup.NO_CONCURRENCY not in log, log
    finally:
        server.stop()
    assert not server.crashes(), server.log()
    assert not server.tracebacks(), server.log()


def test_python_app_py_flask_websockets_echo(tmp_path):
    server = python_app(tmp_path, "seed_flask_websockets_echo.py")
    try:
        with RawWebSocket(server.port, "/ws") as raw:
            raw.send_text("x")
            assert raw.recv_frame().payload == b"x"
    finally:
        server.stop()
    assert not server.crashes(), server.log()
    assert not server.tracebacks(), server.log()
