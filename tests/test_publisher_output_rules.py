"""Every publish entry holds a text message to the rule the decoder enforces on
input: a text frame is UTF-8 (RFC 6455 section 5.6; a client fails the connection
on anything else, 1007). A Python str may hold a lone surrogate (``"\\ud800"``,
or what ``surrogateescape`` makes of a non-UTF-8 byte); UTF-8 cannot. On real
uWSGI in the threads and gevent models, app: tests/apps/publisher_rules_app.py.

Each entry raises ValueError naming the rule at the call, in the publishing
process, before anything goes to the broadcast mule: the tests stop the mule
(SIGSTOP; the publish timeout is 600 s), so a request that reached its socket
would hang instead of failing, and the ring's numbering shows nothing was
appended (the publish before the stop gets seq n, the one after it n + 1).
A message over ``--mule-msg-size`` is refused at the call the same way, with
PublishError naming the option (inside the instance; from outside, the mule
refuses it: tests/test_publish_outside.py).
Entries: ws.publish (one channel, a list, from a threading.Thread),
uwsgi_ws.broadcast.publish, Broadcast.publish(event=True), an events endpoint's
emit (to a room, to a connection id), and from outside the instance
uwsgi_ws.client.Publisher.publish/emit and ``python -m uwsgi_ws publish|emit``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

from uwsgi_ws.client import Publisher

from harness import APPS, ROOT, serve

RULE = "must be UTF-8 (RFC 6455 section 5.6) and this text holds a lone surrogate at position "
ENTRIES = ["publish", "publish-list", "thread", "module", "event", "emit", "conn-emit-id"]


@pytest.fixture(scope="module", params=["threads", "gevent"])
def instance(request, tmp_path_factory):
    sock_dir = Path(tempfile.mkdtemp(prefix="uwsgi_ws-rules-", dir="/tmp"))
    path = sock_dir / "app.sock"
    server = serve("publisher_rules_app:app", tmp_path_factory.mktemp(f"rules-{request.param}"),
                   model=request.param,
                   extra=["--sharedarea", "4096", "--mule=uwsgi_ws.mule:run",
                          "--set-placeholder", f"uwsgi-ws-publish-socket={path}",
                          "--set-placeholder", "uwsgi-ws-publish-timeout=600"])
    server.socket_path = str(path)  # type: ignore[attr-defined]
    try:
        server.wait_for_log(r"publish socket .*app\.sock", timeout=30)
        yield server
    finally:
        server.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)
    assert not server.crashes(), server.log()
    assert not server.tracebacks(), server.log()


def call(server, entry: str, data: str) -> str:
    req = urllib.request.Request(f"{server.http}/call/{entry}?data={data}", data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=60) as resp:
        return resp.read().decode()


def cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(APPS)])}
    return subprocess.run([sys.executable, "-m", "uwsgi_ws", *args], input=stdin, capture_output=True,
                          env=env, cwd=str(ROOT), timeout=60)


def mule_pid(server) -> int:
    return int(re.findall(r"spawned uWSGI mule 1 \(pid: (\d+)\)", server.log())[-1])


def test_valid_text_is_published_by_every_entry(instance):
    """The same entries with valid text (astral characters included) reach the ring."""
    for entry in ENTRIES:
        answer = call(instance, entry, "ok")
        assert answer.startswith("seq "), (entry, answer)
    with Publisher(instance.socket_path) as pub:
        assert pub.publish("fine \u2713 \U0001f600") > 0
        assert pub.emit("/live", "x", {"text": "fine \U0001f600"}, to="r") > 0


def test_a_lone_surrogate_is_refused_at_the_call_before_the_mule(instance):
    before = int(call(instance, "publish", "ok").split()[1])
    mule = mule_pid(instance)
    os.kill(mule, signal.SIGSTOP)  # anything sent to the mule now waits (600 s) instead of failing
    try:
        for entry in ENTRIES:
            for kind, position in (("surrogate", 3), ("escaped", 3)):
                answer = call(instance, entry, kind)
                assert answer.startswith("ValueError: ") and RULE in answer, (entry, kind, answer)
                if entry in ("publish", "publish-list", "thread", "module"):  # the message itself
                    assert f"{RULE}{position} " in answer, (entry, kind, answer)
        with Publisher(instance.socket_path, timeout=600) as pub:
            for text in ("ok \ud800 then", b"ok \xff".decode("utf-8", "surrogateescape")):
                with pytest.raises(ValueError, match=re.escape(RULE + "3 ")):
                    pub.publish(text)
                with pytest.raises(ValueError, match=re.escape(RULE)):
                    pub.emit("/live", "x", {"text": text}, to="r")
        for entry in ENTRIES:  # the size limit too is checked at the call
            answer = call(instance, entry, "big")
            assert answer.startswith("PublishError: a message of ") and "--mule-msg-size=65536" in answer, answer
        published = cli("publish", "--socket", instance.socket_path, "-", stdin=b"ok \xff then")
        assert published.returncode == 1 and published.stdout == b"", published
        assert RULE.encode() + b"3 " in published.stderr and b"Traceback" not in published.stderr, published
        emitted = cli("emit", "--socket", instance.socket_path, "--endpoint", "/live", "--room", "r", "x",
                      '{"text": "ok \\ud800"}')
        assert emitted.returncode == 1 and RULE.encode() in emitted.stderr, emitted
        assert b"Traceback" not in emitted.stderr, emitted
    finally:
        os.kill(mule, signal.SIGCONT)
    after = int(call(instance, "publish", "ok").split()[1])
    assert after == before + 1, (before, after)  # nothing in between reached the ring
