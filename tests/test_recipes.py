"""The documented configurations survive operations (issue 18, §3b).

Each README recipe, written as a strict vassal that includes the shipped configs, is reloaded the
two ways operators do it -- `uwsgi --reload PIDFILE` (a graceful binary reload) and a touched
vassal under the Emperor -- and must still serve afterwards, with its settings in force. The
`env: UWSGI_WS_...` form the README used to show is reloaded too, as the control: uWSGI reads
every UWSGI_* variable as one of its own options after the reload and strict mode kills it.
Also: broadcast under `lazy-apps` (the mule file), and the log rotations the README documents.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import websocket

from uwsgi_ws.client import Publisher

from harness import APPS, ROOT, UWSGI, free_port, uwsgi_binary, wait_for

CONF = ROOT / "uwsgi_ws" / "conf"
READY = r"WSGI app 0 \(mountpoint=''\) ready"


def vassal(tmp_path: Path, name: str, port: int, model: str, lines: list[str], app: str = "broadcast_app:app",
           processes: int = 2) -> Path:
    """A strict vassal as the README's template writes it: the shipped configs first, then the app."""
    body = [f"include: {CONF}/{model}.yaml", f"include: {CONF}/broadcast.yaml",
            f"http-socket: 127.0.0.1:{port}", f"pythonpath: {ROOT}", f"pythonpath: {APPS}",
            f"module: {app}", f"processes: {processes}", f"pidfile: {tmp_path}/{name}.pid",
            *(["gevent: 50"] if model == "gevent" else ["threads: 8"]), *lines]
    path = tmp_path / f"{name}.yaml"
    path.write_text("uwsgi:\n" + "".join(f"  {line}\n" for line in body))
    return path


def subscribe(server_url: str, channel: str) -> websocket.WebSocket:
    ws = websocket.create_connection(f"{server_url}/sub/{channel}", timeout=10)
    assert ws.recv().startswith("ready:")
    return ws


def publish_until_received(http: str, channel: str, clients: list, text: str) -> None:
    """POST `text` until every client got it (the subscription may start after the upgrade)."""
    pending = list(clients)
    for _ in range(40):
        req = urllib.request.Request(f"{http}/publish/{channel}", data=text.encode(), method="POST")
        assert urllib.request.urlopen(req, timeout=15).status == 204
        for ws in list(pending):
            ws.settimeout(0.5)
            try:
                while ws.recv() != text:
                    pass
                pending.remove(ws)
            except websocket.WebSocketTimeoutException:
                pass
        if not pending:
            return
    raise AssertionError(f"{len(pending)} client(s) never got {text!r}")


def broadcast_works(url: str, http: str, workers: int = 2) -> None:
    """A publish reaches subscribers held by every worker (clients opened until `workers` pids seen)."""
    clients, pids = [], set()
    try:
        for _ in range(40):
            ws = websocket.create_connection(f"{url}/sub/r", timeout=10)
            clients.append(ws)
            pids.add(ws.recv().split(":")[1])
            if len(pids) >= workers:
                break
        assert len(pids) >= workers, pids
        publish_until_received(http, "r", clients, f"to all {time.monotonic()}")
    finally:
        for ws in clients:
            ws.close()


def uwsgi_reload(pidfile: Path) -> None:
    subprocess.run([uwsgi_binary(), "--reload", str(pidfile)], check=True, timeout=30,
                   capture_output=True, stdin=subprocess.DEVNULL)


# -- the recipes ---------------------------------------------------------------------------------------

@pytest.fixture
def redis(tmp_path):
    from test_redis_bridge import RedisServer

    server = RedisServer(tmp_path)
    yield server
    server.stop()


def recipe_lines(recipe: str, redis_url: str, form: str) -> list[str]:
    """The README's lines for `recipe`, as placeholders (form "placeholder") or `env:` (form "env")."""
    settings = {
        "redis": [("uwsgi-ws-redis-url", redis_url), ("uwsgi-ws-redis-stream", "recipes:test")],
        "history": [("uwsgi-ws-history", "100"), ("uwsgi-ws-history-size", "4M")],
        "metrics-lazy-apps": [("uwsgi-ws-metrics-sharedarea", "1")],
    }[recipe]
    extra = {"metrics-lazy-apps": [f"include: {CONF}/metrics.yaml", "lazy-apps: true", "sharedarea: 64"]}.get(recipe, [])
    if form == "placeholder":
        return extra + [f"set-placeholder: {k}={v}" for k, v in settings]
    return extra + [f"env: {k.upper().replace('-', '_')}={v}" for k, v in settings]


EVIDENCE = {  # a log line that says the recipe's setting is in force, once per start
    "redis": r"redis bridge: connected for reading",
    "history": r"broadcast history: the last 100 events per room",
    "metrics-lazy-apps": r"spawned uWSGI mule 1",
}


@pytest.mark.parametrize("recipe", sorted(EVIDENCE))
def test_recipe_survives_uwsgi_reload(tmp_path, redis, recipe):
    port = free_port()
    path = vassal(tmp_path, recipe, port, "gevent" if recipe == "redis" else "threads",
                  recipe_lines(recipe, redis.url, "placeholder"))
    server = UWSGI(["--yaml", str(path)], tmp_path, port=port)
    try:
        server.wait_for_log(EVIDENCE[recipe], 30)
        broadcast_works(server.url, server.http)
        uwsgi_reload(tmp_path / f"{recipe}.pid")
        server.wait_for_log(r"gracefully \(RE\)spawned uWSGI master process", 60)
        server.wait_for_log(EVIDENCE[recipe], 60, count=2)
        wait_for(lambda: _serves(server), 30, "the reloaded instance serving")
        broadcast_works(server.url, server.http)
        assert server.proc.poll() is None, server.log()
        assert "unknown config directive" not in server.log()
        assert "metrics are counted per process" not in server.log(), server.log()  # the setting is read
    finally:
        server.stop()
    assert not server.crashes(), server.log()


@pytest.mark.parametrize("recipe", sorted(EVIDENCE))
def test_recipe_env_form_dies_on_reload_the_control(tmp_path, redis, recipe):
    """What the placeholder form avoids, reproduced: the same recipe with `env:` exits on reload."""
    port = free_port()
    path = vassal(tmp_path, recipe, port, "threads", recipe_lines(recipe, redis.url, "env"))
    server = UWSGI(["--yaml", str(path)], tmp_path, port=port)
    try:
        server.wait_for_log(r"spawned uWSGI mule 1", 30)  # the master is in its loop: it handles SIGHUP
        wait_for(lambda: _serves(server), 30, "the instance serving")
        uwsgi_reload(tmp_path / f"{recipe}.pid")
        # the reload waits for the workers and the mule (their reload mercies) before the exec
        try:
            server.proc.wait(150)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after the reload:\n{server.log()}") from None
        assert server.proc.returncode != 0
        assert re.search(r"unknown config directive: ws-", server.log()), server.log()
    finally:
        server.stop()


@pytest.mark.parametrize("recipe", sorted(EVIDENCE))
def test_recipe_survives_a_touched_vassal(tmp_path, redis, recipe):
    port = free_port()
    vassals = tmp_path / "vassals"
    vassals.mkdir()
    path = vassal(vassals, recipe, port, "threads", recipe_lines(recipe, redis.url, "placeholder"))
    emperor = UWSGI(["--emperor", str(vassals)], tmp_path, port=port)
    try:
        emperor.wait_for_log(EVIDENCE[recipe], 30)
        os.utime(path, (time.time() + 5, time.time() + 5))
        emperor.wait_for_log(rf"reload the uwsgi instance {re.escape(path.name)}", 30)
        emperor.wait_for_log(EVIDENCE[recipe], 60, count=2)
        wait_for(lambda: _serves(emperor), 30, "the reloaded vassal serving")
        broadcast_works(emperor.url, emperor.http)
        log = emperor.log()
        assert "unknown config directive" not in log, log
        assert not re.search(r"vassal .* (has been destroyed|exited with)", log.split("reload the uwsgi instance")[1]), log
    finally:
        emperor.stop()
    assert not emperor.crashes(), emperor.log()


def _serves(server: UWSGI) -> bool:
    try:
        return urllib.request.urlopen(server.http + "/pid", timeout=5).status == 200
    except OSError:
        return False


# -- broadcast under lazy-apps: the mule file ----------------------------------------------------------


@pytest.mark.parametrize("model", ["threads", "gevent"])
def test_broadcast_under_lazy_apps(tmp_path, model):
    port = free_port()
    path = vassal(tmp_path, "lazy", port, model, ["lazy-apps: true"])
    server = UWSGI(["--yaml", str(path)], tmp_path, port=port)
    try:
        # lazy-apps: each worker loads the app after the fork and accepts only then; connections
        # opened before the second is ready would all reach the first
        server.wait_for_log(r"WSGI app 0 \(mountpoint=''\) ready", count=2)
        broadcast_works(server.url, server.http)
        broadcast_works(server.url, server.http)
        log = server.log()
        assert log.count("spawned uWSGI mule 1") == 1, log  # never respawned: no crash loop
    finally:
        server.stop()
    assert not server.crashes(), server.log()


def test_check_flags_the_module_mule_under_lazy_apps_which_really_fails(tmp_path):
    """The linter's lazy-apps finding is what uWSGI does: the module:callable mule is respawned."""
    port = free_port()
    path = tmp_path / "lazy.yaml"
    path.write_text(f"uwsgi:\n  include: {CONF}/threads.yaml\n  lazy-apps: true\n  sharedarea: 4096\n"
                    f"  mule: uwsgi_ws.mule:run\n  http-socket: 127.0.0.1:{port}\n  pythonpath: {ROOT}\n"
                    f"  pythonpath: {APPS}\n  module: broadcast_app:app\n")
    import sys

    done = subprocess.run([sys.executable, "-m", "uwsgi_ws", "check", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1 and "lazy-apps with the broadcast mule as module:callable" in done.stdout
    server = UWSGI(["--yaml", str(path), "--set-placeholder", "uwsgi-ws-publish-timeout=600"], tmp_path, port=port)
    try:
        server.wait_for_log(r"spawned uWSGI mule 1", 30, count=2)  # it died and was respawned
        # a publish fails at once, naming the cause, instead of waiting out the publish timeout
        # (600 s here, far above the client's 30 s) and blaming a missing --mule
        req = urllib.request.Request(f"{server.http}/publish/x", data=b"m", method="POST")
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(req, timeout=30)
        assert failed.value.code == 500
        wait_for(lambda: re.search(r"mule.*(crash|respawn|died|lazy-apps)", server.log()[-4000:], re.I), 10,
                 "a message naming the crash-looping mule")
    finally:
        server.stop()


# -- log rotation ------------------------------------------------------------------------------------


def _request_line(server: UWSGI, marker: str) -> None:
    urllib.request.urlopen(f"{server.http}/pid?{marker}", timeout=10).read()


@pytest.mark.parametrize("model", ["threads", "gevent"])
def test_log_rotation_copytruncate(tmp_path, model):
    """logrotate's copytruncate: the workers and the mule keep writing to the same file, now from
    its start (uWSGI opens `logto` with O_APPEND: no hole of NULs where the old lines were)."""
    port = free_port()
    log = tmp_path / "app.log"
    sock = tmp_path / "publish.sock"
    path = vassal(tmp_path, "rot", port, model, [f"logto: {log}", "disable-logging: false",
                                                 f"set-placeholder: uwsgi-ws-publish-socket={sock}"])
    server = UWSGI(["--yaml", str(path)], tmp_path, port=port)
    try:
        ws = subscribe(server.url, "x")  # a long-lived WebSocket
        _request_line(server, "before-rotation")
        wait_for(lambda: "before-rotation" in log.read_text(errors="replace"), 10, "the first request line")
        wait_for(lambda: "publish socket" in log.read_text(errors="replace"), 20, "the mule's publish socket")
        shutil.copyfile(log, tmp_path / "app.log.1")  # what copytruncate does
        with open(log, "r+b") as f:
            f.truncate(0)
        _request_line(server, "after-rotation")
        wait_for(lambda: "after-rotation" in log.read_text(errors="replace"), 10, "a line in the truncated file")
        # the mule writes there too: a publisher connecting from outside is logged by the mule
        with Publisher(str(sock)) as pub:
            pub.publish("after rotation", channel="x")
        assert ws.recv() == "after rotation"
        wait_for(lambda: f"a publisher connected (uid {os.getuid()}, pid {os.getpid()})" in
                 log.read_text(errors="replace"), 10, "the mule's line in the truncated file")
        data = log.read_bytes()
        assert not data.startswith(b"\0") and b"\0" not in data, data[:200]
        assert "before-rotation" in (tmp_path / "app.log.1").read_text(errors="replace")
        ws.close()
    finally:
        server.stop()


def test_log_rotation_move_then_reload(tmp_path):
    """Move the file, then `uwsgi --reload`, with `log-reopen: true` (without it the reloaded master
    keeps the moved file's descriptor): every process (workers, mule) writes the new file."""
    port = free_port()
    log = tmp_path / "app.log"
    path = vassal(tmp_path, "rot", port, "threads", [f"logto: {log}", "log-reopen: true",
                                                     "disable-logging: false", "worker-reload-mercy: 5"])
    server = UWSGI(["--yaml", str(path)], tmp_path, port=port)
    try:
        _request_line(server, "before-rotation")
        wait_for(lambda: "before-rotation" in log.read_text(errors="replace"), 10, "the first request line")
        log.rename(tmp_path / "app.log.1")
        uwsgi_reload(tmp_path / "rot.pid")
        wait_for(lambda: log.exists() and re.search(READY, log.read_text(errors="replace")), 60,
                 "the reloaded instance logging to the new file")
        wait_for(lambda: _serves_port(port), 30, "serving after the reload")
        _request_line(server, "after-rotation")
        wait_for(lambda: "after-rotation" in log.read_text(errors="replace"), 10, "the request line in the new file")
        assert "spawned uWSGI mule 1" in log.read_text(errors="replace")
        assert "after-rotation" not in (tmp_path / "app.log.1").read_text(errors="replace")
    finally:
        server.stop()


def _serves_port(port: int) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/pid", timeout=5).status == 200
    except OSError:
        return False


# -- gevent with every core held by a WebSocket --------------------------------------------------------


def test_gevent_default_limit_answers_503_before_the_cores_run_out(tmp_path):
    """uWSGI 2.0's accept loop spins both CPUs ("async queue is full") once every gevent core holds
    a WebSocket, and health checks go unanswered. By default (no max_connections_per_worker set)
    the worker must refuse extra WebSockets with 503 while cores remain for plain HTTP."""
    from harness import serve

    cores = 8
    server = serve("echo_app:app", tmp_path, model="gevent",
                   extra=["--processes", "1", "--gevent", str(cores)])
    opened = []
    try:
        refused = None
        for _ in range(cores):
            try:
                opened.append(websocket.create_connection(f"{server.url}/echo", timeout=10))
            except websocket.WebSocketBadStatusException as exc:
                refused = exc
                break
        assert refused is not None, f"all {cores} gevent cores taken by WebSockets, no 503 (uWSGI then spins)"
        assert refused.status_code == 503
        assert len(opened) < cores
        # plain HTTP (a health check) still answers at the limit
        assert urllib.request.urlopen(f"{server.http}/urls", timeout=10).status == 200
        for ws in opened:  # the open ones still work
            ws.send("x")
            assert ws.recv() == "x"
    finally:
        for ws in opened:
            ws.close()
        server.stop()
    assert not server.crashes(), server.log()


# -- the README's vassal template, from the installed configs --------------------------------------------


def test_readme_vassal_template_with_copied_configs(tmp_path):
    """Deployment: `python -m uwsgi_ws conf --copy /etc/uwsgi_ws`, then the README's vassal (paths
    moved into tmp_path): it lints clean, serves, and broadcasts across its two workers, with no
    path into this checkout in its config."""
    import sys

    text = (ROOT / "README.md").read_text()
    section = text.split("**One vassal per app**", 1)[1]
    template = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    etc = tmp_path / "etc" / "uwsgi_ws"
    done = subprocess.run([sys.executable, "-m", "uwsgi_ws", "conf", "--copy", str(etc)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    port, socket_port = free_port(), free_port()
    replaced = (template.replace("/etc/uwsgi_ws/", f"{etc}/")
                .replace("/srv/myapp/.venv", sys.prefix)
                .replace("127.0.0.1:8000", f"127.0.0.1:{socket_port}")
                .replace("127.0.0.1:8001", f"127.0.0.1:{port}")
                .replace("/run/uwsgi/myapp-stats.sock", str(tmp_path / "stats.sock"))
                .replace("/srv/myapp", str(APPS))
                .replace("myapp:app", "broadcast_app:app")
                .replace("threads: 64", "threads: 8"))
    assert str(ROOT / "uwsgi_ws") not in replaced  # no include into the checkout (its .venv is the virtualenv)
    vassal_path = tmp_path / "myapp.yaml"
    vassal_path.write_text(replaced)
    done = subprocess.run([sys.executable, "-m", "uwsgi_ws", "check", str(vassal_path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    # PYTHONPATH: the test apps only (chdir reaches them too); uwsgi_ws comes from the virtualenv
    server = UWSGI(["--yaml", str(vassal_path)], tmp_path, port=port, env={"PYTHONPATH": str(APPS)})
    try:
        broadcast_works(server.url, server.http)
        assert f"{etc}/broadcast_mule.py" in server.log() or "spawned uWSGI mule 1" in server.log()
    finally:
        server.stop()
    assert not server.crashes(), server.log()
