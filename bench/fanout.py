"""The broadcast fan-out's Python cost per delivery, without uWSGI or a network.

    python bench/fanout.py [--connections 1000] [--rounds 5]

Writes one small frame to N Unix socket pairs, in interleaved rounds, and
prints the process CPU time per delivery (median over rounds):

- ``send_many only``: the native batch write over a ready list of fds (the
  floor: the kernel's send and the C loop);
- ``per-stream``: `Outbound.begin_direct` per stream, one `send_many`,
  `Outbound.end_direct` per stream (what the hub's fan-out does per
  subscriber, minus the Connection layer it also goes through);
- ``per-stream, Python only``: the same with a `send_many` that writes
  nothing: the bookkeeping alone.

The peers are drained between writes, outside the measured time.
"""
from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from uwsgi_ws import runtime  # noqa: E402
from uwsgi_ws.outbound import Outbound  # noqa: E402

try:
    from uwsgi_ws._speedups import send_many
except ImportError:
    sys.exit("fanout.py: the native helper uwsgi_ws._speedups is not built (pip install -e . with a compiler)")

DATA = b"\x81\x06hello!"


def nothing_sent(fds: List[int], data: bytes) -> Iterable[Tuple[int, int]]:
    return ()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iterations", type=int, default=50)
    args = p.parse_args()
    rt = runtime.load("threads")
    pairs = [socket.socketpair() for _ in range(args.connections)]
    for a, b in pairs:
        a.setblocking(False)
        b.setblocking(False)
    outs = [Outbound(a, rt, 1 << 20, lambda: None) for a, _ in pairs]

    def drain() -> None:
        for _, b in pairs:
            try:
                while b.recv(65536):
                    pass
            except BlockingIOError:
                pass

    def per_stream(writer: Callable[[List[int], bytes], Iterable[Tuple[int, int]]]) -> None:
        ready, fds = [], []
        for o in outs:
            fd = o.begin_direct()
            if fd >= 0:
                ready.append(o)
                fds.append(fd)
        short = dict(writer(fds, DATA))
        for i, o in enumerate(ready):
            o.end_direct(DATA, short.get(i, len(DATA)), 1)

    fds = [o.fd for o in outs]
    ways: List[Tuple[str, Callable[[], object]]] = [
        ("send_many only", lambda: dict(send_many(fds, DATA))),
        ("per-stream", lambda: per_stream(send_many)),
        ("per-stream, Python only", lambda: per_stream(nothing_sent)),
    ]
    results: Dict[str, List[float]] = {name: [] for name, _ in ways}
    for _ in range(args.rounds):
        for name, fn in ways:
            spent = 0.0
            for _ in range(args.iterations):
                t0 = time.process_time()
                fn()
                spent += time.process_time() - t0
                drain()
            results[name].append(spent / args.iterations / args.connections * 1e6)
    load = Path("/proc/loadavg").read_text().split()[0]
    print(f"{args.connections} streams, {args.rounds} rounds x {args.iterations} writes, load average {load}")
    for name, values in results.items():
        print(f"{name:26s} {statistics.median(values):6.3f} µs CPU per delivery "
              f"(rounds {', '.join(f'{v:.3f}' for v in values)})")


if __name__ == "__main__":
    main()
