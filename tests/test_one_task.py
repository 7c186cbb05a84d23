"""One task per connection (issue 11): the handler's own task reads while it waits
in `receive`; while it is busy elsewhere the worker's fd watcher answers pings and
the close handshake, keeps the keepalive timers, and stops reading once `max_queue`
messages wait (back-pressure)."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time

import pytest

from harness import read_reports
from wsraw import BINARY, CLOSE, PING, PONG, RawWebSocket

APP = "one_task_app:app"
MODELS = ["threads", "gevent"]


def _stats(conns):
    """Per worker pid: (open connections, tasks, watched), asked on every connection
    (again while the worker's one-off stop-hooks thread is still ending: tasks None)."""
    seen = {}
    for raw in conns:
        for _ in range(100):
            raw.send_text("stats")
            while True:
                frame = raw.recv_frame()
                if frame.opcode == PING:
                    raw.send_frame(PONG, frame.payload)
                    continue
                break
            s = json.loads(frame.payload)
            if s["tasks"] is not None:
                break
        seen[s["pid"]] = s
    return seen


def test_an_idle_connection_costs_its_handler_task_and_nothing_more(server):
    # threads: the handler runs on a core thread uWSGI started already (0 more per
    # connection); gevent: the handler's greenlet (1 more). Two tasks (a reader beside
    # the handler) would add one more per connection.
    per_conn = 1 if server.model == "gevent" else 0
    first, more = (6, 6) if server.model == "threads" else (10, 30)
    conns = [RawWebSocket(server.port, "/idle") for _ in range(first)]
    try:
        before = _stats(conns)
        conns += [RawWebSocket(server.port, "/idle") for _ in range(more)]
        after = _stats(conns)
        compared = 0
        for pid, b in before.items():
            a = after.get(pid)
            if a is None or a["open"] == b["open"]:
                continue
            compared += 1
            assert a["tasks"] - b["tasks"] == per_conn * (a["open"] - b["open"]), (server.model, b, a)
        assert compared, (before, after)
    finally:
        for raw in conns:
            raw.sock.close()


def _frames_until(raw, opcode):
    """Frames up to the first of `opcode`, answering the server's keepalive pings."""
    while True:
        frame = raw.recv_frame(timeout=5)
        if frame.opcode == PING:
            raw.send_frame(PONG, frame.payload)
            continue
        if frame.opcode == opcode:
            return frame


def test_a_busy_handler_still_answers_pings_and_the_close_handshake(server, tmp_path):
    gate, report = tmp_path / "gate", tmp_path / "report.jsonl"
    with RawWebSocket(server.port, f"/busy?gate={gate}&report={report}") as raw:
        assert raw.recv_frame().payload == b"busy"
        raw.send_frame(PING, b"are you there")
        assert _frames_until(raw, PONG).payload == b"are you there"
        for text in ("a", "b", "c"):
            raw.send_text(text)
        raw.send_close(1000, "bye")
        frame = _frames_until(raw, CLOSE)  # answered while the handler is still busy
        assert frame.close_code == 1000
        raw.wait_eof()
        assert not gate.exists()
        gate.touch()
        (line,) = read_reports(report)
    # every message sent before the close reaches the handler, in order, then the close
    assert line["count"] == 3 and line["order"] == ["a", "b", "c"], line
    assert line["close_code"] == 1000


def test_a_silent_peer_of_a_busy_handler_is_closed_by_keepalive(server, tmp_path):
    gate, report = tmp_path / "gate", tmp_path / "report.jsonl"
    with RawWebSocket(server.port, f"/busy?gate={gate}&report={report}") as raw:
        assert raw.recv_frame().payload == b"busy"
        pings = 0
        while True:
            frame = raw.recv_frame(timeout=5)
            if frame.opcode != PING:
                break
            pings += 1  # never answered
        assert frame.opcode == CLOSE and frame.close_code == 1011, frame
        assert pings >= 1
        gate.touch()
        (line,) = read_reports(report)
    assert line["count"] == 0 and line["close_code"] == 1011


def test_max_queue_stops_reading_while_the_handler_is_busy(server, tmp_path):
    # max_queue=4: the server stops reading after a few messages, so TCP fills up and
    # the client's send blocks; once the handler reads, every message arrives, in order.
    gate, report = tmp_path / "gate", tmp_path / "report.jsonl"
    size, count = 256 * 1024, 200  # 50 MiB: far more than both sockets' buffers hold
    raw = RawWebSocket(server.port, f"/busy?gate={gate}&report={report}&keepalive=0")
    assert raw.recv_frame().payload == b"busy"
    frames = [raw.encode(BINARY, b"%08d" % i + b"x" * (size - 8)) for i in range(count)]
    sent = [0]
    blocked = threading.Event()
    done = threading.Event()

    def writer():
        sock = raw.sock
        sock.settimeout(None)
        sock.setblocking(False)
        for frame in frames:
            view = memoryview(frame)
            while view:
                try:
                    n = sock.send(view)
                except BlockingIOError:
                    blocked.set()
                    import select

                    select.select([], [sock], [], 1.0)
                    continue
                view = view[n:]
            sent[0] += 1
        done.set()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        assert blocked.wait(30), "the server read everything: no back-pressure"
        assert not done.is_set()
        # the kernel buffers hold a few MiB at most; the server must not have taken 50 MiB
        assert sent[0] < count // 2, sent[0]
        gate.touch()
        assert done.wait(60), f"sent {sent[0]} of {count} after the handler started reading"
        thread.join(5)
        raw.sock.setblocking(True)
        raw.sock.sendall(raw.encode(CLOSE, struct.pack("!H", 1000)))
        (line,) = read_reports(report, timeout=30)
    finally:
        try:
            raw.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        raw.sock.close()
    assert line["count"] == count, line["count"]
    assert line["sizes"] == [size]
    assert line["order"] == ["%08d" % i for i in range(count)]
    assert line["close_code"] == 1000



class _Client:
    """A watcher client on one end of a socket pair, recording its callbacks."""

    def __init__(self, rt, sock):
        self.sock = sock
        self.calls = []
        self.fired = rt.Event()

    def fileno(self):
        return self.sock.fileno()

    def on_ready(self, readable, writable):
        self.calls.append((readable, writable))
        self.fired.set()


@pytest.mark.parametrize("model", ["threads", "gevent"])
def test_the_fd_watcher_is_one_shot_and_keeps_deadlines(model):
    # The worker's watcher itself (runtime.fd_watcher), on real sockets, outside uWSGI.
    from uwsgi_ws import runtime

    rt = runtime.load(model)
    watcher = rt.fd_watcher()
    a, b = socket.socketpair()
    client, other = _Client(rt, a), _Client(rt, b)
    try:
        watcher.watch(client, True, False, None)
        b.send(b"x")
        assert client.fired.wait(5) and client.calls == [(True, False)]
        assert watcher.watched == 0  # disarmed by the report
        client.fired.clear()
        watcher.watch(client, True, False, None)  # still unread: reported again once re-armed
        assert client.fired.wait(5) and client.calls[-1] == (True, False)
        client.fired.clear()
        a.recv(10)
        watcher.watch(client, True, True, None)
        assert client.fired.wait(5) and client.calls[-1] == (False, True)
        client.fired.clear()
        # a deadline alone; the read watch is replaced, so the pending byte is not reported
        b.send(b"y")
        watcher.watch(client, False, False, time.monotonic() + 0.05)
        assert client.fired.wait(5) and client.calls[-1] == (False, False)
        client.fired.clear()
        # unwatch disarms: data arriving after it is not reported (another client's
        # timer, due later than any report of the data would be, says when to look)
        a.recv(10)
        watcher.watch(client, True, False, None)
        watcher.unwatch(client)
        b.send(b"z")
        watcher.watch(other, False, False, time.monotonic() + 0.05)
        assert other.fired.wait(5) and other.calls == [(False, False)]
        assert len(client.calls) == 4, client.calls
    finally:
        watcher.forget(client)
        watcher.forget(other)
        a.close()
        b.close()
