"""The Flask-uWSGI-WebSocket chat (seed_flask_uwsgi_websocket_chat, left verbatim) plus
one plain route for the tests: GET /users lists the ids in its `users` dict."""

from seed_flask_uwsgi_websocket_chat import app, users


@app.route("/users")
def user_ids():
    return {"users": sorted(users)}
