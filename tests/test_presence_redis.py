"""Presence and targeting across instances through the Redis bridge: a real
redis-server (tests/test_redis_bridge.py's), two uWSGI instances of 2 workers
(one threads, one gevent) bridged to it. App: tests/apps/presence_app.py;
helpers: tests/test_presence.py.

Across instances presence follows the bridge (eventually consistent: the test
waits for it); a killed worker of the other instance leaves when its heartbeat
stops (UWSGI_WS_PRESENCE_HEARTBEAT=0.5 here: 3 heartbeats).
"""

from __future__ import annotations

import os
import signal
import uuid

import pytest
from test_presence import Client, http, ids, presence, start
from test_redis_bridge import RedisServer

from harness import wait_for


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("presence-redis")
    redis = RedisServer(tmp)
    stream = f"presence-{uuid.uuid4().hex[:8]}"
    env = ["--env", f"UWSGI_WS_REDIS_URL={redis.url}", "--env", f"UWSGI_WS_REDIS_STREAM={stream}",
           "--env", "UWSGI_WS_REDIS_RETRY_MAX=0.5", "--env", "UWSGI_WS_PRESENCE_HEARTBEAT=0.5"]
    servers = []
    try:
        for model in ("threads", "gevent"):
            (tmp / model).mkdir()
            server = start(tmp / model, model, env)
            server.wait_for_log(r"redis bridge: connected for reading", timeout=20)
            server.wait_for_log(r"redis bridge: connected for pushing", timeout=20)
            servers.append(server)
        yield servers
    finally:
        for server in servers:
            server.stop()
        redis.stop()
    for server in servers:  # the one SIGKILL is the test's own
        assert [c for c in server.crashes() if "killed by signal 9" not in c] == [], server.log()


def members(server, room, worker=0):
    return sorted(ids(presence(server, room, worker)))


def test_presence_and_targeting_across_instances(pair):
    a, b = pair
    ann = Client(a.worker_ports[0], "?user=ann&rooms=x")
    bob = Client(b.worker_ports[1], "?user=bob&rooms=x")
    carl = Client(b.worker_ports[0], "?user=carl&rooms=x")
    everyone = sorted([ann.id, bob.id, carl.id])
    try:
        for server in (a, b):
            for worker in (0, 1):
                wait_for(lambda s=server, w=worker: members(s, "x", w) == everyone, 10,
                         "every instance's members everywhere")
        # targeting from instance a reaches a connection of instance b, and skip holds there
        status, _ = http(a, f"/emit?event=direct&to={bob.id}", "POST", {"n": 1})
        assert status == 204
        assert bob.until(lambda m: m.get("event") == "direct")["data"] == {"n": 1}
        assert ann.call("say", {"room": "x", "text": "hi"})["data"] is True
        assert carl.until(lambda m: m.get("event") == "said")["skip"] == ann.id
        # a leave on b is seen on a
        bob.close()
        wait_for(lambda: members(a, "x", 1) == sorted([ann.id, carl.id]), 10, "bob gone on a")
        # a killed worker of b leaves a's presence once its heartbeat stops
        os.kill(int(carl.id.split("-")[0]), signal.SIGKILL)
        for worker in (0, 1):  # each worker's replica expires it by its own clock
            wait_for(lambda w=worker: members(a, "x", w) == [ann.id], 10, "carl expired on a")
            assert presence(a, "x", worker)["count"] == 1
        # disconnect from b closes ann on a
        status, _ = http(b, f"/disconnect/{ann.id}?code=4003&reason=elsewhere", "POST")
        assert status == 204
        wait_for(lambda: members(b, "x", 0) == [], 10, "ann gone on b")
    finally:
        for c in (ann, bob, carl):
            c.close()
