"""Packaging for uwsgi_ws: real-time WebSockets for Flask apps served by uWSGI.

`pip install -e .[gevent,test]` (what `make venv` runs) compiles uWSGI from
its sdist: that needs gcc, the Python headers and the OpenSSL headers
(Debian: libssl-dev), without which uWSGI builds with no SSL and its
websocket handshake fails.  Never use the `pyuwsgi` wheel: it has no SSL.
"""

from pathlib import Path

from setuptools import Extension, find_packages, setup

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"

setup(
    name="uwsgi_ws",
    version="0.1.0",
    description="Real-time WebSockets for Flask apps served by uWSGI, with a broadcast mule",
    long_description=README.read_text(encoding="utf-8") if README.exists() else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["uwsgi_ws*"]),
    # Optional: the broadcast fan-out writes one buffer to many sockets in C.
    # If it cannot be built the pure-Python path is used (UWSGI_WS_PURE=1 forces it).
    ext_modules=[Extension("uwsgi_ws._speedups", ["uwsgi_ws/_speedups.c"], optional=True)],
    package_data={"uwsgi_ws": ["py.typed", "static/*", "conf/*"]},
    include_package_data=False,
    zip_safe=False,
    python_requires=">=3.9",
    install_requires=[
        # The `uwsgi` sdist (compiled by pip), NOT `pyuwsgi`.  It also ships
        # the `uwsgidecorators` module, so that is not listed separately.
        "uwsgi>=2.0.31",
        "flask>=2.2",
        "wsproto>=1.2,<2",
        "pyyaml",
    ],
    extras_require={
        "gevent": ["gevent>=22"],
        # Scale-out: the broadcast mule shares broadcasts through Redis when
        # UWSGI_WS_REDIS_URL is set (uwsgi_ws/redis_bridge.py).
        # hiredis: the C reply parser, a third less CPU in the bridge's threads.
        "redis": ["redis[hiredis]>=4.2"],
        "test": [
            "redis[hiredis]>=4.2",
            "pytest",
            "websocket-client",
            "websockets",
            "gevent",
            "kosoku",
            "hypothesis",
            "requests",
            # tests/test_browser.py: drives Debian's chromium (`make test` installs it); no browser download
            "playwright>=1.49",
            # coverage-guided fuzzing of the frame decoder (tests/fuzz); a binary wheel
            "atheris; platform_system == 'Linux' and platform_machine == 'x86_64'",
        ],
    },
    classifiers=[
        "Framework :: Flask",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Operating System :: POSIX",
        "Topic :: Internet :: WWW/HTTP :: WSGI :: Server",
    ],
)
