"""Resume across a reload in a real headless Chromium (Debian's, tests/test_browser.py's
fixture) with the browser client (/_uwsgi_ws/uwsgi_ws.js), against real uWSGI
(threads, gevent; 2 workers) with the ring in a file (issue 16: resume survives
reloads). App: tests/apps/resume_app.py ("/page": joins room "r", logs its
broadcasts, not_recovered events, statuses and the room's presence).

The page is subscribed, messages are published, then ``uwsgi --reload`` (SIGHUP)
or a touched ``--touch-reload`` file (what a touched vassal does): the page
reconnects after the 1012 and has every message exactly once, in order, with no
not_recovered; the room's presence is the page's new connection, on the server
and in the page.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from test_browser import POLL, browser  # noqa: F401  (the fixture)
from test_resume_reload import reload_and_wait

from harness import wait_for
from test_events import start

MODELS = ["threads", "gevent"]


def emit_many(server, n, src):
    req = urllib.request.Request(f"http://127.0.0.1:{server.port}/emit-many/r?n={n}&src={src}", data=b"",
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except (urllib.error.URLError, ConnectionError):
        return None


def presence(server):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/presence/r", timeout=30) as resp:
        return json.loads(resp.read())


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("how", ["sighup", "touch"])
def test_the_page_resumes_across_a_reload_with_every_message_once(browser, model, how, tmp_path):
    touch = tmp_path / "touch-reload"
    touch.write_text("")
    server = start(tmp_path, model, app=("--module", "resume_app:app"), extra=[
        "--set-placeholder", f"uwsgi-ws-ring-file={tmp_path / 'ring'}",
        "--set-placeholder", "uwsgi-ws-ring-size=1M",
        "--touch-reload", str(touch), "--worker-reload-mercy", "30"])
    page = browser.new_page()
    try:
        page.goto(f"http://127.0.0.1:{server.port}/page?name=ann")
        # subscribed: the page saw its own join (join_leave), so the room is live for it
        page.wait_for_function("() => live.id !== null && members[live.id] === 'ann' && refreshed === 1",
                               polling=POLL)
        old_id = page.evaluate("() => live.id")
        assert emit_many(server, 10, "a") == 200
        page.wait_for_function("() => got.length >= 10", polling=POLL)
        reload_and_wait(server, how, touch)
        # published after the reload, while the page may still be reconnecting
        wait_for(lambda: emit_many(server, 10, "b") == 200, 30, "the reloaded instance to take publishes")
        page.wait_for_function("() => got.length >= 20 && live.id !== null && live.transport !== null",
                               polling=POLL)
        got = page.evaluate("() => got")
        expected = [f"a{i}" for i in range(10)] + [f"b{i}" for i in range(10)]
        assert got == expected, got
        assert page.evaluate("() => lost") == []
        statuses = page.evaluate("() => statuses")
        assert "resuming" in statuses and statuses[-1] == "open", statuses
        new_id = page.evaluate("() => live.id")
        assert new_id != old_id
        # presence after the reload: the new connection only, with its identity, on the server ...
        wait_for(lambda: [m["id"] for m in presence(server)] == [new_id], 10,
                 f"presence of r to be the page's new connection only: {presence(server)}")
        assert presence(server) == [{"id": new_id, "identity": {"user": "ann"}}]
        # ... and in the page, which refetched it when it was open again (presence frames sent
        # while it was away are not replayed), then followed join/leave
        page.wait_for_function("id => refreshed === 2 && members[id] === 'ann'", arg=new_id, polling=POLL)
        members = page.evaluate("() => members")
        assert members == {new_id: "ann"}, members
    finally:
        page.close()
        server.stop()
    log = server.log()
    assert not server.crashes(), log
    assert not server.unexpected_tracebacks([]), log
