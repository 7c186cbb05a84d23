"""Publishing into a running instance from outside it (issue 13 item 4), on real uWSGI
in the threads and gevent models: `uwsgi_ws.client.Publisher` in a cron-style script,
the `python -m uwsgi_ws publish|emit` CLI, a vassal under the Emperor, the errors
(no such socket, permission denied, mule not running, too large, bad input), and a
publisher that goes on while the broadcast mule is killed (-9) twice.

The instance sets ``uwsgi-ws-publish-socket`` (a placeholder, as a vassal would) to a
path in a directory every user may traverse, so a process of another user (nobody)
meets the socket's own mode (default 0660, root's).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import websocket
from test_publish_threads import sse_events, subscriber

from harness import APPS, ROOT, UWSGI, free_port, serve

APP = "publish_app:app"
NOBODY = 65534


@pytest.fixture(scope="module", params=["threads", "gevent"])
def instance(request, tmp_path_factory):
    sock_dir = Path(tempfile.mkdtemp(prefix="uwsgi_ws-pub-", dir="/tmp"))
    sock_dir.chmod(0o755)
    path = sock_dir / "app.sock"
    server = serve(APP, tmp_path_factory.mktemp(f"outside-{request.param}"), model=request.param,
                   extra=["--sharedarea", "4096", "--mule=uwsgi_ws.mule:run",
                          "--set-placeholder", f"uwsgi-ws-publish-socket={path}"])
    server.model = request.param  # type: ignore[attr-defined]
    server.socket_path = str(path)  # type: ignore[attr-defined]
    server.wait_for_log(r"publish socket .*app\.sock \(mode 0660\)", timeout=20)
    yield server
    server.stop()
    crashes = server.crashes()
    shutil.rmtree(sock_dir, ignore_errors=True)
    assert not crashes, server.log()


def env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(APPS)])}


def cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "uwsgi_ws", *args], input=stdin, capture_output=True,
                          env=env(), cwd=str(ROOT), timeout=60)


def run_script(code: str, as_uid: int | None = None) -> subprocess.CompletedProcess:
    """A separate Python process (a cron job), optionally dropping to `as_uid` after its imports."""
    prologue = "import os, json, sys\nfrom uwsgi_ws.client import Publisher, PublishError\n"
    if as_uid is not None:
        prologue += f"os.setgid({as_uid}); os.setgroups([]); os.setuid({as_uid})\n"
    return subprocess.run([sys.executable, "-c", prologue + code], capture_output=True, text=True, env=env(),
                          cwd=str(ROOT), timeout=60)


def test_cron_script_publishes_and_emits(instance):
    """A script publishes text, binary and on a channel, and emits to a room and to the
    whole endpoint; each call returns the ring seq once appended; the WebSocket
    subscribers get the messages and the SSE stream the events with id epoch-seq. The
    mule logs the accepted publisher's uid and pid (issue 13: "the peer's uid is logged")."""
    everyone, channel = subscriber(instance), subscriber(instance, "/sub/c1")
    read = sse_events(instance, "r1", 2)
    try:
        done = run_script(f"""
with Publisher({instance.socket_path!r}) as pub:
    seqs = [pub.publish("hello"), pub.publish(b"\\x00\\x01bin"), pub.publish("on c1", channel="c1"),
            pub.emit("/live", "tick", {{"n": 1}}, to="r1"), pub.emit("/live", "all", {{"n": 2}})]
print(json.dumps({{"pid": os.getpid(), "seqs": seqs}}))
""")
        assert done.returncode == 0, done.stderr
        ran = json.loads(done.stdout)
        seqs = ran["seqs"]
        instance.wait_for_log(rf"publish socket {re.escape(instance.socket_path)}: a publisher connected "
                              rf"\(uid {os.getuid()}, pid {ran['pid']}\)", timeout=10)
        assert seqs == sorted(set(seqs)) and len(seqs) == 5
        assert everyone.recv() == "hello"
        assert everyone.recv() == b"\x00\x01bin"
        assert [channel.recv() for _ in range(3)] == ["hello", b"\x00\x01bin", "on c1"]  # members get both
        events = read()
        assert [(e[1], e[2]["data"], e[2]["room"]) for e in events] == [(b"tick", {"n": 1}, "r1"),
                                                                        (b"all", {"n": 2}, None)]
        assert [e[2]["seq"] for e in events] == seqs[3:]
        for event_id, _, message in events:
            assert event_id.decode() == f"{message['epoch']}-{message['seq']}"
    finally:
        everyone.close()
        channel.close()


def test_cli_publish_and_emit(instance):
    everyone = subscriber(instance)
    read = sse_events(instance, "lobby", 1)
    try:
        done = cli("publish", "--socket", instance.socket_path, "from the CLI")
        assert done.returncode == 0 and int(done.stdout) > 0, done.stderr
        assert everyone.recv() == "from the CLI"
        done = cli("publish", "--socket", instance.socket_path, "--binary", "-", stdin=b"\xff\x00raw")
        assert done.returncode == 0, done.stderr
        assert everyone.recv() == b"\xff\x00raw"
        done = cli("emit", "--socket", instance.socket_path, "--endpoint", "/live", "--room", "lobby", "said",
                   '{"text": "hi"}')
        assert done.returncode == 0, done.stderr
        (_, name, message), = read()
        assert name == b"said" and message["data"] == {"text": "hi"} and message["seq"] == int(done.stdout)
    finally:
        everyone.close()


def test_cli_errors_say_what_is_wrong(instance, tmp_path):
    done = cli("publish", "--socket", str(tmp_path / "nope.sock"), "x")
    assert done.returncode == 1 and b"no such socket" in done.stderr, done.stderr
    (tmp_path / "file").write_text("not a socket")
    done = cli("publish", "--socket", str(tmp_path / "file"), "x")
    assert done.returncode == 1 and b"not a socket" in done.stderr, done.stderr
    done = cli("emit", "--socket", instance.socket_path, "--endpoint", "/live", "tick", '{"a":')
    assert done.returncode == 2 and b"not valid JSON" in done.stderr, done.stderr
    done = cli("emit", "--socket", instance.socket_path, "--endpoint", "live", "tick", "1")
    assert done.returncode == 1 and b"path" in done.stderr, done.stderr
    done = cli("publish", "--socket", instance.socket_path, "--binary", "-", stdin=bytes(70000))
    assert done.returncode == 1 and b"--mule-msg-size=65536" in done.stderr, done.stderr
    done = cli("publish", "--socket", instance.socket_path, "--channel", "c" * 256, "x")
    assert done.returncode == 1 and b"at most 255" in done.stderr, done.stderr
    done = cli("publish", "x")
    assert done.returncode == 2 and b"--socket" in done.stderr
    # the instance still serves after the refusals
    done = cli("publish", "--socket", instance.socket_path, "still fine")
    assert done.returncode == 0, done.stderr


def test_permission_denied(instance):
    """A process of another user: the path's mode (0660, root's) refuses it, and the
    instance's private abstract socket closes on it (SO_PEERCRED), logged."""
    done = run_script(f"""
try:
    Publisher({instance.socket_path!r}, timeout=2).publish("x")
except PublishError as exc:
    print(exc)
""", as_uid=NOBODY)
    assert done.returncode == 0, done.stderr
    assert "permission denied" in done.stdout and "0660" in done.stdout, done.stdout
    master = instance.pid
    done = run_script(f"""
import socket, struct
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(b"\\0uwsgi_ws-publish-{master}")
request = b"UWS1\\x00\\x00sneaky"
try:
    s.sendall(struct.pack("<IQQ", 16 + len(request), 1, 1) + request)
    print(repr(s.recv(64)))
except OSError as exc:
    print("closed", exc)
""", as_uid=NOBODY)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in ("b''",) or done.stdout.startswith("closed"), done.stdout
    instance.wait_for_log(rf"refused a process of uid {NOBODY}", timeout=5)


def test_mule_not_running(tmp_path):
    """A socket file nobody listens on (what a stopped instance leaves): PublishError
    saying the instance is stopped (or its mule respawning) and what its config needs,
    after the timeout."""
    path = str(tmp_path / "stale.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()
    done = run_script(f"""
import time
t0 = time.monotonic()
try:
    Publisher({path!r}, timeout=0.5).publish("x")
except PublishError as exc:
    print(round(time.monotonic() - t0, 1), exc)
""")
    assert "the instance is stopped" in done.stdout and "conf/broadcast.yaml" in done.stdout, (done.stdout,
                                                                                           done.stderr)
    assert 0.3 <= float(done.stdout.split()[0]) < 5, done.stdout


def mule_pid(server: UWSGI) -> int:
    found = re.findall(r"spawned uWSGI mule 1 \(pid: (\d+)\)", server.log())
    assert found, server.log()
    return int(found[-1])


def test_publisher_survives_mule_kills_without_loss_or_duplicate(instance):
    """An outside publisher streams while the broadcast mule is killed (-9) twice: each
    publish returns once appended (retrying across the respawn), and the subscriber
    gets every message exactly once, in order (a request repeated after a kill is
    found in the mule's journal, not appended again)."""
    from uwsgi_ws.client import Publisher

    count = 3000
    conn = subscriber(instance)
    result: dict = {}
    sent = threading.Event()

    def stream() -> None:
        try:
            with Publisher(instance.socket_path, timeout=30) as pub:
                result["seqs"] = []
                for i in range(count):
                    result["seqs"].append(pub.publish(f"k{i}"))
                    if i == 200:
                        sent.set()
        except Exception as exc:  # reported below
            result["error"] = exc
        sent.set()

    publisher = threading.Thread(target=stream)
    publisher.start()
    got: list = []
    try:
        assert sent.wait(30)
        for kill in range(2):
            spawned = instance.log().count("spawned uWSGI mule 1 ")
            os.kill(mule_pid(instance), signal.SIGKILL)
            instance.wait_for_log(r"spawned uWSGI mule 1 ", count=spawned + 1, timeout=20)
            instance.wait_for_log(r"broadcast mule 1 serving ring", count=spawned + 1, timeout=20)
            while len(got) < 600 * (kill + 1):
                got.append(conn.recv())
        publisher.join(60)
        assert "error" not in result, result.get("error")
        assert len(result["seqs"]) == count
        while len(got) < count:
            got.append(conn.recv())
        assert got == [f"k{i}" for i in range(count)]
        seqs = result["seqs"]
        assert seqs == sorted(set(seqs)), "a seq repeated or went back"
    finally:
        conn.close()
    assert not instance.crashes(), instance.log()


# -- a vassal under the Emperor ----------------------------------------------------------------------


def start_vassal(model: str, tmp_path: Path) -> tuple:
    """An Emperor with one vassal of publish_app (2 workers of `model`, the broadcast mule,
    a publish socket set as a placeholder in its YAML); returns (emperor, socket path)
    once the vassal's mule listens there."""
    port = free_port()
    vassals = tmp_path / "vassals"
    vassals.mkdir()
    sock = tmp_path / "vassal.sock"
    options = "  threads: 4\n" if model == "threads" else "  gevent: 20\n"
    (vassals / "app.yaml").write_text(
        "uwsgi:\n"
        "  master: true\n"
        f"  http-socket: 127.0.0.1:{port}\n"
        f"  pythonpath: {ROOT}\n"
        f"  pythonpath: {APPS}\n"
        "  module: publish_app:app\n"
        "  processes: 2\n"
        + options +
        "  sharedarea: 4096\n"
        "  mule: uwsgi_ws.mule:run\n"
        f"  set-placeholder: uwsgi-ws-publish-socket={sock}\n"
        "  need-app: true\n"
        "  die-on-term: true\n"
    )
    emperor = UWSGI(["--emperor", str(vassals)], tmp_path, port=port)
    try:
        emperor.wait_for_log(r"publish socket .*vassal\.sock \(mode 0660\)", timeout=30)
    except BaseException:
        emperor.stop()
        raise
    return emperor, str(sock)


def joined_events_client(url: str, room: str) -> websocket.WebSocket:
    """An events-protocol WebSocket on /live that has joined `room`: frames are handled in
    order, so the ack of a call sent after the join says the join is done."""
    conn = websocket.create_connection(url + "/live", timeout=30)
    conn.send(json.dumps({"type": "join", "room": room}))
    conn.send(json.dumps({"type": "event", "event": "barrier", "id": "after-join"}))
    frame = json.loads(conn.recv())
    assert frame.get("type") == "ack" and frame.get("id") == "after-join", frame
    return conn


def received_until(conn: websocket.WebSocket, last: object) -> list:
    """Every message `conn` receives, decoded (JSON text as an object), up to and including
    the first for which `last(message)` is true."""
    out: list = []
    while True:
        message = conn.recv()
        if isinstance(message, str) and message.startswith("{"):
            message = json.loads(message)
        out.append(message)
        if last(message):  # type: ignore[operator]
            return out


@pytest.mark.parametrize("model", ["threads", "gevent"])
def test_cli_and_a_cron_script_publish_into_a_vassal(model, tmp_path):
    """Into a vassal under the Emperor (the publish socket set in its YAML): the CLI and a
    Publisher script (a cron job) publish text and binary and emit to a room and to the
    whole endpoint. A WebSocket subscriber gets exactly the published messages, an events
    client in the room exactly the events, each with the seq the publisher was given and
    the vassal's epoch (the one its mule logs), and the SSE stream the same events with
    id epoch-seq: each once, in order, nothing else. The mule logs the script's uid."""
    emperor, sock = start_vassal(model, tmp_path)
    opened: list = []
    try:
        found = re.findall(r"broadcast mule 1 serving ring epoch ([0-9a-f]+)", emperor.log())
        assert len(found) == 1, emperor.log()
        epoch = str(int(found[0], 16))
        url = f"ws://127.0.0.1:{emperor.port}"
        everyone = websocket.create_connection(url + "/sub", timeout=30)
        opened.append(everyone)
        assert everyone.recv().startswith("ready:")
        lobby = joined_events_client(url, "lobby")
        opened.append(lobby)
        read_sse = sse_events(emperor, "lobby", 5)

        seqs = []
        for args, stdin in ((("publish", "--socket", sock, "cli text"), b""),
                            (("publish", "--socket", sock, "--binary", "-"), b"\xff\x00cli"),
                            (("emit", "--socket", sock, "--endpoint", "/live", "--room", "lobby", "said",
                              '{"text": "hi"}'), b""),
                            (("emit", "--socket", sock, "--endpoint", "/live", "everyone", '{"n": 0}'), b"")):
            done = cli(*args, stdin=stdin)
            assert done.returncode == 0 and done.stderr == b"", done.stderr
            seqs.append(int(done.stdout))
        done = run_script(f"""
with Publisher({sock!r}) as pub:
    seqs = [pub.publish("script text"), pub.publish(b"\\x00script"),
            pub.emit("/live", "tick", {{"n": 1, "bin": False}}, to="lobby"),
            pub.emit("/live", "all", [1, "two"]), pub.emit("/live", "end", None, to="lobby")]
print(json.dumps({{"pid": os.getpid(), "seqs": seqs}}))
""")
        assert done.returncode == 0, done.stderr
        ran = json.loads(done.stdout)
        seqs += ran["seqs"]
        assert seqs == sorted(set(seqs)) and len(seqs) == 9, seqs  # one ring, one order
        emperor.wait_for_log(rf"publish socket {re.escape(sock)}: a publisher connected "
                             rf"\(uid {os.getuid()}, pid {ran['pid']}\)", timeout=10)
        done = cli("publish", "--socket", sock, "last")  # a marker: nothing else came before it
        assert done.returncode == 0, done.stderr

        assert received_until(everyone, lambda m: m == "last") == ["cli text", b"\xff\x00cli", "script text",
                                                                    b"\x00script", "last"]

        def event(name: str, data: object, room: object, seq: int) -> dict:
            return {"type": "event", "event": name, "data": data, "room": room, "seq": seq, "epoch": epoch}

        expected = [event("said", {"text": "hi"}, "lobby", seqs[2]), event("everyone", {"n": 0}, None, seqs[3]),
                    event("tick", {"n": 1, "bin": False}, "lobby", seqs[6]), event("all", [1, "two"], None, seqs[7]),
                    event("end", None, "lobby", seqs[8])]
        got = received_until(lobby, lambda m: isinstance(m, dict) and m.get("event") == "end")
        # a publish to every connection (channel None) reaches the endpoint's WebSockets too, as is:
        # the whole stream in ring order
        assert got == ["cli text", b"\xff\x00cli", *expected[:2], "script text", b"\x00script", *expected[2:]], got
        events = read_sse()
        assert [(i.decode(), name.decode(), message) for i, name, message in events] == [
            (f"{epoch}-{e['seq']}", e["event"], e) for e in expected]
    finally:
        for conn in opened:
            conn.close()
        emperor.stop()
    assert not emperor.crashes(), emperor.log()


def test_hostile_publishers_do_not_hurt_the_mule(instance):
    """Publishers that leave before their answer, send garbage, a short envelope or a
    huge length: each is answered or dropped, the mule stays the same process and
    serves the next publisher."""
    spawned = instance.log().count("spawned uWSGI mule 1 ")
    request = b"UWS1\x00\x00left early"
    for _ in range(50):  # gone before the answer: the mule's send must not kill it (SIGPIPE)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(instance.socket_path)
        s.sendall(struct.pack("<IQQ", 16 + len(request), 7, 1) + request)
        s.close()
    for junk in (os.urandom(4096), struct.pack("<IQQ", 3, 1, 1), struct.pack("<IQQ", 1 << 31, 1, 1) + b"x" * 100,
                 struct.pack("<IQQ", 16 + 8, 9, 1) + b"NOTUWS1!"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(instance.socket_path)
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(10)
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
            if answer:  # refused, saying why (status 1)
                assert answer[0] == 1, answer
    done = cli("publish", "--socket", instance.socket_path, "still serving")
    assert done.returncode == 0, done.stderr
    assert instance.log().count("spawned uWSGI mule 1 ") == spawned, instance.log()


def raw_publish(path: str, client_id: int, number: int, text: str) -> tuple:
    """One request on a fresh connection, as `Link` sends it; returns (status, seq)."""
    request = b"UWS1\x00\x00" + text.encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(20)
        s.connect(path)
        s.sendall(struct.pack("<IQQ", 16 + len(request), client_id, number) + request)
        answer = b""
        while len(answer) < 13:
            chunk = s.recv(64)
            assert chunk, answer
            answer += chunk
    status, seq, _ = struct.unpack_from("<BQI", answer)
    return status, seq


def test_a_request_repeated_after_a_mule_kill_is_not_appended_twice(instance):
    """What a publisher does when its connection breaks before the answer: send the same
    (client id, number) again. Appended once, then repeated to the same mule and to
    its successor after kill -9: the same seq every time, one delivery (the journal)."""
    conn = subscriber(instance)
    try:
        client_id = int.from_bytes(os.urandom(8), "little")
        status, seq = raw_publish(instance.socket_path, client_id, 1, "once")
        assert status == 0 and seq > 0
        assert raw_publish(instance.socket_path, client_id, 1, "once") == (0, seq)
        spawned = instance.log().count("spawned uWSGI mule 1 ")
        os.kill(mule_pid(instance), signal.SIGKILL)
        instance.wait_for_log(r"spawned uWSGI mule 1 ", count=spawned + 1, timeout=20)
        instance.wait_for_log(r"broadcast mule 1 serving ring", count=spawned + 1, timeout=20)
        instance.wait_for_log(r"publish socket .*app\.sock \(mode 0660\)", count=spawned + 1, timeout=20)
        assert raw_publish(instance.socket_path, client_id, 1, "once") == (0, seq)
        status, after = raw_publish(instance.socket_path, client_id, 2, "next")
        assert status == 0 and after > seq
        assert conn.recv() == "once"
        assert conn.recv() == "next"
    finally:
        conn.close()
