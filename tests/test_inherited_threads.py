"""A thread the app starts at import runs in uWSGI's master; forked without
``--py-call-osafterfork``, each worker's Python still counts the thread's copy as
running and waits for it at exit, so every stop and reload stalls until
worker-reload-mercy (found by a new-user trial of flask-websockets' example under the
README's command line: 63 s per stop). Each process that inherited such a copy (a
gevent worker, the broadcast mule; uWSGI's threaded workers get Python's after-fork
cleanup already) says so at start, naming the thread and the option; with the option
nothing is said."""

from __future__ import annotations

import re

import pytest

from uwsgi_ws import startup

from harness import serve

BROADCAST = ["--sharedarea", "4096", "--mule=uwsgi_ws.mule:run"]
WARNING = "was forked from a master running Python thread(s)"


@pytest.mark.parametrize("model", ["threads", "gevent"])
def test_a_thread_started_at_import_is_named_at_start_with_the_fix(tmp_path, model):
    # worker-reload-mercy short: the stop this test makes stalls that long without the option
    server = serve("seed_flask_websockets:app", tmp_path, model=model,
                   extra=[*BROADCAST, "--worker-reload-mercy", "5"])
    try:
        server.wait_for_port()
        server.wait_for_log(re.escape(WARNING), timeout=20)
        log = server.log()
        assert "'Thread-1 (publish_server_time)'" in log or "publish_server_time" in log, log
        assert "--py-call-osafterfork" in log.split(WARNING, 1)[1], log
    finally:
        server.stop()


@pytest.mark.parametrize("model", ["threads", "gevent"])
def test_with_py_call_osafterfork_nothing_is_said(tmp_path, model):
    server = serve("seed_flask_websockets:app", tmp_path, model=model, extra=[*BROADCAST, "--py-call-osafterfork"])
    try:
        server.wait_for_port()
        server.wait_for_log(r"broadcast mule \d+ serving ring", timeout=20)
        server.wait_for_log(r"spawned uWSGI worker", timeout=20)
    finally:
        server.stop()
    assert WARNING not in server.log(), server.log()
    assert not server.crashes(), server.log()


def test_no_thread_no_warning(tmp_path):
    server = serve("echo_app:app", tmp_path, model="threads")
    try:
        server.wait_for_port()
    finally:
        server.stop()
    assert WARNING not in server.log(), server.log()


def test_the_check_sees_only_threads_missing_from_the_process():
    """Outside a fork every thread exists (/proc/self/task): nothing is reported."""
    import threading

    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="alive-here")
    thread.start()
    try:
        assert thread not in startup.inherited_threads()
    finally:
        stop.set()
        thread.join()
