"""Publishing from uWSGI's master while it forks (issue 18), real uWSGI, threads and gevent.

tests/apps/publish_at_import.py starts 3 publisher threads at import, so they run
in the master and publish continuously while the master forks 2 workers and the
broadcast mule. Before the fix, a child often came up stuck before running any
Python: the fork copied the GIL held by a publisher thread (the thread retried
its connect to a mule that did not exist yet). Each test checks that every
child runs Python (its post-fork hook reports) and that, from the first message
a subscriber sees, each thread's counter arrives complete and in order:

- at start;
- across kill -9 of the mule (a respawn while the threads are publishing);
- across ``uwsgi --reload`` (SIGHUP) with the threads running.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Dict, List, Set

import pytest
import websocket

from harness import read_reports, serve, wait_for

THREADS = 3
EXTRA = ["--sharedarea", "4096", "--mule=uwsgi_ws.mule:run", "--py-call-osafterfork"]


@pytest.fixture(params=["threads", "gevent"])
def model(request):
    return request.param


def start(tmp_path: Path, model: str):
    reports = tmp_path / "forks.jsonl"
    server = serve("publish_at_import:app", tmp_path, model=model, extra=EXTRA,
                   env={"PUBLISH_FORK_REPORTS": str(reports), "PUBLISH_THREADS": str(THREADS)})
    server.wait_for_port()
    return server, reports


def children_up(reports: Path, count: int, timeout: float = 20.0) -> List[dict]:
    """The post-fork reports once there are `count` (2 workers + 1 mule per start)."""
    return read_reports(reports, count, timeout)


def check_in_order(conn, messages: int) -> Dict[int, int]:
    """Read until each thread has `messages` more messages; each thread's counter must
    go up by one from the first one seen. Returns the last counter per thread."""
    last: Dict[int, int] = {}
    seen: Dict[int, int] = {}
    deadline = time.monotonic() + 30
    while len(seen) < THREADS or min(seen.values()) < messages:
        assert time.monotonic() < deadline, f"only {seen} messages per thread in 30 s"
        item = json.loads(conn.recv())
        t, n = item["t"], item["n"]
        if t in last:
            assert n == last[t] + 1, f"thread {t}: {n} after {last[t]} (lost or out of order)"
        last[t] = n
        seen[t] = seen.get(t, 0) + 1
    return last


def test_publishers_at_import_start(tmp_path, model):
    server, reports = start(tmp_path, model)
    with server:
        found = children_up(reports, 3)
        assert sorted((r["worker"], r["mule"]) for r in found) == [(0, 1), (1, 0), (2, 0)], found
        assert sorted(r["pid"] for r in found if r["worker"]) == sorted(server.worker_pids())
        conn = websocket.create_connection(server.url + "/sub", timeout=10)
        try:
            check_in_order(conn, 300)
        finally:
            conn.close()
        assert server.crashes() == [], server.log()
        assert "Traceback" not in server.log(), server.log()


def test_publishers_at_import_mule_respawn(tmp_path, model):
    server, reports = start(tmp_path, model)
    with server:
        children_up(reports, 3)
        conn = websocket.create_connection(server.url + "/sub", timeout=10)
        try:
            last = check_in_order(conn, 50)
            for round_ in range(3):
                mules = [r["pid"] for r in read_reports(reports, 3 + round_) if r["mule"]]
                os.kill(mules[-1], signal.SIGKILL)
                found = children_up(reports, 4 + round_)
                assert [r["mule"] for r in found[3 + round_:]] == [1], found  # the respawned mule ran Python
                after = check_in_order(conn, 100)
                for t, n in last.items():  # nothing lost across the respawn either
                    assert after[t] > n
                last = after
        finally:
            conn.close()
        assert "Traceback" not in server.log(), server.log()


def test_publishers_at_import_reload(tmp_path, model):
    server, reports = start(tmp_path, model)
    with server:
        first = {r["pid"] for r in children_up(reports, 3)}
        conn = websocket.create_connection(server.url + "/sub", timeout=10)
        try:
            check_in_order(conn, 50)
        finally:
            conn.close()
        os.kill(server.pid, signal.SIGHUP)  # uwsgi --reload: the master execs itself, imports the app again
        found = children_up(reports, 6, timeout=40)
        fresh: Set[int] = {r["pid"] for r in found[3:]}
        assert not fresh & first and sorted((r["worker"], r["mule"]) for r in found[3:]) == [(0, 1), (1, 0), (2, 0)]

        def reconnected():
            try:
                return websocket.create_connection(server.url + "/sub", timeout=10)
            except OSError:
                return None

        conn = wait_for(reconnected, 20, "a connection after the reload")
        try:
            check_in_order(conn, 300)  # the new master's threads, complete and in order
        finally:
            conn.close()
        assert server.crashes() == [], server.log()
