"""`Publisher(redis_url=..., stream=...)` reaches every instance bridged through that
Redis Stream (issue 13 item 4), events included: a real redis-server and two uWSGI
instances (threads and gevent) of tests/apps/publish_app.py, bridged as the README
says; every process stopped by pid.
"""

from __future__ import annotations

import uuid

import pytest
from test_publish_threads import sse_events, subscriber
from test_redis_bridge import RedisServer

from harness import UWSGI, serve


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


def bridged(tmp, model: str, url: str, stream: str) -> UWSGI:
    server = serve("publish_app:app", tmp, model=model,
                   extra=["--sharedarea", "4096", "--mule=uwsgi_ws.mule:run",
                          "--set-placeholder", f"uwsgi-ws-redis-url={url}",
                          "--set-placeholder", f"uwsgi-ws-redis-stream={stream}"])
    server.wait_for_log(r"redis bridge: connected for reading", timeout=30)
    return server


@pytest.mark.parametrize("model", ["threads", "gevent"])
def test_redis_publisher_reaches_every_bridged_instance(model, redis_server, tmp_path):
    from uwsgi_ws.client import Publisher, PublishError

    stream = f"test:{uuid.uuid4().hex}"
    instances = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        instances.append(bridged(tmp_path / name, model, redis_server.url, stream))
    clients, readers = [], []
    try:
        for server in instances:
            clients.append(subscriber(server))
            readers.append(sse_events(server, "r1", 2))
        with Publisher(redis_url=redis_server.url, stream=stream) as pub:
            assert pub.publish("to all") == 1
            assert pub.publish(b"\x00bin") == 2
            # events are numbered in Redis, as the instances number theirs: the stream's
            # one seq and epoch, so a browser's position stays valid on any instance
            assert pub.emit("/live", "tick", {"n": 1}, to="r1") == 1
            assert pub.emit("/live", "all", {"n": 2}) == 2
        import redis as redis_py
        r = redis_py.Redis.from_url(redis_server.url)
        epoch = r.get(stream + ":epoch").decode()
        assert int(r.get(stream + ":seq")) == 2
        for conn in clients:
            assert conn.recv() == "to all"
            assert conn.recv() == b"\x00bin"
        for read in readers:
            events = read()
            assert [(e[1], e[2]["data"], e[2]["room"]) for e in events] == [(b"tick", {"n": 1}, "r1"),
                                                                            (b"all", {"n": 2}, None)]
            assert [e[0].decode() for e in events] == [f"{epoch}-1", f"{epoch}-2"]
            assert [e[2]["seq"] for e in events] == [1, 2] and {e[2]["epoch"] for e in events} == {epoch}
        # a retry of the same request (its first try got through) gets the first seq, no second event
        from uwsgi_ws.broadcast.redis import add_event
        first = add_event(r, stream, 1000, "feedbeef", "x", 4, b'{"t":"event"}', number=7)
        assert add_event(r, stream, 1000, "feedbeef", "x", 4, b'{"t":"event"}', number=7) == first
        assert add_event(r, stream, 1000, "feedbeef", "x", 4, b'{"t":"event"}', number=8) == first + 1
        r.close()
    finally:
        for conn in clients:
            conn.close()
        for server in instances:
            server.stop()
    for server in instances:
        assert not server.crashes(), server.log()
    with pytest.raises(PublishError, match="cannot publish to Redis"):
        Publisher(redis_url="redis://127.0.0.1:1/0", timeout=0.3).publish("nowhere")
