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
import glob
import os
import tempfile
import threading
import time
import weakref
from typing import Any, Callable, List, Optional, Tuple

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

    Thread-safe. Fork-safe: a forked child opens the file anew and starts with the
    lock free (`os.register_at_fork`), whatever its parent's threads held. Not
    reentrant.

    The file is opened without following a symlink and must be this user's, mode
    0600 or stricter (another user's file could be held by them for ever). Each
    acquisition checks, with the flock held, that the path still names the locked
    file: one removed and made anew (a tmp cleaner; `remove_stale_locks` in another
    pid namespace) is reopened, so two processes never hold two different files.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._thread_lock = threading.Lock()
        self._fd = -1
        self._pid = 0
        self._held = -1  # the fd locked by the current holder
        _instances.add(self)

    def _after_fork(self) -> None:
        self._thread_lock = threading.Lock()
        self._pid = 0  # the parent's fd shares its flock: open our own at the next use
        self._held = -1

    def _fd_here(self) -> int:
        """This process's fd of the lock file (the thread lock held, or before any use)."""
        pid = os.getpid()
        if self._pid != pid:  # first use, a forked child, or the file was replaced
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                st = os.fstat(fd)
                if st.st_uid != os.geteuid() or st.st_mode & 0o077:
                    raise PermissionError(errno.EPERM, f"{self.path} is not this user's own file (uid "
                                          f"{st.st_uid}, mode {st.st_mode & 0o777:04o}): remove it")
            except BaseException:
                os.close(fd)
                raise
            self._fd, self._pid = fd, pid  # (a parent's fd, after a fork, stays open: it is its)
        return self._fd

    def _same_file(self, fd: int) -> bool:
        try:
            st, named = os.fstat(fd), os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return st.st_ino == named.st_ino and st.st_dev == named.st_dev

    def acquire(self, timeout: Optional[float] = None, sleep: Callable[[float], Any] = time.sleep) -> bool:
        """Take the lock.

        Args:
            timeout: seconds to keep trying; None: until taken.
            sleep: what to pause with between tries (`time.sleep` in a thread, the
                runtime's sleep in a greenlet): nothing blocks the process meanwhile.

        Returns:
            True when taken, False when `timeout` passed.

        Raises:
            OSError: the lock file cannot be opened, is not this user's own, or
                flock(2) fails otherwise (the caller then publishes through the mule).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = _FIRST_PAUSE
        while True:
            if self._thread_lock.acquire(False):
                try:
                    fd = self._fd_here()
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    self._thread_lock.release()
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EINTR):
                        raise
                except BaseException:
                    self._thread_lock.release()
                    raise
                else:
                    if self._same_file(fd):
                        self._held = fd
                        return True
                    # removed (and maybe made anew) since we opened it: open the path again
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)
                    self._fd, self._pid = -1, 0
                    self._thread_lock.release()
                    continue
            if deadline is not None and time.monotonic() + pause > deadline:
                return False
            sleep(pause)
            pause = min(pause * 2, _MAX_PAUSE)

    def release(self) -> None:
        """Release the lock taken by `acquire` (the same thread)."""
        fd, self._held = self._held, -1
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


_instances: weakref.WeakSet[WriterLock] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for lock in list(_instances):
        lock._after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)


def master_gone(pid: int) -> bool:
    """True when no process `pid` exists (a uWSGI master named in a file of ours is
    gone); a live or another user's process (a reused pid, maybe) counts as there."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


def remove_stale_locks(master: int) -> List[str]:
    """Remove the lock files of this user's instances whose master is gone; returns
    their paths. A file is removed only while its flock is taken here (no process of
    a live instance, in another pid namespace say, is using it then; one that opens
    it later finds it gone and opens the new one, `WriterLock.acquire`)."""
    directory = lock_dir()
    if directory is None:
        return []
    prefix = os.path.join(directory, f"{PREFIX}{os.getuid()}-")
    removed = []
    for path in glob.glob(glob.escape(prefix) + "*.lock"):
        digits = path[len(prefix):-len(".lock")]
        if not digits.isdigit() or int(digits) == master or not master_gone(int(digits)):
            continue
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(path)
            removed.append(path)
        except OSError:
            pass  # held: in use after all
        finally:
            os.close(fd)
    return removed


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
        appended, when the broadcast mule has not laid the ring out yet or keeps
        such messages itself (`BroadcastRing.writable`): the caller publishes
        through the mule.

    Raises:
        PublishError: the lock stayed held by another writer for `timeout` seconds (a
            stopped process holds it), or the request is malformed or does not fit.
        OSError: the lock file cannot be used in this process (nothing appended).
    """
    if not lock.acquire(timeout, sleep):
        raise PublishError(f"publish failed after {timeout:g}s: the broadcast ring's writer lock {lock.path} "
                           "stayed held (a stopped process of the instance holds it?)")
    try:
        if not ring.writable(bool(request[4] & FLAG_EVENT)):
            return None
        return append_request(ring, request)
    except (ValueError, RingError) as exc:
        raise PublishError(f"cannot publish: {exc}") from None
    finally:
        lock.release()
