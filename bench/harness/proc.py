"""Process-group management and /proc accounting for servers under test.

Contract:
- :class:`ManagedProcess` starts a command in its own session (so its process
  group id equals its pid) and guarantees, through :meth:`ManagedProcess.stop`
  or :func:`stop_all`, that every process of that group is gone afterwards
  (SIGINT/SIGTERM first, SIGKILL after a timeout).
- :func:`tree_pids` returns the root pid, all its descendants (by ppid) and
  every live process of its process group; :func:`cpu_seconds`,
  :func:`peak_rss_mib` and :func:`pss_mib` sum over such a set. Processes that exit between two
  samples are simply absent (their CPU is not counted).
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO, Iterable, Sequence

CLK_TCK = os.sysconf("SC_CLK_TCK")
_LIVE: dict[int, "ManagedProcess"] = {}


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (index 0 = state)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def _all_stats() -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                out[int(entry)] = fields
    return out


def tree_pids(root: int) -> set[int]:
    """Live (non-zombie) pids of ``root``'s descendants and process group."""
    stats = _all_stats()
    children: dict[int, list[int]] = {}
    for pid, f in stats.items():
        children.setdefault(int(f[1]), []).append(pid)
    found = {pid for pid, f in stats.items() if int(f[2]) == root}  # same pgid
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in stats and pid not in found:
            found.add(pid)
        todo.extend(c for c in children.get(pid, []) if c not in found)
    return {p for p in found if p in stats and stats[p][0] != "Z"}


def cpu_seconds(pids: Iterable[int]) -> float:
    """Sum of utime+stime (all threads) of ``pids``, in seconds."""
    ticks = 0
    for pid in pids:
        f = _stat_fields(pid)
        if f is not None:
            ticks += int(f[11]) + int(f[12])  # utime, stime (fields 14, 15)
    return ticks / CLK_TCK


def peak_rss_mib(pids: Iterable[int]) -> float:
    """Sum over ``pids`` of each process's peak resident set (VmHWM), MiB."""
    kib = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    kib += int(line.split()[1])
        except OSError:
            pass
    return kib / 1024


def pss_mib(pids: Iterable[int]) -> float:
    """Sum of current proportional set sizes (Pss, smaps_rollup), MiB: pages
    shared between processes (e.g. uWSGI's forked workers) count once."""
    kib = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    kib += int(line.split()[1])
        except OSError:
            pass
    return kib / 1024


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(port: int, proc: "ManagedProcess", timeout: float) -> None:
    """Return once ``GET /`` on 127.0.0.1:port gets any HTTP status line (the
    application, not just a listening socket, is up); raise if ``proc`` dies
    or nothing answers within ``timeout``."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"exited with code {proc.popen.returncode} during startup")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                if s.recv(16).startswith(b"HTTP/1."):
                    return
                last = "no HTTP status line"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise RuntimeError(f"no HTTP answer on port {port} after {timeout:.0f}s ({last})")


class ManagedProcess:
    """A subprocess in its own process group, tracked until stopped."""

    def __init__(
        self,
        cmd: Sequence[str],
        *,
        cwd: Path,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        stdin: int | None = None,
        stdout: "int | IO[bytes] | None" = None,
        stop_signal: int = signal.SIGINT,
    ) -> None:
        self.log = log
        self.stop_signal = stop_signal
        log_file = open(log, "wb") if log else subprocess.DEVNULL
        try:
            self.popen = subprocess.Popen(
                list(cmd),
                cwd=cwd,
                env={**os.environ, **(env or {})},
                stdin=stdin if stdin is not None else subprocess.DEVNULL,
                stdout=stdout if stdout is not None else log_file,
                stderr=log_file,
                start_new_session=True,
            )
        finally:
            if log:
                log_file.close()  # type: ignore[union-attr]
        self.pid = self.popen.pid
        _LIVE[self.pid] = self

    def pids(self) -> set[int]:
        return tree_pids(self.pid)

    def log_tail(self, lines: int = 6) -> str:
        """The last ``lines`` lines of the log, joined by " | "."""
        if not self.log or not self.log.exists():
            return ""
        text = self.log.read_text(errors="replace").strip().splitlines()
        return " | ".join(line.strip() for line in text[-lines:])

    def log_error(self) -> str:
        """The last Python exception line of the log (``XxxError: ...``), else
        the last line naming an error, else the last line."""
        if not self.log or not self.log.exists():
            return ""
        text = [t.strip() for t in self.log.read_text(errors="replace").splitlines() if t.strip()]
        exc = [t for t in text if re.match(r"^[\w.]+(Error|Exception)\b", t)]
        errors = [t for t in text if "rror" in t or "xception" in t]
        return (exc or errors or text or [""])[-1]

    def stop(self, timeout: float = 8.0) -> list[int]:
        """Signal the group, SIGKILL it after ``timeout``; return leftover pids.

        The process stays registered for :func:`stop_all` until it is gone, so
        an interrupt in the middle of this call leaks nothing."""
        members = self.pids() | {self.pid}
        for sig, wait in ((self.stop_signal, timeout), (signal.SIGKILL, 3.0)):
            _signal(-self.pid, sig)  # the whole process group
            for pid in members - _group(self.pid):  # descendants that left it
                _signal(pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                self.popen.poll()
                members = {p for p in members if _alive(p)} | tree_pids(self.pid)
                if not members:
                    _LIVE.pop(self.pid, None)
                    return []
                time.sleep(0.05)
        return sorted(members)


def _signal(pid: int, sig: int) -> None:
    """os.kill that ignores vanished targets (negative pid = process group)."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _group(pgid: int) -> set[int]:
    return {pid for pid, f in _all_stats().items() if int(f[2]) == pgid}


def _alive(pid: int) -> bool:
    f = _stat_fields(pid)
    return f is not None and f[0] != "Z"


def stop_all() -> None:
    """Stop every process started here and not stopped yet (for finally/^C)."""
    for proc in list(_LIVE.values()):
        proc.stop(timeout=3.0)


def _mapping_kind(name: str) -> str:
    """A coarse label for one /proc/<pid>/smaps mapping."""
    if name in ("[heap]", "[stack]"):
        return name
    if not name:
        return "anonymous (malloc arenas, Python objects, thread/greenlet stacks)"
    if "(deleted)" in name or name.startswith("/dev/zero") or name.startswith("/SYSV"):
        return "shared memory: " + name.split(" ")[0]
    base = name.rsplit("/", 1)[-1]
    if ".so" in base or base in ("uwsgi", "python3", "python"):
        return "code and data: " + base
    return "file: " + base


def memory_breakdown(pids: Iterable[int], top: int = 12) -> str:
    """Per process Rss/Pss/private/shared, and over all ``pids`` the mapping kinds
    holding the most Pss (KiB, from /proc/<pid>/smaps): where a server's memory goes."""
    lines = []
    kinds: dict[str, list[int]] = {}
    for pid in sorted(pids):
        try:
            name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            roll = {k: int(v.split()[0]) for k, v in (
                line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])}
            smaps = Path(f"/proc/{pid}/smaps").read_text().splitlines()
        except (OSError, ValueError):
            continue
        lines.append(f"pid {pid} {name}: Rss {roll.get('Rss', 0) / 1024:.1f} MiB, Pss {roll.get('Pss', 0) / 1024:.1f}, "
                     f"private {(roll.get('Private_Clean', 0) + roll.get('Private_Dirty', 0)) / 1024:.1f}, "
                     f"shared {(roll.get('Shared_Clean', 0) + roll.get('Shared_Dirty', 0)) / 1024:.1f}, "
                     f"anonymous {roll.get('Anonymous', 0) / 1024:.1f}")
        current = ""
        for line in smaps:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                current = _mapping_kind(" ".join(head[5:]))
            elif head and head[0] in ("Rss:", "Pss:"):
                slot = kinds.setdefault(current, [0, 0])
                slot[0 if head[0] == "Rss:" else 1] += int(head[1])
    lines.append("all processes, by mapping (Rss summed over processes / Pss), MiB:")
    for kind, (rss, pss) in sorted(kinds.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"  {rss / 1024:8.1f} / {pss / 1024:7.1f}  {kind}")
    return "\n".join(lines)
