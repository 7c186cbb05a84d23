"""Every way uWSGI stops a worker ends its WebSockets with a close frame (issue 12
item 4), on real uWSGI in the threads and gevent models, 2 workers:

- reloads close with 1012 (service restart) within about a second: `uwsgi --reload`
  (SIGHUP to the master), chain reload (--touch-chain-reload), --max-requests,
  --reload-on-rss, --max-worker-lifetime;
- a full shutdown closes with 1001 (going away): SIGINT (what --stop sends), SIGTERM
  with --die-on-term;
never a reset, never a stall until worker-reload-mercy (set far above what a test waits).
A touched vassal is covered by tests/test_faults.py (1012) and tests/test_emperor.py.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import websocket

from harness import serve
from wsraw import RawWebSocket

MERCY = 60  # seconds: far longer than any wait below, so a close never comes from the kill
QUICK = 5.0  # seconds a close may take (about a second, plus a loaded CI machine)
MODELS = ["threads", "gevent"]


def recv_close(ws, timeout):
    """(code, reason) of the server's close frame, reading past data frames."""
    ws.settimeout(timeout)
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return int.from_bytes(data[:2], "big"), data[2:].decode()


def start(tmp_path, model, *extra):
    server = serve("echo_app:app", tmp_path, model=model,
                   extra=["--processes", "2", "--worker-reload-mercy", str(MERCY), *extra])
    server.wait_for_port()
    return server


def open_clients(server, n=4):
    clients = []
    for i in range(n):
        ws = websocket.create_connection(server.url + "/echo", timeout=5)
        ws.send(f"hello {i}")
        assert ws.recv() == f"hello {i}"
        clients.append(ws)
    return clients


def plain_request(server, timeout):
    """The status of a plain GET (any answer will do: it must come, not stall)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(server.url.replace("ws://", "http://") + "/", timeout=timeout) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


def assert_all_closed(clients, code, reason):
    started = time.monotonic()
    for ws in clients:
        assert recv_close(ws, QUICK + 5) == (code, reason)
        ws.close()
    assert time.monotonic() - started < QUICK + 5


@pytest.mark.parametrize("model", MODELS)
def test_uwsgi_reload_closes_with_1012(model, tmp_path):
    with start(tmp_path, model) as server:
        clients = open_clients(server)
        os.kill(server.pid, signal.SIGHUP)
        assert_all_closed(clients, 1012, "server restarting")


@pytest.mark.parametrize("model", MODELS)
def test_uwsgi_reload_closes_with_1012_under_lazy_apps(model, tmp_path):
    """Under lazy-apps the app (and uwsgi_ws) is imported in the worker, after the fork:
    the threads model still finds uWSGI's loop_stop_pipe (runtime/_stoppipe.py)."""
    with start(tmp_path, model, "--lazy-apps") as server:
        clients = open_clients(server)
        os.kill(server.pid, signal.SIGHUP)
        assert_all_closed(clients, 1012, "server restarting")
        assert "cannot watch for a graceful stop" not in server.log(), server.log()


@pytest.mark.parametrize("model", MODELS)
def test_chain_reload_closes_with_1012(model, tmp_path):
    touch = tmp_path / "chain"
    touch.write_text("")
    with start(tmp_path, model, "--touch-chain-reload", str(touch)) as server:
        clients = open_clients(server)
        time.sleep(1.1)  # mtime resolution: the touch must be seen as a change
        touch.write_text("reload")
        os.utime(touch)
        # a chain reload recycles one worker at a time: every connection closes, one worker after the other
        for ws in clients:
            assert recv_close(ws, 30) == (1012, "server restarting")
            ws.close()
        assert "NO MERCY" not in server.log()


@pytest.mark.parametrize("model", MODELS)
def test_max_requests_closes_with_1012(model, tmp_path):
    """The worker recycles itself at the end of its Nth request: under gevent there is
    no SIGHUP at all (uWSGI's loop runs its graceful path from C)."""
    with start(tmp_path, model, "--max-requests", "6") as server:
        clients = open_clients(server, 4)  # open requests: they count once they end
        pending = list(clients)
        for _ in range(60):  # plain requests, until each worker has served its sixth
            assert plain_request(server, QUICK) in (200, 404)  # answered, never stalled
            for ws in list(pending):
                ws.settimeout(0.01)
                try:
                    opcode, data = ws.recv_data(control_frame=True)
                except websocket.WebSocketTimeoutException:
                    continue
                assert opcode == websocket.ABNF.OPCODE_CLOSE
                assert (int.from_bytes(data[:2], "big"), data[2:].decode()) == (1012, "server restarting")
                pending.remove(ws)
            if not pending:
                break
        assert not pending, f"{len(pending)} connection(s) not closed after 60 requests"
        assert "NO MERCY" not in server.log()


@pytest.mark.parametrize("model", MODELS)
def test_reload_on_rss_closes_with_1012(model, tmp_path):
    """A worker over --reload-on-rss recycles at the end of its next request: its
    WebSockets close with 1012 (at once here: 1 MB is below any worker's RSS)."""
    with start(tmp_path, model, "--reload-on-rss", "1") as server:
        clients = [websocket.create_connection(server.url + "/echo", timeout=5) for _ in range(2)]
        for ws in clients:
            assert recv_close(ws, QUICK + 5) == (1012, "server restarting")
            ws.close()
        assert plain_request(server, QUICK) in (200, 404)
        assert "NO MERCY" not in server.log()


@pytest.mark.parametrize("model", MODELS)
def test_max_worker_lifetime_closes_with_1012(model, tmp_path):
    with start(tmp_path, model, "--max-worker-lifetime", "4", "--min-worker-lifetime", "1") as server:
        clients = open_clients(server)
        for ws in clients:
            assert recv_close(ws, 20) == (1012, "server restarting")
            ws.close()
        assert "NO MERCY" not in server.log()


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_full_shutdown_closes_with_1001(model, how, tmp_path):
    """SIGINT (what `uwsgi --stop` sends) or SIGTERM with --die-on-term (the harness passes it)."""
    server = start(tmp_path, model)
    try:
        clients = open_clients(server)
        os.kill(server.pid, getattr(signal, how))
        assert_all_closed(clients, 1001, "server shutting down")
        server.proc.wait(QUICK + 10)
    finally:
        server.stop()


@pytest.mark.parametrize("model", MODELS)
def test_full_shutdown_amid_handshakes_closes_every_upgraded_connection(model, tmp_path):
    """SIGINT while clients keep connecting: a connection whose 101 came back ends with
    close 1001 too, never a reset, even when its handshake was under way as the signal
    came (the shutdown waits for upgrades in flight: shutdown.upgrading)."""
    server = start(tmp_path, model)
    outcomes = []  # one per connection that got its 101: the close code, or "reset"
    lock = threading.Lock()
    opened = threading.Semaphore(0)

    def client():
        conns = []
        while True:
            try:
                conns.append(RawWebSocket(server.port, "/echo", timeout=QUICK + 10))
            except Exception:  # refused, or cut before a 101: the server is going away
                break
            opened.release()
        for raw in conns:
            try:
                outcome = raw.expect_close(QUICK + 10).close_code
            except Exception as exc:
                outcome = f"reset ({exc!r})"
            raw.close()
            with lock:
                outcomes.append(outcome)

    clients = [threading.Thread(target=client) for _ in range(6)]
    try:
        for t in clients:
            t.start()
        for _ in range(12):  # some open already; the six clients are in handshakes
            assert opened.acquire(timeout=QUICK + 10)
        os.kill(server.pid, signal.SIGINT)
        for t in clients:
            t.join(QUICK + 30)
        assert not any(t.is_alive() for t in clients)
        assert len(outcomes) >= 12
        assert [o for o in outcomes if o != 1001] == [], outcomes
        server.proc.wait(QUICK + 10)
    finally:
        server.stop()


def _children(pid):
    """Pids whose parent is `pid` (from /proc)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(name))
    return found


def _threads_taking(pid, signum):
    """The tids of `pid`'s threads that do not block `signum` (/proc/<pid>/task/*/status SigBlk)."""
    taking = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            blocked = int(next(line for line in f if line.startswith("SigBlk:")).split()[1], 16)
        if not blocked & (1 << (signum - 1)):
            taking.append(int(tid))
    return taking


@pytest.mark.parametrize("model", MODELS)
def test_only_the_main_thread_takes_the_stop_signals(model, tmp_path):
    """uWSGI's SIGINT/SIGTERM handler (end_me) exits through Py_Finalize in an idle worker
    or a mule: run in any thread but the main one, Python waits there for the main thread
    to end and the process hangs until worker-reload-mercy (a full shutdown stalled in CI).
    So every thread uwsgi_ws starts blocks every signal, as uWSGI's own core threads do:
    in the workers (the stop hooks, the fd watcher) and the mule (the publisher socket)."""
    server = start(tmp_path, model, "--sharedarea", "4096", "--mule=uwsgi_ws.mule:run")
    try:
        server.wait_for_log(r"uwsgi_ws: broadcast mule 1 serving ring", timeout=20)
        clients = open_clients(server)  # the workers' threads of ours are running by now
        processes = _children(server.pid)
        assert len(processes) == 3, processes  # 2 workers and the mule
        for pid in processes:
            for signum in (signal.SIGINT, signal.SIGTERM):
                assert _threads_taking(pid, signum) == [pid], (pid, signum, os.listdir(f"/proc/{pid}/task"))
        for ws in clients:
            ws.close()
    finally:
        server.stop()
