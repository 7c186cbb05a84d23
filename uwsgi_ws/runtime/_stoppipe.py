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
"""

from __future__ import annotations

import os
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
    candidates = [fds for fds in ends.values()
                  if sorted(mode for _, mode, _ in fds) == [os.O_RDONLY, os.O_WRONLY]
                  and not any(cloexec for _, _, cloexec in fds)]
    if len(candidates) != 1:
        return None
    return next(fd for fd, mode, _ in candidates[0] if mode == os.O_RDONLY)
