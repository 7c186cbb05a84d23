"""permessage-deflate on the wire (issue 15), real uWSGI, threads and gevent.

The app is tests/apps/deflate_app.py. Clients: a raw socket client that offers
what a browser offers and sees the RSV1 bit of every frame (`DeflateClient`),
and the `websockets` library's client (its own permessage-deflate).

- the 101 names the negotiated parameters; compressed messages are inflated
  and echoed compressed (context takeover), short ones plain;
- compression=None on a route, or UWSGI_WS_COMPRESSION = None in the Flask
  config: no extension, plain frames;
- a zip bomb is closed with 1009 and RSV1 in the wrong place with 1002, the
  worker survives;
- broadcast: each message is compressed once per worker and negotiated
  parameter set, however many subscribers (the hub's counter); every
  subscriber of a set gets the same bytes, clients without deflate the plain
  frame, and direct sends with context takeover stay valid in between.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
import urllib.request
import zlib
from typing import Dict, List, Optional, Tuple

import pytest

from harness import UWSGI, free_port, serve

APP = "deflate_app:app"
MODELS = {"threads": ["--processes", "2", "--threads", "40"], "gevent": ["--processes", "2", "--gevent", "100"]}
BROADCAST = ["--sharedarea", "4096", "--mule=uwsgi_ws.broadcast.mule:run"]
CHROMIUM_OFFER = "permessage-deflate; client_max_window_bits"
TAIL = b"\x00\x00\xff\xff"
TEXT, BINARY, CONT, CLOSE, PING = 0x1, 0x2, 0x0, 0x8, 0x9


class DeflateClient:
    """A client speaking permessage-deflate by hand: compresses with context
    takeover, inflates with the window the server named, keeps every frame."""

    def __init__(self, port: int, path: str, offer: Optional[str] = CHROMIUM_OFFER, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        ext = f"Sec-WebSocket-Extensions: {offer}\r\n" if offer else ""
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, f"connection closed during the handshake: {self.buf!r}"
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1.1 101"), lines
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        self.extension = self.headers.get("sec-websocket-extensions")
        params = {}
        if self.extension:
            for p in self.extension.split(";")[1:]:
                name, _, value = p.strip().partition("=")
                params[name] = value
        self.params = params
        self.inflater = zlib.decompressobj(-int(params.get("server_max_window_bits") or 15))
        self.deflater = zlib.compressobj(6, zlib.DEFLATED, -int(params.get("client_max_window_bits") or 15))

    def send(self, opcode: int, payload: bytes, compress: bool = True, fin: bool = True, rsv1: Optional[bool] = None,
             raw: bool = False) -> None:
        if compress and not raw:
            payload = (self.deflater.compress(payload) + self.deflater.flush(zlib.Z_SYNC_FLUSH))[:-4]
        bit = compress if rsv1 is None else rsv1
        first = (0x80 if fin else 0) | (0x40 if bit else 0) | opcode
        n = len(payload)
        header = (struct.pack("!BB", first, 0x80 | n) if n < 126 else struct.pack("!BBH", first, 0x80 | 126, n)
                  if n < 65536 else struct.pack("!BBQ", first, 0x80 | 127, n))
        mask = os.urandom(4)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def recv_frame(self) -> Tuple[int, bool, bytes]:
        """(opcode, rsv1, payload as sent on the wire)."""
        def need(n: int) -> None:
            while len(self.buf) < n:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                self.buf += chunk

        need(2)
        b1, b2 = self.buf[0], self.buf[1]
        assert b1 & 0x80 and not b1 & 0x30 and not b2 & 0x80, hex(b1)
        n, i = b2 & 0x7F, 2
        if n == 126:
            need(4)
            (n,), i = struct.unpack_from("!H", self.buf, 2), 4
        elif n == 127:
            need(10)
            (n,), i = struct.unpack_from("!Q", self.buf, 2), 10
        need(i + n)
        payload, self.buf = self.buf[i:i + n], self.buf[i + n:]
        return b1 & 0x0F, bool(b1 & 0x40), payload

    def recv(self) -> Tuple[bytes, bool, bytes]:
        """(message, was it compressed, wire payload) of the next data frame."""
        while True:
            opcode, rsv1, payload = self.recv_frame()
            if opcode in (TEXT, BINARY):
                data = self.inflater.decompress(payload + TAIL) if rsv1 else payload
                return data, rsv1, payload
            if opcode == CLOSE:
                raise ConnectionError(f"closed with {struct.unpack('!H', payload[:2])[0] if payload else None}")

    def close_code(self) -> int:
        while True:
            opcode, _, payload = self.recv_frame()
            if opcode == CLOSE:
                return struct.unpack("!H", payload[:2])[0]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    return request.param


@pytest.fixture(scope="module")
def dserver(model, tmp_path_factory):
    worker_ports = [free_port(), free_port()]
    args = ["--master", "--http-socket", "127.0.0.1:{port}",
            "--http-socket", f"127.0.0.1:{worker_ports[0]}", "--http-socket", f"127.0.0.1:{worker_ports[1]}",
            "--map-socket", "1:1", "--map-socket", "2:2", "--module", APP, "--die-on-term", "--need-app",
            "--disable-logging", *MODELS[model], *BROADCAST]
    server = UWSGI(args, tmp_path_factory.mktemp(f"deflate-{model}"))
    server.worker_ports = worker_ports  # type: ignore[attr-defined]
    server.wait_for_log(r"uwsgi_ws: broadcast mule 1 serving ring", timeout=20)
    yield server
    server.stop()
    log = server.log()
    assert not server.crashes(), log
    assert "Traceback" not in log, log


def http(port: int, method: str, path: str, data: Optional[bytes] = None) -> Tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, resp.read().decode()


def stats(server, worker: int) -> dict:
    return json.loads(http(server.worker_ports[worker - 1], "GET", "/stats")[1])


# -- negotiation and echo ------------------------------------------------------------


def test_negotiated_and_echoed_compressed(dserver):
    c = DeflateClient(dserver.port, "/echo")
    try:
        assert c.extension == "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"
        text = json.dumps({"event": "said", "room": "lobby", "text": "hello " * 50})
        sizes = []
        for _ in range(3):
            c.send(TEXT, text.encode())
            data, compressed, wire = c.recv()
            assert (data.decode(), compressed) == (text, True)
            sizes.append(len(wire))
        assert sizes[1] < sizes[0] / 3  # context takeover: the echo refers to the first one
        c.send(BINARY, b"\x00short", compress=False)  # plain in, and under min_size out
        assert c.recv()[:2] == (b"\x00short", False)
        c.send(TEXT, b"tiny but compressed")
        assert c.recv()[:2] == (b"tiny but compressed", False)
    finally:
        c.close()


def test_websockets_client_round_trip(dserver):
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{dserver.port}/echo") as ws:  # websockets offers deflate by default
        assert ws.response.headers["Sec-WebSocket-Extensions"].startswith("permessage-deflate")
        for message in ["x" * 5000, b"\x01\x02" * 3000, "é" * 100, "", b""]:
            ws.send(message)
            assert ws.recv() == message


def test_compression_none_on_a_route(dserver):
    c = DeflateClient(dserver.port, "/plain")
    try:
        assert c.extension is None
        c.send(TEXT, b"a" * 1000, compress=False)
        assert c.recv()[:2] == (b"a" * 1000, False)
    finally:
        c.close()


def test_compression_off_in_the_flask_config(model, tmp_path):
    server = serve(APP, tmp_path, model=model, env={"DEFLATE_APP_OFF": "1"})
    try:
        c = DeflateClient(server.port, "/echo")
        assert c.extension is None
        c.send(TEXT, b"b" * 1000, compress=False)
        assert c.recv()[:2] == (b"b" * 1000, False)
        c.close()
    finally:
        server.stop()
    assert not server.crashes(), server.log()


def test_zip_bomb_is_closed_with_1009(dserver):
    c = DeflateClient(dserver.port, "/echo")
    witness = DeflateClient(dserver.port, "/echo")
    try:
        bomb = zlib.compressobj(9, zlib.DEFLATED, -12)
        body = b"".join(bomb.compress(bytes(1 << 20)) for _ in range(64)) + bomb.flush(zlib.Z_SYNC_FLUSH)
        c.send(BINARY, body[:-4], raw=True, rsv1=True)  # 64 MiB inflated, the limit is 64 KiB
        assert c.close_code() == 1009
        witness.send(TEXT, b"still here " * 20)
        assert witness.recv()[0] == b"still here " * 20
    finally:
        c.close()
        witness.close()


@pytest.mark.parametrize("frames", [
    [(TEXT, b"x", False, True), (CONT, b"y", True, True)],  # RSV1 on a continuation
    [(PING, b"p", True, True)],  # RSV1 on a control frame
])
def test_rsv1_in_the_wrong_place_is_closed_with_1002(dserver, frames):
    c = DeflateClient(dserver.port, "/echo")
    try:
        for opcode, payload, fin, rsv1 in frames:
            c.send(opcode, payload, raw=True, fin=fin, rsv1=rsv1 and opcode != TEXT)
        assert c.close_code() == 1002
    finally:
        c.close()


def test_rsv1_without_negotiation_is_closed_with_1002(dserver):
    c = DeflateClient(dserver.port, "/echo", offer=None)
    try:
        assert c.extension is None
        c.send(TEXT, b"compressed anyway")
        assert c.close_code() == 1002
    finally:
        c.close()


# -- broadcast: compressed once ----------------------------------------------------------


def test_broadcast_compressed_once_per_worker_and_parameter_set(dserver):
    channel = f"deflate-{time.monotonic_ns()}"
    groups = {"browser": CHROMIUM_OFFER, "nct": "permessage-deflate; server_no_context_takeover",
              "w10": "permessage-deflate; server_max_window_bits=10", "plain": None}
    per_group = {"browser": 8, "nct": 3, "w10": 3, "plain": 3}
    clients: List[Tuple[str, int, DeflateClient]] = []
    try:
        for worker in (1, 2):
            for group, offer in groups.items():
                for _ in range(per_group[group]):
                    c = DeflateClient(dserver.worker_ports[worker - 1], f"/sub/{channel}", offer)
                    assert c.recv()[0].startswith(b"ready:")
                    clients.append((group, worker, c))
        before = {w: stats(dserver, w)["compressions"] for w in (1, 2)}
        big = [json.dumps({"seq": i, "rows": [{"id": j, "v": (i * j) % 97} for j in range(60)]}) for i in range(12)]
        small = ["tiny-%d" % i for i in range(3)]
        sent = []
        for i, message in enumerate(big):
            http(dserver.port, "POST", f"/publish/{channel}", message.encode())
            sent.append(message)
            if i == 5:
                http(dserver.port, "POST", f"/publish/{channel}", small[0].encode())
                sent.append(small[0])
                for group, _, c in clients:
                    if group != "plain":
                        c.send(TEXT, b"direct:700")  # a direct send (context takeover) between broadcasts
        got: Dict[Tuple[str, int], List[bytes]] = {}
        for group, worker, c in clients:
            wire = []
            messages = []
            while len([m for m in messages if not m.startswith(b"D")]) < len(sent):
                data, compressed, payload = c.recv()
                messages.append(data)
                if not data.startswith(b"D"):
                    wire.append((compressed, payload))
                    assert compressed == (group != "plain" and len(data) >= 64), (group, data[:40])
            assert [m for m in messages if not m.startswith(b"D")] == [s.encode() for s in sent]
            if group != "plain":
                directs = [m for m in messages if m.startswith(b"D")]
                assert directs == [b"D1|" + b"x" * 697]  # inflated right after the shared frames
            got.setdefault((group, worker), []).append(wire)
        for (group, worker), wires in got.items():
            assert all(w == wires[0] for w in wires), f"{group} subscribers on worker {worker} got different bytes"
        for w in (1, 2):  # same parameters for broadcast frames: the same bytes
            assert got[("browser", w)][0] == got[("nct", w)][0]
            assert got[("browser", w)][0] != got[("w10", w)][0]
        after = {w: stats(dserver, w)["compressions"] for w in (1, 2)}
        for w in (1, 2):
            # Two parameter sets on each worker (12-bit and 10-bit windows) x the big messages;
            # 14 deflate subscribers per worker, one compression each per set.
            assert after[w] - before[w] == 2 * len(big), (before, after)
    finally:
        for _, _, c in clients:
            c.close()
