"""Resume across a touched vassal (issue 16 item 1): the Emperor reloads the vassal
(the events app of tests/test_events.py, 2 workers, the broadcast mule) when its
file is touched; with the ring and the history in files next to the vassal
(``%p.ring``, ``%p.history``: the vassal file's path, as vassals/chat.yaml does), the connected page
is closed with 1012, reconnects with ``?resume=1`` and gets every broadcast it
missed exactly once, in order, with the same epoch; a room's last messages are
still there. Real Emperor, real vassal, threads and gevent.
"""

from __future__ import annotations

import os
import struct
import time

import pytest
from test_resume_reload import received

from harness import APPS, ROOT, UWSGI, free_port
from test_events import MODEL_ARGS, Client, emit, ring

MODELS = ["threads", "gevent"]


def vassal_text(port: int, model: str) -> str:
    model_lines = "".join(f"  {MODEL_ARGS[model][i][2:]}: {MODEL_ARGS[model][i + 1]}\n"
                          for i in range(0, len(MODEL_ARGS[model]), 2))
    return (
        "uwsgi:\n"
        "  master: true\n"
        f"  http-socket: 127.0.0.1:{port}\n"
        f"  pythonpath: {ROOT}\n"
        f"  pythonpath: {APPS}\n"
        "  module: events_app:app\n"
        f"{model_lines}"
        "  need-app: true\n"
        "  die-on-term: true\n"
        "  disable-logging: true\n"
        "  worker-reload-mercy: 30\n"
        "  sharedarea: 16\n"
        "  mule: uwsgi_ws.mule:run\n"
        "  set-placeholder: uwsgi-ws-ring-file=%p.ring\n"
        "  set-placeholder: uwsgi-ws-ring-size=64K\n"
        "  set-placeholder: uwsgi-ws-history=20\n"
        "  set-placeholder: uwsgi-ws-history-file=%p.history\n"
    )


def close_code(client: Client) -> int:
    """The close code the server sends (reading past other frames)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        opcode, data = client.ws.recv_data(control_frame=True)
        if opcode == 8:
            return int(struct.unpack("!H", data[:2])[0]) if len(data) >= 2 else 1005
    raise AssertionError("no close frame in 60 s")


@pytest.mark.parametrize("model", MODELS)
def test_a_touched_vassal_costs_a_page_nothing(model, tmp_path):
    port = free_port()
    vassals = tmp_path / "vassals"
    vassals.mkdir()
    vassal = vassals / "live.yaml"
    vassal.write_text(vassal_text(port, model))
    server = UWSGI(["--emperor", str(vassals)], tmp_path, port=port)
    try:
        server.wait_for_log(r"broadcast history: the last 20 events per room", timeout=30)
        c = Client(port)
        c.hello()
        for i in range(10):
            emit(server, "lobby", i, event="n")
        seen = received(c, 10)
        for i in range(3):  # a room nobody is in: kept by the history only
            emit(server, "recent", 100 + i, event="n")
        epoch = ring(server)["epoch"]
        assert (vassals / "live.yaml.ring").exists() and (vassals / "live.yaml.history").exists()

        os.utime(vassal, (time.time() + 5, time.time() + 5))  # touch: the Emperor reloads the vassal
        assert close_code(c) == 1012
        server.wait_for_log(r"broadcast history: the last 20 events per room", count=2, timeout=60)
        for i in range(10, 15):  # published after the reload, before the page is back
            emit(server, "lobby", i, event="n")
        assert ring(server)["epoch"] == epoch

        r = Client(port, "?resume=1")
        r.send({"type": "resume", "epoch": seen[-1]["epoch"], "rooms": {"lobby": seen[-1]["seq"]}})
        resumed = r.until(lambda m: m.get("type") in ("resumed", "not_recovered"))
        assert resumed["type"] == "resumed", resumed
        got = received(r, 5)
        assert [m["data"] for m in got] == list(range(10, 15))
        seqs = [m["seq"] for m in got]
        assert seqs == sorted(set(seqs)) and seqs[0] > seen[-1]["seq"]
        emit(server, "lobby", "live", event="n")
        assert [m["data"] for m in received(r, 1)] == ["live"]  # nothing repeated before it
        r.close()

        j = Client(port)  # the room's last messages survived the reload
        j.hello()
        j.send({"type": "join", "room": "recent", "last": 3})
        assert [m["data"] for m in received(j, 3)] == [100, 101, 102]
        j.close()
        assert not server.crashes(), server.log()
    finally:
        server.stop()
