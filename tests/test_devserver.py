"""`flask --app app run --debug` (Werkzeug's threaded development server, reloader and
debugger on) serves WebSocket routes and event endpoints (WebSocket and SSE) with the
same engine and the in-process broadcast (uwsgi_ws/devserver.py, broadcast/local.py).

Each test module's server is a real `flask run` subprocess in its own process group
(the reloader's parent and the serving child), on a free port, stopped by its pid's
group; real clients over TCP: websocket-client, requests, a raw socket for SSE."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import pytest
import requests
import websocket

from harness import ROOT, ScriptServer, wait_for

EXAMPLES = ROOT / "examples"


def debugger_serving(server: ScriptServer) -> bool:
    """The serving child (the reloader's) answers HTTP: the parent listens first."""
    if "Debugger is active" not in server.log():
        return False
    try:
        requests.get(server.http + "/", timeout=5)
        return True
    except requests.RequestException:
        return False


class FlaskRun(ScriptServer):
    """`flask --app app run --debug --port P` in `cwd`, its log in `log_path`."""

    def __init__(self, cwd: Path, tmp_path: Path, extra: tuple = ()) -> None:
        flask = Path(sys.executable).with_name("flask")
        super().__init__([str(flask), "--app", "app", "run", "--debug", "--port", "{port}", *extra], cwd, tmp_path,
                         ready=debugger_serving, name="flask run")


def flask_run(cwd: Path, tmp_path: Path) -> Iterator[FlaskRun]:
    server = FlaskRun(cwd, tmp_path)
    try:
        yield server
    finally:
        log = server.log()
        server.stop()
    assert "Error on request" not in log, log  # no traceback from Werkzeug around an upgrade
    assert log.count("Traceback") == log.count("RuntimeError: the handler failed"), log  # only /crash's, logged


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory) -> Iterator[FlaskRun]:
    yield from flask_run(EXAMPLES / "echo", tmp_path_factory.mktemp("echo"))


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory) -> Iterator[FlaskRun]:
    yield from flask_run(EXAMPLES / "chat", tmp_path_factory.mktemp("chat"))


@pytest.fixture(scope="module")
def ticker_server(tmp_path_factory) -> Iterator[FlaskRun]:
    yield from flask_run(EXAMPLES / "ticker", tmp_path_factory.mktemp("ticker"))


EDGE_APP = '''
from flask import Flask, request
from uwsgi_ws import PublishError, WebSocket

app = Flask(__name__)
ws = WebSocket(app, max_message_size=100)


@ws.before_connect
def check():
    return request.args.get("deny") is None


@ws.route("/echo")
def echo(conn):
    for message in conn:
        conn.send(message)


@ws.route("/crash")
def crash(conn):
    conn.send("failing")
    raise RuntimeError("the handler failed")


@app.post("/publish/<channel>")
def publish(channel):
    try:
        return {"seq": ws.publish(request.get_data(as_text=True), channel=channel)}
    except PublishError as exc:
        return str(exc), 413


@ws.route("/sub/<channel>")
def sub(conn, channel):
    with ws.subscribe(conn, channel):
        conn.send("ready")
        for _ in conn:
            pass
'''


@pytest.fixture(scope="module")
def edge_server(tmp_path_factory) -> Iterator[FlaskRun]:
    where = tmp_path_factory.mktemp("edge")
    (where / "app.py").write_text(textwrap.dedent(EDGE_APP))
    yield from flask_run(where, where)


# -- echo --------------------------------------------------------------------------------------


def test_echo_example(echo_server: FlaskRun) -> None:
    assert requests.get(echo_server.http + "/", timeout=5).status_code == 200
    conn = websocket.create_connection(echo_server.url + "/echo", timeout=10)
    conn.send("hello")
    assert conn.recv() == "hello"
    conn.send_binary(b"\x00\x01")
    assert conn.recv() == b"\x00\x01"
    conn.close()
    # Werkzeug logs the upgrade once the handler has returned (its write of the 101 fails quietly)
    wait_for(lambda: re.search(r'GET /echo HTTP/1.1\S*" 101', echo_server.log()), 10, "the 101 in the log")


def test_many_connections_at_once(echo_server: FlaskRun) -> None:
    conns = [websocket.create_connection(echo_server.url + "/echo", timeout=10) for _ in range(20)]
    for i, conn in enumerate(conns):
        conn.send(f"m{i}")
    assert [conn.recv() for conn in conns] == [f"m{i}" for i in range(20)]
    for conn in conns:
        conn.close()


# -- chat: events, rooms, acks, SSE ---------------------------------------------------------------


def chat_token(server: FlaskRun, name: str) -> str:
    http = requests.Session()
    assert http.post(server.http + "/login", data={"name": name}, timeout=5).status_code == 200
    token: str = http.post(server.http + "/token", timeout=5).json()["token"]
    return token


def frames_until(conn: websocket.WebSocket, kind: str, **match: object) -> list:
    """Frames received until one of type `kind` (with the `match` fields) arrives, inclusive."""
    out = []
    while True:
        frame = json.loads(conn.recv())
        out.append(frame)
        if frame["type"] == kind and all(frame.get(k) == v for k, v in match.items()):
            return out


def test_chat_rooms_and_acks(chat_server: FlaskRun) -> None:
    ann = websocket.create_connection(f"{chat_server.url}/live?token={chat_token(chat_server, 'ann')}", timeout=10)
    bob = websocket.create_connection(f"{chat_server.url}/live?token={chat_token(chat_server, 'bob')}", timeout=10)
    for conn, room in ((ann, "lobby"), (bob, "random")):
        assert json.loads(conn.recv())["event"] == "welcome"
        conn.send(json.dumps({"type": "join", "room": room}))
        conn.send(json.dumps({"type": "event", "event": "sync", "id": "joined"}))  # acked after the join is read
        frames_until(conn, "ack", id="joined")
    ann.send(json.dumps({"type": "event", "event": "say", "data": {"room": "lobby", "text": "hi"}, "id": 1}))
    got = frames_until(ann, "event", event="said")
    said = got[-1]
    assert (said["data"]["name"], said["data"]["text"], said["room"]) == ("ann", "hi", "lobby")
    assert isinstance(said["seq"], int) and said["epoch"].isdigit()
    acked = [f for f in got if f["type"] == "ack" and f["id"] == 1]  # the ack may come before the broadcast
    if not acked:
        acked = frames_until(ann, "ack", id=1)[-1:]
    assert acked == [{"type": "ack", "id": 1, "data": {"ok": True}}]
    bob.send(json.dumps({"type": "join", "room": "lobby", "last": 10}))  # the room's recent ones first
    replay = frames_until(bob, "event", event="said")[-1]
    assert (replay["seq"], replay["data"]["text"]) == (said["seq"], "hi")
    bob.send(json.dumps({"type": "join", "room": "kitchen"}))
    assert frames_until(bob, "error")[-1]["message"] == "join 'kitchen' refused"
    ann.close()
    bob.close()


def test_chat_refuses_a_forged_token(chat_server: FlaskRun) -> None:
    with pytest.raises(websocket.WebSocketBadStatusException) as caught:
        websocket.create_connection(chat_server.url + "/live?token=forged", timeout=10)
    assert caught.value.status_code == 403


def test_chat_sse(chat_server: FlaskRun) -> None:
    token = chat_token(chat_server, "sse")
    with socket.create_connection(("127.0.0.1", chat_server.port), timeout=10) as sse:
        sse.sendall(f"GET /live/sse?rooms=lobby&token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while b"retry: 2000" not in data:
            data += sse.recv(65536)
        assert b"200 OK" in data and b"text/event-stream" in data
        ann = websocket.create_connection(f"{chat_server.url}/live?token={token}", timeout=10)
        json.loads(ann.recv())
        ann.send(json.dumps({"type": "event", "event": "say", "data": {"room": "lobby", "text": "to sse"}, "id": 1}))
        while b"to sse" not in data:
            chunk = sse.recv(65536)
            assert chunk, data
            data += chunk
        assert b"event: said\n" in data and b"id: " in data
        ann.close()


# -- ticker: publish from a view -------------------------------------------------------------


def test_ticker_prices_from_a_view(ticker_server: FlaskRun) -> None:
    conn = websocket.create_connection(ticker_server.url + "/ticker", timeout=10)
    conn.settimeout(0.2)
    first = None
    for attempt in range(100):  # the handler subscribes after the upgrade: publish until one arrives
        r = requests.post(ticker_server.http + "/price", json={"symbol": "ACME", "price": attempt}, timeout=5)
        assert r.status_code == 202
        try:
            first = json.loads(conn.recv())
            break
        except websocket.WebSocketTimeoutException:
            continue
    assert first is not None and first["symbol"] == "ACME"
    conn.settimeout(10)
    requests.post(ticker_server.http + "/price", json={"symbol": "ACME", "price": 999.5}, timeout=5)
    while (message := json.loads(conn.recv()))["price"] != 999.5:
        assert message["price"] <= attempt
    conn.close()


# -- edge cases: limits, errors, refusals, publish -----------------------------------------


def test_limits_errors_and_refusals(edge_server: FlaskRun) -> None:
    conn = websocket.create_connection(edge_server.url + "/echo", timeout=10)
    conn.send("x" * 101)  # over max_message_size=100
    opcode, frame = conn.recv_data_frame(True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE and int.from_bytes(frame.data[:2], "big") == 1009
    conn.close()
    crash = websocket.create_connection(edge_server.url + "/crash", timeout=10)
    assert crash.recv() == "failing"
    opcode, frame = crash.recv_data_frame(True)
    assert int.from_bytes(frame.data[:2], "big") == 1011  # never the debugger's HTML on the socket
    crash.close()
    with pytest.raises(websocket.WebSocketBadStatusException) as caught:
        websocket.create_connection(edge_server.url + "/echo?deny=1", timeout=10)
    assert caught.value.status_code == 403
    assert requests.get(edge_server.http + "/echo", timeout=5).status_code == 400  # plain GET: use a WebSocket


def test_publish_reaches_every_subscriber(edge_server: FlaskRun) -> None:
    subs = [websocket.create_connection(edge_server.url + "/sub/news", timeout=10) for _ in range(5)]
    for conn in subs:
        assert conn.recv() == "ready"
    seqs = [requests.post(f"{edge_server.http}/publish/news", data=f"n{i}", timeout=5).json()["seq"]
            for i in range(50)]
    assert seqs == list(range(seqs[0], seqs[0] + 50))  # the ring's seq, one per message
    for conn in subs:
        assert [conn.recv() for _ in range(50)] == [f"n{i}" for i in range(50)]
        conn.close()
    too_big = requests.post(f"{edge_server.http}/publish/news", data="x" * (2 << 20), timeout=10)
    assert too_big.status_code == 413 and "over the in-process broadcast's limit" in too_big.text


def test_without_threads_works_and_says_why_it_blocks(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(textwrap.dedent(EDGE_APP))
    server = FlaskRun(tmp_path, tmp_path, extra=("--without-threads",))
    try:
        conn = websocket.create_connection(server.url + "/echo", timeout=10)
        conn.send("one at a time")
        assert conn.recv() == "one at a time"
        conn.close()
        wait_for(lambda: "handles one request at a time" in server.log(), 10, "the warning")
    finally:
        server.stop()


# -- which broadcast a process gets ------------------------------------------------------------


PUBLISH_SCRIPT = """
import uwsgi_ws
try:
    print("seq", uwsgi_ws.publish("x", channel="c"))
except uwsgi_ws.PublishError as exc:
    print("PublishError", exc)
"""


@pytest.mark.parametrize("env, as_flask, expected", [
    ({}, False, "PublishError publish() needs uWSGI"),  # a cron job: no silent publish into a ring nobody reads
    ({"FLASK_RUN_FROM_CLI": "true"}, False, "PublishError"),  # a script flask run's app started (inherited env)
    ({"FLASK_RUN_FROM_CLI": "true"}, True, "seq 1"),  # the flask run process: the in-process broadcast
])
def test_publish_outside_uwsgi_depends_on_serving(env: dict, as_flask: bool, expected: str, tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if k not in ("FLASK_RUN_FROM_CLI", "WERKZEUG_RUN_MAIN")}
    script = tmp_path / "script.py"
    script.write_text(PUBLISH_SCRIPT)
    if as_flask:  # run as `python -m flask` would (argv[0] is flask/__main__.py): the script stands in for it
        flask_main = tmp_path / "flask" / "__main__.py"
        flask_main.parent.mkdir()
        flask_main.write_text(PUBLISH_SCRIPT)
        script = flask_main
    result = subprocess.run([sys.executable, str(script)], env={**clean, **env}, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(expected), result.stdout + result.stderr


# -- the process's exit: a reload (1012) and Ctrl-C (1001) ----------------------------------


def next_close(conn: websocket.WebSocket) -> tuple:
    """Skip data frames until the close frame: (code, reason)."""
    while True:
        opcode, frame = conn.recv_data_frame(True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return int.from_bytes(frame.data[:2], "big"), frame.data[2:].decode("utf-8")


def test_a_reload_closes_open_websockets_with_1012(tmp_path: Path) -> None:
    """Werkzeug's reloader (--debug) restarts the serving child when a file changes: the
    open WebSockets get close 1012 (service restart) before the old child exits, not a
    socket dropped without a close frame, and the new child serves the reconnect."""
    (tmp_path / "app.py").write_text(textwrap.dedent(EDGE_APP))
    server = FlaskRun(tmp_path, tmp_path)
    try:
        conns = [websocket.create_connection(server.url + "/echo", timeout=30) for _ in range(2)]
        for i, conn in enumerate(conns):
            conn.send(f"before {i}")
            assert conn.recv() == f"before {i}"
        (tmp_path / "app.py").write_text(textwrap.dedent(EDGE_APP) + "\n# changed\n")
        for conn in conns:
            assert next_close(conn) == (1012, "server restarting")
            conn.shutdown()
        wait_for(lambda: "Detected change in" in server.log(), 30, "the reloader's line")
        server.wait_ready()
        again = websocket.create_connection(server.url + "/echo", timeout=30)
        again.send("after")
        assert again.recv() == "after"
        again.close()
    finally:
        log = server.log()
        server.stop()
    assert "Traceback" not in log, log


def test_ctrl_c_closes_open_websockets_with_1001(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the foreground group: the reloader's parent and child): close
    1001 (going away) before the child exits."""
    (tmp_path / "app.py").write_text(textwrap.dedent(EDGE_APP))
    server = FlaskRun(tmp_path, tmp_path)
    try:
        conn = websocket.create_connection(server.url + "/echo", timeout=30)
        conn.send("before")
        assert conn.recv() == "before"
        os.killpg(server.pid, signal.SIGINT)
        assert next_close(conn) == (1001, "server shutting down")
        conn.shutdown()
        server.proc.wait(30)
    finally:
        server.stop()
