"""Presence, join/leave, skip, server calls and off() in a real headless Chromium
(Debian's, tests/test_browser.py's fixture) with the browser client
(/_uwsgi_ws/uwsgi_ws.js), against real uWSGI (threads, gevent; 2 workers, each also
on a port of its own). App: tests/apps/presence_app.py ("/page").
"""

from __future__ import annotations

import urllib.request

import pytest
from test_browser import POLL, browser  # noqa: F401  (the fixture)
from test_presence import http, presence, start

from harness import wait_for

MODELS = ["threads", "gevent"]


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    instance = start(tmp_path_factory.mktemp(f"browser-presence-{request.param}"), request.param)
    instance.model = request.param  # type: ignore[attr-defined]
    yield instance
    instance.stop()
    assert not instance.crashes(), instance.log()


def open_page(browser, server, worker: int, user: str, rooms: str):
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{server.worker_ports[worker]}/page?user={user}&rooms={rooms}")
    page.wait_for_function("() => window.live && window.live.id !== null", polling=POLL)
    return page


def log(page) -> list:
    return page.evaluate("() => window.log")


def test_presence_join_leave_skip_and_calls_in_the_browser(browser, server):
    ann = open_page(browser, server, 0, "ann", "b1")
    bob = None
    try:
        ann_id = ann.evaluate("() => live.id")
        bob = open_page(browser, server, 1, "bob", "b1")
        bob_id = bob.evaluate("() => live.id")
        assert ann_id.split("-")[0] != bob_id.split("-")[0]  # two workers
        # presence: both, with their identities, on either worker
        for worker in (0, 1):
            body = presence(server, "b1", worker)
            assert {m["id"]: m["identity"]["user"] for m in body["members"]} == {ann_id: "ann", bob_id: "bob"}
        # join events: ann sees bob join (with his identity)
        ann.wait_for_function(f"() => log.some(e => e[0] === 'presence' && e[1] === 'join' && e[3] === '{bob_id}'"
                              " && e[4] === 'bob')", polling=POLL)
        # skip: bob says something to b1 skipping himself; ann gets it, bob does not
        assert bob.evaluate("() => live.emit('say', {room: 'b1', text: 'hi'})") is True
        ann.wait_for_function("() => log.some(e => e[0] === 'said' && e[1] === 'hi')", polling=POLL)
        # a marker after it: once bob has the marker, he would have had 'hi' before it
        status, _ = http(server, "/emit?event=said&to=b1", "POST", "marker")
        assert status == 204
        bob.wait_for_function("() => log.some(e => e[0] === 'said' && e[1] === 'marker')", polling=POLL)
        assert [e for e in log(bob) if e[0] == "said"] == [["said", "marker"]]
        # off(): the removed handler saw nothing
        http(server, f"/emit?event=dropped&to={ann_id}", "POST", 1, port=server.worker_ports[1])
        http(server, f"/emit?event=said&to={ann_id}", "POST", "after-dropped", port=server.worker_ports[1])
        ann.wait_for_function("() => log.some(e => e[1] === 'after-dropped')", polling=POLL)
        assert not [e for e in log(ann) if e[0] == "dropped"]
        # a server call answered by the page's handler (a Promise)
        status, body = http(server, f"/call/{ann_id}?event=question", port=server.worker_ports[0])
        assert (status, body) == (200, {"reply": {"answer": "from the page"}})
        # bob leaves: ann sees it, presence follows
        bob.close()
        bob = None
        ann.wait_for_function(f"() => log.some(e => e[0] === 'presence' && e[1] === 'leave' && e[3] === '{bob_id}')",
                              polling=POLL)
        assert [m["id"] for m in presence(server, "b1", 1)["members"]] == [ann_id]
        # close_room: the page drops the room (no rejoin on reconnect)
        http(server, "/close_room/b1", "POST")
        ann.wait_for_function("() => log.some(e => e[0] === 'left' && e[1] === 'b1')", polling=POLL)
        wait_for(lambda: presence(server, "b1", 0)["count"] == 0, 10, "b1 empty")
    finally:
        ann.close()
        if bob is not None:
            bob.close()


def test_typescript_declarations_are_served(server):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/_uwsgi_ws/uwsgi_ws.d.ts", timeout=10) as resp:
        text = resp.read().decode()
        assert resp.status == 200 and "export function connect(" in text
        assert "off(event: string" in text and "readonly id: string | null" in text


def test_emits_made_while_reconnecting_are_buffered(browser, server):
    page = open_page(browser, server, 0, "ann", "")
    try:
        old_id = page.evaluate("() => live.id")
        status, _ = http(server, f"/disconnect/{old_id}?code=4000&reason=again", "POST", port=server.worker_ports[1])
        assert status == 204
        result = page.evaluate("""async () => {
            while (live.transport !== null) await new Promise(r => setTimeout(r, 5));  // the close came
            const acks = [];
            for (let i = 0; i < 6; i++) acks.push(live.emit("whoami").then(a => a.id, e => "rejected: " + e.message));
            return await Promise.all(acks);
        }""")
        new_id = page.evaluate("() => live.id")
        assert new_id not in (None, old_id)
        assert result[:5] == [new_id] * 5  # sent once connected again, on the new connection
        assert result[5].startswith("rejected: not connected and the buffer is full (5)")
    finally:
        page.close()
