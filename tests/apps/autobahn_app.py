"""Echo server for the Autobahn|Testsuite run (tests/autobahn.py).

kosoku's fuzzing client connects to the path of the URL it is given; with a
bare ``host:port`` (what tests/autobahn.py passes) that is ``/``, so the echo
route is the root. Section 9 sends messages of up to 16 MiB, hence the raised
message size limit (the default is 1 MiB, which would close those cases with
1009).

Sections 12 and 13 (permessage-deflate) need two settings here, both for the
fuzzing client's sake: kosoku hands an uncompressed text echo to Autobahn's
case code as str, which then fails hashing it ("Strings must be encoded
before hashing"), so every message is compressed (compression_min_size=0;
below the threshold the server sends plain frames, which RFC 7692 allows);
and a case that receives a ping it did not ask for is ended as failed, while
a 1000 x 128 KiB case lasts longer than the 20 s keepalive (ping_interval=None:
keepalive is tested in tests/test_keepalive.py).
"""

from flask import Flask

from uwsgi_ws import WebSocket

app = Flask(__name__)
ws = WebSocket(app, max_message_size=16 * 1024 * 1024, compression_min_size=0, ping_interval=None)


@ws.route("/")
def echo(conn):
    for message in conn:
        conn.send(message)
