"""How many idle WebSockets one uWSGI instance holds, and what each costs.

    python bench/idle.py --model gevent --connections 10000              # 1 worker: KiB per connection
    python bench/idle.py --model threads --connections 1000
    python bench/idle.py --model gevent --connections 100000 --workers 6 # one instance, many workers

Starts one uWSGI instance serving tests/apps/echo_app.py (keepalive pings off;
``--broadcast`` adds the sharedarea ring and the broadcast mule, so every
connection is also attached to its worker's hub), opens N idle connections
from ``--clients`` client processes (asyncio, a lean client of its own),
each from its own loopback source address 127.0.0.<10+i> (one source
address has about 28,000 ephemeral ports towards one server port), holds
them all open at once, reads every worker's RSS and open fds, then has
**every** connection send a message and checks its echo, and prints per
connection: worker RSS growth (summed over workers, KiB) and fds.

Limits (checked up front, with what to do): a process may hold at most
``ulimit -Hn`` fds; without CAP_SYS_RESOURCE (containers) the hard limit
cannot be raised, so each worker holds at most about that many connections
and ``--workers`` must be at least N / (hard limit - 100); each client
process likewise. ``net.core.somaxconn`` must be >= the listen backlog used
(4096 here; the script raises it when it can). Loopback only; every process
started here is stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import math
import multiprocessing as mp
import os
import resource
import signal
import socket
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent

BACKLOG = 4096
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux >= 4.2
PER_CLIENT = 12000  # connections per client process (one source address each)
FD_MARGIN = 100  # fds a worker or client process uses besides its connections


def status_kib(pid: int, key: str) -> int:
    """A ``VmXxx:`` line of /proc/<pid>/status, KiB (0 when the process is gone)."""
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def smaps_by_kind(pid: int) -> dict[str, int]:
    """Rss (KiB) of /proc/<pid>/smaps summed by kind of mapping: ``[heap]`` (brk:
    malloc's main arena), ``anon`` (anonymous mmaps: pymalloc arenas, CPython's
    per-greenlet data-stack chunks, large mallocs), ``/dev/zero`` (uWSGI's shared
    memory: per-core request structures, the sharedarea), ``[stack]``, ``file``."""
    kinds: dict[str, int] = {}
    kind = "anon"
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                first = line.split(None, 1)[0]
                if first[0] in "0123456789abcdef" and "-" in first and not first.endswith(":"):
                    fields = line.split()
                    name = fields[5] if len(fields) > 5 else ""
                    kind = ("anon" if not name else name if name.startswith("[") else
                            "/dev/zero" if name.startswith("/dev/zero") else "file")
                elif first == "Rss:":
                    kinds[kind] = kinds.get(kind, 0) + int(line.split()[1])
    except OSError:
        pass
    return kinds


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


# ----------------------------------------------------------------- client processes
# A lean WebSocket client (asyncio protocols, the handshake and frames by hand):
# the `websockets` library's connect costs several times more CPU per
# connection, which on a shared 2-core machine made 100,000 connects take
# longer than the run's patience.

def _masked_text(payload: bytes, opcode: int = 0x1) -> bytes:
    """One masked frame (client to server, RFC 6455 section 5.3), text unless `opcode`
    says otherwise (0x9: a ping), payload < 126 bytes."""
    mask = os.urandom(4)
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class _Client(asyncio.Protocol):
    """One idle connection: the opening handshake, then frames in (unmasked, small)."""

    def __init__(self, request: bytes, opened: "asyncio.Future[None]") -> None:
        self.request, self.opened = request, opened
        self.buf = bytearray()
        self.upgraded = False
        self.frames: "asyncio.Queue[bytes]" = asyncio.Queue()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end])
            del self.buf[:end + 4]
            if not head.startswith(b"HTTP/1.1 101"):
                if not self.opened.done():
                    self.opened.set_exception(ConnectionError(head.split(b"\r\n")[0].decode(errors="replace")))
                return
            self.upgraded = True
            if not self.opened.done():
                self.opened.set_result(None)
        while len(self.buf) >= 2 and len(self.buf) >= 2 + (self.buf[1] & 0x7F):
            n = self.buf[1] & 0x7F
            self.frames.put_nowait(bytes(self.buf[2:2 + n]))
            del self.buf[:2 + n]

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during the handshake"))
        self.frames.put_nowait(b"")


async def _client_main(host: str, port: int, path: str, count: int, source: str, ctl: Connection) -> None:
    """Open ``count`` connections from ``source``; on "echo" make every one echo; on
    "close" close them. Reports go back through ``ctl`` as tuples."""
    loop = asyncio.get_running_loop()
    conns: List[_Client] = []
    errors: List[str] = []
    sem = asyncio.Semaphore(200)

    async def one() -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n").encode()
        async with sem:
            opened: "asyncio.Future[None]" = loop.create_future()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                # bind() with port 0 takes a port for good, from half the ephemeral range (about
                # 14,000 per address); with IP_BIND_ADDRESS_NO_PORT the port is chosen at connect,
                # per destination: the whole range (about 28,000) towards one server port.
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((source, 0))
                sock.setblocking(False)
                await loop.sock_connect(sock, (host, port))
                _, proto = await loop.create_connection(lambda: _Client(request, opened), sock=sock)
                await asyncio.wait_for(opened, 120)
                conns.append(proto)
            except Exception as exc:  # counted and reported: the parent decides
                sock.close()
                errors.append(f"{type(exc).__name__}: {exc}")

    started = time.monotonic()
    await asyncio.gather(*(one() for _ in range(count)))
    ctl.send(("opened", len(conns), errors[:3], len(errors), time.monotonic() - started))
    while True:
        cmd = await loop.run_in_executor(None, ctl.recv)
        if cmd in ("echo", "ping"):  # a message and its echo, or a ping and its pong (the prototype)
            opcode = 0x1 if cmd == "echo" else 0x9
            async def check(i: int, c: _Client, opcode: int = opcode) -> bool:
                async with sem:
                    text = f"still there? {i}".encode()
                    c.transport.write(_masked_text(text, opcode))
                    return await asyncio.wait_for(c.frames.get(), 60) == text

            results = await asyncio.gather(*(check(i, c) for i, c in enumerate(conns)), return_exceptions=True)
            bad = [repr(r) for r in results if r is not True]
            ctl.send(("echoed", len(results) - len(bad), bad[:3], len(bad)))
        elif cmd == "close":
            for c in conns:
                c.transport.close()
            ctl.send(("closed",))
            return


def _client(url: str, count: int, source: str, ctl: Connection) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    hostport, _, path = url.split("//", 1)[1].partition("/")
    host, _, port = hostport.partition(":")
    asyncio.run(_client_main(host, int(port), "/" + path, count, source, ctl))


# ----------------------------------------------------------------- the run

def check_limits(args: argparse.Namespace) -> None:
    """Fail early, saying what to change, when the run cannot fit the fd limits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    per_process = hard - FD_MARGIN
    for what, n in (("--workers", args.workers), ("--clients", args.clients)):
        if math.ceil(args.connections / n) > per_process:
            sys.exit(f"idle.py: {args.connections} connections over {n} processes is "
                     f"{math.ceil(args.connections / n)} fds each, above the hard fd limit {hard} "
                     f"(ulimit -Hn; raising it needs CAP_SYS_RESOURCE): use {what} "
                     f"{math.ceil(args.connections / per_process)} or more")
    if math.ceil(args.connections / args.clients) > 28000:
        sys.exit("idle.py: more than 28,000 connections per client process would exhaust the ephemeral "
                 f"ports of its source address: use --clients {math.ceil(args.connections / 28000)} or more")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # uWSGI inherits it
    try:
        path = Path("/proc/sys/net/core/somaxconn")
        if int(path.read_text()) < BACKLOG:
            path.write_text(str(BACKLOG))
    except OSError as exc:
        print(f"idle.py: cannot raise net.core.somaxconn to {BACKLOG} ({exc}): connects may be refused "
              "under load", file=sys.stderr)


def mule_entry(repo: Path) -> str:
    """The broadcast mule's entry point in the checkout (it moved in issue 11)."""
    return ("uwsgi_ws.mule:run" if (repo / "uwsgi_ws" / "mule.py").exists()
            else "uwsgi_ws.broadcast.mule:run")


def server_args(args: argparse.Namespace) -> list[str]:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    per_worker = math.ceil(args.connections / args.workers)
    # Cores (gevent) or threads per worker: room for an uneven spread of the
    # connects over the workers, within the fd limit. A worker whose cores are
    # all busy stops accepting and leaves the connects to the others.
    cores = min(hard - FD_MARGIN, max(per_worker + 100, int(per_worker * 1.3)))
    if args.model == "gevent":
        model = ["--processes", str(args.workers), "--gevent", str(cores)]
    else:
        model = ["--processes", str(args.workers), "--threads", str(per_worker + 10)]
    extra = [*model, "--listen", str(BACKLOG), "--max-fd", str(hard), "--pythonpath", str(args.repo)]
    if args.broadcast:
        extra += ["--sharedarea", "4096", f"--mule={mule_entry(args.repo)}"]
    return extra


def settle(pids: List[int], patience: float = 60.0) -> None:
    """Wait until every worker's RSS and open fds stop changing (two reads 1 s apart
    equal): a worker keeps mapping uWSGI's per-core pages and starting its threads
    (``--threads``: an fd each) for a while after it listens, and a baseline read
    during that made the per-connection figure swing by 10 KiB from run to run."""
    deadline = time.monotonic() + patience
    last: Any = None
    while time.monotonic() < deadline:
        now = [(status_kib(pid, "VmRSS"), open_fds(pid)) for pid in pids]
        if now == last:
            return
        last = now
        time.sleep(1.0)


def main_run(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(args.repo / "tests"))
    from harness import serve  # type: ignore[attr-defined]  # the tests' uWSGI launcher (tests/apps)

    tmp = Path(tempfile.mkdtemp(prefix="uwsgi_ws-idle-"))
    servers = str(args.repo / "bench" / "servers")
    env = dict(os.environ)
    if args.app == "prototype":  # the frame-once floor: raw WSGI, one greenlet per connection, no Flask
        app, route = "prototype_server:application", "/ws"
    elif args.tracemalloc:
        app, route = "idle_trace_app:app", "/echo"
        env["UWSGI_WS_TRACEMALLOC"] = str(args.tracemalloc)
    else:
        app, route = "echo_app:app", "/echo"
    server = serve(app, tmp, model=args.model, extra=server_args(args), env=env,
                   pythonpath=(str(args.repo), str(args.repo / "tests" / "apps"), servers))
    clients: List[Tuple[Any, Connection]] = []  # (a spawned process, its control pipe)
    try:
        server.wait_for_log(r"spawned uWSGI worker \d+ ", count=args.workers, timeout=120)
        server.wait_for_port()
        pids = server.worker_pids()
        settle(pids)
        if args.tracemalloc:
            print(_get(server.url + "/_trace/mark"), end="", file=sys.stderr)
        rss0 = {pid: status_kib(pid, "VmRSS") for pid in pids}
        kinds0 = {pid: smaps_by_kind(pid) for pid in pids}
        fds0 = {pid: open_fds(pid) for pid in pids}
        ctx = mp.get_context("spawn")
        share, rest = divmod(args.connections, args.clients)
        started = time.monotonic()
        for i in range(args.clients):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_client, args=(server.url + route, share + (i < rest),
                                                     f"127.0.0.{10 + i}", theirs), daemon=True)
            proc.start()
            clients.append((proc, mine))
        opened = 0
        errors: List[str] = []
        for proc, ctl in clients:
            _, n, errs, n_err, secs = ctl.recv()
            print(f"client {proc.pid}: {n} connections opened in {secs:.1f}s", file=sys.stderr, flush=True)
            opened += n
            errors += errs if n_err else []
            if n_err:
                print(f"client {proc.pid}: {n_err} connects failed, e.g. {errs[:1]}", file=sys.stderr)
        open_secs = time.monotonic() - started
        rss1 = {pid: status_kib(pid, "VmRSS") for pid in pids}
        hwm = {pid: status_kib(pid, "VmHWM") for pid in pids}
        fds1 = {pid: open_fds(pid) for pid in pids}
        kinds1 = {pid: smaps_by_kind(pid) for pid in pids}
        trace = (_get(server.url + "/_trace/diff?top=25&group=lineno") + "by traceback (the most recent frames):\n"
                 + _get(server.url + f"/_trace/diff?top=30&group=traceback&depth={min(args.tracemalloc, 5)}")
                 + _get(server.url + "/_trace/stacks")
                 if args.tracemalloc else "")
        client_rss = sum(status_kib(p.pid or 0, "VmRSS") for p, _ in clients)
        for _, ctl in clients:
            ctl.send("ping" if args.app == "prototype" else "echo")  # the prototype echoes no messages
        echoed, failed = 0, 0
        for _, ctl in clients:
            _, ok, bad, n_bad = ctl.recv()
            echoed += ok
            failed += n_bad
            if n_bad:
                print(f"echo failures: {n_bad}, e.g. {bad[:1]}", file=sys.stderr)
        grown = sum(rss1[p] - rss0[p] for p in pids)
        per_conn = grown / opened if opened else float("nan")
        print(f"app={args.app} model={args.model} workers={args.workers} broadcast={'on' if args.broadcast else 'off'} "
              f"connections={opened}/{args.connections} opened_in={open_secs:.1f}s "
              f"echoed={echoed}/{opened} crashes={len(server.crashes())}")
        print(f"worker RSS {sum(rss0.values()) / 1024:.1f} -> {sum(rss1.values()) / 1024:.1f} MiB "
              f"(+{grown / 1024:.1f} MiB, {per_conn:.1f} KiB per connection); "
              f"fds {sum(fds0.values())} -> {sum(fds1.values())}; "
              f"client processes RSS {client_rss / 1024:.0f} MiB")
        if opened:
            kinds = sorted({k for d in (*kinds0.values(), *kinds1.values()) for k in d})
            growth = {k: sum(kinds1[p].get(k, 0) - kinds0[p].get(k, 0) for p in pids) for k in kinds}
            print("smaps Rss growth per connection by mapping: " + ", ".join(
                f"{k} {v / opened:.1f} KiB" for k, v in sorted(growth.items(), key=lambda kv: -kv[1]) if v))
        if trace:
            print("tracemalloc (worker allocations alive after the opens minus before; per connection: "
                  f"divide by {opened}):\n" + trace, end="")
        fds_per_conn = sum(fds1[p] - fds0[p] for p in pids) / opened if opened else 1.0  # threads: 2
        for pid in pids:
            held = round((fds1[pid] - fds0[pid]) / fds_per_conn)
            print(f"  worker pid {pid}: ~{held} connections, RSS {rss0[pid] / 1024:.1f} -> "
                  f"{rss1[pid] / 1024:.1f} MiB (peak {hwm[pid] / 1024:.1f}), "
                  f"{(rss1[pid] - rss0[pid]) / held if held else float('nan'):.1f} KiB per connection")
        for _, ctl in clients:
            ctl.send("close")
        for proc, ctl in clients:
            ctl.recv()
            proc.join(30)
        ok = opened == args.connections and echoed == opened and not server.crashes()
        return 0 if ok else 1
    finally:
        for proc, _ in clients:
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        server.stop()


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen("http" + url[2:] if url.startswith("ws") else url, timeout=120) as response:
        return str(response.read().decode())


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> None:
    # SIGTERM (e.g. from `timeout`) unwinds like ^C: every process started here is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["gevent", "threads"], default="gevent")
    p.add_argument("--connections", type=int, default=10000)
    p.add_argument("--workers", type=int, default=1, help="uWSGI worker processes (default 1)")
    p.add_argument("--clients", type=int, default=None,
                   help="client processes, one loopback source address each (default: enough for the fd "
                        "and port limits)")
    p.add_argument("--broadcast", action="store_true",
                   help="also run the sharedarea ring and the broadcast mule (connections join the hub)")
    p.add_argument("--app", choices=["echo", "prototype"], default="echo",
                   help="echo: tests/apps/echo_app.py (uwsgi_ws, Flask); prototype: "
                        "bench/servers/prototype_server.py (the frame-once floor: raw WSGI, one greenlet "
                        "per connection; gevent only)")
    p.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES",
                   help="serve bench/servers/idle_trace_app.py (echo_app with tracemalloc started at import, "
                        "FRAMES deep) and print the worker's traced growth by allocating traceback; "
                        "tracing inflates RSS (read RSS from a run without it); one worker")
    p.add_argument("--repo", type=Path, default=ROOT,
                   help="checkout whose uwsgi_ws and tests/apps to run (default: this one)")
    args = p.parse_args()
    args.repo = args.repo.resolve()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    args.clients = args.clients or max(1, math.ceil(args.connections / min(PER_CLIENT, hard - FD_MARGIN)))
    check_limits(args)
    sys.exit(main_run(args))


if __name__ == "__main__":
    main()
