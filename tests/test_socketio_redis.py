"""Socket.IO emits across uWSGI instances through uwsgi_ws's Redis bridge (issue 14).

Two instances of the announcement example (tests/apps/socketio_announce_app.py, the
import line changed), each 2 workers and the broadcast mule, bridged to one real
redis-server (``--env UWSGI_WS_REDIS_URL=...``, the README's way; helpers of
tests/test_redis_bridge.py). The manager's messages are broadcasts like any other, so
the bridge carries them: a broadcast from a client of one instance reaches the
clients of both instances, each once. (Sessions stay within their instance: a load
balancer in front of several instances needs sticky sessions, as Flask-SocketIO's.)
"""

from __future__ import annotations

import uuid

import pytest
from test_redis_bridge import MODEL_ARGS, RedisServer
from test_socketio import NodeClients, wait_response

from harness import UWSGI


def start(tmp, model: str, redis_url: str, stream: str) -> UWSGI:
    args = ["--master", "--http-socket", "127.0.0.1:{port}", "--module", "socketio_announce_app:app",
            "--die-on-term", "--need-app", "--disable-logging", *MODEL_ARGS[model], "--sharedarea", "4096",
            "--mule=uwsgi_ws.mule:run", "--env", f"UWSGI_WS_REDIS_URL={redis_url}",
            "--env", f"UWSGI_WS_REDIS_STREAM={stream}", "--env", "SOCKETIO_BACKGROUND_PERIOD=0"]
    server = UWSGI(args, tmp)
    server.wait_for_log(r"redis bridge: connected for reading", timeout=20)
    server.wait_for_log(r"redis bridge: connected for pushing", timeout=20)
    return server


@pytest.mark.parametrize("model", ["threads", "gevent"])
def test_broadcast_reaches_the_clients_of_both_instances(model, tmp_path):
    redis = RedisServer(tmp_path)
    servers, groups = [], []
    try:
        stream = "sio-" + uuid.uuid4().hex[:8]
        servers = [start(tmp_path, model, redis.url, stream) for _ in range(2)]
        groups = [NodeClients(server.http, 3, "default") for server in servers]
        for group in groups:
            group.connected()
            for i in range(group.count):
                wait_response(group, i, "Connected")
        shout, marker = "shout-" + uuid.uuid4().hex[:6], "marker-" + uuid.uuid4().hex[:6]
        groups[0].emit(0, "my broadcast event", {"data": shout})
        wait_response(groups[1], 0, shout)
        groups[1].emit(0, "my broadcast event", {"data": marker})  # back the other way
        for group in groups:
            for i in range(group.count):
                wait_response(group, i, marker)
                got = [e for e in group.matching(lambda e: e["i"] == i and e["type"] == "event")
                       if e["args"][0].get("data") in (shout, marker)]
                assert [e["args"][0]["data"] for e in got] == [shout, marker], got
        for server in servers:
            assert not server.crashes(), server.log()
    finally:
        for group in groups:
            group.close()
        for server in servers:
            server.stop()
        redis.stop()
