"""Flask-SocketIO's documented API on uwsgi_ws, across 2 uWSGI workers (issue 14).

tests/apps/socketio_api_app.py uses connect with `auth` and
ConnectionRefusedError, disconnect, message/json/custom events and acks,
namespaces (decorators and a Namespace class), emit/send with to/room,
include_self, skip_sid, broadcast, server-side callbacks, socketio.emit and
socketio.call from plain routes, join_room/leave_room/close_room/rooms for
itself and for a client of another worker, disconnect() of itself and of
another worker's client, and cors_allowed_origins. Clients: socket.io-client
v4 from Node; HTTP with urllib; threads and gevent.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from typing import Any, Dict, List, Optional, Tuple

import pytest
import websocket
from test_socketio import BROADCAST, NodeClients, crowd, worker_of

APP = "socketio_api_app:app"
MODELS = ["threads", "gevent"]
EXTRA = BROADCAST


def post(server, path: str, body: Any = None, headers: Optional[Dict[str, str]] = None, timeout: float = 15) -> Tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
    request = urllib.request.Request(server.http + path, data=data or b"", method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def get(server, path: str, headers: Optional[Dict[str, str]] = None) -> Tuple[int, bytes]:
    request = urllib.request.Request(server.http + path, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=15) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def events(group: NodeClients, i: int, name: str) -> List[Dict[str, Any]]:
    return group.matching(lambda e: e["i"] == i and e["type"] == "event" and e["event"] == name)


def wait_event(group: NodeClients, i: int, name: str, pred=lambda args: True, count: int = 1,
               timeout: float = 15) -> List[Dict[str, Any]]:
    return group.wait(lambda e: e["i"] == i and e["type"] == "event" and e["event"] == name and pred(e["args"]),
                      count, timeout, f"{count} {name!r} at client {i}")


def wait_ack(group: NodeClients, i: int, tag: str) -> List[Any]:
    return group.wait(lambda e: e["i"] == i and e["type"] == "ack" and e["tag"] == tag, 1, 15, f"ack {tag}")[0]["args"]


def test_connect_auth_and_refusals(server):
    ok = NodeClients(server.http, 1, "default", auth={"token": "ok"})
    refused = NodeClients(server.http, 1, "default", auth={"token": "refuse"})
    false = NodeClients(server.http, 1, "websocket", auth={"token": "false"})
    try:
        (line,) = ok.connected()
        welcome = wait_event(ok, 0, "welcome")[0]["args"][0]
        assert welcome["auth"] == {"token": "ok"} and welcome["sid"] == line["id"]
        error = refused.wait(lambda e: e["type"] == "connect_error", 1, 15, "connect_error")[0]
        assert error["message"] == "bad token", error
        error = false.wait(lambda e: e["type"] == "connect_error", 1, 15, "connect_error")[0]
        assert error["message"] == "Connection rejected by server", error
    finally:
        for group in (ok, refused, false):
            group.close()


@pytest.mark.parametrize("mode", ["default", "websocket"])
def test_message_json_acks_and_namespaces(server, mode):
    main = NodeClients(server.http, 1, mode)
    chat = NodeClients(server.http, 1, mode, path="/chat")
    other = NodeClients(server.http, 1, mode, path="/other")
    try:
        main.connected(), chat.connected(), other.connected()
        main.emit(0, "message", "hi")  # send(..., json=True) answers with the event "json"
        assert wait_event(main, 0, "json")[0]["args"] == [{"echo": "hi"}]
        main.emit(0, "json", {"a": [1, 2]})
        wait_event(main, 0, "json", lambda a: a == [{"a": [1, 2]}])
        main.emit(0, "add", 2, 3, ack="sum")
        assert wait_ack(main, 0, "sum") == [5]
        welcome = wait_event(chat, 0, "chat welcome")[0]["args"][0]
        assert welcome["namespace"] == "/chat"
        chat.emit(0, "say", {"x": 1})
        wait_event(chat, 0, "said", lambda a: a == [{"x": 1}])
        assert events(main, 0, "said") == []  # another namespace
        other.emit(0, "ping", "p")
        assert wait_event(other, 0, "pong")[0]["args"] == [{"data": "p", "namespace": "/other"}]
    finally:
        for group in (main, chat, other):
            group.close()


def test_rooms_across_workers(server):
    people = crowd(server.http, "websocket")
    try:
        (ga, ia, sida), *rest = people.each()
        gb, ib, sidb = next(m for m in rest if worker_of(m[2]) != worker_of(sida))
        outsiders = [m for m in people.each() if m[2] not in (sida, sidb)]
        room = "r-" + uuid.uuid4().hex[:6]
        ga.emit(ia, "join", {"room": room}, ack="ja")
        assert room in wait_ack(ga, ia, "ja")[0]
        gb.emit(ib, "join", {"room": room}, ack="jb")
        assert wait_ack(gb, ib, "jb")[0] == sorted(["everyone", room, sidb])

        def to_room(g: NodeClients, i: int, room: str, msg: str, **options: Any) -> None:
            """Emit `msg` to `room`, then (same handler) a marker to everyone; return when
            every client has the marker, so all that `msg` reaches has it too."""
            g.emit(i, "to room", {"room": room, "msg": msg, "then": f"end-{msg}", **options})
            for g2, i2, _ in people.each():
                wait_event(g2, i2, "room message", lambda a: a == [f"end-{msg}"])

        def got(g: NodeClients, i: int, msg: str) -> int:
            return len([e for e in events(g, i, "room message") if e["args"] == [msg]])

        to_room(ga, ia, room, "m1")
        assert got(ga, ia, "m1") == 1 and got(gb, ib, "m1") == 1
        assert all(got(g, i, "m1") == 0 for g, i, _ in outsiders)
        to_room(ga, ia, room, "m2", include_self=False)
        assert got(ga, ia, "m2") == 0 and got(gb, ib, "m2") == 1
        to_room(gb, ib, room, "m3", skip_me=True)
        assert got(ga, ia, "m3") == 1 and got(gb, ib, "m3") == 0
        # join and leave for a client of the other worker
        g2, i2, sid2 = outsiders[0] if outsiders else (gb, ib, sidb)
        other_room = "o-" + uuid.uuid4().hex[:6]
        helper = next((g, i, s) for g, i, s in people.each() if worker_of(s) != worker_of(sid2))
        helper[0].emit(helper[1], "join", {"room": other_room, "sid": sid2}, ack="jo")
        wait_ack(helper[0], helper[1], "jo")  # the enter_room request is in the ring before the ack
        to_room(helper[0], helper[1], other_room, "m4")
        assert got(g2, i2, "m4") == 1 and got(helper[0], helper[1], "m4") == 0
        helper[0].emit(helper[1], "leave", {"room": other_room, "sid": sid2}, ack="lo")
        wait_ack(helper[0], helper[1], "lo")
        to_room(helper[0], helper[1], other_room, "m5")
        assert got(g2, i2, "m5") == 0
        # close_room, from the other worker
        gb.emit(ib, "close", {"room": room}, ack="c")
        assert wait_ack(gb, ib, "c") == ["closed"]
        to_room(ga, ia, room, "m6")
        assert all(got(g, i, "m6") == 0 for g, i, _ in people.each())
    finally:
        people.close()


def test_server_callbacks_and_call_from_any_worker(server):
    people = crowd(server.http, "default")
    try:
        for g, i, sid in people.each():
            g.emit(i, "ask me")
            answer = wait_event(g, i, "answer")[0]["args"][0]
            assert answer == {"answer": {"acked": "question"}, "sid": sid}
        answered_by = set()
        for _ in range(30):  # the HTTP request lands on either worker: until both have answered
            if len(answered_by) == 2:
                break
            for _, _, sid in people.each():
                status, body = post(server, f"/call/{sid}")
                assert status == 200, body
                reply = json.loads(body)
                assert reply["answer"] == {"acked": "question"}
                answered_by.add(reply["pid"])
        assert len(answered_by) == 2, "every call landed on one worker: the cross-worker ack went untested"
    finally:
        people.close()


def test_emit_from_plain_routes_reaches_every_worker_in_order(server):
    people = crowd(server.http, "websocket")
    chat = NodeClients(server.http, 1, "websocket", path="/chat")
    try:
        chat.connected()
        status, _ = post(server, "/announce", {"data": "hello all"})
        assert status == 200
        post(server, "/announce", {"data": "hello chat", "namespace": "/chat"})
        wait_event(chat, 0, "announcement", lambda a: a == ["hello chat"])
        for g, i, _ in people.each():
            wait_event(g, i, "announcement", lambda a: a == ["hello all"])
        assert not events(chat, 0, "announcement")[1:]
        # two bursts from plain routes, in parallel on whichever workers: each in order, once,
        # and one interleaving for every client
        tags = ["x" + uuid.uuid4().hex[:5], "y" + uuid.uuid4().hex[:5]]
        import threading

        threads = [threading.Thread(target=post, args=(server, f"/burst/200?tag={tag}")) for tag in tags]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        orders = []
        for g, i, sid in people.each():
            for tag in tags:
                wait_event(g, i, "seq", lambda a, tag=tag: a[0]["tag"] == tag and a[0]["n"] == 199)
            got = [(e["args"][0]["tag"], e["args"][0]["n"]) for e in events(g, i, "seq")
                   if e["args"][0]["tag"] in tags]
            for tag in tags:
                assert [n for t, n in got if t == tag] == list(range(200)), sid
            orders.append(got)
        assert all(order == orders[0] for order in orders)
    finally:
        people.close()
        chat.close()


def test_disconnects_across_workers(server):
    people = crowd(server.http, "websocket")
    try:
        (ga, ia, sida), *rest = people.each()
        gb, ib, sidb = next(m for m in rest if worker_of(m[2]) != worker_of(sida))
        ga.emit(ia, "join", {"room": "watchers"}, ack="w")
        wait_ack(ga, ia, "w")
        ga.emit(ia, "kick", {"sid": sidb})  # disconnect() of a client of the other worker
        gb.wait(lambda e: e["i"] == ib and e["type"] == "disconnect", 1, 15, "the kicked client's disconnect")
        assert gb.matching(lambda e: e["i"] == ib and e["type"] == "disconnect")[0]["reason"] == "io server disconnect"
        wait_event(ga, ia, "left", lambda a: a == [{"sid": sidb}])  # the disconnect handler ran on its worker
        gc, ic, sidc = next(m for m in rest if m[2] != sidb)
        gc.emit(ic, "kick", {})  # disconnect() itself
        gc.wait(lambda e: e["i"] == ic and e["type"] == "disconnect", 1, 15, "disconnect()")
        wait_event(ga, ia, "left", lambda a: a == [{"sid": sidc}])
    finally:
        people.close()


def test_cors_allowed_origins_is_the_origin_policy(server):
    query = "/socket.io/?EIO=4&transport=polling"
    status, body = get(server, query, {"Origin": "http://evil.example"})
    # the polling handshake runs the WebSocket's access policy: the same 403 as the upgrade below
    assert status == 403 and b"origin" in body.lower(), (status, body)
    status, body = get(server, query, {"Origin": "http://allowed.example"})
    assert status == 200 and body.startswith(b"0{")
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(server.url + "/socket.io/?EIO=4&transport=websocket",
                                    origin="http://evil.example", timeout=5)
    assert refused.value.status_code == 403
    conn = websocket.create_connection(server.url + "/socket.io/?EIO=4&transport=websocket",
                                       origin="http://allowed.example", timeout=5)
    try:
        assert conn.recv().startswith("0{")  # Engine.IO's open packet
    finally:
        conn.close()


def test_bad_requests_get_clear_errors(server):
    status, body = get(server, "/socket.io/?EIO=3&transport=polling")
    assert status == 400 and b"unsupported version" in body
    status, body = get(server, "/socket.io/?EIO=4&transport=polling&sid=7.nosuchworker")
    assert status == 400 and b"Invalid session" in body
    for worker in (1, 2):  # a session id of each worker that does not exist there
        status, body = get(server, f"/socket.io/?EIO=4&transport=polling&sid={worker}.AAAAAAAAAAAAAAAAAAAA")
        assert status == 400 and b"Invalid session" in body
    status, body = get(server, "/socket.io/?EIO=4&transport=polling")
    sid = json.loads(body[1:])["sid"]
    # a garbage payload, on whichever worker: 400 saying why, the session ends (as engineio
    # ends one on a bad packet), the worker lives
    status, body = post(server, f"/socket.io/?EIO=4&transport=polling&sid={sid}", b"\xff\xfegarbage",
                        {"Content-Type": "text/plain"})
    assert status == 400 and b"not UTF-8" in body, (status, body)
    status, body = get(server, f"/socket.io/?EIO=4&transport=polling&sid={sid}")
    assert status == 400 and b"Invalid session" in body
    status, body = get(server, "/socket.io/?EIO=4&transport=polling")
    sid = json.loads(body[1:])["sid"]
    status, body = post(server, f"/socket.io/?EIO=4&transport=polling&sid={sid}", b"9nonsense\x1e4hi",
                        {"Content-Type": "text/plain"})
    assert status == 400 and b"packet type" in body, (status, body)
    assert not server.crashes(), server.log()
    people = crowd(server.http, "default")  # both workers still serve
    people.close()


def test_a_client_that_stops_reading_is_closed_not_buffered(server):
    """A Socket.IO client that stops reading while emits keep coming: once its session
    has more than max_queued_bytes (512 KiB in this app) waiting, it is closed (the
    disconnect handler runs, its WebSocket ends) instead of growing the worker's
    memory; the others go on."""
    watcher = NodeClients(server.http, 1, "websocket")
    try:
        watcher.connected()
        watcher.emit(0, "join", {"room": "watchers"}, ack="w")
        wait_ack(watcher, 0, "w")
        stalled = websocket.create_connection(server.url + "/socket.io/?EIO=4&transport=websocket", timeout=10,
                                              origin="http://allowed.example")
        assert stalled.recv().startswith("0{")
        stalled.send("40")
        opened = stalled.recv()
        while not opened.startswith("40"):
            opened = stalled.recv()
        sid = json.loads(opened[2:])["sid"]
        room = "slow-" + uuid.uuid4().hex[:6]
        stalled.send('421' + json.dumps(["join", {"room": room}]))  # with ack id 1
        while not stalled.recv().startswith("431"):
            pass
        # then it reads nothing more: about 8 MB to it, more than the kernel's socket
        # buffers (4 MB) and 512 KiB
        status, _ = post(server, f"/burst/8000?tag=slow&pad=1024&to={room}", timeout=60)
        assert status == 200
        wait_event(watcher, 0, "left", lambda a: a == [{"sid": sid}], timeout=30)
        status, _ = post(server, "/announce", {"data": "after"})
        wait_event(watcher, 0, "announcement", lambda a: a == ["after"])
        assert not watcher.matching(lambda e: e["type"] == "disconnect")
        stalled.close()
    finally:
        watcher.close()
    assert "closed as a slow consumer" in server.log()
    assert not server.crashes(), server.log()
