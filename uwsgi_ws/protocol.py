"""The WebSocket protocol engine: RFC 6455, server side, after the handshake.

Sans-I/O: bytes go in with `receive_data`, events come out of
`events_received`, bytes to write come out of `data_to_send`. It knows nothing
of sockets, uWSGI or Flask. Frame parsing, unmasking and incremental UTF-8
validation are wsproto's frame layer; this module adds the connection state
machine, message reassembly, the message size limit, automatic pongs and the
closing handshake. With permessage-deflate negotiated (`deflate.DeflateParams`)
inbound messages are inflated within the size limit and `frame_message`
compresses outbound ones (uwsgi_ws/deflate.py). One instance per connection;
not thread-safe (the caller serialises access).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple, Union

from wsproto.extensions import Extension
from wsproto.frame_protocol import (
    CloseReason,
    FrameDecoder,
    FrameProtocol,
    Opcode,
    ParseFailed,
)

from . import frames
from .deflate import DeflateParams, PerMessageDeflate


class CloseCode(enum.IntEnum):
    """The close codes RFC 6455 section 7.4.1 defines (and the IANA registry adds),
    as websockets' ``frames.CloseCode``. Members are ints: ``conn.close(CloseCode.GOING_AWAY)``."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RCVD = 1005  # reporting only: never on the wire
    ABNORMAL_CLOSURE = 1006  # reporting only: the transport was lost
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013


# The engine's names for them.
NORMAL = CloseCode.NORMAL_CLOSURE
GOING_AWAY = CloseCode.GOING_AWAY
PROTOCOL_ERROR = CloseCode.PROTOCOL_ERROR
NO_STATUS = CloseCode.NO_STATUS_RCVD
ABNORMAL = CloseCode.ABNORMAL_CLOSURE
INVALID_DATA = CloseCode.INVALID_DATA
POLICY_VIOLATION = CloseCode.POLICY_VIOLATION
MESSAGE_TOO_BIG = CloseCode.MESSAGE_TOO_BIG
INTERNAL_ERROR = CloseCode.INTERNAL_ERROR
SERVICE_RESTART = CloseCode.SERVICE_RESTART
TRY_AGAIN_LATER = CloseCode.TRY_AGAIN_LATER


class State(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"  # we sent a close frame and wait for the peer's
    CLOSED = "closed"


@dataclass(frozen=True)
class Message:
    """A complete data message: `str` for text, `bytes` for binary."""

    data: Union[str, bytes]


@dataclass(frozen=True)
class Ping:
    payload: bytes


@dataclass(frozen=True)
class Pong:
    payload: bytes


@dataclass(frozen=True)
class Close:
    """The connection is closed (handshake done, failed, or transport lost)."""

    code: int
    reason: str


Event = Union[Message, Ping, Pong, Close]

# The engine's lists (frames to write, events, a message's parts) and the frame
# decoder are made when first needed: an idle connection holds none of them. The
# empty lists share this tuple (three empty lists are 0.2 KiB a connection; wsproto's
# FrameProtocol with its decoders, buffer and parser generator about 0.8 KiB).
_EMPTY: Any = ()


class _LimitedDecoder(FrameDecoder):
    """wsproto's frame decoder, judging each data frame by its header before any
    of its payload is read:

    - the fragment order (RFC 6455 section 5.4): a new data message while one
      is in progress, or a continuation with none, fails with 1002 at the
      header. wsproto's message decoder says the same, but only once the
      frame's first payload bytes have gone through the extensions: with
      permessage-deflate a later frame's payload would be inflated with the
      unfinished message's context first, and its DEFLATE error (1007) seen or
      not depending on how many of its bytes one read brought (fuzz finding,
      tests/fuzz/corpus/regress-interleaved-compressed-text);
    - the size: a message is refused as soon as a header announces more bytes
      than the limit allows. A compressed message is bounded by its inflated
      size (deflate.py); its wire size only by the limit plus DEFLATE's
      worst-case growth."""

    def __init__(self, max_message_size: Optional[int], deflate: Optional[PerMessageDeflate] = None) -> None:
        super().__init__(client=False, extensions=[deflate] if deflate is not None else [])
        self.max_message_size = max_message_size
        self._deflate = deflate
        self._message_bytes = 0
        self._in_message = False  # a data message's final frame has not been seen

    def parse_header(self) -> bool:
        if not super().parse_header():
            return False
        header = self.header
        assert header is not None
        if header.opcode.iscontrol():
            return True
        if header.opcode is Opcode.CONTINUATION:
            if not self._in_message:
                raise ParseFailed("unexpected CONTINUATION", CloseReason.PROTOCOL_ERROR)
        elif self._in_message:
            raise ParseFailed(f"expected CONTINUATION, got {header.opcode!r}", CloseReason.PROTOCOL_ERROR)
        self._in_message = not header.fin
        if self.max_message_size is not None:
            if header.opcode is not Opcode.CONTINUATION:
                self._message_bytes = 0
            self._message_bytes += header.payload_len
            limit = self.max_message_size
            if self._deflate is not None and self._deflate.inbound_compressed:
                limit += (limit >> 10) + 64  # stored blocks: 5 bytes per 64 KiB at worst
            if self._message_bytes > limit:
                raise ParseFailed(
                    f"message of at least {self._message_bytes} bytes exceeds "
                    f"the limit of {self.max_message_size} bytes",
                    CloseReason.MESSAGE_TOO_BIG,
                )
        return True


def check_close_code(code: int, reason: str = "") -> None:
    """Refuse what may not go in a close frame: the same rule the decoder applies to
    the peer's close frames (RFC 6455 section 7.4; wsproto's list of defined codes):
    1000-1003 and 1007-1013 defined, 1004 reserved, 1005, 1006 and 1015 never on
    the wire, 1014 and 1016-2999 not defined for this engine, 3000-4999 for
    libraries and applications.

    Raises:
        ValueError: naming the rule (a reason that is not valid Unicode too); TypeError:
            `code` not an int or `reason` not a str.
    """
    if not isinstance(code, int) or isinstance(code, bool):
        raise TypeError(f"a close code is an int, not {type(code).__name__}")
    if not isinstance(reason, str):
        raise TypeError(f"a close reason is a str, not {type(reason).__name__}")
    frames.utf8(reason, "a close reason")  # ValueError for a lone surrogate
    if code in (1004, 1005, 1006, 1015):
        raise ValueError(f"close code {code} may not be sent in a close frame (RFC 6455 section 7.4.1: "
                         "1004 is reserved, 1005, 1006 and 1015 are for reporting only)")
    if not (1000 <= code <= 1013 or 3000 <= code <= 4999):
        raise ValueError(f"close code {code} is not sendable: use 1000-1003, 1007-1013 or 3000-4999 "
                         "(RFC 6455 section 7.4.2)")


class Protocol:
    """Server side of one WebSocket connection after the opening handshake.

    Args:
        max_message_size: bound in bytes on a reassembled data message, inflated
            size for a compressed one (close 1009 above it); None: unbounded.
        deflate: the permessage-deflate parameters the handshake negotiated
            (handshake.negotiate_deflate), or None.

    Not thread-safe.
    """

    def __init__(self, max_message_size: Optional[int] = 1 << 20,
                 deflate: Optional[DeflateParams] = None) -> None:
        #: The permessage-deflate codec, or None when not negotiated.
        self.deflate = PerMessageDeflate(deflate, max_message_size) if deflate is not None else None
        self._max_message_size = max_message_size
        self._frames: Optional[FrameProtocol] = None  # made by the first receive_data
        self.state = State.OPEN
        self.close_code: Optional[int] = None
        self.close_reason = ""
        self.close_sent = False
        self.close_received = False
        #: Who sent the first close frame: "server", "client", or None (neither yet).
        self.close_initiator: Optional[str] = None
        self._out: List[bytes] = _EMPTY  # each made at its first item (see _EMPTY)
        self._events: List[Event] = _EMPTY
        self._parts: List[Any] = _EMPTY
        self._failure: Optional[Tuple[int, str]] = None
        self._sent: Optional[Tuple[int, str]] = None

    # -- input ------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the socket; `b""` means the peer closed TCP."""
        if not data:
            self._receive_eof()
            return
        if self.state is State.CLOSED or self._failed():
            return  # after a failure or the closing handshake, input is discarded
        decoder = self._frames
        if decoder is None:
            extensions: List[Extension] = [self.deflate] if self.deflate is not None else []
            decoder = self._frames = FrameProtocol(client=False, extensions=extensions)
            decoder._frame_decoder = _LimitedDecoder(self._max_message_size, self.deflate)
        decoder.receive_bytes(data)
        try:
            for frame in decoder.received_frames():
                self._handle(frame)
                if self._closed():
                    break
        except ParseFailed as exc:
            self.fail(int(exc.code), str(exc))

    def _handle(self, frame: Any) -> None:
        opcode = frame.opcode
        if opcode is Opcode.PING:
            if self.state is State.OPEN:
                self._queue(frames.encode(frames.OP_PONG, bytes(frame.payload)))
            self._event(Ping(bytes(frame.payload)))
        elif opcode is Opcode.PONG:
            self._event(Pong(bytes(frame.payload)))
        elif opcode is Opcode.CLOSE:
            code, reason = frame.payload
            self.close_received = True
            if self.close_initiator is None:
                self.close_initiator = "client"
            if self.state is State.OPEN:
                # Echo the peer's code (none for 1005), then the handshake is done.
                self._send_close(None if code == NO_STATUS else int(code), "")
            self._finish(int(code), reason)
        elif self.state is State.OPEN:
            parts = self._parts
            if parts:
                parts.append(frame.payload)
            else:
                parts = self._parts = [frame.payload]
            if frame.message_finished:
                self._parts = _EMPTY
                if opcode is Opcode.TEXT:
                    data: Union[str, bytes] = parts[0] if len(parts) == 1 else "".join(parts)
                else:
                    data = bytes(parts[0]) if len(parts) == 1 else b"".join(parts)
                self._event(Message(data))

    def _receive_eof(self) -> None:
        if self.state is not State.CLOSED:
            self._finish(ABNORMAL, "connection lost without a close frame")

    # -- output -----------------------------------------------------------

    def close(self, code: int = NORMAL, reason: str = "") -> None:
        """Start the closing handshake (no-op unless open).

        Raises:
            ValueError: `code` may not be sent in a close frame (see `check_close_code`),
                or `reason` is not a str.
        """
        check_close_code(code, reason)
        if self.state is State.OPEN:
            self._send_close(code, reason)
            self.state = State.CLOSING

    def fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 7.1.7): send a close frame, accept no more data.

        The connection's close code becomes `code` whatever the peer answers.
        Raises ValueError as `close` does.
        """
        check_close_code(code, reason)
        if self._failure is None:
            self._failure = (int(code), reason)
        if self.state is State.OPEN:
            self._send_close(code, reason)
            self.state = State.CLOSING

    def abort(self, reason: str = "connection lost without a close frame") -> None:
        """The transport is gone or the closing handshake timed out: closed, code 1006."""
        if self.state is not State.CLOSED:
            self._finish(ABNORMAL, reason)

    def ping(self, payload: bytes = b"") -> None:
        """Queue a ping. Raises ValueError above 125 bytes (RFC 6455 section 5.5)."""
        if len(payload) > 125:
            raise ValueError(f"a ping payload is at most 125 bytes (RFC 6455 section 5.5), not {len(payload)}")
        if self.state is State.OPEN:
            self._queue(frames.encode(frames.OP_PING, bytes(payload)))

    def frame_message(self, data: Union[str, bytes, bytearray, memoryview]) -> bytes:
        """The frame for a data message: text for `str`, binary for bytes-like;
        compressed when permessage-deflate is negotiated and the payload has at
        least `compression_min_size` bytes.

        With context takeover each compressed message depends on the previous
        ones: write the frames in the order this returns them (call it under
        the lock that orders the connection's writes). Thread-safety: outbound
        state only, independent of `receive_data`.
        """
        if isinstance(data, str):
            opcode, payload = frames.OP_TEXT, frames.utf8(data)
        else:
            opcode, payload = frames.OP_BINARY, bytes(data)
        if self.deflate is None:
            return frames.encode(opcode, payload)
        return self.deflate.encode(opcode, payload)

    def shared_frame_sent(self) -> None:
        """A frame compressed once for many connections (deflate.SharedDeflater)
        was queued: see `PerMessageDeflate.shared_frame_sent`. Same ordering
        rule as `frame_message`."""
        if self.deflate is not None:
            self.deflate.shared_frame_sent()

    def data_to_send(self) -> bytes:
        """Bytes the engine wants written (pongs, close frames), in order."""
        if not self._out:
            return b""
        out, self._out = self._out, _EMPTY
        return out[0] if len(out) == 1 else b"".join(out)

    def events_received(self) -> List[Event]:
        """The events since the last call, oldest first (a new list)."""
        events, self._events = self._events, _EMPTY
        return events if events else []

    # -- internals --------------------------------------------------------

    def _send_close(self, code: Optional[int], reason: str) -> None:
        self._queue(frames.encode(frames.OP_CLOSE, frames.close_payload(code, reason)))
        self.close_sent = True
        if self.close_initiator is None:
            self.close_initiator = "server"
        self._sent = (int(NO_STATUS if code is None else code), reason)

    def _closed(self) -> bool:
        """The state read anew (a method: `_handle` changes it under mypy's narrowing)."""
        return self.state is State.CLOSED

    @property
    def failed(self) -> bool:
        """True once the connection was failed (protocol error, size, keepalive)."""
        return self._failure is not None

    @property
    def pending_close(self) -> Tuple[int, str]:
        """(code, reason) the connection is closing with: final once closed, else the
        failure or the close frame we sent; (1006, ...) if nothing is known yet."""
        if self.state is State.CLOSED:
            return int(ABNORMAL if self.close_code is None else self.close_code), self.close_reason
        return self._failure or self._sent or (int(ABNORMAL), "")

    def _failed(self) -> bool:
        return self._failure is not None

    def _finish(self, code: int, reason: str) -> None:
        if self._failure is not None:
            code, reason = self._failure
        self.state = State.CLOSED
        code = int(code)  # a plain int for callers (str() of an IntEnum differs before 3.11)
        self.close_code, self.close_reason = code, reason
        self._event(Close(code, reason))

    def _queue(self, data: bytes) -> None:
        """Append a frame to write (making the list at the first: see _EMPTY)."""
        if self._out:
            self._out.append(data)
        else:
            self._out = [data]

    def _event(self, event: Event) -> None:
        """Append an event (making the list at the first: see _EMPTY)."""
        if self._events:
            self._events.append(event)
        else:
            self._events = [event]
