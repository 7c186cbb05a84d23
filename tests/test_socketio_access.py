"""Engine.IO's long-polling handshake runs the same access policy as the WebSocket
route (uwsgi_ws.admission: Origin, before_connect hooks), on real uWSGI."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from harness import serve

EXTRA = ["--sharedarea", "4096", "--mule=uwsgi_ws.mule:run"]


@pytest.mark.parametrize("model", ["threads", "gevent"])
def test_polling_handshake_runs_before_connect(model, tmp_path):
    with serve("socketio_gate_app:app", tmp_path, model=model, extra=EXTRA) as server:
        server.wait_for_port()
        base = server.http + "/socket.io/?EIO=4&transport=polling"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base, timeout=10)
        assert refused.value.code == 403
        assert b"before_connect hook refused" in refused.value.read()
        with urllib.request.urlopen(base + "&token=ok", timeout=10) as answer:
            assert answer.status == 200 and answer.read().startswith(b'0{"sid":')
        cross = urllib.request.Request(base + "&token=ok", headers={"Origin": "https://elsewhere.example"})
        with pytest.raises(urllib.error.HTTPError) as foreign:
            urllib.request.urlopen(cross, timeout=10)
        assert foreign.value.code in (400, 403)  # our Origin policy (403) or engineio's CORS check (400)
