"""README promises of the broadcast that only a broken-on-purpose test shows,
on real uWSGI in the threads and gevent models (tests/apps/promises_broadcast_app.py,
two workers, each also reachable on a port of its own):

- the mule's wake-up delivers: with the hubs' fallback poll lengthened to an hour
  (``uwsgi-ws-fallback-poll``), every publish still arrives at once on both workers;
- "A worker lapped by the ring (it fell a whole ring behind) closes its connections
  with 1013 too, and logs it": a worker stopped (SIGSTOP) while more than a ring is
  published, then continued; the other worker's clients keep everything.

One-line mutants of hub.py each test was seen to fail on (both models): the wake-up
fd not registered with the poller; Hub._lapped without its fail_slow(1013), or
logging at debug instead of warning.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from pathlib import Path

import pytest

from harness import UWSGI, free_port, stop_and_check
from wsraw import closing, connect, gather

APP = "promises_broadcast_app:app"
MODEL_ARGS = {
    "threads": ["--processes", "2", "--threads", "8"],
    "gevent": ["--processes", "2", "--gevent", "50"],
}


def start(tmp: Path, model: str, extra=()) -> UWSGI:
    """Two workers, the broadcast mule, `extra`; `server.worker_ports[i]` reaches worker i + 1 only."""
    worker_ports = [free_port(), free_port()]
    server = UWSGI([
        "--master", "--http-socket", "127.0.0.1:{port}",
        "--http-socket", f"127.0.0.1:{worker_ports[0]}", "--http-socket", f"127.0.0.1:{worker_ports[1]}",
        "--map-socket", "1:1", "--map-socket", "2:2",
        "--module", APP, "--die-on-term", "--need-app", "--disable-logging",
        "--mule=uwsgi_ws.mule:run", *MODEL_ARGS[model], *extra,
    ], tmp)
    server.worker_ports = worker_ports  # type: ignore[attr-defined]
    server.wait_for_log(r"uwsgi_ws: broadcast mule 1 serving ring", timeout=20)
    return server


def http(port: int, method: str, path: str) -> bytes:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=b"" if method == "POST" else None,
                                 method=method)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read()


def hub(port: int) -> dict:
    return json.loads(http(port, "GET", "/hub"))


def on_both_workers(server: UWSGI, per_worker: int = 2) -> list:
    clients = []
    for port in server.worker_ports:
        clients += connect(port, "/sub", per_worker)
    assert len({c.pid for c in clients}) == 2, "the workers' own sockets reached one worker"
    return clients


@pytest.mark.parametrize("model", ["threads", "gevent"])
def test_the_wake_up_delivers_without_the_fallback_poll(model, tmp_path):
    server = start(tmp_path, model, ["--sharedarea", "4096", "--set-placeholder", "uwsgi-ws-fallback-poll=3600"])
    try:
        for port in server.worker_ports:  # the setting reached both hubs (else this test proves nothing)
            assert hub(port)["fallback_poll"] == 3600.0
        with closing(on_both_workers(server)) as clients:
            for i in range(10):
                http(server.port, "POST", f"/publish/1?prefix=w{i}-")
                # an hour's fallback poll: only the wake-up can deliver within the timeout
                gather(clients, lambda c: len(c.messages) > i, 10, f"publish {i} without the fallback poll")
            assert all(c.messages == [f"w{i}-0" for i in range(10)] for c in clients), \
                [c.messages for c in clients]
    finally:
        stop_and_check(server)


RING_CHUNK = 50  # messages per publish while the stopped worker is lapped: 25 KB, under a ring
PAD = 500  # bytes per message: 6 chunks (150 KB) are more than two rings of 64 KiB


@pytest.mark.parametrize("model", ["threads", "gevent"])
def test_a_lapped_worker_closes_its_connections_with_1013_and_logs_it(model, tmp_path):
    server = start(tmp_path, model, ["--sharedarea", "16"])  # 64 KiB: the smallest ring
    try:
        with closing(on_both_workers(server)) as clients:
            stopped_pid = clients[0].pid
            stopped = [c for c in clients if c.pid == stopped_pid]
            running = [c for c in clients if c.pid != stopped_pid]
            running_port = server.worker_ports[1] if clients[-1] in running else server.worker_ports[0]
            assert hub(running_port)["pid"] != stopped_pid
            os.kill(stopped_pid, signal.SIGSTOP)
            try:
                for chunk in range(6):
                    # one chunk at a time, each read by the running worker's clients before
                    # the next: that worker is never more than a chunk behind
                    http(running_port, "POST", f"/publish/{RING_CHUNK}?prefix=c{chunk}-&pad={PAD}")
                    gather(running, lambda c: len(c.messages) >= (chunk + 1) * RING_CHUNK, 20,
                           f"chunk {chunk} on the running worker")
            finally:
                os.kill(stopped_pid, signal.SIGCONT)
            gather(stopped, lambda c: c.close_code is not None, 20, "the lapped worker's close frames")
            for c in stopped:
                assert c.messages[-1] == ("close", 1013), c.messages[-3:]
            server.wait_for_log(rf"worker {stopped_pid} was lapped by the broadcast ring; "
                                rf"closed {len(stopped)} connection\(s\) with 1013", timeout=10)
            # the running worker was never lapped: its clients have everything, in order, still open
            expected = [f"c{k}-{i}" + "." * PAD for k in range(6) for i in range(RING_CHUNK)]
            for c in running:
                assert c.messages == expected and c.close_code is None
                c.send_text("ping")
            gather(running, lambda c: c.messages[-1:] == ["pong"], 10, "the running worker's answers")
            assert hub(running_port)["lapped"] == 0
            lapped = [hub(port) for port in server.worker_ports if hub(port)["pid"] == stopped_pid]
            assert lapped[0]["lapped"] == 1, lapped
    finally:
        stop_and_check(server)
