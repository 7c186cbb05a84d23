"""The examples (echo, chat with rooms, ticker) tested as a user would test them:
in-process with ws.test_client(), and under real uWSGI with the pytest plugin
uwsgi_ws.testing.plugin (run here in a pytest subprocess, as a user's suite runs it)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

from uwsgi_ws import EventError
from uwsgi_ws.testing import UpgradeRefused

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    """examples/<name>/app.py as module example_<name> (each example's module is "app")."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / name / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def echo() -> ModuleType:
    return load("echo")


@pytest.fixture(scope="module")
def chat() -> ModuleType:
    return load("chat")


@pytest.fixture(scope="module")
def ticker() -> ModuleType:
    return load("ticker")


def test_echo_example(echo: ModuleType) -> None:
    with echo.ws.test_client().connect("/echo") as conn:
        conn.send("hello")
        assert conn.receive(timeout=5) == "hello"
        conn.send(b"\x00bin")
        assert conn.receive(timeout=5) == b"\x00bin"


def chat_token(chat: ModuleType, name: str) -> str:
    http = chat.app.test_client()
    assert http.post("/login", data={"name": name}).status_code == 200
    token: str = http.post("/token").get_json()["token"]
    return token


def test_chat_rooms_and_acks(chat: ModuleType) -> None:
    client = chat.ws.test_client()
    ann = client.events("/live", query_string={"token": chat_token(chat, "ann")})
    bob = client.events("/live", query_string={"token": chat_token(chat, "bob")})
    assert ann.get_received() == [("welcome", {"pid": os.getpid()})]
    ann.join("lobby")
    bob.join("random")
    assert ann.emit("say", {"room": "lobby", "text": "hi all"}) == {"ok": True}
    said = [data for event, data in ann.get_received() if event == "said"]
    assert [(m["name"], m["text"]) for m in said] == [("ann", "hi all")]  # the name comes from the token
    assert [e for e, _ in bob.get_received() if e == "said"] == []  # another room
    with pytest.raises(EventError, match=r"send \{room"):
        bob.emit("say", {"room": "kitchen", "text": "x"})
    with pytest.raises(EventError, match="join 'kitchen' refused"):
        bob.join("kitchen")
    bob.join("lobby", last=50)  # the room's recent messages first
    assert [(d["name"], d["text"]) for e, d in bob.get_received() if e == "said"] == [("ann", "hi all")]
    ann.close()
    bob.close()


@pytest.mark.parametrize("token, status, words", [
    (None, 401, "no token"),
    ("forged", 403, "bad token"),
])
def test_chat_refuses_without_a_valid_token(chat: ModuleType, token, status, words) -> None:
    with pytest.raises(UpgradeRefused) as caught:
        chat.ws.test_client().events("/live", query_string={"token": token} if token else None)
    assert caught.value.status == status and words in caught.value.body


def test_chat_plain_websocket(chat: ModuleType) -> None:
    client = chat.ws.test_client()
    a, b = client.connect("/ws"), client.connect("/ws")
    # b's handler subscribes right after its upgrade: send until b hears one, then a last one.
    for attempt in range(100):
        a.send(json.dumps({"name": "ann", "text": f"try {attempt}"}))
        if b.receive(timeout=0.1) is not None:
            break
    a.send(json.dumps({"name": "ann", "text": "plain"}))
    for conn in (a, b):  # a's own message comes back too
        while True:
            message = json.loads(conn.receive(timeout=5))
            if message["text"] == "plain":
                break
        assert message["name"] == "ann" and message["pid"] == os.getpid()
    a.close()
    b.close()


def test_ticker_prices_from_a_view(ticker: ModuleType) -> None:
    conn = ticker.ws.test_client().connect("/ticker")
    http = ticker.app.test_client()
    # The handler subscribes after the upgrade: publish until the first price arrives, then every
    # later one arrives in order.
    first = None
    for attempt in range(100):
        assert http.post("/price", json={"symbol": "ACME", "price": attempt}).status_code == 202
        first = conn.receive(timeout=0.1)
        if first is not None:
            break
    assert first is not None, "no price reached the /ticker client"
    start = json.loads(first)["price"]
    for later in (1000.0, 1001.0):
        http.post("/price", json={"symbol": "ACME", "price": later})
    received = [json.loads(conn.receive(timeout=5))["price"] for _ in range(int(attempt - start) + 2)]
    assert received[-2:] == [1000.0, 1001.0]
    assert http.post("/price", json={"symbol": "ACME"}).status_code == 400
    conn.close()


# -- the pytest plugin, as a user's suite uses it ----------------------------------------------


PLUGIN_TEST = '''
import json
import urllib.request

import pytest
import websocket

pytestmark = pytest.mark.uwsgi_app("app:app", pythonpath=[{ticker_dir!r}])


@pytest.mark.parametrize("uwsgi_server", ["threads", "gevent"], indirect=True)
def test_ticker_under_uwsgi(uwsgi_server):
    with open({pids!r}, "a") as f:
        f.write(f"{{uwsgi_server.pid}}\\n")
    assert uwsgi_server.url.startswith("ws://127.0.0.1:") and uwsgi_server.http.startswith("http://")
    conn = websocket.create_connection(uwsgi_server.url + "/ticker", timeout=10)
    conn.settimeout(0.2)
    seen = None
    for attempt in range(200):  # the handler subscribes after the upgrade: publish until one arrives
        body = json.dumps({{"symbol": "ACME", "price": attempt}}).encode()
        urllib.request.urlopen(urllib.request.Request(
            uwsgi_server.http + "/price", data=body, headers={{"Content-Type": "application/json"}}))
        try:
            seen = json.loads(conn.recv())
            break
        except websocket.WebSocketTimeoutException:
            continue
    assert seen is not None and seen["symbol"] == "ACME"
    conn.close()
    assert len(uwsgi_server.worker_pids()) == 2
'''


def test_the_plugin_serves_an_example_under_uwsgi(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    test_file = tmp_path / "test_user_suite.py"
    test_file.write_text(textwrap.dedent(PLUGIN_TEST.format(ticker_dir=str(EXAMPLES / "ticker"), pids=str(pids))))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "uwsgi_ws.testing.plugin", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), str(test_file)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout, result.stdout
    for pid in map(int, pids.read_text().split()):  # each instance was stopped by pid
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_the_plugin_says_what_is_missing(tmp_path: Path) -> None:
    test_file = tmp_path / "test_no_app.py"
    test_file.write_text("def test_x(uwsgi_server):\n    pass\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "uwsgi_ws.testing.plugin", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), str(test_file)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "uwsgi_server needs the app" in result.stdout + result.stderr
