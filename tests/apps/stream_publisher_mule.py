"""A program mule publishing a numbered stream forever (tests/test_faults.py).

Run next to the broadcast mule: ``--mule=uwsgi_ws.mule:run
--mule=tests/apps/stream_publisher_mule.py``. It publishes "n<seq>" every
$STREAM_INTERVAL seconds (default 0.01), seq counting up without end. The next
seq is kept in the file $STREAM_SEQ_FILE, written *before* each publish, so the
stream goes on where it was after a respawn or a reload of the whole instance:
a seq is never published twice, and a kill between the write and the publish
skips one (a gap every client sees, counted as a publisher gap by the test).
"""

import os
import time

from uwsgi_ws.mule import publish

interval = float(os.environ.get("STREAM_INTERVAL", "0.01"))
fd = os.open(os.environ["STREAM_SEQ_FILE"], os.O_RDWR | os.O_CREAT, 0o644)
seq = int(os.pread(fd, 32, 0).strip() or b"0")
print(f"stream_publisher_mule: starting at n{seq}", flush=True)
start = time.monotonic()
sent = 0
while True:
    os.pwrite(fd, b"%20d" % (seq + 1), 0)
    publish(f"n{seq}")
    seq += 1
    sent += 1
    delay = start + sent * interval - time.monotonic()  # pacing of the stream, not synchronisation
    if delay > 0:
        time.sleep(delay)
    else:
        start, sent = time.monotonic(), 0  # fell behind (publish blocked while the broadcast mule was down)
