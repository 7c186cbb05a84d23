"""The operator's page (`ws.admin_route`, uwsgi_ws/admin.py) on real uWSGI: threads and
gevent, 2 workers (each also on a port of its own), the broadcast mule. App:
tests/apps/admin_app.py; event clients: tests/test_presence.py's `Client`.

- refused by default: an admin route without `allow` answers 403 (page, assets, feed,
  actions) with a body saying how to allow; with `allow`, only what it lets in;
- the feed (a WebSocket) pushes a state a second: connections per route and worker follow
  a client connecting on either worker; watched rooms list their members;
- the actions: emit reaches a client in the room (from either worker), disconnect
  closes a client with the given code and reason, both logged on uwsgi_ws.admin;
- CSRF: a POST from another origin, without Origin, without the admin header or not
  JSON is refused (403) even when `allow` lets the request in, and does nothing;
- bad input gets a clear 400/404; the feed honours the app's Origin policy.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import websocket
from test_presence import Client
from test_redis_bridge import RedisServer

from harness import UWSGI, free_port

MODEL_ARGS = {
    "threads": ["--processes", "2", "--threads", "16"],
    "gevent": ["--processes", "2", "--gevent", "64"],
}
MODELS = ["threads", "gevent"]
ADMIN = {"X-Test-Admin": "letmein"}
EXPECTED_TRACEBACKS = (r"RuntimeError: the admin check is broken",)  # /_broken's check, on purpose


def start(tmp: Path, model: str, extra=()) -> UWSGI:
    """admin_app on 2 workers, each also on a port of its own (`worker_ports`), with the mule."""
    ports = [free_port(), free_port()]
    server = UWSGI([
        "--master",
        "--http-socket", "127.0.0.1:{port}",
        "--http-socket", f"127.0.0.1:{ports[0]}",
        "--http-socket", f"127.0.0.1:{ports[1]}",
        "--map-socket", "1:1", "--map-socket", "2:2",
        "--module", "admin_app:app", "--die-on-term", "--need-app", "--disable-logging",
        "--sharedarea", "16", "--mule=uwsgi_ws.mule:run",
        *MODEL_ARGS[model], *extra,
    ], tmp)
    server.worker_ports = ports  # type: ignore[attr-defined]
    server.wait_for_log(r"broadcast mule 1 serving ring", timeout=20)
    return server


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    instance = start(tmp_path_factory.mktemp(f"admin-{request.param}"), request.param)
    instance.model = request.param  # type: ignore[attr-defined]
    yield instance
    instance.stop()
    assert not instance.crashes(), instance.log()
    assert not instance.unexpected_tracebacks(EXPECTED_TRACEBACKS), instance.log()


def request(server, path: str, method: str = "GET", body=None, headers=None, port=None):
    """(status, headers, text) of one HTTP request; `body` a dict is sent as JSON."""
    data = None
    headers = dict(headers or {})
    if isinstance(body, (dict, list)):
        data = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    elif body is not None:
        data = body.encode() if isinstance(body, str) else body
    port = port or server.port
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, resp.headers, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


def action(server, name: str, body, port=None, **headers):
    """An admin action as the page sends it (allowed, same origin, the admin header, JSON);
    `headers` override (None drops one)."""
    port = port or server.port
    sent = {**ADMIN, "Origin": f"http://127.0.0.1:{port}", "X-Uwsgi-Ws-Admin": "1"}
    for key, value in headers.items():
        key = key.replace("_", "-")
        if value is None:
            sent.pop(key, None)
        else:
            sent[key] = value
    return request(server, f"/_admin/{name}", "POST", body, sent, port=port)


class Feed:
    """The admin feed (WebSocket) read with websocket-client."""

    def __init__(self, server, headers=ADMIN, port=None, origin=None):
        port = port or server.port
        self.ws = websocket.create_connection(
            f"ws://127.0.0.1:{port}/_admin/feed", timeout=10,
            header=[f"{k}: {v}" for k, v in headers.items()],
            **({"origin": origin} if origin else {}))

    def state(self) -> dict:
        return json.loads(self.ws.recv())

    def until(self, match, timeout: float = 15) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state()
            if match(state):
                return state
        raise AssertionError(f"no matching state in {timeout}s; the last: {state}")

    def watch(self, rooms: dict) -> None:
        self.ws.send(json.dumps({"watch": rooms}))

    def close(self) -> None:
        self.ws.close()


def open_on(state: dict, route: str) -> dict:
    """{worker id: open connections of `route`} in a state."""
    return {o["worker"]: o["count"] for o in state["open"] if o["route"] == route}


def room(state: dict, name: str, path: str = "/live") -> dict:
    for endpoint in state["endpoints"]:
        if endpoint["path"] == path:
            for entry in endpoint["rooms"]:
                if entry["room"] == name:
                    return entry
    return {}


def close_frame(client: Client):
    opcode, payload = client.ws.recv_data(control_frame=True)
    while opcode != websocket.ABNF.OPCODE_CLOSE:
        opcode, payload = client.ws.recv_data(control_frame=True)
    return int.from_bytes(payload[:2], "big"), payload[2:].decode()


# -- access -------------------------------------------------------------------------------


def test_an_admin_route_without_allow_refuses_everyone(server):
    for path in ("/_closed", "/_closed/admin.js", "/_closed/admin.css"):
        status, headers, text = request(server, path, headers=ADMIN)
        assert status == 403, (path, text)
        assert "allow=" in text and "docs/admin.md" in text
    status, _, text = request(server, "/_closed/emit", "POST", {"event": "x"},
                              {"Origin": f"http://127.0.0.1:{server.port}", "X-Uwsgi-Ws-Admin": "1"})
    assert status == 403 and "allow=" in text
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(f"ws://127.0.0.1:{server.port}/_closed/feed", timeout=10)
    assert refused.value.status_code == 403
    assert b"allow=" in refused.value.resp_body


def test_allow_lets_in_only_what_it_accepts(server):
    status, _, text = request(server, "/_admin")
    assert status == 403 and "refused" in text
    status, headers, text = request(server, "/_admin", headers=ADMIN)
    assert status == 200 and "<title>uwsgi_ws admin</title>" in text
    assert 'data-base="/_admin"' in text and 'src="/_admin/admin.js"' in text
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    status, headers, _ = request(server, "/_admin", headers={"Cookie": "admin=letmein"})
    assert status == 200
    for name, mimetype in (("admin.js", "text/javascript"), ("admin.css", "text/css")):
        status, headers, text = request(server, f"/_admin/{name}", headers=ADMIN)
        assert status == 200 and headers["Content-Type"].startswith(mimetype) and text
        assert request(server, f"/_admin/{name}")[0] == 403
    assert request(server, "/_admin/other.js", headers=ADMIN)[0] == 404
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        Feed(server, headers={})
    assert refused.value.status_code == 403


def test_a_check_that_raises_or_is_not_true_refuses(server):
    status, _, text = request(server, "/_broken", headers={"X-Mode": "raise"})
    assert status == 403 and "allow() check failed" in text
    server.wait_for_log(r"RuntimeError: the admin check is broken")
    status, headers, _ = request(server, "/_broken", headers={"X-Mode": "login"})  # (urllib follows it)
    assert status == 404 and headers.get("Content-Type", "").startswith("text/html")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)  # the feed's handshake
    try:
        conn.request("GET", "/_broken/feed", headers={
            "X-Mode": "login", "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        answer = conn.getresponse()
        assert answer.status == 302 and answer.getheader("Location").endswith("/login")
    finally:
        conn.close()
    status, _, text = request(server, "/_broken")
    assert status == 403 and "refused" in text
    server.wait_for_log(r"allow\(\) returned 'yes', not True or False: refused")


def test_the_feed_follows_the_app_origin_policy(server):
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        Feed(server, origin="http://evil.example")
    assert refused.value.status_code == 403


# -- the feed -------------------------------------------------------------------------------


def test_the_feed_counts_connections_per_worker_and_route(server):
    feed = Feed(server)
    clients = []
    try:
        first = feed.state()
        assert {"t", "pid", "workers", "open", "totals", "rejected", "redis", "endpoints"} <= set(first)
        assert len(first["workers"]) == 2 and first["redis"] is None
        assert "/_admin/feed" in {o["route"] for o in first["open"]}  # the feed itself
        before = open_on(first, "/live")
        expected = {w: before.get(w, 0) for w in first["workers"]}
        for port in server.worker_ports:  # one more on each worker, seen as each comes
            clients.append(Client(port, "?user=ann"))
            state = feed.until(lambda s: sum(open_on(s, "/live").values()) == sum(expected.values()) + 1)
            grown = {w: c - expected[w] for w, c in open_on(state, "/live").items() if c != expected[w]}
            assert list(grown.values()) == [1], (state["open"], expected)
            expected = open_on(state, "/live")
        assert len([c for c in expected.values() if c]) == 2  # one worker each
        clients.pop().close()
        feed.until(lambda s: sum(open_on(s, "/live").values()) == sum(expected.values()) - 1)
        # one state per `interval` (1 s) at most, unless the page sends something
        a, b = feed.state(), feed.state()
        assert b["t"] - a["t"] >= 0.9
    finally:
        for c in clients:
            c.close()
        feed.close()


def test_the_feed_lists_rooms_and_their_members(server):
    feed = Feed(server)
    ann = Client(server.worker_ports[0], "?user=ann&rooms=lobby,r-watch")
    bob = Client(server.worker_ports[1], "?user=bob&rooms=lobby")
    try:
        state = feed.until(lambda s: room(s, "lobby").get("count") == 2)  # rooms() lists lobby
        assert sorted(m["id"] for m in room(state, "lobby")["members"]) == sorted([ann.id, bob.id])
        assert {m["identity"]["user"] for m in room(state, "lobby")["members"]} == {"ann", "bob"}
        # every occupied room is listed, on whichever worker its members are
        state = feed.until(lambda s: room(s, "r-watch").get("count") == 1)
        assert room(state, "r-watch")["members"] == [{"id": ann.id, "identity": {"user": "ann"}}]
        assert room(state, "empty-room") == {}  # an empty room only when watched
        feed.watch({"/live": ["empty-room", "1-2"]})
        state = feed.until(lambda s: room(s, "empty-room").get("count") == 0)
        assert "connection id" in room(state, "1-2")["error"]  # a bad room name says why
        feed.ws.send("not json")  # a bad watch message: watches nothing, the feed goes on
        state = feed.until(lambda s: room(s, "empty-room") == {})
        assert room(state, "r-watch")["count"] == 1
    finally:
        ann.close()
        bob.close()
        feed.close()


# -- actions ----------------------------------------------------------------------------------


def test_emit_reaches_a_client_in_the_room_from_either_worker(server):
    ann = Client(server.worker_ports[0], "?user=ann&rooms=e1")
    try:
        for i, port in enumerate(server.worker_ports):
            status, _, text = action(server, "emit", {"endpoint": "/live", "to": "e1", "event": "admin_test",
                                                      "data": {"n": i}}, port=port)
            assert (status, json.loads(text)) == (200, {"ok": True})
            frame = ann.until(lambda m: m.get("event") == "admin_test")
            assert frame["data"] == {"n": i} and frame["room"] == "e1"
        # to every connection of the endpoint
        assert action(server, "emit", {"endpoint": "/live", "to": "", "event": "all", "data": 1})[0] == 200
        assert ann.until(lambda m: m.get("event") == "all")["data"] == 1
        # to one connection, by its id, from the other worker
        assert action(server, "emit", {"endpoint": "/live", "to": ann.id, "event": "just_you"},
                      port=server.worker_ports[1])[0] == 200
        assert ann.until(lambda m: m.get("event") == "just_you")["data"] is None
    finally:
        ann.close()
    server.wait_for_log(r"admin page: 127\.0\.0\.1 emitted 'admin_test' to 'e1' on /live", count=2)


def test_disconnect_closes_the_client_with_the_code(server):
    for port in server.worker_ports:  # the action on either worker, the client on worker 0
        ann = Client(server.worker_ports[0], "?user=ann")
        try:
            status, _, text = action(server, "disconnect", {"endpoint": "/live", "id": ann.id, "code": 4003,
                                                            "reason": "by the operator"}, port=port)
            assert status == 200, text
            assert close_frame(ann) == (4003, "by the operator")
        finally:
            ann.close()
        server.wait_for_log(rf"admin page: 127\.0\.0\.1 disconnected {ann.id} on /live with 4003")


@pytest.mark.parametrize("forgery", ["other-origin", "other-port", "no-origin", "no-header", "form", "not-allowed"])
def test_a_forged_cross_origin_post_is_refused(server, forgery):
    ann = Client(server.worker_ports[0], "?user=ann&rooms=f1")
    try:
        body = {"endpoint": "/live", "to": "f1", "event": "forged", "data": forgery}
        headers = {
            "other-origin": {"Origin": "http://evil.example"},
            "other-port": {"Origin": f"http://127.0.0.1:{server.worker_ports[0]}"},
            "no-origin": {"Origin": None},
            "no-header": {"X_Uwsgi_Ws_Admin": None},
            "form": {"Content_Type": "text/plain"},
            "not-allowed": {"X_Test_Admin": None},
        }[forgery]
        status, _, text = action(server, "emit", body, **headers)
        assert status == 403, text
        status, _, text = action(server, "disconnect", {"endpoint": "/live", "id": ann.id, "code": 4001}, **headers)
        assert status == 403, text
        if forgery != "not-allowed":
            assert "from the admin page only" in text
        # nothing happened: a marker emitted after arrives first, the connection is open
        assert action(server, "emit", {"endpoint": "/live", "to": "f1", "event": "marker"})[0] == 200
        assert ann.until(lambda m: m.get("event") in ("marker", "forged"))["event"] == "marker"
        assert ann.call("whoami")["data"]["id"] == ann.id
    finally:
        ann.close()


def test_bad_actions_get_clear_errors(server):
    cases = [
        ("emit", {"endpoint": "/nope", "event": "x"}, 404, "no event endpoint '/nope'"),
        ("emit", {"endpoint": "/live", "event": ""}, 400, "'event' must be a non-empty string"),
        ("emit", {"endpoint": "/live", "event": "x", "to": 3}, 400, "'to' must be a room name"),
        ("emit", {"endpoint": "/live", "event": "x", "to": "r" * 300}, 400, "at most 255"),
        ("emit", [1], 400, "must be a JSON object"),
        ("emit", "{not json", 400, "not JSON"),
        ("disconnect", {"endpoint": "/live", "id": "ann", "code": 4000}, 400, "connection id"),
        ("disconnect", {"endpoint": "/live", "id": "1-1", "code": 1001}, 400, "3000-4999"),
        ("disconnect", {"endpoint": "/live", "id": "1-1", "code": "4000"}, 400, "'code' must be an integer"),
    ]
    for name, body, status, message in cases:
        sent = body
        headers = {}
        if isinstance(body, str):
            headers = {"Content_Type": "application/json"}
        got, _, text = action(server, name, sent, **headers)
        assert (got, message in text) == (status, True), (name, body, got, text)
    # one endpoint only: the page may leave "endpoint" out
    assert action(server, "emit", {"event": "x"})[0] == 200


# -- the Redis bridge --------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_the_feed_shows_the_redis_bridge_state(model, tmp_path):
    redis = RedisServer(tmp_path)
    instance = None
    try:
        instance = start(tmp_path, model, ["--env", f"UWSGI_WS_REDIS_URL={redis.url}",
                                           "--env", "UWSGI_WS_REDIS_STREAM=admin-test",
                                           "--env", "UWSGI_WS_REDIS_RETRY_MAX=0.2"])
        instance.wait_for_log(r"redis bridge: connected for pushing", timeout=20)
        feed = Feed(instance)
        try:
            state = feed.until(lambda s: s["redis"] and s["redis"]["out_state"] == "connected"
                               and s["redis"]["in_state"] == "connected")
            assert {"pending", "inbound", "missed", "last_id", "instance"} <= set(state["redis"])
            assert action(instance, "emit", {"endpoint": "/live", "to": "x", "event": "e"})[0] == 200
            feed.until(lambda s: s["redis"]["pending"] == 0 and s["totals"]["published"] >= 1)
            redis.kill()  # an outage shows, and the recovery
            feed.until(lambda s: "unreachable" in (s["redis"]["out_state"], s["redis"]["in_state"]))
            redis.start()
            feed.until(lambda s: s["redis"]["out_state"] == s["redis"]["in_state"] == "connected")
        finally:
            feed.close()
    finally:
        if instance is not None:
            instance.stop()
            assert not instance.crashes(), instance.log()
            assert not instance.unexpected_tracebacks(()), instance.log()
        redis.stop()


# -- set-up errors (no server needed: they are raised where the app is declared) -----------------


def test_admin_route_arguments_are_checked_where_declared():
    from flask import Flask

    from uwsgi_ws import WebSocket

    with pytest.raises(RuntimeError, match="needs the app"):
        WebSocket().admin_route("/_admin")
    app = Flask(__name__)
    ws = WebSocket(app)
    with pytest.raises(TypeError, match=r"allow\(request\) -> bool"):
        ws.admin_route("/_admin", allow="yes")
    with pytest.raises(TypeError, match="rooms must be a function"):
        ws.admin_route("/_admin", allow=bool, rooms=["lobby"])
    with pytest.raises(ValueError, match="without URL variables"):
        ws.admin_route("/_admin/<tenant>", allow=bool)
    with pytest.raises(ValueError, match="positive number of seconds"):
        ws.admin_route("/_admin", allow=bool, interval=0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        ws.admin_route("/_admin", allow=bool, colour="red")
    one = ws.events("/one", presence=True)
    ws.events("/two")
    assert [e.path for e in ws.admin_route("/_a", allow=bool, endpoint="a").endpoints()] == ["/one", "/two"]
    assert ws.admin_route("/_b", allow=bool, events=one, endpoint="b").endpoints() == [one]
    ws.admin_route("/_c", allow=lambda request: None, endpoint="c")
    client = app.test_client()
    page = client.get("/_a")  # (the Flask test client: the page is plain Flask)
    assert page.status_code == 200 and b'data-base="/_a"' in page.data
    assert client.get("/_c").status_code == 403  # None is not True


def test_the_feed_and_actions_work_in_the_test_client():
    """Without uWSGI (an app's own tests: ws.test_client(), one process, "worker 0")."""
    from flask import Flask

    from uwsgi_ws import WebSocket

    app = Flask(__name__)
    ws = WebSocket(app, ping_interval=None)
    live = ws.events("/live", presence=True)
    live.on("connect")(lambda conn: conn.join("lobby"))
    ws.admin_route("/_admin", allow=lambda r: True, rooms=lambda: ["lobby"])
    client = ws.test_client(app.test_client())
    feed = client.connect("/_admin/feed")
    member = None
    try:
        assert {"route": "/_admin/feed", "worker": 0, "count": 1} in json.loads(feed.receive())["open"]
        member = client.events("/live")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            state = json.loads(feed.receive())
            if room(state, "lobby").get("count") == 1:
                break
        assert {"route": "/live", "worker": 0, "count": 1} in state["open"]
        web = app.test_client()
        sent = {"Origin": "http://localhost", "X-Uwsgi-Ws-Admin": "1"}
        assert web.post("/_admin/emit", json={"event": "x", "to": "lobby", "data": 1}, headers=sent).json == {"ok": True}
        member.sync()
        assert ("x", 1) in member.get_received()
        assert web.post("/_admin/emit", json={"event": "x"}, headers={**sent, "Origin": "http://evil"}).status_code == 403
    finally:
        feed.close()
        if member is not None:
            member.close()
