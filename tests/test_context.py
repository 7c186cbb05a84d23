"""The Flask request and app contexts inside a WebSocket handler, and teardown."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from http.cookies import SimpleCookie

import websocket

from harness import read_reports

APP = "echo_app:app"
MODELS = ["threads", "gevent", "async"]
EXPECTED_TRACEBACKS = [r"RuntimeError: handler failed on purpose"]  # the teardown test's handler


def login(server, user):
    response = urllib.request.urlopen(f"{server.http}/login?user={user}", timeout=5)
    cookie = SimpleCookie(response.headers["Set-Cookie"])
    return cookie["session"].value


def test_request_args_cookies_session_g_current_app(server):
    session_cookie = login(server, "alice")
    ws = websocket.create_connection(
        server.url + "/context?a=1&a=2&b=t%C3%A9", timeout=5,
        cookie=f"session={session_cookie}; flavor=mint",
    )
    try:
        seen = json.loads(ws.recv())
    finally:
        ws.close()
    assert seen["args"] == {"a": ["1", "2"], "b": ["té"]}
    assert seen["cookie"] == "mint"
    assert seen["user"] == "alice"
    assert seen["g"] == "g-/context"  # set by a before_request hook
    assert seen["app"] == "echo_app"
    assert seen["same_app"] is True
    assert seen["path"] == "/context"
    assert seen["endpoint"] == "context"
    assert seen["environ_is_request"] is True


def test_session_differs_per_client(server):
    bob = login(server, "bob")
    anonymous = websocket.create_connection(server.url + "/context", timeout=5)
    try:
        assert json.loads(anonymous.recv())["user"] is None
    finally:
        anonymous.close()
    ws = websocket.create_connection(server.url + "/context", timeout=5, cookie=f"session={bob}")
    try:
        assert json.loads(ws.recv())["user"] == "bob"
    finally:
        ws.close()


def test_teardown_runs_after_the_handler_returns(server, tmp_path):
    report = tmp_path / "teardown.jsonl"
    query = urllib.parse.urlencode({"report": str(report)})
    ws = websocket.create_connection(f"{server.url}/context?{query}", timeout=5)
    json.loads(ws.recv())
    ws.send("still in the handler")
    assert ws.recv() == "still in the handler"
    assert not report.exists()  # nothing torn down while the handler runs
    ws.close()
    events = read_reports(report, count=2)
    assert [e["event"] for e in events] == ["handler-end", "teardown"]
    assert events[1]["endpoint"] == "context"
    assert events[1]["exc"] is None


def test_teardown_runs_when_the_handler_raises(server, tmp_path):
    report = tmp_path / "teardown.jsonl"
    query = urllib.parse.urlencode({"report": str(report)})
    ws = websocket.create_connection(f"{server.url}/raise?{query}", timeout=5)
    try:
        ws.send("boom")
        ws.recv_data(control_frame=True)
    finally:
        ws.close()
    (event,) = read_reports(report, count=1)
    assert event["event"] == "teardown"
    assert event["endpoint"] == "raises"
