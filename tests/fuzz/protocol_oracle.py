"""What must hold for any bytes a client sends to the frame decoder
(`uwsgi_ws.protocol.Protocol`), shared by the hypothesis tests
(tests/test_fuzz_protocol.py) and the atheris target (fuzz_protocol.py).

`check(data, max_message_size, cuts)` feeds `data` to a fresh engine, once
whole and once cut at `cuts`, then the end of the stream, and raises
AssertionError (never anything else) when a property fails:

- `receive_data` raises nothing, whatever the bytes;
- the engine is always in a valid state, and closed after the end of stream,
  with exactly one Close event, the last one; nothing comes out after it;
- every data message is `str` (valid Unicode) or `bytes`, within the limit;
- what it writes is a sequence of well-formed server frames: unmasked, FIN,
  pongs of at most 125 bytes, at most one close frame and nothing after it,
  whose code is one a server may send and whose reason is valid UTF-8;
- close codes in Close events are RFC 6455 codes (1005/1006 for "none"/"lost");
- a failed connection (protocol error, size) has sent its close frame;
- how the bytes were cut into reads changes nothing (events and output alike,
  close reasons aside: they are prose);
- the same with permessage-deflate negotiated (`deflate`): RSV1 frames are
  inflated, and the limit holds for the inflated messages (a message both
  invalid and too big may be refused with 1007 or 1009 depending on the cuts).

`frame()` builds client frames; `expected()` is the reference model for
well-formed streams built from `Op`s.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from uwsgi_ws.deflate import DeflateOptions, DeflateParams
from uwsgi_ws.handshake import negotiate_deflate
from uwsgi_ws.protocol import Close, Message, Ping, Pong, Protocol, State

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

#: Codes a server may put in its close frame (RFC 6455 7.4.1, the IANA registry, app ranges).
SENDABLE_CODES = frozenset([1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014]
                           + list(range(3000, 5000)))
#: permessage-deflate as negotiated for the fuzz target (index: fuzz input byte 1 >> 3).
DEFLATES: Tuple[Optional[DeflateParams], ...] = (None,) + tuple(
    negotiate_deflate({"HTTP_SEC_WEBSOCKET_EXTENSIONS": offer}, DeflateOptions(min_size=0))
    for offer in (
        "permessage-deflate",
        "permessage-deflate; client_no_context_takeover; client_max_window_bits",
        "permessage-deflate; client_max_window_bits=8; server_max_window_bits=8",
        "permessage-deflate; server_no_context_takeover; client_max_window_bits=15",
    )
)

#: Codes a Close event may carry: the sendable ones, plus "no status" and "connection lost".
EVENT_CODES = SENDABLE_CODES | {1005, 1006}


def frame(opcode: int, payload: bytes = b"", fin: bool = True, *, rsv: int = 0, mask: Optional[bytes] = None,
          masked: bool = True, length: Optional[int] = None) -> bytes:
    """One client frame; `length` announces a different length than sent (header only if huge)."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mbit = 0x80 if masked else 0
    if n < 126:
        header = struct.pack("!BB", first, mbit | n)
    elif n < 0x10000:
        header = struct.pack("!BBH", first, mbit | 126, n)
    else:
        header = struct.pack("!BBQ", first, mbit | 127, n)
    if not masked:
        return header + payload
    key = mask if mask is not None else os.urandom(4)
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_payload(code: Optional[int], reason: bytes = b"") -> bytes:
    return b"" if code is None else struct.pack("!H", code) + reason


# -- parsing what the server wrote -----------------------------------------------


def server_frames(out: bytes) -> List[Tuple[bool, int, bytes]]:
    """(fin, opcode, payload) of each frame in `out`; AssertionError if malformed."""
    frames, i = [], 0
    while i < len(out):
        assert len(out) - i >= 2, f"truncated frame header at {i}"
        b1, b2 = out[i], out[i + 1]
        assert not b1 & 0x70, "RSV bits set in a server frame"
        assert not b2 & 0x80, "a server frame is masked"
        n, i = b2 & 0x7F, i + 2
        if n == 126:
            (n,), i = struct.unpack_from("!H", out, i), i + 2
        elif n == 127:
            (n,), i = struct.unpack_from("!Q", out, i), i + 8
        assert len(out) - i >= n, "truncated frame payload"
        frames.append((bool(b1 & 0x80), b1 & 0x0F, out[i:i + n]))
        i += n
    return frames


# -- running the engine --------------------------------------------------------------


def run(data: bytes, max_message_size: Optional[int], cuts: Sequence[int] = (),
        deflate: Optional[DeflateParams] = None) -> Tuple[list, bytes, Protocol]:
    """Feed `data` cut at the `cuts` offsets, then the end of stream; (events, output, engine).
    Checks the per-read properties on the way. `deflate`: permessage-deflate negotiated."""
    p = Protocol(max_message_size, deflate)
    events: list = []
    out = b""
    bounds = [0, *sorted(c for c in set(cuts) if 0 < c < len(data)), len(data)]
    for start, end in zip(bounds, bounds[1:]):
        closed_before = p.state is State.CLOSED
        p.receive_data(data[start:end])
        new_events, new_out = p.events_received(), p.data_to_send()
        assert isinstance(p.state, State)
        if closed_before:
            assert not new_events and not new_out, "the engine answered after it was closed"
        events += new_events
        out += new_out
    p.receive_data(b"")  # the end of the stream
    events += p.events_received()
    out += p.data_to_send()
    return events, out, p


def check(data: bytes, max_message_size: Optional[int] = 1 << 20, cuts: Sequence[int] = (),
          deflate: Optional[DeflateParams] = None) -> Tuple[list, bytes]:
    """Every property above for `data`; returns (events, output) of the whole-input run.
    With `deflate` (permessage-deflate negotiated) the limit is on inflated sizes."""
    events, out, p = run(data, max_message_size, (), deflate)
    check_result(events, out, p, max_message_size)
    if cuts:
        cut_events, cut_out, _ = run(data, max_message_size, cuts, deflate)
        same = _same_failure if deflate is not None else (lambda x: x)
        assert same(_comparable(cut_events)) == same(_comparable(events)), \
            "cutting the input differently changed the events"
        assert same(_written(cut_out)) == same(_written(out)), "cutting the input differently changed the output"
    return events, out


def _comparable(events: list) -> list:
    # A close reason is prose (a decoder's message may name an offset in the read): compare codes.
    return [("close", e.code) if type(e) is Close else e for e in events]


_INVALID_OR_TOO_BIG = struct.pack("!H", 1007), struct.pack("!H", 1009)


def _same_failure(items: list) -> list:
    """A compressed message both invalid (UTF-8, DEFLATE data) and too big once
    inflated is refused by whichever the inflated bytes show first, and that
    depends on where the reads cut them: 1007 and 1009 count as one there.

    Nothing else is relaxed. In particular a framing error (1002) is never
    traded for a 1007: RFC 6455 section 5.4 makes a data frame out of
    sequence an error of its header, which the engine judges before any of
    the frame's payload reaches the inflater (protocol._LimitedDecoder), and
    the fragments before it were inflated in order, each as far as its bytes
    go (RFC 7692 section 7.2.2: the DEFLATE stream of a message is the
    fragments' payloads concatenated), so the first failure is the same
    however the bytes are cut (the atheris finding
    corpus/regress-interleaved-compressed-text was a later frame's payload
    inflated before its opcode was judged)."""
    out = []
    for item in items:
        if item in (("close", 1007), ("close", 1009)):
            item = ("close", "1007|1009")
        elif isinstance(item, tuple) and len(item) == 2 and item[0] == CLOSE and item[1] in _INVALID_OR_TOO_BIG:
            item = (CLOSE, "1007|1009")
        out.append(item)
    return out


def _written(out: bytes) -> list:
    return [(opcode, payload[:2] if opcode == CLOSE else payload) for _, opcode, payload in server_frames(out)]


def check_result(events: list, out: bytes, p: Protocol, max_message_size: Optional[int]) -> None:
    assert p.state is State.CLOSED, f"still {p.state} after the end of the stream"
    closes = [e for e in events if type(e) is Close]
    assert len(closes) == 1 and events[-1] is closes[0], f"{len(closes)} Close events, last {events[-1:]}"
    assert closes[0].code in EVENT_CODES, f"Close event with code {closes[0].code}"
    assert isinstance(closes[0].reason, str)
    for event in events:
        if type(event) is Message:
            data = event.data
            assert type(data) in (str, bytes), type(data)
            size = len(data.encode("utf-8")) if type(data) is str else len(data)  # encode: no lone surrogates
            assert max_message_size is None or size <= max_message_size, f"a message of {size} bytes"
        else:
            assert type(event) in (Ping, Pong, Close), type(event)
    sent = server_frames(out)
    close_frames = [f for f in sent if f[1] == CLOSE]
    assert len(close_frames) <= 1, "more than one close frame sent"
    for fin, opcode, payload in sent:
        assert fin, "a fragmented server frame"
        assert opcode in (PONG, CLOSE, PING), f"the engine wrote opcode {opcode}"
        assert len(payload) <= 125, "a control frame over 125 bytes"
    if close_frames:
        assert sent[-1][1] == CLOSE, "frames sent after the close frame"
        payload = close_frames[0][2]
        assert len(payload) != 1, "a 1-byte close payload"
        if payload:
            (code,) = struct.unpack("!H", payload[:2])
            assert code in SENDABLE_CODES, f"close frame with code {code}"
            payload[2:].decode("utf-8")  # UnicodeDecodeError is not AssertionError: re-raise as one
    if p.failed:
        assert close_frames, "failed without sending a close frame"
        assert closes[0].code == p.pending_close[0]


def check_any(data: bytes, max_message_size: Optional[int], cuts: Sequence[int],
              deflate: Optional[DeflateParams] = None) -> None:
    """`check`, with any exception turned into an AssertionError naming it (for fuzzers)."""
    try:
        check(data, max_message_size, cuts, deflate)
    except AssertionError:
        raise
    except Exception as exc:  # receive_data raised, or the output is not decodable
        raise AssertionError(f"{type(exc).__name__}: {exc}") from exc


# -- the reference model for well-formed streams ------------------------------------------


@dataclass(frozen=True)
class Op:
    """One step of a well-formed client stream: a data message in `parts` (fragments,
    with control frames between them), a ping, a pong, or a close."""

    kind: str  # "text", "binary", "ping", "pong", "close"
    parts: Tuple[bytes, ...] = ()
    between: Tuple[Tuple[str, bytes], ...] = ()  # ("ping"|"pong", payload) after part i
    code: Optional[int] = None
    reason: bytes = b""


def encode_ops(ops: Sequence[Op]) -> bytes:
    out = []
    for op in ops:
        if op.kind in ("text", "binary"):
            for i, part in enumerate(op.parts):
                opcode = (TEXT if op.kind == "text" else BINARY) if i == 0 else CONT
                out.append(frame(opcode, part, fin=i == len(op.parts) - 1))
                if i < len(op.between):
                    kind, payload = op.between[i]
                    if kind and i < len(op.parts) - 1:
                        out.append(frame(PING if kind == "ping" else PONG, payload))
        elif op.kind == "ping":
            out.append(frame(PING, op.parts[0]))
        elif op.kind == "pong":
            out.append(frame(PONG, op.parts[0]))
        elif op.kind == "close":
            out.append(frame(CLOSE, close_payload(op.code, op.reason)))
    return b"".join(out)


def expected(ops: Sequence[Op], max_message_size: Optional[int]) -> Tuple[list, List[Tuple[int, bytes]], int]:
    """What the engine must do with `encode_ops(ops)` then EOF:
    (data messages, [(opcode, payload)] written, final close code)."""
    messages: list = []
    written: List[Tuple[int, bytes]] = []

    def control(kind: str, payload: bytes) -> None:
        if kind == "ping":
            written.append((PONG, payload))

    for op in ops:
        if op.kind in ("text", "binary"):
            total = 0
            for i, part in enumerate(op.parts):
                total += len(part)
                if max_message_size is not None and total > max_message_size:
                    written.append((CLOSE, struct.pack("!H", 1009)))
                    return messages, written, 1009
                if i < len(op.between) and op.between[i][0] and i < len(op.parts) - 1:
                    control(*op.between[i])
            data = b"".join(op.parts)
            messages.append(data.decode("utf-8") if op.kind == "text" else data)
        elif op.kind in ("ping", "pong"):
            control(op.kind, op.parts[0])
        elif op.kind == "close":
            written.append((CLOSE, b"" if op.code is None else struct.pack("!H", op.code)))
            return messages, written, 1005 if op.code is None else op.code
    return messages, written, 1006


def check_model(ops: Sequence[Op], max_message_size: Optional[int], cuts: Sequence[int] = ()) -> None:
    """A well-formed stream does exactly what the reference model says, and every property holds."""
    data = encode_ops(ops)
    events, out = check(data, max_message_size, cuts)
    want_messages, want_written, want_code = expected(ops, max_message_size)
    assert [e.data for e in events if type(e) is Message] == want_messages
    got_written = [(opcode, payload if opcode != CLOSE else payload[:2]) for _, opcode, payload in server_frames(out)]
    assert got_written == want_written, (got_written, want_written)
    assert events[-1].code == want_code, (events[-1], want_code)
