"""A stop that lands at any point of a worker's life ends its WebSockets with a close
frame at once (issue 12 item 4, the races): on real uWSGI, threads and gevent models.

- SIGHUP while the worker's first WebSocket is in its handshake (the stop hooks
  used to be installed at the first connection: under gevent uWSGI's graceful path
  then waited for that connection until worker-reload-mercy; in the threads model
  the closed loop_stop_pipe was not recognised): 101, then 1012 at once.
- `uwsgi --reload` (SIGHUP to the master) sent again as soon as the reloaded
  workers are spawned, while clients reconnect; the same with a vassal touched
  twice under the Emperor: every connection ends with 1012, never a reset, never
  "NO MERCY".
- lazy-apps: a reload that lands while the worker imports the app (after uwsgi_ws
  is imported, before uWSGI installs its SIGHUP handler, which ignores it there)
  is delivered once the worker is ready: "Gracefully killing worker", no NO MERCY.

worker-reload-mercy is far above every wait here: a close never comes from the kill.
"""

from __future__ import annotations

import base64
import itertools
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import websocket

from harness import APPS, ROOT, UWSGI, free_port, serve, wait_for

MERCY = 60  # seconds
QUICK = 5.0  # seconds a close may take after its stop (about a second, plus a loaded machine)
MODELS = ["threads", "gevent"]
MODEL_ARGS = {"threads": ["--threads", "16"], "gevent": ["--gevent", "200"]}
CLIENTS = 6
TRIES = 2  # double reloads per test (each reload imports the app anew: seconds)


def spawned(log: str) -> int:
    """Worker spawns so far (first spawns and respawns)."""
    return len(re.findall(r"(?:spawned uWSGI worker \d+ \(pid|Respawned uWSGI worker \d+ \(new pid)", log))


# -- one WebSocket by hand, to stop the worker in the middle of its handshake ----------------


def partial_handshake(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=QUICK + 10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n").encode())  # no blank line yet
    return sock


def read_101_and_close(sock: socket.socket) -> tuple:
    """(status line, close code, close reason) once the server's close frame is in."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"EOF before the 101: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    while len(rest) < 2 or len(rest) < 2 + (rest[1] & 0x7F):
        chunk = sock.recv(4096)
        assert chunk, f"EOF before a close frame (a reset, 1006): {rest!r}"
        rest += chunk
    assert rest[0] == 0x88, f"not a close frame: {rest!r}"
    payload = rest[2:2 + (rest[1] & 0x7F)]
    mask = os.urandom(4)
    echo = bytes(b ^ mask[i % 4] for i, b in enumerate(payload[:2]))
    sock.sendall(bytes([0x88, 0x80 | 2]) + mask + echo)  # our close answer: the server ends at once
    return head.split(b"\r\n")[0].decode(), int.from_bytes(payload[:2], "big"), payload[2:].decode()


@pytest.mark.parametrize("model", MODELS)
def test_stop_during_the_first_handshake(model, tmp_path):
    """SIGHUP reaches the worker while its first WebSocket is in the handshake (headers
    half sent): the handshake completes, then close 1012 at once, and the worker exits."""
    with serve("echo_app:app", tmp_path, model=model,
               extra=["--processes", "1", "--worker-reload-mercy", str(MERCY)]) as server:
        pid = wait_for(server.worker_pids, 10, "the worker's spawn line")[0]
        sock = partial_handshake(server.port)
        wait_for(lambda: _in_request(server, pid), 10, "the worker reading the request")
        os.kill(pid, signal.SIGHUP)
        server.wait_for_log(rf"Gracefully killing worker 1 \(pid: {pid}\)", QUICK)
        sock.sendall(b"\r\n")
        status, code, reason = read_101_and_close(sock)
        assert status.startswith("HTTP/1.1 101"), status
        assert (code, reason) == (1012, "server restarting")
        sock.close()
        wait_for(lambda: pid not in server.worker_pids(), QUICK + 10, "the worker's respawn")
        assert "NO MERCY" not in server.log()
        assert "cannot watch for a graceful stop" not in server.log(), server.log()


def _in_request(server: UWSGI, pid: int) -> bool:
    """The worker has accepted the half-sent request (its core is busy): /proc says the
    worker holds a second TCP socket besides the listening one."""
    try:
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return False
    inodes = {link for link in links if link.startswith("socket:")}
    with open("/proc/net/tcp") as tcp:
        established = {f"socket:[{row.split()[9]}]" for row in tcp.read().splitlines()[1:]
                       if row.split()[3] == "01" and int(row.split()[1].split(":")[1], 16) == server.port}
    return bool(inodes & established)


# -- clients that reconnect at once, as browsers do after 1012 ------------------------------


class Reconnecting:
    """CLIENTS threads, each: connect, echo, wait for the close, reconnect at once.
    Records (opened, ended, outcome) per connection; outcome is the close code, or
    "reset" for an end without a close frame."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.connections: list = []
        self.connecting = 0
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CLIENTS)]
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        while True:
            with self.lock:
                if self.stop.is_set():
                    return
                self.connecting += 1
            try:
                ws = websocket.create_connection(self.url + "/echo", timeout=MERCY)
            except (OSError, websocket.WebSocketException):
                with self.lock:
                    self.connecting -= 1
                time.sleep(0.02)  # the port is the master's across reloads: only a refused connect lands here
                continue
            opened = time.monotonic()
            outcome = self._until_closed(ws)
            with self.lock:
                self.connections.append((opened, time.monotonic(), outcome))
            ws.close()

    def _until_closed(self, ws: websocket.WebSocket) -> object:
        """The connection's outcome; it counts as "connecting" until its echo came back
        (the server's handler runs it: the connection is the server's, not a handshake
        in flight), or until it ended first."""
        echoed = False
        try:
            ws.send("hello")
            while True:
                opcode, data = ws.recv_data(control_frame=True)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    return int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    assert data == b"hello", data
                    if not echoed:
                        echoed = True
                        with self.lock:
                            self.connecting -= 1
        except (OSError, websocket.WebSocketException):
            return "reset"
        finally:
            if not echoed:
                with self.lock:
                    self.connecting -= 1

    def opened(self) -> int:
        """Connections ended so far."""
        with self.lock:
            return len(self.connections)

    def finish(self) -> None:
        """No more reconnecting; returns once no handshake is under way and every open
        connection had its echo (call before stopping the server, then `ended`): the
        final stop then meets only connections its handlers run (a handshake under way
        when a worker exits at once on a full shutdown is not a reload: a connection
        whose handler has not started yet may then be reset; tests/test_worker_stops.py
        holds the shutdown's 1001 for open connections)."""
        with self.lock:
            self.stop.set()

        def idle() -> bool:
            with self.lock:
                return self.connecting == 0

        wait_for(idle, 60, "the clients' handshakes under way")

    def ended(self) -> list:
        """Every connection's record, once the server is stopped (the clients see its 1001)."""
        for thread in self.threads:
            thread.join(QUICK + 10)
        assert not any(thread.is_alive() for thread in self.threads), "a client still waits for its close"
        return self.connections


def wait_reconnected(clients: Reconnecting, server: UWSGI, before: int) -> None:
    """Every client got a close since `before` connections and is connected again
    (its echo answered): probed with a fresh connection's echo."""
    wait_for(lambda: clients.opened() >= before + CLIENTS, 60, "every client closed by the reload")
    probe = websocket.create_connection(server.url + "/echo", timeout=MERCY)
    probe.send("probe")
    assert probe.recv() == "probe"
    probe.close()


def check(connections: list, stops: list, log: str) -> None:
    """Every connection ended with a close frame (1012, or 1001 at the final stop), within
    QUICK of the stop that ended it (or of its own opening, when it opened on a stopping worker)."""
    assert "NO MERCY" not in log, log
    resets = [c for c in connections if c[2] == "reset"]
    assert not resets, (f"{len(resets)} of {len(connections)} connection(s) ended without a close frame: "
                        f"{resets}, stops at {stops}")
    for opened, ended, outcome in connections:
        assert outcome in (1012, 1001), outcome
        cause = max([opened] + [s for s in stops if s <= ended])
        assert ended - cause < QUICK, f"closed {ended - cause:.1f} s after its stop (worker-reload-mercy?)"


def double_reload(server: UWSGI, reload) -> None:
    """TRIES times: reload, and reload again as soon as the new workers are spawned,
    while the clients reconnect. Checks every connection's end."""
    clients = Reconnecting(server.url)
    stops: list = []
    try:
        wait_for(lambda: _echo(server), 30, "the app")
        for _ in range(TRIES):
            before = clients.opened()
            seen = spawned(server.log())
            stops.append(time.monotonic())
            reload()
            wait_for(lambda: spawned(server.log()) >= seen + 2, 60, "the reloaded workers")
            wait_for(lambda: all(map(_hears_sighup, server.worker_pids())), 30, "the new workers' SIGHUP handler")
            seen = spawned(server.log())
            stops.append(time.monotonic())
            reload()  # the new workers are starting, the clients reconnecting
            wait_for(lambda: spawned(server.log()) >= seen + 2, 60, "the workers of the second reload")
            wait_reconnected(clients, server, before)
    finally:
        clients.finish()
        stops.append(time.monotonic())
        server.stop()
    check(clients.ended(), stops, server.log())


def _hears_sighup(pid: int) -> bool:
    """The process no longer ignores SIGHUP. A worker inherits SIG_IGN from the master's
    start (core/uwsgi.c uwsgi_setup: signal(SIGHUP, SIG_IGN)) until uwsgi_ws's post-fork
    hook or uWSGI's own handler replaces it: a SIGHUP before that is lost in uWSGI, not
    here (see shutdown.py), so the second reload waits for that point."""
    try:
        with open(f"/proc/{pid}/status") as status:
            fields = dict(line.split(":", 1) for line in status.read().splitlines() if ":" in line)
    except OSError:
        return False
    return not int(fields["SigIgn"].strip(), 16) & 1 and bool(int(fields["SigCgt"].strip(), 16) & 1)


def _echo(server: UWSGI) -> bool:
    try:
        ws = websocket.create_connection(server.url + "/echo", timeout=5)
    except (OSError, websocket.WebSocketException):
        return False
    try:
        ws.send("up")
        return ws.recv() == "up"
    finally:
        ws.close()


@pytest.mark.parametrize("model", MODELS)
def test_uwsgi_reload_twice(model, tmp_path):
    server = serve("echo_app:app", tmp_path, model=model,
                   extra=["--processes", "2", "--worker-reload-mercy", str(MERCY)])
    double_reload(server, lambda: os.kill(server.pid, signal.SIGHUP))


@pytest.mark.parametrize("model", MODELS)
def test_vassal_touched_twice(model, tmp_path):
    """Under the Emperor a touch is a byte on the vassal's Emperor pipe (core/emperor.c,
    uwsgi_master_manage_emperor), read by the vassal's master loop: one that arrives
    while the reload it asks for is still under way is dropped by grace_them_all
    (core/uwsgi.c: `if (uwsgi_instance_is_reloading ...) return;`), harmless since that
    reload re-executes the master afterwards, reading the vassal anew."""
    port = free_port()
    vassals = tmp_path / "vassals"
    vassals.mkdir()
    vassal = vassals / "echo.ini"
    vassal.write_text("\n".join([
        "[uwsgi]", f"pythonpath = {ROOT}", f"pythonpath = {APPS}", "master = true",
        f"http-socket = 127.0.0.1:{port}", "module = echo_app:app", "need-app = true", "die-on-term = true",
        "disable-logging = true", "processes = 2", f"{MODEL_ARGS[model][0][2:]} = {MODEL_ARGS[model][1]}",
        f"worker-reload-mercy = {MERCY}",
    ]) + "\n")
    server = UWSGI(["--emperor", str(vassals)], tmp_path, port=port)
    touches = itertools.count(1)

    def touch() -> None:
        stamp = time.time() + 10 * next(touches)  # a later mtime every time (the Emperor compares seconds)
        os.utime(vassal, (stamp, stamp))

    double_reload(server, touch)


# -- lazy-apps: a reload while the worker imports the app -----------------------------------------

SLOW_APP = '''
import os
import uwsgi_ws  # noqa: F401  (its stop hooks are armed from here on)
from echo_app import app  # noqa: F401
gate = os.environ["SLOW_APP_GATE"]
if os.path.exists(gate):  # a FIFO: the test reloads now, then writes to it
    open(os.environ["SLOW_APP_LOADING"] + "-%d" % os.getpid(), "w").close()
    with open(gate) as fifo:
        fifo.read()
    os.unlink(gate)
'''


@pytest.mark.parametrize("model", MODELS)
def test_reload_while_a_lazy_worker_loads_the_app(model, tmp_path):
    """`uwsgi --reload`, then again while the reloaded worker imports the app (after
    uwsgi_ws, before uWSGI installs its SIGHUP handler: uWSGI ignores it there, and the
    master waited for the worker until worker-reload-mercy). The worker now stops as
    soon as it is ready ("Gracefully killing worker"), the instance reloads again, and
    its WebSocket got 1012 at the first reload."""
    (tmp_path / "slow_app.py").write_text(SLOW_APP)
    gate = tmp_path / "gate"
    server = serve("slow_app:app", tmp_path, model=model, pythonpath=(str(ROOT), str(APPS), str(tmp_path)),
                   env={"SLOW_APP_GATE": str(gate), "SLOW_APP_LOADING": str(tmp_path / "loading")},
                   extra=["--processes", "1", "--lazy-apps", "--worker-reload-mercy", str(MERCY)])
    try:
        wait_for(lambda: _echo(server), 30, "the app")
        ws = websocket.create_connection(server.url + "/echo", timeout=QUICK + 10)
        os.mkfifo(gate)
        os.kill(server.pid, signal.SIGHUP)
        assert recv_close_code(ws) == 1012
        ws.close()
        marker = wait_for(lambda: list(tmp_path.glob("loading-*")), 60, "the reloaded worker importing the app")[0]
        pid = int(marker.name.split("-")[1])
        wait_for(lambda: _hears_sighup(server.pid), 30, "the reloaded master's SIGHUP handler")
        spawns = spawned(server.log())
        os.kill(server.pid, signal.SIGHUP)  # the master curses the worker: SIGHUP, ignored by uWSGI here
        server.wait_for_log(r"\.\.\.gracefully killing workers\.\.\.", QUICK, count=2)
        with open(gate, "w") as fifo:
            fifo.write("go")
        server.wait_for_log(rf"Gracefully killing worker 1 \(pid: {pid}\)", QUICK + 10)
        wait_for(lambda: spawned(server.log()) > spawns, 30, "the instance reloaded again")
        wait_for(lambda: _echo(server), 30, "the app after the second reload")
        assert "NO MERCY" not in server.log()
    finally:
        server.stop()


def recv_close_code(ws: websocket.WebSocket) -> int:
    ws.settimeout(QUICK + 10)
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return int.from_bytes(data[:2], "big")


# -- the rate, measured (not a test): python tests/test_reload_race.py MODEL [TRIES] ---------------


def measure(model: str, tries: int) -> int:
    """`tries` double reloads, the second SIGHUP as soon as the reloaded workers are
    spawned (no wait for their handlers: what uWSGI alone loses counts too), clients
    reconnecting, worker-reload-mercy 15 s. Prints each try; returns the tries that went
    wrong (a connection without a close frame or closed QUICK late, or NO MERCY)."""
    import tempfile

    wrong = 0
    for i in range(tries):
        tmp = Path(tempfile.mkdtemp(prefix=f"reload-race-{model}-"))
        server = serve("echo_app:app", tmp, model=model, extra=["--processes", "2", "--worker-reload-mercy", "15"])
        clients = Reconnecting(server.url)
        stops: list = []
        try:
            wait_for(lambda: _echo(server), 30, "the app")
            for _ in range(2):
                seen = spawned(server.log())
                stops.append(time.monotonic())
                os.kill(server.pid, signal.SIGHUP)
                wait_for(lambda: spawned(server.log()) >= seen + 2, 60, "the reloaded workers")
            wait_for(lambda: _echo(server), 60, "the app after the reloads")
        finally:
            clients.finish()
            stops.append(time.monotonic())
            server.stop()
        try:
            check(clients.ended(), stops, server.log())
            outcome = "ok"
        except AssertionError as exc:
            wrong += 1
            outcome = str(exc).splitlines()[0][:160]
        print(f"try {i + 1}/{tries}: {outcome}", flush=True)
    print(f"{model}: {wrong} of {tries} double reloads went wrong")
    return wrong


if __name__ == "__main__":
    import sys

    measure(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5)
