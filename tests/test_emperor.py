"""The Emperor: a vassal for tests/apps/echo_app.py written here (inheriting
nothing), reload by touch; and the repository's own vassals/ starting the examples."""

from __future__ import annotations

import json
import os
import re
import socket
import time
import urllib.request
from pathlib import Path

import pytest
import websocket

from harness import APPS, ROOT, UWSGI, free_port, wait_for

VASSALS = ROOT / "vassals"


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def chat_token(port: int, name: str) -> str:
    """The chat example's access: log in (a session cookie), then a signed token for /live."""
    import http.cookiejar

    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    opener.open(urllib.request.Request(f"http://127.0.0.1:{port}/login", data=f"name={name}".encode()), timeout=10)
    with opener.open(urllib.request.Request(f"http://127.0.0.1:{port}/token", data=b""), timeout=10) as answer:
        return str(json.loads(answer.read())["token"])


def echo_once(port: int, text: str, path: str = "/echo") -> str:
    ws = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=15)
    try:
        ws.send(text)
        return ws.recv()
    finally:
        ws.close()


@pytest.fixture
def emperor(tmp_path):
    started = []

    def start(vassal_dir: Path, port: int) -> UWSGI:
        server = UWSGI(["--emperor", str(vassal_dir)], tmp_path, port=port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
        assert not server.crashes(), server.log()


def test_vassal_serves_and_reloads_on_touch(emperor, tmp_path):
    port = free_port()
    vassals = tmp_path / "vassals"
    vassals.mkdir()
    vassal = vassals / "echo.yaml"
    vassal.write_text(
        "uwsgi:\n"
        "  master: true\n"
        f"  http-socket: 127.0.0.1:{port}\n"
        f"  pythonpath: {ROOT}\n"
        f"  pythonpath: {APPS}\n"
        "  module: echo_app:app\n"
        "  processes: 1\n"
        "  threads: 4\n"
        "  need-app: true\n"
        "  die-on-term: true\n"
    )
    server = emperor(vassals, port)
    assert echo_once(port, "from a vassal") == "from a vassal"
    wait_for(server.worker_pids, 5, "the vassal's worker")
    before = server.worker_pids()

    os.utime(vassal, (time.time() + 5, time.time() + 5))  # touch (mtime must change)
    server.wait_for_log(r"reload the uwsgi instance echo\.yaml", timeout=10)
    server.wait_for_log(r"WSGI app 0 \(mountpoint=''\) ready", timeout=20, count=2)
    assert echo_once(port, "after the reload") == "after the reload"
    wait_for(lambda: server.worker_pids() != before, 10, "a new worker after the reload")


@pytest.mark.skipif(not (VASSALS / "echo.yaml").exists(), reason="vassals/echo.yaml not written yet")
def test_repository_vassals_start_the_examples(emperor, tmp_path):
    vassals = tmp_path / "vassals"
    vassals.mkdir()
    ports = {}
    for source in sorted(VASSALS.glob("*.yaml")):
        text = source.read_text()
        # %d is the vassal file's directory: keep pointing at the repository.
        text = text.replace("%d..", str(ROOT)).replace("%d", str(VASSALS) + "/")
        port = free_port()
        text, n = re.subn(r"(?m)^(\s*http-socket:\s*)\S+", rf"\g<1>127.0.0.1:{port}", text)
        assert n == 1, f"{source.name}: expected one http-socket line"
        ports[source.stem] = port
        (vassals / source.name).write_text(text)
    assert {"echo", "chat", "ticker"} <= set(ports)

    server = emperor(vassals, ports["echo"])
    for name, port in ports.items():
        wait_for(lambda: port_open(port), 30, f"vassal {name} on {port}")

    assert echo_once(ports["echo"], "example echo") == "example echo"
    assert b"<html" in urllib.request.urlopen(f"http://127.0.0.1:{ports['echo']}/", timeout=5).read()

    # chat: a message reaches the clients (through the broadcast mule)
    clients = [websocket.create_connection(f"ws://127.0.0.1:{ports['chat']}/ws", timeout=10) for _ in range(2)]
    try:
        # client 1 subscribes in its handler, maybe after client 0's first message:
        # resend until it arrives (each round waits on a message, not a sleep)
        deadline = time.monotonic() + 10
        got = None
        while got is None and time.monotonic() < deadline:
            clients[0].send(json.dumps({"name": "t", "text": "hello chat"}))
            clients[1].settimeout(1)
            try:
                got = json.loads(clients[1].recv())
            except websocket.WebSocketTimeoutException:
                pass
        assert got is not None and got["text"] == "hello chat", server.log()
    finally:
        for c in clients:
            c.close()

    # chat's page endpoint (the event protocol): a client joins "random", says something, gets
    # the ack and its own message back; a room outside the app's list is refused
    token = chat_token(ports["chat"], "t")
    live = websocket.create_connection(f"ws://127.0.0.1:{ports['chat']}/live?token={token}", timeout=10)
    try:
        live.send(json.dumps({"type": "join", "room": "random"}))
        live.send(json.dumps({"type": "join", "room": "secret"}))
        live.send(json.dumps({"type": "event", "event": "say", "id": 1,
                              "data": {"room": "random", "name": "t", "text": "hi room"}}))
        frames = []  # the ack and the broadcast it caused may arrive in either order: wait for both
        while not (any(f.get("event") == "said" for f in frames) and any(f.get("type") == "ack" for f in frames)):
            frames.append(json.loads(live.recv()))
        assert {"type": "ack", "id": 1, "data": {"ok": True}} in frames, frames
        assert any(f.get("type") == "error" and "secret" in f["message"] for f in frames), frames
        said = next(f for f in frames if f.get("event") == "said")
        assert said["room"] == "random" and said["data"]["text"] == "hi room" and said["seq"] >= 1
    finally:
        live.close()
    # the chat vassal keeps a history (uwsgi-ws-history): a later client joining with
    # `last` gets the room's recent messages first
    assert "broadcast history: the last 200 events per room" in server.log(), server.log()
    late = websocket.create_connection(f"ws://127.0.0.1:{ports['chat']}/live?token={token}", timeout=10)
    try:
        late.send(json.dumps({"type": "join", "room": "random", "last": 10}))
        frame = json.loads(late.recv())
        while frame.get("event") != "said":
            frame = json.loads(late.recv())
        assert frame["seq"] == said["seq"] and frame["data"]["text"] == "hi room", frame
    finally:
        late.close()

    # ticker: a POSTed price reaches a subscribed client
    ticker = websocket.create_connection(f"ws://127.0.0.1:{ports['ticker']}/ticker", timeout=10)
    try:
        body = json.dumps({"symbol": "TEST", "price": 1.5}).encode()
        deadline = time.monotonic() + 10
        seen = []
        while time.monotonic() < deadline and not any(m.get("symbol") == "TEST" for m in seen):
            req = urllib.request.Request(f"http://127.0.0.1:{ports['ticker']}/price", data=body,
                                         headers={"Content-Type": "application/json"})
            assert urllib.request.urlopen(req, timeout=5).status == 202
            ticker.settimeout(1)
            # the price mule publishes every second, so recv rarely times out: read for
            # a second, then POST again (a POST right after the upgrade can precede the
            # subscription)
            until = time.monotonic() + 1
            try:
                while time.monotonic() < until:
                    seen.append(json.loads(ticker.recv()))
            except websocket.WebSocketTimeoutException:
                pass
        assert any(m.get("symbol") == "TEST" and m["price"] == 1.5 for m in seen), (seen, server.log())
    finally:
        ticker.close()

    server.stop()
    for name, port in ports.items():
        wait_for(lambda: not port_open(port), 15, f"vassal {name} gone after the Emperor stopped")
