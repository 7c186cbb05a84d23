"""Instance settings: declared once here, read through here.

Two kinds of settings configure uwsgi_ws:

- **Per application** (`APP_OPTIONS`): the Flask extension's options
  (`max_message_size`, `ping_interval`, ...: keyword arguments of
  `WebSocket(...)`, else Flask config ``UWSGI_WS_<NAME>``, else the default;
  `uwsgi_ws.extension.WebSocket.option` reads them through `app_option`), and
  the keyword arguments of ``ws.route(...)`` and ``ws.events(...)``.
- **Per uWSGI instance** (this module): read by processes that have no Flask
  app (the broadcast mule, a publisher). Each is read, first match wins, from

  1. the uWSGI placeholder ``uwsgi-ws-<name>`` (YAML ``set-placeholder:
     uwsgi-ws-redis-url=redis://...``; ini ``set-placeholder = ...``);
  2. the environment variable ``UWSGI_WS_<NAME>`` (for processes outside
     uWSGI: the CLI, the development server, tests);
  3. the default.

  Two are no configuration: ``debug`` is internal (``app.run(debug=True)``
  passes it to the uWSGI it starts) and ``pure`` a diagnostic switch (the
  tests' pure-Python fan-out); their docs say so.

  Prefer the placeholder in uWSGI configs: uWSGI reads every ``UWSGI_*``
  variable of its environment as one of its own options after a graceful
  reload, and a ``strict: true`` config then refuses ``ws-redis-url`` and
  the instance exits (reproduced on 2.0.31). A placeholder survives reloads.

`SETTINGS` lists the instance settings, `APP_OPTIONS` the per-application
options; `markdown_table()` renders the README's tables (``python -m uwsgi_ws
settings`` and ``settings --app`` print them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import _uwsgi
from .exceptions import ConfigError


def parse_size(text: str) -> int:
    """"64M" -> 67108864 (suffixes K, M, G: powers of 1024). ValueError when not a size."""
    text = text.strip().upper()
    if text.endswith("B"):
        text = text[:-1]
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    number = text[:-1] if scale > 1 else text
    if not number.isdigit():
        raise ValueError(f"{text!r} is not a size: write bytes, or a number with K, M or G")
    return int(number) * scale


def _number(kind: Callable[[str], Any], minimum: float) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        value = kind(raw.strip())
        if value < minimum:
            raise ValueError(f"it must be at least {minimum:g}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _text(raw: str) -> str:
    return raw


class FileMode(int):
    """A file mode: an int that prints in octal (``0660``)."""

    def __str__(self) -> str:
        return "0%o" % int(self)

    __repr__ = __str__


def _mode(raw: str) -> int:
    value = int(raw.strip(), 8)
    if not 0 <= value <= 0o777:
        raise ValueError("write an octal file mode such as 0660")
    return FileMode(value)


def _flag(raw: str) -> bool:
    if raw.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if raw.strip().lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("write 1 or 0")


@dataclass(frozen=True)
class Setting:
    """One instance setting: `name` gives the placeholder ``uwsgi-ws-<name>`` and the
    variable ``UWSGI_WS_<NAME>``; `parse` turns the text into the value
    (ValueError when malformed); `reader` names the process that reads it."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    unit: str
    reader: str
    doc: str

    @property
    def placeholder(self) -> str:
        return "uwsgi-ws-" + self.name

    @property
    def env(self) -> str:
        return "UWSGI_WS_" + self.name.upper().replace("-", "_")

    def source(self) -> Tuple[Optional[str], str]:
        """(raw text, where it came from), (None, "default") when unset."""
        raw = _uwsgi.option(self.placeholder)
        if raw is not None:
            return raw, f"uWSGI placeholder {self.placeholder}"
        raw = os.environ.get(self.env)
        if raw is not None:
            return raw, f"environment variable {self.env}"
        return None, "default"

    def get(self) -> Any:
        """The value. Raises ConfigError naming where the bad value came from."""
        raw, where = self.source()
        if raw is None:
            return self.default
        try:
            return self.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{where} = {raw!r}: {exc} ({self.doc})") from None


SETTINGS: List[Setting] = [
    Setting("sharedarea", _number(int, 0), 0, "sharedarea id", "all",
            "the uWSGI sharedarea holding the broadcast ring"),
    Setting("ring-file", _text, "", "path", "all",
            "the broadcast ring in this file instead of sharedarea `sharedarea`: it survives reloads "
            "(and, on a disk, restarts), so clients resume across them"),
    Setting("ring-size", parse_size, 16 << 20, "bytes (K, M, G)", "all",
            "the size of `ring-file`"),
    Setting("publish-timeout", _number(float, 0), 10.0, "seconds", "publishers",
            "how long a publish keeps trying to reach the broadcast mule (e.g. while it is respawned), "
            "or waits for the ring's writer lock, before PublishError"),
    Setting("publish-direct", _flag, True, "flag", "publishers",
            "plain publishes of the instance's workers, spoolers and mules append to the broadcast ring "
            "themselves, under a lock file in /dev/shm, and wake the workers (off: every publish goes "
            "through the broadcast mule, ≈ 190 µs more CPU per message); events go through the mule while "
            "the history runs, every publish while the Redis bridge runs"),
    Setting("publish-socket", _text, "", "path", "mule",
            "also listen for publishers at this Unix socket path (uwsgi_ws.client.Publisher, "
            "python -m uwsgi_ws publish; empty: the instance's own processes only)"),
    Setting("publish-socket-mode", _mode, FileMode(0o660), "octal file mode", "mule",
            "the permissions of uwsgi-ws-publish-socket (who may publish from outside the instance)"),
    Setting("history", _number(int, 0), 0, "messages per room", "mule",
            "event broadcasts the mule keeps per room for resume and join-with-last (0: off)"),
    Setting("history-size", parse_size, 64 << 20, "bytes (K, M, G)", "mule",
            "the most the history keeps over all rooms"),
    Setting("history-file", _text, "", "path", "mule",
            "the history also in this file, reloaded when the mule starts: a room's last messages survive "
            "reloads and restarts (needs `ring-file`; empty: in memory only)"),
    Setting("redis-url", _text, "", "URL", "mule",
            "the Redis server of the cross-instance bridge (empty: no bridge)"),
    Setting("redis-stream", _text, "uwsgi_ws:broadcast", "stream key", "mule",
            "the Redis Stream every bridged instance shares"),
    Setting("redis-maxlen", _number(int, 1), 100000, "entries", "mule",
            "the approximate length Redis trims the stream to"),
    Setting("redis-retry-max", _number(float, 0.01), 5.0, "seconds", "mule",
            "the longest wait between reconnection attempts to Redis"),
    Setting("redis-replay", _number(float, 0), 5.0, "seconds", "mule",
            "after a reconnection, push again what was pushed this long before the outage"),
    Setting("metrics-sharedarea", _number(int, 0), None, "sharedarea id", "all",
            "a sharedarea for the metrics table (needed with lazy-apps)"),
    Setting("fallback-poll", _number(float, 0.01), 0.5, "seconds", "workers",
            "a worker's broadcast hub re-checks the ring this often even without a wake-up from the publisher "
            "or the mule (a safety net: the wake-up delivers; the tests lengthen it to prove that)"),
    Setting("presence-heartbeat", _number(float, 0.01), 5.0, "seconds", "workers",
            "while bridged to Redis, each events registry with connections republishes its presence state "
            "this often, and another instance's worker leaves presence after 3 heartbeats without news"),
    Setting("pure", _flag, False, "flag", "workers",
            "diagnostic, not for production: 1 makes the workers skip the optional native fan-out helper "
            "and use the pure-Python path (the tests run both)"),
    Setting("debug", _flag, False, "flag", "workers",
            "internal, not for configs: app.run(debug=True) sets it for the uWSGI it starts, which then "
            "wraps the app in Werkzeug's debugger"),
]
_BY_NAME: Dict[str, Setting] = {s.name: s for s in SETTINGS}


def get(name: str) -> Any:
    """The value of instance setting `name` (e.g. "redis-url"). Raises ConfigError
    for a malformed value, KeyError for an unknown name."""
    return _BY_NAME[name].get()


def setting(name: str) -> Setting:
    """The declaration of instance setting `name`."""
    return _BY_NAME[name]


def markdown_table(kind: str = "instance") -> str:
    """A README table, generated from the declarations.

    Args:
        kind: "instance" (`SETTINGS`: ``python -m uwsgi_ws settings``) or "app"
            (`APP_OPTIONS`: ``python -m uwsgi_ws settings --app``).

    Returns:
        The Markdown table, without a trailing newline.

    Raises:
        ValueError: another `kind`.
    """
    if kind == "app":
        return _app_table()
    if kind != "instance":
        raise ValueError(f"kind must be 'instance' or 'app', not {kind!r}")
    lines = ["| placeholder / environment variable | default | unit | read by | meaning |",
             "|---|---|---|---|---|"]
    for s in SETTINGS:
        default = "unset" if s.default in (None, "") else repr(s.default) if isinstance(s.default, str) else s.default
        lines.append(f"| `{s.placeholder}` / `{s.env}` | {default} | {s.unit} | {s.reader} | {s.doc} |")
    return "\n".join(lines)


# -- per-application options ------------------------------------------------------------------------

#: Where a per-application option is given (`AppOption.scope`).
EXTENSION, ROUTE, EVENTS = "extension", "route", "events"


@dataclass(frozen=True)
class AppOption:
    """One per-application option, read in the app's processes (the workers).

    `scope` says where it may come from: `EXTENSION` options are keyword
    arguments of ``WebSocket(app, ...)``, else the Flask config key
    `config_key` (read at each use, so ``init_app`` and a config set later
    count), else `default`; `ROUTE` options are keyword arguments of
    ``ws.route(rule, ...)`` and `EVENTS` options of ``ws.events(path, ...)``
    (no config key). `kind` is the accepted type as the docs write it, `shown`
    the default as the table shows it (empty: `default` itself).
    """

    name: str
    scope: str
    kind: str
    default: Any
    unit: str
    doc: str
    shown: str = ""

    @property
    def config_key(self) -> Optional[str]:
        """The Flask config key (``UWSGI_WS_MAX_MESSAGE_SIZE``), None outside `EXTENSION`."""
        return "UWSGI_WS_" + self.name.upper() if self.scope == EXTENSION else None

    @property
    def where(self) -> str:
        """Where the option may come from, as the table says it."""
        if self.scope == EXTENSION:
            return f"`WebSocket(...)` keyword, Flask config `{self.config_key}`"
        return "`ws.route(...)` keyword" if self.scope == ROUTE else "`ws.events(...)` keyword"


_MIB = 1 << 20

APP_OPTIONS: List[AppOption] = [
    AppOption("max_message_size", EXTENSION, "int", _MIB, "bytes",
              "a bigger incoming message is refused with close 1009, as soon as a frame header announces it "
              "(fragments added up; the inflated size with compression)", "1 MiB"),
    AppOption("ping_interval", EXTENSION, "float or None", 20.0, "seconds",
              "the server pings each connection this often, even when the handler only sends (None: off)"),
    AppOption("ping_timeout", EXTENSION, "float", 20.0, "seconds", "no pong in time: close 1011"),
    AppOption("close_timeout", EXTENSION, "float", 5.0, "seconds",
              "how long `close()` waits for the peer's close frame"),
    AppOption("max_queue", EXTENSION, "int", 16, "messages",
              "received messages buffered before reading pauses (back-pressure)"),
    AppOption("write_limit", EXTENSION, "int", _MIB, "bytes",
              "bytes buffered per connection; a broadcast subscriber past it is a slow consumer (close 1013)",
              "1 MiB"),
    AppOption("timeout", EXTENSION, "float or None", None, "seconds",
              "the default timeout of `conn.receive()` (None: wait for ever; Flask-uWSGI-WebSocket's name)"),
    AppOption("allowed_origins", EXTENSION, 'None, `"*"` or list of str', None, "origins",
              'the Origin policy: None: same-origin pages only; `"*"`: any; or a list of origins '
              '(`https://example.com`, `https://*.example.com`, `null`); 403 before the upgrade otherwise'),
    AppOption("max_connections_per_worker", EXTENSION, 'int, "auto" or None', "auto", "connections",
              "open WebSockets (and SSE streams) per worker process, 503 beyond; \"auto\": under gevent the "
              "worker's cores less an eighth (at least 2 kept for plain HTTP), no limit in the other models; "
              "None: no limit", '"auto"'),
    AppOption("max_connections", EXTENSION, "int or None", None, "connections",
              "open WebSockets of the whole instance, 503 beyond (None: no limit)"),
    AppOption("retry_after", EXTENSION, "int", 5, "seconds", "the `Retry-After` of a 503 for a connection limit"),
    AppOption("metrics_route", EXTENSION, "str or None", None, "URL rule",
              'e.g. "/metrics": the Prometheus text of `uwsgi_ws.metrics` there (opt-in; keep it internal)'),
    AppOption("compression", EXTENSION, '"deflate" or None', "deflate", "",
              "permessage-deflate when the client offers it (every browser does); None: off", '"deflate"'),
    AppOption("compression_min_size", EXTENSION, "int", 128, "bytes", "shorter messages go out uncompressed"),
    AppOption("compression_level", EXTENSION, "int", 6, "zlib level", "0-9"),
    AppOption("compression_server_max_window_bits", EXTENSION, "int", 12, "bits",
              "the server's LZ77 window, 8-15 (2**bits bytes)"),
    AppOption("compression_client_max_window_bits", EXTENSION, "int", 12, "bits",
              "8-15: asked of clients that allow it (browsers do)"),
    AppOption("compression_mem_level", EXTENSION, "int", 5, "zlib memLevel", "1-9: memory per compressor"),
    AppOption("bp", ROUTE, "flask.Blueprint or None", None, "",
              "register the route on this blueprint instead of the app (flask-sock style)"),
    AppOption("subprotocols", ROUTE, "sequence of str", (), "",
              "the `Sec-WebSocket-Protocol` values the route speaks (the connection's `subprotocol` is the "
              "first of the client's offers that is listed)", "()"),
    AppOption("compression", ROUTE, '"deflate" or None', "", "",
              "overrides the extension's `compression` for this route (ValueError for another value)",
              "the extension's"),
    AppOption("**options", ROUTE, "keywords", None, "",
              "passed to Flask's `add_url_rule` (`endpoint`, `defaults`, ...)", "none"),
    AppOption("max_last", EVENTS, "int", 100, "messages",
              "the most \"last messages\" a client may ask for when it joins a room"),
    AppOption("presence", EVENTS, "bool", False, "",
              "keep the instance's presence (`presence()`, `presence_count()`): each join, leave and close is "
              "one more message in the broadcast ring"),
    AppOption("join_leave", EVENTS, "bool", False, "",
              "broadcast a `presence` frame (join/leave, with the identity) to a room's members"),
    AppOption("user_key", EVENTS, "str", "user", "", "the identity's key that `emit(..., to_user=)` matches",
              '"user"'),
    AppOption("json_encoder", EVENTS, "json.JSONEncoder subclass or None", None, "",
              "the encoder of every frame (e.g. `events_protocol.RichEncoder`: datetime, UUID, dataclasses)"),
    AppOption("**route_options", EVENTS, "keywords", None, "",
              "`ws.route`'s options for the endpoint's WebSocket (`subprotocols`, `compression`, `endpoint`)",
              "none"),
]
_APP_BY_NAME: Dict[str, AppOption] = {o.name: o for o in APP_OPTIONS if o.scope == EXTENSION}


def app_option(name: str) -> AppOption:
    """The declaration of extension option `name` (e.g. "ping_interval").

    Raises:
        KeyError: not an extension option.
    """
    return _APP_BY_NAME[name]


def app_defaults() -> Dict[str, Any]:
    """{name: default} of the extension options (`uwsgi_ws.extension.DEFAULTS`)."""
    return {o.name: o.default for o in APP_OPTIONS if o.scope == EXTENSION}


def _app_table() -> str:
    """Three tables, one per `scope`, each headed by where its options are given."""

    def shown(o: AppOption) -> str:
        if o.shown:
            return o.shown
        return "None" if o.default is None else repr(o.default) if isinstance(o.default, str) else str(o.default)

    def rows(scope: str) -> List[AppOption]:
        return [o for o in APP_OPTIONS if o.scope == scope]

    lines = ["**`WebSocket(app, ...)`** keyword arguments, else the app's Flask config key, else the default "
             "(read at each use):", "",
             "| option | Flask config | type | default | unit | meaning |", "|---|---|---|---|---|---|"]
    lines += [f"| `{o.name}` | `{o.config_key}` | {o.kind} | {shown(o)} | {o.unit} | {o.doc} |"
              for o in rows(EXTENSION)]
    lines += ["", "**`ws.route(rule, ...)`** keyword arguments:", "",
              "| option | type | default | meaning |", "|---|---|---|---|"]
    lines += [f"| `{o.name}` | {o.kind} | {shown(o)} | {o.doc} |" for o in rows(ROUTE)]
    lines += ["", "**`ws.events(path, ...)`** keyword arguments:", "",
              "| option | type | default | unit | meaning |", "|---|---|---|---|---|"]
    lines += [f"| `{o.name}` | {o.kind} | {shown(o)} | {o.unit} | {o.doc} |" for o in rows(EVENTS)]
    return "\n".join(lines)
