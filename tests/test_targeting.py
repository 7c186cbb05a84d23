"""Targeting from anywhere on real uWSGI (threads and gevent, 2 workers): emit to a
connection id, to a user, to a room skipping the sender; disconnect and close_room;
from the other worker's view, a threading.Thread, and the CLI through the publish
socket. App: tests/apps/presence_app.py; helpers: tests/test_presence.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import websocket
from test_presence import Client, http, ids, presence, start

from harness import ROOT, wait_for

MODELS = ["threads", "gevent"]


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"targeting-{request.param}")
    sock = tmp / "publish.sock"
    instance = start(tmp, request.param, ["--set-placeholder", f"uwsgi-ws-publish-socket={sock}",
                                          "--mule=tests/apps/presence_mule.py"])
    instance.wait_for_log("presence_mule: ready", timeout=20)
    instance.model = request.param  # type: ignore[attr-defined]
    instance.publish_socket = sock  # type: ignore[attr-defined]
    yield instance
    instance.stop()
    assert not instance.crashes(), instance.log()


def events_of(client: Client, name: str) -> list:
    return [m for m in client.drain() if m.get("type") == "event" and m.get("event") == name]


def cli(server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "uwsgi_ws", "emit", "--socket", str(server.publish_socket),
                           "--endpoint", "/live", *args], cwd=str(ROOT), capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("how", ["view", "thread", "cli", "mule"])
def test_emit_to_a_connection_id_from_the_other_worker(server, how):
    ann = Client(server.worker_ports[0], "?user=ann")
    bob = Client(server.worker_ports[1], "?user=bob")
    try:
        data = {"how": how, "n": 1}
        if how == "cli":
            done = cli(server, "--room", ann.id, "direct", json.dumps(data))
            assert done.returncode == 0, done.stderr
        elif how == "mule":
            status, _ = http(server, "/mule", "POST", {"emit": ["direct", data], "to": ann.id})
            assert status == 204
        else:  # from worker 2, where ann is not
            status, _ = http(server, f"/emit?event=direct&to={ann.id}" + ("&thread=1" if how == "thread" else ""),
                             "POST", data, port=server.worker_ports[1])
            assert status == 204
        got = ann.until(lambda m: m.get("event") == "direct")
        assert got == {"type": "event", "event": "direct", "data": data, "room": None}
        assert events_of(ann, "direct") == [] and events_of(bob, "direct") == []
    finally:
        ann.close()
        bob.close()


def test_emit_to_a_user_reaches_each_of_its_connections(server):
    ann1 = Client(server.worker_ports[0], "?user=ann")
    ann2 = Client(server.worker_ports[1], "?user=ann")
    bob = Client(server.worker_ports[1], "?user=bob")
    try:
        status, _ = http(server, "/emit?event=dm&to_user=ann&thread=1", "POST", {"x": 1}, port=server.worker_ports[1])
        assert status == 204
        for c in (ann1, ann2):
            assert c.until(lambda m: m.get("event") == "dm")["data"] == {"x": 1}
        done = cli(server, "--user", "ann", "dm", '{"x": 2}')
        assert done.returncode == 0, done.stderr
        for c in (ann1, ann2):
            assert c.until(lambda m: m.get("event") == "dm")["data"] == {"x": 2}
        assert events_of(bob, "dm") == [] and events_of(ann1, "dm") == [] and events_of(ann2, "dm") == []
    finally:
        for c in (ann1, ann2, bob):
            c.close()


def test_skip_names_the_sender_and_only_the_sender(server):
    ann = Client(server.worker_ports[0], "?user=ann&rooms=t1")
    bob = Client(server.worker_ports[1], "?user=bob&rooms=t1")
    try:
        assert ann.call("say", {"room": "t1", "text": "hi"})["data"] is True
        to_bob = bob.until(lambda m: m.get("event") == "said")
        assert to_bob["data"] == "hi" and to_bob["skip"] == ann.id and to_bob["room"] == "t1"
        # ann gets the broadcast frame too, naming her in skip: the protocol's clients drop it
        to_ann = ann.until(lambda m: m.get("event") == "said")
        assert to_ann["skip"] == ann.id and to_ann["seq"] == to_bob["seq"]
        done = cli(server, "--room", "t1", "--skip", bob.id, "said", '"cli"')
        assert done.returncode == 0, done.stderr
        assert bob.until(lambda m: m.get("data") == "cli")["skip"] == bob.id
    finally:
        ann.close()
        bob.close()


def test_disconnect_from_the_other_worker_and_the_cli(server):
    ann = Client(server.worker_ports[0], "?user=ann&rooms=t2")
    bob = Client(server.worker_ports[0], "?user=bob&rooms=t2")
    try:
        status, _ = http(server, f"/disconnect/{ann.id}?code=4001&reason=bye", "POST", port=server.worker_ports[1])
        assert status == 204
        wait_for(lambda: ids(presence(server, "t2", 1)) == [bob.id], 10, "ann gone from t2")
        done = subprocess.run([sys.executable, "-c",
                               "import sys; from uwsgi_ws.client import Publisher;"
                               f"Publisher({str(server.publish_socket)!r}).disconnect('/live', {bob.id!r}, 4002, 'x')"],
                              cwd=str(ROOT), capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        wait_for(lambda: presence(server, "t2", 0)["count"] == 0, 10, "bob gone from t2")
    finally:
        ann.close()
        bob.close()


@pytest.mark.parametrize("how", ["view", "mule"])
def test_disconnect_sends_the_code_and_reason(server, how):
    ann = Client(server.worker_ports[0], "?user=ann")
    try:
        if how == "mule":
            assert http(server, "/mule", "POST", {"disconnect": ann.id, "code": 4001, "reason": "bye"})[0] == 204
        else:
            http(server, f"/disconnect/{ann.id}?code=4001&reason=bye", "POST", port=server.worker_ports[1])
        opcode, payload = ann.ws.recv_data(control_frame=True)
        while opcode != websocket.ABNF.OPCODE_CLOSE:
            opcode, payload = ann.ws.recv_data(control_frame=True)
        assert payload[:2] == (4001).to_bytes(2, "big") and payload[2:] == b"bye"
    finally:
        ann.close()


def test_close_room_everywhere(server):
    ann = Client(server.worker_ports[0], "?user=ann&rooms=t3,t4")
    bob = Client(server.worker_ports[1], "?user=bob&rooms=t3")
    try:
        assert presence(server, "t3", 0)["count"] == 2
        status, _ = http(server, "/close_room/t3", "POST", port=server.worker_ports[1])
        assert status == 204
        for c in (ann, bob):
            assert c.until(lambda m: m["type"] == "left") == {"type": "left", "room": "t3"}
        assert [presence(server, "t3", w)["count"] for w in (0, 1)] == [0, 0]
        assert ids(presence(server, "t4", 1)) == [ann.id]
        http(server, "/emit?event=after&to=t3", "POST", 1)
        assert events_of(ann, "after") == [] and events_of(bob, "after") == []
    finally:
        ann.close()
        bob.close()


def test_bad_targets_get_clear_errors(server):
    from uwsgi_ws.client import Publisher

    with Publisher(str(server.publish_socket)) as pub:
        with pytest.raises(ValueError, match="connection id"):
            pub.disconnect("/live", "lobby")
        with pytest.raises(ValueError, match="3000-4999"):
            pub.disconnect("/live", "12-3", code=1006)
        with pytest.raises(ValueError, match="to= or to_user="):
            pub.emit("/live", "x", 1, to="a", to_user="b")
        with pytest.raises(ValueError, match="connection ids"):
            pub.close_room("/live", "12-3")
        assert pub.emit("/live", "x", 1, to="12-3") > 0  # nobody there: published, delivered to no one
    done = cli(server, "--user", "ann", "--room", "r", "x", "1")
    assert done.returncode != 0 and "to= or to_user=" in done.stderr
