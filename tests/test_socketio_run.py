"""socketio.run(app, ...) (Flask-SocketIO's API, uwsgi_ws/socketio/extension.py): like
app.run, `python script.py` execs uWSGI serving the app, with what docs/socketio.md
promises by default: 2 workers of 16 threads, the broadcast mule and its sharedarea;
Flask-SocketIO's development-server options are ignored. The script is
tests/apps/socketio_run_app.py, started as a user would; the clients are
python-socketio's (HTTP long-polling then the upgrade, and WebSocket only); SIGINT to
the script's pid (now uWSGI's master) stops every process it started.

`socketio.run(app, gevent=100)` and `socketio.run(app, threads=8)` (the model as a
user passes it): uWSGI runs that model (its log and the options the workers see),
and Node's socket.io-client (default options) on both workers gets an emit that a
handler made in the other worker (broadcast=True through the mule and the ring).
"""

from __future__ import annotations

import os
import re
import signal
import sys

import pytest
import socketio
from test_socketio import crowd, worker_of

from harness import APPS, UWSGI, wait_for


def start(tmp_path, env: dict) -> UWSGI:
    """`python socketio_run_app.py` with `env`, once its 2 workers and the mule's ring are up."""
    server = UWSGI([str(APPS / "socketio_run_app.py")], tmp_path, executable=sys.executable,
                   env={"PORT": "{port}", **env})
    try:
        # the port listens before the master has loaded the app and forked (the first
        # request would time that too): wait for the workers and the mule's ring
        wait_for(lambda: len(server.worker_pids()) == 2, 60, f"2 worker spawn lines in {server.log_path}")
        server.wait_for_log(r"uwsgi_ws: broadcast mule 1 serving ring", timeout=60)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture
def script(tmp_path):
    server = start(tmp_path, {})
    try:
        yield server
    finally:
        server.stop()  # a no-op once the test has stopped it; else SIGINT, then SIGKILL of the group
    assert not server.crashes(), server.log()
    assert server.unexpected_tracebacks() == [], server.log()


def round_trip(server: UWSGI, transports: list[str] | None) -> dict:
    """Connect, emit "ping", return the data of the handler's "pong" reply (checked: the
    same client's sid, the data back)."""
    client = socketio.SimpleClient()
    client.connect(server.http, transports=transports, wait_timeout=30)
    try:
        client.emit("ping", {"n": 1, "text": "through socketio.run"})
        name, reply = client.receive(timeout=30)
        assert name == "pong", (name, reply)
        assert reply["data"] == {"n": 1, "text": "through socketio.run"}
        assert reply["sid"] == client.sid
        return reply
    finally:
        client.disconnect()


def test_socketio_run_execs_uwsgi_and_stops_on_sigint(script):
    server = script
    log = server.log()
    # exec: the script's pid is now uWSGI's master, with the documented defaults
    assert re.search(rf"spawned uWSGI master process \(pid: {server.pid}\)", log), log
    assert re.search(r"spawned uWSGI worker 2 \(pid: \d+, cores: 16\)", log), log
    assert "spawned uWSGI mule 1" in log, log
    workers = server.worker_pids()
    for transports in (None, ["websocket"]):  # polling then the upgrade; WebSocket only
        reply = round_trip(server, transports)
        assert reply["uwsgi"] is True, reply  # the handler ran under uWSGI, in a worker
        assert reply["masterpid"] == server.pid and reply["pid"] in workers, (reply, workers)
        assert reply["worker"] in (1, 2) and reply["workers"] == 2 and reply["threads"] == 16, reply
        assert reply["broadcast"] is True, reply  # the mule and the ring: emits reach every worker
    assert "no broadcast in worker" not in server.log()

    # Ctrl-C: the master exits by itself (no SIGKILL from the harness), taking its workers and mule
    os.kill(server.pid, signal.SIGINT)
    assert server.proc.wait(30) == 0, server.log()
    assert "goodbye to uWSGI" in server.log()

    def group_gone() -> bool:
        try:
            os.killpg(server.pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(group_gone, 30, f"every process of uWSGI's group {server.pid} to exit")


@pytest.mark.parametrize("model, env, cores", [("gevent", {"RUN_GEVENT": "100"}, 100),
                                               ("threads", {"RUN_THREADS": "8"}, 8)])
def test_socketio_run_with_a_model_serves_node_clients_across_workers(tmp_path, model, env, cores):
    server = start(tmp_path, env)
    people = None
    try:
        log = server.log()
        assert re.search(rf"spawned uWSGI worker 2 \(pid: \d+, cores: {cores}\)", log), log
        if model == "gevent":
            assert "*** Operational MODE: preforking+async ***" in log, log
        else:
            assert "*** Operational MODE: preforking+threaded ***" in log, log
        reply = round_trip(server, None)
        assert (reply["gevent"], reply["threads"]) == ((100, 0) if model == "gevent" else (0, 8)), reply
        assert reply["workers"] == 2 and reply["broadcast"] is True, reply

        people = crowd(server.http, "default")  # socket.io-client sessions on both workers
        (g0, i0, sid0), *others = people.each()
        g1, i1, sid1 = next(m for m in others if worker_of(m[2]) != worker_of(sid0))
        g0.emit(i0, "shout", {"from": sid0})
        got = g1.wait(lambda e: e["i"] == i1 and e["type"] == "event" and e["event"] == "shouted"
                      and e["args"][0]["data"] == {"from": sid0}, 1, 30, "the other worker's emit")[0]
        assert got["args"][0]["worker"] == worker_of(sid0) != worker_of(sid1), (got, sid0, sid1)
        assert got["args"][0]["pid"] in server.worker_pids()
    finally:
        if people is not None:
            people.close()
        server.stop()
    assert not server.crashes(), server.log()
    assert server.unexpected_tracebacks() == [], server.log()
