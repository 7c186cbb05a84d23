"""Appending to the broadcast ring, from any process of the instance.

The ring (`ring.BroadcastRing`) takes one writer at a time. `WriterLock` makes
it so across the instance: a thread lock between the threads of one process,
then flock(2) on the instance's lock file between its processes. The kernel
drops a flock when its holder exits, however it dies (kill -9 too), so a writer
killed mid-append never blocks the others; what it left half-written is never
read (the ring's writer protocol commits ``write_seq`` last, and the next
writer resumes from the header).

Who appends (see `uwsgi_ws.broadcast.publish`):

- A worker, spooler or mule publishing a *plain* message appends it itself
  (`publish.publish`, under this lock), then wakes the workers
  (`wakeup.wake_workers`): no round trip to the broadcast mule (≈ 190 µs of CPU
  per message on the 2-core bench machine, bench/README.md), and publishing
  goes on while the mule is stopped or being respawned.
- The broadcast mule appends the rest: event broadcasts while its history or
  its Redis bridge runs (they keep and number them), every publish while the
  Redis bridge runs (it forwards what is appended locally), the master's
  publishes (a lock held across one of the master's forks would be copied
  into the child), publishers outside the instance (the publish socket), and
  legacy ``uwsgi.mule_msg`` requests.

The lock file is ``/dev/shm/uwsgi_ws-ring-<uid>-<master pid>.lock`` (the
system's temp dir without a writable /dev/shm), mode 0600, opened by each
process after its fork: a descriptor inherited across a fork shares one
flock with the parent, so it would not exclude it. The broadcast mule removes
the lock files of instances whose master is gone when it starts.

Waiting never blocks a worker: `acquire` tries the thread lock and the flock
without blocking and sleeps through the caller's `sleep` (gevent's under
gevent) between tries; nothing that yields runs while either is held. The lock
is held for one append (a memcpy into the ring and a few header stores).
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
import threading
import time
from typing import Any, Callable, Optional, Tuple

from .. import _uwsgi, frames
from ..exceptions import PublishError, RingError
from .publish import decode_request
from .ring import FLAG_BINARY, FLAG_EVENT, BroadcastRing

PREFIX = "uwsgi_ws-ring-"
_FIRST_PAUSE = 0.0001  # seconds between tries, doubling up to _MAX_PAUSE
_MAX_PAUSE = 0.002


def lock_dir() -> Optional[str]:
    """The directory of the instance's lock file: /dev/shm, else the temp dir; None
    when neither is writable (then every publish goes through the mule)."""
    for directory in ("/dev/shm", tempfile.gettempdir()):
        if os.access(directory, os.W_OK):
            return directory
    return None


def lock_path() -> Optional[str]:
    """This instance's lock file path (see the module docstring), None without a
    writable directory. Raises NotUnderUwsgi outside uWSGI."""
    directory = lock_dir()
    if directory is None:
        return None
    master = _uwsgi.masterpid()
    if not master:
        raise _uwsgi.NotUnderUwsgi("the ring's writer lock belongs to a uWSGI instance: run under uwsgi --master")
    return os.path.join(directory, f"{PREFIX}{os.getuid()}-{master}.lock")


class WriterLock:
    """The ring's writer lock (module docstring): a context manager that blocks the
    calling thread, and `acquire`/`release` for callers that must not block
    (a greenlet: pass its runtime's sleep).

    Thread-safe, fork-safe (each process opens the file anew). Not reentrant.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._thread_lock = threading.Lock()
        self._fd = -1
        self._pid = 0

    def _fd_here(self) -> int:
        pid = os.getpid()
        if self._pid != pid:  # first use, or a forked child: its own open file description
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = pid
        return self._fd

    def acquire(self, timeout: Optional[float] = None, sleep: Callable[[float], Any] = time.sleep) -> bool:
        """Take the lock.

        Args:
            timeout: seconds to keep trying; None: until taken.
            sleep: what to pause with between tries (`time.sleep` in a thread, the
                runtime's sleep in a greenlet): nothing blocks the process meanwhile.

        Returns:
            True when taken, False when `timeout` passed.

        Raises:
            OSError: the lock file cannot be opened (the caller publishes through the
                mule instead).
        """
        fd = self._fd_here()
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = _FIRST_PAUSE
        while True:
            if self._thread_lock.acquire(False):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except OSError as exc:
                    self._thread_lock.release()
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EINTR):
                        raise
            if deadline is not None and time.monotonic() + pause > deadline:
                return False
            sleep(pause)
            pause = min(pause * 2, _MAX_PAUSE)

    def release(self) -> None:
        """Release the lock taken by `acquire` (the same thread)."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


_lock: Optional[WriterLock] = None
_lock_problem: Optional[str] = None


def instance_lock() -> Optional[WriterLock]:
    """This instance's writer lock (one per process), None when no lock file can be
    made (then `why_not` says why). Raises NotUnderUwsgi outside uWSGI."""
    global _lock, _lock_problem
    if _lock is None and _lock_problem is None:
        path = lock_path()
        if path is None:
            _lock_problem = "neither /dev/shm nor the temp dir is writable"
            return None
        lock = WriterLock(path)
        try:
            lock._fd_here()
        except OSError as exc:
            _lock_problem = f"cannot open {path}: {exc.strerror}"
            return None
        _lock = lock
    return _lock


def why_not() -> Optional[str]:
    """Why `instance_lock` is None (None when it is not)."""
    return _lock_problem


def frame_request(ring: BroadcastRing, request: bytes) -> Tuple[str, int, bytes]:
    """(channel, flags, frame) of the publish request `request` (`publish.encode_request`)
    framed once for `ring`: an event gets its seq (the next one: the caller holds the
    writer lock) and the ring's epoch first (`publish` FLAG_EVENT).

    Raises:
        ValueError: not a publish request.
    """
    channel, flags, payload = decode_request(request)
    if flags & FLAG_EVENT:
        payload = payload[:-1] + b',"seq":%d,"epoch":"%d"}' % (ring.write_seq + 1, ring.epoch)
    return channel, flags, frames.encode(frames.OP_BINARY if flags & FLAG_BINARY else frames.OP_TEXT, payload)


def append_request(ring: BroadcastRing, request: bytes) -> int:
    """Frame `request` once (`frame_request`) and append it to `ring`; the caller holds
    the writer lock.

    Returns:
        The message's seq.

    Raises:
        ValueError: not a publish request.
        RingError: it does not fit the ring (the text says what to raise).
    """
    channel, flags, frame = frame_request(ring, request)
    return ring.append(frame, channel, flags)


def append_direct(ring: BroadcastRing, lock: WriterLock, request: bytes, timeout: float,
                  sleep: Callable[[float], Any]) -> Optional[int]:
    """Append `request` to `ring` under `lock`, from any process of the instance.

    Args:
        ring: the instance's ring.
        lock: the instance's writer lock.
        request: a checked publish request (sizes too: `publish.size_problem`, `ring_problem`).
        timeout: seconds to wait for the lock.
        sleep: the caller's pause (`WriterLock.acquire`).

    Returns:
        The message's seq (it is in the ring when this returns), or None, nothing
        appended, when the broadcast mule has not laid the ring out yet
        (`BroadcastRing.writable`): the caller publishes through the mule, which
        waits for it.

    Raises:
        PublishError: the lock stayed held by another writer for `timeout` seconds (a
            stopped process holds it), or the request is malformed or does not fit.
    """
    if not lock.acquire(timeout, sleep):
        raise PublishError(f"publish failed after {timeout:g}s: the broadcast ring's writer lock {lock.path} "
                           "stayed held (a stopped process of the instance holds it?)")
    try:
        if not ring.writable():
            return None
        return append_request(ring, request)
    except (ValueError, RingError) as exc:
        raise PublishError(f"cannot publish: {exc}") from None
    finally:
        lock.release()
