"""app.run(): `python script.py` execs uWSGI serving the app (the pid becomes the master)."""

from __future__ import annotations

import json
import re
import sys
import urllib.error
import urllib.request

import pytest
import websocket

from harness import APPS, UWSGI, wait_for


def run_script(tmp_path, debug=False):
    env = {"PORT": "{port}", "RUN_DEBUG": "1" if debug else "0"}
    return UWSGI([str(APPS / "run_app.py")], tmp_path, executable=sys.executable, env=env)


@pytest.fixture
def launched(tmp_path, request):
    server = None

    def launch(**kwargs):
        nonlocal server
        server = run_script(tmp_path, **kwargs)
        return server

    yield launch
    if server is not None:
        server.stop()
        assert not server.crashes(), server.log()


def info(server):
    return json.loads(urllib.request.urlopen(server.http + "/info", timeout=5).read())


def echo_once(server, text):
    ws = websocket.create_connection(server.url + "/echo", timeout=5)
    try:
        ws.send(text)
        return ws.recv()
    finally:
        ws.close()


def test_app_run_execs_uwsgi_with_threads(launched):
    server = launched()
    assert echo_once(server, "through app.run") == "through app.run"
    log = server.log()
    # exec: the script's pid is now uWSGI's master
    assert re.search(rf"spawned uWSGI master process \(pid: {server.pid}\)", log), log
    assert info(server)["masterpid"] == server.pid
    assert "Operational MODE: threaded" in log
    assert re.search(r"mapped \d+ bytes .* for 4 cores", log), log
    assert info(server)["debug"] is False


def test_app_run_debug_forces_one_worker_and_the_debugger(launched):
    server = launched(debug=True)  # the script also asks for threads=4: debug keeps them
    wait_for(lambda: server.worker_pids(), 5, "the worker's spawn line")
    log = server.log()
    assert "Operational MODE: threaded" in log, log  # one process, still concurrent
    assert server.worker_pids() and len(server.worker_pids()) == 1
    details = info(server)
    assert details["debug"] is True
    assert details["wsgi_app"] == "DebuggedApplication"
    assert details["numproc"] == 1
    assert echo_once(server, "through the debugger") == "through the debugger"
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(server.http + "/fail", timeout=5)
    assert exc.value.code == 500
    assert b"Werkzeug Debugger" in exc.value.read()


def test_uwsgi_ws_options_go_through_set():
    """uWSGI's command line refuses options it does not know: ours are placeholders."""
    from flask import Flask

    from uwsgi_ws.run import uwsgi_args

    args = uwsgi_args(Flask("x"), processes=2, uwsgi_ws_history=50, uwsgi_ws_history_size="8M")
    assert "--processes=2" in args
    pairs = [args[i + 1] for i, a in enumerate(args) if a == "--set-placeholder"]
    assert pairs == ["uwsgi-ws-history=50", "uwsgi-ws-history-size=8M"]
