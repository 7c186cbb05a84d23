"""The history file (issue 16 item 1, ``uwsgi-ws-history-file``): a room's last
messages and resume beyond the ring survive ``uwsgi --reload`` and a full restart.

The ring is a 64 KiB file (``uwsgi-ws-ring-file``: same epoch after a reload)
and the history keeps 20 events per room. A quiet room's events are pushed out
of the ring by a busy room; after the reload the new mule has them only if it
reloaded its history file (without the file it starts from the ring: tested as
the control, so the main test can fail). Real uWSGI, threads and gevent, 2
workers; and the file's format against a real ring file (torn tail, other
epoch, compaction keeping the floors, the kill window between ring and file).
"""

from __future__ import annotations

import os
import re
import signal

import pytest
from test_history import push_out_of_the_ring, quiet_room, received

from uwsgi_ws import frames
from uwsgi_ws.broadcast.history import History, HistoryFile, restore
from uwsgi_ws.broadcast.ring import FLAG_EVENT, BroadcastRing

from test_events import Client, emit, ring, start

MODELS = ["threads", "gevent"]


def options(tmp_path, history_file=True):
    opts = ["--set-placeholder", f"uwsgi-ws-ring-file={tmp_path / 'ring'}",
            "--set-placeholder", "uwsgi-ws-ring-size=64K",
            "--set-placeholder", "uwsgi-ws-history=20",
            "--set-placeholder", "uwsgi-ws-history-size=1M",
            "--worker-reload-mercy", "30"]
    if history_file:
        opts += ["--set-placeholder", f"uwsgi-ws-history-file={tmp_path / 'history'}"]
    return opts


def reload_and_wait(server):
    before = server.log().count("broadcast history: the last")
    os.kill(server.pid, signal.SIGHUP)
    server.wait_for_log(r"broadcast history: the last 20 events per room", count=before + 1, timeout=60)


def last_n(server, room, n, marker="marker"):
    """What a client joining `room` with last=n gets before the live `marker` it emits."""
    c = Client(server.port)
    c.hello()
    c.send({"type": "join", "room": room, "last": n})
    assert c.call("echo", 1)["data"] == 1  # the join was read
    emit(server, room, marker, event="n")
    got = []
    while not got or got[-1]["data"] != marker:
        got += received(c, room, 1)
    c.close()
    return got[:-1]


@pytest.mark.parametrize("model", MODELS)
def test_last_messages_and_resume_beyond_the_ring_survive_a_reload_and_a_restart(model, tmp_path):
    files = tmp_path / "files"
    for d in (files, tmp_path / "first", tmp_path / "second"):
        d.mkdir()
    server = start(tmp_path / "first", model, options(files))
    try:
        server.wait_for_log(r"broadcast history: the last 20 events per room", timeout=20)
        seen = quiet_room(server, "quiet", 8)
        push_out_of_the_ring(server, seen[-1]["seq"])
        epoch = ring(server)["epoch"]
        reload_and_wait(server)
        assert ring(server)["epoch"] == epoch
        assert re.search(r"loaded: [1-9][0-9]* from the file", server.log())
        assert [m["seq"] for m in last_n(server, "quiet", 5)] == [m["seq"] for m in seen[3:]]
        # resume from the 3rd: the 4th..8th come from the reloaded history, then what was
        # published after the reload, each once, in order, and "resumed"
        emit(server, "quiet", "after", event="n")
        r = Client(server.worker_ports[1], "?resume=1")
        r.send({"type": "resume", "epoch": epoch, "rooms": {"quiet": seen[2]["seq"]}})
        resumed = r.until(lambda m: m.get("type") in ("resumed", "not_recovered"))
        assert resumed["type"] == "resumed", resumed
        got = [m for m in r.kept if m.get("event") == "n"]
        while len(got) < 7:
            got += received(r, "quiet", 1)
        assert [m["data"] for m in got] == [3, 4, 5, 6, 7, "marker", "after"]
        seqs = [m["seq"] for m in got]
        assert seqs == sorted(set(seqs)) and seqs[:5] == [m["seq"] for m in seen[3:]]
        r.close()
        assert not server.crashes(), server.log()
    finally:
        server.stop()
    # a full restart (a new master) with the same files: same epoch, same history
    again = start(tmp_path / "second", model, options(files))
    try:
        again.wait_for_log(r"broadcast history: the last 20 events per room", timeout=20)
        assert ring(again)["epoch"] == epoch
        assert [m["data"] for m in last_n(again, "quiet", 3, "again")] == [7, "marker", "after"]
        assert not again.crashes(), again.log()
    finally:
        again.stop()


@pytest.mark.parametrize("model", ["threads"])
def test_without_the_file_a_reload_keeps_only_what_the_ring_holds(model, tmp_path):
    server = start(tmp_path, model, options(tmp_path, history_file=False))
    try:
        server.wait_for_log(r"broadcast history: the last 20 events per room", timeout=20)
        seen = quiet_room(server, "quiet", 8)
        push_out_of_the_ring(server, seen[-1]["seq"])
        reload_and_wait(server)
        assert last_n(server, "quiet", 5) == []
    finally:
        server.stop()


@pytest.mark.parametrize("model", ["threads"])
def test_turning_the_history_off_removes_a_file_that_would_go_stale(model, tmp_path):
    history = tmp_path / "history"
    history.write_bytes(b"UWSHIST1" + bytes(16))
    server = start(tmp_path, model, [*options(tmp_path), "--set-placeholder", "uwsgi-ws-history=0"])
    try:
        server.wait_for_log(r"history off: removed the history file", timeout=20)
        assert not history.exists()
    finally:
        server.stop()


@pytest.mark.parametrize("model", ["threads"])
def test_a_history_file_without_a_ring_file_is_refused_by_name(model, tmp_path):
    server = start(tmp_path, model, ["--set-placeholder", "uwsgi-ws-history=20",
                                     "--set-placeholder", f"uwsgi-ws-history-file={tmp_path / 'h'}"])
    try:
        server.wait_for_log(r"uwsgi-ws-history-file=.* ignored: it needs the ring in a file too "
                            r"\(uwsgi-ws-ring-file\)", timeout=20)
        server.wait_for_log(r"broadcast history: the last 20 events per room", timeout=20)
    finally:
        server.stop()


# -- the file format, against a real ring file (no uWSGI needed) -----------------------------------


def event_ring(path, size=64 * 1024):
    r = BroadcastRing.from_file(str(path), size)
    r.format(1)
    return r


def add(r, history, store, channel, data):
    frame = frames.encode(frames.OP_TEXT, ('{"data":%s}' % data).encode())
    seq = r.append(frame, channel, FLAG_EVENT)
    history.append(seq, channel, frame)
    if store is not None:
        store.append(seq, channel, frame, history)
    return seq, frame


def kept(history):
    return [(seq, channel) for seq, channel, _ in history.snapshot()[2]]


def test_restore_reads_the_file_then_the_ring_after_it(tmp_path):
    r = event_ring(tmp_path / "ring")
    store = HistoryFile(str(tmp_path / "h"), r.epoch)
    history, _ = restore(r, 3, 1 << 20, store)
    for i in range(5):
        add(r, history, store, "a", i)
    add(r, history, store, "b", 0)
    # the kill window: in the ring, not yet in the file
    frame = frames.encode(frames.OP_TEXT, b'{"data":"last"}')
    r.append(frame, "b", FLAG_EVENT)
    again, from_file = restore(r, 3, 1 << 20, HistoryFile(str(tmp_path / "h"), r.epoch))
    assert from_file == 6  # a0..a4 (a0, a1 evicted again: a floor), b0
    assert kept(again) == [(3, "a"), (4, "a"), (5, "a"), (6, "b"), (7, "b")]
    assert again.floor("a") == 2 and again.query({"a": 1}, {})[0] == {"a": 3}  # gone from seq 3 on
    gone, records = again.query({"a": 2}, {})
    assert gone == {} and [seq for seq, _ in records] == [3, 4, 5]


def test_compaction_keeps_the_floors_and_a_torn_tail_is_ignored(tmp_path):
    r = event_ring(tmp_path / "ring", 1 << 20)
    path = tmp_path / "h"
    store = HistoryFile(str(path), r.epoch)
    history, _ = restore(r, 2, 1 << 20, store)
    big = '"%s"' % ("x" * 60000)
    for i in range(40):  # 2.4 MB through a history of at most ~120 KB: compacted on the way
        add(r, history, store, "a" if i % 2 else "b", big)
    assert path.stat().st_size < (1 << 20) + 200_000
    with open(path, "ab") as f:
        f.write(b"\x01" + bytes(10))  # a torn record
    again, _ = restore(r, 2, 1 << 20, HistoryFile(str(path), r.epoch))
    assert kept(again) == kept(history) == [(37, "b"), (38, "a"), (39, "b"), (40, "a")]
    assert again.floor("a") == history.floor("a") == 36
    assert again.floor("b") == history.floor("b") == 35


def test_a_file_of_another_epoch_is_ignored_and_rewritten(tmp_path):
    r = event_ring(tmp_path / "ring")
    path = tmp_path / "h"
    store = HistoryFile(str(path), r.epoch + 1)
    history = History(3, 1 << 20, 0)
    add(r, history, None, "a", 1)
    store.rewrite(history)
    r.append(frames.encode(frames.OP_TEXT, b'{"data":2}'), "a", FLAG_EVENT)
    again, from_file = restore(r, 3, 1 << 20, HistoryFile(str(path), r.epoch))
    assert from_file == 0 and kept(again) == [(1, "a"), (2, "a")]  # from the ring
    assert HistoryFile(str(path), r.epoch).read() is not None  # rewritten with this epoch


def test_a_ring_file_keeps_its_epoch_until_a_reboot_or_a_new_size(tmp_path):
    import struct

    path = tmp_path / "ring"
    first = event_ring(path)
    first.append(b"\x81\x01a", "a")
    epoch = first.epoch  # (every view maps the same file: read the values, not the views, later)
    again = event_ring(path)  # what the next mule does after a reload
    assert again.epoch == epoch and again.write_seq == 1
    struct.pack_into("<I", again.buf, 60, struct.unpack_from("<I", again.buf, 60)[0] ^ 1)  # laid out at another boot
    rebooted = event_ring(path)
    assert rebooted.epoch != epoch and rebooted.write_seq == 0
    epoch = rebooted.epoch
    resized = event_ring(path, 128 * 1024)
    assert resized.epoch != epoch


@pytest.mark.parametrize("model", ["threads"])
def test_two_instances_never_share_a_ring_file(model, tmp_path):
    from harness import UWSGI
    from test_events import APP, MODEL_ARGS

    ring_file = ["--set-placeholder", f"uwsgi-ws-ring-file={tmp_path / 'ring'}",
                 "--set-placeholder", "uwsgi-ws-ring-size=64K"]
    (tmp_path / "first").mkdir()
    first = start(tmp_path / "first", model, ring_file)
    try:
        second = UWSGI(["--master", "--http-socket", "127.0.0.1:{port}", "--module", APP, "--die-on-term",
                        "--need-app", "--sharedarea", "16", "--mule=uwsgi_ws.mule:run", *MODEL_ARGS[model],
                        *ring_file], tmp_path)
        try:
            # refused, logged, and the instance broadcasts on its own sharedarea instead
            second.wait_for_log(r"uwsgi-ws-ring-file='.*' is in use by the uWSGI instance of master pid "
                                rf"{first.pid}: give each instance its own ring file; using the sharedarea "
                                r"instead: resume will not survive a reload")
            second.wait_for_log(r"uwsgi_ws: broadcast mule 1 serving ring")
            before = ring(first)["write_seq"]
            c = Client(second.port)
            c.hello()
            emit(second, "lobby", "second", event="n")
            assert [m["data"] for m in received(c, "lobby", 1)] == ["second"]
            c.close()
            assert ring(first)["write_seq"] == before  # nothing written into the other's ring
        finally:
            second.stop()
        c = Client(first.port)  # the first instance is untouched
        c.hello()
        emit(first, "lobby", 1, event="n")
        assert [m["data"] for m in received(c, "lobby", 1)] == [1]
        c.close()
        assert not first.crashes(), first.log()
    finally:
        first.stop()


@pytest.mark.parametrize("model", ["gevent"])
def test_a_ring_file_that_cannot_be_created_falls_back_to_the_sharedarea_loudly(model, tmp_path):
    missing = tmp_path / "no such dir" / "ring"
    server = start(tmp_path, model, ["--set-placeholder", f"uwsgi-ws-ring-file={missing}"])
    try:
        server.wait_for_log(r"uwsgi-ws-ring-file='.*no such dir/ring': No such file or directory: give a path the "
                            r"instance's user can create and write .*; using the sharedarea instead")
        c = Client(server.port)
        c.hello()
        emit(server, "lobby", "still", event="n")
        assert [m["data"] for m in received(c, "lobby", 1)] == ["still"]
        c.close()
        assert not server.crashes(), server.log()
    finally:
        server.stop()
