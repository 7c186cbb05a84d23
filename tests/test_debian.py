"""Debian's packaged uWSGI (Debian 12: uwsgi-core 2.0.21 with uwsgi-plugin-python3
and uwsgi-plugin-gevent-python3, running Debian's /usr/bin/python3 3.11 and the
python3-flask, python3-wsproto, python3-yaml and python3-gevent packages) serves
the package's configs and vassals unchanged, in the threads and the gevent model:

- the repository's vassals (echo, chat, ticker) under the uwsgi-emperor
  service's own config, uwsgi_ws/conf/debian/emperor.ini (Debian's default plus
  `vassals-include-before` of conf/debian/plugins.yaml), vassals running as
  www-data as the service runs them;
- an instance config that starts with conf/debian/<model>.yaml, then
  conf/broadcast.yaml and conf/metrics.yaml, serving the chat example.

The package reaches Debian's python3 through the vassal's `pythonpath` (the
checkout), nothing through PYTHONPATH. `make debian-uwsgi` installs the packages
(root + apt-get); on a system that is not Debian these tests are skipped.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
import websocket

from harness import ROOT, UWSGI, free_port, wait_for

DEBIAN_UWSGI = "/usr/bin/uwsgi-core"
DEBIAN_PYTHON = "/usr/bin/python3"
PLUGINS_DIR = Path("/usr/lib/uwsgi/plugins")
CONF = ROOT / "uwsgi_ws" / "conf"
DEBIAN_CONF = CONF / "debian"
VASSALS = ROOT / "vassals"
MODELS = ["threads", "gevent"]
PACKAGES = "uwsgi-core uwsgi-plugin-python3 uwsgi-plugin-gevent-python3 python3-flask python3-wsproto python3-yaml python3-gevent"

pytestmark = pytest.mark.skipif(not Path("/etc/debian_version").exists(),
                                reason="not a Debian system: no packaged uWSGI to test")


@pytest.fixture(scope="module", autouse=True)
def debian_packages() -> None:
    """On Debian the packages must be there: fail, saying how to get them."""
    how = f"run `make debian-uwsgi` (as root: apt-get install {PACKAGES})"
    assert os.access(DEBIAN_UWSGI, os.X_OK), f"{DEBIAN_UWSGI} missing: {how}"
    for plugin in ("python3_plugin.so", "gevent_python3_plugin.so"):
        assert (PLUGINS_DIR / plugin).exists(), f"{PLUGINS_DIR / plugin} missing: {how}"
    probe = subprocess.run([DEBIAN_PYTHON, "-c", "import flask, wsproto, yaml, gevent"],
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, f"Debian's python3 lacks a dependency ({probe.stderr.strip()}): {how}"


WWW_DATA = pwd.getpwnam("www-data").pw_uid if Path("/etc/debian_version").exists() else -1


def session_uids(sid: int) -> dict[int, int]:
    """pid -> real uid of every process in session `sid` (the harness starts each
    uWSGI in a session of its own)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) != sid:  # after "pid (comm)": state ppid pgrp session
                continue
            uid_line = next(line for line in (entry / "status").read_text().splitlines() if line.startswith("Uid:"))
        except (OSError, StopIteration, IndexError, ValueError):
            continue
        found[int(entry.name)] = int(uid_line.split()[1])
    return found


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the www-data vassals can read (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="uwsgi_ws-debian-"))
    path.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def debian_uwsgi(tmp_path: Path) -> Iterator:
    """Starts Debian's uWSGI (its own Python: nothing from the tests' PYTHONPATH);
    stops each by pid with stop_checked() unless the test did (check=False: no checks)."""
    started: list[tuple[UWSGI, bool]] = []

    def start(args: list[str], port: int, check: bool = True) -> UWSGI:
        server = UWSGI(args, tmp_path, port=port, executable=DEBIAN_UWSGI, env={"PYTHONPATH": ""}, ready="none")
        started.append((server, check))
        return server

    yield start
    for server, check in started:
        if check and server.proc.poll() is None:
            stop_checked(server)
        else:
            server.stop()


def crash_lines(log: str) -> list[str]:
    """Lines that mean a process died abnormally: the harness's patterns, plus uWSGI's own
    "!!! uWSGI process N got Segmentation Fault !!!" (printed by the dying process itself,
    also when its master has no time to log the death)."""
    patterns = ("SIGSEGV", r"(?i)segmentation fault", "killed by signal", "DAMN ! worker", "uWSGI worker .* died")
    return [line for line in log.splitlines() if any(re.search(p, line) for p in patterns)]


def stop_checked(server: UWSGI) -> None:
    """Stop `server`; fail on a crash or a Python traceback while it served. While it
    stops, one crash kind is known and allowed: a SIGSEGV inside Py_FinalizeEx (the
    interpreter's exit, after the last request), which Debian's greenlet 2.0.2 causes in
    a mule that imported gevent (seen in examples/ticker's price mule, gevent model)."""
    serving = server.log()
    server.stop()
    stopping = server.log()[len(serving):]
    assert not crash_lines(serving), serving
    assert "Traceback (most recent call last)" not in serving, serving
    assert "Traceback (most recent call last)" not in stopping, stopping
    backtraces = re.findall(r"got Segmentation Fault !!!\n.*?end of backtrace", stopping, re.S)
    at_exit = [b for b in backtraces if "Py_FinalizeEx" in b]
    others = [line for line in crash_lines(stopping) if "got Segmentation Fault" not in line]
    assert len(at_exit) == len(backtraces) == len(re.findall("got Segmentation Fault", stopping)) and not others, \
        stopping


def model_vassal(text: str, model: str, port: int, files: Path) -> str:
    """A repository vassal's text for `model`, with absolute paths and its own port. Ring
    and history files go to `files`, a directory of www-data's: the service's vassal
    directory is root's, so a file next to the vassal (`%p.ring`) could not be created."""
    text = re.sub(r"(?m)^(\s*set-placeholder:\s*uwsgi-ws-(ring|history)-file=)\S+",
                  lambda m: f"{m.group(1)}{files}/{m.group(2)}-{port}", text)
    # %d is the vassal file's directory: keep pointing at the repository.
    text = text.replace("%d..", str(ROOT)).replace("%d", str(VASSALS) + "/")
    text = re.sub(r"uwsgi_ws/conf/(threads|gevent)\.yaml", f"uwsgi_ws/conf/{model}.yaml", text)
    text = re.sub(r"(?m)^(\s*)(threads|gevent):(\s*\d+)", rf"\g<1>{model}:\g<3>", text)
    text, n = re.subn(r"(?m)^(\s*http-socket:\s*)\S+", rf"\g<1>127.0.0.1:{port}", text)
    assert n == 1, "expected one http-socket line"
    return text


# -- what each example must do ---------------------------------------------------------


def check_echo(port: int) -> None:
    conn = websocket.create_connection(f"ws://127.0.0.1:{port}/echo", timeout=10)
    try:
        for text in ("from Debian's uWSGI", "héllo ✓"):
            conn.send(text)
            assert conn.recv() == text
        conn.send_binary(b"\x00\xff" * 1000)
        assert conn.recv() == b"\x00\xff" * 1000
    finally:
        conn.close()
    assert b"<html" in urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read()


def live_url(port: int) -> str:
    """The chat's /live URL with a token, got as its page gets one: POST /login (the
    session cookie), then POST /token."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    opener.open(f"http://127.0.0.1:{port}/login", data=b"name=deb", timeout=10).read()
    token = json.loads(opener.open(f"http://127.0.0.1:{port}/token", data=b"", timeout=10).read())["token"]
    return f"ws://127.0.0.1:{port}/live?token={urllib.parse.quote(token)}"


def check_chat(port: int) -> None:
    """/ws: a message reaches the other client through the broadcast mule; /live:
    join, emit, ack and the room's broadcast; a later join with `last` gets it from
    the history the mule keeps."""
    clients = [websocket.create_connection(f"ws://127.0.0.1:{port}/ws", timeout=10) for _ in range(2)]
    try:
        # client 1 subscribes in its handler, maybe after client 0's first message:
        # resend until it arrives (each round waits on a message, not a sleep)
        deadline = time.monotonic() + 15
        got = None
        while got is None and time.monotonic() < deadline:
            clients[0].send(json.dumps({"name": "deb", "text": "hello chat"}))
            clients[1].settimeout(1)
            try:
                got = json.loads(clients[1].recv())
            except websocket.WebSocketTimeoutException:
                pass
        assert got is not None and got["text"] == "hello chat"
    finally:
        for c in clients:
            c.close()

    live = websocket.create_connection(live_url(port), timeout=10)
    try:
        live.send(json.dumps({"type": "join", "room": "random"}))
        live.send(json.dumps({"type": "event", "event": "say", "id": 1,
                              "data": {"room": "random", "name": "deb", "text": "hi room"}}))
        frames: list[dict] = []
        # the ack and the broadcast its handler emitted may come in either order
        while not (any(f.get("event") == "said" for f in frames) and any(f.get("type") == "ack" for f in frames)):
            frames.append(json.loads(live.recv()))
        assert {"type": "ack", "id": 1, "data": {"ok": True}} in frames, frames
        said = next(f for f in frames if f.get("event") == "said")
        assert said["data"]["text"] == "hi room" and said["seq"] >= 1, said
    finally:
        live.close()
    late = websocket.create_connection(live_url(port), timeout=10)
    try:
        late.send(json.dumps({"type": "join", "room": "random", "last": 10}))
        frame = json.loads(late.recv())
        while frame.get("event") != "said":
            frame = json.loads(late.recv())
        assert frame["seq"] == said["seq"] and frame["data"]["text"] == "hi room", frame
    finally:
        late.close()


def check_ticker(port: int) -> None:
    """A POSTed price reaches a subscribed client (the broadcast mule, with the
    example's price mule beside it)."""
    ticker = websocket.create_connection(f"ws://127.0.0.1:{port}/ticker", timeout=10)
    try:
        body = json.dumps({"symbol": "DEB", "price": 2.5}).encode()
        deadline = time.monotonic() + 15
        seen: list[dict] = []
        while time.monotonic() < deadline and not any(m.get("symbol") == "DEB" for m in seen):
            req = urllib.request.Request(f"http://127.0.0.1:{port}/price", data=body,
                                         headers={"Content-Type": "application/json"})
            assert urllib.request.urlopen(req, timeout=10).status == 202
            # the price mule publishes every second: read for a second, then POST
            # again (a POST right after the upgrade can precede the subscription)
            ticker.settimeout(1)
            until = time.monotonic() + 1
            try:
                while time.monotonic() < until:
                    seen.append(json.loads(ticker.recv()))
            except websocket.WebSocketTimeoutException:
                pass
        assert any(m.get("symbol") == "DEB" and m["price"] == 2.5 for m in seen), seen
    finally:
        ticker.close()


CHECKS = {"echo": check_echo, "chat": check_chat, "ticker": check_ticker}


# -- the tests ---------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_repository_vassals_under_the_debian_emperor_service_config(model, shared_dir, debian_uwsgi):
    ports: dict[str, int] = {}
    vassals = shared_dir / "vassals"
    vassals.mkdir()
    vassals.chmod(0o755)
    files = shared_dir / "lib"  # as /var/lib/<app>: the vassals' own files, www-data's
    files.mkdir()
    os.chown(files, WWW_DATA, WWW_DATA)
    for source in sorted(VASSALS.glob("*.yaml")):
        ports[source.stem] = free_port()
        target = vassals / source.name
        target.write_text(model_vassal(source.read_text(), model, ports[source.stem], files))
        target.chmod(0o644)
    assert set(CHECKS) <= set(ports), f"vassals/ should hold {sorted(CHECKS)}: {sorted(ports)}"

    # The service's config, with this test's vassal directory in place of /etc's.
    ini = (DEBIAN_CONF / "emperor.ini").read_text()
    ini, n = re.subn(r"(?m)^emperor = .*$", f"emperor = {vassals}", ini)
    assert n == 1, "emperor.ini should name one vassal directory"
    ini = ini.replace("%d", str(DEBIAN_CONF) + "/")
    (shared_dir / "emperor.ini").write_text(ini)
    (shared_dir / "emperor.ini").chmod(0o644)

    emperor = debian_uwsgi(["--ini", str(shared_dir / "emperor.ini"), "--die-on-term"], ports["echo"])
    for name in ports:
        # the port is bound before the app loads: wait for the vassal's own "ready"
        emperor.wait_for_log(rf"\[emperor\] vassal {name}\.yaml is ready to accept requests", timeout=120)
    log = emperor.log()
    assert "2.0.21-debian" in log or "-debian" in log, log
    assert re.search(r"Python version: 3\.\d+\.\d+ .*\n", log), log
    for name, port in ports.items():
        if name in CHECKS:
            try:
                CHECKS[name](port)
            except Exception as exc:
                raise AssertionError(f"{name} ({model}): {exc!r}\n{emperor.log()}") from exc

    log = emperor.log()
    mode = "async" if model == "gevent" else "preforking"
    assert re.search(rf"Operational MODE: .*{mode}", log), log
    # the Emperor and its vassals ran as the service runs them: www-data
    uids = session_uids(emperor.pid)
    assert len(uids) > 3 * len(ports) and set(uids.values()) == {WWW_DATA}, uids
    assert "broadcast history: the last 200 events per room" in log, log

    stop_checked(emperor)
    for name, port in ports.items():
        wait_for(lambda: not port_open(port), 20, f"vassal {name} gone after the Emperor stopped")


@pytest.mark.parametrize("model", MODELS)
def test_chat_on_the_debian_model_config(model, tmp_path, debian_uwsgi):
    """The conf/debian/<model>.yaml a user's own vassal starts with, then the package's
    broadcast and metrics configs: Debian's uWSGI serves the chat example on them."""
    port = free_port()
    config = tmp_path / "chat.yaml"
    config.write_text(
        "uwsgi:\n"
        f"  include: {DEBIAN_CONF}/{model}.yaml\n"
        f"  include: {CONF}/broadcast.yaml\n"
        f"  include: {CONF}/metrics.yaml\n"
        f"  http-socket: 127.0.0.1:{port}\n"
        "  processes: 2\n"
        f"  {model}: 16\n"
        f"  pythonpath: {ROOT}\n"
        f"  chdir: {ROOT}/examples/chat\n"
        f"  wsgi-file: {ROOT}/examples/chat/app.py\n"
        "  callable: app\n"
        "  set-placeholder: uwsgi-ws-history=200\n"
    )
    server = debian_uwsgi(["--yaml", str(config)], port)
    server.wait_for_log(r"spawned uWSGI worker 2 ", timeout=120)  # the app loads before the fork
    try:
        check_chat(port)
    except Exception as exc:
        raise AssertionError(f"chat ({model}): {exc!r}\n{server.log()}") from exc
    log = server.log()
    assert "-debian" in log and re.search(r"Python version: 3\.", log), log
    mode = "async" if model == "gevent" else "preforking"
    assert re.search(rf"Operational MODE: .*{mode}", log), log


ASYNC_BUG = ("Debian's uWSGI 2.0.21 async+ugreen: two overlapping WebSockets are served (no deadlock, unlike "
             "2.0.27+), but the worker dies of SIGSEGV in the Python plugin (uwsgi_request_wsgi from "
             "async_schedule_to_req_green) while it serves them: the async model is unusable there too")


@pytest.mark.xfail(strict=True, reason=ASYNC_BUG)
def test_async_model_two_connections_at_once_and_the_worker_survives(tmp_path, debian_uwsgi):
    """What tests/test_async_model.py records for uWSGI >= 2.0.27, on Debian's 2.0.21."""
    port = free_port()
    server = debian_uwsgi([
        "--plugins", "python3,ugreen", "--master", "--http-socket", f"127.0.0.1:{port}",
        "--pythonpath", str(ROOT), "--pythonpath", str(ROOT / "tests" / "apps"), "--module", "echo_app:app",
        "--processes", "1", "--async", "20", "--ugreen", "--need-app", "--die-on-term",
    ], port, check=False)
    server.wait_for_log(r"spawned uWSGI worker 1 ", timeout=120)
    first = websocket.create_connection(f"ws://127.0.0.1:{port}/echo", timeout=5)
    second = websocket.create_connection(f"ws://127.0.0.1:{port}/echo", timeout=5)
    try:
        for conn, text in ((first, "one"), (second, "two"), (first, "one again")):
            conn.send(text)
            assert conn.recv() == text
    finally:
        second.close()
        first.close()
    # a third connection after both closed: the same worker must still be there
    third = websocket.create_connection(f"ws://127.0.0.1:{port}/echo", timeout=5)
    try:
        third.send("three")
        assert third.recv() == "three"
    finally:
        third.close()
    assert not crash_lines(server.log()), server.log()
