"""Fault injection on real uWSGI while a numbered stream is broadcast to 100 clients.

Two workers (threads and gevent), the broadcast mule, and a program mule
(tests/apps/stream_publisher_mule.py) publishing "n<seq>" at a steady rate, its
seq kept in a file so it goes on across a reload. 100 clients (one asyncio
`websockets` process, 50 on each worker's own socket) record every seq per
connection, how each connection ended (the close code; 1006 = no close frame)
and reconnect at once. Then one fault:

- `kill -9` of the broadcast mule,
- `kill -9` of one worker,
- `uwsgi --reload` (SIGHUP to the master),
- touching the vassal file under `uwsgi --emperor`.

For each, per client: seqs lost (missing between the first and the last it
saw), duplicated, reordered, and the closes. The assertions are what README
"Broadcast > Failures and what clients see" promises; the numbers are printed
(run with -s).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import websockets

from harness import APPS, ROOT, UWSGI, free_port

CLIENTS = 100
INTERVAL = 0.02  # seconds between two messages of the stream (50 a second)
SETTLE = 20  # messages every client must have before the fault
AFTER = 100  # messages of the stream past the fault every client must reach (2 s)
MODEL_ARGS = {"threads": ["--threads", "64"], "gevent": ["--gevent", "200"]}


# -- the instance ------------------------------------------------------------------------------


def options(model: str, ports: list, seq_file: Path) -> list:
    """(option, value) pairs of the instance: the same on the command line and in a vassal."""
    return [
        ("master", "true"),
        *[("http-socket", f"127.0.0.1:{p}") for p in ports],
        ("map-socket", "1:1"),  # ports[1] reaches worker 1 only, ports[2] worker 2
        ("map-socket", "2:2"),
        ("module", "broadcast_test_app:app"),
        ("need-app", "true"),
        ("die-on-term", "true"),
        ("disable-logging", "true"),
        ("processes", "2"),
        (MODEL_ARGS[model][0][2:], MODEL_ARGS[model][1]),
        ("worker-reload-mercy", "30"),  # a reset could not come from the master's kill
        ("sharedarea", "4096"),
        ("mule", "uwsgi_ws.mule:run"),
        ("mule", str(APPS / "stream_publisher_mule.py")),
        ("env", f"STREAM_SEQ_FILE={seq_file}"),
        ("env", f"STREAM_INTERVAL={INTERVAL}"),
    ]


def start(model: str, tmp: Path) -> UWSGI:
    ports = [free_port(), free_port(), free_port()]
    args = []
    for key, value in options(model, ports, tmp / "seq"):
        args += [f"--{key}={value}"] if key == "mule" else ([f"--{key}"] if value == "true" else [f"--{key}", value])
    server = UWSGI(args, tmp, port=ports[0])
    server.worker_ports = ports[1:]  # type: ignore[attr-defined]
    server.wait_for_log(r"stream_publisher_mule: starting", timeout=30)
    return server


def start_under_emperor(model: str, tmp: Path) -> tuple:
    ports = [free_port(), free_port(), free_port()]
    vassals = tmp / "vassals"
    vassals.mkdir()
    vassal = vassals / "stream.ini"
    lines = ["[uwsgi]", f"pythonpath = {ROOT}", f"pythonpath = {APPS}"]
    lines += [f"{key} = {value}" for key, value in options(model, ports, tmp / "seq")]
    vassal.write_text("\n".join(lines) + "\n")
    server = UWSGI(["--emperor", str(vassals)], tmp, port=ports[0])
    server.worker_ports = ports[1:]  # type: ignore[attr-defined]
    server.wait_for_log(r"stream_publisher_mule: starting", timeout=30)
    return server, vassal


def mule_pid(server: UWSGI) -> int:
    return int(re.findall(r"spawned uWSGI mule 1 \(pid: (\d+)", server.log())[-1])


async def log_count(server: UWSGI, pattern: str, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(re.findall(pattern, server.log())) < count:
        assert time.monotonic() < deadline, f"{pattern!r} x{count} not in the log after {timeout}s:\n{server.log()}"
        await asyncio.sleep(0.05)


# -- the clients -------------------------------------------------------------------------------------


@dataclass
class Session:
    """One connection: the worker that served it, the seqs it got, how it ended."""

    pid: int
    seqs: list = field(default_factory=list)
    close: object = None  # close code from the server, 1006 without a close frame, "client" at the end


@dataclass
class StreamClient:
    port: int
    sessions: list = field(default_factory=list)
    failed_connects: int = 0

    def last_seq(self) -> int:
        return next((s.seqs[-1] for s in reversed(self.sessions) if s.seqs), -1)

    def seqs(self) -> list:
        return [n for s in self.sessions for n in s.seqs]

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected until `stop`: reconnect at once (every 50 ms while refused)."""
        while not stop.is_set():
            try:
                ws = await websockets.connect(f"ws://127.0.0.1:{self.port}/sub", ping_interval=None,
                                              open_timeout=20, close_timeout=5)
            except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake, websockets.ConnectionClosed):
                self.failed_connects += 1
                await asyncio.sleep(0.05)  # retry pacing while the instance comes back
                continue
            session = None
            stopping = asyncio.ensure_future(stop.wait())
            try:
                while True:
                    recv = asyncio.ensure_future(ws.recv())
                    await asyncio.wait({recv, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    if not recv.done():
                        recv.cancel()
                        if session is not None:
                            session.close = "client"
                        await ws.close()
                        return
                    message = recv.result()
                    if message.startswith("ready:"):
                        session = Session(int(message[6:]))
                        self.sessions.append(session)
                    elif session is not None and message.startswith("n"):
                        session.seqs.append(int(message[1:]))
            except websockets.ConnectionClosed as exc:
                if session is not None:
                    session.close = exc.rcvd.code if exc.rcvd is not None else 1006
            finally:
                stopping.cancel()


async def until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.02)


@dataclass
class Outcome:
    """What one client saw, from its seqs and sessions."""

    lost: list
    duplicated: int
    reordered: int
    closes: list  # how each session but the last ended
    lost_within_sessions: int
    pids: list
    sessions: list  # (pid, first seq, last seq, how it ended) of each connection


def outcome(client: StreamClient) -> Outcome:
    seqs = client.seqs()
    lost_within = sum(s.seqs[-1] - s.seqs[0] + 1 - len(set(s.seqs)) for s in client.sessions if s.seqs)
    return Outcome(
        lost=sorted(set(range(min(seqs), max(seqs) + 1)) - set(seqs)),
        duplicated=len(seqs) - len(set(seqs)),
        reordered=sum(1 for a, b in zip(seqs, seqs[1:]) if b < a),
        closes=[s.close for s in client.sessions[:-1]],
        lost_within_sessions=lost_within,
        pids=[s.pid for s in client.sessions],
        sessions=[(s.pid, s.seqs[:1], s.seqs[-1:], s.close) for s in client.sessions],
    )


async def under_fault(server: UWSGI, fault) -> tuple:
    """100 clients on the stream; `fault()` once each has SETTLE messages; returns
    (clients, fault's result) once each got AFTER messages past the end of `fault()`."""
    stop = asyncio.Event()
    ports = server.worker_ports
    clients = [StreamClient(ports[i % 2]) for i in range(CLIENTS)]
    tasks = [asyncio.ensure_future(c.run(stop)) for c in clients]
    try:
        await until(lambda: all(len(c.seqs()) >= SETTLE for c in clients), 30, f"{SETTLE} messages on each client")
        assert len({c.sessions[0].pid for c in clients}) == 2, "the clients are not on both workers"
        result = await fault()
        done = max(c.last_seq() for c in clients)  # the fault is over (a touched vassal reloads seconds later)
        await until(lambda: all(c.last_seq() >= done + AFTER for c in clients), 60,
                    f"every client past n{done + AFTER} (the fault was over at n{done})")
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    return clients, result


def report(title: str, clients: list) -> list:
    """Print one line per group of clients (per first worker) and return the outcomes."""
    outcomes = [outcome(c) for c in clients]
    print(f"\n{title}")
    for pid in sorted({o.pids[0] for o in outcomes}):
        group = [o for o in outcomes if o.pids[0] == pid]
        lost = [len(o.lost) for o in group]
        closes: dict = {}
        for o in group:
            for code in o.closes:
                closes[code] = closes.get(code, 0) + 1
        print(f"  {len(group)} clients first on worker {pid}: reconnects {sum(len(o.pids) - 1 for o in group)}, "
              f"closes {closes or 'none'}, lost per client min/median/max "
              f"{min(lost)}/{statistics.median(lost):g}/{max(lost)} (within a connection: "
              f"{sum(o.lost_within_sessions for o in group)}), duplicated {sum(o.duplicated for o in group)}, "
              f"reordered {sum(o.reordered for o in group)}")
    return outcomes


def assert_exactly_once_in_order(outcomes: list) -> None:
    for o in outcomes:
        assert o.duplicated == 0 and o.reordered == 0, o


def stop_and_check(server: UWSGI, expected_deaths: int = 0) -> None:
    server.stop()
    crashes = [line for line in server.crashes() if "killed by signal 9" not in line and "DAMN ! worker" not in line]
    assert not crashes, server.log()
    assert server.log().count("DAMN ! worker") == expected_deaths, server.log()
    assert "Traceback" not in server.log(), server.log()


@pytest.fixture(params=["threads", "gevent"])
def model(request):
    return request.param


# -- the faults -------------------------------------------------------------------------------------------


def test_kill_9_of_the_broadcast_mule(model, tmp_path):
    """No client notices: nobody is disconnected, nothing is duplicated or
    reordered; at most the one message the mule held at the kill is lost, the
    same for every client."""
    server = start(model, tmp_path)
    try:
        async def fault():
            spawned = server.log().count("spawned uWSGI mule 1 ")
            os.kill(mule_pid(server), signal.SIGKILL)
            await log_count(server, r"uwsgi_ws: broadcast mule 1 serving ring", spawned + 1)

        clients, _ = asyncio.run(under_fault(server, fault))
        outcomes = report(f"[{model}] kill -9 of the broadcast mule", clients)
        assert_exactly_once_in_order(outcomes)
        for o in outcomes:
            assert o.closes == [], o
            assert o.lost == outcomes[0].lost, "clients lost different messages (a loss after the ring)"
        assert len(outcomes[0].lost) <= 1, outcomes[0].lost
    finally:
        stop_and_check(server)


def test_kill_9_of_a_worker(model, tmp_path):
    """The killed worker's clients lose their connection without a close frame
    (1006) and reconnect to the respawned worker, which sends them new messages
    only: no duplicate, nothing replayed, the gap is what was published while
    they were away. The other worker's clients notice nothing."""
    server = start(model, tmp_path)
    try:
        killed: list = []

        async def fault():
            pid = server.worker_pids()[0]
            spawned = server.log().count("spawned uWSGI worker 1 ")
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            await log_count(server, r"spawned uWSGI worker 1 ", spawned + 1)

        clients, _ = asyncio.run(under_fault(server, fault))
        outcomes = report(f"[{model}] kill -9 of worker 1", clients)
        assert_exactly_once_in_order(outcomes)
        for o in outcomes:
            assert o.lost_within_sessions == 0, o
            if o.pids[0] == killed[0]:
                assert o.closes and set(o.closes) == {1006}, o
                assert killed[0] not in o.pids[1:], o
            else:
                assert o.closes == [] and o.lost == [], o
    finally:
        stop_and_check(server, expected_deaths=1)


def reload_expectations(outcomes: list) -> None:
    """Every client got 1012 (never a reset), reconnected, and saw every seq at most once, in order."""
    assert_exactly_once_in_order(outcomes)
    for o in outcomes:
        assert o.closes and set(o.closes) == {1012}, o
        assert o.lost_within_sessions <= 1, o  # the publisher mule's one skipped seq, when killed mid-publish


def test_uwsgi_reload(model, tmp_path):
    """`uwsgi --reload`: SIGHUP to the master."""
    server = start(model, tmp_path)
    try:
        async def fault():
            ready = server.log().count("stream_publisher_mule: starting")
            os.kill(server.pid, signal.SIGHUP)
            await log_count(server, r"stream_publisher_mule: starting", ready + 1)

        clients, _ = asyncio.run(under_fault(server, fault))
        reload_expectations(report(f"[{model}] uwsgi --reload", clients))
    finally:
        stop_and_check(server)


def test_touching_the_vassal(model, tmp_path):
    """The same instance as a vassal of `uwsgi --emperor`; the vassal file is touched."""
    server, vassal = start_under_emperor(model, tmp_path)
    try:
        async def fault():
            ready = server.log().count("stream_publisher_mule: starting")
            os.utime(vassal, (time.time() + 5, time.time() + 5))  # touch: the mtime must change
            await log_count(server, r"stream_publisher_mule: starting", ready + 1)

        clients, _ = asyncio.run(under_fault(server, fault))
        reload_expectations(report(f"[{model}] touch of the vassal (Emperor)", clients))
    finally:
        stop_and_check(server)
