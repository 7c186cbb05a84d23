"""Start-up traps (issue 18, §3): each found as a new user would, each gets a clear message at start
or just works. Real uWSGI processes; the "gevent not installed" case runs in a real virtualenv
that has everything the app needs except gevent."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import websocket

from uwsgi_ws import startup

from harness import UWSGI, serve, two_echo_at_once, wait_for

# What the apps import, linked into the gevent-less virtualenv (never gevent, greenlet, zope).
NEEDED = ("flask", "werkzeug", "jinja2", "markupsafe", "itsdangerous", "click", "blinker", "wsproto", "h11", "yaml")


@pytest.fixture(scope="module")
def venv_without_gevent(tmp_path_factory) -> Path:
    """A real virtualenv (this Python's base) whose site-packages reach the app's dependencies
    but not gevent: `import gevent` fails there as on a machine where it was never installed."""
    root = tmp_path_factory.mktemp("nogevent")
    base = subprocess.run([sys.executable, "-c", "import sys; print(sys.base_prefix)"], capture_output=True,
                          text=True, check=True).stdout.strip()
    venv = root / "venv"
    subprocess.run([str(Path(base) / "bin" / "python3"), "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    ours = Path(next(p for p in sys.path if p.endswith("site-packages")))
    links = root / "deps"
    links.mkdir()
    for name in NEEDED:
        source = ours / name
        assert source.exists(), source
        (links / name).symlink_to(source)
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "deps.pth").write_text(f"{links}\n")
    check = subprocess.run([str(venv / "bin" / "python"), "-c", "import flask, wsproto\n"
                            "try:\n import gevent\nexcept ImportError: print('no gevent')"],
                           capture_output=True, text=True, timeout=60)
    assert check.stdout.strip() == "no gevent", check.stdout + check.stderr
    return venv


@pytest.mark.parametrize("need_app", [True, False])
def test_gevent_configured_but_not_installed_stops_at_once(tmp_path, venv_without_gevent, need_app):
    args = ["--master", "--virtualenv", str(venv_without_gevent), "--http-socket", "127.0.0.1:{port}",
            "--module", "echo_app:app", "--processes", "2", "--gevent", "100", "--die-on-term"]
    if need_app:
        args.append("--need-app")
    server = UWSGI(args, tmp_path, ready="none")
    try:
        server.proc.wait(60)  # it stops by itself: no respawn loop to wait out
    finally:
        server.stop()
    log = server.log()
    assert server.proc.returncode != 0, log
    assert 'pip install "uwsgi_ws[gevent]"' in log, log
    assert "gevent package is not installed" in log
    assert "spawned uWSGI worker" not in log and "DAMN ! worker" not in log, log


def test_a_worker_without_concurrency_is_warned_about(tmp_path):
    server = UWSGI(["--master", "--http-socket", "127.0.0.1:{port}", "--module", "echo_app:app",
                    "--die-on-term"], tmp_path)
    try:
        ws = websocket.create_connection(server.url + "/echo", timeout=10)
        ws.send("still served")
        assert ws.recv() == "still served"
        ws.close()
        log = server.log()
        assert log.count(startup.NO_CONCURRENCY) == 1, log
        assert "--threads 16" in log and "--gevent 1000" in log
    finally:
        server.stop()


@pytest.mark.parametrize("model", ["threads", "gevent", "async"])
def test_no_warning_with_a_concurrency_model(tmp_path, model):
    server = serve("echo_app:app", tmp_path, model=model)
    try:
        ws = websocket.create_connection(server.url + "/echo", timeout=10)
        ws.send("x")
        assert ws.recv() == "x"
        ws.close()
        assert "serves one request at a time" not in server.log()
    finally:
        server.stop()


# -- app.run ---------------------------------------------------------------------------------------------

SCRIPT = '''
import json, os, threading
from flask import Flask
from uwsgi_ws import WebSocket

app = Flask(__name__)
ws = WebSocket(app)

@ws.route("/echo")
def echo(conn):
    for message in conn:
        conn.send(message)

@app.route("/opts")
def opts():
    import uwsgi
    return json.dumps(sorted(k.decode() if isinstance(k, bytes) else k for k in uwsgi.opt))
'''


def script(tmp_path: Path, call: str, guarded: bool = True) -> Path:
    body = SCRIPT + ("\nif __name__ == \"__main__\":\n    " + call + "\n" if guarded else "\n" + call + "\n")
    path = tmp_path / "app.py"
    path.write_text(textwrap.dedent(body))
    return path


def launch(tmp_path: Path, path: Path, mule: bool = True) -> UWSGI:
    """`python app.py`; with `mule` (app.run adds the broadcast unless told not to), once the
    broadcast mule serves: a SIGINT while it still starts can crash it in CPython's
    finalization (uWSGI 2.0.31), which these tests are not about."""
    server = UWSGI([str(path)], tmp_path, executable=sys.executable, env={"PORT": "{port}"})
    if mule:
        server.wait_for_log(r"broadcast mule \d+ serving ring")
    return server


@pytest.mark.parametrize("model", ["gevent=100", "threads=8"])
def test_app_run_debug_keeps_the_concurrency_model(tmp_path, model):
    path = script(tmp_path, f"app.run(port=int(os.environ['PORT']), debug=True, {model})")
    server = launch(tmp_path, path)
    try:
        two_echo_at_once(server)
        options = json.loads(urllib.request.urlopen(server.http + "/opts", timeout=10).read())
        assert model.split("=")[0] in options, options
        assert len(server.worker_pids()) == 1, server.log()
        assert "serves one request at a time" not in server.log()
    finally:
        server.stop()
    assert not server.crashes(), server.log()


def opts(server: UWSGI) -> list:
    """The names of the options the running instance was started with."""
    return json.loads(urllib.request.urlopen(server.http + "/opts", timeout=10).read())


@pytest.mark.parametrize("cls, expected, absent", [
    ("WebSocket", ["threads", "enable-threads", "sharedarea", "mule"], ["gevent", "async"]),
    ("GeventWebSocket", ["gevent", "sharedarea", "mule"], ["threads", "async"]),
    ("AsyncWebSocket", ["async", "ugreen"], ["threads", "gevent", "sharedarea", "mule"]),
])
def test_app_run_without_options_picks_the_model_of_the_class(tmp_path, cls, expected, absent):
    """app.run() as the seed libraries start their apps: the model of the extension's class, the
    broadcast (not for async, which has none), said at start; no "one request at a time" warning."""
    path = script(tmp_path, "app.run(port=int(os.environ['PORT']))")
    path.write_text(path.read_text().replace("from uwsgi_ws import WebSocket", f"from uwsgi_ws import {cls} as WebSocket"))
    server = launch(tmp_path, path, mule="mule" in expected)
    try:
        if cls != "AsyncWebSocket":
            two_echo_at_once(server)
        else:  # async serves one WebSocket per worker at a time (conf/async.yaml)
            ws = websocket.create_connection(server.url + "/echo", timeout=10)
            ws.send("async")
            assert ws.recv() == "async"
            ws.close()
        options = opts(server)
        assert all(name in options for name in expected), options
        assert not any(name in options for name in absent), options
        log = server.log()
        assert "uwsgi_ws: app.run() adds " in log, log
        assert ("sharedarea=4096" in log) == ("sharedarea" in expected), log
        assert startup.NO_CONCURRENCY not in log, log
        assert "is for uWSGI's" not in log, log  # the model started is the class's
    finally:
        server.stop()
    assert not server.crashes(), server.log()


def test_app_run_broadcast_false_leaves_the_broadcast_out(tmp_path):
    path = script(tmp_path, "app.run(port=int(os.environ['PORT']), broadcast=False)")
    server = launch(tmp_path, path, mule=False)
    try:
        two_echo_at_once(server)
        options = opts(server)
        assert "threads" in options and "sharedarea" not in options and "mule" not in options, options
    finally:
        server.stop()


def test_app_run_with_threads_false_warns(tmp_path):
    """threads=False (an explicit "no model"): no default is added and the warning says what to do."""
    path = script(tmp_path, "app.run(port=int(os.environ['PORT']), threads=False)")
    server = launch(tmp_path, path)
    try:
        ws = websocket.create_connection(server.url + "/echo", timeout=10)
        ws.send("x")
        assert ws.recv() == "x"
        ws.close()
        assert startup.NO_CONCURRENCY in server.log(), server.log()
        assert "threads" not in opts(server)
    finally:
        server.stop()


@pytest.mark.parametrize("cls, model, warned", [
    ("GeventWebSocket", "threads", True),
    ("ThreadedWebSocket", "gevent", True),
    ("GeventWebSocket", "gevent", False),
    ("WebSocket", "gevent", False),
    ("WebSocket", "threads", False),
])
def test_a_class_for_another_model_is_served_with_the_instances_and_warned_about(tmp_path, cls, model, warned):
    """GeventWebSocket under a threads uWSGI (or ThreadedWebSocket under gevent): the WebSockets are
    served with the instance's model (two at once, echoed) and the start-up log names the fix;
    WebSocket follows the instance and is never warned about."""
    (tmp_path / "apps").mkdir()
    (tmp_path / "apps" / "mismatch_app.py").write_text(
        SCRIPT.replace("from uwsgi_ws import WebSocket", f"from uwsgi_ws import {cls} as WebSocket"))
    server = serve("mismatch_app:app", tmp_path, model=model, pythonpath=(str(tmp_path / "apps"), str(ROOT)))
    try:
        two_echo_at_once(server)
        log = server.log()
        wanted = "--gevent 100" if cls == "GeventWebSocket" else "--threads 16"
        if warned:
            assert f"{cls} is for uWSGI's" in log and f"runs the {model} model" in log, log
            assert wanted in log and "use WebSocket, which follows the instance's model" in log, log
        else:
            assert "is for uWSGI's" not in log, log
    finally:
        server.stop()
    assert not server.crashes(), server.log()


def test_app_run_at_module_level_just_works(tmp_path):
    """`python app.py` with an unguarded app.run(): uWSGI, started by it, imports app.py and
    meets the call again, which is expected there: it works and logs nothing of it (an
    importer that is not this script's uWSGI is told why: tests/test_run.py)."""
    path = script(tmp_path, "app.run(port=int(os.environ['PORT']), threads=4)", guarded=False)
    server = launch(tmp_path, path)
    try:
        two_echo_at_once(server)
        log = server.log()
        assert "app.run() was called while uWSGI imports the app" not in log, log
        assert "GAME OVER" not in log and "must be called from a script" not in log
    finally:
        server.stop()
    assert not server.crashes(), server.log()


# -- broadcast set up wrong (the broadcast code's messages) ----------------------------------------------


def test_subscribe_without_sharedarea_says_add_sharedarea(tmp_path):
    """subscribe and publish in the same set-up give the same clear message (not 'not attached')."""
    server = serve("broadcast_app:app", tmp_path, model="threads")
    try:
        ws = websocket.create_connection(server.url + "/sub/x", timeout=10)
        try:
            while True:
                opcode, data = ws.recv_data(control_frame=True)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    break
            assert int.from_bytes(data[:2], "big") == 1011, data
        finally:
            ws.close()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(server.http + "/publish/x", data=b"m", method="POST"),
                                   timeout=30)
        assert refused.value.code == 500
        wait_for(lambda: server.log().count("sharedarea 4096") >= 2, 10, "the message for subscribe and publish")
        log = server.log()
        assert "not attached to a WebSocket extension" not in log, log
    finally:
        server.stop()


def test_missing_mule_fails_at_once_naming_the_option(tmp_path):
    """sharedarea but no --mule: the publish fails without waiting out the publish timeout (600 s here,
    far above the client's 30 s), and the message names --mule."""
    server = serve("broadcast_app:app", tmp_path, model="threads",
                   extra=["--sharedarea", "64", "--set-placeholder", "uwsgi-ws-publish-timeout=600"])
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(server.http + "/publish/x", data=b"m", method="POST"),
                                   timeout=30)
        assert refused.value.code == 500
        wait_for(lambda: "--mule=" in server.log(), 10, "the message naming --mule")
    finally:
        server.stop()


# -- what a new user copies from the docs ----------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
GUIDES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def command_lines(text: str) -> list:
    """The shell commands in `text`'s fenced code blocks, continuation lines joined."""
    found = []
    for block in re.findall(r"```(?:sh|bash|console|shell)?\n(.*?)```", text, re.S):
        for command in re.sub(r"\\\n\s*", " ", block).splitlines():
            found.append(command.strip())
    return found


@pytest.mark.parametrize("path", GUIDES, ids=lambda p: p.name)
def test_documented_uwsgi_command_lines_stop_on_sigterm(path):
    """Without --die-on-term, uWSGI 2.0 reloads on SIGTERM: `kill PID` restarts instead of stopping."""
    for command in command_lines(path.read_text()):
        words = command.split()
        if not words or not words[0].endswith("uwsgi") or "--emperor" in words:
            continue
        assert "--die-on-term" in words, f"{path.name}: {command}"


def test_the_migration_guide_points_to_pages_and_installs_as_the_readme_does():
    text = (ROOT / "docs" / "migration.md").read_text()
    assert not re.search(r"\(README[,:]", text), "README sections moved to docs/ pages: link those"
    for target in re.findall(r"\]\(([^)#]+\.md)(?:#[^)]*)?\)", text):
        assert (ROOT / "docs" / target).is_file(), target
    readme_install = re.search(r'pip install "([^"]+)"', (ROOT / "README.md").read_text())
    assert readme_install is not None
    assert f'pip install "{readme_install.group(1)}"' in text, readme_install.group(0)
