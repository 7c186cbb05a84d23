"""Testing uwsgi_ws apps: in-process and under real uWSGI.

- `TestClient` (``ws.test_client()``): the app's WebSocket routes and event
  endpoints in this process, with the real engine (`client`);
  ``client.wait_subscribed(channel)`` waits until a handler has subscribed (a
  publish before that reaches nobody).
- `serve`, `UWSGI`: start an app under real uWSGI on a free port and stop it by
  pid (`server`); the pytest plugin `uwsgi_ws.testing.plugin` makes a fixture
  of it (``pytest_plugins = ["uwsgi_ws.testing.plugin"]``) that yields once
  every worker serves.
"""

from .client import EventsClient, TestClient, TestConnection, UpgradeRefused, wait_delivered
from .server import UWSGI, free_port, serve

__all__ = ["UWSGI", "EventsClient", "TestClient", "TestConnection", "UpgradeRefused", "free_port", "serve",
           "wait_delivered"]
