"""How many idle WebSockets one uWSGI worker holds, and what each costs.

    python bench/idle.py --model gevent --connections 10000
    python bench/idle.py --model threads --connections 500

Starts one uWSGI worker serving tests/apps/echo_app.py (keepalive pings off),
opens N idle connections from one asyncio process (`websockets` client),
checks a few of them still echo, and prints the worker's RSS and open fds
before and after, per connection. Loopback only; every process is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness import serve  # noqa: E402


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def hold(url: str, n: int, concurrency: int = 200) -> list:
    import websockets

    conns: list = []
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with sem:
            conns.append(await websockets.connect(url, ping_interval=None, max_size=None, open_timeout=60))

    await asyncio.gather(*(one() for _ in range(n)))
    return conns


async def main_async(args: argparse.Namespace) -> None:
    models = {
        "gevent": ["--processes", "1", "--gevent", str(args.connections + 100)],
        "threads": ["--processes", "1", "--threads", str(args.connections + 10)],
    }
    extra = [*models[args.model], "--listen", "1024", "--max-fd", str(args.connections * 4 + 1000)]
    tmp = Path(tempfile.mkdtemp())
    server = serve("echo_app:app", tmp, model=args.model, extra=extra)
    try:
        server.wait_for_log(r"spawned uWSGI worker 1 ")
        pid = server.worker_pids()[0]
        rss0, fds0 = rss_kib(pid), open_fds(pid)
        started = time.monotonic()
        conns = await hold(server.url + "/echo", args.connections)
        opened = time.monotonic() - started
        rss1, fds1 = rss_kib(pid), open_fds(pid)
        for ws in conns[:: max(1, len(conns) // 10)]:
            await ws.send("still there?")
            assert await ws.recv() == "still there?"
        n = len(conns)
        print(f"model={args.model} connections={n} opened_in={opened:.1f}s "
              f"worker_rss={rss0 / 1024:.1f}->{rss1 / 1024:.1f} MiB "
              f"({(rss1 - rss0) / n:.1f} KiB per connection) fds={fds0}->{fds1} crashes={len(server.crashes())}")
        await asyncio.gather(*(ws.close() for ws in conns))
    finally:
        server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["gevent", "threads"], default="gevent")
    p.add_argument("--connections", type=int, default=10000)
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.connections * 2 + 1000
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
