"""Soak: idle WebSockets held for minutes while others come and go; does the worker leak?

    python bench/soak.py                                  # 10,000 idle + 1,000 churned per minute, 10 minutes
    python bench/soak.py --minutes 2                      # shorter
    python bench/soak.py --idle 2000 --churn 600 --minutes 1

One gevent uWSGI worker serving tests/apps/echo_app.py (keepalive pings off).
One asyncio process (`websockets` client, loopback only) opens `--idle`
connections and keeps them; then for `--minutes` minutes it opens `--churn`
connections per minute at an even pace, each doing one echo and a clean close
(at most 50 in flight). The worker's RSS and open fds are read before the
churn, every minute, and after the churn stops (once the churned connections'
fds are gone: polled with a deadline), and the growth is printed; finally a
sample of the idle connections must still echo and the worker must be the same
process. Bounded: idle + 2 x 50 fds per side; every process is stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))  # before bench/: tests/harness.py, not the bench/harness package

from harness import serve  # noqa: E402
from idle import hold, open_fds, rss_kib  # noqa: E402

IN_FLIGHT = 50  # churned connections open at once, at most


async def churn(url: str, per_minute: int, seconds: float) -> dict:
    """Open/echo/close `per_minute` connections a minute for `seconds`; counts of ok and failed."""
    import websockets

    counts = {"ok": 0, "failed": 0}
    sem = asyncio.Semaphore(IN_FLIGHT)
    tasks = []

    async def one(i: int) -> None:
        async with sem:
            try:
                async with websockets.connect(url, ping_interval=None, open_timeout=30, close_timeout=10) as ws:
                    await ws.send(f"churn {i}")
                    assert await ws.recv() == f"churn {i}"
                counts["ok"] += 1
            except Exception as exc:  # counted and shown, never hidden
                counts["failed"] += 1
                if counts["failed"] <= 3:
                    print(f"churned connection {i} failed: {exc!r}", flush=True)

    interval = 60.0 / per_minute
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < seconds:
        tasks.append(asyncio.ensure_future(one(i)))
        i += 1
        await asyncio.sleep(max(0.0, start + i * interval - time.monotonic()))  # pacing, not synchronisation
    await asyncio.gather(*tasks)
    return counts


async def wait_fds(pid: int, at_most: int, timeout: float = 30.0) -> int:
    """The worker's open fds once they are down to `at_most` (or what they are after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        n = open_fds(pid)
        if n <= at_most or time.monotonic() > deadline:
            return n
        await asyncio.sleep(0.2)


async def main_async(args: argparse.Namespace) -> None:
    extra = ["--processes", "1", "--gevent", str(args.idle + 2 * IN_FLIGHT + 100),
             "--listen", "1024", "--max-fd", str(args.idle * 2 + 1000)]
    tmp = Path(tempfile.mkdtemp())
    server = serve("echo_app:app", tmp, model="gevent", extra=extra)
    try:
        server.wait_for_log(r"spawned uWSGI worker 1 ")
        pid = server.worker_pids()[0]
        url = server.url + "/echo"
        rss_empty, fds_empty = rss_kib(pid), open_fds(pid)
        t0 = time.monotonic()
        idle = await hold(url, args.idle)
        print(f"idle: {len(idle)} connections opened in {time.monotonic() - t0:.1f}s; "
              f"worker rss {rss_empty / 1024:.1f} -> {rss_kib(pid) / 1024:.1f} MiB, fds {fds_empty} -> {open_fds(pid)}",
              flush=True)
        rss0, fds0 = rss_kib(pid), open_fds(pid)
        rows = [("before churn", 0, rss0, fds0)]
        total = {"ok": 0, "failed": 0}
        remaining, minute = args.minutes * 60.0, 0
        while remaining > 0:
            minute += 1
            counts = await churn(url, args.churn, min(60.0, remaining))
            remaining -= 60.0
            total = {k: total[k] + counts[k] for k in total}
            fds = await wait_fds(pid, fds0)
            rows.append((f"after minute {minute}", total["ok"] + total["failed"], rss_kib(pid), fds))
            print(f"minute {minute}: churned {counts}, worker rss {rows[-1][2] / 1024:.1f} MiB, fds {fds}", flush=True)
        fds1 = await wait_fds(pid, fds0)
        rss1 = rss_kib(pid)
        rows.append(("after churn stopped", total["ok"] + total["failed"], rss1, fds1))
        sample = idle[:: max(1, len(idle) // 100)]
        for ws in sample:
            await ws.send("still there?")
            assert await ws.recv() == "still there?", "an idle connection stopped echoing"
        assert server.worker_pids() == [pid], "the worker was respawned during the soak"
        print(f"\nsoak: gevent, 1 worker, {len(idle)} idle, {args.churn} churned/minute for {args.minutes:g} min "
              f"({total['ok']} ok, {total['failed']} failed); {len(sample)} idle ones still echo; "
              f"crashes={len(server.crashes())}\n")
        print("| when | churned | worker RSS (MiB) | worker open fds |")
        print("|---|---|---|---|")
        for when, n, rss, fds in rows:
            print(f"| {when} | {n} | {rss / 1024:.1f} | {fds} |")
        print(f"\ngrowth after the churn: RSS {(rss1 - rss0) / 1024:+.1f} MiB "
              f"({(rss1 - rss0) / max(1, total['ok']) * 1024:+.0f} bytes per churned connection), fds {fds1 - fds0:+d}")
        await asyncio.gather(*(ws.close() for ws in idle))
    finally:
        server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--idle", type=int, default=10000, help="connections held open the whole time")
    p.add_argument("--churn", type=int, default=1000, help="connections opened and closed per minute")
    p.add_argument("--minutes", type=float, default=10, help="minutes of churn")
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.idle + 2 * IN_FLIGHT + 1000
    if hard < need:
        sys.exit(f"the fd limit ({hard}) is below the {need} this run needs: lower --idle or raise ulimit -Hn")
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need * 2, hard), hard))
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
