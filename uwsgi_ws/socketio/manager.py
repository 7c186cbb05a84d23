"""A python-socketio client manager whose pub/sub is uwsgi_ws's broadcast.

Every emit, room change and ack that concerns another worker becomes one
JSON message published on one broadcast channel (``socketio:<channel>``):
the publishing worker appends it to the ring (or the broadcast mule does:
`uwsgi_ws.broadcast.writer` says when) and every worker's hub hands it to that
worker's `ChannelListener`, where this manager's task applies it to the
worker's own clients (python-socketio's `PubSubManager` protocol: methods
``emit``, ``callback``, ``disconnect``, ``enter_room``, ``leave_room``,
``close_room``; message shapes are python-socketio's, so its docs apply).

Order, a guarantee Socket.IO's Redis/Kombu managers do not give: an emit to
a room or to everyone is not sent to this worker's clients first; it goes
through the ring like everyone else's, so the emits of all workers reach all
clients in one order, the ring's. An emit to one client of this worker (the
default target of ``emit`` inside a handler) goes straight to it, unless an
earlier emit of this worker is still on its way through the ring: then it
follows that one, so one client sees a worker's emits in the order made.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import threading
import uuid
from typing import Any, Callable, Dict, Iterator, List, Optional, Protocol, Union

import socketio
from socketio.packet import Packet

log = logging.getLogger("uwsgi_ws.socketio.manager")


class Bus(Protocol):
    """What the manager needs of the broadcast (`uwsgi_ws.socketio.extension` gives it).

    `available()`: whether this process can publish (inside a uWSGI worker with
    the broadcast); without it the manager works as python-socketio's local
    Manager (one process: tests, the development server). `publish(text)` hands
    one message to every worker (may block briefly; raises uwsgi_ws.PublishError).
    `batches()` subscribes this worker and returns the iterator of what arrives
    on the channel, as lists of messages (blocking while there are none), or
    None when this worker cannot listen (yet)."""

    def available(self) -> bool: ...

    def publish(self, text: str) -> None: ...

    def batches(self) -> Optional[Iterator[List[Union[str, bytes]]]]: ...


class BroadcastManager(socketio.PubSubManager):  # type: ignore[misc]
    """Client manager carrying emits, rooms and acks across uWSGI workers.

    Args:
        bus: the broadcast (`Bus`).
        channel: python-socketio's channel name (Flask-SocketIO's default
            ``"flask-socketio"``); the broadcast channel is ``socketio:<channel>``.
        logger, json: as python-socketio's `PubSubManager`.

    Thread-safety: python-socketio calls it from request handlers and
    background tasks at once; the in-flight count has its own lock.
    """

    name = "uwsgi_ws"

    def __init__(self, bus: Bus, channel: str = "flask-socketio", logger: Any = None, json: Any = None) -> None:
        self._host: Dict[str, Any] = {}
        super().__init__(channel=channel, write_only=False, logger=logger, json=json)
        self.bus = bus
        self._lock = threading.Lock()
        self._in_flight = 0  # own emits published, not yet back from the ring
        self._batches: Optional[Iterator[List[Union[str, bytes]]]] = None
        self._listening_pid = 0

    # python-socketio makes host_id at construction, which happens in the uWSGI
    # master before the fork: every worker would share it. One per process instead.
    @property
    def host_id(self) -> str:
        pid = os.getpid()
        if self._host.get("pid") != pid:
            self._host = {"pid": pid, "id": f"{pid}-{uuid.uuid4().hex}"}
        return str(self._host["id"])

    @host_id.setter
    def host_id(self, value: str) -> None:
        pass  # PubSubManager.__init__ assigns one; ours is per process

    # -- life cycle -----------------------------------------------------------

    def initialize(self) -> None:
        """Subscribe this worker to the channel now (so its own emits come back),
        then start the task applying what arrives."""
        socketio.Manager.initialize(self)
        self._listen_now()

    def _listen_now(self) -> bool:
        pid = os.getpid()
        if self._listening_pid == pid:
            return True
        with self._lock:
            if self._listening_pid == pid:
                return True
            batches = self.bus.batches()
            if batches is None:
                return False
            self._batches = batches
            self._listening_pid = pid
        self.thread = self.server.start_background_task(self._thread)
        log.info("uwsgi_ws.socketio: worker %s listens on channel %r", pid, self.channel)
        return True

    # -- emitting ---------------------------------------------------------------

    def emit(self, event: str, data: Any, namespace: Optional[str] = None, room: Optional[str] = None,
             skip_sid: Any = None, callback: Optional[Callable[..., Any]] = None, to: Optional[str] = None,
             **kwargs: Any) -> None:
        """Emit `event` with `data` to `room` (a room name or a sid; None: every
        client of `namespace`) in every worker (python-socketio's signature).

        Raises:
            uwsgi_ws.PublishError: the broadcast could not take it (the message says why).
            ValueError: a callback without a single recipient (`room`).
        """
        room = to or room
        namespace = namespace or "/"
        if kwargs.get("ignore_queue") or not self.bus.available() or (
                room is not None and self._direct(room, namespace)):
            socketio.Manager.emit(self, event, data, namespace, room=room, skip_sid=skip_sid, callback=callback)
            return
        remote_callback = None
        if callback is not None:
            if room is None:
                raise ValueError("Cannot use callback without a room set.")
            remote_callback = (room, namespace, self._generate_ack_id(room, callback))
        data = list(data) if isinstance(data, tuple) else [data]
        binary = Packet.data_is_binary(data)
        if binary:
            data, attachments = Packet.deconstruct_binary(data)
            data = [data, *[base64.b64encode(a).decode() for a in attachments]]
        message = {"method": "emit", "event": event, "data": data, "binary": binary, "namespace": namespace,
                   "room": room, "skip_sid": skip_sid, "callback": remote_callback, "host_id": self.host_id}
        tracked = self._listen_now()
        if tracked:
            with self._lock:
                self._in_flight += 1
        try:
            self._publish(message)
        except BaseException:
            if tracked:
                with self._lock:
                    self._in_flight -= 1
            raise

    def enter_room(self, sid: str, namespace: str, room: str, eio_sid: Optional[str] = None) -> Any:
        if not self.bus.available():
            return socketio.Manager.enter_room(self, sid, namespace, room, eio_sid=eio_sid)
        return super().enter_room(sid, namespace, room, eio_sid=eio_sid)

    def leave_room(self, sid: str, namespace: str, room: str) -> Any:
        if not self.bus.available():
            return socketio.Manager.leave_room(self, sid, namespace, room)
        return super().leave_room(sid, namespace, room)

    def close_room(self, room: str, namespace: Optional[str] = None) -> Any:
        if not self.bus.available():
            return socketio.Manager.close_room(self, room, namespace)
        return super().close_room(room, namespace)

    def disconnect(self, sid: str, namespace: Optional[str] = None, **kwargs: Any) -> Any:
        if not self.bus.available():
            return socketio.Manager.disconnect(self, sid, namespace)
        return super().disconnect(sid, namespace, **kwargs)

    def can_disconnect(self, sid: str, namespace: str) -> Any:
        """Whether `sid` is connected and may be disconnected (python-socketio's hook):
        the worker's own view when the broadcast is unavailable, else the pub/sub one."""
        if not self.bus.available():
            return socketio.Manager.can_disconnect(self, sid, namespace)
        return super().can_disconnect(sid, namespace)

    def _direct(self, room: Any, namespace: str) -> bool:
        """`room` is one client of this worker and no own emit is on its way."""
        if not isinstance(room, str):
            return False  # a list of rooms
        if not (self.is_connected(room, namespace) or self.is_pre_connected(room, namespace)):
            return False
        with self._lock:
            return self._in_flight == 0

    def _publish(self, data: Dict[str, Any]) -> None:
        self.bus.publish(self.json.dumps(data))

    def _listen(self) -> Iterator[List[Union[str, bytes]]]:
        if self._batches is None:  # pragma: no cover - _listen_now ran first
            return iter(())
        return self._batches

    # -- applying what arrives ----------------------------------------------------

    def _thread(self) -> None:
        batch_of = getattr(self.server.eio, "batch", None)  # EngineServer: one write per client per batch
        for batch in self._listen():
            with batch_of() if batch_of is not None else contextlib.nullcontext():
                for message in batch:
                    self._receive(message)

    def _receive(self, message: Union[str, bytes]) -> None:
        try:
            data = self.json.loads(message)
        except Exception:
            log.error("uwsgi_ws.socketio: not a manager message on the channel: %.80r", message)
            return
        if not isinstance(data, dict) or "method" not in data:
            return
        try:
            self._apply(data)
        except Exception:
            log.exception("uwsgi_ws.socketio: handling a %r message failed", data.get("method"))

    def _apply(self, data: Dict[str, Any]) -> None:
        method = data["method"]
        own = data.get("host_id") == self.host_id
        if method == "emit":
            if own:
                with self._lock:
                    self._in_flight = max(0, self._in_flight - 1)
            self._handle_emit(data)
        elif method == "callback":
            self._handle_callback(data)
        elif own:
            return  # done here before it was published
        elif method == "disconnect":
            self._handle_disconnect(data)
        elif method == "enter_room":
            self._handle_enter_room(data)
        elif method == "leave_room":
            self._handle_leave_room(data)
        elif method == "close_room":
            self._handle_close_room(data)
