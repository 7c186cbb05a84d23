"""A raw-socket WebSocket client for the tests that send what real clients won't.

It does the opening handshake by hand, then reads and writes single frames
with full control over FIN, opcode, mask and the announced length. Every read
has a deadline, so a server that does not answer fails the test instead of
hanging it.

The suite's one frame encoder (`encode`) and its many-clients helpers (`Client`,
`connect`, `gather`, `closing`: hundreds of raw connections read by one
selector loop, as the broadcast and Redis tests use them) live here too.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import selectors
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

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


def encode(opcode: int, payload: bytes = b"", fin: bool = True, *, mask: bool = True,
           length: Optional[int] = None, rsv: int = 0, key: Optional[bytes] = None) -> bytes:
    """One frame: a client's (masked with `key`, random by default) or, with
    mask=False, a server's (what a server sends, for byte-exact expectations);
    `length` announces a different payload length than sent; `rsv` sets the RSV
    bits (0x40: RSV1, permessage-deflate)."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | rsv | opcode
    mbit = 0x80 if mask else 0
    if n < 126:
        header = struct.pack("!BB", first, mbit | n)
    elif n < 0x10000:
        header = struct.pack("!BBH", first, mbit | 126, n)
    else:
        header = struct.pack("!BBQ", first, mbit | 127, n)
    if not mask:
        return header + payload
    key = os.urandom(4) if key is None else key
    n = len(payload)
    mask = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    masked = (int.from_bytes(payload, "big") ^ mask).to_bytes(n, "big")
    return header + key + masked


def server_frame(opcode: int, payload: bytes) -> bytes:
    """A whole unmasked frame as a server sends it."""
    return encode(opcode, payload, mask=False)


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
               length: Optional[int] = None, rsv: int = 0, key: Optional[bytes] = None) -> bytes:
        """The one frame encoder of the suite (see `encode`)."""
        return encode(opcode, payload, fin, mask=mask, length=length, rsv=rsv, key=key)

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


# -- many clients: raw sockets read by one selector loop ----------------------------------


class Client:
    """One WebSocket connection among many (read together by `gather`). `messages`
    collects str (text), bytes (binary) and ("close", code) in arrival order; with
    `raw=True` the bytes after the ready message are kept unparsed in `buf` instead
    (for byte-exact comparison of long streams). `opcodes`: the only opcodes the
    server may send (default: data, close, ping, pong). The test apps' routes first
    send ``ready:<worker pid>``: `handshake()` reads it into `pid`."""

    def __init__(self, port: int, path: str, *, rcvbuf: Optional[int] = None, raw: bool = False,
                 opcodes: Optional[Tuple[int, ...]] = None) -> None:
        self.port, self.path, self.raw = port, path, raw
        self.opcodes = opcodes if opcodes is not None else (TEXT, BINARY, CLOSE, PING, PONG)
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        self.key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(upgrade_request(path, port, self.key))
        self.buf = bytearray()
        self.messages: list = []
        self.close_code: Optional[int] = None
        self.eof = False
        self.pid: Optional[int] = None

    def handshake(self, expect_ready: bool = True) -> Client:
        """Read the 101 and (unless told not to) the `ready:<pid>` message, blocking with
        the socket's timeout; then the socket is non-blocking."""
        while b"\r\n\r\n" not in self.buf:
            self._recv_blocking()
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        accept = base64.b64encode(hashlib.sha1((self.key + GUID).encode()).digest())
        assert b"sec-websocket-accept: " + accept.lower() in head.lower(), head
        self.buf = bytearray(rest)
        if not expect_ready:
            self.sock.setblocking(False)
            return self
        raw, self.raw = self.raw, False
        while not self.messages:
            self.parse()
            if not self.messages:
                self._recv_blocking()
        self.raw = raw
        ready = self.messages.pop(0)
        assert isinstance(ready, str) and ready.startswith("ready:"), ready
        self.pid = int(ready.split(":")[1])
        self.sock.setblocking(False)
        return self

    def _recv_blocking(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(f"{self.path}: the server closed the connection during the handshake")
        self.buf += chunk

    def pump(self) -> None:
        """Read what is there (non-blocking) and parse it."""
        while True:
            try:
                chunk = self.sock.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.eof = True
                break
            self.buf += chunk
        self.parse()

    def parse(self) -> None:
        if self.raw:
            return
        buf, pos = self.buf, 0
        while len(buf) - pos >= 2:
            b1, b2 = buf[pos], buf[pos + 1]
            assert not b2 & 0x80, "the server masked a frame"
            n, head = b2 & 0x7F, 2
            if n == 126:
                if len(buf) - pos < 4:
                    break
                n, head = struct.unpack_from("!H", buf, pos + 2)[0], 4
            elif n == 127:
                if len(buf) - pos < 10:
                    break
                n, head = struct.unpack_from("!Q", buf, pos + 2)[0], 10
            if len(buf) - pos < head + n:
                break
            assert b1 & 0x80, "a fragmented broadcast"
            opcode = b1 & 0x0F
            assert opcode in self.opcodes, f"opcode {opcode} from the server"
            payload = bytes(buf[pos + head:pos + head + n])
            pos += head + n
            if opcode == TEXT:
                self.messages.append(payload.decode("utf-8"))
            elif opcode == BINARY:
                self.messages.append(payload)
            elif opcode == CLOSE:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.messages.append(("close", self.close_code))
            else:
                assert opcode in (PING, PONG), opcode
        del buf[:pos]

    def send_text(self, text: str) -> None:
        """One masked text frame (blocking until written)."""
        self.sock.setblocking(True)
        self.sock.sendall(encode(TEXT, text.encode("utf-8")))
        self.sock.setblocking(False)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def connect(port: int, path: str, count: int, **kwargs: Any) -> List[Client]:
    """`count` connections to `port`, handshakes in flight together (batches of 50 for the listen backlog)."""
    clients: List[Client] = []
    try:
        for i in range(0, count, 50):
            batch = [Client(port, path, **kwargs) for _ in range(min(50, count - i))]
            clients += batch
            for c in batch:
                c.handshake()
    except BaseException:
        for c in clients:
            c.close()
        raise
    return clients


def gather(clients: Sequence[Client], done: Callable[[Client], bool], timeout: float = 20.0,
           what: str = "messages") -> float:
    """Read all clients in one loop until `done(client)` holds for each (or it is at
    EOF); returns the seconds taken. AssertionError after `timeout` seconds."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    sel = selectors.DefaultSelector()
    waiting = {}
    for c in clients:
        c.pump()
        if not done(c):
            sel.register(c.sock, selectors.EVENT_READ, c)
            waiting[c.sock] = c
    try:
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                c = next(iter(waiting.values()))
                summary = [(c.port, c.path, c.pid, len(c.messages), len(c.buf), c.eof) for c in waiting.values()]
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what}: {len(waiting)} of {len(clients)} "
                    f"clients not done (port, path, pid, messages, raw bytes, eof): {summary[:5]}; "
                    f"last messages of one: {[m if not isinstance(m, (str, bytes)) or len(m) < 40 else m[:40] for m in c.messages[-5:]]}"
                )
            for key, _ in sel.select(remaining):
                c = key.data
                c.pump()
                if done(c) or c.eof:
                    sel.unregister(c.sock)
                    del waiting[c.sock]
    finally:
        sel.close()
    return time.monotonic() - t0


@contextlib.contextmanager
def closing(clients: List[Client]) -> Iterator[List[Client]]:
    """Yields `clients`; closes every one at the end."""
    try:
        yield clients
    finally:
        for c in clients:
            c.close()
