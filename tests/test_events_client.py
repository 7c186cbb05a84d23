"""The browser client uwsgi_ws.js (served at /_uwsgi_ws/) driven by Node's built-in
WebSocket (tests/js/client_driver.mjs) against real uWSGI (threads, gevent; 2
workers): a worker is killed under the client, which reconnects, resumes, and sees
every message exactly once, in order. Skipped without Node >= 20 (not a browser:
the SSE fallback and the page are not exercised here)."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
import urllib.request

import pytest

from harness import ROOT
from test_events import emit, model, start  # noqa: F401  (model: the fixture)

NODE = shutil.which("node")


def node_ok() -> bool:
    if not NODE:
        return False
    out = subprocess.run([NODE, "--experimental-websocket", "-e", "console.log(typeof WebSocket)"],
                         capture_output=True, text=True)
    return out.stdout.strip() == "function"


pytestmark = pytest.mark.skipif(not node_ok(), reason="needs node >= 20 with --experimental-websocket")


class Driver:
    def __init__(self, base: str, rooms: str = ""):
        self.proc = subprocess.Popen(
            [NODE, "--experimental-websocket", "--no-warnings", str(ROOT / "tests/js/client_driver.mjs"), base, rooms],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def until(self, match, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"nothing matching after {timeout}s; seen {self.seen[-20:]}; "
                                     f"stderr: {self.proc.stderr.read() if self.proc.poll() is not None else ''}"
                                     ) from None
            self.seen.append(item)
            if match(item):
                return item

    def stop(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def test_client_file_is_served(model, tmp_path):
    if model != "threads":
        pytest.skip("one model is enough for a static file")
    server = start(tmp_path, model)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/_uwsgi_ws/uwsgi_ws.mjs", timeout=10) as r:
            assert r.headers["Content-Type"].startswith("text/javascript")
            assert b"export const connect" in r.read()
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/_uwsgi_ws/../events.py", timeout=10)
        assert exc.value.code == 404
    finally:
        server.stop()


def test_reconnect_after_a_worker_is_killed_sees_every_message_once_in_order(model, tmp_path):
    server = start(tmp_path, model)
    driver = Driver(f"http://127.0.0.1:{server.port}", "blue")
    try:
        pid = driver.until(lambda m: "hello" in m)["hello"]
        assert driver.until(lambda m: "ack" in m or "ack_error" in m) == {"ack": "pong"}
        for i in range(10):
            emit(server, "lobby" if i % 2 else "blue", i, event="n")
        driver.until(lambda m: m.get("n") == 9)
        os.kill(pid, signal.SIGKILL)  # the client's worker dies; the master respawns it
        for i in range(10, 30):
            emit(server, "lobby" if i % 2 else "blue", i, event="n")
        driver.until(lambda m: m.get("status") == "resuming")
        driver.until(lambda m: m.get("n") == 29)
        for i in range(30, 35):
            emit(server, "lobby" if i % 2 else "blue", i, event="n")
        driver.until(lambda m: m.get("n") == 34)
        got = [m["n"] for m in driver.seen if "n" in m]
        assert got == list(range(35)), got
        assert not [m for m in driver.seen if "not_recovered" in m]
    finally:
        driver.stop()
        server.stop()
