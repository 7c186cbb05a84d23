"""Write the seed corpus of tests/fuzz/corpus (one file per input class; the
layout is fuzz_protocol.split's: size byte, cut byte, client stream).

    python tests/fuzz/make_corpus.py      # rewrites the seed-* files, deterministic
"""

from __future__ import annotations

import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(os.path.dirname(HERE)), HERE]

from protocol_oracle import BINARY, CLOSE, CONT, PING, PONG, TEXT, close_payload, frame  # noqa: E402

KEY = b"\x37\xfa\x21\x3d"  # a fixed mask: the corpus is the same on every run


def f(opcode, payload=b"", fin=True, **kw):
    kw.setdefault("mask", KEY)
    return frame(opcode, payload, fin, **kw)


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


def main() -> None:
    out = os.path.join(HERE, "corpus")
    os.makedirs(out, exist_ok=True)
    for name, stream in SEEDS.items():
        size = SIZE_SMALL if "small" in name else SIZE_DEFAULT
        for step, suffix in ((0, ""), (2, "-cut")):
            with open(os.path.join(out, f"seed-{name}{suffix}"), "wb") as fh:
                fh.write(bytes([size, step]) + stream)


if __name__ == "__main__":
    main()
