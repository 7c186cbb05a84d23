"""The Origin policy's rules and its configuration (no server needed: the
policy is pure, and Flask's test client reaches the pre-upgrade checks, which
answer before the view's "needs uWSGI" 501)."""

from __future__ import annotations

import pytest
from flask import Flask

from uwsgi_ws import WebSocket
from uwsgi_ws.access import OriginPolicy, parse_origin

HANDSHAKE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
             "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


@pytest.mark.parametrize("value, parsed", [
    ("https://example.com", ("https", "example.com", None)),
    ("HTTP://Example.COM:8080", ("http", "example.com", 8080)),
    ("http://[::1]:5000", ("http", "::1", 5000)),
    ("null", None),
    ("example.com", None),
    ("https://", None),
    ("https://example.com/path", None),
    ("https://user@example.com", None),
    ("https://example.com:99999", None),
    ("https://example.com:port", None),
    ("https://exa\x00mple.com", None),
    ("https://exa mple.com", None),
    ("https://*.example.com", None),  # a wildcard is for allowed_origins entries only
])
def test_parse_origin(value, parsed):
    assert parse_origin(value) == parsed


def test_default_is_same_origin():
    policy = OriginPolicy()
    assert policy.allows(None, "example.com")  # not a browser
    assert policy.allows("https://example.com", "example.com")
    assert policy.allows("http://example.com:8000", "EXAMPLE.com:8000")
    assert not policy.allows("https://evil.test", "example.com")
    assert not policy.allows("null", "example.com")
    assert not policy.allows("https://example.com", None)  # no Host to compare with
    assert not policy.allows("https://example.com", "example.com:notaport")


@pytest.mark.parametrize("entry", ["example.com", "https://example.com/", "https://example.com/app",
                                   "ftp//x", "https://*", "", 42])
def test_malformed_entries_fail_at_once_with_what_to_write(entry):
    with pytest.raises(ValueError, match=r"scheme://host|entries are str"):
        OriginPolicy([entry])


def test_a_single_string_is_one_origin_not_its_characters():
    policy = OriginPolicy("https://example.com")
    assert policy.allows("https://example.com", "other.test")
    assert not policy.allows("https://evil.test", "other.test")


def test_bad_keyword_fails_when_the_extension_is_made():
    with pytest.raises(ValueError, match="allowed_origins entry"):
        WebSocket(Flask(__name__), allowed_origins=["example.com"])
    with pytest.raises(TypeError, match="unknown option"):
        WebSocket(Flask(__name__), allowed_origin=["https://example.com"])


def make_app(**options):
    app = Flask(__name__)
    ws = WebSocket(app, **options)

    @ws.route("/ws")
    def handler(conn):  # pragma: no cover - never upgraded without uWSGI
        pass

    return app, ws


def test_config_key_sets_the_policy():
    app, _ = make_app()
    app.config["UWSGI_WS_ALLOWED_ORIGINS"] = ["https://app.example.com"]
    client = app.test_client()
    refused = client.get("/ws", headers={**HANDSHAKE, "Origin": "https://evil.test"})
    assert refused.status_code == 403
    assert b"UWSGI_WS_ALLOWED_ORIGINS" in refused.data
    # past the Origin check the view answers 501: this is not uWSGI
    assert client.get("/ws", headers={**HANDSHAKE, "Origin": "https://app.example.com"}).status_code == 501
    app.config["UWSGI_WS_ALLOWED_ORIGINS"] = "*"
    assert client.get("/ws", headers={**HANDSHAKE, "Origin": "https://evil.test"}).status_code == 501


def test_keyword_wins_over_config():
    app, _ = make_app(allowed_origins="*")
    app.config["UWSGI_WS_ALLOWED_ORIGINS"] = []
    assert app.test_client().get("/ws", headers={**HANDSHAKE, "Origin": "https://evil.test"}).status_code == 501


def test_bad_config_value_is_a_500_that_names_the_entry(caplog):
    app, _ = make_app()
    app.config["UWSGI_WS_ALLOWED_ORIGINS"] = ["evil.test"]
    response = app.test_client().get("/ws", headers={**HANDSHAKE, "Origin": "https://evil.test"})
    assert response.status_code == 500
    assert "allowed_origins entry 'evil.test'" in caplog.text


def test_hooks_run_under_the_test_client_too():
    app, ws = make_app()
    calls = []

    @ws.before_connect
    def hook():
        calls.append("hook")
        return False

    assert app.test_client().get("/ws", headers=HANDSHAKE).status_code == 403
    assert calls == ["hook"]
