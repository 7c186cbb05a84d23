"""Server-side RFC 6455 frames, as bytes ready to write.

Server frames are never masked, so a message is framed once and the same bytes
can go to any number of connections (the broadcast ring stores them this way).
"""

from __future__ import annotations

import struct

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_FIN = 0x80
_RSV1 = 0x40


def encode(opcode: int, payload: bytes, fin: bool = True, rsv1: bool = False) -> bytes:
    """One unmasked frame: header followed by `payload`.

    `rsv1` marks the first frame of a compressed message (RFC 7692 section 6).
    """
    first = (_FIN if fin else 0) | (_RSV1 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        header = bytes((first, n))
    elif n < 0x10000:
        header = struct.pack("!BBH", first, 126, n)
    else:
        header = struct.pack("!BBQ", first, 127, n)
    return header + payload


def utf8(text: str, what: str = "a text frame") -> bytes:
    """`text` as UTF-8, the only encoding a text frame or a close reason may carry
    (RFC 6455 sections 5.6 and 7.4: the peer fails the connection on anything else).

    Raises:
        ValueError: `text` holds a lone surrogate (a Python str can; UTF-8 cannot).
    """
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} must be UTF-8 (RFC 6455 section 5.6) and this text holds a lone surrogate "
                         f"at position {exc.start} ({text[exc.start]!r}): send valid str, or bytes in a binary "
                         "frame") from None


def encode_message(data: str | bytes | bytearray | memoryview) -> bytes:
    """A text frame for `str`, a binary frame for bytes-like data.

    Raises:
        ValueError: a `str` that is not valid Unicode (`utf8`).
    """
    if isinstance(data, str):
        return encode(OP_TEXT, utf8(data))
    return encode(OP_BINARY, bytes(data))


def close_payload(code: int | None, reason: str = "") -> bytes:
    """The body of a close frame; RFC 6455 caps it at 125 bytes (reason is cut on a character)."""
    if code is None:
        return b""
    raw = utf8(reason, "a close reason")
    while len(raw) > 123:
        reason = reason[:-1]
        raw = reason.encode("utf-8")
    return struct.pack("!H", code) + raw


def header_size(payload_len: int) -> int:
    """How many bytes `encode` puts before a payload of this length."""
    return 2 if payload_len < 126 else 4 if payload_len < 0x10000 else 10


def payload(frame: bytes) -> bytes:
    """The payload of one unmasked, single frame made by `encode` (the ring's frames)."""
    n = frame[1] & 0x7F
    return frame[2 if n < 126 else 4 if n == 126 else 10:]


def parse(frame: bytes) -> tuple[int, bool, memoryview]:
    """(opcode, fin, payload) of one complete unmasked frame made by `encode`.

    Raises:
        ValueError: `frame` is not one complete unmasked frame.
    """
    if len(frame) < 2 or frame[1] & 0x80:
        raise ValueError("not an unmasked WebSocket frame")
    n = frame[1] & 0x7F
    start = 2
    if n == 126:
        (n,), start = struct.unpack_from("!H", frame, 2), 4
    elif n == 127:
        (n,), start = struct.unpack_from("!Q", frame, 2), 10
    if len(frame) != start + n:
        raise ValueError(f"frame of {len(frame)} bytes announces a payload of {n} after a {start}-byte header")
    return frame[0] & 0x0F, bool(frame[0] & _FIN), memoryview(frame)[start:]
