"""Instance settings: declared once here, read through here.

Two kinds of settings configure uwsgi_ws:

- **Per application** (the Flask extension's options: `max_message_size`,
  `ping_interval`, ...): keyword arguments of `WebSocket(...)`, else Flask
  config ``UWSGI_WS_<NAME>``. They live in `uwsgi_ws.extension.DEFAULTS`.
- **Per uWSGI instance** (this module): read by processes that have no Flask
  app (the broadcast mule, a publisher). Each is read, first match wins, from

  1. the uWSGI placeholder ``uwsgi-ws-<name>`` (YAML ``set-placeholder:
     uwsgi-ws-redis-url=redis://...``; ini ``set-placeholder = ...``);
  2. the environment variable ``UWSGI_WS_<NAME>`` (for processes outside
     uWSGI: the CLI, the development server, tests);
  3. the default.

  Prefer the placeholder in uWSGI configs: uWSGI reads every ``UWSGI_*``
  variable of its environment as one of its own options after a graceful
  reload, and a ``strict: true`` config then refuses ``ws-redis-url`` and
  the instance exits (reproduced on 2.0.31). A placeholder survives reloads.

`SETTINGS` lists them all; `markdown_table()` renders the README's table.
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
            "how long a publish keeps trying to reach the broadcast mule (e.g. while it is respawned) "
            "before PublishError"),
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
    Setting("pure", _flag, False, "flag", "workers",
            "1: never use the optional native fan-out helper (tests the pure-Python path)"),
    Setting("debug", _flag, False, "flag", "workers",
            "set by app.run(debug=True): wrap the app in Werkzeug's debugger"),
]
_BY_NAME: Dict[str, Setting] = {s.name: s for s in SETTINGS}


def get(name: str) -> Any:
    """The value of instance setting `name` (e.g. "redis-url"). Raises ConfigError
    for a malformed value, KeyError for an unknown name."""
    return _BY_NAME[name].get()


def setting(name: str) -> Setting:
    """The declaration of instance setting `name`."""
    return _BY_NAME[name]


def markdown_table() -> str:
    """The README's table of instance settings (generated: `python -m uwsgi_ws settings`)."""
    lines = ["| placeholder / environment variable | default | unit | read by | meaning |",
             "|---|---|---|---|---|"]
    for s in SETTINGS:
        default = "unset" if s.default in (None, "") else repr(s.default) if isinstance(s.default, str) else s.default
        lines.append(f"| `{s.placeholder}` / `{s.env}` | {default} | {s.unit} | {s.reader} | {s.doc} |")
    return "\n".join(lines)
