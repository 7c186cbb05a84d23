"""Sampling profiles of a server under test, over the throughput phase only.

Contract: :class:`Profiler` attaches one sampler to a set of pids when
:meth:`Profiler.start` is called and stops it at :meth:`Profiler.stop`,
leaving its raw output in ``outdir``; :meth:`Profiler.top` summarises it.

- ``py-spy``: ``py-spy record --format raw --rate 250 --nonblocking`` per
  pid (Python stacks, on-CPU samples only: no ``--idle``; ``--native``
  fails on greenlet stacks: "merge_native_thread"; C time inside uWSGI and
  the kernel is in the ``perf`` profile), one
  collapsed-stack file per process (``<tag>.<pid>.pyspy.txt``). Needs py-spy
  (``pip install py-spy``, in bench/requirements.txt) and ptrace rights.
- ``perf``: ``perf record -g -F 499`` on all pids (user and kernel stacks),
  ``<tag>.perf.data``; :meth:`top` calls ``perf report``. Needs Debian's
  ``linux-perf`` and ``perf_event_paranoid`` low enough (root is fine).

The samplers run on the same 2 cores as the server: the throughput phase's
CPU numbers of a profiled run are not comparable with unprofiled ones (the
report flags such runs).
"""
from __future__ import annotations

import collections
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterable

from .proc import ManagedProcess


class Profiler:
    """One profiling session (kind ``py-spy`` or ``perf``) of ``pids``."""

    def __init__(self, kind: str, outdir: Path, tag: str, bindir: Path) -> None:
        if kind not in ("py-spy", "perf"):
            raise ValueError(f"unknown profiler {kind!r}: use py-spy or perf")
        self.kind, self.outdir, self.tag = kind, outdir, tag
        self.pyspy = str(bindir / "py-spy") if (bindir / "py-spy").exists() else (shutil.which("py-spy") or "")
        self.procs: list[ManagedProcess] = []
        self.files: list[Path] = []
        self.names: dict[int, str] = {}
        if kind == "py-spy" and not self.pyspy:
            raise RuntimeError("py-spy not found: pip install py-spy (bench/requirements.txt)")
        if kind == "perf" and not shutil.which("perf"):
            raise RuntimeError("perf not found: apt-get install linux-perf")

    def start(self, pids: Iterable[int], names: dict[int, str]) -> None:
        """Attach to ``pids`` (``names`` labels each pid in the summaries)."""
        self.names = names
        pids = sorted(pids)
        if self.kind == "py-spy":
            for pid in pids:
                out = self.outdir / f"{self.tag}.{pid}.pyspy.txt"
                self.files.append(out)
                self.procs.append(ManagedProcess(
                    [self.pyspy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250",
                     "--nonblocking", "--output", str(out)],
                    cwd=self.outdir, log=self.outdir / f"{self.tag}.{pid}.pyspy.log"))
        else:
            out = self.outdir / f"{self.tag}.perf.data"
            self.files.append(out)
            self.procs.append(ManagedProcess(
                ["perf", "record", "-g", "-F", "499", "-o", str(out), "-p", ",".join(map(str, pids))],
                cwd=self.outdir, log=self.outdir / f"{self.tag}.perf.log"))
        time.sleep(0.5)  # let the samplers attach before the phase starts

    def stop(self) -> None:
        """Stop sampling (SIGINT: both tools write their output on it)."""
        for proc in self.procs:
            proc.stop(timeout=20.0)

    def top(self, n: int = 25) -> str:
        """Text summary: per process, the functions with the most self samples and the
        most inclusive samples (py-spy), or perf's own report by symbol."""
        if self.kind == "perf":
            out = ["== processes: " + ", ".join(f"{pid} {name}" for pid, name in sorted(self.names.items()))]
            for data in self.files:
                if not data.exists():
                    out.append(f"== {data.name}: no output; see {self.tag}.perf.log")
                    continue
                for sort, limit in (("pid,dso", "1"), ("dso,sym", "0.8")):
                    rep = subprocess.run(
                        ["perf", "report", "-i", str(data), "--no-children", "--sort", sort, "--stdio",
                         "-g", "none", "--percent-limit", limit],
                        capture_output=True, text=True, timeout=300)
                    out.append(f"== perf report --sort {sort}")
                    out += [line.rstrip() for line in rep.stdout.splitlines()
                            if line.strip() and not line.startswith("#")]
            return "\n".join(out)
        out = []
        for path in self.files:
            if not path.exists():
                log = path.with_name(path.name.replace(".pyspy.txt", ".pyspy.log"))
                out.append(f"== {path.name}: no output; {log.read_text()[-300:] if log.exists() else ''}")
                continue
            pid = int(path.name.split(".")[-3])
            self_c: collections.Counter[str] = collections.Counter()
            incl: collections.Counter[str] = collections.Counter()
            total = 0
            for line in path.read_text(errors="replace").splitlines():
                stack, _, count = line.rpartition(" ")
                if not stack or not count.isdigit():
                    continue
                k = int(count)
                frames = [_short(f) for f in stack.split(";")[1:]]  # [0] is the thread
                if not frames:
                    continue
                total += k
                self_c[frames[-1]] += k
                for f in set(frames):
                    incl[f] += k
            if not total:
                continue
            out.append(f"== pid {pid} ({self.names.get(pid, '?')}): {total} samples at 250 Hz "
                       f"= {total / 250:.1f} CPU s")
            out.append("-- self")
            out += [f"{100 * c / total:5.1f}%  {f}" for f, c in self_c.most_common(n)]
            out.append("-- inclusive")
            out += [f"{100 * c / total:5.1f}%  {f}" for f, c in incl.most_common(n)]
        return "\n".join(out)


def _short(frame: str) -> str:
    """'fn (/long/path/uwsgi_ws/hub.py:123)' -> 'fn (uwsgi_ws/hub.py)' (lines merged)."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    parts = path.split(os.sep)
    for anchor in ("uwsgi_ws", "site-packages", "servers"):
        if anchor in parts:
            path = os.sep.join(parts[parts.index(anchor):])
            path = path.replace("site-packages" + os.sep, "")
            break
    else:
        path = os.sep.join(parts[-2:])
    return f"{name} ({path})" if path else name


def process_names(pids: Iterable[int]) -> dict[int, str]:
    """pid -> its command line's name ('uWSGI master', 'uWSGI worker 1', 'uWSGI mule 1', ...)."""
    names = {}
    for pid in pids:
        try:
            names[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            names[pid] = "?"
    return names

