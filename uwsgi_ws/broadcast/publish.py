"""`publish()`: hand a message to the broadcast mule, from any process of the instance.

Runs everywhere (workers, spoolers, other mules); the mule side is
`uwsgi_ws.broadcast.mule`. A publish request is one message to the mule:

    b"UWS1" | flags u8 | channel_len u8 | channel (UTF-8) | payload

    flags: bit 0 (FLAG_BINARY) binary frame; bit 2 (FLAG_EVENT) the payload is
    a JSON object (UTF-8 text, ending with ``}``) of the event protocol
    (`uwsgi_ws.events`, docs/protocol.md): the mule appends the message's ring
    sequence number and the ring epoch to it, ``,"seq":<seq>,"epoch":"<epoch>"}``,
    before framing it once as a text frame. The ring record keeps the flag.

Inside the broadcast mule itself a publish goes straight to the ring: the
mule registers its appender with `set_local_sink` at start, so this module
never imports the mule.
"""

from __future__ import annotations

import struct
import time
from typing import Callable, Optional, Tuple, Union

from .. import _uwsgi, frames, metrics, settings
from ..exceptions import PublishError
from .ring import FLAG_BINARY, FLAG_EVENT, BroadcastRing

PREFIX = b"UWS1"
REQUEST = struct.Struct("<4sBB")
DEFAULT_MULE_MSG_SIZE = 65536
_EVENT_TAIL_MAX = len(b',"seq":,"epoch":""') + 20 + 20  # what the mule adds to an event payload

Data = Union[str, bytes, bytearray, memoryview]


def encode_request(data: Data, channel: Optional[str], event: bool = False) -> bytes:
    """The mule request for `data` on `channel` (layout above).

    Raises:
        TypeError: `data` is neither str nor bytes-like.
        PublishError: not valid Unicode, a bad channel name, or a malformed event.
    """
    if isinstance(data, str):
        try:
            flags, payload = 0, data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise PublishError(f"the text message is not valid Unicode (a lone surrogate at position {exc.start}): "
                               "publish valid str, or bytes for a binary message") from None
    elif isinstance(data, (bytes, bytearray, memoryview)):
        flags, payload = FLAG_BINARY, bytes(data)
    else:
        raise TypeError(f"publish() takes str (a text message) or bytes (binary), not {type(data).__name__}")
    try:
        chan = channel_bytes(None if channel == "" else channel)
    except ValueError as exc:
        raise PublishError(str(exc)) from None
    if event:
        if flags & FLAG_BINARY or not payload.startswith(b"{") or not payload.endswith(b"}"):
            raise PublishError("an event publish takes the text of a JSON object")
        flags |= FLAG_EVENT
    return REQUEST.pack(PREFIX, flags, len(chan)) + chan + payload


def decode_request(message: bytes) -> Tuple[str, int, bytes]:
    """(channel, flags, payload) of a publish request; ValueError if it is not one."""
    if len(message) < REQUEST.size or message[:4] != PREFIX:
        raise ValueError("not a uwsgi_ws publish request")
    _, flags, clen = REQUEST.unpack_from(message, 0)
    start = REQUEST.size
    return message[start:start + clen].decode("utf-8"), flags, message[start + clen:]


def channel_bytes(channel: Optional[str]) -> bytes:
    """A channel name as the ring stores it: UTF-8, at most 255 bytes; None (every
    connection) is b"". Any character may appear (NUL too).

    Raises:
        TypeError: not a str (or None).
        ValueError: not encodable as UTF-8 (lone surrogates) or over 255 bytes.
    """
    if channel is None:
        return b""
    if not isinstance(channel, str):
        raise TypeError(f"a channel name is a str (or None: every connection), not {type(channel).__name__}")
    try:
        raw = channel.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"channel name {channel[:40]!r} is not valid Unicode (a lone surrogate at position "
                         f"{exc.start}): a channel name must encode to UTF-8") from None
    if len(raw) > 255:
        raise ValueError(f"channel name {channel[:40]!r}... is {len(raw)} bytes in UTF-8: at most 255")
    return raw


def mule_msg_size() -> int:
    """uWSGI's --mule-msg-size (bytes; 65536 when unset or malformed)."""
    value = _uwsgi.option("mule-msg-size")
    try:
        return int(value) if value is not None else DEFAULT_MULE_MSG_SIZE
    except ValueError:
        return DEFAULT_MULE_MSG_SIZE


_ring: Optional[BroadcastRing] = None
#: Set by the broadcast mule in its own process: appends a request to the ring.
_local_sink: Optional[Callable[[bytes], None]] = None


def shared_ring() -> BroadcastRing:
    """This process's view of the broadcast ring (RingError naming the option when absent)."""
    global _ring
    if _ring is None:
        _ring = BroadcastRing.from_sharedarea()
    return _ring


def set_local_sink(sink: Callable[[bytes], None]) -> None:
    """Called once by the broadcast mule: publishes in its own process go to `sink`."""
    global _local_sink
    _local_sink = sink


def publish(data: Data, channel: Optional[str] = None, event: bool = False,
            sleep: Callable[[float], None] = time.sleep) -> int:
    """Broadcast `data` (str: text frame, bytes: binary) on `channel` (None: to every
    WebSocket of the instance).

    Args:
        data: the message.
        channel: the channel name (UTF-8, at most 255 bytes), or None.
        event: `data` is an event-protocol JSON object that the mule completes with
            its seq and epoch (see FLAG_EVENT above).
        sleep: how to wait between retries (the caller's runtime: a greenlet
            must not block its worker).

    Returns:
        The size of the request in bytes.

    Raises:
        PublishError: outside uWSGI, over a size limit, or the mule's queue stayed
            full (or no mule ran) for $UWSGI_WS_PUBLISH_TIMEOUT seconds (default 10);
            the message says what to configure. A message is never dropped silently.
        TypeError: `data` is not str or bytes-like.

    Blocks while the mule's queue is full (e.g. while the mule respawns).
    """
    try:
        return _publish(data, channel, event, sleep)
    except PublishError:
        metrics.local().add(metrics.PUBLISH_FAILED)
        raise


def _publish(data: Data, channel: Optional[str], event: bool, sleep: Callable[[float], None]) -> int:
    if not _uwsgi.available():
        raise PublishError(
            "publish() needs uWSGI: run the app under uwsgi with --master, --sharedarea 4096 "
            "and --mule=uwsgi_ws.mule:run"
        )
    uwsgi = _uwsgi.api()
    request = encode_request(data, channel, event)
    limit = mule_msg_size()
    chan_len = request[5]
    if len(request) > limit:
        raise PublishError(
            f"a message of {len(request) - REQUEST.size - chan_len} bytes is over the limit: --mule-msg-size={limit} "
            f"leaves room for {limit - REQUEST.size - chan_len} bytes"
            + (f" (with this {chan_len}-byte channel name)" if chan_len else "")
            + ": raise --mule-msg-size (and --sharedarea) or send less"
        )
    ring = shared_ring()
    payload_size = len(request) - REQUEST.size - chan_len + (_EVENT_TAIL_MAX if event else 0)
    frame_size = frames.header_size(payload_size) + payload_size
    if frame_size > ring.max_frame_size(chan_len):
        raise PublishError(
            f"message of {frame_size} bytes (framed) is over the broadcast ring's limit of "
            f"{ring.max_frame_size(chan_len)} bytes (a quarter of the ring): raise --sharedarea"
        )
    if _local_sink is not None:  # the broadcast mule publishing itself
        _local_sink(request)
        return len(request)
    timeout = settings.get("publish-timeout")
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        mule_id = ring.mule_id
        if mule_id:
            if uwsgi.mule_msg(request, mule_id):
                return len(request)
            metrics.local().add(metrics.QUEUE_FULL)
            reason = f"the broadcast mule's queue (mule {mule_id}) stayed full"
        else:
            reason = "the broadcast mule did not start (add --mule=uwsgi_ws.mule:run and --master)"
        if time.monotonic() >= deadline:
            raise PublishError(f"publish failed after {timeout:g}s: {reason}")
        sleep(delay)
        delay = min(delay * 2, 0.05)
