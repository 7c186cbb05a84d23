"""Every way uWSGI stops a worker ends its WebSockets with a close frame, then a FIN,
never a reset, and a plain HTTP request made meanwhile is answered, never stalled until
worker-reload-mercy (issue 12 item 4), on real uWSGI in the threads and gevent models,
2 workers (tests/apps/worker_stops_app.py tells each client its worker's pid and spawn):

- reloads and recycles close with 1012 (service restart): `uwsgi --reload pidfile`, chain
  reload (--touch-chain-reload), a touched vassal under the Emperor, --max-requests,
  --reload-on-rss, --max-worker-lifetime (the worker really is replaced: a new pid, and
  not before the master's whole-second rule says so), and never before
  --min-worker-lifetime (default 10 s) for the recycles it bounds (uWSGI keeps the worker
  until then: core/utils.c uwsgi_close_request);
- a full shutdown closes with 1001 (going away): `uwsgi --stop pidfile` (SIGINT), SIGINT,
  SIGTERM with --die-on-term.

Each case prints its measured stop time (``STOP [model] case: ...``; run with ``-s``).
worker-reload-mercy is MERCY: every wait is ANSWER, well below it, so a close or an
answer can never come from the master's kill.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest
import websocket

from harness import APPS, ROOT, UWSGI, free_port, serve, uwsgi_binary, wait_for
from wsraw import RawWebSocket

MERCY = 30  # worker-reload-mercy, seconds
ANSWER = MERCY / 2  # a close or an answer comes well before the mercy, or the stop stalled
QUICK = 5.0  # seconds a close may take in the older tests below (about a second, plus a loaded machine)
MODELS = ["threads", "gevent"]
APP = "worker_stops_app:app"


def recv_close(ws, timeout):
    """(code, reason) of the server's close frame, reading past data frames."""
    ws.settimeout(timeout)
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return int.from_bytes(data[:2], "big"), data[2:].decode()


def start(tmp_path, model, *extra, app="echo_app:app"):
    server = serve(app, tmp_path, model=model,
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


class Client:
    """A raw WebSocket on /info: `pid` and `last_spawn` of the worker serving it."""

    def __init__(self, server):
        self.raw = RawWebSocket(server.port, "/info", timeout=ANSWER)
        found = json.loads(self.raw.recv_frame(ANSWER).payload)
        self.pid, self.last_spawn = found["pid"], found["last_spawn"]
        self.raw.send_text("still there?")
        assert self.raw.recv_frame(ANSWER).payload == b"still there?"

    def goodbye(self, code, timeout=ANSWER):
        """Wait for the server's close frame (`code`), answer it, then expect a FIN (not a
        reset); returns the ``time.time()`` the close frame was read at."""
        frame = self.raw.expect_close(timeout)
        at = time.time()
        assert frame.close_code == code, (frame.close_code, frame.close_reason)
        sock = self.raw.sock
        sock.settimeout(timeout)
        try:
            while sock.recv(65536):
                pass
        except ConnectionResetError:
            pytest.fail(f"close {code} was followed by a reset, not a FIN")
        except socket.timeout:
            pytest.fail(f"no FIN within {timeout} s of close {code}")
        finally:
            self.raw.close()
        return at


def open_info(server, n=4):
    return [Client(server) for _ in range(n)]


class Goodbyes:
    """`Client.goodbye` of every client at once, each in a thread started now, as real
    clients answer a close as soon as it comes (one read after another would leave a worker
    waiting for the answers of clients not read yet). `times()`: when each close frame
    came, in `clients` order (re-raises what a client's check raised)."""

    def __init__(self, clients, code, timeout=ANSWER):
        self.pool = concurrent.futures.ThreadPoolExecutor(len(clients))
        self.futures = [self.pool.submit(c.goodbye, code, timeout) for c in clients]

    def times(self):
        try:
            return [f.result() for f in self.futures]
        finally:
            self.pool.shutdown()


def goodbyes(clients, code, timeout=ANSWER):
    return Goodbyes(clients, code, timeout).times()


def plain_request(server, timeout):
    """The status of a plain GET (any answer will do: it must come, not stall)."""
    try:
        with urllib.request.urlopen(server.http + "/", timeout=timeout) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


def plain_pid(server):
    """The pid of the worker that answered a plain GET / (within ANSWER)."""
    with urllib.request.urlopen(server.http + "/", timeout=ANSWER) as answer:
        return json.loads(answer.read())["pid"]


class Meanwhile:
    """A plain GET started now, in a thread: `outcome()` is its status, or the connection
    error a server going away may give (refused, reset), or "stalled" (no answer in ANSWER)."""

    def __init__(self, server):
        self.result = None
        self.thread = threading.Thread(target=self._run, args=(server,))
        self.thread.start()

    def _run(self, server):
        try:
            self.result = plain_request(server, ANSWER)
        except (socket.timeout, TimeoutError):
            self.result = "stalled"
        except urllib.error.URLError as exc:
            self.result = "stalled" if isinstance(exc.reason, (socket.timeout, TimeoutError)) else repr(exc)
        except OSError as exc:
            self.result = repr(exc)

    def outcome(self):
        self.thread.join(ANSWER + 5)
        return self.result


def report_stop(model, case, seconds, what="after the trigger"):
    print(f"\nSTOP [{model}] {case}: {seconds:.2f} s {what}")


def pidfile_server(tmp_path, model, *extra):
    pidfile = tmp_path / "uwsgi.pid"
    server = start(tmp_path, model, "--pidfile", str(pidfile), *extra, app=APP)
    wait_for(pidfile.exists, ANSWER, "the pidfile")
    return server, pidfile


def assert_all_closed(clients, code, reason):
    started = time.monotonic()
    for ws in clients:
        assert recv_close(ws, QUICK + 5) == (code, reason)
        ws.close()
    assert time.monotonic() - started < QUICK + 5


def assert_reload(server, model, case, trigger, clients, timeout=ANSWER):
    """`trigger()`, then: every client closes 1012 then FIN, a plain GET made meanwhile and
    one after are answered, no worker was killed by the mercy."""
    old = {c.pid for c in clients}
    sent = time.time()
    trigger()
    meanwhile = Meanwhile(server)
    last = max(goodbyes(clients, 1012, timeout))
    report_stop(model, case, last - sent)
    assert meanwhile.outcome() in (200,), meanwhile.outcome()
    assert plain_request(server, ANSWER) == 200
    assert "NO MERCY" not in server.log(), server.log()
    return old


# -- reloads ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_uwsgi_reload_closes_with_1012(model, tmp_path):
    """`uwsgi --reload pidfile` (SIGHUP to the master): every worker goes."""
    server, pidfile = pidfile_server(tmp_path, model)
    with server:
        clients = open_info(server)
        old = assert_reload(server, model, "uwsgi --reload", lambda: subprocess.run(
            [uwsgi_binary(), "--reload", str(pidfile)], check=True, timeout=ANSWER, capture_output=True), clients)
        wait_for(lambda: not old & set(server.worker_pids()), ANSWER, "new workers")


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
    with start(tmp_path, model, "--touch-chain-reload", str(touch), app=APP) as server:
        clients = open_info(server)

        def trigger():
            os.utime(touch, (time.time() + 5, time.time() + 5))  # a change whatever the mtime resolution

        # a chain reload recycles one worker at a time: every connection closes, one worker after the other
        assert_reload(server, model, "chain reload", trigger, clients, timeout=2 * ANSWER)


@pytest.mark.parametrize("model", MODELS)
def test_touched_vassal_closes_with_1012(model, tmp_path):
    """The instance as a vassal of `uwsgi --emperor`; the vassal file is touched."""
    from harness import MODELS as OPTIONS

    port = free_port()
    vassals = tmp_path / "vassals"
    vassals.mkdir()
    vassal = vassals / "stops.ini"
    lines = ["[uwsgi]", f"pythonpath = {ROOT}", f"pythonpath = {APPS}", "master = true",
             f"http-socket = 127.0.0.1:{port}", f"module = {APP}", "need-app = true", "die-on-term = true",
             "disable-logging = true", f"worker-reload-mercy = {MERCY}"]
    options = list(OPTIONS[model])
    lines += [f"{options[i][2:]} = {options[i + 1]}" for i in range(0, len(options), 2)]
    vassal.write_text("\n".join(lines) + "\n")
    with UWSGI(["--emperor", str(vassals)], tmp_path, port=port) as server:
        clients = open_info(server)

        def trigger():
            os.utime(vassal, (time.time() + 5, time.time() + 5))  # touch: the mtime must change

        assert_reload(server, model, "touched vassal", trigger, clients)
        assert not server.crashes(), server.log()


# -- recycles --------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_max_requests_closes_with_1012(model, tmp_path):
    """The worker recycles itself at the end of its Nth request (once --min-worker-lifetime
    old): under gevent there is no SIGHUP at all (uWSGI's loop runs its graceful path from C)."""
    with start(tmp_path, model, "--max-requests", "6", "--min-worker-lifetime", "1", app=APP) as server:
        clients = open_info(server)
        closing = Goodbyes(clients, 1012)  # read from now: a worker may recycle during the requests
        served = {c.pid: 0 for c in clients}
        sixth = {}  # pid -> when its sixth request was answered
        for _ in range(200):  # plain requests, until each worker holding a client has served its sixth
            pid = plain_pid(server)  # answered, never stalled
            served[pid] = served.get(pid, 0) + 1
            if served[pid] == 6:
                sixth[pid] = time.time()
            if all(served[c.pid] >= 6 for c in clients):
                break
        meanwhile = Meanwhile(server)
        late = max(at - sixth[c.pid] for c, at in zip(clients, closing.times()))
        report_stop(model, "--max-requests", late, "after the worker's sixth request (last client)")
        assert meanwhile.outcome() == 200
        assert plain_request(server, ANSWER) == 200
        assert "NO MERCY" not in server.log()


@pytest.mark.parametrize("model", MODELS)
def test_reload_on_rss_closes_with_1012(model, tmp_path):
    """A worker over --reload-on-rss recycles at the end of its next request: its
    WebSockets close with 1012 (1 MB is below any worker's RSS: as soon as the worker is
    --min-worker-lifetime old)."""
    with start(tmp_path, model, "--reload-on-rss", "1", "--min-worker-lifetime", "2", app=APP) as server:
        clients = open_info(server)
        meanwhile = Meanwhile(server)
        late = max(at - (c.last_spawn + 2) for c, at in zip(clients, goodbyes(clients, 1012)))
        report_stop(model, "--reload-on-rss", late, "after min-worker-lifetime allowed it (last client)")
        assert meanwhile.outcome() == 200
        assert plain_request(server, ANSWER) == 200
        assert "NO MERCY" not in server.log()


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("kind", ["max-requests", "reload-on-rss"])
def test_min_worker_lifetime_is_respected(model, kind, tmp_path):
    """uWSGI recycles for max-requests or reload-on-rss only once the worker has lived
    --min-worker-lifetime seconds (uwsgi_close_request: end_of_request - last_spawn, default
    10 s: max-requests runs with that default, no option given): no close comes before,
    clients keep echoing, and it does come then (closing ends requests: the recycle)."""
    minimum = 10 if kind == "max-requests" else 5
    extra = ["--max-requests", "2"] if kind == "max-requests" else ["--reload-on-rss", "1",
                                                                     "--min-worker-lifetime", str(minimum)]
    with start(tmp_path, model, *extra, app=APP) as server:
        clients = open_info(server)
        closing = Goodbyes(clients, 1012, minimum + ANSWER)  # read from now: a close before the minimum fails
        served = {c.pid: 0 for c in clients}
        for _ in range(200):  # the limit reached on every worker holding a client
            pid = plain_pid(server)
            served[pid] = served.get(pid, 0) + 1
            if all(served[c.pid] >= 2 for c in clients):
                break
        late = []
        for c, at in zip(clients, closing.times()):
            assert at >= c.last_spawn + minimum, f"closed {c.last_spawn + minimum - at:.2f} s before min-worker-lifetime"
            late.append(at - (c.last_spawn + minimum))
        report_stop(model, f"--{kind} under min-worker-lifetime {minimum}", max(late),
                    "after min-worker-lifetime allowed it (last client)")
        assert plain_request(server, ANSWER) == 200
        assert "NO MERCY" not in server.log()


@pytest.mark.parametrize("model", MODELS)
def test_max_worker_lifetime_replaces_the_worker(model, tmp_path):
    """The master marks a worker older than --max-worker-lifetime (whole seconds:
    now - last_spawn > lifetime) and only SIGWINCHes it: the worker goes itself (SIGHUP,
    uWSGI's graceful path), its clients close with 1012 not before that instant, and the
    worker really is replaced (a new pid)."""
    lifetime = 5
    with start(tmp_path, model, "--max-worker-lifetime", str(lifetime), "--min-worker-lifetime", "1",
               app=APP) as server:
        clients = open_info(server)
        old = {c.pid for c in clients}
        late = []
        for c, at in zip(clients, goodbyes(clients, 1012, lifetime + ANSWER)):
            due = c.last_spawn + lifetime + 1  # the first whole second with now - last_spawn > lifetime
            assert at >= due, f"closed {due - at:.2f} s before the master's lifetime rule"
            late.append(at - due)
        report_stop(model, "--max-worker-lifetime", max(late), "after the master's lifetime rule (last client)")
        wait_for(lambda: not old & set(server.worker_pids()), ANSWER, "the old workers replaced")
        assert plain_pid(server) not in old
        assert "NO MERCY" not in server.log()


# -- full shutdowns --------------------------------------------------------------------------------


def exited(server) -> None:
    """The master exits within ANSWER seconds; else fail with its log (which worker or mule
    it still waits for) and the stacks of its processes."""
    try:
        server.proc.wait(ANSWER)
    except subprocess.TimeoutExpired:
        stacks = subprocess.run(["ps", "-o", "pid,stat,wchan:20,cmd", "--ppid", str(server.pid)],
                                capture_output=True, text=True).stdout
        raise AssertionError(f"the master did not exit in {ANSWER} s; its children:\n{stacks}\n"
                             f"log:\n{server.log()[-6000:]}") from None


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("how", ["uwsgi --stop", "SIGINT", "SIGTERM"])
def test_full_shutdown_closes_with_1001(model, how, tmp_path):
    """`uwsgi --stop pidfile` (SIGINT to the master), SIGINT, or SIGTERM with --die-on-term
    (the harness passes it): 1001 then a FIN; a plain request meanwhile is answered or
    refused, never left hanging."""
    server, pidfile = pidfile_server(tmp_path, model)
    try:
        clients = open_info(server)
        sent = time.time()
        if how == "uwsgi --stop":
            subprocess.run([uwsgi_binary(), "--stop", str(pidfile)], check=True, timeout=ANSWER, capture_output=True)
        else:
            os.kill(server.pid, getattr(signal, how))
        meanwhile = Meanwhile(server)
        last = max(goodbyes(clients, 1001))
        report_stop(model, how, last - sent)
        assert meanwhile.outcome() != "stalled"
        exited(server)
    finally:
        server.stop()


@pytest.mark.parametrize("model", MODELS)
def test_full_shutdown_while_a_worker_starts(model, tmp_path):
    """SIGINT while the workers are still in uWSGI's post-fork hook (held there by the app,
    after uwsgi_ws's own start): before uWSGI installs its handlers, Python's SIGINT
    handler raised KeyboardInterrupt there, the worker started as if nothing had come and
    the master waited for it (seen under load, when a worker started late). The signal is
    noted and redelivered once the worker is ready: it stops, the instance exits."""
    gate = tmp_path / "gate"
    server = serve(APP, tmp_path, model=model, env={"WORKER_STOPS_GATE": str(gate)},
                   extra=["--processes", "2", "--worker-reload-mercy", str(MERCY)])
    try:
        held = wait_for(lambda: len(list(tmp_path.glob("gate-*"))) == 2, ANSWER, "both workers held in their start")
        assert held
        os.kill(server.pid, signal.SIGINT)
        server.wait_for_log(r"SIGINT/SIGTERM received\.\.\.killing workers", ANSWER)
        sent = time.time()
        gate.write_text("")  # let both workers go on starting
        exited(server)
        report_stop(model, "SIGINT while the workers start", time.time() - sent, "after they went on starting")
        assert "KeyboardInterrupt" not in server.log(), server.log()
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
