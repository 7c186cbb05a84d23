"""What uWSGI's `--http` router costs a WebSocket round trip, against `--http-socket` (no router).

    .venv/bin/python bench/http_router.py                    # 2000 round trips of 32 bytes, threads
    .venv/bin/python bench/http_router.py --count 5000 --size 1024 --model gevent
    .venv/bin/python bench/http_router.py --split            # header and payload in two send() calls

Starts two uWSGI instances serving tests/apps/echo_app.py side by side (same model, 1 worker):
A speaks HTTP itself (`--http-socket`); B has the `--http` router in front of its worker
(`--http` + `--http-websockets`, the worker on a uwsgi socket). One client (websocket-client,
one `send()` per frame, or with `--split` the header and the payload in two `send()` calls
as some clients write them; TCP_NODELAY as that library sets it) pings-pongs `--count` text messages
of `--size` bytes with each, alternating rounds of 100 so both see the same machine load, and
prints the median, p90 and p99 round trip in milliseconds and the ratio B/A. Loopback only;
both instances are stopped by pid.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import websocket

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "tests" / "apps"
UWSGI = str(Path(sys.executable).with_name("uwsgi"))
MODELS = {"threads": ["--threads", "8"], "gevent": ["--gevent", "100"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(args: list, log: Path, port: int) -> subprocess.Popen:  # type: ignore[type-arg]
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{APPS}")
    proc = subprocess.Popen([UWSGI, "--master", "--processes", "1", "--module", "echo_app:app", "--die-on-term",
                             "--need-app", "--disable-logging", *args], stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"uwsgi exited: {log.read_text()}")
        try:
            ws = websocket.create_connection(f"ws://127.0.0.1:{port}/echo", timeout=5)
            ws.close()
            return proc
        except (OSError, websocket.WebSocketException):
            time.sleep(0.1)
    raise SystemExit(f"uwsgi did not answer on {port}: {log.read_text()}")


def stop(proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(5)


def rounds(ws: websocket.WebSocket, count: int, payload: str, split: bool = False) -> list:  # type: ignore[type-arg]
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        if split:  # the frame's header and its payload in two send() calls, as some clients write them
            frame = websocket.ABNF.create_frame(payload, websocket.ABNF.OPCODE_TEXT).format()
            cut = len(frame) - len(payload)
            ws.sock.sendall(frame[:cut])
            ws.sock.sendall(frame[cut:])
        else:
            ws.send(payload)
        if ws.recv() != payload:
            raise SystemExit("echo mismatch")
        times.append((time.perf_counter() - t0) * 1000)
    return times


def summary(times: list) -> tuple:  # type: ignore[type-arg]
    ordered = sorted(times)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return statistics.median(ordered), pick(0.9), pick(0.99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--model", choices=sorted(MODELS), default="threads")
    parser.add_argument("--split", action="store_true",
                        help="write each frame's header and payload with two send() calls")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="http_router_"))
    direct_port, router_port, socket_port = free_port(), free_port(), free_port()
    direct = start(["--http-socket", f"127.0.0.1:{direct_port}", *MODELS[args.model]], tmp / "direct.log",
                   direct_port)
    router = start(["--http", f"127.0.0.1:{router_port}", "--http-websockets", "--socket",
                    f"127.0.0.1:{socket_port}", *MODELS[args.model]], tmp / "router.log", router_port)
    try:
        a = websocket.create_connection(f"ws://127.0.0.1:{direct_port}/echo", timeout=10)
        b = websocket.create_connection(f"ws://127.0.0.1:{router_port}/echo", timeout=10)
        payload = "x" * args.size
        rounds(a, 50, payload, args.split)  # warm-up
        rounds(b, 50, payload, args.split)
        ta, tb = [], []
        for i in range(0, args.count, 100):
            n = min(100, args.count - i)
            ta += rounds(a, n, payload, args.split)
            tb += rounds(b, n, payload, args.split)
        a.close()
        b.close()
    finally:
        stop(direct)
        stop(router)
    print(f"uWSGI {subprocess.run([UWSGI, '--version'], capture_output=True, text=True).stdout.strip()}, "
          f"model {args.model}, {args.count} round trips of {args.size} B, websocket-client, "
          f"{'header and payload in two send() calls' if args.split else 'one send() per frame'}")
    print(f"{'setup':<34} {'median ms':>10} {'p90 ms':>8} {'p99 ms':>8}")
    for name, t in (("A --http-socket (no router)", ta), ("B --http router + --socket", tb)):
        med, p90, p99 = summary(t)
        print(f"{name:<34} {med:>10.3f} {p90:>8.3f} {p99:>8.3f}")
    print(f"median ratio B/A: {summary(tb)[0] / summary(ta)[0]:.2f}x "
          f"(router adds {summary(tb)[0] - summary(ta)[0]:+.3f} ms per round trip)")


if __name__ == "__main__":
    main()
