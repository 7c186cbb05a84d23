"""Resume survives a reload (issue 16 item 1), on real uWSGI, threads and gevent.

With the instance setting ``ring-file`` the broadcast ring lives in a file every
process maps, not in a sharedarea uWSGI allocates anew at each reload: after
``uwsgi --reload`` (SIGHUP; what a touched vassal gets from the Emperor) or a
``--touch-reload``, the epoch is the same, a client resumes from its position
with nothing lost and nothing repeated, and a room's last messages are still
there. Without the setting, the epoch changes and resume says so.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from test_events import Client, emit, ring, start

MODELS = ["threads", "gevent"]


def reload_and_wait(server, how, touch):
    before = server.log().count("serving ring epoch")
    if how == "sighup":
        os.kill(server.pid, signal.SIGHUP)
    else:
        time.sleep(1.1)  # mtime resolution: the touch must be a change
        touch.write_text("reload")
    server.wait_for_log(r"uwsgi_ws: broadcast mule 1 serving ring", count=before + 1, timeout=60)


def received(client, count):
    """The next `count` "n" events: first those `until` kept while looking for another frame."""
    got = [m for m in client.kept if m.get("event") == "n"][:count]
    client.kept = [m for m in client.kept if m not in got]
    while len(got) < count:
        m = client.next()
        if m.get("event") == "n":
            got.append(m)
    return got


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("how", ["sighup", "touch"])
def test_resume_across_a_reload_loses_and_repeats_nothing(model, how, tmp_path):
    touch = tmp_path / "touch-reload"
    touch.write_text("")
    server = start(tmp_path, model, extra=[
        "--set-placeholder", f"uwsgi-ws-ring-file={tmp_path / 'ring'}",
        "--set-placeholder", "uwsgi-ws-ring-size=1M",
        "--touch-reload", str(touch), "--worker-reload-mercy", "30"])
    try:
        c = Client(server.port)
        c.hello()
        for i in range(10):
            emit(server, "lobby", i, event="n")
        before = received(c, 10)
        last = before[-1]
        epoch = ring(server)["epoch"]
        assert last["epoch"] == epoch
        reload_and_wait(server, how, touch)
        assert ring(server)["epoch"] == epoch  # the same ring: the same epoch
        for i in range(10, 15):  # published after the reload, before the client is back
            emit(server, "lobby", i, event="n")
        r = Client(server.port, "?resume=1")
        r.send({"type": "resume", "epoch": last["epoch"], "rooms": {"lobby": last["seq"]}})
        resumed = r.until(lambda m: m.get("type") in ("resumed", "not_recovered"))
        assert resumed["type"] == "resumed", resumed
        got = received(r, 5)
        assert [m["data"] for m in got] == list(range(10, 15))
        seqs = [m["seq"] for m in got]
        assert seqs == sorted(set(seqs)) and seqs[0] > last["seq"]  # numbering goes on
        r.close()
        # the room's last messages survived too (the ring, and the history reloaded from it)
        j = Client(server.port)
        j.hello()
        j.send({"type": "join", "room": "recent", "last": 3})
        for i in range(3):
            emit(server, "recent", 100 + i, event="n")
        j.close()
        k = Client(server.port)
        k.hello()
        k.send({"type": "join", "room": "recent", "last": 3})
        assert [m["data"] for m in received(k, 3)] == [100, 101, 102]
        k.close()
        assert not server.crashes(), server.log()
    finally:
        server.stop()


@pytest.mark.parametrize("model", ["threads"])
def test_without_a_ring_file_a_reload_is_a_new_epoch(model, tmp_path):
    server = start(tmp_path, model)
    try:
        c = Client(server.port)
        c.hello()
        emit(server, "lobby", 1, event="n")
        seen = received(c, 1)[0]
        reload_and_wait(server, "sighup", None)
        assert ring(server)["epoch"] != seen["epoch"]
        r = Client(server.port, "?resume=1")
        r.send({"type": "resume", "epoch": seen["epoch"], "rooms": {"lobby": seen["seq"]}})
        m = r.until(lambda m: m.get("type") == "not_recovered")
        assert m["room"] == "lobby" and "epoch" in m["reason"]
        r.close()
    finally:
        server.stop()
