"""The broadcast ring's writer lock (uwsgi_ws/broadcast/writer.py) between real processes.

Every process of an instance that appends to the ring takes it: flock(2) on a file
in /dev/shm plus a thread lock. These tests use real processes (fork, subprocess),
real files and real signals; the end-to-end uses are in tests/test_broadcast.py and
tests/test_publish_threads.py (workers appending with the mule stopped, a holder
killed -9).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from uwsgi_ws.broadcast import writer
from uwsgi_ws.broadcast.writer import WriterLock

HOLD = ("import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n")


def holder(path: str) -> subprocess.Popen:
    """Another process holding the flock of `path` until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, path], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"held\n"
    return proc


def test_another_process_holding_it_makes_acquire_wait_and_its_death_frees_it(tmp_path):
    path = str(tmp_path / "ring.lock")
    lock = WriterLock(path)
    assert lock.acquire(timeout=1)
    lock.release()
    other = holder(path)
    try:
        started = time.monotonic()
        assert lock.acquire(timeout=0.3) is False  # the other process holds it
        assert time.monotonic() - started >= 0.25
    finally:
        other.kill()  # SIGKILL: the kernel releases its flock
        other.wait()
    assert lock.acquire(timeout=5)
    lock.release()


def test_threads_of_one_process_exclude_each_other(tmp_path):
    """flock alone would not: the threads share one open file description."""
    lock = WriterLock(str(tmp_path / "ring.lock"))
    inside, overlaps = [0], []

    def work() -> None:
        for _ in range(300):
            with lock:
                inside[0] += 1
                overlaps.append(inside[0])
                inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(overlaps) == 1200 and max(overlaps) == 1


def test_a_lock_file_removed_and_made_anew_is_reopened(tmp_path):
    """A cleaner removes the file; another process makes a new one and holds it: this
    lock must not take the old, unlinked file (two writers at once), but the new one."""
    path = str(tmp_path / "ring.lock")
    lock = WriterLock(path)
    assert lock.acquire(timeout=1)
    lock.release()
    os.unlink(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    other = holder(path)
    try:
        assert lock.acquire(timeout=0.3) is False  # it follows the path to the held file
    finally:
        other.kill()
        other.wait()
    assert lock.acquire(timeout=5)
    lock.release()


@pytest.mark.parametrize("mode", [0o666, 0o640])
def test_a_lock_file_others_may_open_is_refused(tmp_path, mode):
    path = tmp_path / "ring.lock"
    path.touch()
    os.chmod(path, mode)
    with pytest.raises(PermissionError, match="not this user's own file"):
        WriterLock(str(path)).acquire(timeout=1)


def test_a_symlink_is_not_followed(tmp_path):
    target = tmp_path / "elsewhere"
    target.touch()
    os.chmod(target, 0o600)
    (tmp_path / "ring.lock").symlink_to(target)
    with pytest.raises(OSError):
        WriterLock(str(tmp_path / "ring.lock")).acquire(timeout=1)


def test_a_child_forked_while_a_thread_holds_it_starts_with_it_free(tmp_path):
    """The holder thread does not exist in the child: the child's lock is free, and its
    own flock (a new open file description) excludes the parent's holder."""
    lock = WriterLock(str(tmp_path / "ring.lock"))
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(10)
    try:
        pid = os.fork()
        if pid == 0:  # the child: the parent's thread still holds the flock
            code = 0 if lock.acquire(timeout=0.3) is False else 3
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the child took a lock its parent's thread holds"
    finally:
        release.set()
        t.join()
    pid = os.fork()
    if pid == 0:
        os._exit(0 if lock.acquire(timeout=5) else 4)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_stale_lock_files_are_removed_only_when_gone_and_unheld(monkeypatch, tmp_path):
    monkeypatch.setattr(writer, "lock_dir", lambda: str(tmp_path))
    prefix = tmp_path / f"{writer.PREFIX}{os.getuid()}-"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    also_gone = subprocess.Popen([sys.executable, "-c", "pass"])
    also_gone.wait()
    files = {
        "gone": f"{prefix}{gone.pid}.lock",
        "gone-but-held": f"{prefix}{also_gone.pid}.lock",  # a process in another pid namespace, say
        "alive": f"{prefix}{os.getpid()}.lock",
        "ours": f"{prefix}1.lock",
        "not-a-lock": f"{prefix}{gone.pid}-journal",
    }
    for path in files.values():
        open(path, "w").close()
    other = holder(files["gone-but-held"])
    try:
        removed = writer.remove_stale_locks(master=1)
    finally:
        other.kill()
        other.wait()
    assert removed == [files["gone"]]
    assert {name for name, path in files.items() if os.path.exists(path)} == {
        "gone-but-held", "alive", "ours", "not-a-lock"}


def test_a_killed_holder_mid_hold_never_blocks_the_next(tmp_path):
    """SIGKILL at any moment: the flock dies with its holder."""
    path = str(tmp_path / "ring.lock")
    lock = WriterLock(path)
    assert lock.acquire(timeout=1)  # makes the file
    lock.release()
    for _ in range(5):
        other = holder(path)
        os.kill(other.pid, signal.SIGKILL)
        other.wait()
        assert lock.acquire(timeout=5)
        lock.release()
