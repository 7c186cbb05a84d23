"""Named events, rooms, acks, resume and an SSE fallback over the broadcast ring.

An endpoint with two handlers::

    live = ws.events("/live")

    @live.on("connect")
    def joined(conn): conn.join("lobby")

    @live.on("say")
    def say(conn, data):
        live.emit("said", data, to="lobby")   # any worker, view, thread or mule
        return {"ok": True}                   # the ack, when the client asked for one

The wire protocol (JSON text frames) is specified in docs/protocol.md.

Rooms are broadcast channels named ``events:<path>:<room>``; the endpoint-wide
stream (``emit(..., to=None)``) is the channel ``events:<path>``, which every
connection of the endpoint joins. Broadcast events are published with the
event flag (`uwsgi_ws.broadcast.publish`): whoever appends one to the ring
(the publishing process itself, or the broadcast mule, e.g. while it keeps the
history: `uwsgi_ws.broadcast.writer` lists which) writes the ring seq and epoch
into it, so a client knows what it last saw and can resume. Replay and the
switch to live delivery happen through `Broadcast.recover`, at one point of the
stream: no duplicate, no gap. The bound is what the ring and the mule's history
still hold.

Each connection also listens on its own channel ``events:<path>#c:<id>``
(``emit(..., to=<connection id>)``) and, when its identity names a user, on
``events:<path>#u:<user>`` (``to_user=``): targeted events are plain
publishes there, from anywhere. Presence (opt-in), ``disconnect`` and
``close_room`` are messages on ``events:<path>#ctl`` that each worker's
`uwsgi_ws.presence.Registry` reads; ``skip`` is a field of the broadcast frame
that the skipped connection's client drops (the ring frames each message once
for all subscribers, so the server cannot leave one out without giving up the
frame-once fan-out).

Handlers run in the connection's own task, inside the Flask request context of
the upgrade request, one frame at a time; `EventConnection.call` waits for the
client's reply inside a handler too (frames the client sends meanwhile are
handled after it).
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import re
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, Iterator, List, Optional, Set, Tuple, Type

from flask import Response, current_app, request

from . import events_protocol, frames, shutdown
from . import presence as _presence
from .broadcast import (
    After,
    Batch,
    Broadcast,
    Entry,
    Last,
    Message,
    QueueSubscriber,
    Recovered,
    Recovery,
    channel_bytes,
    use_in_process,
)
from .exceptions import ConnectionClosed, EventError, PublishError
from .log import get as _logger

if TYPE_CHECKING:  # annotations only: uwsgi_ws.extension imports this module (WebSocket.events)
    from .connection import Connection
    from .extension import WebSocket

#: What a connection id looks like (`Connection.id`, "<worker pid>-<n>"): a str `to=`
#: of this form names a connection, so no room may have it.
CONNECTION_ID = re.compile(r"[0-9]+-[0-9]+")

ALL = ""  # the resume key (and SSE room) of the endpoint-wide stream
SSE_HEARTBEAT = 15.0  # seconds between SSE comments on a quiet stream
SSE_MAX_QUEUE = 10000  # events buffered for one SSE stream before it is dropped as slow
STOPPING_PUBLISH_TIMEOUT = 1.0  # seconds a stopping worker waits per leave message (writer lock or mule)

log = _logger(__name__)


#: Where the browser client is served: CLIENT_URL + "uwsgi_ws.js" (script tag) or
#: CLIENT_URL + "uwsgi_ws.mjs" (ES module), its TypeScript declarations at CLIENT_URL + "uwsgi_ws.d.ts".
CLIENT_URL = "/_uwsgi_ws/"
_CLIENT_FILES = ("uwsgi_ws.js", "uwsgi_ws.mjs", "uwsgi_ws.d.ts")


def _client_file(name: str) -> Response:
    """The browser client (uwsgi_ws/static), cacheable for an hour."""
    if name not in _CLIENT_FILES:
        return Response(f"404 Not Found: the client files are {', '.join(_CLIENT_FILES)}\n", status=404,
                        mimetype="text/plain")
    with open(os.path.join(os.path.dirname(__file__), "static", name), "rb") as f:
        body = f.read()
    mimetype = "application/typescript" if name.endswith(".d.ts") else "text/javascript"
    return Response(body, mimetype=mimetype, headers={"Cache-Control": "public, max-age=3600"})


_dumps = events_protocol.dumps


class EventConnection:
    """One client of an event endpoint: what handlers get as `conn`.

    `join`/`leave`/`emit` may be called from the connection's handlers; `emit` from
    any thread or greenlet of the worker (it blocks while the socket is full).
    """

    def __init__(self, endpoint: Events, ws_conn: Connection) -> None:
        self.endpoint = endpoint
        self.ws = ws_conn
        self.rooms: Set[str] = set()
        #: What the app says this connection is (set it in the ``connect`` handler):
        #: any JSON value, e.g. ``{"user": "ann", "name": "Ann"}``. Shown by
        #: `Events.presence` and in join/leave events; its ``user_key`` entry (default
        #: "user") is what ``emit(..., to_user=)`` matches.
        self.identity: Any = None
        self._deferred: Optional[List[Tuple[str, int]]] = None  # (room, last) held until the resume frame
        self._start_seq = 0  # stream position at the upgrade: live joins start after it
        self._local: Optional[_presence.Local] = None  # set once registered (after connect)
        self._calls: Dict[int, Tuple[Any, List[events_protocol.Reply]]] = {}
        self._call_ids = itertools.count(1)
        self._busy = False  # the endpoint's loop is inside a handler of this connection
        self._backlog: Deque[Any] = collections.deque()  # frames read by an inline call()

    @property
    def id(self) -> str:
        """This connection's id, "<worker pid>-<n>", unique in the instance while open:
        what ``emit(..., to=)``, ``skip=`` and ``disconnect()`` take from anywhere."""
        return str(self.ws.id)

    @property
    def environ(self) -> Dict[str, Any]:
        environ: Dict[str, Any] = self.ws.environ
        return environ

    def join(self, room: str, last: int = 0) -> None:
        """Receive the broadcasts of `room` emitted after this call (and, while a
        resume is pending, what the client missed). `last` > 0: first the room's
        `last` most recent broadcasts, from the mule's history when it is on
        (``uwsgi-ws-history``), else what the ring still holds; then live, with no
        gap and no duplicate. May block briefly on the history. ValueError for a bad name."""
        channel = self.endpoint.channel(room)
        if room in self.rooms:
            return
        self.rooms.add(room)
        if self._deferred is not None:
            self._deferred.append((room, last))
        else:
            broadcast = self.endpoint.broadcast
            recovery: Recovery = Last(last) if last > 0 else After(broadcast.position().seq)
            broadcast.recover(self.ws, {channel: recovery})
        self.endpoint._member_changed(self, "join", room)

    def leave(self, room: str) -> None:
        """Stop receiving `room` (after any join of it still being set up)."""
        was = room in self.rooms
        self.rooms.discard(room)
        if self._deferred is not None:
            self._deferred = [(r, n) for r, n in self._deferred if r != room]
        self.endpoint.broadcast.unsubscribe(self.ws, self.endpoint.channel(room), ordered=True)
        if was:
            self.endpoint._member_changed(self, "leave", room)

    def call(self, event: str, data: Any = None, timeout: float = 10.0) -> Any:
        """Call the client's handler of `event` with `data` and return its answer
        (Socket.IO's ``call``/``emitWithAck``; the browser client's ``on`` handler
        returns a value or a Promise).

        Args:
            event: the client event's name (str).
            data: any value the endpoint's encoder serialises.
            timeout: seconds to wait for the reply.

        Returns:
            The reply's data.

        Raises:
            TimeoutError: no reply in `timeout` seconds.
            EventError: the client answered with an error (its message).
            ConnectionClosed: the connection closed first.
            TypeError: `event` is not a str, or `data` not serialisable.

        Blocks the calling thread or greenlet. Callable from the connection's own
        handlers (the reply is read there, other frames are kept for after the
        handler) and from any other thread or greenlet of the worker.
        """
        if not isinstance(event, str):
            raise TypeError(f"an event name is a str, not {type(event).__name__}")
        call_id = next(self._call_ids)
        reached = self.endpoint.ws.runtime().Event()
        slot: List[events_protocol.Reply] = []
        self._calls[call_id] = (reached, slot)
        try:
            self.send(events_protocol.call(call_id, event, data))
            deadline = time.monotonic() + timeout
            while not slot:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no reply to call {event[:40]!r} in {timeout} s")
                if self._busy:  # the endpoint's loop waits for a handler: read here
                    message = self.ws.receive(min(left, 0.5))
                    if message is None:
                        if self.ws.closed:
                            raise ConnectionClosed(self.ws.close_code, self.ws.close_reason)
                        continue
                    action = events_protocol.parse_client(message, self.endpoint.channel, self.endpoint.max_last)
                    if isinstance(action, events_protocol.Reply):
                        self._take_reply(action)
                    else:
                        self._backlog.append(message)
                else:
                    reached.wait(min(left, 0.5))
                    if not slot and self.ws.closed:
                        raise ConnectionClosed(self.ws.close_code, self.ws.close_reason)
        finally:
            self._calls.pop(call_id, None)
        reply = slot[0]
        if reply.error is not None:
            raise EventError(reply.error)
        return reply.data

    def _take_reply(self, reply: events_protocol.Reply) -> None:
        waiting = self._calls.get(reply.id) if isinstance(reply.id, int) else None
        if waiting is None:
            return  # late (timed out) or not ours: dropped
        reached, slot = waiting
        slot.append(reply)
        reached.set()

    def _on_control(self, message: Dict[str, Any]) -> None:
        """A control message for this connection (in a task of its own)."""
        try:
            if message.get("op") == "disconnect":
                self.ws.close(int(message.get("code") or 1000), str(message.get("reason") or ""))
            elif message.get("op") == "close_room":
                room = str(message.get("room"))
                if room in self.rooms:
                    self.leave(room)
                    self.send(events_protocol.left(room))
        except ConnectionClosed:
            pass
        except Exception:
            _presence.log.exception("events %s: a control message failed", self.endpoint.path)

    def emit(self, event: str, data: Any = None) -> None:
        """Send an event to this connection only (no seq: it is not in the ring)."""
        self.send(events_protocol.event(event, data, None))

    def send(self, message: Dict[str, Any]) -> None:
        """Send one protocol frame (a JSON object) to this connection; blocks until written.
        Raises TypeError when the endpoint's encoder cannot serialise it."""
        self.ws.send(self.endpoint._dumps(message))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection (code and reason as `Connection.close`)."""
        self.ws.close(code, reason)

    # -- resume ----------------------------------------------------------------

    def _subscribe(self, wanted: Dict[str, int], epoch_ok: bool) -> None:
        """Subscribe the endpoint stream and the deferred rooms plus `wanted` ({room: last
        seq}); answer not_recovered per room that cannot be replayed, then resumed."""
        start = After(self._start_seq)
        rooms = [(ALL, 0)] + [(r, n) for r, n in (self._deferred or []) if r not in wanted]
        self._deferred = None
        plan: Dict[str, Recovery] = dict.fromkeys(self.endpoint._own_channels(self), start)
        names: Dict[str, str] = {}
        not_recovered: List[Tuple[str, str]] = []
        for room, count in rooms:
            channel = self.endpoint.channel(room)
            names[channel] = room
            plan[channel] = Last(count) if count > 0 else start
        for room, last in wanted.items():
            channel = self.endpoint.channel(room)
            names[channel] = room
            if room != ALL:
                self.rooms.add(room)
            if not epoch_ok:
                not_recovered.append((room, events_protocol.EPOCH_CHANGED))
                plan[channel] = start
            else:
                plan[channel] = After(last)
        ws, broadcast = self.ws, self.endpoint.broadcast

        def done(result: Dict[str, Recovered]) -> None:  # in the hub's task: never block
            notices = [events_protocol.not_recovered(room, reason) for room, reason in not_recovered]
            recovered = {}
            for channel, outcome in result.items():
                if channel not in names:
                    continue  # the connection's own channels: nothing to resume
                room = names[channel]
                if not outcome.ok:
                    reason = broadcast.loss_reason(outcome.seq) or _too_old(outcome.seq)
                    notices.append(events_protocol.not_recovered(room, reason))
                elif room in wanted and epoch_ok:
                    recovered[room] = outcome.seq
            notices.append(events_protocol.resumed(recovered, broadcast.event_position().epoch))
            for notice in notices:
                ws.send_frame_nowait(_text_frame(notice))

        broadcast.resume(ws, plan, done if wanted or not_recovered else None)


_too_old = events_protocol.too_old


def _text_frame(message: Dict[str, Any]) -> bytes:
    return frames.encode(frames.OP_TEXT, _dumps(message).encode("utf-8"))


class Events:
    """An event endpoint at `path` (WebSocket) and ``path + "/sse"`` (SSE)."""

    #: The json.JSONEncoder subclass of this endpoint's frames (None: `events_protocol.Encoder`).
    json_encoder: Optional[Type[json.JSONEncoder]] = None
    join_leave = False
    presence_on = False
    user_key = "user"

    def __init__(self, ws: WebSocket, path: str, max_last: int = 100, *, presence: bool = False,
                 join_leave: bool = False, user_key: str = "user",
                 json_encoder: Optional[Type[json.JSONEncoder]] = None, **route_options: Any) -> None:
        """Args:
            ws: the `WebSocket` extension.
            path: the endpoint's URL rule.
            max_last: the most "last messages" a client may ask for on join.
            presence: keep the instance's presence (`presence`, `presence_count`):
                each join, leave and close is then one more message in the
                broadcast ring (off by default: the ring's room is the resume window).
            join_leave: broadcast a ``presence`` frame (join/leave, with the identity)
                to a room's members when a connection joins or leaves it.
            user_key: the identity's key that ``emit(..., to_user=)`` matches.
            json_encoder: a json.JSONEncoder subclass for every frame (e.g.
                `events_protocol.RichEncoder`: datetime, UUID, dataclasses).
        """
        self.ws = ws
        self.path = path
        self.max_last = max_last  # the most "last messages" a client may ask for on join
        self.join_leave = join_leave
        self.presence_on = presence
        self.user_key = user_key
        self.json_encoder = json_encoder
        self.handlers: Dict[str, Callable[..., Any]] = {}
        endpoint = route_options.pop("endpoint", "uwsgi_ws_events_" + path.strip("/").replace("/", "_"))

        def events_endpoint(ws_conn: Connection) -> Optional[Response]:
            return self._serve(ws_conn)

        events_endpoint.__name__ = endpoint
        # on every app the extension attaches, before or after this call (an application factory)
        ws.route(path, endpoint=endpoint, **route_options)(events_endpoint)
        ws.add_url_rule(path.rstrip("/") + "/sse", endpoint + "_sse", self._sse_view, methods=["GET"])
        ws.add_url_rule(CLIENT_URL + "<name>", "uwsgi_ws_client", _client_file, methods=["GET"])

    # -- API -------------------------------------------------------------------------

    def on(self, event: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register the handler of `event` ("connect", "disconnect", "join", or a client event)."""

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.handlers[event] = fn
            return fn

        return decorator

    def channel(self, room: Optional[str]) -> str:
        """The broadcast channel of `room` (ALL or None: the endpoint-wide stream)."""
        if room is None or room == ALL:
            return f"events:{self.path}"
        if not isinstance(room, str):
            raise TypeError(f"a room name is a str, not {type(room).__name__}")
        if CONNECTION_ID.fullmatch(room):
            raise ValueError(f"room {room!r}: names of the form <digits>-<digits> are connection ids "
                             "(emit(..., to=<connection id>)); choose another room name")
        channel = f"events:{self.path}:{room}"
        try:
            channel_bytes(channel)
        except ValueError as exc:
            raise ValueError(f"room {room[:40]!r}: {exc} (with the prefix {channel[:-len(room)]!r})") from None
        return channel

    @property
    def broadcast(self) -> Broadcast:
        """This process's broadcast (`uwsgi_ws.broadcast.Broadcast`)."""
        broadcast: Broadcast = self.ws.broadcast()
        return broadcast

    def _dumps(self, message: Any) -> str:
        return events_protocol.dumps(message, self.json_encoder)

    def emit(self, event: str, data: Any = None, to: Any = None, *, skip: Any = None,
             to_user: Any = None) -> None:
        """Send `event` with `data` to some of the endpoint's connections.

        Args:
            event: the event's name.
            data: any value the endpoint's encoder serialises (bytes: see
                docs/protocol.md, Binary payloads).
            to: a room (str): a broadcast with seq, replayable on resume; a
                connection id ("<pid>-<n>", `EventConnection.id`) or an
                EventConnection: that connection only, in whichever worker (no seq);
                None: every connection of the endpoint.
            skip: with a room or None: a connection (EventConnection or id) that does
                not get it (the sender): the frame names it in ``"skip"`` and that
                connection drops it (docs/protocol.md).
            to_user: instead of `to`: every connection whose identity's ``user_key``
                entry equals this (str or int), in every worker (no seq).

        Raises:
            PublishError: the broadcast cannot take it (see `Broadcast.publish`).
            TypeError: `event` is not a str; `data` not serialisable.
            ValueError: a bad room name; both `to` and `to_user`.

        Callable from any thread, greenlet, worker or mule of the instance (and
        through `uwsgi_ws.client.Publisher`); blocks until it is in the ring.
        """
        if not isinstance(event, str):
            raise TypeError(f"an event name is a str, not {type(event).__name__}")
        if to_user is not None:
            if to is not None:
                raise ValueError("emit() takes to= or to_user=, not both")
            frame = events_protocol.event(event, data, None)
            self.broadcast.publish(self._dumps(frame), _presence.user_channel(self.path, str(to_user)))
            return
        if isinstance(to, EventConnection):
            to = to.id
        if isinstance(to, str) and CONNECTION_ID.fullmatch(to):
            frame = events_protocol.event(event, data, None)
            self.broadcast.publish(self._dumps(frame), _presence.connection_channel(self.path, to))
            return
        room = None if to in (None, ALL) else to
        channel = self.channel(room)
        frame = events_protocol.event(event, data, room)
        if skip is not None:
            frame["skip"] = skip.id if isinstance(skip, EventConnection) else str(skip)
        self.broadcast.publish(self._dumps(frame), channel, event=True)

    def disconnect(self, conn_id: Any, code: int = 1000, reason: str = "") -> None:
        """Close connection `conn_id` (an id or an EventConnection) with `code` and
        `reason`, in whichever worker holds it. Returns once the request is in the
        broadcast (the close follows in that worker). Raises PublishError,
        ValueError (not a connection id). Callable from anywhere, as `emit`."""
        if isinstance(conn_id, EventConnection):
            conn_id = conn_id.id
        if not isinstance(conn_id, str) or not CONNECTION_ID.fullmatch(conn_id):
            raise ValueError(f"disconnect() takes a connection id ('<pid>-<n>'), not {conn_id!r}")
        if not isinstance(code, int) or not (code == 1000 or 3000 <= code <= 4999):
            raise ValueError(f"close code {code!r}: use 1000 or an application code, 3000-4999 (RFC 6455 7.4.2)")
        self._control({"op": "disconnect", "id": conn_id, "code": code, "reason": str(reason)})

    def close_room(self, room: str) -> None:
        """Make every member of `room`, in every worker, leave it (each gets a
        ``left`` frame and stops receiving it). Raises PublishError, ValueError (bad
        name). Callable from anywhere, as `emit`."""
        self.channel(room)
        self._control({"op": "close_room", "room": room})

    def presence(self, room: str) -> List[Dict[str, Any]]:
        """The connections in `room` in every worker of the instance, sorted by id:
        ``[{"id": "<pid>-<n>", "identity": <what connect set>}, ...]``. A killed
        worker's connections are not listed.

        Blocks until this worker's broadcast caught up with the ring (everything
        published before the call is reflected). Callable in a worker of the
        instance (a view, a handler, a thread). Raises RuntimeError when the
        endpoint was made without ``presence=True``; RingError where the broadcast
        is not available (a mule, outside uWSGI without flask run)."""
        self.channel(room)
        return [{"id": c, "identity": i} for c, i in self._tracked().members(room)]

    def presence_count(self, room: str) -> int:
        """The number of connections in `room` in every worker (no identities copied).
        Blocks and raises as `presence`."""
        self.channel(room)
        return self._tracked().count(room)

    def rooms(self) -> Dict[str, int]:
        """Every room of this endpoint with at least one connection, in every worker
        (and, with the Redis bridge, every instance): ``{room: connection count}``,
        sorted by name. Blocks and raises as `presence`."""
        return self._tracked().rooms()

    def _tracked(self) -> _presence.Registry:
        if not self.presence_on:
            raise RuntimeError(f"presence is off for the events endpoint {self.path}: "
                               f"ws.events({self.path!r}, presence=True) turns it on")
        return self._registry()

    def _registry(self) -> _presence.Registry:
        broadcast = self.broadcast
        return _presence.registry(self.path, broadcast, self.ws.runtime(), self.presence_on)

    def _control(self, message: Dict[str, Any]) -> None:
        self.broadcast.publish(json.dumps(message, separators=(",", ":")), _presence.control_channel(self.path))

    def _own_channels(self, conn: EventConnection) -> List[str]:
        """The channels a connection listens on besides its rooms: its own and its user's."""
        out = [_presence.connection_channel(self.path, conn.id)]
        identity = conn.identity
        if isinstance(identity, dict) and isinstance(identity.get(self.user_key), (str, int)):
            try:
                out.append(_presence.user_channel(self.path, str(identity[self.user_key])))
            except ValueError:
                pass  # a user name too long for a channel: not targetable by to_user
        return out

    def _announce(self, conn: EventConnection, rooms: Set[str]) -> None:
        """`conn` is in `rooms` from before its registration (connect, resume): publish."""
        local = conn._local
        if local is None or not rooms:
            return
        self._registry().rooms_changed(local, set(conn.rooms))
        if self.join_leave:
            for room in sorted(rooms):
                frame = events_protocol.presence("join", room, conn.id, conn.identity)
                self.broadcast.publish(self._dumps(frame), self.channel(room))

    def _member_changed(self, conn: EventConnection, op: str, room: str) -> None:
        """`conn` joined or left `room`: update presence, tell the room (join_leave)."""
        local = conn._local
        if local is None:
            return  # before registration: published then, at once
        self._registry().rooms_changed(local, set(conn.rooms))
        if self.join_leave:
            frame = events_protocol.presence(op, room, conn.id, conn.identity)
            self.broadcast.publish(self._dumps(frame), self.channel(room))

    # -- WebSocket -------------------------------------------------------------------

    def _serve(self, ws_conn: Connection) -> Optional[Response]:
        broadcast = self.broadcast
        if not broadcast.available:  # answered before the upgrade
            return _unavailable(broadcast)
        conn = EventConnection(self, ws_conn)
        conn._start_seq = broadcast.event_position().seq
        resume_expected = request.args.get("resume") == "1"
        conn._deferred = []
        connect = self.handlers.get("connect")
        if connect is not None:
            connect(conn)
        # Upgrade (send the 101) before the hub may see the connection: a recovery
        # queued now runs in the hub's task, which must find an open, attached Connection.
        ws_conn.connected  # noqa: B018
        registry = self._registry()
        local = registry.add(conn.id, conn.identity, ws_conn, conn._on_control)
        try:
            if request.args.get("id") == "1":  # the client wants its id (skip, calls): opt-in
                conn.send(events_protocol.connected(conn.id))
            if not resume_expected:
                conn._subscribe({}, True)
            conn._local = local
            self._announce(conn, set(conn.rooms))
            for message in ws_conn:
                self._on_frame(conn, message)
                while conn._backlog:
                    self._on_frame(conn, conn._backlog.popleft())
        except ConnectionClosed:
            pass
        finally:
            # A stopping worker (a reload) may outlive the mule: its leave messages get
            # a short wait, and a failure is one line, not a traceback. Its connections
            # leave presence anyway when it exits (the others check its pid).
            stopping = shutdown.stopping()
            timeout = STOPPING_PUBLISH_TIMEOUT if stopping else None
            try:
                registry.remove(local, timeout)
                if self.join_leave:
                    for room in sorted(conn.rooms):
                        self.broadcast.publish(self._dumps(events_protocol.presence(
                            "leave", room, conn.id, conn.identity)), self.channel(room), timeout=timeout)
            except PublishError as exc:
                if not (stopping or shutdown.stopping()):  # (told to stop while it waited)
                    current_app.log_exception(sys.exc_info())
                else:
                    log.warning("connection %s: its leave messages were not published while the worker "
                                "stops (%s); it leaves presence when the worker exits", conn.id, exc)
            except Exception:
                current_app.log_exception(sys.exc_info())
            disconnect = self.handlers.get("disconnect")
            if disconnect is not None:
                try:
                    disconnect(conn, ws_conn.close_code, ws_conn.close_reason)
                except Exception:
                    current_app.log_exception(sys.exc_info())
        return None

    def _on_frame(self, conn: EventConnection, message: Any) -> None:
        """Act on one client frame (`events_protocol.parse_client` says which action)."""
        action = events_protocol.parse_client(message, self.channel, self.max_last)
        if action.type is None:  # not even a readable frame
            conn.send(events_protocol.error(action.message))
            return
        if isinstance(action, events_protocol.Reply):
            conn._take_reply(action)
            return
        if conn._deferred is not None and action.type != "resume":
            conn._subscribe({}, True)  # no resume came first: live from the upgrade on
        if isinstance(action, events_protocol.Emit):
            conn._busy = True
            try:
                self._on_event(conn, action)
            finally:
                conn._busy = False
        elif isinstance(action, events_protocol.Join):
            check = self.handlers.get("join")
            if check is not None and check(conn, action.room) is False:
                conn.send(events_protocol.error(f"join {action.room!r} refused"))
                return
            conn.join(action.room, action.last)
        elif isinstance(action, events_protocol.Leave):
            conn.leave(action.room)
        elif action.type == "resume":
            self._on_resume(conn, action)
        else:
            assert isinstance(action, events_protocol.Invalid)
            conn.send(events_protocol.error(action.message))

    def _on_event(self, conn: EventConnection, action: events_protocol.Emit) -> None:
        name, ack_id = action.event, action.id
        handler = self.handlers.get(name)
        if handler is None:
            reply: Dict[str, Any] = {"error": f"no handler for event {name[:40]!r}"}
        else:
            try:
                reply = {"data": handler(conn, action.data)}
                if ack_id is not None:
                    self._dumps(reply["data"])  # TypeError: not JSON
            except ConnectionClosed:
                raise
            except EventError as exc:
                reply = {"error": str(exc)}
            except Exception:
                current_app.log_exception(sys.exc_info())
                reply = {"error": "internal error"}
        if ack_id is not None:
            conn.send(events_protocol.ack_error(ack_id, reply["error"]) if "error" in reply
                      else events_protocol.ack(ack_id, reply["data"]))
        elif "error" in reply and handler is None:
            conn.send(events_protocol.error(reply["error"]))

    def _on_resume(self, conn: EventConnection, action: events_protocol.Action) -> None:
        if conn._deferred is None:
            conn.send(events_protocol.error("resume must be the first frame of a connection opened with ?resume=1"))
            return
        if isinstance(action, events_protocol.Invalid):
            conn.send(events_protocol.error(action.message))
            conn._subscribe({}, True)
            return
        assert isinstance(action, events_protocol.Resume)
        before = set(conn.rooms)
        conn._subscribe(dict(action.rooms), action.epoch == str(self.broadcast.event_position().epoch))
        self._announce(conn, set(conn.rooms) - before)

    # -- SSE -------------------------------------------------------------------------

    def _sse_view(self) -> Response:
        if "uwsgi.version" not in request.environ:
            # Not under uWSGI (flask run, Flask's own test client, another WSGI server):
            # the broadcast is this process's, as for the WebSocket routes there (devserver)
            use_in_process()
        broadcast = self.broadcast
        if not broadcast.available:
            return _unavailable(broadcast)
        rooms = [r for r in request.args.get("rooms", "").split(",") if r]
        try:
            channels: Dict[str, Optional[str]] = {self.channel(r): r for r in rooms}
        except (ValueError, TypeError) as exc:
            return Response(f"400 Bad Request: {exc}\n", status=400, mimetype="text/plain")
        channels[self.channel(None)] = None
        last_id = request.headers.get("Last-Event-ID") or request.args.get("lastEventId") or ""
        last = request.args.get("last", "0")
        if not last.isdigit():
            return Response(f"400 Bad Request: last={last[:20]!r}: the number of recent messages of each room "
                            f"to receive first, 0 to {self.max_last}\n", status=400, mimetype="text/plain")
        # the WebSocket's checks, in its order, with its answers (uwsgi_ws.admission)
        check = self.handlers.get("join")
        peer = StreamPeer(self, request.environ, rooms)
        admitted: Tuple[Optional[Response], Callable[[], None]] = self.ws.admission.admit(
            rooms, None if check is None else (lambda room: check(peer, room)))
        answer, release = admitted
        if answer is not None:
            return answer
        if request.args.get("probe") == "1":  # the browser client asks whether it may connect
            release()
            return Response(status=204, headers={"Cache-Control": "no-store"})
        try:
            return self._sse_stream(broadcast, channels, last, last_id, release)
        except BaseException:
            release()
            raise

    def _sse_stream(self, broadcast: Broadcast, channels: Dict[str, Optional[str]], last: str, last_id: str,
                    release: Callable[[], None]) -> Response:
        """The admitted stream; `release` gives its connection slot back when it ends."""
        stream = SSEStream(self.ws.runtime())
        notice = None
        count = min(int(last), self.max_last)
        position = broadcast.event_position()
        plan: Dict[str, Recovery] = {c: (Last(count) if count and room is not None else After(position.seq))
                                     for c, room in channels.items()}
        if last_id:
            epoch, _, seq = last_id.partition("-")
            if epoch == str(position.epoch) and seq.isdigit():
                plan = {c: After(int(seq)) for c in channels}
            else:
                notice = {"type": "not_recovered", "room": None,
                          "reason": "epoch changed or bad Last-Event-ID: refetch the state"}

        def done(result: Dict[str, Recovered]) -> None:
            for channel, outcome in result.items():
                if not outcome.ok:
                    reason = broadcast.loss_reason(outcome.seq) or _too_old(outcome.seq)
                    stream.notice({"type": "not_recovered", "room": channels[channel], "reason": reason})

        if notice:
            stream.notice(notice)
        broadcast.attach(stream)
        broadcast.resume(stream, plan, done)

        def body() -> Iterator[bytes]:
            yield b": uwsgi_ws event stream\nretry: 2000\n\n"
            yield from stream.chunks()

        def closed() -> None:
            try:
                broadcast.detach(stream)
            finally:
                release()

        return Response(_Closing(body(), closed), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class StreamPeer:
    """What an endpoint's ``join`` hook gets as `conn` for an SSE stream, which names
    its rooms up front (``?rooms=``) and is checked before it starts: the request's
    `environ`, the `endpoint`, the `rooms` asked for, ``transport == "sse"``. It
    cannot send (a stream only receives broadcasts); the Flask request context
    (`request`, `session`, `g`) is the stream's request's."""

    transport = "sse"

    def __init__(self, endpoint: Events, environ: Dict[str, Any], rooms: List[str]) -> None:
        self.endpoint = endpoint
        self.environ = environ
        self.rooms = frozenset(rooms)


def _unavailable(broadcast: Broadcast) -> Response:
    return Response(f"503 Service Unavailable: event endpoints need the broadcast ({broadcast.problem}): "
                    "run under uWSGI with --sharedarea 4096 and --mule=uwsgi_ws.mule:run\n",
                    status=503, mimetype="text/plain")


class _Closing:
    """A response iterable whose close() (called by the WSGI server, even when the
    iteration never started) also runs `on_close`: the stream leaves the hub."""

    def __init__(self, iterator: Any, on_close: Callable[[], None]) -> None:
        self._iterator, self._on_close = iterator, on_close

    def __iter__(self) -> Any:
        return self._iterator

    def close(self) -> None:
        try:
            self._iterator.close()
        finally:
            self._on_close()


class SSEStream(QueueSubscriber):
    """An SSE response as a broadcast subscriber (`uwsgi_ws.broadcast.Subscriber`): the
    hub hands it batches of event entries; it turns each into one Server-Sent Event
    (``id: <epoch>-<seq>``, ``event: <name>``, ``data: <the event's JSON>``) for the
    response iterator. `deliver` never blocks (the hub's task); `chunks` blocks
    (the response's own thread or greenlet)."""

    def __init__(self, runtime: Any, max_queue: int = SSE_MAX_QUEUE) -> None:
        self.connected = True
        self._rt = runtime
        self._queue = runtime.Queue()
        self._max_queue = max_queue

    # -- the hub's side --------------------------------------------------------------

    def deliver(self, batch: Batch) -> bool:
        if not self.connected or self._queue.qsize() + len(batch.entries) > self._max_queue:
            return False
        for entry in batch.entries:
            self._queue.put((batch.epoch, entry))
        return True

    def fail_slow(self, code: int, reason: str) -> None:
        self.connected = False
        self._queue.put(None)

    def notice(self, message: Dict[str, Any]) -> None:
        """Queue a protocol notice (not_recovered) for the stream."""
        self._queue.put(message)

    # -- the response's side ------------------------------------------------------------

    def chunks(self) -> Iterator[bytes]:
        """The stream's bytes: events, notices, a comment every SSE_HEARTBEAT seconds of
        quiet; ends when the hub drops the stream as slow. Blocks."""
        while True:
            try:
                item = self._queue.get(timeout=SSE_HEARTBEAT)
            except self._rt.Empty:
                yield b": keepalive\n\n"
                continue
            if item is None:
                return
            if isinstance(item, dict):
                yield events_protocol.sse_notice(item)
                continue
            chunk = _sse_event(*item)
            if chunk is not None:
                yield chunk


_EVENT_PREFIX = b'{"type":"event","event":'
_DECODER = json.JSONDecoder()


def _sse_event(epoch: int, entry: Entry) -> Optional[bytes]:
    """One Server-Sent Event for an event broadcast (`entry` of a batch of ring `epoch`),
    ``id`` its position in the numbering clients resume with; None for anything else."""
    message = Message.of(entry)
    payload = message.payload
    if not payload.startswith(_EVENT_PREFIX):
        return None  # a plain publish on the channel: not an event of this protocol
    if message.event and not message.redis_numbered:
        event_id = f"{epoch}-{message.seq}"
        try:
            name, _ = _DECODER.raw_decode(payload.decode("utf-8"), len(_EVENT_PREFIX))
        except ValueError:
            return None
    elif message.remote or message.redis_numbered:  # numbered by Redis, or another instance's: its own
        try:
            fields = json.loads(payload)
            event_id, name = f"{fields['epoch']}-{fields['seq']}", fields.get("event")
        except (ValueError, KeyError, TypeError):
            return None
    else:
        return None
    return events_protocol.sse_event(event_id, str(name), payload)
