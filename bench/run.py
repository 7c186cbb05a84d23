#!/usr/bin/env python3
"""Broadcast benchmark: uwsgi_ws against WebSocket peers, side by side.

Usage (after ``bash bench/setup.sh``)::

    python bench/run.py                    # R=3 interleaved rounds, full matrix
    python bench/run.py --quick            # 1 round, N=100, small M (< 3 min)
    python bench/run.py --servers websockets,uwsgi_ws --rounds 5 --clients 100,1000 --sizes 100,16384

Every server implements one contract (``GET /ws`` receive-only WebSocket,
``POST /publish`` broadcasts the body). For each round, each scenario and
each server (order rotated per round) the server is started fresh on a free
port, driven by ``client/load.js``, measured (process-tree CPU over the
throughput phase, summed VmHWM) and stopped by pid; the report gives medians
over rounds. Only the standard library is needed to run this file; servers
run from ``bench/.venv`` (override with ``BENCH_VENV``).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness.client import run_client
from harness.proc import (ManagedProcess, free_port, memory_breakdown, peak_rss_mib, pss_mib,
                          stop_all, wait_http)
from harness.profile import Profiler, process_names
from harness.report import aggregate, machine_line, markdown

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent  # the uwsgi_ws checkout the uwsgi_ws servers import (--repo to change)
VENV = Path(os.environ.get("BENCH_VENV", BENCH / ".venv"))
SRV = BENCH / "servers"
RESULTS = BENCH / "results"
BASELINE = "websockets"
FLOOR = "prototype"  # the frame-once prototype: every ratio is also given against it
QUICK_SERVERS = ("prototype", "websockets", "uwsgi_ws", "uwsgi_ws-threads")
OPT_IN = ("uwsgi_ws-base", "uwsgi_ws-1p")  # run only when named in --servers (or --base-repo)


@dataclasses.dataclass(frozen=True)
class ServerSpec:
    """How to launch one server under test.

    ``cmd`` items are ``str.format``-ed with: port, py, uwsgi, gunicorn, srv,
    repo, mule (the checkout's mule entry point), gevent (async cores for single-process gevent servers), threads
    (worker threads for thread-per-connection servers), conns.
    """

    name: str
    cmd: tuple[str, ...]
    proto: str = "ws"  # "ws" or "sio" (Engine.IO v4 over WebSocket)
    max_clients: int = 100_000  # scenarios with more clients are skipped
    stop_signal: int = signal.SIGINT  # uWSGI: SIGINT = shutdown (SIGTERM = reload)
    note: str = ""


# --------------------------------------------------------------------------
# All server command lines live here. Additions to the command lines given in
# the brief, applied to every uWSGI server alike: --listen 1024 (backlog for
# 1000 simultaneous connects), --need-app (fail at startup instead of serving
# 500s), --disable-logging (no access log; no server here logs requests),
# --auto-procname (names the processes "uWSGI worker 1", "uWSGI mule 1": profiles).
# uWSGI declares --mule and --mule-msg-size with an *optional* argument, so
# they must be written --opt=value (with a space uWSGI takes the value for a
# config file name and exits).
UWSGI = ("{uwsgi}", "--master", "--http-socket", "127.0.0.1:{port}", "--listen", "1024",
         "--need-app", "--disable-logging", "--auto-procname")
SERVERS: dict[str, ServerSpec] = {s.name: s for s in (
    ServerSpec("websockets", ("{py}", "{srv}/websockets_server.py", "{port}"),
               note="websockets asyncio broadcast(), POST sniffed on the same port"),
    ServerSpec("flask-socketio", ("{py}", "{srv}/socketio_server.py", "{port}"), proto="sio",
               note="Flask-SocketIO socketio.run, gevent + gevent-websocket"),
    ServerSpec("flask-sock", ("{gunicorn}", "--bind", "127.0.0.1:{port}", "--worker-class", "gthread",
                              "--workers", "1", "--threads", "{threads}", "--worker-connections",
                              "{conns}", "--backlog", "2048", "--chdir", "{srv}",
                              "flask_sock_server:app"),
               note="flask-sock on gunicorn gthread, 1 worker"),
    ServerSpec("flask-uwsgi-websocket", UWSGI + ("--processes", "1", "--gevent", "{gevent}",
                                                 "--wsgi-file", "{srv}/flask_uwsgi_ws_server.py",
                                                 "--callable", "app"),
               note="Flask-uWSGI-WebSocket 0.6.1 GeventWebSocket (patched for Flask 3)"),
    ServerSpec("prototype", UWSGI + ("--processes", "1", "--gevent", "{gevent}",
                                     "--wsgi-file", "{srv}/prototype_server.py"),
               note="frame-once prototype: raw WSGI, 1 gevent worker, os.write to every fd"),
    ServerSpec("uwsgi-raw", UWSGI + ("--processes", "1", "--gevent", "{gevent}",
                                     "--wsgi-file", "{srv}/uwsgi_raw_server.py"),
               note="raw uwsgi.websocket_* API, gevent, no Flask"),
    ServerSpec("uwsgi_ws", UWSGI + ("--processes", "2", "--gevent", "1000", "--sharedarea", "4096",
                                    "--mule={mule}", "--mule-msg-size=65536",
                                    "--wsgi-file", "{srv}/uwsgi_ws_app.py", "--callable", "app",
                                    "--pythonpath", "{repo}"),
               note="our package, 2 gevent workers + mule"),
    ServerSpec("uwsgi_ws-base", UWSGI + ("--processes", "2", "--gevent", "1000", "--sharedarea", "4096",
                                         "--mule={base_mule}", "--mule-msg-size=65536",
                                         "--wsgi-file", "{srv}/uwsgi_ws_app.py", "--callable", "app",
                                         "--pythonpath", "{base_repo}"),
               note="uwsgi_ws gevent from the --base-repo checkout (before/after in one run)"),
    ServerSpec("uwsgi_ws-1p", UWSGI + ("--processes", "1", "--gevent", "{gevent}", "--sharedarea", "4096",
                                       "--mule={mule}", "--mule-msg-size=65536",
                                       "--wsgi-file", "{srv}/uwsgi_ws_app.py", "--callable", "app",
                                       "--pythonpath", "{repo}"),
               note="our package, 1 gevent worker + mule (as the prototype: the second worker's cost apart)"),
    ServerSpec("uwsgi_ws-threads", UWSGI + ("--processes", "2", "--threads", "600",
                                            "--sharedarea", "4096", "--mule={mule}",
                                            "--mule-msg-size=65536",
                                            "--wsgi-file", "{srv}/uwsgi_ws_app.py",
                                            "--callable", "app", "--pythonpath", "{repo}"),
               max_clients=1100, note="our package, 2 workers x 600 threads + mule"),
    ServerSpec("node-ws", ("node", "{srv}/node_ws_server.js", "{port}"),
               note="Node ws: the load client's own ceiling"),
)}


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One client session: N clients, payload size, M throughput messages,
    optionally followed by the latency phase."""

    clients: int
    size: int
    messages: int
    latency: dict[str, float] | None = None

    @property
    def name(self) -> str:
        size = f"{self.size // 1024} KiB" if self.size % 1024 == 0 else f"{self.size} B"
        lat = f" + latency {self.latency['rate']:.0f} msg/s" if self.latency else ""
        return f"N={self.clients}, {size}, M={self.messages}{lat}"


def build_scenarios(clients: list[int], sizes: list[int], quick: bool) -> list[Scenario]:
    """Throughput messages M aim at a fixed delivery budget per scenario
    (300k deliveries for small payloads, 100k for >1 KiB ones, i.e. N=1000 x
    16 KiB gets M=100); --quick divides budgets by 3. The latency phase
    (50 msg/s, 100 B) rides on the smallest-N, smallest-size scenario."""
    out = []
    lat_key = (min(clients), min(sizes))
    for n in clients:
        for s in sizes:
            budget = (300_000 if s <= 1024 else 100_000) // (3 if quick else 1)
            lat = None
            if (n, s) == lat_key:
                lat = {"rate": 50.0, "seconds": 2.0 if quick else 5.0, "size": 100.0}
            out.append(Scenario(n, s, max(20, budget // n), lat))
    return out


def client_config(url: str, spec: ServerSpec, scen: Scenario, quick: bool) -> dict[str, Any]:
    return {
        "url": url, "proto": spec.proto, "clients": scen.clients, "size": scen.size,
        "messages": scen.messages, "latency": scen.latency, "pubConcurrency": 1,
        "tpSeconds": 8 if quick else 20, "drainSeconds": 10 if quick else 20,
        "quietSeconds": 3, "warmupSeconds": 10 if quick else 20,
    }


def metrics_from(result: dict[str, Any], rss: float, pss: float) -> dict[str, Any]:
    """Flatten the client result into the report's metric names."""
    m: dict[str, Any] = {"peak_rss_mib": rss, "pss_mib": pss}
    tp = result.get("tp")
    if tp:
        secs = tp["seconds"] or float("nan")
        cpu = result.get("server_cpu_s")
        m.update(
            deliveries_per_s=tp["deliveries_per_s"], deliveries=tp["deliveries"],
            lost=tp["lost"], dup=tp["dup"], reorder=tp["reorder"],
            publish_errors=tp["publish_errors"], tp_seconds=tp["seconds"],
            client_cpu_pct=100 * result.get("client_proc_cpu_s", 0) / secs,
        )
        if cpu is not None and tp["deliveries"]:
            m["cpu_us_per_delivery"] = cpu * 1e6 / tp["deliveries"]
            m["server_cpu_pct"] = 100 * cpu / secs
    lat = result.get("lat")
    if lat:
        m.update(p50_ms=lat["p50_ms"], p99_ms=lat["p99_ms"], lat_lost=lat["lost"],
                 lat_max_ms=lat["max_ms"])
        got = lat["expected"] - lat["lost"]
        if result.get("server_lat_cpu_s") is not None and got:
            m["lat_cpu_us_per_delivery"] = result["server_lat_cpu_s"] * 1e6 / got
    return m


def run_one(spec: ServerSpec, scen: Scenario, rnd: int, fmt: dict[str, Any], quick: bool,
            logdir: Path, profile: str | None = None, memory: bool = False) -> dict[str, Any]:
    """Start ``spec``, run ``scen`` against it, stop it; return a record. With ``profile``
    ("py-spy" or "perf") the server's processes are sampled over the throughput phase
    and the summary is written to ``<logdir>/<tag>.profile.txt``; with ``memory`` the
    server's memory by process and mapping, at the end of the session, to
    ``<logdir>/<tag>.memory.txt``."""
    rec: dict[str, Any] = {"round": rnd, "server": spec.name, "scenario": scen.name,
                           "status": "ok", "reason": "", "metrics": {}}
    if scen.clients > spec.max_clients:
        rec.update(status="skipped", reason=f"N > {spec.max_clients} (one thread per connection)")
        return rec
    port = free_port()
    cmd = [part.format(port=port, **fmt) for part in spec.cmd]
    tag = f"{spec.name}-n{scen.clients}-s{scen.size}-r{rnd}"
    server = ManagedProcess(cmd, cwd=REPO, log=logdir / f"{tag}.server.log",
                            stop_signal=spec.stop_signal)
    try:
        try:
            wait_http(port, server, timeout=30)
        except RuntimeError as exc:
            rec.update(status="skipped", reason=f"startup failed ({exc}): {server.log_error()}")
            return rec
        profiler = Profiler(profile, logdir, tag, Path(fmt["py"]).parent) if profile else None

        def on_mark(event: str) -> None:
            if profiler is None:
                return
            if event == "tp_start":
                pids = server.pids()
                profiler.start(pids, process_names(pids))
            elif event == "tp_end":
                profiler.stop()

        result = run_client(client_config(f"http://127.0.0.1:{port}", spec, scen, quick),
                            server, timeout=200, log=logdir / f"{tag}.client.log", on_mark=on_mark)
        if profiler is not None:
            profiler.stop()
            summary = logdir / f"{tag}.profile.txt"
            summary.write_text(profiler.top())
            rec["profile"] = str(summary)
            print(f"  profile: {summary}", file=sys.stderr)
        pids = server.pids()
        rss, pss = peak_rss_mib(pids), pss_mib(pids)
        if memory:
            (logdir / f"{tag}.memory.txt").write_text(memory_breakdown(pids) + "\n")
        if result.get("error"):
            rec.update(status="error", reason=result["error"] + f" | server log: {server.log_tail(2)}")
        rec["metrics"] = metrics_from(result, rss, pss)
        rec["raw"] = result
    finally:
        leftovers = server.stop()
        if leftovers:
            rec["leftover_pids"] = leftovers
            print(f"  !! {spec.name}: processes left after SIGKILL: {leftovers}", file=sys.stderr)
    return rec


def progress(rec: dict[str, Any]) -> str:
    m = rec["metrics"]
    head = f"[r{rec['round']}] {rec['server']:<22} {rec['scenario']:<40}"
    if rec["status"] != "ok":
        return f"{head} {rec['status'].upper()}: {rec['reason'][:300]}"
    parts = []
    if "deliveries_per_s" in m:
        parts.append(f"{m['deliveries_per_s']:>9,.0f} deliv/s")
        parts.append(f"{m.get('cpu_us_per_delivery', float('nan')):6.2f} µs/deliv")
        parts.append(f"lost/dup/reord {m['lost']}/{m['dup']}/{m['reorder']}")
    if "p99_ms" in m:
        parts.append(f"p50/p99 {m['p50_ms']:.2f}/{m['p99_ms']:.2f} ms")
    parts.append(f"rss {m['peak_rss_mib']:.0f} MiB, pss {m['pss_mib']:.0f} MiB")
    return f"{head} " + ", ".join(parts)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help=f"1 round, N=100 only, small M, servers {','.join(QUICK_SERVERS)} unless --servers")
    p.add_argument("--servers", default=None,
                   help=f"comma list, default all but {','.join(OPT_IN)}: {','.join(SERVERS)}")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3, quick 1)")
    p.add_argument("--clients", type=ints, default=None, help="comma list of N (default 100,1000)")
    p.add_argument("--sizes", type=ints, default=None, help="payload bytes (default 100,16384)")
    p.add_argument("--repo", type=Path, default=REPO,
                   help="checkout whose uwsgi_ws package the uwsgi_ws servers run (default: this one), "
                        "e.g. a `git worktree` of an older commit for a before/after comparison")
    p.add_argument("--memory", action="store_true",
                   help="write each server's memory by process and mapping (smaps) next to the logs")
    p.add_argument("--base-repo", type=Path, default=None,
                   help="a second checkout run as the `uwsgi_ws-base` server (added to the list): "
                        "the code before a change, side by side with --repo's")
    p.add_argument("--profile", choices=["py-spy", "perf"], default=None,
                   help="sample the servers over the throughput phase (their CPU numbers then include "
                        "the sampler's disturbance; the summaries go next to the logs)")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.clients = args.clients or ([100] if args.quick else [100, 1000])
    args.sizes = args.sizes or [100, 16384]
    default = [s for s in (QUICK_SERVERS if args.quick else SERVERS) if s not in OPT_IN]
    args.servers = [s for s in args.servers.split(",") if s] if args.servers else default
    if args.base_repo is not None and "uwsgi_ws-base" not in args.servers:
        args.servers.insert(args.servers.index("uwsgi_ws") if "uwsgi_ws" in args.servers else 0, "uwsgi_ws-base")
    if "uwsgi_ws-base" in args.servers and args.base_repo is None:
        p.error("the uwsgi_ws-base server needs --base-repo PATH")
    unknown = [s for s in args.servers if s not in SERVERS]
    if unknown:
        p.error(f"unknown servers {unknown}; known: {', '.join(SERVERS)}")
    return args


def check_setup() -> None:
    missing = [str(p) for p in (VENV / "bin" / "uwsgi", BENCH / "client" / "node_modules" / "ws")
               if not p.exists()]
    if missing or not shutil.which("node"):
        sys.exit(f"missing {missing or 'node'}: run `bash bench/setup.sh` first")


def repo_state(repo: Path) -> str:
    """Short commit of the checkout, flagged when its uwsgi_ws/ has local changes."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(repo), *args], capture_output=True,
                                  text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    commit = git("rev-parse", "--short", "HEAD") or "?"
    return str(repo) + " at " + commit + (" + uncommitted uwsgi_ws/ changes" if git("status", "--porcelain", "--", "uwsgi_ws") else "")


def mule_entry(repo: Path) -> str:
    """The checkout's broadcast mule entry point: uwsgi_ws.mule:run until the broadcast
    moved into uwsgi_ws/broadcast/ (issue 11), uwsgi_ws.broadcast.mule:run after."""
    return "uwsgi_ws.mule:run" if (repo / "uwsgi_ws" / "mule.py").exists() else "uwsgi_ws.broadcast.mule:run"


def load1() -> float:
    """The 1-minute load average now."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_setup()
    # ^C and SIGTERM both unwind through the finally blocks that stop servers
    # by pid. (Setting SIGINT explicitly also un-ignores it when we were started
    # in the background, so that servers do not inherit an ignored SIGINT.)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    scenarios = build_scenarios(args.clients, args.sizes, args.quick)
    max_n = max(args.clients)
    fmt = {"py": VENV / "bin" / "python", "uwsgi": VENV / "bin" / "uwsgi",
           "gunicorn": VENV / "bin" / "gunicorn", "srv": SRV, "repo": args.repo.resolve(),
           "mule": mule_entry(args.repo.resolve()), "gevent": max(1000, max_n + 100),
           "base_repo": args.base_repo.resolve() if args.base_repo else "",
           "base_mule": mule_entry(args.base_repo.resolve()) if args.base_repo else "",
           "threads": max_n + 64, "conns": 2 * max_n + 100}
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    logdir = RESULTS / "logs" / stamp
    logdir.mkdir(parents=True, exist_ok=True)
    machine = machine_line(VENV)
    commit = repo_state(args.repo.resolve())
    print(f"machine: {machine}\nlogs: {logdir}", file=sys.stderr)
    records: list[dict[str, Any]] = []
    loads: list[float] = []
    load0 = Path("/proc/loadavg").read_text().split()[0]
    started = time.monotonic()
    try:
        for rnd in range(1, args.rounds + 1):
            shift = (rnd - 1) % len(args.servers)
            order = args.servers[shift:] + args.servers[:shift]
            for scen in scenarios:
                for name in order:
                    load = load1()
                    rec = run_one(SERVERS[name], scen, rnd, fmt, args.quick, logdir, args.profile,
                                  args.memory)
                    rec["load1"] = load
                    loads.append(load)
                    records.append(rec)
                    print(progress(rec), file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("interrupted: stopping everything", file=sys.stderr)
    finally:
        stop_all()
    elapsed = time.monotonic() - started
    order_key = {n: i for i, n in enumerate(args.servers)}
    records.sort(key=lambda r: ([s.name for s in scenarios].index(r["scenario"]),
                                order_key[r["server"]], r["round"]))
    rows = aggregate(records, BASELINE, FLOOR)
    header = [
        f"# uwsgi_ws broadcast benchmark — {stamp}",
        "",
        f"- machine: {machine}",
        f"- rounds: {args.rounds} (median shown; lost/dup/reord are totals over rounds), "
        f"servers restarted for every scenario, wall time {elapsed / 60:.1f} min",
        f"- load average before/after: {load0} / {Path('/proc/loadavg').read_text().split()[0]} "
        "(the client shares the 2 cores with the server; other work on the machine skews results)",
        f"- uwsgi_ws from {commit}",
        *([f"- uwsgi_ws-base from {repo_state(args.base_repo.resolve())}"] if args.base_repo else []),
        f"- command: `{' '.join(['python bench/run.py', *(argv if argv is not None else sys.argv[1:])])}`",
        "- ratios: ×ws against the `websockets` row, ×proto against the frame-once `prototype` row "
        "of the same scenario and run",
        *([f"- PROFILED with {args.profile}: CPU numbers include the sampler's disturbance"]
          if args.profile else []),
        f"- 1-min load average at the start of each run: min {min(loads, default=0):.1f}, "
        f"median {statistics.median(loads) if loads else 0:.1f}, max {max(loads, default=0):.1f}",
    ]
    report = markdown(rows, header)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.md").write_text(report)
    (RESULTS / "latest.json").write_text(json.dumps(
        {"machine": machine, "commit": commit, "args": vars(args), "rows": rows, "records": records}, indent=1,
        default=str))
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
