"""Start and stop real uWSGI processes for the tests.

The code is `uwsgi_ws.testing.server` (shipped for users' integration tests,
with the pytest plugin `uwsgi_ws.testing.plugin`); this module adds the
suite's paths (the checkout and tests/apps on PYTHONPATH) and the helpers only
this suite uses. Nothing here mocks uWSGI: tests talk to the real server over
loopback.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Optional, Sequence

from uwsgi_ws.testing.server import MODELS, free_port, uwsgi_binary, wait_for
from uwsgi_ws.testing.server import UWSGI as _UWSGI
from uwsgi_ws.testing.server import serve as _serve

__all__ = ["APPS", "MODELS", "ROOT", "UWSGI", "ScriptServer", "free_port", "read_reports", "same_worker", "serve",
           "stop_and_check", "survives", "two_echo_at_once", "uwsgi_binary", "wait_for"]

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"


class UWSGI(_UWSGI):
    """`uwsgi_ws.testing.server.UWSGI` with the checkout and tests/apps first on
    PYTHONPATH and the checkout as the working directory."""

    def __init__(self, args: Sequence[str], tmp_path: Path, **kwargs: object) -> None:
        kwargs.setdefault("pythonpath", (str(ROOT), str(APPS)))
        kwargs.setdefault("cwd", str(ROOT))
        super().__init__(args, tmp_path, **kwargs)  # type: ignore[arg-type]


def serve(
    app: str,
    tmp_path: Path,
    model: str = "threads",
    extra: Iterable[str] = (),
    **kwargs: object,
) -> _UWSGI:
    """Serve `app` ("module:callable", importable from tests/apps) with a model from
    MODELS (`uwsgi_ws.testing.server.serve` with this suite's paths)."""
    kwargs.setdefault("pythonpath", (str(ROOT), str(APPS)))
    kwargs.setdefault("cwd", str(ROOT))
    return _serve(app, tmp_path, model, extra, **kwargs)  # type: ignore[arg-type]


class ScriptServer:
    """A Python server process a test starts that is not uWSGI (`flask run`, `python app.py`).

    `argv` runs in `cwd` in its own process group (start_new_session), stdin from
    /dev/null, stdout and stderr to ``tmp_path/<name>-<port>.log``; "{port}" in an
    argv item is replaced by `port` (a free TCP port unless given). The environment is
    os.environ with PYTHONUNBUFFERED=1 (the log is read while it runs) and `env` on
    top, without WERKZEUG_RUN_MAIN/WERKZEUG_SERVER_FD (a server started here is never
    a reloader's child). The constructor blocks until `ready(server)` is truthy
    (`wait_ready`). Not thread-safe: one test drives it.
    """

    def __init__(self, argv: Sequence[str], cwd: Path, tmp_path: Path, *, ready: Callable[[ScriptServer], object],
                 env: Optional[Mapping[str, str]] = None, port: Optional[int] = None, name: str = "server",
                 timeout: float = 30.0) -> None:
        self.port = free_port() if port is None else port
        self.name = name
        self._ready = ready
        self.log_path = tmp_path / f"{name.replace(' ', '-')}-{self.port}.log"
        self._log = open(self.log_path, "wb")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env.pop("WERKZEUG_RUN_MAIN", None)
        full_env.pop("WERKZEUG_SERVER_FD", None)
        self.proc = subprocess.Popen([arg.replace("{port}", str(self.port)) for arg in argv], cwd=cwd, env=full_env,
                                     stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        self.pid = self.proc.pid
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until `ready(self)` is truthy (polled every 50 ms). Raises RuntimeError
        with the log if the process exits first or `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            if self._ready(self):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not serve in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        """Everything the process wrote so far (stdout and stderr), decoded as UTF-8."""
        self._log.flush()
        return self.log_path.read_bytes().decode("utf-8", "replace")

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL what is left after 10 s; returns once the
        process is reaped. Safe to call twice."""
        try:
            os.killpg(self.pid, signal.SIGTERM)
            self.proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(5)
        self._log.close()

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:<port>``."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"


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


def same_worker(server: _UWSGI, ready: str = r"broadcast mule 1 serving ring") -> Iterator[None]:
    """An autouse fixture's body (``yield from same_worker(server)``): once `ready` (a regex)
    is in the log (30 s), the worker pids before the test are the ones after it, and the
    log has no crash line and no "Fatal Python error" (AssertionError with the log if not)."""
    server.wait_for_log(ready, timeout=30)
    pids = server.worker_pids()
    yield
    assert server.worker_pids() == pids, server.log()
    assert not server.crashes(), server.log()
    assert "Fatal Python error" not in server.log(), server.log()


def stop_and_check(server: UWSGI, tracebacks_ok: bool = False) -> None:
    """Stop `server` by pid, then fail on a crashed worker or mule (`crashes`) and, unless
    `tracebacks_ok`, on any Python traceback in its log."""
    server.stop()
    log = server.log()
    assert not server.crashes(), log
    if not tracebacks_ok:
        assert "Traceback" not in log, log


@contextlib.contextmanager
def survives(server: UWSGI) -> Iterator[None]:
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


def two_echo_at_once(server: _UWSGI) -> None:
    """Two WebSockets open at the same time on `server`'s ``/echo``, each echoed (the
    second opened is echoed first): the concurrency model lets one worker hold both.
    Blocks up to 10 s per socket operation (websocket-client's timeout); AssertionError
    on a wrong echo; both sockets closed."""
    import websocket

    first = websocket.create_connection(server.url + "/echo", timeout=10)
    second = websocket.create_connection(server.url + "/echo", timeout=10)
    try:
        second.send("second")
        assert second.recv() == "second"
        first.send("first")
        assert first.recv() == "first"
    finally:
        first.close()
        second.close()
