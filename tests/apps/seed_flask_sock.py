"""flask-sock's README example, with only the import line changed (was:
``from flask_sock import Sock``), plus its blueprint form and close(reason=, message=)."""

from flask import Blueprint, Flask
from uwsgi_ws import Sock

app = Flask(__name__)
sock = Sock(app)


@sock.route('/echo')
def echo(ws):
    while True:
        data = ws.receive()
        if data == 'close':
            ws.close(reason=1000, message='bye')
            break
        ws.send(data)


bp = Blueprint('chat', __name__)


@sock.route('/reverse', bp=bp)
def reverse(ws):
    while True:
        text = ws.receive(timeout=5)
        ws.send(text[::-1])


app.register_blueprint(bp, url_prefix='/bp')
