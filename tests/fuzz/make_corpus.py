"""Write the seed corpus of tests/fuzz/corpus (one file per input class; the
layout is fuzz_protocol.split's: size byte, cut byte, client stream).

    python tests/fuzz/make_corpus.py      # rewrites the seed-* files, deterministic
"""

from __future__ import annotations

import os
import struct
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(os.path.dirname(HERE)), HERE]

from protocol_oracle import BINARY, CLOSE, CONT, PING, PONG, TEXT, close_payload, frame  # noqa: E402

KEY = b"\x37\xfa\x21\x3d"  # a fixed mask: the corpus is the same on every run


def f(opcode, payload=b"", fin=True, **kw):
    kw.setdefault("mask", KEY)
    return frame(opcode, payload, fin, **kw)


def z(data: bytes, window: int = 15, flush: int = zlib.Z_SYNC_FLUSH) -> bytes:
    """A standalone compressed message body (RFC 7692 7.2.1: the 00 00 ff ff tail removed)."""
    c = zlib.compressobj(6, zlib.DEFLATED, -window)
    out = c.compress(data) + c.flush(flush)
    return out[:-4] if out.endswith(b"\x00\x00\xff\xff") else out  # Z_FINISH: a BFINAL block


_ctx = zlib.compressobj(6, zlib.DEFLATED, -15)


def zctx(data: bytes) -> bytes:
    """The next message of one context-takeover stream."""
    return (_ctx.compress(data) + _ctx.flush(zlib.Z_SYNC_FLUSH))[:-4]


def header(first: int, second: int, extended: bytes = b"") -> bytes:
    return bytes([first, second]) + extended + KEY


SIZE_DEFAULT, SIZE_SMALL = 7, 3  # indexes into fuzz_protocol.SIZES: 64 KiB, 16 bytes

SEEDS = {
    "text": f(TEXT, "héllo wörld".encode()),
    "binary": f(BINARY, bytes(range(256))),
    "empty-messages": f(TEXT) + f(BINARY),
    "fragmented-text-ping-between": f(TEXT, b"Hel", False) + f(PING, b"p") + f(CONT, b"lo w\xc3", False)
    + f(CONT, b"\xb6rld"),
    "many-fragments": b"".join(f(BINARY if i == 0 else CONT, bytes([i]) * 7, i == 9) for i in range(10)),
    "ping-pong-close": f(PING, b"abc") + f(PONG, b"unsolicited") + f(CLOSE, close_payload(1000, b"bye")),
    "close-no-status": f(CLOSE),
    "close-4999": f(CLOSE, close_payload(4999, "✓".encode())),
    "close-then-data": f(CLOSE, close_payload(1001)) + f(TEXT, b"late"),
    "length-16-bit": f(BINARY, b"m" * 300),
    "length-64-bit": f(BINARY, b"L" * 70000),
    "at-small-limit": f(TEXT, b"s" * 16),
    "over-small-limit-fragmented": f(TEXT, b"s" * 10, False) + f(CONT, b"t" * 10),
    "length-2-to-the-40": header(0x82, 0x80 | 127, struct.pack("!Q", 1 << 40)),
    "length-63-bit-msb": header(0x82, 0x80 | 127, struct.pack("!Q", (1 << 63) | 5)),
    "length-non-minimal-16": header(0x82, 0x80 | 126, struct.pack("!H", 5)) + b"abcde",
    "length-non-minimal-64": header(0x82, 0x80 | 127, struct.pack("!Q", 200)) + b"x" * 200,
    "invalid-utf8": f(TEXT, b"ok \xff\xfe"),
    "invalid-utf8-across-fragments": f(TEXT, b"ok \xf0\x9f", False) + f(CONT, b"\x98"),
    "invalid-utf8-close-reason": f(CLOSE, struct.pack("!H", 1000) + b"\xff"),
    "stray-continuation": f(CONT, b"nothing to continue"),
    "text-inside-fragmented": f(TEXT, b"a", False) + f(TEXT, b"b"),
    "binary-inside-fragmented": f(BINARY, b"a", False) + f(BINARY, b"b"),
    "fragmented-ping": f(PING, b"p", False),
    "fragmented-close": f(CLOSE, close_payload(1000), False),
    "ping-126": f(PING, b"p" * 126),
    "close-1-byte": f(CLOSE, b"\x03"),
    "close-999": f(CLOSE, close_payload(999)),
    "close-1004": f(CLOSE, close_payload(1004)),
    "close-1005": f(CLOSE, close_payload(1005)),
    "close-1006": f(CLOSE, close_payload(1006)),
    "close-1015": f(CLOSE, close_payload(1015)),
    "close-5000": f(CLOSE, close_payload(5000)),
    "reserved-opcode-3": f(0x3, b"?"),
    "reserved-opcode-b": f(0xB, b"?"),
    "rsv1": f(TEXT, b"r", rsv=4),
    "rsv3": f(TEXT, b"r", rsv=1),
    "unmasked": frame(TEXT, b"plain", masked=False),
    "truncated-header": b"\x81",
    "truncated-payload": f(TEXT, b"0123456789")[:-4],
    "garbage": bytes(range(255, -1, -7)),
}

#: Compressed streams: (DEFLATES index in protocol_oracle, stream).
DEFLATE_SEEDS = {
    "z-text": (1, f(TEXT, z("héllo wörld ".encode() * 20), rsv=4)),
    "z-takeover": (1, f(TEXT, zctx(b"repeat " * 30), rsv=4) + f(TEXT, zctx(b"repeat " * 30), rsv=4)),
    "z-fragmented-ping-between": (2, f(BINARY, z(bytes(300))[:3], False, rsv=4) + f(PING, b"p")
                                  + f(CONT, z(bytes(300))[3:])),
    "z-plain-and-compressed": (1, f(TEXT, b"plain") + f(BINARY, z(b"\x00" * 100), rsv=4)),
    "z-bomb-over-limit": (1, f(BINARY, z(bytes(200_000)), rsv=4)),
    "z-small-limit": (2, f(TEXT, z(b"s" * 17), rsv=4)),
    "z-rsv1-continuation": (1, f(TEXT, z(b"abc"), False, rsv=4) + f(CONT, b"", rsv=4)),
    "z-rsv1-ping": (1, f(PING, b"p", rsv=4)),
    "z-invalid-data": (1, f(BINARY, b"\xff\xfe\xfd", rsv=4)),
    "z-invalid-utf8": (1, f(TEXT, z(b"ok \xc3\x28"), rsv=4)),
    "z-window-8": (3, f(BINARY, z(b"abcabcabc" * 50, 9), rsv=4)),
    "z-bfinal": (4, f(TEXT, z(b"final block" * 10, 15, zlib.Z_FINISH), rsv=4)
                 + f(TEXT, z(b"next"), rsv=4)),
    "z-empty": (1, f(TEXT, b"", rsv=4) + f(BINARY, z(b""), rsv=4)),
}


def main() -> None:
    out = os.path.join(HERE, "corpus")
    os.makedirs(out, exist_ok=True)
    for name, stream in SEEDS.items():
        size = SIZE_SMALL if "small" in name else SIZE_DEFAULT
        for step, suffix in ((0, ""), (2, "-cut")):
            with open(os.path.join(out, f"seed-{name}{suffix}"), "wb") as fh:
                fh.write(bytes([size, step]) + stream)
    for name, (deflate, stream) in DEFLATE_SEEDS.items():
        size = SIZE_SMALL if "small" in name else SIZE_DEFAULT
        for step, suffix in ((0, ""), (2, "-cut")):
            with open(os.path.join(out, f"seed-{name}{suffix}"), "wb") as fh:
                fh.write(bytes([size, deflate << 3 | step]) + stream)


if __name__ == "__main__":
    main()
