#!/usr/bin/env python3
"""Per-message CPU of a broadcast, split by process: where a publish's cost goes.

Usage (after ``bash bench/setup.sh``)::

    python bench/per_message.py                          # N=100 and N=0, max rate, 3 rounds
    python bench/per_message.py --clients 0,10,100 --rate 50 --rounds 5
    python bench/per_message.py --setups prototype,uwsgi_ws-1p,uwsgi_ws --base-repo /tmp/before

Each setup is started fresh per round (setups interleaved: round 1 of every
setup, then round 2...). N raw-socket WebSocket clients connect to ``/ws`` and
read everything (one selector thread); one client POSTs M messages of
``--size`` bytes to ``/publish``, one after the other (a new TCP connection per
POST: uWSGI's ``--http-socket`` has no keep-alive), at ``--rate`` messages/s
or as fast as the answers come (0). The measure is utime+stime of every
process of the instance (/proc, 10 ms ticks) from the first POST until every
client has received every message, divided by the messages: *µs of server CPU
per message*, per process (master, each worker, the mule) and in total, medians
over the rounds. N=0 isolates the fixed cost of a publish (HTTP, Flask, the
publish path) from the deliveries; the difference between ``uwsgi_ws-1p``
(one worker) and ``uwsgi_ws`` (two) is the second worker's wake-up and the
accept herd. Unlike ``run.py`` (the Node load client, every peer) this
measures our own servers' split; its client is Python and shares the 2 cores.

``--split`` reports user and system time apart: the kernel's share (the
sends) against the user-space share (Python per message and per delivery).

Setups:

- ``prototype``: servers/prototype_server.py, 1 gevent worker (run.py's row);
- ``uwsgi_ws``: servers/uwsgi_ws_app.py, 2 gevent workers + the broadcast mule
  (run.py's row); ``uwsgi_ws-1p``: the same with 1 worker;
- ``uwsgi_ws-mule``: 2 workers, every publish through the mule
  (``uwsgi-ws-publish-direct=false``, the path before session 8);
- ``uwsgi_ws-base``: 2 workers, the package from ``--base-repo``.
"""
from __future__ import annotations

import argparse
import base64
import http.client
import os
import selectors
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from harness.proc import ManagedProcess, free_port, stop_all, tree_pids, wait_http

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV = Path(os.environ.get("BENCH_VENV", BENCH / ".venv"))
SRV = BENCH / "servers"
TICK = os.sysconf("SC_CLK_TCK")

UWSGI = ("{uwsgi}", "--master", "--http-socket", "127.0.0.1:{port}", "--listen", "1024", "--need-app",
         "--disable-logging", "--auto-procname")
OURS = ("--gevent", "1000", "--sharedarea", "4096", "--mule=uwsgi_ws.broadcast.mule:run", "--mule-msg-size=65536",
        "--wsgi-file", "{srv}/uwsgi_ws_app.py", "--callable", "app", "--pythonpath", "{repo}")
SETUPS: Dict[str, tuple] = {
    "prototype": UWSGI + ("--processes", "1", "--gevent", "1000", "--wsgi-file", "{srv}/prototype_server.py"),
    "uwsgi_ws-1p": UWSGI + ("--processes", "1") + OURS,
    "uwsgi_ws": UWSGI + ("--processes", "2") + OURS,
    "uwsgi_ws-mule": UWSGI + ("--processes", "2") + OURS + ("--set-placeholder", "uwsgi-ws-publish-direct=false"),
    "uwsgi_ws-base": UWSGI + ("--processes", "2") + OURS,
}


SPLIT = False  # --split: user and system time apart


def _cpu_by_process(root: int) -> Dict[str, int]:
    """{process title: utime+stime ticks} of the instance (titles from --auto-procname);
    with SPLIT, {"<title> user": utime, "<title> sys": stime}."""
    out: Dict[str, int] = {}
    for pid in tree_pids(root) | {root}:
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = title.replace("uWSGI ", "") if title.startswith("uWSGI") else "master"
        if SPLIT:
            out[name + " user"] = out.get(name + " user", 0) + int(fields[11])
            out[name + " sys"] = out.get(name + " sys", 0) + int(fields[12])
        else:
            out[name] = out.get(name, 0) + int(fields[11]) + int(fields[12])
    return out


class Clients:
    """N WebSocket clients on raw sockets, read by one thread, counting bytes."""

    def __init__(self, port: int, n: int) -> None:
        self.socks: List[socket.socket] = []
        self.received: Dict[int, int] = {}
        self.sel = selectors.DefaultSelector()
        for _ in range(n):
            sock = socket.create_connection(("127.0.0.1", port))
            key = base64.b64encode(os.urandom(16)).decode()
            sock.sendall(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    raise RuntimeError("the server closed a client during the handshake")
                head += chunk
            if not head.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(f"handshake refused: {head[:60]!r}")
            sock.setblocking(False)
            self.socks.append(sock)
            self.received[sock.fileno()] = len(head) - head.index(b"\r\n\r\n") - 4
            self.sel.register(sock, selectors.EVENT_READ)
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            for key, _ in self.sel.select(0.1):
                try:
                    data = key.fileobj.recv(1 << 20)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                self.received[key.fd] += len(data)

    def wait_all(self, total: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while any(v < total for v in self.received.values()):
            if time.monotonic() > deadline:
                short = sum(1 for v in self.received.values() if v < total)
                raise RuntimeError(f"{short} clients still short of {total} bytes after {timeout:.0f}s")
            time.sleep(0.001)

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        for sock in self.socks:
            sock.close()


def post(port: int, body: bytes) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/publish", body=body)
    status = conn.getresponse().status
    conn.close()
    if status >= 300:
        raise RuntimeError(f"POST /publish answered {status}")


def one_run(setup: str, repo: Path, clients: int, size: int, messages: int, rate: float,
            logs: Path) -> Dict[str, float]:
    port = free_port()
    fmt = dict(uwsgi=str(VENV / "bin" / "uwsgi"), port=port, srv=str(SRV), repo=str(repo))
    cmd = [a.format(**fmt) for a in SETUPS[setup]]
    proc = ManagedProcess(cmd, cwd=SRV, log=logs / f"{setup}-{port}.log")
    try:
        wait_http(port, proc, 30)
        body = b"x" * size
        frame = (2 if size < 126 else 4 if size < 65536 else 10) + size
        for _ in range(20):  # warm up: imports, the hub, the ring
            post(port, body)
        group = Clients(port, clients)
        try:
            if clients:
                post(port, body)
                group.wait_all(frame, 30)  # every client subscribed and served
            before = _cpu_by_process(proc.pid)
            start = time.monotonic()
            for i in range(messages):
                post(port, body)
                if rate:
                    pause = start + (i + 1) / rate - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
            if clients:
                group.wait_all((1 + messages) * frame, 60)
            after = _cpu_by_process(proc.pid)
        finally:
            group.close()
    finally:
        left = proc.stop()
        if left:
            print(f"  ! {setup}: pids left after SIGKILL: {left}", file=sys.stderr)
    cost = {name: (after[name] - before.get(name, 0)) * 1e6 / TICK / messages for name in after}
    cost["total"] = sum(cost.values())
    return cost


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--setups", default="prototype,uwsgi_ws-1p,uwsgi_ws,uwsgi_ws-mule",
                   help=f"comma list of {','.join(SETUPS)}")
    p.add_argument("--clients", default="100,0", help="comma list of N (default 100,0)")
    p.add_argument("--size", type=int, default=100, help="payload bytes (default 100)")
    p.add_argument("--messages", type=int, default=3000, help="messages per run (default 3000)")
    p.add_argument("--rate", type=float, default=0.0, help="messages/s; 0: as fast as answered (default)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--repo", type=Path, default=REPO, help="checkout the uwsgi_ws setups import")
    p.add_argument("--base-repo", type=Path, default=None, help="checkout of the uwsgi_ws-base setup")
    p.add_argument("--split", action="store_true", help="user and system CPU time apart (per process)")
    args = p.parse_args(argv)
    global SPLIT
    SPLIT = args.split
    setups = [s for s in args.setups.split(",") if s]
    unknown = [s for s in setups if s not in SETUPS]
    if unknown or ("uwsgi_ws-base" in setups and args.base_repo is None):
        p.error(f"unknown setups {unknown} (known: {', '.join(SETUPS)}); uwsgi_ws-base needs --base-repo")
    logs = BENCH / "results" / "logs" / time.strftime("per-message-%Y%m%d-%H%M%S")
    logs.mkdir(parents=True, exist_ok=True)
    print(f"# per-message server CPU — {time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.2f}")
    print(f"- command: `python bench/per_message.py {' '.join(argv if argv is not None else sys.argv[1:])}`")
    print(f"- {args.messages} POSTs of {args.size} B per run, rate {args.rate or 'max'}, {args.rounds} interleaved "
          "rounds, medians; µs of CPU per message (utime+stime, 10 ms ticks)\n")
    try:
        for n in [int(c) for c in args.clients.split(",") if c]:
            runs: Dict[str, List[Dict[str, float]]] = {s: [] for s in setups}
            for _ in range(args.rounds):
                for setup in setups:
                    repo = args.base_repo if setup == "uwsgi_ws-base" else args.repo
                    runs[setup].append(one_run(setup, repo, n, args.size, args.messages, args.rate, logs))
            names = sorted({k for rs in runs.values() for r in rs for k in r if k != "total"})
            print(f"## N={n}\n")
            print("| setup | " + " | ".join(names) + " | **total µs/msg** | × prototype |")
            print("|---|" + "---|" * (len(names) + 2))
            base: Any = None
            for setup in setups:
                med = {k: statistics.median(r.get(k, 0.0) for r in runs[setup]) for k in names + ["total"]}
                if setup == "prototype":
                    base = med["total"]
                ratio = f"{med['total'] / base:.2f}" if base else "–"
                print(f"| {setup} | " + " | ".join(f"{med[k]:.0f}" for k in names)
                      + f" | **{med['total']:.0f}** | {ratio} |")
            print()
    finally:
        stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
