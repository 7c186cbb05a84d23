"""A program mule that targets connections of tests/apps/presence_app.py's /live
(tests/test_targeting.py): run as ``--mule=tests/apps/presence_mule.py`` after the
broadcast mule. Each mule message (``uwsgi.mule_msg(json, 2)`` from the app's
POST /mule) is {"emit": [event, data], "to": .., "to_user": .., "skip": ..} or
{"disconnect": id, "code": .., "reason": ..}; it acts with the app's own `live`.
"""

import json

import uwsgi
from presence_app import live

print("presence_mule: ready", flush=True)
while True:
    order = json.loads(uwsgi.mule_get_msg())
    try:
        if "emit" in order:
            event, data = order["emit"]
            live.emit(event, data, to=order.get("to"), to_user=order.get("to_user"), skip=order.get("skip"))
        elif "disconnect" in order:
            live.disconnect(order["disconnect"], order.get("code", 1000), order.get("reason", ""))
    except Exception as exc:  # the test reads the log
        print(f"presence_mule: failed: {exc!r}", flush=True)
