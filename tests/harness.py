"""Start and stop real uWSGI processes for the tests.

Every server gets a free port, its own process group and a log file; `stop()`
signals it by pid and waits until the whole group is gone. Nothing here mocks
uWSGI: tests talk to the real server over loopback.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"


def uwsgi_binary() -> str:
    """The uwsgi next to the running interpreter (the venv's), else the one on PATH."""
    candidate = Path(sys.executable).with_name("uwsgi")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("uwsgi")
    if not found:
        raise RuntimeError("uwsgi is not installed: run `make test` (it installs it)")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The options each concurrency model adds to the command line.
MODELS: dict[str, list[str]] = {
    "threads": ["--processes", "2", "--threads", "16"],
    "gevent": ["--processes", "2", "--gevent", "200"],
    "async": ["--processes", "1", "--async", "20", "--ugreen"],
}


class UWSGI:
    """A running uWSGI instance started by the tests.

    Use as a context manager or call `stop()`; the log is kept in `log_path`
    and `log()` returns what it holds so far.
    """

    def __init__(
        self,
        args: Sequence[str],
        tmp_path: Path,
        *,
        port: int | None = None,
        env: dict[str, str] | None = None,
        ready: str = "port",
        timeout: float = 30.0,
        executable: str | None = None,
    ) -> None:
        """`executable` replaces the uwsgi binary (e.g. a Python interpreter
        running a script that execs uwsgi, as app.run does)."""
        self.port = port or free_port()
        self.log_path = tmp_path / f"uwsgi-{self.port}.log"
        self.args = [executable or uwsgi_binary(), *[a.replace("{port}", str(self.port)) for a in args]]
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT), str(APPS), full_env.get("PYTHONPATH", "")]
        ).rstrip(os.pathsep)
        if env:  # "{port}" in a value becomes the port, as in args
            full_env.update({k: v.replace("{port}", str(self.port)) for k, v in env.items()})
        self._logfile = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.args,
            stdout=self._logfile,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=str(ROOT),
            start_new_session=True,
        )
        self.pid = self.proc.pid
        if ready == "port":  # else call wait_for_port() or wait_for_log() yourself
            self.wait_for_port(timeout)

    # -- life cycle -------------------------------------------------------

    def wait_for_port(self, timeout: float = 30.0) -> None:
        """Block until the instance accepts TCP connections (or fail with its log)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"uwsgi exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"uwsgi did not listen on {self.port} in {timeout}s:\n{self.log()}")

    def wait_for_log(self, pattern: str, timeout: float = 30.0, count: int = 1) -> None:
        """Block until `pattern` (a regex) occurs `count` times in the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(re.findall(pattern, self.log())) >= count:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"uwsgi exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} x{count} not in the log after {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGINT the master (uWSGI's immediate shutdown), then SIGKILL the group if needed."""
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGINT)
                self.proc.wait(timeout)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        _kill_group(self.pid)
        if self.proc.poll() is None:
            self.proc.wait(5)
        self._logfile.close()

    def __enter__(self) -> "UWSGI":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inspection -------------------------------------------------------

    def log(self) -> str:
        if not self._logfile.closed:
            self._logfile.flush()
        return self.log_path.read_bytes().decode("utf-8", "replace")

    def worker_pids(self) -> list[int]:
        """Pids of the workers, as announced in the log (latest spawn per worker id)."""
        found: dict[int, int] = {}
        for wid, pid in re.findall(r"spawned uWSGI worker (\d+) \(pid: (\d+)", self.log()):
            found[int(wid)] = int(pid)
        return [found[k] for k in sorted(found)]

    def crashes(self) -> list[str]:
        """Log lines that mean a worker died abnormally (segfault, signal, respawn after death)."""
        patterns = ("SIGSEGV", "Segmentation fault", "killed by signal", "DAMN ! worker", "uWSGI worker .* died")
        return [
            line
            for line in self.log().splitlines()
            if any(re.search(p, line) for p in patterns)
        ]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def serve(
    app: str,
    tmp_path: Path,
    model: str = "threads",
    extra: Iterable[str] = (),
    **kwargs: object,
) -> UWSGI:
    """Serve `app` ("module:callable", importable from tests/apps) with a model from MODELS.

    Speaks HTTP directly (`--http-socket`), with a master, as the package's
    base configs do.
    """
    module, _, callable_ = app.partition(":")
    args = [
        "--master",
        "--http-socket", "127.0.0.1:{port}",
        "--module", f"{module}:{callable_ or 'app'}",
        "--die-on-term",
        "--need-app",
        "--disable-logging",
        *MODELS[model],
        *extra,
    ]
    return UWSGI(args, tmp_path, **kwargs)  # type: ignore[arg-type]


def wait_for(condition, timeout: float = 10.0, what: str = "condition"):
    """Poll `condition` until it returns something truthy (and return that);
    fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def read_reports(path: Path, count: int = 1, timeout: float = 10.0) -> list:
    """The JSON lines a test app appended to `path`, once there are at least `count`."""
    import json

    def complete_lines() -> list:
        if not path.exists():
            return []
        lines = path.read_text().split("\n")[:-1]  # the last piece may be half written
        found = [json.loads(line) for line in lines if line.strip()]
        return found if len(found) >= count else []

    return wait_for(complete_lines, timeout, f"{count} report line(s) in {path}")


@contextlib.contextmanager
def survives(server: "UWSGI") -> Iterator[None]:
    """A connection opened before the block still echoes (on `/echo`) after it; the
    single worker keeps its pid (no respawn) and nothing crashed."""
    import websocket

    witness = websocket.create_connection(server.url + "/echo", timeout=5)
    try:
        witness.send("before")
        assert witness.recv() == "before"
        pids = wait_for(server.worker_pids, 5, "the worker's spawn line")
        assert len(pids) == 1, server.log()
        yield
        witness.send("after")
        assert witness.recv() == "after"
    finally:
        witness.close()
    assert server.worker_pids() == pids
    assert server.crashes() == []
