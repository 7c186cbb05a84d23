"""A program mule that publishes directly (tests/test_broadcast.py).

Run as the second mule: ``--mule=uwsgi_ws.mule:run --mule=tests/apps/broadcast_test_mule.py``.
It waits for orders ``go:<count>:<prefix>`` (sent by the app's /mule-publish
with ``uwsgi.mule_msg(..., 2)``) and publishes "<prefix><i>" for i in
0..count-1 with `uwsgi_ws.mule.publish`, then prints a line to the log.
"""

import uwsgi

from uwsgi_ws.mule import publish

while True:
    order = uwsgi.mule_get_msg()
    if not order or not order.startswith(b"go:"):
        continue
    _, count, prefix = order.decode().split(":", 2)
    for i in range(int(count)):
        publish(f"{prefix}{i}")
    print(f"broadcast_test_mule: published {count} {prefix}", flush=True)
