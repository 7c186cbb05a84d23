"""The operator's page (`ws.admin_route`) in a real headless Chromium (Debian's,
tests/test_browser.py's fixture) against real uWSGI (threads, gevent; 2 workers, each
also on a port of its own, the broadcast mule). App: tests/apps/admin_app.py.

- without the app's check passing (no cookie) the page is a 403;
- the page loads nothing from elsewhere and raises no script error; it updates live: the /live row of the connections table follows a client
  connecting on worker 1, then on worker 2; a watched room lists its member;
- the emit form sends a test event that reaches a client in the room;
- a member's "disconnect" button closes that client with the code of the form;
- a page of another origin (same host, another port: the cookie goes along) that posts
  to the actions with fetch and with a form is refused by the CSRF checks, and nothing
  happens.
"""

from __future__ import annotations

import pytest
from test_admin import action, close_frame, start
from test_browser import POLL, browser  # noqa: F401  (the fixture)
from test_presence import Client

MODELS = ["threads", "gevent"]


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    instance = start(tmp_path_factory.mktemp(f"admin-browser-{request.param}"), request.param)
    instance.model = request.param  # type: ignore[attr-defined]
    yield instance
    instance.stop()
    assert not instance.crashes(), instance.log()
    assert not instance.unexpected_tracebacks(()), instance.log()


def live_total(page) -> int:
    text = page.evaluate("() => { const c = document.querySelector('tr[data-route=\"/live\"] .route-total');"
                         " return c ? c.textContent : '0'; }")
    return int(text)


def wait_total(page, n: int) -> None:
    page.wait_for_function("n => { const c = document.querySelector('tr[data-route=\"/live\"] .route-total');"
                           " return (c ? Number(c.textContent) : 0) === n; }", arg=n, polling=POLL)


def test_the_page_is_refused_without_the_check(browser, server):
    browser.clear_cookies()  # the previous model's tests set the admin cookie (127.0.0.1, any port)
    page = browser.new_page()
    try:
        response = page.goto(f"http://127.0.0.1:{server.port}/_closed")
        assert response.status == 403 and "allow=" in page.content()
        response = page.goto(f"http://127.0.0.1:{server.port}/_admin")
        assert response.status == 403
    finally:
        page.close()


def test_the_page_updates_live_emits_and_disconnects(browser, server):
    browser.add_cookies([{"name": "admin", "value": "letmein", "url": f"http://127.0.0.1:{server.port}"}])
    page = browser.new_page()
    clients = []
    try:
        errors, elsewhere = [], []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        own = (f"http://127.0.0.1:{server.port}/", f"ws://127.0.0.1:{server.port}/")
        page.on("request", lambda r: r.url.startswith(own) or elsewhere.append(r.url))
        page.on("websocket", lambda w: w.url.startswith(own) or elsewhere.append(w.url))
        response = page.goto(f"http://127.0.0.1:{server.port}/_admin")
        assert response.status == 200
        page.wait_for_function("() => window.uwsgiWsAdmin.states >= 2", polling=POLL)
        assert page.text_content("#status") == "live"
        assert page.text_content("#redis") == "not configured"
        before = live_total(page)
        # live: a client on worker 1, then one on worker 2
        clients.append(Client(server.worker_ports[0], "?user=ann&rooms=b1"))
        wait_total(page, before + 1)
        clients.append(Client(server.worker_ports[1], "?user=bob&rooms=lobby"))
        wait_total(page, before + 2)
        workers = page.evaluate("() => { const s = window.uwsgiWsAdmin.state; const out = {};"
                                " for (const o of s.open) if (o.route === '/live') out[o.worker] = o.count;"
                                " return out; }")
        assert len(workers) == 2 and all(v >= 1 for v in workers.values()), workers  # one on each
        ann, bob = clients
        # rooms: lobby is listed by the app's rooms(); b1 once watched
        page.wait_for_function("() => { const d = document.querySelector('details[data-room=\"lobby\"] .count');"
                               " return d && d.textContent === '1'; }", polling=POLL)
        page.fill('input[data-keep="watch:/live"]', "b1")
        page.press('input[data-keep="watch:/live"]', "Enter")
        page.wait_for_function("() => { const d = document.querySelector('details[data-room=\"b1\"] .count');"
                               " return d && d.textContent === '1'; }", polling=POLL)
        # the emit form: a test event reaches ann in b1
        page.fill("#emit-form input[name=to]", "b1")
        page.fill("#emit-form input[name=event]", "admin_test")
        page.fill("#emit-form input[name=data]", '{"text": "from the page"}')
        page.press("#emit-form input[name=data]", "Enter")
        frame = ann.until(lambda m: m.get("event") == "admin_test")
        assert frame["data"] == {"text": "from the page"} and frame["room"] == "b1"
        page.wait_for_function("() => document.getElementById('result').textContent === 'emit: done'", polling=POLL)
        # a bad data field is said on the page, nothing sent
        page.fill("#emit-form input[name=data]", "not json")
        page.press("#emit-form input[name=data]", "Enter")
        page.wait_for_function("() => document.getElementById('result').textContent.includes('not JSON')",
                               polling=POLL)
        # disconnect ann from her row in b1, with the form's code
        page.fill("#disconnect-form input[name=code]", "4005")
        page.click('details[data-room="b1"] summary')
        page.click(f'details[data-room="b1"] li[data-id="{ann.id}"] button')
        assert close_frame(ann) == (4005, "disconnected by the operator")
        page.wait_for_function("() => { const d = document.querySelector('details[data-room=\"b1\"] .count');"
                               " return d && d.textContent === '0'; }", polling=POLL)
        wait_total(page, before + 1)
        # the deliveries chart saw the emit's delivery (a point above 0)
        page.wait_for_function("() => Math.max(0, ...window.uwsgiWsAdmin.series.rate) > 0", polling=POLL)
        assert bob.call("whoami")["data"]["id"] == bob.id  # bob untouched
        assert not errors, errors
        assert not elsewhere, elsewhere  # no CDN, nothing from another origin: works offline
    finally:
        for c in clients:
            c.close()
        page.close()


def test_a_forged_cross_origin_post_from_a_page_is_refused(browser, server):
    browser.add_cookies([{"name": "admin", "value": "letmein", "url": f"http://127.0.0.1:{server.port}"}])
    ann = Client(server.worker_ports[0], "?user=ann&rooms=r1")
    page = browser.new_page()
    try:
        evil = f"http://127.0.0.1:{server.worker_ports[1]}"  # another origin (port), the same site: cookies go
        page.goto(f"{evil}/evil?target=http://127.0.0.1:{server.port}/_admin&id={ann.id}")
        page.wait_for_function("() => window.done && window.done.length === 3", polling=POLL)
        server.wait_for_log(r"admin page: refused /_admin/emit from 127\.0\.0\.1: Origin 'http://127\.0\.0\.1:"
                            rf"{server.worker_ports[1]}' is not this site", count=2)
        server.wait_for_log(r"admin page: refused /_admin/disconnect from 127\.0\.0\.1: Origin")
        # nothing happened: ann is connected and a marker emitted now is the first thing she gets
        assert action(server, "emit", {"endpoint": "/live", "to": "r1", "event": "marker"})[0] == 200
        assert ann.until(lambda m: m.get("event") in ("marker", "forged"))["event"] == "marker"
        assert ann.call("whoami")["data"]["id"] == ann.id
    finally:
        ann.close()
        page.close()
