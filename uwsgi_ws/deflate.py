"""permessage-deflate (RFC 7692): options, negotiated parameters and the codec.

Three pieces, all built on the standard library's zlib:

- `DeflateOptions`: what the server is willing to do (the `compression_*`
  settings). `handshake.negotiate_deflate` turns a client's offers and these
  options into a `DeflateParams` (what one connection agreed on).
- `PerMessageDeflate`: one connection's codec, plugged into the engine
  (`protocol.Protocol`) as a wsproto frame-layer extension. Inbound it inflates
  with a bound: a message whose inflated size passes `max_message_size` is
  refused with 1009 as soon as it does, before the rest is inflated (a zip
  bomb costs at most the limit); RSV1 is accepted only on the first frame of
  a data message (RFC 7692 section 6.1; 1002 otherwise). Outbound it
  compresses direct sends, with context takeover unless the client asked for
  `server_no_context_takeover` (best ratio for a connection's own stream).
- `SharedDeflater`: compresses a broadcast once for every subscriber. Each
  message is compressed with no reference to earlier ones (the compressor is
  reset with a full flush after it), so the same bytes are valid on any
  connection whose negotiated `server_max_window_bits` is at least the
  shared window; `PerMessageDeflate.shared_frame_sent` keeps a connection's
  own context-takeover stream right after such a frame.

Wire format of a compressed message (RFC 7692 section 7.2.1): the raw DEFLATE
stream of the payload flushed with an empty stored block, whose last four
bytes (00 00 ff ff) are removed; RSV1 set on the first frame only.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from typing import Optional, Union

from wsproto.extensions import Extension
from wsproto.frame_protocol import (
    CloseReason,
    FrameDecoder,
    FrameProtocol,
    Opcode,
    ParseFailed,
    RsvBits,
)

from . import frames

log = logging.getLogger("uwsgi_ws.deflate")

NAME = "permessage-deflate"
_TAIL = b"\x00\x00\xff\xff"
_NO_RSV = RsvBits(False, False, False)
_RSV1 = RsvBits(True, False, False)


def _bits_ok(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 8 <= value <= 15


@dataclass(frozen=True)
class DeflateOptions:
    """The server's permessage-deflate settings (one value for a route or app).

    Attributes:
        min_size: payloads shorter than this many bytes are sent uncompressed
            (compressing a short message costs CPU and saves nothing).
        level: zlib compression level, 0 (store) to 9 (best); 6 is zlib's default.
        server_max_window_bits: the largest LZ77 window (2**bits bytes, 8-15)
            the server compresses with; broadcasts are compressed with it.
        client_max_window_bits: the window (8-15) asked of clients that allow
            it (less memory for both sides' inflate/deflate state).
        mem_level: zlib memLevel (1-9) of the server's compressors: memory
            per compressor is about 2**(bits+2) + 2**(mem_level+9) bytes.

    The defaults are `websockets`' (12-bit windows, memLevel 5: about 32 KiB
    per compressor instead of zlib's 256 KiB, for the same ratio on messages
    of a few KiB).

    Raises:
        ValueError: a setting out of range (the message says the range).
    """

    min_size: int = 128
    level: int = 6
    server_max_window_bits: int = 12
    client_max_window_bits: int = 12
    mem_level: int = 5

    def __post_init__(self) -> None:
        if not isinstance(self.min_size, int) or self.min_size < 0:
            raise ValueError(f"compression_min_size must be an integer >= 0 (bytes), not {self.min_size!r}")
        if not isinstance(self.level, int) or not 0 <= self.level <= 9:
            raise ValueError(f"compression_level must be an integer from 0 to 9, not {self.level!r}")
        for name in ("server_max_window_bits", "client_max_window_bits"):
            if not _bits_ok(getattr(self, name)):
                raise ValueError(f"compression_{name} must be an integer from 8 to 15, "
                                 f"not {getattr(self, name)!r}")
        if not isinstance(self.mem_level, int) or not 1 <= self.mem_level <= 9:
            raise ValueError(f"compression_mem_level must be an integer from 1 to 9, not {self.mem_level!r}")
        # Hashed once: a broadcast fan-out groups its subscribers by these.
        object.__setattr__(self, "_hash", hash((self.min_size, self.level, self.server_max_window_bits,
                                                self.client_max_window_bits, self.mem_level)))

    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined,no-any-return]


@dataclass(frozen=True)
class DeflateParams:
    """What one connection negotiated (RFC 7692 section 7.1), plus the server's
    compression settings for it.

    Attributes:
        server_no_context_takeover: the server resets its compressor after each message.
        client_no_context_takeover: the client does; the server drops its
            inflate state between messages.
        server_max_window_bits: the window the server compresses with (8-15).
        client_max_window_bits: the window the server inflates with (8-15).
        response: the Sec-WebSocket-Extensions value of the 101 answer.
        options: the server's settings (min size, level, memory).
    """

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int = 15
    client_max_window_bits: int = 15
    response: str = NAME
    options: DeflateOptions = DeflateOptions()

    def accepts_shared(self, window_bits: int) -> bool:
        """True if a frame compressed by a `SharedDeflater` with this window
        can be sent on this connection as is."""
        return window_bits <= self.server_max_window_bits


def _compressor(level: int, window_bits: int, mem_level: int) -> zlib._Compress:
    if window_bits == 8:
        # zlib refuses a 256-byte raw window (since 1.2.9). Run-length matches
        # only (distance 1) in a 512-byte window fit any window.
        return zlib.compressobj(level, zlib.DEFLATED, -9, mem_level, zlib.Z_RLE)
    return zlib.compressobj(level, zlib.DEFLATED, -window_bits, mem_level)


class PerMessageDeflate(Extension):
    """One connection's permessage-deflate codec (a wsproto frame-layer extension).

    Inbound methods are called by the engine's frame decoder; `encode` and
    `shared_frame_sent` by whoever orders the connection's writes. Not
    thread-safe: inbound calls must be serialised with each other, and
    outbound calls with each other (the two sides share no state).

    Args:
        params: the negotiated parameters.
        max_message_size: bound on an inflated message in bytes (None: unbounded).
    """

    name = NAME

    def __init__(self, params: DeflateParams, max_message_size: Optional[int]) -> None:
        self.params = params
        self.max_message_size = max_message_size
        self._inflater: Optional[zlib._Decompress] = None
        self._deflater: Optional[zlib._Compress] = None
        self._compressed_in = False  # the message being received has RSV1
        self._inflated = 0
        self._compressed_bytes = 0
        self._reset_out = False  # a shared frame went out since the last compressed direct send
        self._shared: Optional[DeflateOptions] = None
        #: Messages compressed by `encode` (direct sends); for tests and metrics.
        self.compressed_messages = 0

    # -- wsproto's Extension interface --------------------------------------

    def enabled(self) -> bool:
        return True

    def offer(self) -> Union[bool, str]:
        return False  # server side only: offers are handled by handshake.negotiate_deflate

    @property
    def inbound_compressed(self) -> bool:
        """True while a compressed (RSV1) message is being received."""
        return self._compressed_in

    def frame_inbound_header(
        self,
        proto: Union[FrameDecoder, FrameProtocol],
        opcode: Opcode,
        rsv: RsvBits,
        payload_length: int,
    ) -> Union[CloseReason, RsvBits]:
        """Check RSV1 (RFC 7692 section 6.1); raise ParseFailed (1002) where it may not be set."""
        if opcode.iscontrol():
            if rsv.rsv1:
                raise ParseFailed("RSV1 set on a control frame (RFC 7692 section 6.1)",
                                  CloseReason.PROTOCOL_ERROR)
            return _NO_RSV
        if opcode is Opcode.CONTINUATION:
            if rsv.rsv1:
                raise ParseFailed("RSV1 set on a continuation frame: only the first frame of a "
                                  "compressed message carries it (RFC 7692 section 6.1)",
                                  CloseReason.PROTOCOL_ERROR)
            return _NO_RSV
        # The first frame of a data message (a new one while another is in
        # progress is refused with 1002 by the engine's decoder right after
        # this, protocol._LimitedDecoder, before any of its payload reaches
        # the inflater).
        self._compressed_in = rsv.rsv1
        self._inflated = 0
        self._compressed_bytes = 0
        return _RSV1 if rsv.rsv1 else _NO_RSV

    def frame_inbound_payload_data(
        self, proto: Union[FrameDecoder, FrameProtocol], data: bytes
    ) -> Union[bytes, CloseReason]:
        """Inflate a chunk of a compressed message, within the size bound."""
        opcode = proto.effective_opcode  # type: ignore[union-attr]
        if not self._compressed_in or opcode is None or opcode.iscontrol():
            return data
        self._compressed_bytes += len(data)
        return self._inflate(data)

    def frame_inbound_complete(
        self, proto: Union[FrameDecoder, FrameProtocol], fin: bool
    ) -> Union[bytes, CloseReason, None]:
        """At the end of a compressed message: inflate the removed tail (00 00 ff ff)."""
        opcode = proto.effective_opcode  # type: ignore[union-attr]
        if opcode is None or opcode.iscontrol() or not fin:
            return None
        if not self._compressed_in:
            return None
        self._compressed_in = False
        if not self._compressed_bytes:
            # No DEFLATE data at all: an empty message. (00 00 ff ff alone is
            # half a stored-block header: inflating it would garble the next message.)
            return b""
        out = self._inflate(_TAIL)
        inflater = self._inflater
        if self.params.client_no_context_takeover or (inflater is not None and inflater.eof):
            # No context to keep (or the client ended its stream with BFINAL,
            # RFC 7692 section 7.2.3.4): the next message starts afresh.
            self._inflater = None
        return out

    def _inflate(self, data: bytes) -> bytes:
        inflater = self._inflater
        if inflater is None:
            inflater = self._inflater = zlib.decompressobj(-self.params.client_max_window_bits)
        if inflater.eof:
            return b""  # after a final block (BFINAL) the rest of the message is ignored
        limit = self.max_message_size
        try:
            if limit is None:
                out = inflater.decompress(data)
            else:
                room = limit - self._inflated
                # One byte more than the room tells "too big" without inflating further.
                out = inflater.decompress(data, room + 1)
                if len(out) > room:
                    raise ParseFailed(
                        f"compressed message inflates to more than the limit of {limit} bytes",
                        CloseReason.MESSAGE_TOO_BIG,
                    )
        except zlib.error as exc:
            raise ParseFailed(f"invalid compressed data: {exc}",
                              CloseReason.INVALID_FRAME_PAYLOAD_DATA) from None
        self._inflated += len(out)
        return out

    # -- outbound ----------------------------------------------------------

    def encode(self, opcode: int, payload: bytes) -> bytes:
        """The frame for one data message: compressed (RSV1) when `payload` has
        at least `min_size` bytes, else plain.

        With context takeover the compressor remembers earlier messages, so
        frames must be written in the order this method returns them (call it
        under the lock that orders the connection's writes).

        Args:
            opcode: frames.OP_TEXT or frames.OP_BINARY.
            payload: the message (UTF-8 bytes for text).
        Returns:
            A complete unmasked frame.
        """
        options = self.params.options
        if len(payload) < options.min_size:
            return frames.encode(opcode, payload)
        deflater = self._deflater
        prefix = b""
        if deflater is None:
            deflater = self._deflater = _compressor(
                options.level, self.params.server_max_window_bits, options.mem_level)
        elif self._reset_out:
            # The client's window now holds a shared frame's text this
            # compressor never saw: forget the history (an empty stored block).
            prefix = deflater.flush(zlib.Z_FULL_FLUSH)
        self._reset_out = False
        no_takeover = self.params.server_no_context_takeover
        body = deflater.compress(payload) + deflater.flush(zlib.Z_FULL_FLUSH if no_takeover else zlib.Z_SYNC_FLUSH)
        data = prefix + body[:-4]  # a flush always ends with 00 00 ff ff
        self.compressed_messages += 1
        return frames.encode(opcode, data, rsv1=True)

    @property
    def shared_options(self) -> DeflateOptions:
        """The `SharedDeflater` settings whose frames this connection can take as
        they are: the server's, with the negotiated window. Connections with
        equal `shared_options` share one compressed copy of each broadcast, and
        get the same object (interned: a fan-out groups them by identity)."""
        shared = self._shared
        if shared is None:
            o = self.params.options
            shared = self._shared = shared_options(o.min_size, o.level, self.params.server_max_window_bits,
                                                   o.mem_level)
        return shared

    def shared_frame_sent(self) -> None:
        """A `SharedDeflater` frame was queued on this connection: the next
        compressed direct send must not refer to earlier messages. Call in
        write order, as `encode`."""
        self._reset_out = self._deflater is not None and not self.params.server_no_context_takeover


_INTERNED: dict[tuple[int, int, int, int], DeflateOptions] = {}


def shared_options(min_size: int, level: int, window_bits: int, mem_level: int) -> DeflateOptions:
    """The one `DeflateOptions` object for these shared-compression settings
    (equal settings, same object; thread-safe: a race makes two equal objects,
    which only costs one more compression per message for a while)."""
    key = (min_size, level, window_bits, mem_level)
    options = _INTERNED.get(key)
    if options is None:
        options = _INTERNED.setdefault(key, DeflateOptions(min_size=min_size, level=level,
                                                           server_max_window_bits=window_bits,
                                                           client_max_window_bits=window_bits, mem_level=mem_level))
    return options


class SharedDeflater:
    """Compresses broadcast messages once for all their subscribers.

    Every message is self-contained (full flush after each: no reference to
    earlier messages), so its bytes are valid on any connection with
    `DeflateParams.accepts_shared(window_bits)`. One compressor reused: not
    thread-safe (one per publishing process/thread).

    Args:
        options: level, window and memory settings; `min_size` is the threshold.
    """

    def __init__(self, options: DeflateOptions) -> None:
        self.options = options
        self.window_bits = options.server_max_window_bits
        self._deflater = _compressor(options.level, self.window_bits, options.mem_level)
        #: Messages compressed so far (a test counts one per broadcast).
        self.compressions = 0

    def compress(self, payload: Union[bytes, memoryview]) -> Optional[bytes]:
        """The compressed payload (RSV1 message body), or None when `payload`
        is shorter than `min_size` or does not get smaller (send it plain)."""
        if len(payload) < self.options.min_size:
            return None
        self.compressions += 1
        deflater = self._deflater
        body = deflater.compress(payload) + deflater.flush(zlib.Z_FULL_FLUSH)
        data = body[:-4]
        if len(data) >= len(payload):
            return None
        return data

    def compress_frame(self, frame: bytes) -> Optional[bytes]:
        """The compressed copy of a complete plain data frame (as the broadcast
        ring stores them), or None when it stays plain (see `compress`; control
        frames, fragments and already compressed frames stay as they are)."""
        if len(frame) < 2 or frame[0] & 0x70 or len(frame) - 2 < self.options.min_size:
            return None
        opcode, fin, payload = frames.parse(frame)
        if not fin or opcode not in (frames.OP_TEXT, frames.OP_BINARY):
            return None
        return self.frame(opcode, payload)

    def frame(self, opcode: int, payload: Union[bytes, memoryview]) -> Optional[bytes]:
        """A complete compressed frame (RSV1) for the message, or None (see `compress`)."""
        data = self.compress(payload)
        return None if data is None else frames.encode(opcode, data, rsv1=True)


def configure(compression: object, *, min_size: int = 128, level: int = 6, server_max_window_bits: int = 12,
              client_max_window_bits: int = 12, mem_level: int = 5) -> Optional[DeflateOptions]:
    """The server's permessage-deflate options from the `compression*` settings.

    Args:
        compression: "deflate" (negotiate permessage-deflate when the client
            offers it) or None / False (never).
        min_size, level, server_max_window_bits, client_max_window_bits, mem_level:
            see `DeflateOptions`.
    Returns:
        The options, or None when compression is off.
    Raises:
        ValueError: an unknown `compression` value or a setting out of range.
    """
    if compression is None or compression is False:
        return None
    if compression != "deflate":
        raise ValueError(f"compression must be 'deflate' or None (off), not {compression!r}")
    return DeflateOptions(min_size=min_size, level=level, server_max_window_bits=server_max_window_bits,
                          client_max_window_bits=client_max_window_bits, mem_level=mem_level)
