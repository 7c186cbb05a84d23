"""The event protocol (docs/protocol.md), sans-I/O: frames in, typed actions out.

As `protocol.py` is RFC 6455 without sockets, this module is the event
protocol without sockets, Flask or the broadcast: it turns one client text
frame into one typed action (`parse_client`) and a server frame into a typed
frame (`parse_server`, for clients such as the test client), and it builds
every frame either side sends (the encoders below). What the actions *do*
(run handlers, join rooms, resume from the ring) is the endpoint's
(`uwsgi_ws.events`); the rules a frame must follow are here, once.

Client → server frames (JSON objects with a string ``type``):

    {"type":"event","event":E,"data":D,"id":I}   → Emit (id optional: any JSON but null)
    {"type":"join","room":R,"last":N}             → Join (last optional, 0..max_last)
    {"type":"leave","room":R}                     → Leave
    {"type":"resume","epoch":P,"rooms":{R:S}}     → Resume (first frame of ?resume=1 only)
    {"type":"reply","id":I,"data":D}              → Reply (to the server's call I; or "error":M)
    anything else                                 → Invalid (answer `error(action.message)`)

Server → client frames: connected (the connection's id, first), event
(broadcast: with seq and epoch; direct: without; "skip": a connection id that
must drop it), ack (data or error), error, not_recovered, resumed, call (the
server asks, the client answers with a reply), presence (join/leave of a room's
member), left (the server removed the connection from a room); SSE renders a broadcast as
``id: <epoch>-<seq>`` / ``event: <name>`` / ``data: <the same JSON>``.

Pure functions, no state: thread-safe.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import decimal
import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Type, Union

from . import frames

#: Event names a client may not emit: the endpoint's own hooks.
RESERVED_EVENTS = frozenset({"connect", "disconnect", "join"})
#: Frame types a client may send.
CLIENT_TYPES = ("event", "join", "leave", "resume", "reply")
#: The key of the one-key object that carries bytes in any JSON value: {"$bin": "<base64>"}.
BINARY_KEY = "$bin"

UNREADABLE = "a frame is a JSON object with a string \"type\" (text frames only)"


class Encoder(json.JSONEncoder):
    """The default encoder of frames: JSON, plus bytes-like values as
    ``{"$bin": "<base64>"}`` (RFC 4648 section 4, with padding), which clients
    decode back to bytes (docs/protocol.md, Binary payloads)."""

    def default(self, o: Any) -> Any:
        if isinstance(o, (bytes, bytearray, memoryview)):
            return {BINARY_KEY: base64.b64encode(bytes(o)).decode("ascii")}
        return super().default(o)


class RichEncoder(Encoder):
    """`Encoder` plus the types applications send most: datetime/date/time (ISO
    8601 strings), UUID and Decimal (strings), dataclass instances (their
    fields, `dataclasses.asdict`), sets and frozensets (lists). Pass it as
    ``ws.events(path, json_encoder=RichEncoder)`` or subclass it."""

    def default(self, o: Any) -> Any:
        if isinstance(o, (datetime.datetime, datetime.date, datetime.time)):
            return o.isoformat()
        if isinstance(o, (uuid.UUID, decimal.Decimal)):
            return str(o)
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            return dataclasses.asdict(o)
        if isinstance(o, (set, frozenset)):
            return list(o)
        return super().default(o)


def dumps(message: Any, encoder: Optional[Type[json.JSONEncoder]] = None) -> str:
    """The compact JSON text of a frame (UTF-8 as is: ``ensure_ascii=False``).

    Args:
        message: the frame (a dict of JSON values).
        encoder: a json.JSONEncoder subclass (default `Encoder`: bytes as $bin).

    Raises:
        TypeError: a value the encoder cannot serialise.
        ValueError: NaN or an infinity: Python writes them as ``NaN``/``Infinity``, which
            are not JSON (RFC 8259 section 6) and the client's ``JSON.parse`` refuses the
            whole frame; a str with a lone surrogate (a text frame must be UTF-8,
            `frames.utf8`).
    """
    try:
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                          cls=encoder or Encoder)
    except ValueError as exc:
        if "Out of range float" not in str(exc):
            raise
        raise ValueError("NaN and infinities are not JSON (RFC 8259 section 6: the client's JSON.parse "
                         "would refuse the whole frame): send None, a string or a finite number") from None
    if not text.isascii():
        frames.utf8(text, "an event's JSON text")
    return text


def _binary_hook(obj: Dict[str, Any]) -> Any:
    if len(obj) == 1 and BINARY_KEY in obj and isinstance(obj[BINARY_KEY], str):
        try:
            return base64.b64decode(obj[BINARY_KEY], validate=True)
        except ValueError:
            return obj
    return obj


def loads(text: Union[str, bytes]) -> Any:
    """Parse a frame's JSON, turning ``{"$bin": "<base64>"}`` objects into bytes.
    Raises ValueError for text that is not JSON."""
    return json.loads(text, object_hook=_binary_hook)


# -- client → server: actions ------------------------------------------------------------


@dataclass(frozen=True)
class Emit:
    """Call the handler of client event `event` with `data`; `id` (not None) asks for an ack."""

    event: str
    data: Any = None
    id: Any = None
    type: str = field(default="event", init=False)


@dataclass(frozen=True)
class Join:
    """Receive room `room`; first its `last` most recent broadcasts (already capped at max_last)."""

    room: str
    last: int = 0
    type: str = field(default="join", init=False)


@dataclass(frozen=True)
class Leave:
    """Stop receiving room `room`."""

    room: str
    type: str = field(default="leave", init=False)


@dataclass(frozen=True)
class Resume:
    """Resume: `rooms` maps each room ("" for the endpoint-wide stream) to the last seq
    seen; `epoch` the epoch string of the last broadcast seen."""

    epoch: str
    rooms: Dict[str, int]
    type: str = field(default="resume", init=False)


@dataclass(frozen=True)
class Invalid:
    """A frame the server cannot act on: answer `error(message)`. `type` is the frame's
    type when it had a readable one (a malformed join is still a join), else None."""

    message: str
    type: Optional[str] = None


@dataclass(frozen=True)
class Reply:
    """The client's answer to the server's call `id`: `data`, or `error` (a message)."""

    id: Any
    data: Any = None
    error: Optional[str] = None
    type: str = field(default="reply", init=False)


Action = Union[Emit, Join, Leave, Resume, Reply, Invalid]


def _no_check(room: str) -> None:
    """Every non-empty room name is fine."""


def parse_client(message: Union[str, bytes], check_room: Callable[[str], Any] = _no_check,
                 max_last: int = 100) -> Action:
    """The action of one client frame.

    Args:
        message: the WebSocket message (bytes: a binary frame, always Invalid).
        check_room: raises ValueError (with the message to send) for a room name the
            endpoint cannot use (e.g. its channel would pass 255 bytes).
        max_last: the most recent broadcasts a join may ask for; more is capped.

    Returns:
        Emit, Join, Leave, Resume, Reply, or Invalid (never raises on client input).
    """
    try:
        frame = loads(message) if isinstance(message, str) else None
    except ValueError:
        frame = None
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        return Invalid(UNREADABLE)
    kind = frame["type"]
    if kind == "event":
        name = frame.get("event")
        if not isinstance(name, str) or name in RESERVED_EVENTS:
            return Invalid("event: \"event\" is a string naming a client event", kind)
        return Emit(name, frame.get("data"), frame.get("id"))
    if kind in ("join", "leave"):
        room = frame.get("room")
        if not isinstance(room, str) or not room:
            return Invalid(f"{kind}: \"room\" is a non-empty string", kind)
        try:
            check_room(room)
        except ValueError as exc:
            return Invalid(str(exc), kind)
        if kind == "leave":
            return Leave(room)
        last = frame.get("last", 0)
        if not isinstance(last, int) or isinstance(last, bool) or last < 0:
            return Invalid("join: \"last\" is the number of recent messages "
                           f"to receive first, 0 to {max_last}", kind)
        return Join(room, min(last, max_last))
    if kind == "resume":
        rooms = frame.get("rooms")
        if not isinstance(rooms, dict) or not all(
                isinstance(r, str) and isinstance(s, int) and not isinstance(s, bool) and s >= 0
                for r, s in rooms.items()):
            return Invalid("resume: \"rooms\" maps room names to the last seq seen (integers)", kind)
        for room in rooms:
            try:
                check_room(room)
            except ValueError as exc:
                return Invalid(str(exc), kind)
        return Resume(str(frame.get("epoch")), dict(rooms))
    if kind == "reply":
        if frame.get("id") is None:
            return Invalid("reply: \"id\" is the id of the server's call", kind)
        err = frame.get("error")
        return Reply(frame["id"], frame.get("data"), None if err is None else str(err))
    return Invalid(f"unknown frame type {kind[:40]!r}: event, join, leave or resume", kind)


# -- server → client: encoders -------------------------------------------------------------


def event(name: str, data: Any = None, room: Optional[str] = None) -> Dict[str, Any]:
    """An event frame; a broadcast gets ``seq`` and ``epoch`` appended by the writer of
    the ring (`uwsgi_ws.broadcast.publish`), a direct one has none."""
    return {"type": "event", "event": name, "data": data, "room": room}


def connected(conn_id: str) -> Dict[str, Any]:
    """The first frame of a connection: its id (what `skip` and `to=` name)."""
    return {"type": "connected", "id": conn_id}


def call(call_id: int, name: str, data: Any = None) -> Dict[str, Any]:
    """The server calls the client's handler of `name`; answered by one reply with `call_id`."""
    return {"type": "call", "id": call_id, "event": name, "data": data}


def presence(op: str, room: str, conn_id: str, identity: Any) -> Dict[str, Any]:
    """A member joined (`op` "join") or left ("leave") `room` (join_leave endpoints)."""
    return {"type": "presence", "op": op, "room": room, "id": conn_id, "identity": identity}


def left(room: str) -> Dict[str, Any]:
    """The server removed this connection from `room` (close_room): do not rejoin it."""
    return {"type": "left", "room": room}


def ack(ack_id: Any, data: Any) -> Dict[str, Any]:
    """The ack of the event with id `ack_id`: its handler returned `data`."""
    return {"type": "ack", "id": ack_id, "data": data}


def ack_error(ack_id: Any, message: str) -> Dict[str, Any]:
    """The ack of the event with id `ack_id`: it failed with `message`."""
    return {"type": "ack", "id": ack_id, "error": message}


def error(message: str) -> Dict[str, Any]:
    """An error frame: the server could not act on a frame (the connection stays open)."""
    return {"type": "error", "message": message}


def not_recovered(room: Optional[str], reason: str) -> Dict[str, Any]:
    """Resume of `room` ("" endpoint-wide, None on SSE) is impossible, for `reason`."""
    return {"type": "not_recovered", "room": room, "reason": reason}


def too_old(oldest: int) -> str:
    """The not_recovered reason when the missed broadcasts are no longer kept."""
    return f"too old: the server keeps messages from seq {oldest} on; refetch the state"


EPOCH_CHANGED = "epoch changed: the server restarted; refetch the state"


def resumed(rooms: Dict[str, int], epoch: Union[int, str]) -> Dict[str, Any]:
    """The end of a resume's replay: each recovered room with the seq replayed up to."""
    return {"type": "resumed", "rooms": rooms, "epoch": str(epoch)}


def sse_event(event_id: str, name: str, payload: bytes) -> bytes:
    """One Server-Sent Event for a broadcast: `payload` is the broadcast frame's JSON."""
    return f"id: {event_id}\nevent: {name}\ndata: ".encode() + payload + b"\n\n"


def sse_notice(message: Dict[str, Any]) -> bytes:
    """A protocol notice (not_recovered) as a Server-Sent Event without an id."""
    return f"event: {message['type']}\ndata: ".encode() + dumps(message).encode("utf-8") + b"\n\n"


# -- client side: encoders and the server's frames ---------------------------------------


def client_event(name: str, data: Any = None, ack_id: Any = None) -> Dict[str, Any]:
    """The frame that calls event `name` (with `ack_id` not None: answered by one ack)."""
    frame: Dict[str, Any] = {"type": "event", "event": name, "data": data}
    if ack_id is not None:
        frame["id"] = ack_id
    return frame


def client_join(room: str, last: int = 0) -> Dict[str, Any]:
    """The frame that joins `room` (first its `last` most recent broadcasts)."""
    frame: Dict[str, Any] = {"type": "join", "room": room}
    if last:
        frame["last"] = last
    return frame


def client_leave(room: str) -> Dict[str, Any]:
    """The frame that leaves `room`."""
    return {"type": "leave", "room": room}


def client_reply(call_id: Any, data: Any = None, error: Optional[str] = None) -> Dict[str, Any]:
    """The answer to the server's call `call_id`: `data`, or `error` (a message)."""
    if error is not None:
        return {"type": "reply", "id": call_id, "error": error}
    return {"type": "reply", "id": call_id, "data": data}


def client_resume(epoch: str, rooms: Dict[str, int]) -> Dict[str, Any]:
    """The first frame of a ``?resume=1`` connection."""
    return {"type": "resume", "epoch": str(epoch), "rooms": rooms}


@dataclass(frozen=True)
class EventFrame:
    """An event: a broadcast (`seq`, `epoch` set) or a direct one (both None)."""

    event: str
    data: Any
    room: Optional[str]
    seq: Optional[int] = None
    epoch: Optional[str] = None


@dataclass(frozen=True)
class AckFrame:
    """The answer to the event with id `id`: `data`, or `error` (a message) when it failed."""

    id: Any
    data: Any = None
    error: Optional[str] = None


@dataclass(frozen=True)
class ErrorFrame:
    """An `error` frame: the server could not act on a frame of the client's (`message` says why;
    the connection stays open)."""

    message: str


@dataclass(frozen=True)
class NotRecoveredFrame:
    """`not_recovered`: the resume of `room` ("" endpoint-wide, None on SSE) is impossible, for
    `reason` (the missed broadcasts are no longer kept, or the epoch changed): refetch."""

    room: Optional[str]
    reason: str


@dataclass(frozen=True)
class ResumedFrame:
    """`resumed`: the end of a resume's replay; `rooms` maps each recovered room to the seq it
    was replayed up to, in instance `epoch`."""

    rooms: Dict[str, int]
    epoch: str


@dataclass(frozen=True)
class ConnectedFrame:
    """`connected`: the connection's `id` (``?id=1``), what ``skip`` and ``to=`` name."""

    id: str


@dataclass(frozen=True)
class CallFrame:
    """A server call (``conn.call``): run the client's handler of `event` with `data` and reply
    with call `id`."""

    id: Any
    event: str
    data: Any = None


@dataclass(frozen=True)
class PresenceFrame:
    """`presence` (join_leave endpoints): connection `id` with `identity` joined (`op` "join") or
    left ("leave") `room`."""

    op: str
    room: str
    id: str
    identity: Any = None


@dataclass(frozen=True)
class LeftFrame:
    """`left`: the server removed this connection from `room` (close_room); do not rejoin it."""

    room: str


ServerFrame = Union[EventFrame, AckFrame, ErrorFrame, NotRecoveredFrame, ResumedFrame, ConnectedFrame, CallFrame,
                    PresenceFrame, LeftFrame]


def parse_server(message: Union[str, bytes]) -> ServerFrame:
    """The typed frame of one server message.

    Raises:
        ValueError: not a frame of this protocol (says what is wrong).
    """
    if not isinstance(message, str):
        raise ValueError("the server sent a binary message: the event protocol is JSON text frames")
    try:
        frame = loads(message)
    except ValueError:
        raise ValueError(f"the server sent a text message that is not JSON: {message[:80]!r}") from None
    kind = frame.get("type") if isinstance(frame, dict) else None
    try:
        if kind == "event":
            epoch = frame.get("epoch")
            return EventFrame(frame["event"], frame.get("data"), frame.get("room"), frame.get("seq"),
                              None if epoch is None else str(epoch))
        if kind == "ack":
            return AckFrame(frame["id"], frame.get("data"), frame.get("error"))
        if kind == "error":
            return ErrorFrame(str(frame["message"]))
        if kind == "not_recovered":
            return NotRecoveredFrame(frame.get("room"), str(frame["reason"]))
        if kind == "resumed":
            return ResumedFrame(dict(frame["rooms"]), str(frame["epoch"]))
        if kind == "connected":
            return ConnectedFrame(str(frame["id"]))
        if kind == "call":
            return CallFrame(frame["id"], str(frame["event"]), frame.get("data"))
        if kind == "presence":
            return PresenceFrame(str(frame["op"]), str(frame["room"]), str(frame["id"]), frame.get("identity"))
        if kind == "left":
            return LeftFrame(str(frame["room"]))
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"malformed {kind} frame from the server: {message[:80]!r}") from None
    raise ValueError(f"not an event-protocol frame: {message[:80]!r}")
