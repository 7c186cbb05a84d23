"""The broadcast history kept by the mule (uwsgi_ws/history.py) and "the last
messages" on join, on real uWSGI (threads, gevent; 2 workers; the events app of
tests/test_events.py).

The ring is small (--sharedarea 16: 64 KiB) and the history keeps 20 events per
room: a busy room pushes a quiet room's messages out of the ring, the history
still has them. Without the history (tests/test_events.py's server) `last`
comes from the ring.
"""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.request

import pytest

from test_events import SSE, Client, emit, ring, start

MODELS = ["threads", "gevent"]
PER_ROOM = 20
HISTORY = ["--set-placeholder", f"uwsgi-ws-history={PER_ROOM}", "--set-placeholder", "uwsgi-ws-history-size=1M"]


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    model = request.param  # parametrized by conftest (MODELS)
    instance = start(tmp_path_factory.mktemp(f"history-{model}"), model, HISTORY)
    instance.model = model  # type: ignore[attr-defined]
    instance.wait_for_log(r"broadcast history: the last 20 events per room", timeout=20)
    yield instance
    instance.stop()
    assert not instance.crashes(), instance.log()


def push_out_of_the_ring(server, seq: int) -> None:
    """Emit fillers on another room until the ring no longer holds `seq`."""
    big = "x" * 4000
    deadline = time.monotonic() + 30
    while ring(server)["min_seq"] <= seq + 1:
        assert time.monotonic() < deadline, "the ring did not move"
        emit(server, "busy", big, event="filler")


def received(client: Client, room: str, count: int) -> list:
    got = []
    while len(got) < count:
        m = client.until(lambda m: m.get("event") == "n" and m.get("room") == room)
        got.append(m)
    return got


def quiet_room(server, room: str, count: int) -> list:
    """`count` events on `room` (data 0..count-1), as a member saw them."""
    watcher = Client(server.port)
    watcher.hello()
    watcher.send({"type": "join", "room": room})
    assert watcher.call("echo", 1)["data"] == 1  # the join was read before the emits
    for i in range(count):
        emit(server, room, i, event="n")
    seen = received(watcher, room, count)
    watcher.close()
    assert [m["data"] for m in seen] == list(range(count))
    return seen


def test_join_with_last_gets_them_from_the_history_after_they_left_the_ring(server):
    room = f"quiet-last-{server.model}"
    seen = quiet_room(server, room, 30)
    push_out_of_the_ring(server, seen[-1]["seq"])
    clients = [Client(port) for port in server.worker_ports]  # each worker asks the mule
    for c in clients:
        c.hello()
        c.send({"type": "join", "room": room, "last": 5})
        got = received(c, room, 5)
        assert [m["data"] for m in got] == [25, 26, 27, 28, 29]
        assert [m["seq"] for m in got] == [m["seq"] for m in seen[25:]]
    emit(server, room, "live", event="n")
    for c in clients:
        assert received(c, room, 1)[0]["data"] == "live"
        c.close()


def test_resume_beyond_the_ring_within_the_history_is_exact(server):
    room = f"quiet-resume-{server.model}"
    seen = quiet_room(server, room, 15)
    push_out_of_the_ring(server, seen[-1]["seq"])
    r = Client(server.worker_ports[1], "?resume=1")
    r.send({"type": "resume", "epoch": seen[0]["epoch"], "rooms": {room: seen[4]["seq"]}})
    got = received(r, room, 10)
    resumed = r.until(lambda m: m.get("type") in ("resumed", "not_recovered"))
    assert resumed["type"] == "resumed", resumed
    assert room in resumed["rooms"]
    assert [m["data"] for m in got] == list(range(5, 15))
    emit(server, room, "live", event="n")
    assert received(r, room, 1)[0]["data"] == "live"
    assert not [m for m in r.kept if m.get("type") == "not_recovered"]
    r.close()


def test_resume_beyond_the_history_is_not_recovered(server):
    room = f"quiet-old-{server.model}"
    seen = quiet_room(server, room, PER_ROOM + 5)  # the first 5 left the history
    push_out_of_the_ring(server, seen[-1]["seq"])
    r = Client(server.port, "?resume=1")
    r.send({"type": "resume", "epoch": seen[0]["epoch"], "rooms": {room: seen[2]["seq"]}})
    m = r.until(lambda m: m.get("type") in ("not_recovered", "resumed"))
    assert m["type"] == "not_recovered" and m["room"] == room and "too old" in m["reason"]
    assert f"from seq {seen[5]['seq']} on" in m["reason"]  # the oldest the history keeps
    resumed = r.until(lambda m: m.get("type") == "resumed")
    assert room not in resumed["rooms"]
    r.close()


def test_sse_last_event_id_beyond_the_ring_replays_from_the_history(server):
    room = f"quiet-sse-{server.model}"
    seen = quiet_room(server, room, 8)
    push_out_of_the_ring(server, seen[-1]["seq"])
    s = SSE(server.port, f"/live/sse?rooms={room}", last_id=f"{seen[0]['epoch']}-{seen[3]['seq']}")
    try:
        got = [s.event() for _ in range(4)]
        assert [e["id"] for e in got] == [f"{m['epoch']}-{m['seq']}" for m in seen[4:]]
        emit(server, room, "live", event="n")
        assert '"live"' in s.event()["data"]
    finally:
        s.close()


def test_sse_last_n_on_connect(server):
    room = f"quiet-sse-last-{server.model}"
    seen = quiet_room(server, room, 6)
    s = SSE(server.port, f"/live/sse?rooms={room}&last=2")
    try:
        assert [s.event()["id"] for _ in range(2)] == [f"{m['epoch']}-{m['seq']}" for m in seen[4:]]
    finally:
        s.close()


def test_a_respawned_mule_reloads_the_history_from_the_ring(server):
    room = f"respawn-{server.model}"
    seen = quiet_room(server, room, 3)
    pid = int(__import__("re").findall(r"spawned uWSGI mule 1 \(pid: (\d+)", server.log())[-1])
    loaded = server.log().count("broadcast history: the last")
    os.kill(pid, signal.SIGKILL)
    server.wait_for_log(r"broadcast history: the last 20 events per room", count=loaded + 1, timeout=20)
    c = Client(server.port)
    c.hello()
    c.send({"type": "join", "room": room, "last": 3})
    got = received(c, room, 3)
    assert [m["seq"] for m in got] == [m["seq"] for m in seen]
    c.close()


@pytest.mark.parametrize("last", [-1, "3", 1.5, True])
def test_a_bad_last_is_an_error_frame(server, last):
    c = Client(server.port)
    c.hello()
    c.send({"type": "join", "room": "lobby", "last": last})
    assert "\"last\"" in c.until(lambda m: m.get("type") == "error")["message"]
    assert c.call("echo", 2)["data"] == 2
    c.close()


def test_metrics_show_what_the_history_keeps_and_serves(server):
    room = f"metrics-{server.model}"
    quiet_room(server, room, 3)
    c = Client(server.port)
    c.hello()
    c.send({"type": "join", "room": room, "last": 3})
    received(c, room, 3)
    c.close()
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    values = {name: int(value) for name, value in re.findall(r"(?m)^(uwsgi_ws_history_\w+) (\d+)$", text)}
    assert values["uwsgi_ws_history_queries_total"] >= 1, text
    assert values["uwsgi_ws_history_replayed_total"] >= 3
    assert values["uwsgi_ws_history_messages"] >= 3
    assert 0 < values["uwsgi_ws_history_bytes"] <= 1024 * 1024
