"""Presence and control of an events endpoint, over the broadcast only.

Every worker that serves an events endpoint keeps one `Registry` per endpoint:
its own connections (id, identity, rooms, the socket) and a *replica* of every
worker's connections. The replica is built from messages on the endpoint's
control channel ``events:<path>#ctl`` of the broadcast ring, which the
registry subscribes as a plain `uwsgi_ws.broadcast.Subscriber` (it reads the
entries instead of writing them to a socket, as an SSE stream does):

    {"op":"member","pid":P,"id":C,"v":V,"identity":I,"rooms":[R,...]}   C's state now
    {"op":"gone","pid":P,"id":C,"v":V}                                  C closed
    {"op":"sync","pid":P,"nonce":N}            a new registry asks every worker's state
    {"op":"state","pid":P,"for":N,"members":{C:{"v":V,"identity":I,"rooms":[..]}}}
    {"op":"disconnect","id":C,"code":K,"reason":S}                      close C (its worker)
    {"op":"close_room","room":R}                   every member of R leaves it (their workers)

A member message carries the connection's whole state and a version `v` that
grows with each change of that connection, so the replica keeps the newest
state whatever the order a ``state`` answer and a later change arrive in
(``gone`` leaves a tombstone). A killed worker's connections leave presence at
once: a reader skips every pid that is no longer a live process (/proc, as
`uwsgi_ws.metrics` skips the rows of dead workers).

With the Redis bridge every channel reaches the other instances: targeted
events and ``disconnect``/``close_room`` act there too, and the replica also
holds the other instances' connections (each message names its instance,
``"inst": "<host>:<master pid>"``). Another instance's processes cannot be
checked in /proc, so there liveness is a heartbeat: while bridged, every
registry with connections publishes its ``state`` every HEARTBEAT seconds
(the setting ``presence-heartbeat``: ``uwsgi-ws-presence-heartbeat`` /
``UWSGI_WS_PRESENCE_HEARTBEAT``, default 5), and a remote worker's
connections leave presence when nothing came from it for 3 heartbeats (an
expiry, as a Redis hash with a TTL per instance would have). Across instances
presence is as fresh as the bridge (eventually consistent); within the
instance it is exact as above.

Reads (`members`, `count`) first wait until this worker's hub has handed out
everything appended to the ring when the call started (`Broadcast.recover` of
an empty plan answers with the hub's position), so a join published before the
call is seen, from whichever worker. A registry created after other workers
had connections (a respawned worker) asks them once (``sync``) and waits at
most SYNC_TIMEOUT for the answers of the live workers.

Thread-safety: every public method may be called from any thread or greenlet of
the worker; `deliver` runs in the hub's task and never blocks (what must
publish or close is spawned as a task of the runtime).
"""

from __future__ import annotations

import collections
import json
import os
import socket
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Set, Tuple

from . import _uwsgi, settings
from .broadcast import Batch, Broadcast, Message, QueueSubscriber, channel_bytes
from .log import get as _logger

log = _logger(__name__)

SYNC_TIMEOUT = 2.0  # seconds a new registry waits for the other workers' state
READ_TIMEOUT = 5.0  # seconds a read waits for this worker's hub to catch up
_TOMBSTONES = 65536  # closed connection ids remembered (against late state answers)
#: Control messages acted on when they come from another instance (the Redis bridge):
#: targeting works across instances; presence stays this instance's.
_REMOTE_OPS = ("disconnect", "close_room")
HEARTBEAT: float = settings.get("presence-heartbeat")  # seconds, while bridged


def control_channel(path: str) -> str:
    """The control channel of the events endpoint at `path`."""
    return f"events:{path}#ctl"


def connection_channel(path: str, conn_id: str) -> str:
    """The channel every connection `conn_id` of the endpoint at `path` listens on
    (``emit(..., to=<connection id>)``)."""
    return f"events:{path}#c:{conn_id}"


def user_channel(path: str, user: str) -> str:
    """The channel of every connection whose identity names `user` (``to_user=``).
    Raises ValueError when the name is too long for a channel."""
    channel = f"events:{path}#u:{user}"
    channel_bytes(channel)
    return channel


def pid_alive(pid: int) -> bool:
    """True while process `pid` runs (not gone, not a zombie waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    state = stat[stat.rindex(b")") + 2:stat.rindex(b")") + 3]
    return state not in (b"Z", b"X", b"x")


def _pid_of(conn_id: str) -> int:
    head, _, _ = conn_id.partition("-")
    return int(head) if head.isdigit() else 0


def instance_id() -> str:
    """This instance's name in presence messages: "<host>:<master pid>"."""
    return f"{socket.gethostname()}:{_uwsgi.masterpid() if _uwsgi.available() else os.getpid()}"


class _Member:
    __slots__ = ("id", "identity", "inst", "pid", "rooms", "v")

    def __init__(self, conn_id: str, inst: str, pid: int, v: int, identity: Any, rooms: Set[str]) -> None:
        self.id, self.inst, self.pid, self.v, self.identity, self.rooms = conn_id, inst, pid, v, identity, rooms


class Local:
    """One connection of this worker as the registry knows it."""

    __slots__ = ("id", "identity", "on_control", "rooms", "v", "ws")

    def __init__(self, conn_id: str, identity: Any, ws: Any, on_control: Callable[[Dict[str, Any]], None]) -> None:
        self.id, self.identity, self.ws, self.on_control = conn_id, identity, ws, on_control
        self.rooms: Set[str] = set()
        self.v = 0


class Registry(QueueSubscriber):
    """This worker's presence view of one events endpoint (see the module doc).

    Args:
        path: the endpoint's path.
        broadcast: this process's `Broadcast` (must be `available`).
        runtime: the runtime module (Lock, Event, spawn).
        tracked: publish membership (the endpoint's ``presence=True``); without it
            only the control messages are acted on (this worker's connections).
    """

    connected = True  # as a Subscriber: never closes
    pending_output = 0

    def __init__(self, path: str, broadcast: Broadcast, runtime: Any, tracked: bool = True) -> None:
        self.path = path
        self.tracked = tracked
        self.channel = control_channel(path)
        self._bc = broadcast
        self._rt = runtime
        self._pid = os.getpid()
        self._lock = runtime.Lock()
        self._local: Dict[str, Local] = {}
        self._members: Dict[str, _Member] = {}
        self._rooms: Dict[str, Set[str]] = collections.defaultdict(set)
        self._gone: Set[str] = set()
        self._gone_order: Deque[str] = collections.deque()
        self._answered: Set[int] = set()
        self._inst = instance_id()
        self._heard: Dict[Tuple[str, int], float] = {}  # (remote instance, pid) -> last message (monotonic)
        self._nonce = f"{self._pid}-{time.monotonic_ns()}"
        broadcast.attach(self)
        broadcast.subscribe(self, self.channel)
        self._sync_deadline = time.monotonic() + SYNC_TIMEOUT
        self._peers: Set[int] = set()

    def start(self) -> None:
        """Ask the other live workers for their connections (once, at creation).
        Raises PublishError."""
        if not self.tracked:
            return
        if _bridged():
            self._rt.spawn(self._heartbeat)
        self._peers = self._other_workers()
        self._sync_deadline = time.monotonic() + SYNC_TIMEOUT
        self.publish({"op": "sync", "pid": self._pid, "inst": self._inst, "nonce": self._nonce})

    # -- this worker's connections ------------------------------------------------------------

    def add(self, conn_id: str, identity: Any, ws: Any, on_control: Callable[[Dict[str, Any]], None]) -> Local:
        """Register connection `conn_id` (no rooms yet: it is not in presence until it
        joins one). `on_control` gets this connection's control messages (in a task
        of its own, not the hub's)."""
        local = Local(conn_id, identity, ws, on_control)
        with self._lock:
            self._local[conn_id] = local
        return local

    def rooms_changed(self, local: Local, rooms: Set[str]) -> None:
        """Publish `local`'s new room set (blocks until it is in the ring).
        Raises PublishError."""
        with self._lock:
            local.v += 1
            local.rooms = set(rooms)
            message = self._member_message(local)
        if self.tracked:
            self.publish(message)

    def remove(self, local: Local, timeout: Optional[float] = None) -> None:
        """The connection closed: it leaves presence everywhere (waiting for the ring's
        writer lock or the mule at most `timeout` s; None: the publish timeout). Raises
        PublishError."""
        with self._lock:
            self._local.pop(local.id, None)
            local.v += 1
            version = local.v
        if self.tracked and (local.rooms or local.v > 1):
            self.publish({"op": "gone", "pid": self._pid, "inst": self._inst, "id": local.id, "v": version}, timeout)

    def local_members(self, room: str) -> List[Local]:
        """This worker's connections in `room` now."""
        with self._lock:
            return [c for c in self._local.values() if room in c.rooms]

    def local(self, conn_id: str) -> Optional[Local]:
        with self._lock:
            return self._local.get(conn_id)

    def publish(self, message: Dict[str, Any], timeout: Optional[float] = None) -> None:
        self._bc.publish(json.dumps(message, separators=(",", ":")), self.channel, timeout=timeout)

    def _member_message(self, local: Local) -> Dict[str, Any]:
        return {"op": "member", "pid": self._pid, "inst": self._inst, "id": local.id, "v": local.v,
                "identity": local.identity, "rooms": sorted(local.rooms)}

    # -- reads -------------------------------------------------------------------------------

    def members(self, room: str) -> List[Tuple[str, Any]]:
        """(connection id, identity) of every connection in `room`, all workers, sorted
        by id. Blocks until this worker's hub caught up (at most READ_TIMEOUT)."""
        self._catch_up()
        with self._lock:
            found = [self._members[k] for k in self._rooms.get(room, ())]
        alive = self._alive({(m.inst, m.pid) for m in found})
        out = sorted(((m.id, m.identity) for m in found if alive[(m.inst, m.pid)]), key=lambda t: t[0])
        dead = [key for key, ok in alive.items() if not ok]
        if dead:
            self._drop(dead)
        return out

    def _alive(self, keys: Set[Tuple[str, int]]) -> Dict[Tuple[str, int], bool]:
        """Whether each (instance, pid) still runs: /proc here, the heartbeat elsewhere."""
        now = time.monotonic()
        out = {}
        for inst, pid in keys:
            if inst == self._inst:
                out[(inst, pid)] = pid == self._pid or pid_alive(pid)
            else:
                out[(inst, pid)] = now - self._heard.get((inst, pid), 0.0) < 3 * HEARTBEAT
        return out

    def count(self, room: str) -> int:
        """The number of connections in `room`, all workers (no identities copied, one
        liveness check per worker). Blocks as `members`."""
        self._catch_up()
        with self._lock:
            by_pid = collections.Counter((self._members[k].inst, self._members[k].pid)
                                         for k in self._rooms.get(room, ()))
        alive = self._alive(set(by_pid))
        return sum(n for key, n in by_pid.items() if alive[key])

    def rooms(self) -> Dict[str, int]:
        """Every room with at least one connection, all workers: ``{room: count}``
        (Centrifugo's "channels" query). Blocks as `members`; one liveness check per
        worker, never per connection."""
        self._catch_up()
        with self._lock:
            by_room = {room: collections.Counter((self._members[k].inst, self._members[k].pid) for k in keys)
                       for room, keys in self._rooms.items() if keys}
        alive = self._alive({key for counter in by_room.values() for key in counter})
        counts = {room: sum(n for key, n in counter.items() if alive[key]) for room, counter in by_room.items()}
        return {room: n for room, n in sorted(counts.items()) if n}

    def user_connections(self, key: str, value: Any) -> List[str]:
        """Ids of the connections whose identity has `key` == `value` (all workers)."""
        self._catch_up()
        with self._lock:
            return sorted(m.id for m in self._members.values()
                          if isinstance(m.identity, dict) and m.identity.get(key) == value)

    def _catch_up(self) -> None:
        """Wait until the hub handed this registry everything in the ring now, and
        (once) for the other live workers' answers to this registry's sync."""
        target = self._bc.position().seq
        deadline = time.monotonic() + READ_TIMEOUT
        while True:
            reached = self._rt.Event()
            where: List[int] = []

            def done(result: Dict[str, Any], where: List[int] = where, reached: Any = reached) -> None:
                where.append(result[self.channel].seq)
                reached.set()

            self._bc.recover(self, {self.channel: None}, done)
            if not reached.wait(max(0.01, deadline - time.monotonic())):
                log.warning("presence of %s: the broadcast hub did not catch up in %.0f s", self.path, READ_TIMEOUT)
                break
            if where[0] >= target:
                break
        while self._peers and time.monotonic() < self._sync_deadline:
            with self._lock:
                missing = {p for p in self._peers if p not in self._answered}
            missing = {p for p in missing if pid_alive(p)}
            if not missing:
                self._peers = set()
                break
            self._rt.sleep(0.01)

    def _other_workers(self) -> Set[int]:
        if not _uwsgi.available() or not _uwsgi.in_uwsgi_thread():
            return set()
        try:
            workers = _uwsgi.api().workers()
        except Exception:  # not callable from here: no wait
            return set()
        return {int(w["pid"]) for w in workers if w.get("pid") and int(w["pid"]) != self._pid}

    def _drop(self, dead: List[Tuple[str, int]]) -> None:
        with self._lock:
            for key in [k for k, m in self._members.items() if (m.inst, m.pid) in dead]:
                self._set(key, None)

    def _heartbeat(self) -> None:
        """While bridged: this worker's state every HEARTBEAT seconds (the other
        instances' expiry), while it has connections."""
        while True:
            self._rt.sleep(HEARTBEAT)
            with self._lock:
                idle = not self._local
            if not idle:
                self._answer(None)

    # -- the replica (hub task: never block) -----------------------------------------------------

    def _set(self, conn_id: str, member: Optional[_Member]) -> None:
        """Replace `conn_id`'s state (lock held)."""
        old = self._members.pop(conn_id, None)
        for room in old.rooms if old is not None else ():
            ids = self._rooms.get(room)
            if ids is not None:
                ids.discard(conn_id)
                if not ids:
                    del self._rooms[room]
        if member is not None and member.rooms:
            self._members[conn_id] = member
            for room in member.rooms:
                self._rooms[room].add(conn_id)
        elif member is not None:
            self._members[conn_id] = member

    def _apply_member(self, inst: str, conn_id: str, pid: int, v: int, identity: Any, rooms: List[str]) -> None:
        key = f"{inst}|{conn_id}"
        if key in self._gone:
            return
        old = self._members.get(key)
        if old is not None and old.v >= v:
            return
        self._set(key, _Member(conn_id, inst, pid, v, identity, set(rooms)))

    def _apply(self, message: Dict[str, Any]) -> None:
        op = message.get("op")
        inst = str(message.get("inst") or self._inst)
        if inst != self._inst and "pid" in message:
            self._heard[(inst, int(message["pid"]))] = time.monotonic()
        if op == "member":
            with self._lock:
                self._apply_member(inst, str(message["id"]), int(message["pid"]), int(message["v"]),
                                   message.get("identity"), list(message.get("rooms") or ()))
        elif op == "gone":
            key = f"{inst}|{message['id']}"
            with self._lock:
                self._set(key, None)
                self._gone.add(key)
                self._gone_order.append(key)
                if len(self._gone_order) > _TOMBSTONES:
                    self._gone.discard(self._gone_order.popleft())
        elif op == "state":
            with self._lock:
                if message.get("for") == self._nonce and inst == self._inst:
                    self._answered.add(int(message["pid"]))
                for conn_id, m in (message.get("members") or {}).items():
                    self._apply_member(inst, str(conn_id), int(message["pid"]), int(m["v"]), m.get("identity"),
                                       list(m.get("rooms") or ()))
        elif op == "sync":
            if self.tracked and (inst != self._inst or int(message["pid"]) != self._pid):
                self._rt.spawn(self._answer, str(message.get("nonce")))
        elif op == "disconnect":
            local = self.local(str(message.get("id")))
            if local is not None:
                self._rt.spawn(local.on_control, message)
        elif op == "close_room":
            room = str(message.get("room"))
            for local in self.local_members(room):
                self._rt.spawn(local.on_control, message)

    def _answer(self, nonce: Optional[str]) -> None:
        with self._lock:
            members = {c.id: {"v": c.v, "identity": c.identity, "rooms": sorted(c.rooms)}
                       for c in self._local.values()}
        try:
            self.publish({"op": "state", "pid": self._pid, "inst": self._inst, "for": nonce, "members": members})
        except Exception:
            log.exception("presence of %s: could not answer a sync", self.path)

    # -- Subscriber (the hub's task) ----------------------------------------------------------------

    def deliver(self, batch: Batch) -> bool:
        for entry in batch.entries:
            if entry.channel != self.channel:
                continue
            try:
                read = Message.of(entry)
                message = json.loads(read.payload)
                if not isinstance(message, dict):
                    continue
                if read.remote and message.get("op") not in _REMOTE_OPS and (
                        not message.get("inst") or message.get("inst") == self._inst):
                    continue  # an unnamed (or our own, echoed) presence message from the bridge
                self._apply(message)
            except (ValueError, KeyError, TypeError):
                log.warning("presence of %s: an unreadable control message (ignored)", self.path)
        return True



def _bridged() -> bool:
    """True when the instance is bridged to others through Redis (``redis-url``)."""
    try:
        return bool(settings.get("redis-url"))
    except Exception:
        return False


_registries: Dict[Tuple[int, str], Registry] = {}
_registries_lock = threading.Lock()  # never held across a yield


def registry(path: str, broadcast: Broadcast, runtime: Any, tracked: bool = True) -> Registry:
    """This worker's registry of the endpoint at `path` (made on first use; `tracked`
    as `Registry`). Raises RingError when the broadcast is not available."""
    key = (os.getpid(), path)
    found = _registries.get(key)
    if found is None:
        with _registries_lock:
            found = _registries.get(key)
            new = found is None
            if found is None:
                found = _registries[key] = Registry(path, broadcast, runtime, tracked)
        if new:
            found.start()
    return found
