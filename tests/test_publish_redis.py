"""`Publisher(redis_url=..., stream=...)` reaches every instance bridged through that
Redis Stream (issue 13 item 4), events included: a real redis-server and two uWSGI
instances (threads and gevent) of tests/apps/publish_app.py, bridged as the README
says; every process stopped by pid. Then the command line, `python -m uwsgi_ws
publish|emit --redis URL`, into a bridged instance (threads and gevent), and its
errors for a bad URL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
import websocket
from test_publish_threads import sse_events, subscriber
from test_redis_bridge import RedisServer

from harness import ROOT, UWSGI, serve


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


def bridged(tmp, model: str, url: str, stream: str) -> UWSGI:
    server = serve("publish_app:app", tmp, model=model,
                   extra=["--sharedarea", "4096", "--mule=uwsgi_ws.mule:run",
                          "--set-placeholder", f"uwsgi-ws-redis-url={url}",
                          "--set-placeholder", f"uwsgi-ws-redis-stream={stream}"])
    server.wait_for_log(r"redis bridge: connected for reading", timeout=30)
    return server


@pytest.mark.parametrize("model", ["threads", "gevent"])
def test_redis_publisher_reaches_every_bridged_instance(model, redis_server, tmp_path):
    from uwsgi_ws.client import Publisher, PublishError

    stream = f"test:{uuid.uuid4().hex}"
    instances = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        instances.append(bridged(tmp_path / name, model, redis_server.url, stream))
    clients, readers = [], []
    try:
        for server in instances:
            clients.append(subscriber(server))
            readers.append(sse_events(server, "r1", 2))
        with Publisher(redis_url=redis_server.url, stream=stream) as pub:
            assert pub.publish("to all") == 1
            assert pub.publish(b"\x00bin") == 2
            # events are numbered in Redis, as the instances number theirs: the stream's
            # one seq and epoch, so a browser's position stays valid on any instance
            assert pub.emit("/live", "tick", {"n": 1}, to="r1") == 1
            assert pub.emit("/live", "all", {"n": 2}) == 2
            # plain publishes keep their own numbering next to events: no gap for the readers
            assert pub.publish("after events") == 3
        import redis as redis_py
        r = redis_py.Redis.from_url(redis_server.url)
        epoch = r.get(stream + ":epoch").decode()
        assert int(r.get(stream + ":seq")) == 2
        for conn in clients:
            assert conn.recv() == "to all"
            assert conn.recv() == b"\x00bin"
            assert conn.recv() == "after events"
        for read in readers:
            events = read()
            assert [(e[1], e[2]["data"], e[2]["room"]) for e in events] == [(b"tick", {"n": 1}, "r1"),
                                                                            (b"all", {"n": 2}, None)]
            assert [e[0].decode() for e in events] == [f"{epoch}-1", f"{epoch}-2"]
            assert [e[2]["seq"] for e in events] == [1, 2] and {e[2]["epoch"] for e in events} == {epoch}
        # a retry of the same request (its first try got through) gets the first seq, no second event
        from uwsgi_ws.broadcast.redis import add_event
        first = add_event(r, stream, 1000, "feedbeef", "x", 4, b'{"t":"event"}', number=7)
        assert add_event(r, stream, 1000, "feedbeef", "x", 4, b'{"t":"event"}', number=7) == first
        assert add_event(r, stream, 1000, "feedbeef", "x", 4, b'{"t":"event"}', number=8) == first + 1
        r.close()
    finally:
        for conn in clients:
            conn.close()
        for server in instances:
            server.stop()
    for server in instances:
        assert not server.crashes(), server.log()
        assert "missed" not in server.log(), server.log()[-3000:]  # a gap in the publisher's numbering
    with pytest.raises(PublishError, match="cannot publish to Redis"):
        Publisher(redis_url="redis://127.0.0.1:1/0", timeout=0.3).publish("nowhere")


# -- the command line: python -m uwsgi_ws publish|emit --redis URL ----------------------------


def redis_cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    """`python -m uwsgi_ws <args>` in a process of its own (the checkout first on PYTHONPATH)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "uwsgi_ws", *args], input=stdin, capture_output=True, env=env,
                          cwd=str(ROOT), timeout=60)


def events_client(server: UWSGI, room: str) -> websocket.WebSocket:
    """An events-protocol WebSocket on /live that has joined `room`: frames are handled in
    order, so the ack of a call sent after the join says the join is done."""
    conn = websocket.create_connection(server.url + "/live", timeout=30)
    conn.send(json.dumps({"type": "join", "room": room}))
    conn.send(json.dumps({"type": "event", "event": "barrier", "id": "after-join"}))
    frame = json.loads(conn.recv())
    assert frame.get("type") == "ack" and frame.get("id") == "after-join", frame
    return conn


def next_event(conn: websocket.WebSocket) -> dict:
    """The next broadcast event frame; other frames are skipped (a publish to every
    connection reaches the events endpoint's WebSockets too, as bare messages)."""
    while True:
        frame = conn.recv()
        if isinstance(frame, str) and frame.startswith("{"):
            message = json.loads(frame)
            if message.get("type") == "event":
                return message


@pytest.mark.parametrize("model", ["threads", "gevent"])
def test_cli_publish_and_emit_through_redis(model, redis_server, tmp_path):
    """The CLI with --redis reaches an instance bridged through that stream: a WebSocket
    subscriber gets the messages, an events client the event, with the seq the CLI
    printed and the stream's epoch."""
    stream = f"test:{uuid.uuid4().hex}"
    server = bridged(tmp_path, model, redis_server.url, stream)
    opened = []
    try:
        everyone = subscriber(server)
        opened.append(everyone)
        lobby = events_client(server, "lobby")
        opened.append(lobby)
        where = ["--redis", redis_server.url, "--stream", stream]
        done = redis_cli("publish", *where, "from the CLI")
        assert done.returncode == 0 and int(done.stdout) > 0, done.stderr
        assert everyone.recv() == "from the CLI"
        done = redis_cli("publish", *where, "--binary", "-", stdin=b"\xff\x00raw")
        assert done.returncode == 0, done.stderr
        assert everyone.recv() == b"\xff\x00raw"
        done = redis_cli("emit", *where, "--endpoint", "/live", "--room", "lobby", "said", '{"text": "hi"}')
        assert done.returncode == 0, done.stderr
        seq = int(done.stdout)
        event = next_event(lobby)
        assert (event["type"], event["event"], event["room"], event["data"]) == ("event", "said", "lobby",
                                                                                 {"text": "hi"}), event
        import redis as redis_py
        with redis_py.Redis.from_url(redis_server.url) as r:
            epoch, last = r.get(stream + ":epoch").decode(), int(r.get(stream + ":seq"))
        assert event["seq"] == seq == last and event["epoch"] == epoch, (event, seq, last, epoch)
    finally:
        for conn in opened:
            conn.close()
        server.stop()
    assert not server.crashes(), server.log()


@pytest.mark.parametrize("command", [["publish", "x"], ["emit", "--endpoint", "/live", "tick", "{}"]])
@pytest.mark.parametrize("url, reason", [
    ("redis://127.0.0.1:1/0", "cannot publish to Redis redis://127.0.0.1:1/0 stream 'uwsgi_ws:broadcast' after "
                              "0.3s: ConnectionError"),
    ("redis://127.0.0.1:99999/0", "Port out of range"),
    ("http://127.0.0.1:6379/0", "Redis URL must specify one of the following schemes"),
    ("redis://:s3cret@127.0.0.1:1/0", "cannot publish to Redis redis://:***@127.0.0.1:1/0 stream"),
    ("redis://:s3cret@127.0.0.1:99999/0", "redis_url 'redis://:***@127.0.0.1:99999/0': Port out of range"),
])
def test_cli_bad_redis_url_is_a_one_line_error(command, url, reason):
    done = redis_cli(command[0], "--redis", url, "--timeout", "0.3", *command[1:])
    stderr = done.stderr.decode()
    assert done.returncode == 1 and done.stdout == b"", stderr
    assert stderr.startswith(f"python -m uwsgi_ws {command[0]}: error: ") and stderr.count("\n") == 1, stderr
    assert reason in stderr and "Traceback" not in stderr, stderr
    assert "s3cret" not in stderr, stderr  # the password is masked, as in the bridge's logs


@pytest.mark.parametrize("url, shown", [
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://u:s3cret@h:6379/1", "redis://u:***@h:6379/1"),
    ("redis://:s3cret@[::1]:6379/0", "redis://:***@[::1]:6379/0"),
    ("redis://:s3cret@127.0.0.1:99999/0", "redis://:***@127.0.0.1:99999/0"),  # parts.port raises there
    ("rediss://:s3cret@h/0", "rediss://:***@h/0"),
    ("redis://[::1/0", "<unparsable URL>"),
])
def test_a_redis_url_is_shown_without_its_password(url, shown):
    """What the bridge's logs and the client's errors show of a Redis URL (never raises)."""
    from uwsgi_ws.broadcast.redis import redact

    assert redact(url) == shown
