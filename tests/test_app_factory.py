"""An application factory (a module-level `WebSocket()`, `init_app` in `create_app`):
routes and event endpoints declared before any app, several apps in one process each
with its own config, and the test client connecting to the app it was given. Found by
a new-user trial: `ws.events()` raised "needs the app" before `init_app`, and
`ws.test_client()` always served the last app created (its secret key, its origins)."""

from __future__ import annotations

import sys

import pytest

from uwsgi_ws.testing import UpgradeRefused

from harness import APPS

sys.path.insert(0, str(APPS))
import factory_app  # tests/apps: the app as a project module would be


def logged_in(app, user):
    client = app.test_client()
    assert client.get(f"/login/{user}").data == b"ok"
    return client


def test_every_app_gets_the_routes_and_its_own_config():
    a = factory_app.create_app({"SECRET_KEY": "A", "NAME": "a", "UWSGI_WS_ALLOWED_ORIGINS": "*"})
    b = factory_app.create_app({"SECRET_KEY": "B", "NAME": "b"})
    for app in (a, b):
        rules = {r.rule for r in app.url_map.iter_rules()}
        assert {"/whoami", "/live", "/live/sse", "/_uwsgi_ws/<name>"} <= rules, rules
    ca = factory_app.ws.test_client(flask_test_client=logged_in(a, "ann"))
    cb = factory_app.ws.test_client(flask_test_client=logged_in(b, "bob"))
    with ca.connect("/whoami") as conn:
        assert conn.receive(timeout=5) == "ann@a"  # a's session (a's secret key) on a
    with cb.connect("/whoami") as conn:
        assert conn.receive(timeout=5) == "bob@b"
    # a's options are a's: a allows any Origin, b only its own host
    with ca.connect("/whoami", headers={"Origin": "https://elsewhere.example"}) as conn:
        assert conn.receive(timeout=5) == "ann@a"
    with pytest.raises(UpgradeRefused) as refused:
        cb.connect("/whoami", headers={"Origin": "https://elsewhere.example"})
    assert refused.value.status == 403


def test_a_session_of_one_app_is_not_valid_on_another():
    a = factory_app.create_app({"SECRET_KEY": "A"})
    b = factory_app.create_app({"SECRET_KEY": "B"})
    client_a = logged_in(a, "ann")
    cb = factory_app.ws.test_client(flask_test_client=b.test_client())
    # a's cookie sent to b: b's key does not verify it, so no user: 401
    cookie = client_a.get_cookie("session") if hasattr(client_a, "get_cookie") else None
    value = cookie.value if cookie is not None else next(c.value for c in client_a.cookie_jar if c.name == "session")
    with pytest.raises(UpgradeRefused) as refused:
        cb.connect("/whoami", headers={"Cookie": f"session={value}"})
    assert refused.value.status == 401


def test_the_app_context_picks_the_app_without_a_flask_client():
    a = factory_app.create_app({"NAME": "a", "UWSGI_WS_ALLOWED_ORIGINS": "*"})
    factory_app.create_app({"NAME": "b"})  # the last attached
    with a.app_context():
        client = factory_app.ws.test_client()
    assert client.app is a


def test_events_declared_before_the_app_serve_both_transports():
    app = factory_app.create_app({"UWSGI_WS_ALLOWED_ORIGINS": "*"})
    client = factory_app.ws.test_client(flask_test_client=logged_in(app, "ann"))
    with client.events("/live") as ev:
        ev.join("r1")
        factory_app.live.emit("news", 1, to="r1")
        assert ev.get_received() == [("news", 1)]
    # Flask's own test client streams the SSE endpoint (the in-process broadcast, no ws.test_client needed
    # for it): the access checks run (no session: 401), not a 503 for a missing broadcast
    assert app.test_client().get("/live/sse?probe=1").status_code == 401
    assert logged_in(app, "ann").get("/live/sse?probe=1").status_code == 204
