"""Resume on any instance (issue 16 item 2), on real processes.

A real redis-server (as tests/test_redis_bridge.py starts it) and three uWSGI
instances of 2 workers each (threads, gevent, threads) bridged to it, serving
tests/apps/resume_app.py. With the bridge, Redis numbers every event broadcast
(uwsgi_ws/broadcast/redis.py, "Global positions"): the same message has the
same (epoch, seq) on every instance, so a client's position is valid on any of
them. A client is moved between instances mid-stream while all three publish;
it must end with every message once, in the stream's order.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest
import redis as redis_client
import websocket
from test_redis_bridge import MODEL_ARGS, RedisServer

from harness import UWSGI

APP = "resume_app:app"


def start_instance(tmp, model, redis_url, stream, extra=(), sharedarea="4096", maxlen=100000) -> UWSGI:
    args = ["--master", "--http-socket", "127.0.0.1:{port}", "--module", APP, "--die-on-term", "--need-app",
            "--disable-logging", *MODEL_ARGS[model], "--sharedarea", sharedarea, "--mule=uwsgi_ws.mule:run",
            "--env", f"UWSGI_WS_REDIS_URL={redis_url}", "--env", f"UWSGI_WS_REDIS_STREAM={stream}",
            "--env", "UWSGI_WS_REDIS_RETRY_MAX=0.5", "--env", f"UWSGI_WS_REDIS_MAXLEN={maxlen}", *extra]
    server = UWSGI(args, tmp)
    server.model = model  # type: ignore[attr-defined]
    server.wait_for_log(r"uwsgi_ws: broadcast mule 1 serving ring", timeout=20)
    server.wait_for_log(r"redis bridge: connected for reading", timeout=20)
    server.wait_for_log(r"redis bridge: connected for pushing", timeout=20)
    return server


def get(server, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=30) as resp:
        return json.loads(resp.read())


def emit_many(server, room, n, src, interval=0.0):
    url = f"http://127.0.0.1:{server.port}/emit-many/{room}?n={n}&src={src}&interval={interval}"
    req = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Client:
    """An event-protocol connection to one instance; `events` the room's broadcasts in order."""

    def __init__(self, server, query=""):
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/live{query}", timeout=20)
        self.kept: list = []

    def send(self, frame):
        self.ws.send(json.dumps(frame))

    def next(self):
        return json.loads(self.ws.recv())

    def until(self, match):
        while True:
            m = self.next()
            if match(m):
                return m
            self.kept.append(m)

    def close(self):
        self.ws.close()


def stream_order(url, stream, room):
    """(epoch, [global seqs of the room's event broadcasts in stream order], [(src, i)])."""
    r = redis_client.Redis.from_url(url)
    try:
        seqs, items, epochs = [], [], set()
        for _id, fields in r.xrange(stream):
            if b"g" not in fields:
                continue
            message = json.loads(fields[b"d"])
            if message.get("room") != room:
                continue
            seqs.append(int(fields[b"g"]))
            epochs.add(fields[b"e"].decode())
            items.append((message["data"]["src"], message["data"]["i"]))
        return epochs, seqs, items
    finally:
        r.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume-instances")
    redis = RedisServer(tmp)
    stream = f"test:{uuid.uuid4().hex[:8]}"
    instances: list = []
    try:
        for model in ("threads", "gevent", "threads"):
            instances.append(start_instance(tmp, model, redis.url, stream))
        yield redis, stream, instances
    finally:
        for server in instances:
            server.stop()
        redis.stop()
    for server in instances:
        log = server.log()
        assert not server.crashes(), log
        assert "Traceback" not in log, log


def test_epoch_and_positions_are_the_same_on_every_instance(cluster):
    redis, stream, instances = cluster
    status, body = emit_many(instances[1], "sync", 3, "s")
    assert status == 200, body
    epochs = {get(s, "/position")["epoch"] for s in instances}
    assert len(epochs) == 1 and epochs != {"0"}, epochs
    stored = redis_client.Redis.from_url(redis.url).get(f"{stream}:epoch").decode()
    assert epochs == {stored}
    # each instance delivers the same message with the same seq and epoch
    clients = [Client(s) for s in instances]
    for c in clients:
        c.until(lambda m: m.get("event") == "hello")
        c.send({"type": "join", "room": "same"})
    # a join is effective once the server read it: an echo after it proves it was read
    for c in clients:
        c.send({"type": "event", "event": "echo", "data": 1, "id": 1})
        c.until(lambda m: m.get("type") == "ack")
    status, body = emit_many(instances[0], "same", 5, "a")
    assert status == 200, body
    got = []
    for c in clients:
        got.append([(m["seq"], m["epoch"], m["data"]["i"]) for m in
                    (c.until(lambda m: m.get("event") == "n") for _ in range(5))])
        c.close()
    assert got[0] == got[1] == got[2], got
    assert [g[2] for g in got[0]] == list(range(5))
    assert {g[1] for g in got[0]} == epochs


def test_client_moved_between_instances_mid_stream_loses_and_repeats_nothing(cluster):
    redis, stream, instances = cluster
    room = "moving"
    n = 150
    c = Client(instances[0])
    c.until(lambda m: m.get("event") == "hello")
    c.send({"type": "join", "room": room})
    c.send({"type": "event", "event": "echo", "data": 1, "id": 1})
    c.until(lambda m: m.get("type") == "ack")
    results: dict = {}

    def publish(i, server):
        results[i] = emit_many(server, room, n, "abc"[i], interval=0.01)

    publishers = [threading.Thread(target=publish, args=(i, s), daemon=True) for i, s in enumerate(instances)]
    for t in publishers:
        t.start()
    received: list = []
    epoch = None
    hops = 0
    total = 3 * n
    deadline = time.monotonic() + 120
    while len(received) < total:
        assert time.monotonic() < deadline, f"{len(received)} of {total} received"
        m = c.next()
        if m.get("type") != "event" or m.get("event") != "n":
            assert m.get("type") not in ("not_recovered", "error"), m
            continue
        received.append(m)
        epoch = m["epoch"]
        # every 60 messages, move to the next instance with the position
        if len(received) % 60 == 0 and len(received) < total:
            c.close()
            hops += 1
            c = Client(instances[hops % 3], "?resume=1")
            c.send({"type": "resume", "epoch": epoch, "rooms": {room: received[-1]["seq"]}})
            resumed = c.until(lambda m: m.get("type") in ("resumed", "not_recovered"))
            assert resumed["type"] == "resumed", resumed
            assert resumed["rooms"][room] >= received[-1]["seq"]
            received.extend(m for m in c.kept if m.get("type") == "event" and m.get("event") == "n")
            c.kept.clear()
    c.close()
    for t in publishers:
        t.join(60)
    assert all(results[i][0] == 200 for i in range(3)), results
    assert hops >= 6
    epochs, seqs, items = stream_order(redis.url, stream, room)
    assert epochs == {epoch}
    got_seqs = [m["seq"] for m in received]
    got_items = [(m["data"]["src"], m["data"]["i"]) for m in received]
    dups = [(x, [m["seq"] for m in received if (m["data"]["src"], m["data"]["i"]) == x])
            for x in set(got_items) if got_items.count(x) > 1]
    assert not dups, f"duplicates: {dups}"
    assert sorted(got_items) == sorted((s, i) for s in "abc" for i in range(n)), "missing"
    assert got_seqs == seqs and got_items == items  # the stream's order, on every instance


def resume(server, epoch, room, seq):
    """(the answer frame, the room's broadcasts replayed before it) of a resume at `server`."""
    r = Client(server, "?resume=1")
    try:
        r.send({"type": "resume", "epoch": epoch, "rooms": {room: seq}})
        answer = r.until(lambda m: m.get("type") in ("resumed", "not_recovered"))
        if answer["type"] == "not_recovered":
            r.until(lambda m: m.get("type") == "resumed")
        return answer, [m for m in r.kept if m.get("event") == "n"]
    finally:
        r.close()


def wait_position(server, seq, timeout=30):
    deadline = time.monotonic() + timeout
    while get(server, "/position")["seq"] < seq:
        assert time.monotonic() < deadline, get(server, "/position")
        time.sleep(0.05)


def test_a_position_redis_trimmed_is_not_recovered_with_the_reason(tmp_path):
    """A position from before an instance started is read back from Redis's stream
    there. An instance whose mule was frozen while the stream was trimmed past what
    it had read (MAXLEN 50): a position before the gap is `not_recovered` with reason
    `trimmed` there; after the gap it resumes; the instance that read everything
    resumes the old position in full; a fresh instance resumes what the stream still
    has and says `trimmed` for the rest."""
    redis = RedisServer(tmp_path)
    stream = f"test:{uuid.uuid4().hex[:8]}"
    servers: list = []
    try:
        first = start_instance(tmp_path, "threads", redis.url, stream, maxlen=50)
        servers.append(first)
        c = Client(first)
        c.until(lambda m: m.get("event") == "hello")
        c.send({"type": "join", "room": "t"})
        c.send({"type": "event", "event": "echo", "data": 1, "id": 1})
        c.until(lambda m: m.get("type") == "ack")
        assert emit_many(first, "t", 3, "a")[0] == 200
        early = [c.until(lambda m: m.get("event") == "n") for _ in range(3)][-1]
        c.close()
        second = start_instance(tmp_path, "gevent", redis.url, stream, maxlen=50)
        servers.append(second)
        # its position is where the second instance started: nothing missed
        answer, replay = resume(second, early["epoch"], "t", early["seq"])
        assert answer["type"] == "resumed" and replay == [], (answer, replay)
        # one before: that message is older than the instance, read back from Redis's stream
        answer, replay = resume(second, early["epoch"], "t", early["seq"] - 2)
        assert answer["type"] == "resumed", answer
        assert [(m["data"]["src"], m["data"]["i"], m["seq"]) for m in replay] == [("a", 1, 2), ("a", 2, 3)]
        assert emit_many(first, "t", 5, "w")[0] == 200
        wait_position(second, get(first, "/position")["seq"])
        before = get(first, "/position")["seq"]  # the second instance has everything up to here
        mule = int(re.findall(r"spawned uWSGI mule 1 \(pid: (\d+)", second.log())[-1])
        os.kill(mule, signal.SIGSTOP)
        try:
            status, body = emit_many(first, "t", 1000, "b")
            assert status == 200, body
        finally:
            os.kill(mule, signal.SIGCONT)
        top = get(first, "/position")["seq"]
        wait_position(second, top)
        stats = get(second, "/position")["bridge"]
        assert stats["g_trimmed"] == 1 and 0 < stats["g_missed"] < 1000 - 50, stats
        answer, replay = resume(second, early["epoch"], "t", before)
        assert answer["type"] == "not_recovered" and answer["reason"].startswith("trimmed"), answer
        assert str(stats["g_floor"] + 1) in answer["reason"]
        after_gap = top - 10
        assert after_gap > stats["g_floor"]
        answer, replay = resume(second, early["epoch"], "t", after_gap)
        assert answer["type"] == "resumed", answer
        assert [m["data"]["i"] for m in replay] == list(range(990, 1000))
        answer, replay = resume(first, early["epoch"], "t", early["seq"])
        assert answer["type"] == "resumed", answer
        assert [(m["data"]["src"], m["data"]["i"]) for m in replay] == (
            [("w", i) for i in range(5)] + [("b", i) for i in range(1000)])
        # a third instance, started now: what Redis still has comes from the stream, then live
        third = start_instance(tmp_path, "threads", redis.url, stream, maxlen=50)
        servers.append(third)
        answer, replay = resume(third, early["epoch"], "t", top - 30)
        assert answer["type"] == "resumed", answer
        assert [m["data"]["i"] for m in replay] == list(range(970, 1000))
        assert [m["seq"] for m in replay] == list(range(top - 29, top + 1))
        # and what it does not: trimmed
        answer, replay = resume(third, early["epoch"], "t", before)
        assert answer["type"] == "not_recovered" and answer["reason"].startswith("trimmed"), answer
    finally:
        for server in servers:
            server.stop()
        redis.stop()
    for server in servers:
        assert "Traceback" not in server.log(), server.log()


def test_event_publishes_fail_while_redis_is_down(tmp_path):
    redis = RedisServer(tmp_path)
    stream = f"test:{uuid.uuid4().hex[:8]}"
    server = None
    try:
        server = start_instance(tmp_path, "gevent", redis.url, stream)
        assert emit_many(server, "d", 2, "a")[0] == 200
        redis.kill()
        status, body = emit_many(server, "d", 1, "b")
        assert status == 503 and "Redis" in body, (status, body)
        redis.start()
        deadline = time.monotonic() + 30
        while emit_many(server, "d", 1, "c")[0] != 200:
            assert time.monotonic() < deadline, "event publishes did not come back with Redis"
            time.sleep(0.2)
    finally:
        if server is not None:
            server.stop()
        redis.stop()


def test_mule_killed_mid_stream_numbers_each_event_once(cluster):
    """kill -9 the broadcast mule of an instance while it publishes events: a publisher
    sends its request again to the respawned mule, and Redis, which remembers each
    publisher's last request, answers it with the seq it had: no event is numbered
    (or delivered) twice, none is lost, and a client elsewhere gets them in order."""
    redis, stream, instances = cluster
    a, b = instances[0], instances[1]
    room = "killed"
    c = Client(b)
    c.until(lambda m: m.get("event") == "hello")
    c.send({"type": "join", "room": room})
    c.send({"type": "event", "event": "echo", "data": 1, "id": 1})
    c.until(lambda m: m.get("type") == "ack")
    n = 600
    result: dict = {}
    publisher = threading.Thread(target=lambda: result.update(r=emit_many(a, room, n, "k", interval=0.005)),
                                 daemon=True)
    publisher.start()
    got = []
    while len(got) < 150:
        m = c.next()
        if m.get("event") == "n":
            got.append(m)
    before = a.log().count("broadcast mule 1 serving ring")
    mule = int(re.findall(r"spawned uWSGI mule 1 \(pid: (\d+)", a.log())[-1])
    os.kill(mule, signal.SIGKILL)
    a.wait_for_log(r"broadcast mule 1 serving ring", count=before + 1, timeout=30)
    publisher.join(120)
    assert result["r"][0] == 200, result
    while len(got) < n:
        m = c.next()
        if m.get("event") == "n":
            got.append(m)
    c.close()
    assert [m["data"]["i"] for m in got] == list(range(n))
    _epochs, seqs, items = stream_order(redis.url, stream, room)
    assert items == [("k", i) for i in range(n)], "the stream holds an event twice (or lost one)"
    assert [m["seq"] for m in got] == seqs


def test_numbering_script_is_atomic_and_idempotent_per_publisher(tmp_path):
    """GLOBAL_PUBLISH on a real redis-server: numbers follow stream order, the epoch is
    made once, a request sent again (same publisher, same number) gets its seq back
    without a second entry, and add_event (programs outside the instances) numbers alike."""
    from uwsgi_ws.broadcast.redis import GLOBAL_PUBLISH, add_event, event_position

    redis = RedisServer(tmp_path)
    try:
        r = redis_client.Redis.from_url(redis.url)
        script = r.register_script(GLOBAL_PUBLISH)
        keys = ("s", "s:seq", "s:epoch")

        def publish(i, publisher=None, number=""):
            return script(keys=(*keys, publisher or "s:seq"), args=[
                1000, "o", "events:/live:r", 0, b'{"type":"event","event":"n","data":%d,"room":"r"' % i, "77",
                str(number)])

        assert publish(0) == [1, b"77"]
        assert publish(1, "s:pub:1", 5) == [2, b"77"]
        assert publish(1, "s:pub:1", 5) == [2, b"77"]  # the same request again: its seq, no new entry
        assert publish(2, "s:pub:1", 6) == [3, b"77"]
        assert add_event(r, "s", 1000, "ext", "events:/live:r", 0, b'{"type":"event","event":"n","data":3}') == 4
        entries = r.xrange("s")
        assert [int(f[b"g"]) for _id, f in entries] == [1, 2, 3, 4]
        assert [event_position(f[b"d"]) for _id, f in entries] == [(g, 77) for g in (1, 2, 3, 4)]
        assert json.loads(entries[1][1][b"d"]) == {"type": "event", "event": "n", "data": 1, "room": "r",
                                                   "seq": 2, "epoch": "77"}
        r.close()
    finally:
        redis.stop()


def test_sse_resumes_on_another_instance_with_last_event_id(cluster):
    """The SSE fallback: ids are the shared numbering (epoch-seq), so Last-Event-ID
    seen on one instance resumes on another."""
    from test_events import SSE

    _redis, _stream, instances = cluster
    a, b = instances[0], instances[2]
    s = SSE(a.port, "/live/sse?rooms=sse")
    assert emit_many(b, "sse", 1, "f")[0] == 200
    first = s.event()
    data = json.loads(first["data"])
    assert first["id"] == f"{data['epoch']}-{data['seq']}" and data["data"] == {"src": "f", "i": 0}
    s.close()
    assert emit_many(a, "sse", 5, "g")[0] == 200
    s2 = SSE(b.port, "/live/sse?rooms=sse", last_id=first["id"])
    events = [s2.event() for _ in range(5)]
    s2.close()
    replay = [json.loads(e["data"]) for e in events]
    assert [e["id"] for e in events] == [f"{m['epoch']}-{m['seq']}" for m in replay]
    assert [m["data"] for m in replay] == [{"src": "g", "i": i} for i in range(5)]
    assert [m["seq"] for m in replay] == sorted(m["seq"] for m in replay) and replay[0]["seq"] > data["seq"]


@pytest.mark.parametrize("model", ["threads", "gevent"])
def test_resume_across_a_reload_without_a_ring_file_comes_from_redis(model, tmp_path):
    """With the bridge the numbering is Redis's: after `uwsgi --reload` (the sharedarea
    ring starts empty) a client resumes at once, with the same epoch, what it missed
    before the reload read back from the stream, then what came after."""
    from test_resume_reload import reload_and_wait

    redis = RedisServer(tmp_path)
    stream = f"test:{uuid.uuid4().hex[:8]}"
    server = None
    try:
        server = start_instance(tmp_path, model, redis.url, stream, extra=["--worker-reload-mercy", "30"])
        c = Client(server)
        c.until(lambda m: m.get("event") == "hello")
        c.send({"type": "join", "room": "z"})
        c.send({"type": "event", "event": "echo", "data": 1, "id": 1})
        c.until(lambda m: m.get("type") == "ack")
        assert emit_many(server, "z", 10, "a")[0] == 200
        got = [c.until(lambda m: m.get("event") == "n") for _ in range(10)]
        c.close()
        seen = got[4]  # the client had only seen a0..a4 when it lost the connection
        reload_and_wait(server, "sighup", None)
        status, body = emit_many(server, "z", 5, "b")
        assert status == 200, body
        answer, replay = resume(server, seen["epoch"], "z", seen["seq"])
        assert answer["type"] == "resumed" and answer["epoch"] == seen["epoch"], answer
        assert [(m["data"]["src"], m["data"]["i"]) for m in replay] == (
            [("a", i) for i in range(5, 10)] + [("b", i) for i in range(5)])
        seqs = [m["seq"] for m in replay]
        assert seqs == sorted(set(seqs)) and seqs[0] == seen["seq"] + 1
    finally:
        if server is not None:
            server.stop()
        redis.stop()
    assert not server.crashes(), server.log()
    # a worker that stops after the mule (a reload) publishes its leave messages briefly, no traceback
    assert not server.unexpected_tracebacks([]), server.log()
