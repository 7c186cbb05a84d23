"""Broadcast with permessage-deflate next to plain transports (issue 15), real uWSGI, threads and gevent.

The app is tests/apps/deflate_broadcast_app.py; WebSocket clients are
test_deflate_wire.DeflateClient (a raw socket that sees each frame's RSV1 bit
and inflates it itself), SSE streams are read from raw sockets, Redis is a
redis-server of our own (test_redis_bridge.RedisServer).

- One publish reaches WebSocket subscribers that negotiated deflate as RSV1
  frames that inflate to the message, a WebSocket subscriber without deflate
  and the SSE streams as the message's bytes (an event broadcast: the
  published JSON with the mule's ``"seq"``/``"epoch"`` tail, the SSE id naming
  the same seq), and the Redis stream (``d`` field) and the other bridged
  instance as the published bytes: the compressed copy never leaves the
  worker that made it. An events endpoint declared with compression=None
  negotiates nothing (per endpoint or route: on or off).
- One compression per message and parameter set whatever the number of
  subscribers: the worker's ``compressions`` counter (`Broadcast.stats`, the
  hub's count of `SharedDeflater` runs) grows by the number of messages for 1
  subscriber and for 50, while ``delivered`` grows by messages x subscribers.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
from test_deflate_wire import CHROMIUM_OFFER, DeflateClient
from test_redis_bridge import RedisServer

from harness import UWSGI, stop_and_check, wait_for

APP = "deflate_broadcast_app:app"
MODELS = {"threads": ["--threads", "64"], "gevent": ["--gevent", "200"]}
TIMEOUT = 60.0  # socket timeout: a loaded 2-core machine, never an assertion on time
EVENT_TAIL = re.compile(rb',"seq":(\d+),"epoch":"(\d+)"\}\Z')


def start(tmp: Path, model: str, processes: int = 1, redis_url: Optional[str] = None, stream: str = "") -> UWSGI:
    args = ["--master", "--http-socket", "127.0.0.1:{port}", "--module", APP, "--die-on-term", "--need-app",
            "--disable-logging", "--processes", str(processes), *MODELS[model], "--sharedarea", "4096",
            "--mule=uwsgi_ws.mule:run"]
    if redis_url:
        args += ["--env", f"UWSGI_WS_REDIS_URL={redis_url}", "--env", f"UWSGI_WS_REDIS_STREAM={stream}",
                 "--env", "UWSGI_WS_REDIS_RETRY_MAX=0.5"]
    tmp.mkdir(parents=True, exist_ok=True)
    server = UWSGI(args, tmp)
    server.wait_for_log(r"uwsgi_ws: broadcast mule 1 serving ring", timeout=30)
    if redis_url:
        server.wait_for_log(r"redis bridge: connected for reading", timeout=30)
        server.wait_for_log(r"redis bridge: connected for pushing", timeout=30)
    return server


def http(server: UWSGI, method: str, path: str, data: Optional[bytes] = None) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", data=data, method=method)
    with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
        assert resp.status == 200
        return json.loads(resp.read())


def publish(server: UWSGI, room: str, payload: bytes, event: bool = False) -> int:
    return int(http(server, "POST", f"/publish/{room}" + ("?event=1" if event else ""), payload)["seq"])


def subscriber(server: UWSGI, room: str, offer: Optional[str] = CHROMIUM_OFFER) -> DeflateClient:
    """A WebSocket subscriber of `room`, subscribed once its `ready:` arrived."""
    client = DeflateClient(server.port, f"/sub/{room}", offer, timeout=TIMEOUT)
    assert (client.extension is not None) == (offer is not None), client.headers
    data, compressed, _ = client.recv()
    assert data.startswith(b"ready:") and not compressed
    return client


def frames_of(client: DeflateClient, count: int) -> List[Tuple[bytes, bool, bytes]]:
    """The next `count` data messages: (inflated message, RSV1, wire payload)."""
    return [client.recv() for _ in range(count)]


class SSEStream:
    """/live/sse?rooms=<room> on a raw socket (HTTP/1.0: the body is the stream as sent)."""

    def __init__(self, server: UWSGI, room: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
        self.sock.sendall(f"GET /live/sse?rooms={room} HTTP/1.0\r\nHost: t\r\n\r\n".encode())
        self.buf = b""
        while b": uwsgi_ws event stream\n" not in self.buf:  # subscribed once the preamble is out
            self._more()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0], head
        assert b"chunked" not in head.lower(), head

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, f"the SSE stream ended: {self.buf[-500:]!r}"
        self.buf += chunk

    def events(self, count: int) -> List[Dict[str, bytes]]:
        """The next `count` events with an id: {"id", "event", "data"} as sent."""
        out: List[Dict[str, bytes]] = []
        while len(out) < count:
            block, sep, rest = self.buf.partition(b"\n\n")
            if not sep:
                self._more()
                continue
            self.buf = rest
            fields = dict(line.split(b": ", 1) for line in block.split(b"\n") if line and not line.startswith(b":")
                          and b": " in line)
            if b"id" in fields:
                out.append({k.decode(): v for k, v in fields.items()})
        return out

    def close(self) -> None:
        self.sock.close()


def event_payload(room: str, n: int) -> bytes:
    """An events-protocol event frame of ~3 KiB of JSON (compresses well), as clients get it."""
    rows = [{"id": j, "name": f"item-{j}", "price": (n * 31 + j * 7) % 1000, "stock": j % 13} for j in range(40)]
    return json.dumps({"type": "event", "event": "prices", "data": {"n": n, "rows": rows}, "room": room},
                      separators=(",", ":")).encode()


def plain_payload(n: int) -> bytes:
    return json.dumps({"kind": "table", "n": n, "cells": [[i * j % 17 for j in range(30)] for i in range(30)]},
                      separators=(",", ":")).encode()


@pytest.fixture(params=list(MODELS))
def model(request) -> str:
    return request.param


def test_one_publish_compressed_for_deflate_subscribers_plain_for_the_others(model, tmp_path):
    """Deflate subscribers (RSV1, inflating to the message), a WebSocket subscriber
    without deflate and an SSE stream all get one publish; the plain ones its exact bytes."""
    server = start(tmp_path, model, processes=2)
    clients: List[DeflateClient] = []
    sse = None
    try:
        for path, on in (("/live", True), ("/quiet", False)):  # an endpoint's compression: on or off
            handshake = DeflateClient(server.port, path, CHROMIUM_OFFER, timeout=TIMEOUT)
            handshake.close()
            assert (handshake.extension or "").startswith("permessage-deflate") is on, (path, handshake.headers)
        room = "mixed"
        deflating = [subscriber(server, room) for _ in range(4)]
        plain = subscriber(server, room, offer=None)
        clients = [*deflating, plain]
        sse = SSEStream(server, room)
        events = [event_payload(room, n) for n in range(3)]
        seqs = [publish(server, room, p, event=True) for p in events]
        table = plain_payload(0)
        publish(server, room, table)  # not an event: WebSocket subscribers only

        got_sse = sse.events(len(events))
        expected = []
        for payload, seq, e in zip(events, seqs, got_sse):
            epoch, _, id_seq = e["id"].decode().partition("-")
            assert int(id_seq) == seq, (e["id"], seq)
            # the SSE data is the published JSON with the mule's tail, nothing else
            assert e["data"] == payload[:-1] + b',"seq":%d,"epoch":"%s"}' % (seq, epoch.encode())
            assert e["event"] == b"prices"
            expected.append(e["data"])
        expected.append(table)

        got_plain = frames_of(plain, len(expected))
        assert [(m, rsv1) for m, rsv1, _ in got_plain] == [(m, False) for m in expected]
        assert [wire for _, _, wire in got_plain] == expected  # the plain frame's bytes are the message
        for client in deflating:
            got = frames_of(client, len(expected))
            assert [m for m, _, _ in got] == expected  # inflated (client.recv) back to the message
            assert all(rsv1 for _, rsv1, _ in got), "a deflate subscriber got a plain frame"
            for m, _, wire in got:
                assert len(wire) < len(m) // 3, (len(wire), len(m))
                # each frame is self-contained (no context takeover): inflates on its own
                assert zlib.decompressobj(-15).decompress(wire + b"\x00\x00\xff\xff") == m
    finally:
        for client in clients:
            client.close()
        if sse is not None:
            sse.close()
        stop_and_check(server)


def test_redis_and_the_other_instance_get_the_plain_message(model, tmp_path):
    """Two instances bridged through Redis: the stream holds the published bytes (no
    RSV1 copy), the other instance's deflate subscribers get RSV1 frames of those bytes,
    its plain subscriber and both SSE streams the bytes themselves."""
    import redis as redis_client

    rds = RedisServer(tmp_path)
    stream = f"uwsgi_ws:test-deflate-{model}-{time.monotonic_ns()}"
    servers: List[UWSGI] = []
    clients: List[DeflateClient] = []
    streams: List[SSEStream] = []
    try:
        a = start(tmp_path / "a", model, redis_url=rds.url, stream=stream)
        servers.append(a)
        b = start(tmp_path / "b", model, redis_url=rds.url, stream=stream)
        servers.append(b)
        room = "bridged"
        deflating = [subscriber(s, room) for s in (a, a, b, b)]
        plain_b = subscriber(b, room, offer=None)
        clients = [*deflating, plain_b]
        streams = [SSEStream(a, room), SSEStream(b, room)]
        r = redis_client.Redis(port=rds.port)

        def entries() -> list:
            return [fields for _, fields in r.xrange(stream)]

        table = plain_payload(1)
        publish(a, room, table)
        # the outbox pushes after the local append: await it in the stream, then the event,
        # so that both instances see the two in the same order
        pushed = wait_for(lambda: entries() or None, TIMEOUT, "the plain publish in the Redis stream")
        assert pushed[0][b"d"] == table and pushed[0][b"c"] == f"events:/live:{room}".encode(), pushed
        event = event_payload(room, 7)
        publish(a, room, event, event=True)
        stored = wait_for(lambda: entries()[1:] or None, TIMEOUT, "the event in the Redis stream")
        event_bytes = stored[0][b"d"]
        # numbered by Redis (global seq and epoch in the JSON), otherwise the published bytes
        tail = EVENT_TAIL.search(event_bytes)
        assert tail and event_bytes == event[:-1] + tail.group(0), event_bytes[-80:]
        assert (int(stored[0][b"g"]), int(stored[0][b"e"])) == (int(tail.group(1)), int(tail.group(2)))

        for sse in streams:
            (e,) = sse.events(1)
            assert e["data"] == event_bytes and e["id"] == b"%s-%s" % (tail.group(2), tail.group(1))
        got_plain = frames_of(plain_b, 2)
        assert [(wire, rsv1) for _, rsv1, wire in got_plain] == [(table, False), (event_bytes, False)]
        for client in deflating:
            got = frames_of(client, 2)
            assert [(m, rsv1) for m, rsv1, _ in got] == [(table, True), (event_bytes, True)]
        assert len(entries()) == 2  # nothing else went into the stream (no compressed copy)
    finally:
        for client in clients:
            client.close()
        for sse in streams:
            sse.close()
        for server in servers:
            stop_and_check(server)
        rds.stop()


def counted(server: UWSGI, before: dict, deliveries: int):
    """A wait_for condition: /stats once `delivered` grew by `deliveries` since `before`
    (the hub adds to it after its writes, so a client may read its frames first)."""
    def check() -> Optional[dict]:
        stats = http(server, "GET", "/stats")
        return stats if stats["delivered"] - before["delivered"] >= deliveries else None

    return check


def test_one_compression_per_message_for_1_or_50_subscribers(model, tmp_path):
    """The worker's `compressions` counter grows by the number of messages whether 1
    or 50 subscribers take them (all with the same negotiated parameters), while
    `delivered` grows by messages x subscribers; the 50 get the same bytes."""
    server = start(tmp_path, model, processes=1)
    clients: List[DeflateClient] = []
    messages = 5
    try:
        counts = {}
        for n in (1, 50):
            room = f"fan-{n}"
            group = [subscriber(server, room) for _ in range(n)]
            clients += group
            before = http(server, "GET", "/stats")
            assert before["subscribers"] == len(clients), before
            payloads = [plain_payload(100 * n + i) for i in range(messages)]
            for p in payloads:
                publish(server, room, p)
            wires = []
            for client in group:
                got = frames_of(client, messages)
                assert [(m, rsv1) for m, rsv1, _ in got] == [(p, True) for p in payloads]
                wires.append([wire for _, _, wire in got])
            assert all(w == wires[0] for w in wires), "subscribers got different compressed bytes"
            after = wait_for(counted(server, before, n * messages), TIMEOUT, "the hub's delivered count")
            assert after["pid"] == before["pid"]
            counts[n] = (after["compressions"] - before["compressions"], after["delivered"] - before["delivered"])
        assert counts == {1: (messages, messages), 50: (messages, 50 * messages)}, counts
    finally:
        for client in clients:
            client.close()
        stop_and_check(server)
