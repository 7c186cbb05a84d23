"""Server → client calls (`conn.call`), the JSON encoder option and binary values on
real uWSGI (threads and gevent, 2 workers). App: tests/apps/presence_app.py;
helpers: tests/test_presence.py.
"""

from __future__ import annotations

import base64

import pytest
from test_presence import Client, http, start

MODELS = ["threads", "gevent"]


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    instance = start(tmp_path_factory.mktemp(f"calls-{request.param}"), request.param)
    instance.model = request.param  # type: ignore[attr-defined]
    yield instance
    instance.stop()
    assert not instance.crashes(), instance.log()


def test_call_from_a_handler_round_trips(server):
    c = Client(server.port, answers={"question": {"answer": 42}})
    try:
        ack = c.call("ask", {"event": "question", "data": {"q": "life"}, "timeout": 5})
        assert ack["data"] == {"reply": {"answer": 42}}
        call = [m for m in c.kept if m["type"] == "call"]
        assert call == [{"type": "call", "id": 1, "event": "question", "data": {"q": "life"}}]
    finally:
        c.close()


def test_call_times_out_and_a_late_reply_is_dropped(server):
    c = Client(server.port, answers={"silent": None})
    try:
        ack = c.call("ask", {"event": "silent", "timeout": 0.3})
        assert ack["data"] == {"timeout": True}
        (call,) = [m for m in c.kept if m["type"] == "call"]
        c.kept.clear()
        c.send({"type": "reply", "id": call["id"], "data": "too late"})  # nobody waits: ignored
        assert c.call("whoami")["data"]["id"] == c.id
        assert [m for m in c.kept if m["type"] == "error"] == []
    finally:
        c.close()


def test_call_error_reply_raises_event_error(server):
    c = Client(server.port, answers={"boom": RuntimeError("nope")})
    try:
        ack = c.call("ask", {"event": "boom", "timeout": 5})
        assert ack["data"] == {"error": "nope", "kind": "EventError"}
    finally:
        c.close()


def test_frames_sent_during_a_call_are_handled_after_it(server):
    """The client sends another event before replying: it is answered after the call's handler."""
    c = Client(server.port)
    try:
        c.send({"type": "event", "event": "ask", "data": {"event": "q2", "timeout": 5}, "id": "outer"})
        call = c.until(lambda m: m["type"] == "call")
        c.send({"type": "event", "event": "whoami", "id": "inner"})
        c.send({"type": "reply", "id": call["id"], "data": "late but in time"})
        first = c.until(lambda m: m["type"] == "ack")
        second = c.until(lambda m: m["type"] == "ack")
        assert (first["id"], first["data"]) == ("outer", {"reply": "late but in time"})
        assert second["id"] == "inner" and second["data"]["id"] == c.id
    finally:
        c.close()


def test_call_from_a_view(server):
    c = Client(server.worker_ports[0], answers={"question": "from a view"})
    try:
        import threading
        result = {}
        t = threading.Thread(target=lambda: result.update(r=http(server, f"/call/{c.id}",
                                                                 port=server.worker_ports[0])))
        t.start()
        c.until(lambda m: m["type"] == "call")  # answered by next()
        t.join(15)
        assert result["r"] == (200, {"reply": "from a view"})
    finally:
        c.close()


def test_rich_encoder_and_binary_values(server):
    c = Client(server.port)
    try:
        data = c.call("rich")["data"]
        assert data == {"when": "2026-12-01T02:30:00", "uuid": "00000000-0000-0000-0000-000000000007",
                        "point": {"x": 1, "y": 2}, "blob": {"$bin": base64.b64encode(b"\x00\xffbin").decode()}}
        # binary from the client: decoded to bytes before the handler, encoded again in the ack
        c.send({"type": "event", "event": "ask", "id": "b",
                "data": {"event": "echo", "data": {"$bin": "AAEC"}, "timeout": 0.2}})
        call = c.until(lambda m: m["type"] == "call")
        assert call["data"] == {"$bin": "AAEC"}
    finally:
        c.close()
