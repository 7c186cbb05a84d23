"""permessage-deflate (RFC 7692), pure: negotiation (handshake.negotiate_deflate)
and the engine's codec (protocol.Protocol with deflate.PerMessageDeflate,
deflate.SharedDeflater). The wire side (a real uWSGI, real clients) is in
tests/test_deflate_wire.py and Autobahn sections 12-13 in tests/test_autobahn.py.

Client frames are built here with zlib and tests/fuzz/protocol_oracle.frame;
what the engine writes is decoded with zlib as a client would.
"""

from __future__ import annotations

import struct
import sys
import tracemalloc
import zlib
from pathlib import Path
from typing import List, Optional, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))

from uwsgi_ws import frames
from uwsgi_ws.deflate import DeflateOptions, DeflateParams, SharedDeflater
from uwsgi_ws.handshake import negotiate_deflate, parse_extensions, response_headers
from uwsgi_ws.protocol import Close, Message, Ping, Protocol

from protocol_oracle import BINARY, CLOSE, CONT, PING, TEXT, check, frame

TAIL = b"\x00\x00\xff\xff"
OPTIONS = DeflateOptions()


def negotiate(header: str, options: Optional[DeflateOptions] = OPTIONS) -> Optional[DeflateParams]:
    return negotiate_deflate({"HTTP_SEC_WEBSOCKET_EXTENSIONS": header}, options)


def response(header: str, options: Optional[DeflateOptions] = OPTIONS) -> Optional[str]:
    params = negotiate(header, options)
    return None if params is None else params.response


# -- negotiation (RFC 7692 sections 5 and 7.1) ----------------------------------------


def test_no_offer_or_compression_off_negotiates_nothing():
    assert negotiate_deflate({}, OPTIONS) is None
    assert negotiate("") is None
    assert negotiate("permessage-deflate", None) is None
    assert negotiate("x-webkit-deflate-frame, foo; bar=1") is None


def test_chromium_and_firefox_offer():
    # What browsers send: the server names both windows (12 bits by default).
    params = negotiate("permessage-deflate; client_max_window_bits")
    assert params.response == "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"
    assert (params.server_max_window_bits, params.client_max_window_bits) == (12, 12)
    assert not params.server_no_context_takeover and not params.client_no_context_takeover


def test_bare_offer_with_full_windows():
    options = DeflateOptions(server_max_window_bits=15, client_max_window_bits=15)
    params = negotiate("permessage-deflate", options)
    assert params.response == "permessage-deflate"
    assert (params.server_max_window_bits, params.client_max_window_bits) == (15, 15)
    # Without client_max_window_bits in the offer the client's window cannot be limited.
    assert negotiate("permessage-deflate").client_max_window_bits == 15


def test_context_takeover_parameters_are_accepted():
    params = negotiate("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    assert params.server_no_context_takeover and params.client_no_context_takeover
    assert params.response == ("permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
                               "server_max_window_bits=12")


@pytest.mark.parametrize("bits, granted", [(8, 8), (9, 9), (12, 12), (15, 12)])
def test_server_max_window_bits_is_honoured(bits, granted):
    params = negotiate(f"permessage-deflate; server_max_window_bits={bits}")
    assert params.server_max_window_bits == granted
    assert f"server_max_window_bits={granted}" in params.response


@pytest.mark.parametrize("offer, granted", [("client_max_window_bits=10", 10),
                                            ("client_max_window_bits=15", 12),
                                            ('client_max_window_bits="9"', 9),
                                            ("client_max_window_bits", 12)])
def test_client_max_window_bits_with_and_without_value(offer, granted):
    params = negotiate(f"permessage-deflate; {offer}")
    assert params.client_max_window_bits == granted
    assert params.response.endswith(f"client_max_window_bits={granted}")


@pytest.mark.parametrize("bad", [
    "server_max_window_bits",  # needs a value
    "server_max_window_bits=7", "server_max_window_bits=16", "server_max_window_bits=08",
    "server_max_window_bits=abc", "client_max_window_bits=0", "client_max_window_bits=-9",
    "server_no_context_takeover=1", "client_no_context_takeover=true",
    "server_no_context_takeover; server_no_context_takeover",  # twice
    "client_max_window_bits; client_max_window_bits=10",
    "unknown_parameter", "x=1",
])
def test_a_bad_offer_is_declined_and_the_next_one_taken(bad):
    assert negotiate(f"permessage-deflate; {bad}") is None
    params = negotiate(f"permessage-deflate; {bad}, permessage-deflate; client_no_context_takeover")
    assert params is not None and params.response.startswith("permessage-deflate; client_no_context_takeover")


def test_first_acceptable_offer_wins():
    params = negotiate("permessage-deflate; server_max_window_bits=10, permessage-deflate")
    assert params.server_max_window_bits == 10


@pytest.mark.parametrize("header", [
    'permessage-deflate; client_max_window_bits="10', "permessage-deflate;;", "permessage-deflate; =1",
    "permessage-deflate; a b", ";", ",,,", "permessage-deflate; server_max_window_bits=\"1 0\"",
    "\x00\xff", "permessage-deflate; client_max_window_bits=" + "9" * 1000,
])
def test_malformed_headers_are_declined_without_error(header):
    assert negotiate(header) is None


def test_several_headers_joined_by_the_server():
    # WSGI joins repeated headers with ", ": an empty element is ignored (RFC 7230 section 7).
    assert negotiate("foo, , permessage-deflate").response == "permessage-deflate; server_max_window_bits=12"


def test_parse_extensions_shapes():
    assert parse_extensions('a; b=1; C="x", d') == [("a", [("b", "1"), ("c", "x")]), ("d", [])]
    assert parse_extensions("a; b=") == [None]


def test_response_header_is_in_the_101():
    headers = dict(response_headers("dGhlIHNhbXBsZSBub25jZQ==", None, "permessage-deflate"))
    assert headers["Sec-WebSocket-Extensions"] == "permessage-deflate"
    assert "Sec-WebSocket-Extensions" not in dict(response_headers("dGhlIHNhbXBsZSBub25jZQ==", None))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("permessage-deflat;,= \"\\_cliensrvowkbx0189")), max_size=80))
def test_any_header_never_raises_and_any_answer_is_acceptable(header):
    params = negotiate(header)
    if params is not None:
        # The answer names one extension with valid parameters, each at most once.
        (answer,) = parse_extensions(params.response)
        name, answer_params = answer
        assert name == "permessage-deflate"
        names = [p for p, _ in answer_params]
        assert len(names) == len(set(names))
        for p, value in answer_params:
            if p.endswith("max_window_bits"):
                assert 8 <= int(value) <= 15
            else:
                assert p in ("server_no_context_takeover", "client_no_context_takeover") and value is None


@pytest.mark.parametrize("kwargs", [dict(min_size=-1), dict(level=10), dict(server_max_window_bits=7),
                                    dict(client_max_window_bits=16), dict(mem_level=0), dict(level="6")])
def test_invalid_options_say_what_is_allowed(kwargs):
    with pytest.raises(ValueError, match="must be an integer"):
        DeflateOptions(**kwargs)


# -- inbound: the engine inflates ----------------------------------------------------


class Client:
    """A client's permessage-deflate side: compresses what it sends, inflates what it gets."""

    def __init__(self, window: int = 15, takeover: bool = True) -> None:
        self.deflater = zlib.compressobj(6, zlib.DEFLATED, -window)
        self.inflater = zlib.decompressobj(-15)
        self.takeover = takeover

    def compress(self, data: bytes) -> bytes:
        mode = zlib.Z_SYNC_FLUSH if self.takeover else zlib.Z_FULL_FLUSH
        out = self.deflater.compress(data) + self.deflater.flush(mode)
        assert out.endswith(TAIL)
        return out[:-4]

    def message(self, opcode: int, data: bytes, fragments: int = 1) -> bytes:
        body = self.compress(data)
        step = max(1, -(-len(body) // fragments))
        parts = [body[i:i + step] for i in range(0, len(body), step)] or [b""]
        return b"".join(frame(opcode if i == 0 else CONT, part, fin=i == len(parts) - 1, rsv=4 if i == 0 else 0)
                        for i, part in enumerate(parts))

    def inflate(self, payload: bytes) -> bytes:
        return self.inflater.decompress(payload + TAIL)


def written(out: bytes) -> List[Tuple[bool, bool, int, bytes]]:
    """(fin, rsv1, opcode, payload) of each server frame."""
    result, i = [], 0
    while i < len(out):
        b1, b2 = out[i], out[i + 1]
        assert not b1 & 0x30 and not b2 & 0x80
        n, i = b2 & 0x7F, i + 2
        if n == 126:
            (n,), i = struct.unpack_from("!H", out, i), i + 2
        elif n == 127:
            (n,), i = struct.unpack_from("!Q", out, i), i + 8
        result.append((bool(b1 & 0x80), bool(b1 & 0x40), b1 & 0x0F, out[i:i + n]))
        i += n
    return result


_NO_MIN = DeflateOptions(min_size=0)


def engine(header: str = "permessage-deflate", max_message_size: Optional[int] = 1 << 20,
           options: DeflateOptions = _NO_MIN) -> Protocol:
    return Protocol(max_message_size, negotiate(header, options))


def feed(p: Protocol, data: bytes):
    p.receive_data(data)
    return p.events_received(), p.data_to_send()


def close_code(out: bytes) -> int:
    frames_ = written(out)
    assert frames_[-1][2] == CLOSE
    return struct.unpack("!H", frames_[-1][3][:2])[0]


def test_compressed_messages_with_context_takeover():
    p, c = engine(), Client()
    text = '{"event": "said", "room": "lobby", "text": "hello hello hello"}'
    stream = b"".join(c.message(TEXT, text.encode()) for _ in range(3)) + c.message(BINARY, bytes(range(256)) * 4)
    events, out = feed(p, stream)
    assert events == [Message(text)] * 3 + [Message(bytes(range(256)) * 4)]
    assert out == b""
    assert len(c.compress(text.encode())) < 10  # the later copies refer to the first one


def test_plain_and_compressed_messages_mix():
    p, c = engine(), Client()
    events, _ = feed(p, frame(TEXT, b"plain") + c.message(TEXT, b"squeezed") + frame(BINARY, b"\x00raw"))
    assert events == [Message("plain"), Message("squeezed"), Message(b"\x00raw")]


def test_fragmented_compressed_message_with_a_ping_between():
    p, c = engine(), Client()
    data = ("wörld " * 500).encode()
    body = c.compress(data)
    third = len(body) // 3
    stream = (frame(TEXT, body[:third], fin=False, rsv=4) + frame(PING, b"hi")
              + frame(CONT, body[third:2 * third], fin=False) + frame(CONT, body[2 * third:]))
    for cut in (None, 1):  # whole, then one byte per read
        p = engine()
        events = []
        chunks = [stream] if cut is None else [stream[i:i + 1] for i in range(len(stream))]
        for chunk in chunks:
            events += feed(p, chunk)[0]
        assert events == [Ping(b"hi"), Message(data.decode())]


def test_empty_compressed_message():
    p, c = engine(), Client()
    events, _ = feed(p, c.message(TEXT, b"") + frame(TEXT, b"", rsv=4))  # flushed empty, and nothing at all
    assert events == [Message(""), Message("")]


def test_client_no_context_takeover_releases_the_inflater():
    p, c = engine("permessage-deflate; client_no_context_takeover"), Client(takeover=False)
    events, _ = feed(p, c.message(TEXT, b"a" * 1000) + c.message(TEXT, b"a" * 1000))
    assert events == [Message("a" * 1000)] * 2
    assert p.deflate._inflater is None  # no inflate state kept between messages


@pytest.mark.parametrize("stream, why", [
    (frame(PING, b"x", rsv=4), "control"),
    (frame(CLOSE, struct.pack("!H", 1000), rsv=4), "control"),
    (frame(TEXT, b"\x00", fin=False) + frame(CONT, b"", rsv=4), "continuation"),
    (frame(TEXT, b"", rsv=2), "RSV2"),
    (frame(TEXT, b"", rsv=1), "RSV3"),
])
def test_rsv_rules_fail_with_1002(stream, why):
    p = engine()
    events, out = feed(p, stream)
    assert close_code(out) == 1002
    p.receive_data(b"")
    assert p.events_received()[-1].code == 1002


def test_rsv1_without_negotiation_fails_with_1002():
    p = Protocol(1 << 20)
    _, out = feed(p, Client().message(TEXT, b"compressed but not negotiated"))
    assert close_code(out) == 1002


def test_invalid_compressed_data_fails_with_1007():
    _, out = feed(engine(), frame(BINARY, b"\xff\xff\xff\xff\xff", rsv=4))
    assert close_code(out) == 1007


def test_invalid_utf8_after_inflating_fails_with_1007():
    _, out = feed(engine(), Client().message(TEXT, b"ok \xc3\x28 not utf-8"))
    assert close_code(out) == 1007


def _codes_per_cut(stream: bytes, p_args: dict) -> dict:
    """The close code the engine ends with for `stream` fed whole, in 2- and 3-byte reads and byte by byte."""
    codes = {}
    for step in (None, 3, 2, 1):
        p = engine(**p_args)
        chunks = [stream] if step is None else [stream[i:i + step] for i in range(0, len(stream), step)]
        for chunk in chunks:
            feed(p, chunk)
        p.receive_data(b"")
        codes[step] = p.events_received()[-1].code
    return codes


def test_fuzz_finding_interleaved_compressed_text_is_1002_however_cut():
    # atheris found it (tests/fuzz/corpus/regress-interleaved-compressed-text): a compressed
    # TEXT frame without FIN, then a second compressed TEXT frame (not a continuation). The
    # second frame's payload was inflated with the first message's context before wsproto's
    # message decoder refused its opcode, so a read holding its whole payload failed with
    # 1007 (invalid stored block lengths), a read holding part of it with 1002. The engine
    # now judges the header first: 1002, and the payload is never inflated.
    data = (Path(__file__).resolve().parent / "fuzz" / "corpus" / "regress-interleaved-compressed-text").read_bytes()
    assert _codes_per_cut(data[2:], {"max_message_size": 65536}) == {None: 1002, 3: 1002, 2: 1002, 1: 1002}


@pytest.mark.parametrize("second", [
    frame(TEXT, b"\xff\xff\xff\xff\xff\xff", rsv=4),  # compressed, garbage DEFLATE data
    frame(BINARY, b"\xff" * 200, rsv=4),
    frame(TEXT, b"\xc3\x28 not utf-8"),  # plain, invalid UTF-8
], ids=["compressed-text", "compressed-binary", "plain-invalid-utf8"])
def test_a_new_message_inside_a_fragmented_one_fails_at_its_header(second):
    c = Client()
    first = frame(TEXT, c.compress(("fragment " * 40).encode()), fin=False, rsv=4)
    assert _codes_per_cut(first + second, {}) == {None: 1002, 3: 1002, 2: 1002, 1: 1002}


@pytest.mark.parametrize("stray", [
    frame(CONT, b"\xff\xff\xff\xff\xff\xff"),
    frame(CONT, b"\xc3\x28", fin=False),
], ids=["final", "unfinished"])
def test_a_continuation_without_a_message_fails_at_its_header(stray):
    complete = Client().message(TEXT, b"a complete compressed message")
    assert _codes_per_cut(complete + stray, {}) == {None: 1002, 3: 1002, 2: 1002, 1: 1002}


@pytest.mark.parametrize("size, ok", [(4096, True), (4097, False)])
def test_inflated_size_is_the_limit(size, ok):
    p = engine(max_message_size=4096)
    events, out = feed(p, Client().message(BINARY, b"z" * size, fragments=3))
    if ok:
        assert events == [Message(b"z" * size)]
    else:
        assert not events and close_code(out) == 1009


def test_zip_bomb_is_refused_before_it_is_inflated():
    # 256 MiB of zeros compress to ~256 KiB; inflating them would allocate 256 MiB.
    bomb_deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    body = b"".join(bomb_deflater.compress(chunk) for _ in range(256)) + bomb_deflater.flush(zlib.Z_SYNC_FLUSH)
    stream = frame(BINARY, body[:-4], rsv=4)
    p = engine(max_message_size=1 << 16)
    tracemalloc.start()
    try:
        events, out = feed(p, stream)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not events and close_code(out) == 1009
    assert peak < 8 * len(stream) + (4 << 20), f"inflating used {peak} bytes"


def test_zip_bomb_in_small_fragments_stops_at_the_limit():
    c = Client()
    p = engine(max_message_size=10_000)
    events, out = feed(p, c.message(BINARY, bytes(5_000_000), fragments=50))
    assert not events and close_code(out) == 1009
    assert p.deflate._inflated <= 10_000


# -- outbound: direct sends ----------------------------------------------------------


def test_direct_sends_use_context_takeover():
    p, c = engine(), Client()
    text = '{"event": "said", "room": "lobby", "text": "' + "x" * 300 + '"}'
    out = [written(p.frame_message(text))[0] for _ in range(3)]
    assert [(fin, rsv1, op) for fin, rsv1, op, _ in out] == [(True, True, TEXT)] * 3
    assert [c.inflate(payload).decode() for *_, payload in out] == [text] * 3
    assert len(out[1][3]) < len(out[0][3]) // 4  # the second refers to the first
    assert p.deflate.compressed_messages == 3


def test_server_no_context_takeover_makes_each_message_standalone():
    p = engine("permessage-deflate; server_no_context_takeover")
    payloads = [written(p.frame_message(b"abc" * 100))[0][3] for _ in range(3)]
    for payload in payloads:
        assert zlib.decompressobj(-15).decompress(payload + TAIL) == b"abc" * 100


def test_small_messages_are_sent_plain():
    p = engine(options=DeflateOptions(min_size=64))
    assert p.frame_message("short") == frames.encode(frames.OP_TEXT, b"short")
    assert written(p.frame_message("x" * 64))[0][1] is True
    assert Protocol(1 << 20).frame_message("x" * 1000) == frames.encode(frames.OP_TEXT, b"x" * 1000)


@pytest.mark.parametrize("bits", range(8, 16))
def test_window_bits_are_respected(bits):
    # A client inflating with exactly the negotiated window decodes everything.
    p = engine(f"permessage-deflate; server_max_window_bits={bits}",
               options=DeflateOptions(min_size=0, server_max_window_bits=15))
    assert p.deflate.params.server_max_window_bits == bits
    inflater = zlib.decompressobj(-bits)
    data = bytes(range(256)) * 200 + b"tail" * 1000
    for _ in range(3):
        payload = written(p.frame_message(data))[0][3]
        assert inflater.decompress(payload + TAIL) == data


# -- broadcast: compressed once, mixed with direct sends -------------------------------


def test_shared_frames_are_the_same_bytes_for_every_connection():
    shared = SharedDeflater(DeflateOptions(min_size=0))
    message = b'{"event": "tick", "rows": [' + b"1, 2, 3, " * 200 + b"]}"
    frame_bytes = shared.frame(frames.OP_TEXT, message)
    assert shared.compressions == 1
    (fin, rsv1, opcode, payload), = written(frame_bytes)
    assert (fin, rsv1, opcode) == (True, True, TEXT)
    for bits in range(shared.window_bits, 16):  # any client whose window is at least the shared one
        assert zlib.decompressobj(-bits).decompress(payload + TAIL) == message
    # A client that already inflated other messages (context takeover) decodes it too.
    c = Client()
    c.inflate(c.compress(b"earlier message " * 20))
    assert c.inflate(payload) == message
    assert negotiate("permessage-deflate").accepts_shared(shared.window_bits)
    assert not negotiate("permessage-deflate; server_max_window_bits=10").accepts_shared(shared.window_bits)


def test_shared_deflater_declines_small_and_incompressible_messages():
    shared = SharedDeflater(DeflateOptions(min_size=100))
    assert shared.frame(frames.OP_TEXT, b"x" * 99) is None
    assert shared.frame(frames.OP_BINARY, bytes(range(256))) is None  # would grow
    assert shared.frame(frames.OP_TEXT, b"x" * 100) is not None


def test_direct_sends_stay_valid_around_shared_frames():
    # A client with context takeover gets: direct, shared, direct, shared, shared, direct.
    # The direct compressor must forget its history after a shared frame.
    p = engine()
    shared = SharedDeflater(DeflateOptions(min_size=0))
    c = Client()
    direct = b'{"event": "said", "text": "' + b"direct message " * 30 + b'"}'
    broadcast = b'{"event": "tick", "text": "' + b"shared message " * 30 + b'"}'
    got = []
    for kind in ["d", "s", "d", "s", "s", "d", "d"]:
        if kind == "d":
            payload = written(p.frame_message(direct))[0][3]
        else:
            payload = written(shared.frame(frames.OP_BINARY, broadcast))[0][3]
            p.shared_frame_sent()
        got.append(c.inflate(payload))
    assert got == [direct, broadcast, direct, broadcast, broadcast, direct, direct]


def test_without_the_reset_a_shared_frame_would_corrupt_the_stream():
    # Why shared_frame_sent exists: the same sequence without it decodes wrong.
    p = engine()
    shared = SharedDeflater(DeflateOptions(min_size=0))
    c = Client()
    direct = b"direct message " * 30
    c.inflate(written(p.frame_message(direct))[0][3])
    c.inflate(written(shared.frame(frames.OP_BINARY, b"shared message " * 30))[0][3])
    try:
        result = c.inflate(written(p.frame_message(direct))[0][3])
    except zlib.error:
        result = None
    assert result != direct


# -- the engine's properties hold on compressed streams --------------------------------


@settings(max_examples=200, deadline=None)
@given(messages=st.lists(st.tuples(st.booleans(), st.binary(max_size=300), st.integers(1, 4)), max_size=6),
       header=st.sampled_from(["permessage-deflate", "permessage-deflate; client_no_context_takeover",
                               "permessage-deflate; server_max_window_bits=9"]),
       size=st.sampled_from([None, 0, 16, 200, 1 << 20]), cut=st.integers(1, 50))
def test_compressed_streams_match_the_plain_model(messages, header, size, cut):
    c = Client(takeover="client_no" not in header)
    stream = b""
    want = []
    for compressed, data, fragments in messages:
        stream += c.message(BINARY, data, fragments) if compressed else frame(BINARY, data)
        want.append(data)
    p = engine(header, size)
    events = []
    for i in range(0, len(stream), cut):
        events += feed(p, stream[i:i + cut])[0]
    p.receive_data(b"")
    events += p.events_received()
    fitting = []
    for data in want:
        if size is not None and len(data) > size:
            break
        fitting.append(Message(data))
    assert [e for e in events if type(e) is Message] == fitting
    assert type(events[-1]) is Close and events[-1].code == (1009 if len(fitting) < len(want) else 1006)
    check(stream, size, range(cut, len(stream), cut), deflate=negotiate(header, DeflateOptions(min_size=0)))


# -- the fuzz corpus, replayed with the fuzz target's permessage-deflate choice ----------

FUZZ = Path(__file__).resolve().parent / "fuzz"
CORPUS = sorted((FUZZ / "corpus").iterdir())


def test_corpus_has_compressed_seeds():
    assert len([p for p in CORPUS if p.name.startswith("seed-z-")]) >= 20, "python tests/fuzz/make_corpus.py"


@pytest.mark.parametrize("path", CORPUS, ids=[p.name for p in CORPUS])
def test_corpus_input_with_deflate(path):
    from protocol_oracle import DEFLATES

    data = path.read_bytes()
    sizes = (None, 0, 1, 16, 125, 126, 65535, 65536, 64 * 1024 + 1)  # fuzz_protocol.SIZES
    size = sizes[data[0] % len(sizes)] if data else None
    step = (data[1] % 7) + 1 if len(data) > 1 else 1
    deflate = DEFLATES[(data[1] >> 3) % len(DEFLATES)] if len(data) > 1 else None
    stream = data[2:]
    check(stream, size, range(step, len(stream), step), deflate=deflate)
    for other in DEFLATES[1:]:  # every input under every negotiated variant
        check(stream, size, range(1, len(stream)), deflate=other)


def test_compressed_seeds_do_what_their_names_say():
    from protocol_oracle import DEFLATES, run

    def outcome(name):
        data = (FUZZ / "corpus" / f"seed-{name}").read_bytes()
        sizes = (None, 0, 1, 16, 125, 126, 65535, 65536, 64 * 1024 + 1)
        events, _, _ = run(data[2:], sizes[data[0] % len(sizes)], (), DEFLATES[data[1] >> 3])
        return [e.data for e in events if type(e) is Message], events[-1].code

    assert outcome("z-text") == (["héllo wörld " * 20], 1006)
    assert outcome("z-takeover") == (["repeat " * 30] * 2, 1006)
    assert outcome("z-fragmented-ping-between") == ([bytes(300)], 1006)
    assert outcome("z-bomb-over-limit")[1] == 1009
    assert outcome("z-small-limit")[1] == 1009
    assert outcome("z-rsv1-continuation")[1] == 1002
    assert outcome("z-rsv1-ping")[1] == 1002
    assert outcome("z-invalid-data")[1] == 1007
    assert outcome("z-invalid-utf8")[1] == 1007
    assert outcome("z-window-8") == ([b"abcabcabc" * 50], 1006)
    assert outcome("z-bfinal") == (["final block" * 10, "next"], 1006)
    assert outcome("z-empty") == (["", b""], 1006)


def test_shared_deflater_compresses_ring_frames():
    shared = SharedDeflater(DeflateOptions(min_size=10))
    text = ("ring entry " * 40).encode()
    got = written(shared.compress_frame(frames.encode(frames.OP_TEXT, text)))
    assert [(fin, rsv1, op) for fin, rsv1, op, _ in got] == [(True, True, TEXT)]
    assert zlib.decompressobj(-shared.window_bits).decompress(got[0][3] + TAIL) == text
    big = b"b" * 70000  # a 64-bit length
    assert zlib.decompressobj(-15).decompress(
        written(shared.compress_frame(frames.encode(frames.OP_BINARY, big)))[0][3] + TAIL) == big
    assert shared.compress_frame(frames.encode(frames.OP_TEXT, b"short")) is None
    assert shared.compress_frame(frames.encode(frames.OP_PING, b"p" * 50)) is None
    assert shared.compress_frame(frames.encode(frames.OP_TEXT, text, fin=False)) is None
    assert shared.compressions == 2


def test_connections_with_equal_parameters_share_options():
    a = engine("permessage-deflate; client_max_window_bits", options=OPTIONS)
    b = engine("permessage-deflate; server_no_context_takeover", options=OPTIONS)
    c = engine("permessage-deflate; server_max_window_bits=10", options=OPTIONS)
    assert a.deflate.shared_options == b.deflate.shared_options == OPTIONS
    assert c.deflate.shared_options.server_max_window_bits == 10 and c.deflate.shared_options != OPTIONS


def test_configure():
    from uwsgi_ws.deflate import configure

    assert configure(None) is None and configure(False) is None
    assert configure("deflate", level=1).level == 1
    with pytest.raises(ValueError, match="'deflate' or None"):
        configure("gzip")


@pytest.mark.parametrize("option", ["compression_level", "compression_min_size", "max_message_size"])
def test_a_route_refuses_the_extensions_options_saying_where_they_go(option):
    """Per route compression is on or off only: an extension option given to `route` was
    passed on to Flask's Rule ("unexpected keyword argument"), not saying what to do."""
    from flask import Flask

    from uwsgi_ws import WebSocket

    ws = WebSocket(Flask(__name__))
    with pytest.raises(TypeError, match=rf"{option} is an option of the whole extension.*WebSocket\(app, {option}="):
        ws.route("/x", **{option: 9})
    ws.route("/y", compression=None)(lambda conn: None)  # on/off per route stays
