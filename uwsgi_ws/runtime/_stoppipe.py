"""How a threaded uWSGI worker learns it must stop gracefully (uWSGI 2.0.31).

The worker's C handler for SIGHUP (`gracefully_kill`, also
`goodbye_cruel_world`) closes the write end of `loop_stop_pipe`, a pipe the
worker creates after the fork to stop its threads' accept loops. A task
polls the read end and sees the hang-up. A Python signal handler is no
option: only the main thread may install one, uWSGI installs its own after
the app's post-fork hooks, and it must keep running.

The pipe is found by elimination: a pipe whose two ends this worker holds,
that the master did not have when this module was imported (before the fork,
lazy-apps off), and that was made by C's ``pipe()``: Python makes every pipe
close-on-exec (PEP 446), uWSGI's ``uwsgi_ignition`` (core/uwsgi.c) does not.
Under lazy-apps this module is imported in the worker, before the ignition
makes the pipe, so the pipes made since (ours, the native helper's) are told
apart only by that flag. When that is not exactly one pipe, nothing is found.

A stop that came before we looked (the worker's first connection was still
in its handshake when SIGHUP arrived) has closed the write end already: the
pipe is then a lone read end that polls as hung up, and it is returned as is
(a watcher of it fires at once). Found only when no whole candidate is there.
"""

from __future__ import annotations

import os
import select
from typing import Dict, List, Optional, Set, Tuple


def _pipe_inodes() -> Set[str]:
    """The "pipe:[inode]" links of this process's descriptors."""
    found: Set[str] = set()
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return found
    for name in names:
        try:
            link = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if link.startswith("pipe:"):
            found.add(link)
    return found


_inherited = _pipe_inodes()  # at import: in the uWSGI master, before the fork (lazy-apps off)


def loop_stop_fd() -> Optional[int]:
    """The read end of the worker's loop_stop_pipe, or None if it cannot be told apart."""
    ends: Dict[str, List[Tuple[int, int, bool]]] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{name}")
            with open(f"/proc/self/fdinfo/{name}") as info:
                flags = int(next(line for line in info if line.startswith("flags:")).split()[1], 8)
        except (OSError, StopIteration, ValueError):
            continue
        if link.startswith("pipe:") and link not in _inherited:
            ends.setdefault(link, []).append((int(name), flags & os.O_ACCMODE, bool(flags & os.O_CLOEXEC)))
    ours = [fds for fds in ends.values() if not any(cloexec for _, _, cloexec in fds)]
    candidates = [fds for fds in ours if sorted(mode for _, mode, _ in fds) == [os.O_RDONLY, os.O_WRONLY]]
    if len(candidates) == 1:
        return next(fd for fd, mode, _ in candidates[0] if mode == os.O_RDONLY)
    if candidates:
        return None
    hung_up = [fds[0][0] for fds in ours if len(fds) == 1 and fds[0][1] == os.O_RDONLY and _hung_up(fds[0][0])]
    return hung_up[0] if len(hung_up) == 1 else None


def _hung_up(fd: int) -> bool:
    """True when `fd` (a pipe's read end) has no writer left: POLLHUP, now."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    return any(event & select.POLLHUP for _, event in poller.poll(0))
