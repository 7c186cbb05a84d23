"""Flask-SocketIO's announcement example on uwsgi_ws (issue 14), under real uWSGI.

tests/apps/socketio_announce_app.py is the example with its import line
changed (``from uwsgi_ws.socketio import SocketIO, emit``). It runs with
2 workers, threads and gevent, the broadcast mule and ring, no Redis. The
clients are Node's ``socket.io-client`` v4 (tests/js/socketio/driver.mjs):
default options (HTTP long-polling first, then the upgrade to WebSocket),
WebSocket only, and polling only (the fallback when WebSockets are blocked).
uWSGI gives each request to any worker, so a session's polls, posts and
upgrade reach the other worker about half the time: the session is handed
to its owner (uwsgi_ws/socketio/handoff.py).

`NodeClients` and `crowd` are used by the other tests/test_socketio_*.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest

JS = Path(__file__).resolve().parent / "js" / "socketio"
DRIVER = JS / "driver.mjs"

APP = "socketio_announce_app:app"
MODELS = ["threads", "gevent"]
BROADCAST = ["--sharedarea", "4096", "--mule=uwsgi_ws.mule:run"]
EXTRA = [*BROADCAST, "--env", "SOCKETIO_BACKGROUND_PERIOD=0.5"]


def node_ready() -> str:
    """The node binary, with socket.io-client installed in tests/js/socketio
    (``npm ci`` from the committed lock file when missing)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the Socket.IO tests drive socket.io-client v4 (apt-get install nodejs)")
    if not (JS / "node_modules" / "socket.io-client").exists():
        npm = shutil.which("npm")
        assert npm, "npm is missing: needed once to install socket.io-client in tests/js/socketio"
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS, check=True, timeout=300,
                       stdout=subprocess.DEVNULL)
    return node


class NodeClients:
    """`count` socket.io-client sockets in one node process (tests/js/socketio/driver.mjs).

    `events` holds every line the driver printed (dicts); `wait` blocks until a
    predicate has enough matches (woken by each new line, no polling).
    """

    def __init__(self, url: str, count: int, mode: str = "default", auth: Optional[Dict[str, Any]] = None,
                 path: str = "") -> None:
        args = [node_ready(), str(DRIVER), url + path, str(count), mode]
        if auth is not None:
            args.append(json.dumps(auth))
        self.count = count
        self.proc = subprocess.Popen(args, cwd=JS, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        self.events: List[Dict[str, Any]] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            with self._cond:
                self.events.append(json.loads(line))
                self._cond.notify_all()
        with self._cond:
            self.events.append({"type": "exited"})
            self._cond.notify_all()

    def wait(self, pred: Callable[[Dict[str, Any]], bool], count: int = 1, timeout: float = 15.0,
             what: str = "events") -> List[Dict[str, Any]]:
        """The events matching `pred`, once there are at least `count` of them."""
        with self._cond:
            ok = self._cond.wait_for(lambda: len([e for e in self.events if pred(e)]) >= count, timeout)
            found = [e for e in self.events if pred(e)]
        if not ok:
            stderr = ""
            if self.proc.poll() is not None and self.proc.stderr is not None:
                stderr = self.proc.stderr.read()
            raise AssertionError(f"timed out waiting for {count} {what}; got {len(found)}; "
                                 f"last lines: {self.events[-8:]} {stderr}")
        return found

    def matching(self, pred: Callable[[Dict[str, Any]], bool]) -> List[Dict[str, Any]]:
        with self._cond:
            return [e for e in self.events if pred(e)]

    def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def emit(self, i: int, event: str, *args: Any, ack: Optional[str] = None) -> None:
        if ack is None:
            self.send(i=i, emit=[event, *args])
        else:
            self.send(i=i, emit=[event, *args], ack=ack)

    def connected(self, timeout: float = 20.0) -> List[Dict[str, Any]]:
        """The connect lines of every client (fails on a connect_error)."""
        found = self.wait(lambda e: e["type"] in ("connect", "connect_error"), self.count, timeout, "connects")
        errors = [e for e in found if e["type"] == "connect_error"]
        assert not errors, errors
        return sorted(found, key=lambda e: e["i"])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(exit=True)
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


def worker_of(sid: str) -> int:
    """The uWSGI worker owning a Socket.IO sid (uwsgi_ws.socketio: ``<worker>.<random>``)."""
    head, _, _ = sid.partition(".")
    return int(head)


class Crowd:
    """Clients (in one or more node processes) covering both workers."""

    def __init__(self) -> None:
        self.groups: List[NodeClients] = []
        self.members: List[tuple] = []  # (group, index, sid)

    def workers(self) -> set:
        return {worker_of(sid) for _, _, sid in self.members}

    def each(self) -> List[tuple]:
        return list(self.members)

    def close(self) -> None:
        for group in self.groups:
            group.close()


def crowd(url: str, mode: str, batch: int = 4, workers: int = 2, **kwargs: Any) -> Crowd:
    """Connect batches of `batch` clients until their sessions belong to `workers`
    different workers (each batch lands on a worker at random: 6 batches
    leave about one chance in 2,000 to fail)."""
    result = Crowd()
    try:
        for _ in range(6):
            group = NodeClients(url, batch, mode, **kwargs)
            result.groups.append(group)
            for line in group.connected():
                result.members.append((group, line["i"], line["id"]))
            if len(result.workers()) >= workers:
                return result
        raise AssertionError(f"every session landed on workers {result.workers()}")
    except BaseException:
        result.close()
        raise


def responses(group: NodeClients, i: int, data: str) -> List[Dict[str, Any]]:
    return group.matching(lambda e: e["i"] == i and e["type"] == "event" and e["event"] == "my response"
                          and e["args"][0].get("data") == data)


def wait_response(group: NodeClients, i: int, data: str, timeout: float = 15.0) -> None:
    try:
        group.wait(lambda e: e["i"] == i and e["type"] == "event" and e["event"] == "my response"
                   and e["args"][0].get("data") == data, 1, timeout, f"'my response' {data!r} at client {i}")
    except AssertionError as exc:
        mine = group.matching(lambda e: e.get("i") == i)
        raise AssertionError(f"{exc}\nclient {i}: {len(mine)} lines, the first 6: {mine[:6]}, "
                             f"the last 6: {mine[-6:]}") from None


def check_example(people: Crowd) -> None:
    """The announcement's two forms: 'my event' answers its sender only; 'my broadcast
    event' reaches every client of every worker exactly once."""
    for group, i, _ in people.each():
        wait_response(group, i, "Connected")
    (g0, i0, sid0), *others = people.each()
    echo, shout, marker = (f"{name}-{uuid.uuid4().hex[:8]}" for name in ("echo", "shout", "marker"))
    g0.emit(i0, "my event", {"data": echo})
    wait_response(g0, i0, echo)
    g0.emit(i0, "my broadcast event", {"data": shout})
    # from a client of the other worker, after the first: every client sees both, in order
    g1, i1, _ = next(m for m in others if worker_of(m[2]) != worker_of(sid0))
    wait_response(g1, i1, shout)
    g1.emit(i1, "my broadcast event", {"data": marker})
    for group, i, sid in people.each():
        wait_response(group, i, marker)
        assert len(responses(group, i, shout)) == 1, (sid, group.events)
        assert len(responses(group, i, marker)) == 1, (sid, group.events)
        if (group, i) != (g0, i0):
            assert responses(group, i, echo) == [], f"'my event' answered client {sid}, not its sender"
    assert len(responses(g0, i0, echo)) == 1


@pytest.mark.parametrize("mode", ["default", "websocket", "polling"])
def test_announcement_example(server, mode):
    """Default options, WebSocket only, polling only: the example works across 2 workers."""
    people = crowd(server.http, mode)
    try:
        check_example(people)
        for group, i, sid in people.each():
            opened = group.matching(lambda e: e["i"] == i and e["type"] == "open")[0]
            assert opened["transport"] == ("websocket" if mode == "websocket" else "polling")
            if mode == "polling":
                assert not group.matching(lambda e: e["i"] == i and e["type"] == "upgrade")
            if mode == "default":  # polling first, then every client upgrades (wherever its requests land)
                group.wait(lambda e: e["i"] == i and e["type"] == "upgrade", 1, 15, f"the upgrade of {sid}")
    finally:
        people.close()
    assert not server.crashes(), server.log()


def test_emits_of_two_workers_reach_everyone_in_one_order(server):
    """Broadcasts from clients of both workers, interleaved: every client gets every one
    once, and all clients see the same order (the ring's; Socket.IO's Redis manager
    sends to the emitting process's clients first, so its clients disagree)."""
    people = crowd(server.http, "websocket")
    try:
        for group, i, _ in people.each():
            wait_response(group, i, "Connected")
        (ga, ia, sida), *rest = people.each()
        gb, ib, _ = next(m for m in rest if worker_of(m[2]) != worker_of(sida))
        tag = uuid.uuid4().hex[:6]
        sent = []
        for n in range(25):
            for who, (g, i) in (("a", (ga, ia)), ("b", (gb, ib))):
                data = f"{tag}-{who}{n}"
                sent.append(data)
                g.emit(i, "my broadcast event", {"data": data})
        orders = []
        for group, i, sid in people.each():
            def tagged(e: Dict[str, Any], i: int = i) -> bool:
                return e["i"] == i and e["type"] == "event" and str(e["args"][0].get("data", "")).startswith(tag)

            # every one, not only each sender's last: a client's emits are handled in tasks
            # of their own (see below), so its last may be broadcast before an earlier one
            group.wait(tagged, len(sent), 15, f"the {len(sent)} broadcasts at client {i}")
            got = [e["args"][0]["data"] for e in group.matching(tagged)]
            assert sorted(got) == sorted(sent), (sid, got)  # each once
            # (not each sender's order: python-socketio runs a client's event handlers
            # in tasks of their own (async_handlers=True), so the emits they make have
            # no order among themselves; test_socketio_api checks the order of emits made
            # one after the other)
            orders.append(got)
        assert all(order == orders[0] for order in orders), orders
    finally:
        people.close()


def test_background_thread_of_each_worker_reaches_every_client(server):
    """The example's background thread (one per worker, started at its first connect)
    emits with socketio.emit from a thread: every client gets the events of both."""
    people = crowd(server.http, "default")
    try:
        for group, i, sid in people.each():
            def twice(e: Dict[str, Any], i: int = i, group: NodeClients = group) -> bool:
                if e["i"] != i or e["type"] != "event" or e["args"][0].get("data") != "Server generated event":
                    return False
                count = e["args"][0]["count"]
                return len(group.matching(lambda x: x["i"] == i and x["type"] == "event"
                                          and x["args"][0].get("data") == "Server generated event"
                                          and x["args"][0].get("count") == count)) >= 2
            group.wait(twice, 1, 20, f"a count from both workers' threads at {sid}")
    finally:
        people.close()
    assert not server.crashes(), server.log()


def test_the_example_under_flask_run():
    """`flask --app ... run` (Werkzeug's development server, no uWSGI): one process,
    python-socketio's local manager; polling then the upgrade work there too."""
    import os
    import signal
    import sys

    from harness import APPS, ROOT, free_port, wait_for

    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(APPS)]), SOCKETIO_BACKGROUND_PERIOD="0")
    proc = subprocess.Popen([sys.executable, "-m", "flask", "--app", "socketio_announce_app", "run", "-p", str(port)],
                            cwd=str(APPS), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    group = None
    try:
        import socket

        def listening() -> bool:
            assert proc.poll() is None, "flask run exited"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return True
            except OSError:
                return False

        wait_for(listening, 30, "flask run to listen")
        group = NodeClients(f"http://127.0.0.1:{port}", 2, "default")
        group.connected()
        for i in range(2):
            wait_response(group, i, "Connected")
            group.wait(lambda e, i=i: e["i"] == i and e["type"] == "upgrade", 1, 15, "the upgrade")
        group.emit(0, "my broadcast event", {"data": "dev"})
        for i in range(2):
            wait_response(group, i, "dev")
    finally:
        if group is not None:
            group.close()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
