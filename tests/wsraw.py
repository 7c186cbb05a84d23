"""A raw-socket WebSocket client for the tests that send what real clients won't.

It does the opening handshake by hand, then reads and writes single frames
with full control over FIN, opcode, mask and the announced length. Every read
has a deadline, so a server that does not answer fails the test instead of
hanging it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import time
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


@dataclass
class Frame:
    fin: bool
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> Optional[int]:
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None

    @property
    def close_reason(self) -> str:
        return self.payload[2:].decode("utf-8")


def http_request(port: int, raw: bytes, timeout: float = 5.0) -> Tuple[int, Dict[str, str], bytes]:
    """Send a raw HTTP request, read until the server closes; (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def upgrade_request(path: str, port: int, key: Optional[str] = None, version: str = "13",
                    method: str = "GET", extra: str = "") -> bytes:
    key = key if key is not None else base64.b64encode(os.urandom(16)).decode()
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n"
        f"{extra}\r\n"
    ).encode()


class RawWebSocket:
    """One client connection; `recv_frame` returns whole frames, never control-frame magic."""

    def __init__(self, port: int, path: str = "/echo", timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.timeout = timeout
        self._buf = b""
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(upgrade_request(path, port, key))
        head = self._read_until(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status_line + b" ":
            raise AssertionError(f"handshake refused: {head!r}")
        expected = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest())
        if b"sec-websocket-accept: " + expected.lower() not in head.lower():
            raise AssertionError(f"bad Sec-WebSocket-Accept in {head!r}")

    # -- writing ------------------------------------------------------------

    def send_frame(self, opcode: int, payload: bytes = b"", fin: bool = True, *, mask: bool = True,
                   length: Optional[int] = None) -> None:
        """One frame; `length` announces a different payload length than sent."""
        self.sock.sendall(self.encode(opcode, payload, fin, mask=mask, length=length))

    @staticmethod
    def encode(opcode: int, payload: bytes = b"", fin: bool = True, *, mask: bool = True,
               length: Optional[int] = None) -> bytes:
        n = len(payload) if length is None else length
        first = (0x80 if fin else 0) | opcode
        mbit = 0x80 if mask else 0
        if n < 126:
            header = struct.pack("!BB", first, mbit | n)
        elif n < 0x10000:
            header = struct.pack("!BBH", first, mbit | 126, n)
        else:
            header = struct.pack("!BBQ", first, mbit | 127, n)
        if not mask:
            return header + payload
        key = os.urandom(4)
        masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        return header + key + masked

    def send_text(self, text: str) -> None:
        self.send_frame(TEXT, text.encode("utf-8"))

    def send_close(self, code: Optional[int] = 1000, reason: str = "") -> None:
        payload = b"" if code is None else struct.pack("!H", code) + reason.encode("utf-8")
        self.send_frame(CLOSE, payload)

    # -- reading ------------------------------------------------------------

    def _read_until(self, marker: bytes) -> bytes:
        deadline = time.monotonic() + self.timeout
        while marker not in self._buf:
            self._fill(deadline)
        head, _, self._buf = self._buf.partition(marker)
        return head

    def _read_exact(self, n: int, deadline: float) -> bytes:
        while len(self._buf) < n:
            self._fill(deadline)
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data from the server in time")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("no data from the server in time") from None
        if not chunk:
            raise EOFError("the server closed the TCP connection")
        self._buf += chunk

    def recv_frame(self, timeout: Optional[float] = None) -> Frame:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        b1, b2 = self._read_exact(2, deadline)
        if b2 & 0x80:
            raise AssertionError("the server sent a masked frame")
        n = b2 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._read_exact(2, deadline))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._read_exact(8, deadline))
        return Frame(bool(b1 & 0x80), b1 & 0x0F, self._read_exact(n, deadline))

    def expect_close(self, timeout: Optional[float] = None, answer: bool = True) -> Frame:
        """Read frames (skipping pings, pongs and data) until the close frame; answer it."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            frame = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if frame.opcode == CLOSE:
                if answer:
                    try:
                        self.send_frame(CLOSE, frame.payload[:2])
                    except OSError:
                        pass
                return frame

    def wait_eof(self, timeout: Optional[float] = None) -> None:
        """Block until the server closes TCP (fail after the timeout)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            try:
                self._fill(deadline)
            except EOFError:
                return
            except ConnectionResetError:
                return
            self._buf = b""

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> RawWebSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
