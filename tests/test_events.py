"""The event protocol (uwsgi_ws.events, docs/protocol.md) on real uWSGI: threads and
gevent, 2 workers (each also on a socket of its own), the broadcast mule.

App: tests/apps/events_app.py. Clients: websocket-client (text frames of JSON).
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.request
from pathlib import Path

import pytest
import websocket

from harness import UWSGI, free_port, wait_for

APP = "events_app:app"
MODELS = ["threads", "gevent"]
MODEL_ARGS = {
    "threads": ["--processes", "2", "--threads", "16"],
    "gevent": ["--processes", "2", "--gevent", "64"],
}


def start(tmp: Path, model: str, extra=(), app=("--module", APP)) -> UWSGI:
    """2 workers, each also on a port of its own (`worker_ports`), and the broadcast mule;
    `app`: the options that load the application (e.g. --wsgi-file, --callable)."""
    ports = [free_port(), free_port()]
    server = UWSGI([
        "--master",
        "--http-socket", "127.0.0.1:{port}",
        "--http-socket", f"127.0.0.1:{ports[0]}",
        "--http-socket", f"127.0.0.1:{ports[1]}",
        "--map-socket", "1:1", "--map-socket", "2:2",
        *app, "--die-on-term", "--need-app", "--disable-logging",
        "--sharedarea", "16", "--mule=uwsgi_ws.mule:run",
        *MODEL_ARGS[model], *extra,
    ], tmp)
    server.worker_ports = ports  # type: ignore[attr-defined]
    server.wait_for_log(r"uwsgi_ws: broadcast mule 1 serving ring", timeout=20)
    return server


@pytest.fixture(scope="module", params=["threads", "gevent"])
def model(request):
    return request.param


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    model = request.param  # parametrized by conftest (MODELS)
    instance = start(tmp_path_factory.mktemp(f"events-{model}"), model)
    instance.model = model  # type: ignore[attr-defined]
    yield instance
    instance.stop()
    log = instance.log()
    assert not instance.crashes(), log
    # the only tracebacks: the "crash" handler's, logged on purpose
    assert log.count("Traceback") == log.count("ZeroDivisionError: division by zero"), log


class Client:
    """One event-protocol connection; `next()` returns the next decoded frame."""

    def __init__(self, port: int, query: str = ""):
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{port}/live{query}", timeout=10)
        self.acks = 0
        self.seen: list = []  # broadcast events, in order
        self.kept: list = []  # frames read but not matched yet

    def send(self, frame) -> None:
        self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    def next(self) -> dict:
        message = json.loads(self.ws.recv())
        if message.get("type") == "event" and "seq" in message:
            self.seen.append(message)
        return message

    def until(self, match) -> dict:
        """The first frame, kept or new, that `match`es; the others are kept for later
        calls (an ack and a broadcast caused by the same event may arrive in either order)."""
        for i, message in enumerate(self.kept):
            if match(message):
                del self.kept[i]
                return message
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            message = self.next()
            if match(message):
                return message
            self.kept.append(message)
        raise AssertionError("no matching frame in 10 s")

    def call(self, event: str, data=None) -> dict:
        self.acks += 1
        ack_id = self.acks
        self.send({"type": "event", "event": event, "data": data, "id": ack_id})
        return self.until(lambda m: m.get("type") == "ack" and m.get("id") == ack_id)

    def hello(self) -> dict:
        return self.until(lambda m: m.get("event") == "hello")

    def close(self) -> None:
        self.ws.close()


def ring(server) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/ring", timeout=10) as resp:
        return json.loads(resp.read())


def emit(server, room: str, data, event: str = "news", port=None) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{port or server.port}/emit/{room}?event={event}",
                                 data=json.dumps(data).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 204


def on_both_workers(server, query: str = "") -> list:
    clients = [Client(port, query) for port in server.worker_ports]
    pids = {c.hello()["data"]["pid"] for c in clients}
    assert len(pids) == 2, pids
    return clients


# -- events, acks, errors --------------------------------------------------------------


def test_ack_carries_the_return_value(server):
    c = Client(server.port)
    c.hello()
    assert c.call("echo", {"x": [1, "é"]}) == {"type": "ack", "id": 1, "data": {"x": [1, "é"]}}
    c.close()


def test_emit_refuses_what_would_make_an_invalid_frame(server):
    """Issue 12 item 3 for events: NaN and infinities (not JSON: the client's JSON.parse
    would drop the whole frame), lone surrogates (a text frame must be UTF-8) and
    unserialisable values are refused with an error naming the rule, whatever the target."""
    c = Client(server.port)
    c.hello()
    answers = c.call("output-rules")["data"]
    c.close()
    not_json = "ValueError: NaN and infinities are not JSON (RFC 8259 section 6"
    not_utf8 = "ValueError: an event's JSON text must be UTF-8 (RFC 6455 section 5.6)"
    assert answers["conn-nan"].startswith(not_json), answers
    assert answers["room-inf"].startswith(not_json), answers
    assert answers["conn-surrogate"].startswith(not_utf8), answers
    assert answers["all-surrogate"].startswith(not_utf8), answers
    assert answers["all-object"] == "TypeError: Object of type object is not JSON serializable", answers
    assert answers["all-name"] == "TypeError: an event name is a str, not int", answers


def test_handler_errors_are_error_acks_and_the_connection_lives(server):
    c = Client(server.port)
    c.hello()
    assert c.call("fail", "no") == {"type": "ack", "id": 1, "error": "refused: no"}
    before = server.log().count("ZeroDivisionError")
    assert c.call("crash") == {"type": "ack", "id": 2, "error": "internal error"}
    wait_for(lambda: server.log().count("ZeroDivisionError") > before, what="the crash logged")
    assert c.call("nope") == {"type": "ack", "id": 3, "error": "no handler for event 'nope'"}
    assert c.call("echo", 5)["data"] == 5
    c.close()


@pytest.mark.parametrize("frame", [
    "not json", "[1, 2]", '{"type": 3}', '{"type": "teleport"}', '{"type": "event", "event": 7}',
    '{"type": "join", "room": ""}', '{"type": "join", "room": "' + "r" * 300 + '"}',
])
def test_malformed_frames_get_an_error_frame(server, frame):
    c = Client(server.port)
    c.hello()
    c.send(frame)
    error = c.until(lambda m: m.get("type") == "error")
    assert isinstance(error["message"], str) and error["message"]
    assert c.call("echo", 1)["data"] == 1
    c.ws.send_binary(b"\x00\x01")
    assert c.until(lambda m: m.get("type") == "error")["message"]
    c.close()


def test_handlers_run_in_the_request_context_of_the_upgrade(server):
    c = Client(server.port, "?name=ann")
    c.hello()
    assert c.call("whoami")["data"] == {"path": "/live", "name": "ann"}
    c.close()


# -- rooms and emit ---------------------------------------------------------------------


def test_rooms_across_workers_carry_seq_and_epoch(server):
    a, b = on_both_workers(server)
    b.send({"type": "join", "room": "blue"})
    assert b.call("echo", 1)  # frames are handled in order: the join is done (from the ring's seq then on)
    assert a.call("say", {"room": "lobby", "text": "hi"})["data"] == {"ok": True}
    said = [c.until(lambda m: m.get("event") == "said") for c in (a, b)]
    assert said[0] == said[1]
    assert said[0]["room"] == "lobby" and said[0]["data"]["text"] == "hi"
    assert said[0]["epoch"] == ring(server)["epoch"] and isinstance(said[0]["seq"], int)
    # blue: only b gets it; then lobby again: a sees lobby messages only
    emit(server, "blue", {"n": 1})
    assert b.until(lambda m: m.get("event") == "news")["room"] == "blue"
    emit(server, "lobby", {"n": 2})
    got = a.until(lambda m: m.get("event") == "news")
    assert got["room"] == "lobby", got
    b.send({"type": "leave", "room": "blue"})
    assert b.call("echo", 2)
    a.close(), b.close()


def test_emit_from_a_view_to_everyone_and_to_a_room(server):
    a, b = on_both_workers(server)
    emit(server, "-", {"all": 1}, event="bulletin")
    for c in (a, b):
        m = c.until(lambda m: m.get("event") == "bulletin")
        assert m["room"] is None and m["data"] == {"all": 1}
    emit(server, "lobby", {"lobby": 1})
    got = [c.until(lambda m: m.get("event") == "news") for c in (a, b)]
    assert got[0] == got[1] and got[0]["data"] == {"lobby": 1}
    assert got[0]["seq"] == ring(server)["write_seq"]  # the mule wrote the seq of its own record
    a.close(), b.close()


# -- resume ------------------------------------------------------------------------------


def test_resume_inside_the_bound_has_no_duplicate_and_no_gap(server):
    watcher = Client(server.worker_ports[0])
    watcher.hello()
    c = Client(server.worker_ports[1])
    c.hello()
    emit(server, "lobby", 0, event="n")
    first = c.until(lambda m: m.get("event") == "n")
    c.close()
    for i in range(1, 21):  # missed while away
        emit(server, "lobby", i, event="n")
    r = Client(server.worker_ports[0], "?resume=1")
    r.send({"type": "resume", "epoch": first["epoch"], "rooms": {"lobby": first["seq"]}})
    for i in range(21, 41):  # published while the resume is being served
        emit(server, "lobby", i, event="n")
    got = []
    resumed = None
    while len(got) < 40:
        m = r.next()
        if m.get("type") == "resumed":
            resumed = m
        elif m.get("event") == "n":
            got.append(m)
    assert [m["data"] for m in got] == list(range(1, 41))
    seqs = [m["seq"] for m in got]
    assert seqs == sorted(set(seqs))
    assert resumed is not None and resumed["rooms"]["lobby"] >= first["seq"]
    r.close(), watcher.close()


def test_join_with_last_without_the_history_comes_from_the_ring(server):
    room = f"recent-{server.model}"
    watcher = Client(server.port)
    watcher.hello()
    watcher.send({"type": "join", "room": room})
    assert watcher.call("echo", 0)["data"] == 0
    for i in range(6):
        emit(server, room, i, event="n")
    # emit() returns once the mule has the request: wait until the ring has all six
    while watcher.until(lambda m: m.get("event") == "n")["data"] != 5:
        pass
    watcher.close()
    c = Client(server.worker_ports[0])
    c.hello()
    c.send({"type": "join", "room": room, "last": 3})
    assert c.call("echo", 1)["data"] == 1
    emit(server, room, 6, event="n")
    got = [c.until(lambda m: m.get("event") == "n") for _ in range(4)]
    assert [m["data"] for m in got] == [3, 4, 5, 6]
    assert [m["seq"] for m in got] == sorted({m["seq"] for m in got})
    c.send({"type": "join", "room": "other", "last": 10**9})  # capped by max_last, not an error
    assert c.call("echo", 2)["data"] == 2
    assert not [m for m in c.kept if m.get("type") == "error"]
    c.close()


def test_resume_outside_the_bound_is_not_recovered(server):
    c = Client(server.port)
    c.hello()
    emit(server, "lobby", "old", event="n")
    old = c.until(lambda m: m.get("event") == "n")
    c.close()
    big = "x" * 4000
    # sharedarea 16 pages = 64 KiB ring: these overwrite `old`
    deadline = time.monotonic() + 30
    while ring(server)["min_seq"] <= old["seq"] + 1:
        assert time.monotonic() < deadline
        emit(server, "elsewhere", big, event="filler")
    r = Client(server.port, "?resume=1")
    r.send({"type": "resume", "epoch": old["epoch"], "rooms": {"lobby": old["seq"]}})
    m = r.until(lambda m: m.get("type") in ("not_recovered", "resumed"))
    assert m["type"] == "not_recovered" and m["room"] == "lobby" and "too old" in m["reason"]
    resumed = r.until(lambda m: m.get("type") == "resumed")
    assert "lobby" not in resumed["rooms"]
    emit(server, "lobby", "live", event="n")  # live delivery goes on
    assert r.until(lambda m: m.get("event") == "n")["data"] == "live"
    r.close()


def test_a_new_instance_has_a_new_epoch(model, tmp_path):
    (tmp_path / "a").mkdir()
    first = start(tmp_path / "a", model)
    try:
        c = Client(first.port)
        c.hello()
        emit(first, "lobby", 1, event="n")
        seen = c.until(lambda m: m.get("event") == "n")
        c.close()
    finally:
        first.stop()
    (tmp_path / "b").mkdir()
    second = start(tmp_path / "b", model)
    try:
        assert ring(second)["epoch"] != seen["epoch"]
        r = Client(second.port, "?resume=1")
        r.send({"type": "resume", "epoch": seen["epoch"], "rooms": {"lobby": seen["seq"]}})
        m = r.until(lambda m: m.get("type") == "not_recovered")
        assert m["room"] == "lobby" and "epoch" in m["reason"]
        emit(second, "lobby", 2, event="n")
        assert r.until(lambda m: m.get("event") == "n")["data"] == 2
        r.close()
    finally:
        second.stop()
        assert not second.crashes(), second.log()


# -- SSE -----------------------------------------------------------------------------------


class SSE:
    def __init__(self, port: int, path: str, last_id: str | None = None):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        headers = {"Last-Event-ID": last_id} if last_id else {}
        self.conn.request("GET", path, headers=headers)
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200
        assert self.resp.getheader("Content-Type").startswith("text/event-stream")

    def event(self) -> dict:
        fields: dict = {}
        while True:
            line = self.resp.fp.readline().decode().rstrip("\n")
            if not line:
                if "data" in fields:
                    return fields
                fields = {}  # e.g. the opening "retry:"
                continue
            if line.startswith(":"):
                continue
            key, _, value = line.partition(": ")
            fields[key] = value

    def close(self):
        self.resp.close()  # the response holds the socket open too
        self.conn.close()


def test_sse_streams_the_broadcasts_and_resumes_with_last_event_id(server):
    s = SSE(server.port, "/live/sse?rooms=lobby,red")
    # subscribed from the ring's seq at the request: what is emitted from now on arrives
    emit(server, "red", "first", event="n")
    e = s.event()
    assert e["event"] == "n"
    data = json.loads(e["data"])
    assert data["data"] == "first" and data["room"] == "red"
    assert e["id"] == f"{data['epoch']}-{data['seq']}"
    s.close()
    for i in range(5):
        emit(server, "red" if i % 2 else "lobby", i, event="n")
    emit(server, "green", "not subscribed", event="n")
    s2 = SSE(server.port, "/live/sse?rooms=lobby,red", last_id=e["id"])
    got = [json.loads(s2.event()["data"])["data"] for _ in range(5)]
    assert got == [0, 1, 2, 3, 4]
    emit(server, "-", "to all", event="n")
    assert json.loads(s2.event()["data"])["data"] == "to all"
    s2.close()
    s3 = SSE(server.port, "/live/sse?rooms=lobby", last_id="1-1")
    assert s3.event()["event"] == "not_recovered"
    s3.close()


def test_disconnect_handler_runs_in_the_request_context(server):
    watcher = Client(server.port)
    watcher.hello()
    watcher.send({"type": "join", "room": "departures"})
    assert watcher.call("echo", 1)  # frames are handled in order: joined
    c = Client(server.port, "?name=bob")
    c.hello()
    c.ws.close(status=4001)
    left = watcher.until(lambda m: m.get("event") == "left" and m["data"]["name"] == "bob")
    assert left["data"]["code"] == 4001
    watcher.close()


def members(server, room: str) -> int:
    total = 0
    for port in server.worker_ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/members/{room}", timeout=10) as resp:
            total += json.loads(resp.read())["members"]
    return total


def test_a_closed_sse_stream_leaves_the_hub(server):
    assert members(server, "amber") == 0
    s = SSE(server.port, "/live/sse?rooms=amber")
    emit(server, "amber", "x", event="n")
    assert json.loads(s.event()["data"])["data"] == "x"
    assert members(server, "amber") == 1
    s.close()
    # the server notices the gone client at its next write: emit until it has left
    wait_for(lambda: emit(server, "amber", "y", event="n") or members(server, "amber") == 0,
             what="the SSE stream left the hub")
