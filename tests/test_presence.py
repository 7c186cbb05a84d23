"""Presence (`live.presence`, `live.presence_count`) and join/leave events on real
uWSGI: threads and gevent, 2 workers (each also on a port of its own), the
broadcast mule. App: tests/apps/presence_app.py. Clients: websocket-client.

The helpers here (`start`, `Client`, `http`) serve tests/test_targeting.py and
tests/test_calls.py too.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import websocket

from uwsgi_ws.presence import pid_alive

from harness import UWSGI, free_port, wait_for

APP = "presence_app:app"
MODEL_ARGS = {
    "threads": ["--processes", "2", "--threads", "16"],
    "gevent": ["--processes", "2", "--gevent", "64"],
}


def start(tmp: Path, model: str, extra=()) -> UWSGI:
    """2 workers, each also on a port of its own (`worker_ports`), and the broadcast mule."""
    ports = [free_port(), free_port()]
    server = UWSGI([
        "--master",
        "--http-socket", "127.0.0.1:{port}",
        "--http-socket", f"127.0.0.1:{ports[0]}",
        "--http-socket", f"127.0.0.1:{ports[1]}",
        "--map-socket", "1:1", "--map-socket", "2:2",
        "--module", APP, "--die-on-term", "--need-app", "--disable-logging",
        "--sharedarea", "16", "--mule=uwsgi_ws.mule:run",
        *MODEL_ARGS[model], *extra,
    ], tmp)
    server.worker_ports = ports  # type: ignore[attr-defined]
    server.wait_for_log(r"uwsgi_ws: broadcast mule 1 serving ring", timeout=20)
    return server


MODELS = ["threads", "gevent"]  # conftest parametrizes `server` with these


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    instance = start(tmp_path_factory.mktemp(f"presence-{request.param}"), request.param)
    instance.model = request.param  # type: ignore[attr-defined]
    yield instance
    instance.stop()
    assert not instance.crashes(), instance.log()


class Client:
    """One event-protocol connection (websocket-client). `frames` keeps what `until`
    has read and not matched yet; replies to the server's calls come from `answers`
    ({event: data | Exception | None (no reply)})."""

    def __init__(self, port: int, query: str = "", answers=None):
        query = "?id=1" + ("&" + query.lstrip("?") if query else "")
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{port}/live{query}", timeout=10)
        self.kept: list = []
        self.answers = answers or {}
        self.acks = 0
        first = self.until(lambda m: m["type"] == "connected")
        self.id = first["id"]
        me = self.call("whoami")["data"]
        assert me["id"] == self.id
        self.pid = me["pid"]

    def send(self, frame) -> None:
        self.ws.send(json.dumps(frame))

    def next(self) -> dict:
        message = json.loads(self.ws.recv())
        if message.get("type") == "call":
            answer = self.answers.get(message["event"])
            if isinstance(answer, Exception):
                self.send({"type": "reply", "id": message["id"], "error": str(answer)})
            elif message["event"] in self.answers and answer is not None:
                self.send({"type": "reply", "id": message["id"], "data": answer})
        return message

    def until(self, match, timeout: float = 10) -> dict:
        for i, message in enumerate(self.kept):
            if match(message):
                del self.kept[i]
                return message
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.next()
            if match(message):
                return message
            self.kept.append(message)
        raise AssertionError("no matching frame")

    def call(self, event: str, data=None) -> dict:
        self.acks += 1
        ack_id = self.acks
        self.send({"type": "event", "event": event, "data": data, "id": ack_id})
        return self.until(lambda m: m.get("type") == "ack" and m.get("id") == ack_id)

    def drain(self) -> list:
        """Every frame that arrives until a fresh ack (frames are answered in order and
        a broadcast published before reaches this connection before... see `settled`)."""
        self.call("whoami")
        out, self.kept = self.kept, []
        return out

    def close(self) -> None:
        self.ws.close()


def http(server, path: str, method: str = "GET", data=None, port=None):
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port or server.port}{path}", data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            text = resp.read()
            return resp.status, (json.loads(text) if text else None)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def presence(server, room: str, worker: int) -> dict:
    status, body = http(server, f"/presence/{room}", port=server.worker_ports[worker])
    assert status == 200, body
    return body


def one_per_worker(server, query: str = "", **kw) -> list:
    """A client on each worker (by its own port), asserted to be on different pids."""
    clients = [Client(port, query, **kw) for port in server.worker_ports]
    assert len({c.pid for c in clients}) == 2
    return clients


def ids(body: dict) -> list:
    return [m["id"] for m in body["members"]]


# -- presence -------------------------------------------------------------------------


def test_presence_is_exact_on_every_worker(server):
    ann, bob = (Client(p, f"?user={u}&name={u.title()}&rooms=p1")
                for p, u in zip(server.worker_ports, ("ann", "bob")))
    assert ann.pid != bob.pid
    try:
        for worker in (0, 1):
            body = presence(server, "p1", worker)
            assert body["count"] == 2
            assert body["members"] == sorted([
                {"id": ann.id, "identity": {"user": "ann", "name": "Ann"}},
                {"id": bob.id, "identity": {"user": "bob", "name": "Bob"}}], key=lambda m: m["id"])
        assert presence(server, "nobody-here", 0) == {"pid": presence(server, "nobody-here", 0)["pid"],
                                                      "members": [], "count": 0}
        # join and leave from a frame: seen on both workers as soon as the ack came
        assert bob.call("join_room", "p2")["data"] is True
        assert [ids(presence(server, "p2", w)) for w in (0, 1)] == [[bob.id], [bob.id]]
        for port in server.worker_ports:  # every occupied room with its count, on either worker
            status, rooms = http(server, "/rooms", port=port)
            assert status == 200 and {r: rooms.get(r) for r in ("p1", "p2")} == {"p1": 2, "p2": 1}, rooms
        assert bob.call("leave_room", "p1")["data"] is True
        assert [ids(presence(server, "p1", w)) for w in (0, 1)] == [[ann.id], [ann.id]]
        # a closed connection leaves at once
        bob.close()
        wait_for(lambda: presence(server, "p2", 0)["count"] == 0, 10, "bob gone from p2")
        assert presence(server, "p2", 1)["count"] == 0
        assert "p2" not in http(server, "/rooms", port=server.worker_ports[1])[1]  # an empty room is not listed
    finally:
        ann.close()
        bob.close()


def test_join_and_leave_events_reach_the_room(server):
    ann = Client(server.worker_ports[0], "?user=ann&rooms=p3")
    bob = Client(server.worker_ports[1], "?user=bob")
    try:
        # her own join first (she is a member when it is published), then bob's
        own = ann.until(lambda m: m["type"] == "presence")
        assert (own["op"], own["id"], own["identity"]["user"]) == ("join", ann.id, "ann")
        assert bob.call("join_room", "p3")["data"] is True
        joined = ann.until(lambda m: m["type"] == "presence")
        assert joined == {"type": "presence", "op": "join", "room": "p3", "id": bob.id,
                          "identity": {"user": "bob", "name": None}}
        bob.close()
        left = ann.until(lambda m: m["type"] == "presence")
        assert left == {"type": "presence", "op": "leave", "room": "p3", "id": bob.id,
                        "identity": {"user": "bob", "name": None}}
    finally:
        ann.close()
        bob.close()


def test_refused_join_is_not_in_presence(server):
    ann = Client(server.worker_ports[0], "?user=ann")
    try:
        ann.send({"type": "join", "room": "forbidden"})
        assert ann.until(lambda m: m["type"] == "error")["message"] == "join 'forbidden' refused"
        assert presence(server, "forbidden", 1)["count"] == 0
        ann.send({"type": "join", "room": "123-4"})
        assert "connection ids" in ann.until(lambda m: m["type"] == "error")["message"]
    finally:
        ann.close()


def test_killed_worker_leaves_presence_at_once(tmp_path):
    for model in ("threads", "gevent"):
        (tmp_path / model).mkdir()
        server = start(tmp_path / model, model)
        try:
            ann = Client(server.worker_ports[0], "?user=ann&rooms=k")
            bob = Client(server.worker_ports[1], "?user=bob&rooms=k")
            carl = Client(server.worker_ports[1], "?user=carl&rooms=k")
            assert presence(server, "k", 0)["count"] == 3
            os.kill(bob.pid, signal.SIGKILL)
            wait_for(lambda: not pid_alive(bob.pid), 10, "the worker's death")
            # nothing else awaited: the replica on worker 1 skips the dead pid's connections
            body = presence(server, "k", 0)
            assert ids(body) == [ann.id] and body["count"] == 1
            # the respawned worker (a new registry) asks worker 1 and sees the same
            wait_for(lambda: bob.pid not in server.worker_pids(), 20, "the respawn")
            body = wait_for(lambda: _try_presence(server, "k", 1), 20, "the new worker answering")
            assert ids(body) == [ann.id] and body["count"] == 1 and body["pid"] != bob.pid
            ann.close()
            carl.close()
        finally:
            server.stop()


def _try_presence(server, room, worker):
    try:
        return presence(server, room, worker)
    except (OSError, AssertionError):
        return None


def test_presence_is_opt_in():
    from flask import Flask

    from uwsgi_ws import WebSocket

    app = Flask(__name__)
    live = WebSocket(app).events("/off")
    with pytest.raises(RuntimeError, match=r"ws.events\('/off', presence=True\)"):
        live.presence("lobby")
    with pytest.raises(RuntimeError, match="presence=True"):
        live.presence_count("lobby")
