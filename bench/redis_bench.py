#!/usr/bin/env python3
"""Scale-out benchmark: broadcasts over 2 instances sharing them through Redis.

Usage (after ``bash bench/setup.sh``; needs ``redis-server`` on PATH)::

    python bench/redis_bench.py                     # N=100 and N=1000, 100 B, 1 round
    python bench/redis_bench.py --rounds 3 --clients 100 --sizes 100,16384

Setups, each started fresh for every run with a redis-server of its own on a
free port (no persistence), everything stopped by pid afterwards:

- ``uwsgi_ws-redis``: two uWSGI instances (2 gevent workers + the broadcast
  mule each) with ``UWSGI_WS_REDIS_URL``: the Redis bridge (a Redis Stream);
- ``flask-socketio-redis``: two ``socketio.run`` processes (gevent) with
  ``message_queue="redis://..."`` (Redis pub/sub), servers/socketio_redis_server.py;
- ``uwsgi_ws`` (reference): one instance, no Redis, the same clients.

The N clients are split evenly over the instances (``subUrls`` of
client/load.js); one sequential publisher POSTs to the first instance, so half
of the deliveries cross Redis and half are local. Phases and counters are
load.js's (see bench/README.md): throughput with loss/dup/reorder checks, then
at the smallest N a latency phase (50 msg/s of 100 B for 5 s, publish-to-receive
p50/p99 over all clients). CPU is utime+stime over the throughput phase,
sampled exactly at its start and end: *server µs/delivery* sums the process
trees of both instances (workers, mules, masters), *redis µs/delivery* the
redis-server, *total* both. Markdown to stdout and bench/results/redis-latest.md,
records to bench/results/redis-latest.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import socket
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from harness.client import run_client
from harness.proc import ManagedProcess, cpu_seconds, free_port, peak_rss_mib, pss_mib, stop_all, wait_http
from harness.report import machine_line

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV = Path(os.environ.get("BENCH_VENV", BENCH / ".venv"))
SRV = BENCH / "servers"
RESULTS = BENCH / "results"

UWSGI_WS = ("{uwsgi}", "--master", "--http-socket", "127.0.0.1:{port}", "--listen", "1024", "--need-app",
            "--disable-logging", "--processes", "2", "--gevent", "1000", "--sharedarea", "4096",
            "--mule=uwsgi_ws.mule:run", "--mule-msg-size=65536", "--wsgi-file", "{srv}/uwsgi_ws_app.py",
            "--callable", "app", "--pythonpath", "{repo}")
BRIDGE = ("--env", "UWSGI_WS_REDIS_URL={redis}", "--env", "UWSGI_WS_REDIS_STREAM={stream}")
SETUPS: dict[str, dict[str, Any]] = {
    "uwsgi_ws-redis": dict(instances=2, cmd=UWSGI_WS + BRIDGE, proto="ws", redis=True,
                           note="2 uWSGI instances x (2 gevent workers + mule), Redis Stream bridge"),
    "flask-socketio-redis": dict(instances=2, cmd=("{py}", "{srv}/socketio_redis_server.py", "{port}", "{redis}"),
                                 proto="sio", redis=True, stop=signal.SIGINT,
                                 note="2 Flask-SocketIO processes (gevent), message_queue=redis:// (pub/sub)"),
    "uwsgi_ws": dict(instances=1, cmd=UWSGI_WS, proto="ws", redis=False,
                     note="reference: 1 uWSGI instance (2 gevent workers + mule), no Redis"),
}


class Group:
    """The processes of one setup, seen by harness.client.run_client as one server.

    run_client calls `pids()` exactly at the throughput phase's start and end;
    each call also records the CPU seconds of every part, so the phase's CPU
    can be split between the instances and redis-server."""

    def __init__(self, parts: dict[str, ManagedProcess]) -> None:
        self.parts = parts
        self.samples: list[dict[str, float]] = []

    def pids(self) -> set[int]:
        by_part = {name: proc.pids() for name, proc in self.parts.items()}
        self.samples.append({name: cpu_seconds(pids) for name, pids in by_part.items()})
        return set().union(*by_part.values())

    def phase_cpu(self) -> dict[str, float]:
        """CPU seconds of each part between the first two samples."""
        if len(self.samples) < 2:
            return {}
        return {name: self.samples[1][name] - self.samples[0][name] for name in self.parts}


def start_redis(logdir: Path, tag: str) -> tuple[ManagedProcess, int]:
    port = free_port()
    proc = ManagedProcess([shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                           "--save", "", "--appendonly", "no", "--dir", str(logdir)],
                          cwd=BENCH, log=logdir / f"{tag}.redis.log", stop_signal=signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, port
        except OSError:
            pass
        time.sleep(0.05)
    proc.stop()
    raise RuntimeError(f"redis-server did not answer on {port}: {proc.log_tail()}")


def run_one(name: str, clients: int, size: int, messages: int, latency: dict | None, rnd: int,
            logdir: Path) -> dict[str, Any]:
    setup = SETUPS[name]
    tag = f"{name}-n{clients}-s{size}-r{rnd}"
    rec: dict[str, Any] = {"round": rnd, "setup": name, "clients": clients, "size": size, "messages": messages,
                           "status": "ok", "reason": "", "metrics": {}}
    parts: dict[str, ManagedProcess] = {}
    try:
        fmt: dict[str, Any] = {"py": VENV / "bin" / "python", "uwsgi": VENV / "bin" / "uwsgi", "srv": SRV,
                               "repo": REPO, "stream": f"bench:{uuid.uuid4().hex[:8]}"}
        if setup["redis"]:
            parts["redis"], redis_port = start_redis(logdir, tag)
            fmt["redis"] = f"redis://127.0.0.1:{redis_port}/0"
        ports = []
        for i in range(setup["instances"]):
            port = free_port()
            cmd = [part.format(port=port, **fmt) for part in setup["cmd"]]
            parts[f"instance{i}"] = ManagedProcess(cmd, cwd=REPO, log=logdir / f"{tag}.i{i}.log",
                                                   stop_signal=setup.get("stop", signal.SIGINT))
            ports.append(port)
        for i, port in enumerate(ports):
            try:
                wait_http(port, parts[f"instance{i}"], timeout=30)
            except RuntimeError as exc:
                rec.update(status="skipped", reason=f"instance {i}: {exc}: {parts[f'instance{i}'].log_error()}")
                return rec
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        group = Group(parts)
        config = {"url": urls[0], "subUrls": urls, "proto": setup["proto"], "clients": clients, "size": size,
                  "messages": messages, "latency": latency, "pubConcurrency": 1, "tpSeconds": 20,
                  "drainSeconds": 20, "quietSeconds": 3, "warmupSeconds": 20}
        result = run_client(config, group, timeout=200, log=logdir / f"{tag}.client.log")
        pids = set().union(*(p.pids() for p in parts.values()))
        rec["raw"] = result
        if result.get("error"):
            rec.update(status="error", reason=result["error"])
        rec["metrics"] = metrics_from(result, group.phase_cpu(), peak_rss_mib(pids), pss_mib(pids))
    finally:
        for proc in parts.values():
            leftovers = proc.stop()
            if leftovers:
                rec["leftover_pids"] = leftovers
    return rec


def metrics_from(result: dict[str, Any], cpu: dict[str, float], rss: float, pss: float) -> dict[str, Any]:
    m: dict[str, Any] = {"rss_mib": rss, "pss_mib": pss}
    tp = result.get("tp")
    if tp:
        m.update(deliveries_per_s=tp["deliveries_per_s"], deliveries=tp["deliveries"], lost=tp["lost"],
                 dup=tp["dup"], reorder=tp["reorder"], publish_errors=tp["publish_errors"])
        if cpu and tp["deliveries"]:
            servers = sum(v for k, v in cpu.items() if k != "redis")
            redis = cpu.get("redis", 0.0)
            m.update(server_us=servers * 1e6 / tp["deliveries"], redis_us=redis * 1e6 / tp["deliveries"],
                     total_us=(servers + redis) * 1e6 / tp["deliveries"],
                     parts_us={k: round(v * 1e6 / tp["deliveries"], 2) for k, v in cpu.items()})
    lat = result.get("lat")
    if lat:
        m.update(p50_ms=lat["p50_ms"], p99_ms=lat["p99_ms"], lat_lost=lat["lost"])
    return m


def report(records: list[dict[str, Any]], header: list[str]) -> str:
    rows = []
    keys = sorted({(r["clients"], r["size"], r["setup"]) for r in records},
                  key=lambda k: (k[0], k[1], list(SETUPS).index(k[2])))
    for clients, size, name in keys:
        runs = [r for r in records if (r["clients"], r["size"], r["setup"]) == (clients, size, name)]
        ok = [r["metrics"] for r in runs if r["status"] == "ok"]

        def med(key: str, fmt: str = "{:.2f}") -> str:
            values = [m[key] for m in ok if m.get(key) is not None]
            return fmt.format(statistics.median(values)) if values else "–"

        def total(key: str) -> str:
            return str(sum(m.get(key, 0) or 0 for m in ok)) if ok else "–"

        reasons = "; ".join(r["reason"][:120] for r in runs if r["status"] != "ok")
        rows.append(f"| N={clients}, {size} B | {name} | {len(ok)}/{len(runs)} | {med('deliveries_per_s', '{:,.0f}')} "
                    f"| {med('server_us')} | {med('redis_us')} | {med('total_us')} | {med('p50_ms')} "
                    f"| {med('p99_ms')} | {total('lost')}/{total('dup')}/{total('reorder')} "
                    f"| {med('pss_mib', '{:.0f}')} | {reasons} |")
    table = ["| scenario | setup | ok runs | deliveries/s | server µs/deliv | redis µs/deliv | total µs/deliv "
             "| p50 ms | p99 ms | lost/dup/reord | PSS MiB | notes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = [f"- `{name}`: {setup['note']}" for name, setup in SETUPS.items()]
    return "\n".join(header + ["", *notes, "", *table, *rows]) + "\n"


def main(argv: list[str] | None = None) -> int:
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--clients", type=ints, default=[100, 1000], help="comma list of N (default 100,1000)")
    p.add_argument("--sizes", type=ints, default=[100], help="payload bytes (default 100)")
    p.add_argument("--setups", default=",".join(SETUPS), help="comma list, default all: %(default)s")
    args = p.parse_args(argv)
    setups = [s for s in args.setups.split(",") if s]
    unknown = [s for s in setups if s not in SETUPS]
    if unknown:
        p.error(f"unknown setups {unknown}; known: {', '.join(SETUPS)}")
    missing = [str(x) for x in (VENV / "bin" / "uwsgi", BENCH / "client" / "node_modules" / "ws") if not x.exists()]
    if missing or not shutil.which("node"):
        sys.exit(f"missing {missing or 'node'}: run `bash bench/setup.sh` first")
    if not shutil.which("redis-server"):
        sys.exit("redis-server not found: apt-get install --no-install-recommends redis-server")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    logdir = RESULTS / "logs" / f"redis-{stamp}"
    logdir.mkdir(parents=True, exist_ok=True)
    load0 = Path("/proc/loadavg").read_text().split()[0]
    started = time.monotonic()
    records: list[dict[str, Any]] = []
    try:
        for rnd in range(1, args.rounds + 1):
            order = setups[(rnd - 1) % len(setups):] + setups[:(rnd - 1) % len(setups)]
            for clients in args.clients:
                for size in args.sizes:
                    budget = 300_000 if size <= 1024 else 100_000
                    latency = ({"rate": 50, "seconds": 5, "size": 100}
                               if (clients, size) == (min(args.clients), min(args.sizes)) else None)
                    for name in order:
                        rec = run_one(name, clients, size, max(20, budget // clients), latency, rnd, logdir)
                        records.append(rec)
                        m = rec["metrics"]
                        print(f"[r{rnd}] {name:<22} N={clients:<5} {size} B  {rec['status']} "
                              f"{m.get('deliveries_per_s', 0):,.0f} deliv/s, total {m.get('total_us', float('nan')):.2f} "
                              f"µs/deliv, p99 {m.get('p99_ms', float('nan')):.2f} ms, lost/dup/reord "
                              f"{m.get('lost')}/{m.get('dup')}/{m.get('reorder')}, µs/deliv by part "
                              f"{m.get('parts_us')} {rec['reason'][:200]}",
                              file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("interrupted: stopping everything", file=sys.stderr)
    finally:
        stop_all()
    header = [
        f"# uwsgi_ws scale-out benchmark (2 instances through Redis) — {stamp}",
        "",
        f"- machine: {machine_line(VENV)}; redis-server: "
        + os.popen("redis-server --version").read().split(" sha=")[0].strip(),
        f"- rounds: {args.rounds} (median shown; lost/dup/reord are totals), wall time "
        f"{(time.monotonic() - started) / 60:.1f} min, load average before/after: {load0} / "
        f"{Path('/proc/loadavg').read_text().split()[0]}",
        f"- command: `python bench/redis_bench.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        "- clients split evenly over the instances; one sequential publisher posts to the first instance",
    ]
    text = report(records, header)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "redis-latest.md").write_text(text)
    (RESULTS / "redis-latest.json").write_text(json.dumps({"args": vars(args), "records": records}, indent=1,
                                                          default=str))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
