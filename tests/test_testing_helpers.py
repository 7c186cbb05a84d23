"""What a new user hit testing their own app (issue 13/18 findings): the race between a
publish and the handler's subscribe (`TestClient.wait_subscribed`), docs/testing.md's
example run as copied into an empty directory, and the pytest plugin's fixture yielding
before its workers were up (``worker_pids()`` was []).

In-process tests use the real engine over socket pairs (no uWSGI: that is what
``ws.test_client()`` is for); the plugin runs real uWSGI in a pytest subprocess, as a
user's suite does.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from flask import Flask, request

from uwsgi_ws import WebSocket
from uwsgi_ws.testing import wait_delivered

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "testing.md"


def quick_start_app():
    """The README's Quick start (echo, ticker, price), plus a handler that subscribes only
    when the test lets it (`gate`): the race made deterministic."""
    app = Flask(__name__)
    ws = WebSocket(app)
    gate = threading.Event()

    @ws.route("/ticker/<symbol>")
    def ticker(conn, symbol):
        with ws.subscribe(conn, symbol):
            for _ in conn:
                pass

    @ws.route("/late/<symbol>")
    def late(conn, symbol):
        conn.send("open")  # upgraded: the client's connect() has returned
        assert gate.wait(10)
        with ws.subscribe(conn, symbol):
            for _ in conn:
                pass

    @app.post("/price/<symbol>")
    def price(symbol):
        ws.publish(request.get_data(as_text=True), channel=symbol)
        return "", 204

    return app, ws, gate


def test_a_publish_before_the_subscribe_is_lost_and_wait_subscribed_closes_the_race():
    app, ws, gate = quick_start_app()
    client = ws.test_client()
    with client.connect("/late/ACME") as conn:
        assert conn.receive(timeout=5) == "open"
        ws.publish("lost", channel="ACME")  # the handler has not subscribed yet: reaches nobody
        wait_delivered(ws.broadcast())  # (the fan-out is the hub task's: let it pass "lost" first)
        gate.set()
        assert client.wait_subscribed("ACME", timeout=10) == 1
        ws.publish("42.0", channel="ACME")
        assert conn.receive(timeout=5) == "42.0"  # not "lost": it was never delivered
        assert conn.receive_available() == []


def test_the_quick_start_ticker_through_its_view_many_times():
    """Connect, wait, publish through the app's own POST view: never a lost price."""
    app, ws, _ = quick_start_app()
    client, http = ws.test_client(), app.test_client()
    for i in range(30):
        with client.connect(f"/ticker/S{i}") as conn:
            client.wait_subscribed(f"S{i}")
            assert http.post(f"/price/S{i}", data=str(i)).status_code == 204
            assert conn.receive(timeout=5) == str(i)


def test_wait_subscribed_counts_and_times_out():
    app, ws, _ = quick_start_app()
    client = ws.test_client()
    with client.connect("/ticker/TWO"), client.connect("/ticker/TWO") as second:
        assert client.wait_subscribed("TWO", count=2) == 2
        ws.publish("both", channel="TWO")
        assert second.receive(timeout=5) == "both"
        with pytest.raises(TimeoutError, match=r"0 connection\(s\) subscribed to 'NOBODY' after 0.2s, waiting for 1"):
            client.wait_subscribed("NOBODY", timeout=0.2)
    with pytest.raises(ValueError, match="at least 1"):
        client.wait_subscribed("TWO", count=0)


def run_pytest(directory: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # a user's project: nothing of ours
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
                           str(directory), *args], cwd=directory, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.parametrize("name", ["test_app.py", "test_ticker.py"])
def test_the_docs_examples_run_as_copied(tmp_path, name):
    """docs/testing.md's examples (the first one, the ticker's), each pasted into the file
    it names, in an empty project."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    example = next(b for b in blocks if b.startswith(f"# {name}"))
    assert "from app import" not in example, "the example must define what it tests"
    (tmp_path / name).write_text(example)
    done = run_pytest(tmp_path, name)
    assert done.returncode == 0, done.stdout + done.stderr
    count = len(re.findall(r"^def test_", example, re.M))
    assert count and f"{count} passed" in done.stdout, done.stdout


USER_SUITE = '''
import pytest

pytestmark = pytest.mark.uwsgi_app("app:app", extra=[{extra}])


@pytest.mark.parametrize("uwsgi_server", ["threads", "gevent"], indirect=True)
def test_workers_are_up_when_the_fixture_yields(uwsgi_server):
    pids = uwsgi_server.worker_pids()              # first thing: no waiting in the test
    assert len(pids) == {workers}, (pids, uwsgi_server.log())
'''

USER_APP = '''
from flask import Flask
from uwsgi_ws import WebSocket

app = Flask(__name__)
ws = WebSocket(app)

@ws.route("/echo")
def echo(conn):
    for message in conn:
        conn.send(message)
'''


@pytest.mark.parametrize("workers", [2, 3])
def test_the_plugin_fixture_yields_once_the_workers_serve(tmp_path, workers):
    (tmp_path / "app.py").write_text(USER_APP)
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["uwsgi_ws.testing.plugin"]\n')
    extra = "" if workers == 2 else '"--processes", "3"'
    (tmp_path / "test_suite.py").write_text(textwrap.dedent(USER_SUITE.format(extra=extra, workers=workers)))
    done = run_pytest(tmp_path, "test_suite.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout, done.stdout
