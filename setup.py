"""Packaging for uwsgi_ws: real-time WebSockets for Flask apps served by uWSGI.

    pip install "uwsgi_ws[gevent]"        # from a checkout, an sdist or a wheel

pip compiles uWSGI from its sdist: that needs gcc, the Python headers and the
OpenSSL headers (Debian: libssl-dev), without which uWSGI builds with no SSL
and its websocket handshake fails.  Never use the `pyuwsgi` wheel: it has no
SSL.  `make venv` runs `pip install -e .[gevent,test]` into .venv.

The version has one source, `uwsgi_ws.__version__` (read here as text: the
package is not importable before its dependencies are installed).
"""

import re
from pathlib import Path

from setuptools import Extension, find_packages, setup

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "uwsgi_ws" / "__init__.py").read_text(), re.M).group(1)

# What the code imports, per feature (README, Dependencies, says why each).
GEVENT = ["gevent>=22"]
# Scale-out: the broadcast mule shares broadcasts through Redis (uwsgi-ws-redis-url).
# hiredis: the C reply parser, a third less CPU in the bridge's threads.
REDIS = ["redis[hiredis]>=4.2"]
# uwsgi_ws.socketio: Flask-SocketIO apps on the uwsgi_ws broadcast (python-socketio/engineio speak the protocol).
SOCKETIO = ["flask-socketio>=5.7,<6", "python-socketio>=5.18,<6", "python-engineio>=4.15,<5"]
# The documentation site (docs/, `make docs`): Sphinx with the furo theme and MyST for the Markdown
# guides (README, Dependencies, says why furo); tests/test_docs.py builds it, so `test` has them too.
DOCS = ["sphinx>=7.2,<10", "furo>=2024.1", "myst-parser>=3,<6"]

setup(
    name="uwsgi_ws",
    version=VERSION,
    description="Real-time WebSockets for Flask apps served by uWSGI, with a broadcast across workers",
    long_description=README.read_text(encoding="utf-8") if README.exists() else "",
    long_description_content_type="text/markdown",
    license="MIT",
    license_files=["LICENSE"],
    packages=find_packages(include=["uwsgi_ws", "uwsgi_ws.*"]),
    # Optional: the broadcast fan-out writes one buffer to many sockets in C.
    # optional=True: without a compiler (or headers) the build warns and goes
    # on; the package then uses the pure-Python path and says so once at start
    # (uwsgi_ws/startup.py).  UWSGI_WS_PURE=1 forces the pure path.
    ext_modules=[Extension("uwsgi_ws._speedups", ["uwsgi_ws/_speedups.c"], optional=True)],
    # conf/: the configs vassals include (`python -m uwsgi_ws conf` prints where),
    # with the broadcast mule file; static/: the browser client.
    package_data={"uwsgi_ws": ["py.typed", "_speedups.pyi", "static/*", "conf/*", "conf/*/*"]},
    include_package_data=False,
    zip_safe=False,
    python_requires=">=3.9",
    install_requires=[
        # The `uwsgi` sdist (compiled by pip), NOT `pyuwsgi`.  It provides the
        # server and the `uwsgi` module the package imports inside it.
        "uwsgi>=2.0.31",
        "flask>=2.2",
        "wsproto>=1.2,<2",
        # `python -m uwsgi_ws check` reads YAML configs with it.
        "pyyaml>=5.1",
    ],
    extras_require={
        "gevent": GEVENT,
        "redis": REDIS,
        "socketio": SOCKETIO,
        "docs": DOCS,
        "test": [
            *DOCS,
            *GEVENT,
            *REDIS,
            *SOCKETIO,
            "pytest",
            "websocket-client",
            "websockets",
            "gevent-websocket",  # tests/test_devserver_gevent_websocket.py: Flask-Sockets' python app.py (pywsgi)
            "kosoku",
            "hypothesis",
            "requests",
            # tests/test_packaging.py: python -m build
            "build",
            # tests/test_browser.py: drives Debian's chromium (`make test` installs it); no browser download
            "playwright>=1.49",
            # coverage-guided fuzzing of the frame decoder (tests/fuzz); a binary wheel
            "atheris; platform_system == 'Linux' and platform_machine == 'x86_64'",
        ],
    },
    entry_points={"console_scripts": ["uwsgi-ws = uwsgi_ws.cli:main"]},
    classifiers=[
        "Development Status :: 4 - Beta",
        "Environment :: Web Environment",
        "Framework :: Flask",
        "Intended Audience :: Developers",
        "Operating System :: POSIX",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.9",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Programming Language :: Python :: Implementation :: CPython",
        "Topic :: Internet :: WWW/HTTP :: Dynamic Content",
        "Topic :: Internet :: WWW/HTTP :: WSGI :: Server",
        "Typing :: Typed",
    ],
)
