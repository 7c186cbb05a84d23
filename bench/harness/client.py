"""Drive one run of the Node load client against a running server.

Contract: :func:`run_client` starts ``node client/load.js <config>`` in sync
mode, samples the server's process-tree CPU at the client's ``tp_start`` and
``tp_end`` events, and at ``lat_start``/``lat_end`` (the client waits for
our "go" line after each), and returns the client's final ``result`` object
augmented with ``server_cpu_s`` (CPU seconds of the whole server tree over
the throughput phase), ``client_proc_cpu_s`` and ``server_lat_cpu_s`` (the
same over the latency phase, when there is one). It never waits longer than ``timeout``;
the client process group is always killed on exit.
"""
from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

from .proc import ManagedProcess, cpu_seconds

BENCH = Path(__file__).resolve().parents[1]
LOAD_JS = BENCH / "client" / "load.js"


def _reader(stream: Any, out: "queue.Queue[str | None]") -> None:
    for line in stream:
        out.put(line.decode(errors="replace"))
    out.put(None)


def run_client(config: dict[str, Any], server: ManagedProcess, timeout: float, log: Path,
               on_mark: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """Run one client session; see the module docstring. ``on_mark(event)`` is called
    at each phase boundary before the CPU sample (e.g. to start or stop a profiler)."""
    cfg = {**config, "sync": True, "maxSeconds": max(10, int(timeout) - 5)}
    client = ManagedProcess(
        ["node", str(LOAD_JS), json.dumps(cfg)],
        cwd=BENCH,
        log=log,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stop_signal=9,
    )
    lines: "queue.Queue[str | None]" = queue.Queue()
    threading.Thread(target=_reader, args=(client.popen.stdout, lines), daemon=True).start()
    deadline = time.monotonic() + timeout
    marks: dict[str, float] = {}
    result: dict[str, Any] = {"error": "client produced no result"}
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                result = {"error": f"client timed out after {timeout:.0f}s"}
                break
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                break
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue
            event = msg.get("event")
            if event in ("tp_start", "tp_end", "lat_start", "lat_end"):
                if on_mark is not None:
                    on_mark(event)
                pids = server.pids()
                marks[event] = cpu_seconds(pids)
                marks[event + "_client"] = cpu_seconds([client.pid])
                client.popen.stdin.write(b"go\n")  # type: ignore[union-attr]
                client.popen.stdin.flush()  # type: ignore[union-attr]
            elif event == "result":
                result = msg
    finally:
        client.stop(timeout=1.0)
    if "tp_start" in marks and "tp_end" in marks:
        result["server_cpu_s"] = marks["tp_end"] - marks["tp_start"]
        result["client_proc_cpu_s"] = marks["tp_end_client"] - marks["tp_start_client"]
    if "lat_start" in marks and "lat_end" in marks:
        result["server_lat_cpu_s"] = marks["lat_end"] - marks["lat_start"]
    if "error" in result and result.get("error") and log.exists():
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        if tail:
            result["error"] += " | client stderr: " + " | ".join(tail)
    return result
