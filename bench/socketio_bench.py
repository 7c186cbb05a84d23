#!/usr/bin/env python3
"""Socket.IO benchmark: uwsgi_ws.socketio (the Flask-SocketIO compat layer) vs Flask-SocketIO.

Usage (after ``bash bench/setup.sh``; needs ``redis-server`` on PATH)::

    python bench/socketio_bench.py                    # N=100 and N=1000, 100 B, 1 round
    python bench/socketio_bench.py --rounds 3 --clients 100,1000

Setups, each started fresh for every run, stopped by pid afterwards; all serve
the same app (servers/socketio*_server.py: ``POST /publish`` does
``socketio.emit("msg", body)``), and the clients speak Engine.IO v4 over
WebSocket (client/load.js, proto ``sio``):

- ``uwsgi_ws-socketio``: ``from uwsgi_ws.socketio import SocketIO``, one uWSGI
  instance, 2 gevent workers + the broadcast mule (emits cross workers through
  the ring; no Redis);
- ``flask-socketio``: Flask-SocketIO 5.7.0, ``socketio.run`` (gevent), 1 process
  (what one Flask-SocketIO process can do: its documented production server);
- ``flask-socketio-redis``: 2 such processes with ``message_queue=redis://``
  (Flask-SocketIO's documented way to use more than one process), the clients
  split evenly over them.

One sequential publisher posts to the first instance. Throughput phase with
loss/dup/reorder checks, then at the smallest N a latency phase (50 msg/s,
5 s). CPU is utime+stime of every process of the setup (workers, mule, master,
redis-server) over the throughput phase: *total µs/delivery*; the ratio column
divides a peer's by uwsgi_ws-socketio's (above 1: the peer spends more CPU per
delivered message). Markdown to stdout and bench/results/socketio-latest.md,
records to bench/results/socketio-latest.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from redis_bench import Group, metrics_from, start_redis

from harness.client import run_client
from harness.proc import ManagedProcess, free_port, peak_rss_mib, pss_mib, stop_all, wait_http
from harness.report import machine_line

BENCH = Path(__file__).absolute().parent
REPO = BENCH.parent
VENV = Path(os.environ.get("BENCH_VENV", BENCH / ".venv"))
SRV = BENCH / "servers"
RESULTS = BENCH / "results"

OURS = "uwsgi_ws-socketio"
SETUPS: dict[str, dict[str, Any]] = {
    OURS: dict(instances=1, redis=False, stop=signal.SIGINT,
               cmd=("{uwsgi}", "--master", "--http-socket", "127.0.0.1:{port}", "--listen", "1024", "--need-app",
                    "--disable-logging", "--processes", "2", "--gevent", "1100", "--sharedarea", "4096",
                    "--mule=uwsgi_ws.mule:run", "--mule-msg-size=65536", "--wsgi-file",
                    "{srv}/socketio_uwsgi_ws_server.py", "--callable", "app", "--pythonpath", "{repo}"),
               note="uwsgi_ws.socketio: 1 uWSGI instance, 2 gevent workers + the broadcast mule, no Redis"),
    "flask-socketio": dict(instances=1, redis=False, stop=signal.SIGINT,
                           cmd=("{py}", "{srv}/socketio_server.py", "{port}"),
                           note="Flask-SocketIO 5.7.0, socketio.run (gevent), 1 process"),
    "flask-socketio-redis": dict(instances=2, redis=True, stop=signal.SIGINT,
                                 cmd=("{py}", "{srv}/socketio_redis_server.py", "{port}", "{redis}"),
                                 note="2 Flask-SocketIO processes (gevent), message_queue=redis:// (pub/sub)"),
}


def run_one(name: str, clients: int, size: int, messages: int, latency: dict | None, rnd: int,
            logdir: Path) -> dict[str, Any]:
    setup = SETUPS[name]
    tag = f"{name}-n{clients}-s{size}-r{rnd}"
    rec: dict[str, Any] = {"round": rnd, "setup": name, "clients": clients, "size": size, "messages": messages,
                           "status": "ok", "reason": "", "metrics": {}}
    parts: dict[str, ManagedProcess] = {}
    try:
        fmt: dict[str, Any] = {"py": VENV / "bin" / "python", "uwsgi": VENV / "bin" / "uwsgi", "srv": SRV,
                               "repo": REPO}
        if setup["redis"]:
            parts["redis"], redis_port = start_redis(logdir, tag)
            fmt["redis"] = f"redis://127.0.0.1:{redis_port}/0"
        ports = []
        for i in range(setup["instances"]):
            port = free_port()
            cmd = [part.format(port=port, **fmt) for part in setup["cmd"]]
            parts[f"instance{i}"] = ManagedProcess(cmd, cwd=REPO, log=logdir / f"{tag}.i{i}.log",
                                                   stop_signal=setup["stop"])
            ports.append(port)
        for i, port in enumerate(ports):
            try:
                wait_http(port, parts[f"instance{i}"], timeout=30)
            except RuntimeError as exc:
                rec.update(status="skipped", reason=f"instance {i}: {exc}: {parts[f'instance{i}'].log_error()}")
                return rec
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        group = Group(parts)
        config = {"url": urls[0], "subUrls": urls, "proto": "sio", "clients": clients, "size": size,
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


def report(records: list[dict[str, Any]], header: list[str]) -> str:
    def med(ok: list[dict[str, Any]], key: str) -> float | None:
        values = [m[key] for m in ok if m.get(key) is not None]
        return statistics.median(values) if values else None

    def fmt(value: float | None, spec: str = "{:.2f}") -> str:
        return "–" if value is None else spec.format(value)

    rows = []
    for clients, size in sorted({(r["clients"], r["size"]) for r in records}):
        runs_by = {name: [r for r in records if (r["clients"], r["size"], r["setup"]) == (clients, size, name)]
                   for name in SETUPS}
        ours = med([r["metrics"] for r in runs_by[OURS] if r["status"] == "ok"], "total_us")
        for name, runs in runs_by.items():
            if not runs:
                continue
            ok = [r["metrics"] for r in runs if r["status"] == "ok"]
            total = med(ok, "total_us")
            ratio = total / ours if total is not None and ours else None
            errors = "/".join(str(sum(m.get(k, 0) or 0 for m in ok)) for k in ("lost", "dup", "reorder")) if ok else "–"
            reasons = "; ".join(r["reason"][:120] for r in runs if r["status"] != "ok")
            rows.append(f"| N={clients}, {size} B | {name} | {len(ok)}/{len(runs)} "
                        f"| {fmt(med(ok, 'deliveries_per_s'), '{:,.0f}')} | {fmt(med(ok, 'server_us'))} "
                        f"| {fmt(med(ok, 'redis_us'))} | {fmt(total)} | {fmt(ratio, '{:.2f}x')} "
                        f"| {fmt(med(ok, 'p50_ms'))} | {fmt(med(ok, 'p99_ms'))} | {errors} "
                        f"| {fmt(med(ok, 'pss_mib'), '{:.0f}')} | {reasons} |")
    table = ["| scenario | setup | ok runs | deliveries/s | server µs/deliv | redis µs/deliv | total µs/deliv "
             f"| total vs {OURS} | p50 ms | p99 ms | lost/dup/reord | PSS MiB | notes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
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
    if "flask-socketio-redis" in setups and not shutil.which("redis-server"):
        sys.exit("redis-server not found: apt-get install --no-install-recommends redis-server")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    logdir = RESULTS / "logs" / f"socketio-{stamp}"
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
                              f"{m.get('deliveries_per_s', 0):,.0f} deliv/s, "
                              f"total {m.get('total_us', float('nan')):.2f} "
                              f"µs/deliv, p99 {m.get('p99_ms', float('nan')):.2f} ms, lost/dup/reord "
                              f"{m.get('lost')}/{m.get('dup')}/{m.get('reorder')} {rec['reason'][:200]}",
                              file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("interrupted: stopping everything", file=sys.stderr)
    finally:
        stop_all()
    header = [
        f"# uwsgi_ws.socketio vs Flask-SocketIO — {stamp}",
        "",
        f"- machine: {machine_line(VENV)}",
        f"- rounds: {args.rounds} (median shown; lost/dup/reord are totals), wall time "
        f"{(time.monotonic() - started) / 60:.1f} min, load average before/after: {load0} / "
        f"{Path('/proc/loadavg').read_text().split()[0]}",
        f"- command: `python bench/socketio_bench.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        "- clients split evenly over a setup's instances; one sequential publisher posts to the first instance",
    ]
    text = report(records, header)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "socketio-latest.md").write_text(text)
    (RESULTS / "socketio-latest.json").write_text(json.dumps({"args": vars(args), "records": records}, indent=1,
                                                             default=str))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
