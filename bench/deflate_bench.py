#!/usr/bin/env python3
"""permessage-deflate broadcast benchmark (issue 15): uwsgi_ws against `websockets`.

Usage (after ``bash bench/setup.sh``)::

    python bench/deflate_bench.py                 # both scenarios, 3 rounds
    python bench/deflate_bench.py --rounds 1 --scenarios 1000x4096
    python bench/deflate_bench.py --repo /tmp/at-commit   # uwsgi_ws from another checkout, e.g.
        # `git archive HEAD | tar -x -C /tmp/at-commit` plus the built uwsgi_ws/_speedups*.so:
        # a known commit while others edit the shared working tree

Clients offer permessage-deflate as browsers do (``permessage-deflate;
client_max_window_bits``), or nothing (the ``plain`` rows). Servers are
bench/run.py's: ``uwsgi_ws`` (2 gevent workers + the broadcast mule; the
package compresses each broadcast once per worker with no context takeover)
and ``websockets`` with its default compression (context takeover, 12-bit
windows: `broadcast()` compresses every message once per connection).

Scenarios: N=1000 clients x M=100 JSON messages of 4 KiB (a dashboard table:
ids, names, floats, statuses), and N=100 x M=1000 chat events of 100 B (under
uwsgi_ws's `compression_min_size`: sent plain, so the threshold's cost shows).

For each round, scenario, server and offer: the server starts fresh on a free
port (bench/harness/proc.py, stopped by pid), N asyncio clients connect and
check the negotiated extension, a warm-up publish proves every subscription
is live, then the M messages are published one after the other (POST
/publish, next when the previous was answered) and every client inflates and
checks them (sequence numbers: lost, duplicated, reordered). The publisher
stays at most WINDOW messages ahead of the slowest client: the Python client
is slower than the servers, and `websockets`' broadcast() skips a connection
whose buffer is full (that would be counted as loss, not measured as CPU). Measured over
that phase: server CPU (utime+stime of the whole process tree, /proc) per
delivery; bytes on the wire per delivery (every byte the clients read:
frame headers included); the compression ratio (payload bytes / wire bytes).
The report gives medians over rounds and the ratios against `websockets`
(compressed) in the same run. The client runs in this process and shares the
machine's cores with the server: compare CPU per delivery, not rates.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import statistics
import struct
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from harness.proc import ManagedProcess, cpu_seconds, free_port, stop_all, wait_http  # noqa: E402
from run import REPO, SERVERS, SRV, VENV, mule_entry  # noqa: E402

OFFER = "permessage-deflate; client_max_window_bits"  # what Chromium and Firefox send
TAIL = b"\x00\x00\xff\xff"
WORDS = ("hello", "world", "the", "meeting", "is", "at", "noon", "see", "you", "there", "ok", "thanks",
         "lunch", "today", "deploy", "done", "review", "please", "why", "not", "yes", "no")
WINDOW = 16  # messages a publisher may be ahead of the slowest client (the client is Python)
SCENARIOS = {"1000x4096": (1000, 4096, 100), "100x100": (100, 100, 1000)}


# -- messages -----------------------------------------------------------------------


def make_message(seq: int, size: int, rng: random.Random) -> bytes:
    """A JSON message of exactly `size` bytes carrying `seq`: a table of rows
    (4 KiB) or a chat event (100 B)."""
    if size >= 1024:
        rows = []
        body = b""
        while True:
            i = len(rows)
            rows.append({"id": 1000 + i, "name": f"sensor-{(seq * 7 + i) % 97}", "value": round(rng.uniform(0, 1000), 2),
                         "status": rng.choice(["ok", "ok", "ok", "warn", "fail"]), "ts": 1764547200 + seq * 10 + i})
            body = json.dumps({"seq": seq, "type": "table", "rows": rows, "pad": ""}).encode()
            if len(body) > size:
                rows.pop()
                break
        body = json.dumps({"seq": seq, "type": "table", "rows": rows, "pad": ""}).encode()
    else:
        body = json.dumps({"seq": seq, "event": "said", "room": "lobby", "text": "", "pad": ""}).encode()
    pad = size - len(body)
    assert pad >= 0, (size, len(body))
    words = []
    while sum(len(w) + 1 for w in words) < pad:
        words.append(rng.choice(WORDS))
    return body[:-2] + " ".join(words).encode()[:pad] + b'"}'


# -- the client -----------------------------------------------------------------------


class Client:
    """One WebSocket client: counts wire bytes, inflates, records sequence numbers."""

    def __init__(self, progress: "Progress") -> None:
        self.progress = progress
        self.extension = ""
        self.inflater: Optional[Any] = None
        self.reset_each = False
        self.bytes = 0
        self.payload = 0
        self.seqs: List[int] = []
        self.got_warmup = asyncio.Event()
        self.done = asyncio.Event()
        self.expect = 0
        self.closed = False
        self.close_payload = b""

    async def connect(self, port: int, offer: bool) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
        key = base64.b64encode(os.urandom(16)).decode()
        ext = f"Sec-WebSocket-Extensions: {OFFER}\r\n" if offer else ""
        self.writer.write((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                           f"{ext}\r\n").encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"handshake refused: {head[:200]!r}")
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-extensions":
                self.extension = value.strip()
        if self.extension:
            params = dict((p.strip().partition("=")[0], p.strip().partition("=")[2])
                          for p in self.extension.split(";")[1:])
            bits = int(params.get("server_max_window_bits") or 15)
            self.inflater = zlib.decompressobj(-bits)
            self.reset_each = "server_no_context_takeover" in params
            self.bits = bits

    async def run(self) -> None:
        reader = self.reader
        buf = b""
        try:
            while True:
                chunk = await reader.read(1 << 16)
                if not chunk:
                    self.closed = True
                    return
                self.bytes += len(chunk)
                buf += chunk
                while True:
                    frame, buf = self._frame(buf)
                    if frame is None:
                        break
                    self._message(*frame)
        except (ConnectionError, asyncio.CancelledError):
            return

    @staticmethod
    def _frame(buf: bytes) -> Tuple[Optional[Tuple[int, bool, bytes]], bytes]:
        if len(buf) < 2:
            return None, buf
        b1, b2 = buf[0], buf[1]
        n, i = b2 & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                return None, buf
            (n,), i = struct.unpack_from("!H", buf, 2), 4
        elif n == 127:
            if len(buf) < 10:
                return None, buf
            (n,), i = struct.unpack_from("!Q", buf, 2), 10
        if len(buf) < i + n:
            return None, buf
        assert b1 & 0x80, "fragmented broadcast"
        return (b1 & 0x0F, bool(b1 & 0x40), buf[i:i + n]), buf[i + n:]

    def _message(self, opcode: int, rsv1: bool, payload: bytes) -> None:
        if opcode == 8:
            self.closed = True
            self.close_payload = payload
        elif opcode == 9:  # the servers' keepalive: answer, or be closed
            mask = os.urandom(4)
            self.writer.write(bytes([0x8A, 0x80 | len(payload)]) + mask
                              + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        if opcode >= 8:
            return
        if rsv1:
            assert self.inflater is not None, "RSV1 without permessage-deflate negotiated"
            payload = self.inflater.decompress(payload + TAIL)
            if self.reset_each:
                self.inflater = zlib.decompressobj(-self.bits)
        self.payload += len(payload)
        if payload.startswith(b"W"):
            self.got_warmup.set()
            return
        seq = int(payload[8:payload.index(b",")])  # b'{"seq": 12, ...'
        self.seqs.append(seq)
        self.progress.got(seq)
        if len(self.seqs) >= self.expect:
            self.done.set()


class Progress:
    """How many clients have each message; the publisher waits for the slowest."""

    def __init__(self, clients: int, messages: int) -> None:
        self.clients = clients
        self.counts = [0] * (messages + 2)
        self.events = [asyncio.Event() for _ in range(messages + 2)]

    def got(self, seq: int) -> None:
        if 0 < seq < len(self.counts):
            self.counts[seq] += 1
            if self.counts[seq] == self.clients:
                self.events[seq].set()

    async def everyone_has(self, seq: int, timeout: float = 30.0) -> None:
        if seq > 0:
            await asyncio.wait_for(self.events[seq].wait(), timeout)


async def post(port: int, body: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
                 b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    status = await reader.readline()
    writer.close()
    if b" 204" not in status and b" 200" not in status:
        raise RuntimeError(f"publish answered {status!r}")


async def session(port: int, server: ManagedProcess, clients: int, size: int, messages: int,
                  offer: bool) -> Dict[str, Any]:
    progress = Progress(clients, messages)
    conns = [Client(progress) for _ in range(clients)]
    for start in range(0, clients, 50):
        await asyncio.gather(*(c.connect(port, offer) for c in conns[start:start + 50]))
    tasks = [asyncio.ensure_future(c.run()) for c in conns]
    try:
        extensions = {c.extension for c in conns}
        k = 0
        while not all(c.got_warmup.is_set() for c in conns):  # every subscription is live
            await post(port, b"W%d" % k)
            k += 1
            await asyncio.wait([asyncio.ensure_future(c.got_warmup.wait()) for c in conns], timeout=0.5)
        await asyncio.sleep(0.2)  # the last warm-ups drain
        rng = random.Random(size)
        bodies = [make_message(seq, size, rng) for seq in range(1, messages + 1)]
        for c in conns:
            c.bytes = c.payload = 0
            c.expect = messages
        pids = server.pids() | {server.pid}
        cpu0, t0 = cpu_seconds(pids), time.monotonic()
        published = 0
        try:
            for seq, body in enumerate(bodies, 1):
                await progress.everyone_has(seq - WINDOW)
                await post(port, body)
                published = seq
        except asyncio.TimeoutError:
            pass  # some client misses a message: counted as lost below
        waiting = [asyncio.ensure_future(c.done.wait()) for c in conns]
        await asyncio.wait(waiting, timeout=60)
        cpu1, t1 = cpu_seconds(server.pids() | {server.pid}), time.monotonic()
        for w in waiting:
            w.cancel()
    finally:
        for c in conns:
            c.writer.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    deliveries = sum(len(set(c.seqs)) for c in conns)
    wire = sum(c.bytes for c in conns)
    return {
        "extension": " | ".join(sorted(e or "(none)" for e in extensions)),
        "deliveries": deliveries,
        "lost": messages * clients - deliveries,
        "dup": sum(len(c.seqs) - len(set(c.seqs)) for c in conns),
        "reord": sum(sum(1 for a, b in zip(c.seqs, c.seqs[1:]) if b < a) for c in conns),
        "cpu_us": (cpu1 - cpu0) / max(deliveries, 1) * 1e6,
        "wire_b": wire / max(deliveries, 1),
        "ratio": (sum(c.payload for c in conns) / wire) if wire else 0.0,
        "seconds": t1 - t0,
        "published": published,
        "closed": sum(1 for c in conns if c.closed),
    }


def start(name: str, clients: int, logdir: Path, repo: Path = REPO) -> Tuple[ManagedProcess, int]:
    """Start server `name` (bench/run.py's SERVERS) on a free port, uwsgi_ws from `repo`;
    returns it once it answers HTTP (RuntimeError from wait_http when it does not in 30 s)."""
    port = free_port()
    fmt = {"py": VENV / "bin" / "python", "uwsgi": VENV / "bin" / "uwsgi", "srv": SRV, "repo": repo,
           "mule": mule_entry(repo), "gevent": max(1000, clients + 100), "threads": clients + 64,
           "conns": 2 * clients + 100, "port": port, "gunicorn": VENV / "bin" / "gunicorn"}
    spec = SERVERS[name]
    cmd = [part.format(**fmt) for part in spec.cmd]
    server = ManagedProcess(cmd, cwd=repo, log=logdir / f"{name}-{port}.log", stop_signal=spec.stop_signal)
    wait_http(port, server, timeout=30)
    return server, port


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma list of {', '.join(SCENARIOS)}")
    p.add_argument("--servers", default="uwsgi_ws,websockets")
    p.add_argument("--no-plain", action="store_true", help="skip the rows where clients offer nothing")
    p.add_argument("--repo", type=Path, default=REPO, help="the uwsgi_ws checkout the uwsgi_ws server imports")
    args = p.parse_args(argv)
    repo = args.repo.resolve()
    if not (repo / "uwsgi_ws" / "__init__.py").exists():
        p.error(f"--repo {repo}: no uwsgi_ws/__init__.py there")
    logdir = BENCH / "results" / "deflate-logs" / time.strftime("%Y%m%d-%H%M%S")
    logdir.mkdir(parents=True, exist_ok=True)
    servers = args.servers.split(",")
    offers = [True] if args.no_plain else [True, False]
    results: Dict[Tuple[str, str, bool], List[Dict[str, Any]]] = {}
    print(f"load before: {Path('/proc/loadavg').read_text().split()[0]}; uwsgi_ws from {repo}; logs: {logdir}",
          file=sys.stderr)
    try:
        for rnd in range(args.rounds):
            for scen in args.scenarios.split(","):
                clients, size, messages = SCENARIOS[scen]
                order = servers[rnd % len(servers):] + servers[:rnd % len(servers)]
                for name in order:
                    for offer in offers:
                        server, port = start(name, clients, logdir, repo)
                        try:
                            r = asyncio.run(session(port, server, clients, size, messages, offer))
                        finally:
                            left = server.stop()
                            assert not left, f"{name} left processes {left}"
                        results.setdefault((scen, name, offer), []).append(r)
                        print(f"round {rnd + 1} {scen} {name} {'deflate' if offer else 'plain'}: "
                              f"{r['cpu_us']:.2f} us/delivery, {r['wire_b']:.0f} B/delivery, lost {r['lost']}, "
                              f"published {r['published']}, closed {r['closed']}, {r['seconds']:.1f} s, "
                              f"ext {r['extension']}", file=sys.stderr)
    finally:
        stop_all()
    print(f"load after: {Path('/proc/loadavg').read_text().split()[0]}", file=sys.stderr)
    print(report(results, args.rounds))
    return 0 if all(r["lost"] == 0 and r["dup"] == 0 and r["reord"] == 0
                    for rs in results.values() for r in rs) else 1


def report(results: Dict[Tuple[str, str, bool], List[Dict[str, Any]]], rounds: int) -> str:
    lines = [f"medians over {rounds} round(s); ×ws = against websockets (deflate) in the same scenario", "",
             "| scenario | server | client offers | negotiated | server CPU µs/delivery | ×ws | wire B/delivery "
             "| ×ws | payload/wire | lost/dup/reord |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (scen, name, offer), rs in results.items():
        cpu = statistics.median(r["cpu_us"] for r in rs)
        wire = statistics.median(r["wire_b"] for r in rs)
        base = results.get((scen, "websockets", True))
        bcpu = statistics.median(r["cpu_us"] for r in base) if base else 0
        bwire = statistics.median(r["wire_b"] for r in base) if base else 0
        lines.append(
            f"| N={SCENARIOS[scen][0]} × {SCENARIOS[scen][1]} B, M={SCENARIOS[scen][2]} | {name} "
            f"| {'deflate' if offer else 'nothing'} | {rs[0]['extension']} | {cpu:.2f} "
            f"| {cpu / bcpu if bcpu else 0:.2f} | {wire:.0f} | {wire / bwire if bwire else 0:.2f} "
            f"| {statistics.median(r['ratio'] for r in rs):.2f} "
            f"| {sum(r['lost'] for r in rs)}/{sum(r['dup'] for r in rs)}/{sum(r['reord'] for r in rs)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
