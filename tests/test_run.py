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
    server = UWSGI([str(APPS / "run_app.py")], tmp_path, executable=sys.executable, env=env)
    # app.run adds the broadcast: stop only once its mule serves (a SIGINT while it still
    # starts can crash it in CPython's finalization, uWSGI 2.0.31)
    server.wait_for_log(r"broadcast mule \d+ serving ring")
    return server


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


def echo_once(server, text, timeout=5):
    ws = websocket.create_connection(server.url + "/echo", timeout=timeout)
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
    # the first says the uWSGI was started by app.run (its module-level app.run() is then expected)
    assert pairs == ["app-run-by-uwsgi-ws=1", "uwsgi-ws-history=50", "uwsgi-ws-history-size=8M"]


@pytest.mark.parametrize("cls, options, added, left_out", [
    ("WebSocket", {}, ["--threads=16", "--enable-threads", "--sharedarea=4096", "--mule-reload-mercy=10"], ["--gevent"]),
    ("GeventWebSocket", {}, ["--gevent=100", "--sharedarea=4096"], ["--threads", "--enable-threads"]),
    ("AsyncWebSocket", {}, ["--async=100", "--ugreen"], ["--threads", "--gevent", "--sharedarea", "--mule"]),
    ("GeventWebSocket", {"threads": 8}, ["--threads=8", "--sharedarea=4096"], ["--gevent", "--enable-threads"]),
    ("WebSocket", {"threads": False}, ["--sharedarea=4096"], ["--threads", "--gevent"]),
    ("WebSocket", {"broadcast": False}, ["--threads=16"], ["--sharedarea", "--mule"]),
    ("WebSocket", {"sharedarea": 64}, ["--sharedarea=64", "--threads=16"], ["--mule", "--sharedarea=4096"]),
    ("AsyncWebSocket", {"broadcast": True}, ["--async=100", "--sharedarea=4096"], ["--threads"]),
])
def test_app_run_defaults_follow_the_class(cls, options, added, left_out):
    """What app.run adds (uwsgi_ws.run.added_options): the class's model unless a model option was
    given (even False), the broadcast unless broadcast=False, async, or the caller's own sharedarea/mule."""
    from flask import Flask

    import uwsgi_ws
    from uwsgi_ws.run import MULE_FILE, uwsgi_args

    app = Flask("x")
    getattr(uwsgi_ws, cls)(app)
    args = uwsgi_args(app, **options)
    for arg in added:
        assert arg in args, args
    for prefix in left_out:
        assert not any(a == prefix or a.startswith(prefix + "=") for a in args), (prefix, args)
    if "--sharedarea=4096" in args:
        assert f"--mule={MULE_FILE}" in args and MULE_FILE.is_file()


# -- app.run() at a module's top level (no `__main__` guard) ------------------------------------------


def _env(**extra: str) -> dict:
    import os

    from harness import ROOT

    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(APPS)]), **extra}


def test_module_level_app_run_returns_when_imported():
    """pytest, a WSGI server or a script importing the module: app.run() returns (it would
    have replaced the importing process with uWSGI) and says why on stderr."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", "import module_level_run_app; print('imported')"],
                          capture_output=True, text=True, env=_env(), timeout=60, cwd=str(APPS))
    assert done.returncode == 0 and done.stdout.strip() == "imported", done
    assert "ignoring app.run() at the top level of module_level_run_app" in done.stderr, done.stderr
    assert "__name__ == \"__main__\"" in done.stderr


def test_flask_run_serves_an_app_with_a_module_level_app_run(tmp_path):
    """`flask --app module_level_run_app run`: Flask's development server serves the app and its
    WebSocket route; the module-level app.run() is ignored, as Flask ignores its own there
    (it exec'd uWSGI on the `flask` script: "GAME OVER")."""
    from harness import ScriptServer

    def serving(server: ScriptServer) -> bytes | None:
        try:
            return urllib.request.urlopen(server.http + "/", timeout=5).read()
        except OSError:
            return None

    # without --debug (no reloader), in tests/apps with the checkout and tests/apps on PYTHONPATH
    server = ScriptServer([sys.executable, "-m", "flask", "--app", "module_level_run_app", "run", "--port", "{port}"],
                          APPS, tmp_path, env=_env(), ready=serving, name="flask run")
    try:
        assert serving(server) == b"module-level app.run"
        assert echo_once(server, "hi", timeout=10) == "hi"
        text = server.log()
        assert "ignoring app.run() at the top level of module_level_run_app" in text, text
        assert "GAME OVER" not in text and "--wsgi-file" not in text, text
    finally:
        server.stop()


def test_python_app_py_with_a_module_level_app_run_says_nothing_of_it(tmp_path):
    """`python module_level_run_app.py`: the script's app.run() execs uWSGI, which imports the
    script again and meets the same app.run(): expected there, so no warning."""
    server = UWSGI([str(APPS / "module_level_run_app.py")], tmp_path, executable=sys.executable,
                   env={"PORT": "{port}"})
    try:
        server.wait_for_log(r"broadcast mule \d+ serving ring")
        assert echo_once(server, "hi", timeout=10) == "hi"
        log = server.log()
        assert "uWSGI already serves it" not in log and "ignoring app.run()" not in log, log
    finally:
        server.stop()
    assert not server.crashes(), server.log()
