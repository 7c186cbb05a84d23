"""ws.test_client(): the app's routes in-process over a socket pair, with the real Connection,
engine, access policy and the in-process broadcast (uwsgi_ws/testing/client.py,
uwsgi_ws/broadcast/local.py). No uWSGI here: that is the point of the test client."""

from __future__ import annotations

import json
import threading

import pytest
from flask import Flask, request, session

from uwsgi_ws import ConnectionClosed, EventError, WebSocket
from uwsgi_ws import events_protocol as ep
from uwsgi_ws.testing import UpgradeRefused

app = Flask(__name__)
app.secret_key = "test"
ws = WebSocket(app, max_message_size=1024, ping_interval=None)
live = ws.events("/live")
handler_errors: list = []


@ws.before_connect
def deny_on_request():
    return request.args.get("deny") is None  # False: 403


@ws.route("/echo")
def echo(conn):
    for message in conn:
        conn.send(message)


@ws.route("/close/<int:code>")
def close_with(conn, code):
    conn.close(code, f"closing with {code}")


@ws.route("/crash")
def crash(conn):
    conn.send("about to fail")
    raise RuntimeError("the handler failed")


@ws.route("/who", subprotocols=["chat.v2", "chat.v1"])
def who(conn):
    conn.send(json.dumps({"token": request.args.get("token"), "header": request.headers.get("X-Test"),
                          "subprotocol": conn.subprotocol}))
    for _ in conn:
        pass


@ws.route("/sub/<channel>")
def sub(conn, channel):
    with ws.subscribe(conn, channel):
        conn.send("ready")
        for _ in conn:
            pass


@app.post("/login/<name>")
def login(name):
    session["name"] = name
    return "", 204


@ws.route("/me")
def me(conn):
    conn.send(session.get("name", "nobody"))


@live.on("connect")
def connected(conn):
    conn.emit("hello", {"path": request.path})


@live.on("join")
def may_join(conn, room):
    return room != "secret"


@live.on("echo")
def echo_event(conn, data):
    return data


@live.on("say")
def say(conn, data):
    live.emit("said", data, to=data["room"])
    return {"ok": True}


@live.on("fail")
def fail(conn, data):
    raise EventError(f"refused: {data}")


@live.on("crash")
def crash_event(conn, data):
    return 1 / 0


@pytest.fixture(scope="module")
def client():
    return ws.test_client()


# -- the WebSocket -------------------------------------------------------------------------


def test_echo_text_and_binary_then_close(client) -> None:
    conn = client.connect("/echo")
    conn.send("héllo")
    assert conn.receive(timeout=5) == "héllo"
    conn.send(b"\x00\xff")
    assert conn.receive(timeout=5) == b"\x00\xff"
    conn.close(1000, "bye")
    assert (conn.close_code, conn.closed) == (1000, True)
    with pytest.raises(ConnectionClosed):
        conn.send("after close")


def test_permessage_deflate_both_ways(client) -> None:
    with client.connect("/echo", compression=True) as conn:
        assert conn.headers["sec-websocket-extensions"].startswith("permessage-deflate")
        conn.send("zip " * 100)
        assert conn.receive(timeout=5) == "zip " * 100
        conn.send(b"\x00" * 500)
        assert conn.receive(timeout=5) == b"\x00" * 500
    with client.connect("/echo") as plain:
        assert "sec-websocket-extensions" not in plain.headers


def test_receive_times_out_with_none(client) -> None:
    with client.connect("/echo") as conn:
        assert conn.receive(timeout=0.05) is None


def test_server_close_code_and_reason(client) -> None:
    conn = client.connect("/close/4001")
    with pytest.raises(ConnectionClosed) as caught:
        conn.receive(timeout=5)
    assert (caught.value.code, caught.value.reason) == (4001, "closing with 4001")
    assert (conn.close_code, conn.close_reason) == (4001, "closing with 4001")


def test_message_over_max_message_size_is_1009(client) -> None:
    conn = client.connect("/echo")
    conn.send("x" * 1024)
    assert conn.receive(timeout=5) == "x" * 1024
    conn.send("x" * 1025)
    with pytest.raises(ConnectionClosed) as caught:
        conn.receive(timeout=5)
    assert caught.value.code == 1009


def test_invalid_utf8_in_a_text_frame_is_1007(client) -> None:
    conn = client.connect("/echo")
    conn.send_frame(0x1, b"ok \xff")
    with pytest.raises(ConnectionClosed) as caught:
        conn.receive(timeout=5)
    assert caught.value.code == 1007


def test_stray_continuation_is_1002(client) -> None:
    conn = client.connect("/echo")
    conn.send_frame(0x0, b"nothing to continue")
    with pytest.raises(ConnectionClosed) as caught:
        conn.receive(timeout=5)
    assert caught.value.code == 1002


def test_handler_exception_is_1011(client) -> None:
    conn = client.connect("/crash")
    assert conn.receive(timeout=5) == "about to fail"
    with pytest.raises(ConnectionClosed) as caught:
        conn.receive(timeout=5)
    assert caught.value.code == 1011


def test_query_headers_and_subprotocol(client) -> None:
    with client.connect("/who", query_string={"token": "t1"}, headers={"X-Test": "yes"},
                        subprotocols=["chat.v1", "chat.v2"]) as conn:
        assert json.loads(conn.receive(timeout=5)) == {"token": "t1", "header": "yes", "subprotocol": "chat.v1"}
        assert conn.subprotocol == "chat.v1"  # the client's first choice the route speaks


def test_cookies_of_a_flask_test_client(client) -> None:
    http = app.test_client()
    assert http.post("/login/ann").status_code == 204
    assert ws.test_client(flask_test_client=http).connect("/me").receive(timeout=5) == "ann"  # the session
    assert client.connect("/me").receive(timeout=5) == "nobody"


@pytest.mark.parametrize("path, headers, status, words", [
    ("/nowhere", {}, 404, "Not Found"),
    ("/echo", {"Origin": "https://evil.example"}, 403, "allowed_origins"),
    ("/echo?deny=1", {}, 403, "before_connect"),
    ("/echo", {"Sec-WebSocket-Version": "8"}, 426, ""),
])
def test_refused_upgrades_raise_with_status_and_body(client, path, headers, status, words) -> None:
    with pytest.raises(UpgradeRefused) as caught:
        client.connect(path, headers=headers)
    assert caught.value.status == status
    assert words in caught.value.body
    assert str(status) in str(caught.value)


def test_publish_from_the_test_reaches_subscribers(client) -> None:
    a, b = client.connect("/sub/prices"), client.connect("/sub/prices")
    other = client.connect("/sub/other")
    for conn in (a, b, other):
        assert conn.receive(timeout=5) == "ready"
    ws.publish("42.0", channel="prices")
    ws.publish(b"\x01\x02", channel="prices")
    for conn in (a, b):
        assert conn.receive(timeout=5) == "42.0"
        assert conn.receive(timeout=5) == b"\x01\x02"
    assert other.receive(timeout=0.2) is None
    for conn in (a, b, other):
        conn.close()


def test_publish_order_from_threads_is_one_order_for_all(client) -> None:
    conns = [client.connect("/sub/burst") for _ in range(3)]
    for conn in conns:
        assert conn.receive(timeout=5) == "ready"

    def publisher(name: str) -> None:
        for i in range(200):
            ws.publish(f"{name}{i}", channel="burst")

    threads = [threading.Thread(target=publisher, args=(n,)) for n in "xy"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seen = [[conn.receive(timeout=5) for _ in range(400)] for conn in conns]
    assert seen[0] == seen[1] == seen[2]  # one order for every subscriber
    assert sorted(seen[0]) == sorted(f"{n}{i}" for n in "xy" for i in range(200))  # each once
    for name in "xy":
        assert [m for m in seen[0] if m[0] == name] == [f"{name}{i}" for i in range(200)]  # publish order


# -- the event protocol ---------------------------------------------------------------------


def test_events_acks_and_errors(client) -> None:
    ev = client.events("/live")
    assert ev.get_received() == [("hello", {"path": "/live"})]
    assert ev.emit("echo", {"a": [1, 2]}) == {"a": [1, 2]}
    with pytest.raises(EventError, match="refused: 3"):
        ev.emit("fail", 3)
    with pytest.raises(EventError, match="internal error"):
        ev.emit("crash")
    with pytest.raises(EventError, match="no handler for event 'nope'"):
        ev.emit("nope")
    ev.close()
    assert ev.close_code == 1000


def test_events_rooms_seq_and_last(client) -> None:
    position = ws.broadcast().position()
    alice, bob = client.events("/live"), client.events("/live")
    alice.join("room-a")
    with pytest.raises(EventError, match="join 'secret' refused"):
        bob.join("secret")
    assert alice.emit("say", {"room": "room-a", "n": 1}) == {"ok": True}
    assert alice.get_received()[-1] == ("said", {"room": "room-a", "n": 1})
    assert ("said", {"room": "room-a", "n": 1}) not in bob.get_received()  # not in the room
    live.emit("said", {"room": "room-a", "n": 2}, to="room-a")  # from the test itself
    assert alice.get_received() == [("said", {"room": "room-a", "n": 2})]
    broadcasts = [f for f in alice.frames if getattr(f, "seq", None) is not None]
    assert [f.data["n"] for f in broadcasts] == [1, 2]
    assert broadcasts[0].seq > position.seq and broadcasts[1].seq > broadcasts[0].seq
    assert {f.epoch for f in broadcasts} == {str(position.epoch)}
    bob.join("room-a", last=5)  # the room's last messages first
    assert [data["n"] for event, data in bob.get_received() if event == "said"] == [1, 2]
    bob.leave("room-a")
    live.emit("said", {"room": "room-a", "n": 3}, to="room-a")
    assert alice.get_received() == [("said", {"room": "room-a", "n": 3})]
    assert bob.get_received() == []
    alice.close()
    bob.close()


def test_resume_across_another_epoch_is_not_recovered(client) -> None:
    conn = client.connect("/live", query_string={"resume": "1"})
    conn.send(json.dumps({"type": "resume", "epoch": "1", "rooms": {"room-r": 1}}))
    frames = [json.loads(conn.receive(timeout=5)) for _ in range(3)]
    kinds = [f["type"] for f in frames]
    assert kinds == ["event", "not_recovered", "resumed"], frames  # hello, then the answer
    assert frames[1]["room"] == "room-r" and frames[1]["reason"].startswith("epoch changed")
    conn.close()


def test_resume_replays_what_was_missed(client) -> None:
    ev = client.events("/live")
    ev.join("room-m")
    live.emit("said", {"n": 1}, to="room-m")
    ev.get_received()
    last_seen = ev.frames[-1].seq
    epoch = ev.frames[-1].epoch
    ev.close()
    live.emit("said", {"n": 2}, to="room-m")  # missed while away
    live.emit("said", {"n": 3}, to="room-m")
    conn = client.connect("/live", query_string={"resume": "1"})
    conn.send(json.dumps({"type": "resume", "epoch": epoch, "rooms": {"room-m": last_seen}}))
    frames = [json.loads(conn.receive(timeout=5)) for _ in range(4)]
    said = [f for f in frames if f.get("event") == "said"]
    assert [f["data"] for f in said] == [{"n": 2}, {"n": 3}], frames  # each missed one once, in order
    (resumed,) = [f for f in frames if f["type"] == "resumed"]
    # Replayed ones come before `resumed` (seq <= the position it names), live ones after it.
    at = frames.index(resumed)
    for f in said:
        assert (frames.index(f) < at) == (f["seq"] <= resumed["rooms"]["room-m"]), frames
    conn.close()


def test_resume_with_the_test_clients_own_position(client) -> None:
    ev = client.events("/live")
    ev.join("room-p")
    live.emit("said", {"n": 1}, to="room-p")
    ev.get_received()
    position = ev.position
    assert position[0] == str(ws.broadcast().position().epoch) and set(position[1]) == {"room-p"}
    ev.close()
    live.emit("said", {"n": 2}, to="room-p")
    again = client.events("/live", resume=position)
    assert again.get_received() == [("hello", {"path": "/live"}), ("said", {"n": 2})]
    (resumed,) = [f for f in again.frames if isinstance(f, ep.ResumedFrame)]
    assert resumed.rooms["room-p"] >= position[1]["room-p"]
    live.emit("said", {"n": 3}, to="room-p")  # and live from there
    assert again.get_received() == [("said", {"n": 3})]
    stale = client.events("/live", resume=("1", {"room-p": 1}))
    notices = [f for f in stale.frames if isinstance(f, (ep.NotRecoveredFrame, ep.ResumedFrame))]
    assert [type(f).__name__ for f in notices] == ["NotRecoveredFrame", "ResumedFrame"]
    assert notices[0].room == "room-p" and notices[0].reason.startswith("epoch changed")
    again.close()
    stale.close()


def test_bad_frames_get_error_frames(client) -> None:
    ev = client.events("/live")
    ev.conn.send("not json")
    ev.conn.send(b"\x00")
    ev.sync()
    assert ev.errors == ['a frame is a JSON object with a string "type" (text frames only)'] * 2
    ev.close()


def test_sse_with_flasks_own_test_client(client) -> None:
    """Flask's test_client streams the SSE endpoint from the in-process broadcast (503 before)."""
    response = app.test_client().get("/live/sse?rooms=room-s", buffered=False)
    assert response.status_code == 200
    chunks = iter(response.response)
    assert next(chunks).startswith(b": uwsgi_ws event stream")
    live.emit("said", {"n": "sse"}, to="room-s")
    event = next(chunks).decode()
    assert "event: said\n" in event and '"n":"sse"' in event and event.startswith("id: ")
    response.close()
