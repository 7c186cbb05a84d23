"""Shared fixtures: one real uWSGI per test module and concurrency model.

A test module that takes the `server` fixture declares what to serve:

    APP = "echo_app:app"            # module:callable in tests/apps
    MODELS = ["threads", "gevent"]  # one server per model, started once per module
    EXTRA = ["--sharedarea", "1"]   # optional extra uWSGI options

and each test runs once per model (`server.model` names it). A server's
teardown fails the module if a worker crashed while it ran, or if its log
holds a Python traceback the module did not declare (EXPECTED_TRACEBACKS:
regexes of the exception lines it causes on purpose); the shutdown
itself (about a second of uWSGI reaping its workers) runs in the background
while the next module starts, and the session fails if one went wrong.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from uwsgi_ws.testing.plugin import expected_workers

from harness import serve, wait_for


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "server" in metafunc.fixturenames:
        models = getattr(metafunc.module, "MODELS", ["threads", "gevent"])
        metafunc.parametrize("server", models, indirect=True, scope="module")


@pytest.fixture(scope="session")
def _stopper():
    """Stops module servers in the background; waits for them all at the end."""
    stopping = []

    def stop(instance) -> None:
        thread = threading.Thread(target=instance.stop, name=f"stop-{instance.pid}")
        thread.start()
        stopping.append((instance, thread))

    yield stop
    for instance, thread in stopping:
        thread.join(60)
        assert instance.proc.poll() is not None, f"uwsgi {instance.pid} still running"
        assert not instance.crashes(), instance.log()


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, _stopper):
    model = request.param
    app = getattr(request.module, "APP", "echo_app:app")
    extra = getattr(request.module, "EXTRA", [])
    instance = serve(app, tmp_path_factory.mktemp(f"uwsgi-{model}"), model=model, extra=extra)
    instance.model = model  # type: ignore[attr-defined]
    # serve() returns once the socket listens, before the master has loaded the app and forked
    # (a second or more under load): a module's first request would time that too.
    wanted = expected_workers(instance.args)
    wait_for(lambda: len(instance.worker_pids()) >= wanted, 60, f"{wanted} worker spawn line(s) in {instance.log_path}")
    yield instance
    crashes, log = instance.crashes(), instance.log()
    # A Python traceback in the log is a failure unless the module expects it: list the
    # regexes of the exception lines it causes on purpose in EXPECTED_TRACEBACKS.
    unexpected = instance.unexpected_tracebacks(getattr(request.module, "EXPECTED_TRACEBACKS", ()))
    _stopper(instance)
    assert not crashes, log
    assert not unexpected, f"unexpected traceback(s) in the uWSGI log: {unexpected}\n{log}"
