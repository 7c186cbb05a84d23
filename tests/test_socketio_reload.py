"""A graceful reload (``uwsgi --reload``: SIGHUP to the master) with socket.io-client
(Node, v4, reconnection on: tests/js/socketio/socketio_reload.mjs) connected to a
Flask-SocketIO app on uwsgi_ws (tests/apps/socketio_reload_app.py), 2 workers,
threads and gevent, issue 14.

- WebSocket sessions, including those whose upgrade reached the other worker and
  was handed to the owner (uwsgi_ws/socketio/handoff.py; the app notes where each
  request landed), are counted by the metrics route like any uwsgi_ws WebSocket,
  and the reload closes every one with 1012 (service restart): the client sees
  "transport close" with code 1012, reconnects and is served by the new workers.
- Polling-only sessions: the reload answers the waiting poll (held by the owner,
  in a request or a handed-off one) with Engine.IO's CLOSE packet at once: the
  client sees "transport close" / "transport closed by the server" and
  reconnects, instead of its poll being held until the ping interval (25 s) and
  the session dying with its worker. The test waits until every session's poll
  is in engineio at the owner (the app notes it): a poll still on its way when
  its owner stops gets 400 from whichever worker takes it (docs/socketio.md).
  A poll handed to the owner is served outside uWSGI's requests: the owner's
  exit waits for it (uwsgi.atexit), or the client would see its socket closed.

On the code before these fixes every test here fails: the metrics miss the
handed-off WebSockets, the clients see transport errors (400 or a closed socket).

worker-reload-mercy is 60 s, longer than any wait here: a close can only come from
the graceful path, never from the master killing a worker ("NO MERCY").
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any, Dict, List

import pytest
from test_socketio import JS, NodeClients, node_ready, worker_of

from harness import serve, wait_for
from metrics_client import wait_metrics

DRIVER = JS / "socketio_reload.mjs"
BROADCAST = ["--sharedarea", "4096", "--mule=uwsgi_ws.mule:run"]
MERCY = 60
ROUTE = "/socket.io/"


class ReloadClients(NodeClients):
    """`count` socket.io-client sockets with reconnection on (socketio_reload.mjs)."""

    def __init__(self, url: str, count: int, mode: str = "default") -> None:
        self.count = count
        self.proc = subprocess.Popen([node_ready(), str(DRIVER), url, str(count), mode], cwd=JS,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.events: List[Dict[str, Any]] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def of(self, i: int, kind: str) -> List[Dict[str, Any]]:
        return self.matching(lambda e: e.get("i") == i and e["type"] == kind)


@pytest.fixture(params=["threads", "gevent"])
def instance(request, tmp_path):
    arrivals = tmp_path / "arrivals.jsonl"
    server = serve("socketio_reload_app:app", tmp_path, model=request.param,
                   extra=[*BROADCAST, "--worker-reload-mercy", str(MERCY)],
                   env={"SOCKETIO_ARRIVALS": str(arrivals)})
    groups: List[ReloadClients] = []
    try:
        wait_for(lambda: len(server.worker_pids()) == 2, 60, f"2 worker spawn lines in {server.log_path}")
        server.wait_for_log(r"uwsgi_ws: broadcast mule 1 serving ring", timeout=60)
        yield server, arrivals, groups
    finally:
        for group in groups:
            group.close()
        server.stop()
    log = server.log()
    assert not server.crashes(), log
    assert server.unexpected_tracebacks() == [], log
    assert "NO MERCY" not in log, log  # every old worker ended by itself


def handed_off(arrivals: Path, sids: set, upgrade: bool) -> List[Dict[str, Any]]:
    """The requests of `sids` that landed on a worker other than their owner."""
    if not arrivals.exists():
        return []
    lines = [json.loads(line) for line in arrivals.read_text().splitlines() if line.strip()]
    return [a for a in lines if a["event"] == "arrived" and a["sid"] in sids and a["upgrade"] == upgrade
            and a["worker"] != worker_of(a["sid"])]


def arrivals_of(arrivals: Path, sid: str) -> List[Dict[str, Any]]:
    return [a for a in map(json.loads, arrivals.read_text().splitlines()) if a["sid"] == sid]


def connect_until_handed_off(server, arrivals: Path, groups: List[ReloadClients], mode: str) -> Dict[tuple, str]:
    """Batches of 4 clients until the sessions belong to both workers and at least one
    session's upgrade (default mode) or poll (polling mode) was handed to its owner.
    Returns {(group, i): engine sid}."""
    sessions: Dict[tuple, str] = {}
    for _ in range(8):
        group = ReloadClients(server.http, 4, mode)
        groups.append(group)
        for line in group.connected(30):
            sessions[(group, line["i"])] = line["eio"]
        if mode == "default":
            for i in range(group.count):
                group.wait(lambda e, i=i: e.get("i") == i and e["type"] == "upgrade", 1, 30, f"client {i}'s upgrade")
        owners = {worker_of(sid) for sid in sessions.values()}
        if owners == {1, 2} and handed_off(arrivals, set(sessions.values()), upgrade=(mode == "default")):
            return sessions
    raise AssertionError(f"no hand-off among {len(sessions)} sessions: {arrivals.read_text()}")


def reconnected_to_new_workers(server, sessions: Dict[tuple, str], old: List[int]) -> None:
    """Each client connects again (a new Engine.IO session) and its handler runs in a new worker."""
    new = wait_for(lambda: (lambda p: p if len(p) == 2 and not set(p) & set(old) else None)(server.worker_pids()),
                   60, "the 2 reloaded workers")
    for (group, i), sid in sessions.items():
        again = group.wait(lambda e, i=i, sid=sid: e.get("i") == i and e["type"] == "connect" and e["eio"] != sid,
                           1, 60, f"client {i}'s reconnect")[0]
        group.emit(i, "whoami")
        me = group.wait(lambda e, i=i, s=again["id"]: e.get("i") == i and e["type"] == "event"
                        and e["event"] == "me" and e["args"][0]["sid"] == s, 1, 30, f"client {i}'s whoami")[0]
        assert me["args"][0]["pid"] in new, (me, new, old)


def test_reload_closes_socketio_websockets_with_1012(instance):
    server, arrivals, groups = instance
    sessions = connect_until_handed_off(server, arrivals, groups, "default")
    count = len(sessions)
    # every WebSocket of the app is in the metrics, the handed-off ones too
    wait_metrics(server.http, lambda m: m.total("uwsgi_ws_connections_open", route=ROUTE) == count, 30,
                 f"{count} open connections on {ROUTE}")
    m = wait_metrics(server.http, lambda m: m.total("uwsgi_ws_upgrades_accepted_total", route=ROUTE) >= count, 30,
                     f"{count} upgrades on {ROUTE}")
    assert m.total("uwsgi_ws_connections_open", route=ROUTE) == count

    old = server.worker_pids()
    os.kill(server.pid, signal.SIGHUP)  # what `uwsgi --reload pidfile` sends
    for (group, i), sid in sessions.items():
        closed = group.wait(lambda e, i=i, sid=sid: e.get("i") == i and e["type"] == "engine_close"
                            and e["eio"] == sid, 1, 30, f"the close of {sid}")[0]
        assert (closed["reason"], closed["transport"], closed["code"]) == ("transport close", "websocket", 1012), \
            (sid, closed, list(handed_off(arrivals, {sid}, True)))
        gone = group.wait(lambda e, i=i: e.get("i") == i and e["type"] == "disconnect", 1, 30, "disconnect")[0]
        assert gone["reason"] == "transport close", gone
    reconnected_to_new_workers(server, sessions, old)


def test_reload_answers_waiting_polls_with_close(instance):
    server, arrivals, groups = instance
    sessions = connect_until_handed_off(server, arrivals, groups, "polling")

    def polls_waiting() -> bool:
        """Every session's poll after its connect (its 2nd GET at least) is in engineio at the
        owner: the poll the reload must answer (not one still on its way)."""
        for sid in sessions.values():
            lines = arrivals_of(arrivals, sid)
            gets = [a for a in lines if a["method"] == "GET" and a["event"] == "arrived"]
            served = [a for a in lines if a["method"] == "GET" and a["event"] == "serving"]
            if len(gets) < 2 or len(served) < len(gets):
                return False
        return True

    wait_for(polls_waiting, 30, "a waiting poll of every session")
    old = server.worker_pids()
    os.kill(server.pid, signal.SIGHUP)
    for (group, i), sid in sessions.items():
        closed = group.wait(lambda e, i=i, sid=sid: e.get("i") == i and e["type"] == "engine_close"
                            and e["eio"] == sid, 1, 60, f"the close of {sid}")[0]
        # the CLOSE packet in the poll's answer (engine.io-client's polling transport says so);
        # a poll held until the worker died would read "transport error" / "xhr poll error"
        assert (closed["reason"], closed["description"], closed["transport"]) == \
            ("transport close", "transport closed by the server", "polling"), \
            json.dumps([sid, closed, group.matching(lambda e, i=i: e.get("i") == i), arrivals_of(arrivals, sid)])
    reconnected_to_new_workers(server, sessions, old)
    assert not any(e["type"] == "upgrade" for g in groups for e in g.events)
