"""The example of Flask-SocketIO's announcement ("Easy WebSockets with Flask and
Gevent", /work/shared/seeds/003_...), with the import line changed and nothing
else but what the announcement's text elides: the index route's decorator, the
connect/disconnect decorators, and the background thread of Flask-SocketIO's
example app (socketio.start_background_task, socketio.sleep, socketio.emit),
whose period the tests shorten with SOCKETIO_BACKGROUND_PERIOD.
"""
import os
from threading import Lock

from flask import Flask, render_template_string

from uwsgi_ws.socketio import SocketIO, emit

app = Flask(__name__)
app.config['SECRET_KEY'] = 'secret!'
socketio = SocketIO(app)
thread = None
thread_lock = Lock()
PERIOD = float(os.environ.get("SOCKETIO_BACKGROUND_PERIOD", "10"))


def background_thread():
    """Example of how to send server generated events to clients."""
    count = 0
    while True:
        socketio.sleep(PERIOD)
        count += 1
        socketio.emit('my response', {'data': 'Server generated event', 'count': count})


@app.route('/')
def index():
    return render_template_string('<script src="https://cdn.socket.io/4.8.1/socket.io.min.js"></script>')


@socketio.on('my event')
def test_message(message):
    emit('my response', {'data': message['data']})


@socketio.on('my broadcast event')
def test_broadcast_message(message):
    emit('my response', {'data': message['data']}, broadcast=True)


@socketio.on('connect')
def test_connect():
    global thread
    with thread_lock:
        if thread is None and PERIOD > 0:
            thread = socketio.start_background_task(background_thread)
    emit('my response', {'data': 'Connected'})


@socketio.on('disconnect')
def test_disconnect():
    print('Client disconnected')


if __name__ == '__main__':
    socketio.run(app)
