"""publish() and emit() from threads the app starts itself (issue 12 item 5), on real
uWSGI in the threads and gevent models.

Before the publish socket, `ws.publish()` from a `threading.Thread` raised in the
threads model and killed a gevent worker (SIGSEGV in uwsgi.mule_msg). The app is
tests/apps/publish_app.py: POST /thread-publish starts threads in the worker that
publish (or `live.emit`) in a loop and report what they got back.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.request

import pytest
import websocket

from harness import read_reports, serve, wait_for

APP = "publish_app:app"
EXTRA = ["--sharedarea", "4096", "--mule=uwsgi_ws.mule:run"]


def post(server, path: str) -> int:
    req = urllib.request.Request(server.http + path, data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status


def subscriber(server, path: str = "/sub") -> websocket.WebSocket:
    conn = websocket.create_connection(server.url + path, timeout=30)
    assert conn.recv().startswith("ready:")
    return conn


def receive(conn: websocket.WebSocket, count: int) -> list:
    return [conn.recv() for _ in range(count)]


def test_publish_from_threads_of_a_worker(server, tmp_path):
    """3 threads x 400 publishes from inside a worker: no crash, the worker keeps its pid,
    every thread gets increasing seqs, and a subscriber receives every message once,
    each thread's in its order."""
    report = tmp_path / f"threads-{server.model}.jsonl"
    wait_for(lambda: len(server.worker_pids()) == 2, 10, "both workers' spawn lines")
    pids = server.worker_pids()
    clients = [subscriber(server) for _ in range(2)]
    try:
        assert post(server, "/thread-publish/400?threads=3&prefix=t&report=" + str(report)) == 202
        lines = read_reports(report, 3, timeout=60)
        assert [line["error"] for line in lines] == [None] * 3, lines
        for line in lines:
            assert line["published"] == 400 and line["seqs"] == sorted(set(line["seqs"])), line
        for conn in clients:
            got = receive(conn, 1200)
            for t in range(3):
                mine = [m for m in got if m.startswith(f"t{t}-")]
                assert mine == [f"t{t}-{i}" for i in range(400)], (t, mine[:5])
    finally:
        for conn in clients:
            conn.close()
    assert server.worker_pids() == pids, server.log()
    assert not server.crashes(), server.log()


def sse_events(server, room: str, count: int) -> list:
    """Open an SSE stream of `room` on /live, return a function that reads `count` events."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(f"GET /live/sse?rooms={room} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    buf = b""
    while b": uwsgi_ws event stream" not in buf:  # subscribed once the stream's preamble is out
        buf += sock.recv(65536)

    def read() -> list:
        nonlocal buf
        try:
            while buf.count(b"\nid: ") + buf.startswith(b"id: ") < count or not buf.endswith(b"\n\n"):
                chunk = sock.recv(65536)
                assert chunk, buf
                buf += chunk
        finally:
            sock.close()
        return [(m.group(1), m.group(2), json.loads(m.group(3)))
                for m in re.finditer(rb"id: (\S+)\nevent: (\S+)\ndata: (.*)\n", buf)]

    return read


def test_emit_from_a_thread_reaches_sse_with_seq_and_epoch(server, tmp_path):
    """live.emit from a threading.Thread: each event carries the instance's seq and epoch,
    and the SSE stream's ids are exactly epoch-seq."""
    report = tmp_path / f"emit-{server.model}.jsonl"
    read = sse_events(server, "r1", 50)
    assert post(server, "/thread-publish/50?emit=1&channel=r1&report=" + str(report)) == 202
    assert read_reports(report, 1, timeout=30)[0]["error"] is None
    events = read()
    assert len(events) == 50
    assert [e[2]["data"]["n"] for e in events] == list(range(50))
    for event_id, name, message in events:
        assert name == b"tick" and message["room"] == "r1"
        assert event_id.decode() == f"{message['epoch']}-{message['seq']}"
    seqs = [e[2]["seq"] for e in events]
    assert seqs == sorted(set(seqs))
    assert not server.crashes(), server.log()


def _hold_writer_lock(server) -> subprocess.Popen:
    """A process holding the instance's ring writer lock (uwsgi_ws.broadcast.writer) until killed."""
    path = f"/dev/shm/uwsgi_ws-ring-{os.getuid()}-{server.pid}.lock"
    assert os.path.exists(path), f"no writer lock file {path}"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({path!r}, os.O_RDWR)\nfcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\n"
         "time.sleep(600)"], stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
    return holder


@pytest.mark.parametrize("wait_on", ["mule", "lock"])
@pytest.mark.parametrize("model", ["threads", "gevent"])
def test_a_waiting_publish_never_blocks_the_worker(model, wait_on, tmp_path):
    """One worker. `mule`: every publish goes through the mule (publish-direct off) and
    the mule is stopped (SIGSTOP). `lock`: the worker appends itself and another process
    holds the ring's writer lock, then is killed (kill -9: the kernel drops its lock).
    A publish waits, and the worker keeps serving other requests meanwhile (a greenlet
    waits through the runtime, never on a blocking call, which would freeze a gevent
    worker); once the wait ends the publish completes and is delivered once."""
    extra = [*EXTRA, "--processes", "1"]
    if wait_on == "mule":
        extra += ["--set-placeholder", "uwsgi-ws-publish-direct=false"]
    server = serve(APP, tmp_path, model=model, extra=extra)
    try:
        server.wait_for_log(r"broadcast mule 1 serving ring", timeout=20)
        mule = int(re.findall(r"spawned uWSGI mule 1 \(pid: (\d+)\)", server.log())[-1])
        conn = subscriber(server)
        result: dict = {}
        mark = tmp_path / "publishing"
        if wait_on == "mule":
            os.kill(mule, signal.SIGSTOP)
            holder = None
        else:
            holder = _hold_writer_lock(server)
        try:
            def waiting_publish() -> None:
                req = urllib.request.Request(server.http + f"/publish?text=after-the-stop&mark={mark}", data=b"",
                                             method="POST")
                with urllib.request.urlopen(req, timeout=30) as resp:
                    result["status"] = resp.status

            publisher = threading.Thread(target=waiting_publish)
            publisher.start()
            wait_for(mark.exists, 10, "the publish to start")
            for _ in range(5):  # the same (only) worker answers while its publish waits
                with urllib.request.urlopen(server.http + "/pid", timeout=5) as resp:
                    assert resp.status == 200
            assert publisher.is_alive() and "status" not in result, f"the publish did not wait for the {wait_on}"
        finally:
            if holder is None:
                os.kill(mule, signal.SIGCONT)
            else:
                holder.kill()
                holder.wait()
        publisher.join(30)
        assert result.get("status") == 204, result
        assert conn.recv() == "after-the-stop"
        conn.close()
        assert len(server.worker_pids()) == 1 and not server.crashes(), server.log()
    finally:
        server.stop()


def test_the_mule_removes_writer_lock_files_of_gone_instances(tmp_path):
    """The ring's writer lock file is per instance (its master pid): the mule removes those
    of masters that are gone when it starts, keeps its own instance's, and the workers'
    publishes take it (delivered, counted as published by the worker)."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = f"/dev/shm/uwsgi_ws-ring-{os.getuid()}-{gone.pid}.lock"
    open(stale, "w").close()
    server = serve(APP, tmp_path, model="gevent", extra=[*EXTRA, "--processes", "1"])
    try:
        server.wait_for_log(r"broadcast mule 1 serving ring", timeout=20)
        assert not os.path.exists(stale), "a gone instance's writer lock file was left"
        assert os.path.exists(f"/dev/shm/uwsgi_ws-ring-{os.getuid()}-{server.pid}.lock")
        conn = subscriber(server)
        assert post(server, "/publish?text=direct") == 204
        assert conn.recv() == "direct"
        conn.close()
        assert not server.crashes(), server.log()
    finally:
        server.stop()
        if os.path.exists(stale):
            os.unlink(stale)
