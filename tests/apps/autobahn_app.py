"""Echo server for the Autobahn|Testsuite run (tests/autobahn.py).

kosoku's fuzzing client connects to the path of the URL it is given; with a
bare ``host:port`` (what tests/autobahn.py passes) that is ``/``, so the echo
route is the root. Section 9 sends messages of up to 16 MiB, hence the raised
message size limit (the default is 1 MiB, which would close those cases with
1009).
"""

from flask import Flask

from uwsgi_ws import WebSocket

app = Flask(__name__)
ws = WebSocket(app, max_message_size=16 * 1024 * 1024)


@ws.route("/")
def echo(conn):
    for message in conn:
        conn.send(message)
