"""Start and stop real uWSGI processes for integration tests.

Every server gets a free port, its own process group and a log file; `stop()`
signals it by pid and waits until the whole group is gone. Nothing here mocks
uWSGI: tests talk to the real server over loopback. The pytest plugin
(`uwsgi_ws.testing.plugin`) builds its fixture on `serve`; the package's own
suite uses the same code (tests/harness.py).

    from uwsgi_ws.testing.server import serve

    with serve("myapp:app", tmp_path, model="gevent", broadcast=True, pythonpath=["."]) as server:
        websocket.create_connection(server.url + "/echo")   # ws://127.0.0.1:<port>/echo
        requests.post(server.http + "/price", ...)          # http://127.0.0.1:<port>/price

Blocking; not thread-safe (one test thread drives one server).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, TypeVar

__all__ = ["BROADCAST", "MODELS", "UWSGI", "free_port", "serve", "uwsgi_binary", "wait_for"]

T = TypeVar("T")


def uwsgi_binary() -> str:
    """The uwsgi next to the running interpreter (the virtualenv's), else the one on PATH.

    Raises:
        RuntimeError: no uwsgi found (``pip install uwsgi`` into the virtualenv).
    """
    candidate = Path(sys.executable).with_name("uwsgi")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("uwsgi")
    if not found:
        raise RuntimeError("uwsgi is not installed: pip install uwsgi (with the OpenSSL headers; see the README)")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


#: The options each concurrency model adds to the command line.
MODELS: Dict[str, List[str]] = {
    "threads": ["--processes", "2", "--threads", "16"],
    "gevent": ["--processes", "2", "--gevent", "200"],
    "async": ["--processes", "1", "--async", "20", "--ugreen"],
}

#: The options of the broadcast: a sharedarea for the ring (16 MiB) and the broadcast mule.
BROADCAST: List[str] = ["--sharedarea", "4096", "--mule=uwsgi_ws.mule:run"]


class UWSGI:
    """A running uWSGI instance started by a test.

    Args:
        args: uWSGI's arguments; ``{port}`` in one becomes the port.
        tmp_path: where the log file goes (``uwsgi-<port>.log``).
        port: the port (default: a free one).
        env: extra environment variables (``{port}`` replaced as in args).
        ready: "port" waits until the port accepts connections; anything else
            returns at once (then call `wait_for_port` or `wait_for_log`).
        timeout: seconds to wait for the port.
        executable: replaces the uwsgi binary (e.g. a Python interpreter running a
            script that execs uwsgi, as app.run does).
        pythonpath: directories put first on PYTHONPATH (where the app is).
        cwd: the working directory (default: the current one).

    Raises:
        RuntimeError: uWSGI exited or did not listen in time (with its log).

    Use as a context manager or call `stop()`; `log()` returns the log so far.
    """

    def __init__(
        self,
        args: Sequence[str],
        tmp_path: Path,
        *,
        port: Optional[int] = None,
        env: Optional[Dict[str, str]] = None,
        ready: str = "port",
        timeout: float = 30.0,
        executable: Optional[str] = None,
        pythonpath: Iterable[str] = (),
        cwd: Optional[str] = None,
    ) -> None:
        self.port = port or free_port()
        self.model: Optional[str] = None
        self.log_path = Path(tmp_path) / f"uwsgi-{self.port}.log"
        self.args = [executable or uwsgi_binary(), *[a.replace("{port}", str(self.port)) for a in args]]
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join(
            [*(str(p) for p in pythonpath), full_env.get("PYTHONPATH", "")]
        ).strip(os.pathsep)
        if env:
            full_env.update({k: v.replace("{port}", str(self.port)) for k, v in env.items()})
        self._logfile = open(self.log_path, "wb")  # noqa: SIM115  (closed by stop())
        self.proc = subprocess.Popen(
            self.args,
            stdout=self._logfile,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        )
        self.pid = self.proc.pid
        if ready == "port":
            self.wait_for_port(timeout)

    # -- life cycle -------------------------------------------------------

    def wait_for_port(self, timeout: float = 30.0) -> None:
        """Block until the instance accepts TCP connections (RuntimeError with its log if not)."""
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
        """Block until `pattern` (a regex) occurs `count` times in the log (AssertionError if not)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(re.findall(pattern, self.log())) >= count:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"uwsgi exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} x{count} not in the log after {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGINT the master (uWSGI's immediate shutdown), then SIGKILL its process group
        if needed; returns once the master is reaped."""
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

    def __enter__(self) -> UWSGI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inspection -------------------------------------------------------

    def log(self) -> str:
        """What the instance has logged so far."""
        if not self._logfile.closed:
            self._logfile.flush()
        return self.log_path.read_bytes().decode("utf-8", "replace")

    def worker_pids(self) -> List[int]:
        """Pids of the workers, as announced in the log (latest spawn per worker id)."""
        found: Dict[int, int] = {}
        # "spawned uWSGI worker 1 (pid: 123, ...)" at start; "Respawned uWSGI worker 1 (new pid: 456)"
        # after a death or a reload: the latest line per worker id wins, in log order
        for match in re.finditer(r"(?:spawned uWSGI worker (\d+) \(pid: (\d+)"
                                 r"|Respawned uWSGI worker (\d+) \(new pid: (\d+))", self.log()):
            wid, pid = (match.group(1), match.group(2)) if match.group(1) else (match.group(3), match.group(4))
            found[int(wid)] = int(pid)
        return [found[k] for k in sorted(found)]

    def tracebacks(self) -> List[str]:
        """The last line (the exception) of every Python traceback in the log."""
        out: List[str] = []
        lines = self.log().splitlines()
        for i, line in enumerate(lines):
            if line.startswith("Traceback (most recent call last):"):
                for following in lines[i + 1:]:
                    if following and not following[0].isspace() and not following.startswith("Traceback"):
                        out.append(following)
                        break
        return out

    def unexpected_tracebacks(self, expected: Sequence[str] = ()) -> List[str]:
        """`tracebacks()` whose exception line matches none of the `expected` regexes."""
        return [t for t in self.tracebacks() if not any(re.search(p, t) for p in expected)]

    def crashes(self) -> List[str]:
        """Log lines that mean a worker died abnormally (segfault, signal, respawn after death)."""
        # "Segmentation fault" also matches uWSGI's own "!!! uWSGI process N got Segmentation Fault !!!"
        patterns = ("SIGSEGV", "Segmentation fault", "killed by signal", "DAMN ! worker", "uWSGI worker .* died")
        return [line for line in self.log().splitlines()
                if any(re.search(p, line, re.IGNORECASE) for p in patterns)]

    @property
    def url(self) -> str:
        """The WebSocket base URL, ``ws://127.0.0.1:<port>``."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        """The HTTP base URL, ``http://127.0.0.1:<port>``."""
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
    broadcast: bool = False,
    **kwargs: Any,
) -> UWSGI:
    """Serve `app` ("module:callable", importable from `pythonpath`) under real uWSGI.

    Args:
        app: the WSGI callable, "module:callable" (callable default "app").
        tmp_path: where the log goes.
        model: "threads", "gevent" or "async" (`MODELS`).
        extra: more uWSGI options.
        broadcast: add the broadcast (`BROADCAST`: a sharedarea and the mule).
        **kwargs: passed to `UWSGI` (port, env, pythonpath, cwd, timeout...).

    Returns:
        The running instance, listening (``--http-socket``, a master, as the
        package's base configs do).

    Raises:
        ValueError: an unknown model.
        RuntimeError: uWSGI exited or did not listen (with its log).
    """
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}: one of {sorted(MODELS)}")
    module, _, callable_ = app.partition(":")
    args = [
        "--master",
        "--http-socket", "127.0.0.1:{port}",
        "--module", f"{module}:{callable_ or 'app'}",
        "--die-on-term",
        "--need-app",
        "--disable-logging",
        *MODELS[model],
        *(BROADCAST if broadcast else ()),
        *extra,
    ]
    instance = UWSGI(args, tmp_path, **kwargs)
    instance.model = model
    return instance


def wait_for(condition: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll `condition` until it returns something truthy (and return that).

    Raises:
        AssertionError: still falsy after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
