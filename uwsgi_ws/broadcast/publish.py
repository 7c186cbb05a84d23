"""`publish()`: put a message in the broadcast ring, from any thread of any process.

A plain message published inside the instance (a worker, spooler or mule) is
appended by the publishing process itself under the instance's writer lock
(`uwsgi_ws.broadcast.writer`, which lists what goes where). Everything else goes
to the broadcast mule (`uwsgi_ws.broadcast.mule`) through one transport: a Unix
stream socket the broadcast mule listens on,

- ``\\0uwsgi_ws-publish-<master pid>`` (abstract, private to the instance:
  the mule answers processes of its own user or root only, SO_PEERCRED), used
  by the instance's own processes (workers, spoolers, other mules);
- with the instance setting ``uwsgi-ws-publish-socket=PATH``, also a
  filesystem socket at PATH (mode ``uwsgi-ws-publish-socket-mode``, default
  0660), for any process of the host with permission (`uwsgi_ws.client`).

A socket needs nothing of uWSGI's request API, so a publish works from a
``threading.Thread`` in every model (uWSGI's own ``mule_msg`` raises there, or
kills a gevent worker), from greenlets (through the caller's runtime Waiter:
a gevent worker's loop never blocks on it; a foreign thread of a gevent worker
uses plain blocking sockets, never the main thread's hub), and from outside
the instance.

Wire format (all integers little-endian). A publish request (also what the
ring's writer decodes, `decode_request`):

    b"UWS1" | flags u8 | channel_len u8 | channel (UTF-8) | payload

    flags: bit 0 (FLAG_BINARY) binary frame; bit 2 (FLAG_EVENT) the payload is
    a JSON object (UTF-8 text, ending with ``}``) of the event protocol
    (`uwsgi_ws.events`, docs/protocol.md): the mule appends the message's ring
    sequence number and the ring epoch to it, ``,"seq":<seq>,"epoch":"<epoch>"}``,
    before framing it once as a text frame. The ring record keeps the flag.

On the socket, each request travels in an envelope, and the mule answers each
one, in order, once it is in the ring (or refused):

    client -> mule:  body_len u32 | client_id u64 | number u64 | publish request
                     (body_len = 16 + the request's length)
    mule -> client:  status u8 | seq u64 | text_len u32 | text (UTF-8)
                     status 0: appended as ring message `seq`;
                     status 1: refused, `text` says why (too large, malformed):
                     sending it again would not help.

A client sends one request at a time per connection and waits for its answer.
When the connection breaks first (the mule was killed and is being respawned),
the client reconnects and sends the same request with the same (client_id,
number) until ``uwsgi-ws-publish-timeout``; the mule keeps the last (number,
seq) of each client id it appended, in memory and in a journal that outlives a
``kill -9`` of the mule (`Journal` in the mule), so a request appended before
the kill is acknowledged with its seq instead of being appended twice.

Inside the broadcast mule itself a publish goes straight to the ring: the mule
registers its appender with `set_local_sink` at start, so this module never
imports the mule.

Publishing from the master (a thread started at import). uWSGI imports the app
in its master, so a ``threading.Thread`` started at import runs there while the
master forks the workers and the mule, and again whenever it respawns one. uWSGI
2.0 forks with plain fork() after releasing the GIL (uwsgi_python_master_fixup);
each child then takes the GIL first. If another thread held it at the fork, the
child waits for ever for a thread that does not exist in it (seen with gdb:
``take_gil`` under ``uwsgi_python_master_fixup``, from ``uwsgi_respawn_worker``
and from ``uwsgi_mule``; unbit/uwsgi#1149). Nothing in Python can hold the master's
forks off, so the publish client keeps its threads off the GIL whenever a fork
may come:

- `MuleGate`: the master makes a pipe when this module is imported there (while
  it loads the app, before any fork); every mule inherits it and writes a byte
  to it when it runs Python (`set_local_sink`), i.e. once it is past its fork.
- A publish in the master before any mule has started parks in ``select()`` on
  that pipe *before* any other call that releases the GIL (os.urandom, socket(),
  connect()): when uWSGI releases the GIL and forks, the thread is blocked in the
  kernel, not runnable. Publishes made before the workers exist are not lost:
  they wait (GIL released) for the mule and are then sent, in order.
- After a failure (refused, or the mule closed the socket: killed, being
  respawned), the master's client does not retry on a timer, as a worker's does:
  it waits in ``select()`` until a mule started after the last one that answered
  (or at most `MuleGate.SLICE` s once a mule has ever started, for a mule forked
  before the gate existed), then retries quickly (that mule is past its fork).
- At a reload uWSGI closes every other fd before exec'ing itself; a publisher
  that finds the pipe closed then waits quietly for the exec.

What this cannot cover: the user's own Python running in the master at the moment
of a fork (the loop around the publish). uWSGI's remedy, ``--py-call-uwsgi-fork-hooks``
(take the GIL around forks), covers only the workers' forks, and in uWSGI 2.0.31
with a mule it crashes every mule at start (uwsgi_python_post_fork calls Python
without the GIL: a segfault in PyList_New), so it is not used. A non-daemon thread
in the master also copied its running state into every child: without
``--py-call-osafterfork`` (CPython's after-fork reset, run in each child after it
took the GIL) a worker's exit waits for that thread for ever (a reload then takes
the whole worker mercy); the configs and the tests set it.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import threading
import time
from typing import Any, Callable, List, NamedTuple, Optional, Tuple, Union

from .. import _uwsgi, frames, metrics, settings
from ..exceptions import PublishError
from .ring import FLAG_BINARY, FLAG_EVENT, BroadcastRing

PREFIX = b"UWS1"
REQUEST = struct.Struct("<4sBB")
ENVELOPE = struct.Struct("<IQQ")  # body_len, client_id, number
REPLY = struct.Struct("<BQI")  # status, seq, text_len
OK, REFUSED = 0, 1
MAX_REPLY_TEXT = 4096
DEFAULT_MULE_MSG_SIZE = 65536
_EVENT_TAIL_MAX = len(b',"seq":,"epoch":""') + 20 + 20  # what the mule adds to an event payload
SEND_FLAGS = getattr(socket, "MSGSEND_FLAGS", 0)  # a peer gone: EPIPE, never a SIGPIPE that kills the process
_SLOW_ACK = 0.5  # seconds without an answer after which a publish counts as having waited for the mule

Data = Union[str, bytes, bytearray, memoryview]
Address = Union[str, bytes]


def encode_request(data: Data, channel: Optional[str], event: bool = False) -> bytes:
    """The publish request for `data` on `channel` (layout above).

    Every publish entry encodes here (`publish`, the in-process broadcast, and
    `uwsgi_ws.client.Publisher` outside the instance), so a message is checked in
    the publishing process, before anything goes to the mule.

    Raises:
        TypeError: `data` is neither str nor bytes-like.
        ValueError: a str with a lone surrogate: a text frame must be UTF-8 (RFC 6455
            section 5.6; `frames.utf8`, the rule `Connection.send` applies).
        PublishError: a bad channel name, or a malformed event.
    """
    if isinstance(data, str):
        flags, payload = 0, frames.utf8(data, "a published text message")
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
    if len(message) < start + clen:
        raise ValueError("a publish request shorter than its channel name")
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
    """The largest publish request (bytes): uWSGI's --mule-msg-size, 65536 when unset or
    malformed (the limit publish requests always had; the mule enforces it)."""
    value = _uwsgi.option("mule-msg-size")
    try:
        return int(value) if value is not None else DEFAULT_MULE_MSG_SIZE
    except ValueError:
        return DEFAULT_MULE_MSG_SIZE


def size_problem(request: bytes, limit: int) -> Optional[str]:
    """Why `request` is over the request limit `limit` (None when it fits)."""
    if len(request) <= limit:
        return None
    chan_len = request[5]
    return (f"a message of {len(request) - REQUEST.size - chan_len} bytes is over the limit: --mule-msg-size={limit} "
            f"leaves room for {limit - REQUEST.size - chan_len} bytes"
            + (f" (with this {chan_len}-byte channel name)" if chan_len else "")
            + ": raise --mule-msg-size (and --sharedarea) or send less")


def ring_problem(request: bytes, ring: BroadcastRing) -> Optional[str]:
    """Why `request`, framed (an event with its seq and epoch), does not fit `ring` (None when it does)."""
    chan_len = request[5]
    payload_size = len(request) - REQUEST.size - chan_len + (_EVENT_TAIL_MAX if request[4] & FLAG_EVENT else 0)
    frame_size = frames.header_size(payload_size) + payload_size
    if frame_size > ring.max_frame_size(chan_len):
        return (f"message of {frame_size} bytes (framed) is over the broadcast ring's limit of "
                f"{ring.max_frame_size(chan_len)} bytes (a quarter of the ring): raise --sharedarea")
    return None


def address() -> bytes:
    """The instance's publish socket (abstract). Raises NotUnderUwsgi outside uWSGI."""
    return _uwsgi.instance_address("publish")


# -- the client side of the socket -----------------------------------------------------


class Refused(PublishError):
    """The mule refused the request (its answer says why); sending it again would not help."""


class Link:
    """One client of a mule's publish socket at `address` (abstract or a path): one
    request at a time, acknowledged. Not thread-safe: one user at a time (a pool
    hands links out). Reconnects by itself; keeps its client id across reconnects
    so a request repeated after a broken connection is never appended twice."""

    def __init__(self, address: Address) -> None:
        self.address = address
        self.client_id = int.from_bytes(os.urandom(8), "little")
        self.number = 0
        self.sock: Optional[socket.socket] = None
        self.pid = os.getpid()
        self._waiter: Any = None
        self._waiter_rt: Any = None
        # True while the socket is in plain non-blocking mode (setblocking(False)), so
        # a greenlet's publish sets it once per connection, not per send and receive
        # (each setblocking is an ioctl); settimeout (a thread's wait) clears it.
        self._nonblocking = False

    def close(self) -> None:
        """Close the socket (the next call reconnects). Idempotent."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            self._waiter = None
            self._nonblocking = False

    def call(self, request: bytes, timeout: float, runtime: Any = None,
             on_wait: Optional[Callable[[], None]] = None, gate: Optional[MuleGate] = None) -> int:
        """Send `request` and return its ring seq once the mule appended it.

        Args:
            request: a publish request (`encode_request`).
            timeout: seconds to keep trying (connect, reconnect, wait for the answer).
            runtime: the caller's runtime adapter, whose Waiter and sleep are used
                (a greenlet never blocks its worker); None: plain blocking sockets
                (any thread, any process).
            on_wait: called once if the publish has to wait for the mule (a retry,
                or no answer within half a second).
            gate: in the uWSGI master, its `MuleGate`: while no mule has started since
                the last one that answered, wait on it (no Python runs) instead of
                retrying (see "Publishing from the master" above).

        Returns:
            The message's sequence number in the ring.

        Raises:
            Refused: the mule refused it (too large, malformed): the text says why.
            PublishError: no answer within `timeout` (the text says what was wrong:
                no such socket, permission denied, the mule not running).
        """
        self.number += 1
        envelope = ENVELOPE.pack(16 + len(request), self.client_id, self.number) + request
        deadline = time.monotonic() + timeout
        delay = 0.002
        waited = False
        problem = "no answer"
        while True:
            try:
                if self.sock is None:
                    self._connect(runtime)
                self._send(envelope, deadline, runtime)
                status, seq, text = self._receive(deadline, runtime, None if waited or on_wait is None else on_wait)
                if gate is not None:
                    gate.answered()
                if status == OK:
                    return seq
                raise Refused(text)
            except TimeoutError:  # before OSError, its base class
                self.close()  # an answer may still come: never read it as the next one's
                raise PublishError(f"publish failed after {timeout:g}s: no answer from the broadcast mule on "
                                   f"{self._where()} (is it stopped or overloaded?)") from None
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                problem = self._not_running(exc)
                self.close()
            except PermissionError as exc:
                self.close()
                raise PublishError(self._denied(exc)) from None
            except (ConnectionError, EOFError, OSError) as exc:
                if isinstance(exc, OSError) and exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN,
                                                                  None, errno.EAGAIN):
                    if gate is not None and exc.errno == errno.EBADF:
                        gate.closed()  # uWSGI closed our fds for a reload's exec
                    self.close()
                    raise PublishError(f"cannot publish through {self._where()}: {exc}") from None
                problem = f"the broadcast mule closed {self._where()} before answering (being respawned?)"
                self.close()
            if time.monotonic() + delay >= deadline:
                raise PublishError(f"publish failed after {timeout:g}s: {problem}")
            if not waited and on_wait is not None:
                waited = True
                on_wait()
            if gate is not None and not gate.started_since_answer():
                gate.wait(deadline)  # the mule is dead or being forked: no Python may run now
                continue
            (runtime.sleep if runtime is not None else time.sleep)(delay)
            delay = min(delay * 2, 0.1)

    # -- internals -----------------------------------------------------------

    def _where(self) -> str:
        if isinstance(self.address, bytes):
            return "the instance's publish socket " + repr(self.address.replace(b"\0", b"@").decode(errors="replace"))
        return f"the publish socket {self.address}"

    def _not_running(self, exc: OSError) -> str:
        if isinstance(self.address, str) and isinstance(exc, FileNotFoundError):
            return (f"no such socket {self.address}: set uwsgi-ws-publish-socket={self.address} in the instance's "
                    "config and check that it runs")
        if isinstance(self.address, str):  # a publisher outside the instance, on the socket file
            return (f"nothing listens on {self._where()}: the instance is stopped (the file is left from its "
                    "last run) or its broadcast mule is being respawned; start the instance (its config needs "
                    "the broadcast mule: include conf/broadcast.yaml, or --mule=uwsgi_ws.mule:run, and --master)")
        return (f"the broadcast mule is not running (nothing listens on {self._where()}): add it (include "
                "conf/broadcast.yaml, or --mule=uwsgi_ws.mule:run) and --master, or wait for its respawn")

    def _denied(self, exc: OSError) -> str:
        return (f"permission denied on {self._where()} (uid {os.getuid()}): run as a user the socket's mode "
                "(uwsgi-ws-publish-socket-mode, default 0660) lets write, e.g. in its group")

    def _connect(self, runtime: Any) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.address)  # a Unix socket connects at once or fails (a full backlog: EAGAIN)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.pid = os.getpid()

    def _ready(self, read: bool, deadline: float, runtime: Any) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        assert self.sock is not None
        if runtime is None:
            self.sock.settimeout(remaining)
            self._nonblocking = False
            return
        self._set_nonblocking()
        if self._waiter is None or self._waiter_rt is not runtime:
            self._waiter, self._waiter_rt = runtime.Waiter(self.sock.fileno()), runtime
        readable, writable = self._waiter.wait(read, not read, remaining)
        if not (readable or writable):
            raise TimeoutError

    def _set_nonblocking(self) -> None:
        assert self.sock is not None
        if not self._nonblocking:
            self.sock.setblocking(False)
            self._nonblocking = True

    def _send(self, data: bytes, deadline: float, runtime: Any) -> None:
        view = memoryview(data)
        while view:
            assert self.sock is not None
            if runtime is None:
                self._ready(False, deadline, None)
                try:
                    view = view[self.sock.send(view, SEND_FLAGS):]
                except socket.timeout:
                    raise TimeoutError from None
                continue
            self._set_nonblocking()
            try:
                view = view[self.sock.send(view, SEND_FLAGS):]
            except BlockingIOError:
                self._ready(False, deadline, runtime)

    def _recv_exactly(self, n: int, deadline: float, runtime: Any,
                      first_wait: Optional[Callable[[], None]] = None) -> bytes:
        data = b""
        while len(data) < n:
            assert self.sock is not None
            if first_wait is not None:  # wait a little first, then tell the caller it is waiting
                soon = min(deadline, time.monotonic() + _SLOW_ACK)
                try:
                    chunk = self._recv_some(n - len(data), soon, runtime, wait_first=True)
                except TimeoutError:
                    if time.monotonic() >= deadline:
                        raise
                    first_wait()
                    first_wait = None
                    continue
                first_wait = None
            else:
                chunk = self._recv_some(n - len(data), deadline, runtime)
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def _recv_some(self, n: int, deadline: float, runtime: Any, wait_first: bool = False) -> bytes:
        """Up to `n` bytes. `wait_first` (a greenlet waiting for the answer to the request
        it just sent, which the mule cannot have written yet): wait for readability
        before the first recv, instead of a recv that fails with EAGAIN (a syscall and
        an exception per publish)."""
        assert self.sock is not None
        if runtime is None:
            self._ready(True, deadline, None)
            try:
                return self.sock.recv(n)
            except socket.timeout:
                raise TimeoutError from None
        if wait_first:
            self._ready(True, deadline, runtime)
        self._set_nonblocking()
        while True:
            try:
                return self.sock.recv(n)
            except BlockingIOError:
                self._ready(True, deadline, runtime)

    def _receive(self, deadline: float, runtime: Any,
                 on_wait: Optional[Callable[[], None]]) -> Tuple[int, int, str]:
        status, seq, length = REPLY.unpack(self._recv_exactly(REPLY.size, deadline, runtime, on_wait))
        if length > MAX_REPLY_TEXT:
            raise EOFError
        text = self._recv_exactly(length, deadline, runtime).decode("utf-8", "replace") if length else ""
        return status, seq, text


class MuleGate:
    """The uWSGI master's wait for a broadcast mule to start ("Publishing from the
    master" above): a pipe created in the master, which every mule forked later
    inherits; a mule writes one byte to it once it runs Python (`set_local_sink`).

    Thread-safe. `wait` blocks in ``select()`` with the GIL released."""

    SLICE = 1.0  # seconds: a waiter tries the socket again at least this often

    def __init__(self) -> None:
        self.pid = os.getpid()
        # Made by the master's main thread: while it loads the app, before any fork, so
        # every mule inherits it (made later, by a thread, the running mule may not have it).
        self.early = threading.current_thread() is threading.main_thread()
        self._read, self._write = os.pipe()  # inherited by forks, closed at exec (a reload)
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._lock = threading.Lock()
        self.starts = 0  # mule starts read from the pipe
        self._answered = 0  # `starts` when a mule last answered

    def signal(self) -> None:
        """In a forked child (the mule): tell the master a mule runs. Never raises."""
        try:
            os.write(self._write, b"!")
        except OSError:
            pass

    def _drain(self) -> int:
        with self._lock:
            while True:
                try:
                    data = os.read(self._read, 256)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:  # closed under us: uWSGI closes every other fd before a reload's exec
                    self.closed()
                if not data:
                    break
                self.starts += len(data)
            return self.starts

    def closed(self) -> None:
        """The pipe is gone: uWSGI is about to exec itself (a reload), which ends this
        thread; wait for that quietly (the GIL released), then say what happened."""
        time.sleep(30)
        raise PublishError("publish failed: the instance closed the master's mule gate (a reload that did "
                           "not happen?); publishing from the master stops here")

    def answered(self) -> None:
        """A mule answered: the starts seen so far are behind us."""
        self._answered = self._drain()

    def started_since_answer(self) -> bool:
        """True when a mule started after the last answer (it runs Python, so it is past
        its fork: retrying quickly is safe)."""
        return self._drain() > self._answered

    def wait(self, deadline: float) -> None:
        """Block until a mule starts after the last answer, never past `deadline`
        (time.monotonic()), and for at most `SLICE` seconds once a mule has started or
        when this gate was made after the forks (then the caller tries the socket
        again: a mule forked before this gate existed never signals); the GIL is
        released throughout."""
        end = deadline if self.early and not self.starts else min(deadline, time.monotonic() + self.SLICE)
        while True:
            # select() first: the first call here that releases the GIL is the one that blocks
            remaining = end - time.monotonic()
            if remaining > 0:
                try:
                    _select([self._read], [], [], remaining)
                except InterruptedError:
                    pass
                except (OSError, ValueError):
                    self.closed()
            if self.started_since_answer() or time.monotonic() >= end:
                return


def _original_select() -> Callable[..., Any]:
    """select.select, gevent's monkey-patching undone (the master's threads are OS threads)."""
    import sys

    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("select"):
        return monkey.get_original("select", "select")  # type: ignore[no-any-return]
    return select.select


_select = _original_select()
#: In the uWSGI master only (None elsewhere): see "Publishing from the master".
_gate: Optional[MuleGate] = MuleGate() if _uwsgi.process() == "master" else None


class _Pool:
    """This process's links to its instance's mule, handed out one per publish (a
    link is used by one thread or greenlet at a time). The lock is never held
    across I/O, so it is fine in every model."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: List[Link] = []
        self._pid = os.getpid()
        self._address: Optional[bytes] = None

    def take(self) -> Link:
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's sockets are not ours
                self._idle, self._pid, self._address = [], os.getpid(), None
            if self._address is None:
                self._address = address()
            if self._idle:
                return self._idle.pop()
            return Link(self._address)

    def give_back(self, link: Link) -> None:
        with self._lock:
            if link.pid == self._pid and len(self._idle) < 64:
                self._idle.append(link)
                return
        link.close()


_pool = _Pool()
_ring: Optional[BroadcastRing] = None
#: Set by the broadcast mule in its own process: appends a request to the ring.
_local_sink: Optional[Callable[[bytes], Optional[int]]] = None


def shared_ring() -> BroadcastRing:
    """This process's view of the broadcast ring (RingError naming the option when absent).
    Calls uWSGI's API the first time: from a thread uWSGI started only."""
    global _ring
    if _ring is None:
        _ring = BroadcastRing.open()
    return _ring


def set_local_sink(sink: Callable[[bytes], Optional[int]]) -> None:
    """Called once by the broadcast mule: publishes in its own process go to `sink`."""
    global _local_sink
    _local_sink = sink
    if _gate is not None and _gate.pid != os.getpid():
        _gate.signal()  # this mule runs Python: the master's publishers may retry now


def _count(slot: int) -> None:
    # metrics' first use may need uWSGI's API: a thread uWSGI did not start counts only
    # once a thread of uWSGI's has made this process's recorder
    rec = metrics.local() if _uwsgi.in_uwsgi_thread() else metrics.local_open()
    if rec is not None:
        rec.add(slot)


def publish(data: Data, channel: Optional[str] = None, event: bool = False, runtime: Any = None,
            timeout: Optional[float] = None) -> int:
    """Broadcast `data` (str: text frame, bytes: binary) on `channel` (None: to every
    WebSocket of the instance), from any thread or greenlet of any process of the
    instance.

    Args:
        data: the message.
        channel: the channel name (UTF-8, at most 255 bytes), or None.
        event: `data` is an event-protocol JSON object that the mule completes with
            its seq and epoch (see FLAG_EVENT above).
        runtime: the caller's runtime adapter (`uwsgi_ws.runtime`): in a worker's
            greenlet or async core, the wait goes through its Waiter (the worker
            keeps running). Ignored in threads uWSGI did not start (plain blocking
            sockets) and in mules and spoolers.
        timeout: seconds to wait for the mule (or for the ring's writer lock); None:
            ``uwsgi-ws-publish-timeout``.

    Returns:
        The message's sequence number in the ring: it is in the ring when this returns.

    Where it goes: a plain message published by a worker, spooler or mule is
    appended by the publishing process itself, under the instance's writer lock
    (`writer`; ``uwsgi-ws-publish-direct``), which then wakes the workers; the
    broadcast mule appends the rest (the master's publishes, events while the
    history runs, everything while the Redis bridge runs), and any publish made
    before the mule first laid the ring out.

    Raises:
        PublishError: outside uWSGI, over a size limit, or the mule did not answer
            for ``uwsgi-ws-publish-timeout`` seconds (default 10: no mule, or it is
            being respawned), or the writer lock stayed held that long (a stopped
            process of the instance holds it); the message says what to configure. A message is
            never dropped silently; but when the mule took the request and then
            did not answer in time (stopped, e.g. SIGSTOP), it may still be
            appended once it runs again.
        TypeError: `data` is not str or bytes-like.
        ValueError: a str with a lone surrogate (a text frame must be UTF-8, RFC 6455
            section 5.6), raised before anything is sent.

    Thread-safety: any thread, greenlet or process; blocks the caller (only) until
    the message is in the ring. In uWSGI's master (a thread the app started at
    import) it first waits, the GIL released, for the broadcast mule to run, so
    that the master's forks never copy a GIL this thread holds ("Publishing from
    the master" in the module docstring).
    """
    try:
        return _publish(data, channel, event, runtime, timeout)
    except PublishError:
        _count(metrics.PUBLISH_FAILED)
        raise


def mule_problem() -> str:
    """Why no broadcast mule can be serving this instance, from its options alone ("" when
    one may be): no ``--mule`` at all, or the mule given as ``module:callable`` under
    ``lazy-apps``, which uWSGI 2.0.31 crashes at every start (it respawns it for ever;
    the mule *file* `uwsgi_ws/conf/broadcast_mule.py` works)."""
    if not _uwsgi.available():
        return ""
    raw = (getattr(_uwsgi.api(), "opt", {}) or {})
    mules = raw.get("mule") or raw.get("mules")
    if mules is None:
        return ("no broadcast mule: add --mule=uwsgi_ws.mule:run (YAML `mule: uwsgi_ws.mule:run`; "
                "under lazy-apps the mule file, see `python -m uwsgi_ws conf`) and --master")
    values = mules if isinstance(mules, (list, tuple)) else [mules]
    names = [v.decode() if isinstance(v, bytes) else str(v) for v in values]
    if _uwsgi.flag("lazy-apps") and any(n.endswith("uwsgi_ws.mule:run") for n in names):
        return ("the broadcast mule cannot run: under lazy-apps uWSGI 2.0 crashes a mule given as "
                "module:callable (uwsgi_ws.mule:run) at every start and respawns it for ever; give the mule "
                "file instead: --mule=<python -m uwsgi_ws conf>/broadcast_mule.py (conf/broadcast.yaml does)")
    return ""


class _Options(NamedTuple):
    limit: int  # the largest publish request (`mule_msg_size`)
    problem: str  # why no mule can be serving ("" when one may be: `mule_problem`)
    timeout: float  # uwsgi-ws-publish-timeout
    direct: bool  # this process may append to the ring itself (what, the ring says)


#: (pid, its options) of this process.
_options: Optional[Tuple[int, _Options]] = None


def _direct_here() -> bool:
    """Whether this process appends to the ring itself what the ring allows (`writer`;
    the broadcast mule decides what for the whole instance: `BroadcastRing.writable`):
    every process of the instance but the master (a lock held across one of its forks
    would be copied into the child), unless ``uwsgi-ws-publish-direct`` is off here."""
    return bool(settings.get("publish-direct")) and _uwsgi.process() != "master"


def _process_options() -> _Options:
    """This process's publish options, read from its uWSGI options once per process
    (they are fixed for its life) instead of at every publish. Raises ConfigError for
    a malformed setting."""
    global _options
    pid = os.getpid()
    cached = _options
    if cached is not None and cached[0] == pid:
        return cached[1]
    values = _Options(mule_msg_size(), mule_problem(), float(settings.get("publish-timeout")), _direct_here())
    _options = (pid, values)
    return values


def _append_direct(ring: BroadcastRing, request: bytes, event: bool, timeout: float, runtime: Any) -> Optional[int]:
    """Append `request` to the ring in this process (`writer`) and wake the workers;
    None when it cannot (the ring not laid out yet, such messages kept by the mule,
    no usable lock file): the caller goes through the mule."""
    if not ring.writable(event):
        return None
    from . import wakeup, writer

    # gevent's sleep yields to the worker's other greenlets; ugreen's counts whole
    # seconds (uwsgi.async_sleep), a thread blocks alone: a plain sleep for those.
    sleep = runtime.sleep if runtime is not None and runtime.NAME == "gevent" else time.sleep
    try:
        lock = writer.instance_lock()
        if lock is None:
            return None
        seq = writer.append_direct(ring, lock, request, timeout, sleep)
    except OSError as exc:  # nothing appended: the mule takes it
        _warn_once(f"publishing through the broadcast mule from process {os.getpid()}: the ring's writer "
                   f"lock cannot be used here ({exc})")
        return None
    if seq is not None:
        _count(metrics.PUBLISHED)  # counted before the wake-up: a scrape never sees more delivered
        try:
            wakeup.wake_workers()
        except OSError:  # no socket to send from (EMFILE): the hubs' fallback poll delivers it
            pass
    return seq


_warned = False


def _warn_once(message: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        from ..log import get

        get(__name__).warning(message)


def _publish(data: Data, channel: Optional[str], event: bool, runtime: Any, timeout: Optional[float] = None) -> int:
    if not _uwsgi.available():
        raise PublishError(
            "publish() needs uWSGI: run the app under uwsgi with --master, --sharedarea 4096 "
            "and --mule=uwsgi_ws.mule:run (from outside the instance: uwsgi_ws.client.Publisher)"
        )
    request = encode_request(data, channel, event)
    options = _process_options()
    limit, problem, default_timeout = options.limit, options.problem, options.timeout
    too_big = size_problem(request, limit)
    if too_big:
        raise PublishError(too_big)
    uwsgi_thread = _uwsgi.in_uwsgi_thread()
    ring = _ring if not uwsgi_thread else shared_ring()  # a foreign thread: only a ring already mapped
    if ring is not None:
        too_big = ring_problem(request, ring)
        if too_big:
            raise PublishError(too_big)
    if _local_sink is not None:  # the broadcast mule publishing itself
        seq = _local_sink(request)
        if seq is None:
            raise PublishError("the broadcast mule could not append the message (see its log)")
        return seq
    if problem:  # no mule can be serving: waiting out the publish timeout would only hide it
        raise PublishError(problem)
    if timeout is None:
        timeout = default_timeout
    # A greenlet or async core waits through its runtime; a thread (any model), a
    # foreign thread of a gevent worker, a mule or a spooler blocks.
    waiting_rt = runtime if (uwsgi_thread and runtime is not None and runtime.NAME != "threads"
                             and _uwsgi.worker_id() > 0) else None
    if ring is not None and options.direct:
        seq = _append_direct(ring, request, event, timeout, waiting_rt)
        if seq is not None:
            return seq
    gate = _gate if _gate is not None and _gate.pid == os.getpid() else None
    if gate is not None and gate.early and not gate.starts:  # (no syscall before the wait's select)
        # The master before its first mule ran: park before any call that releases the
        # GIL (os.urandom, socket(), connect()), so this thread is blocked, not runnable,
        # when uWSGI releases the GIL and forks the workers and the mule.
        gate.wait(time.monotonic() + timeout)
    link = _pool.take()
    ok = False
    try:
        seq = link.call(request, timeout, waiting_rt, on_wait=lambda: _count(metrics.QUEUE_FULL), gate=gate)
        ok = True
        return seq
    except Refused:
        ok = True  # the link is fine
        raise
    except PublishError as exc:
        if ring is not None and not ring.mule_id:
            raise PublishError(f"publish failed after {timeout:g}s: the broadcast mule did not start "
                               "(add --mule=uwsgi_ws.mule:run and --master)") from None
        raise PublishError(str(exc)) from None
    finally:
        if ok:
            _pool.give_back(link)
        else:
            link.close()
