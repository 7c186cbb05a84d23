"""`python -m uwsgi_ws check PATH...`: a linter for uWSGI configs and vassals.

uWSGI's YAML reader (core/yaml.c, the embedded one pip's uWSGI builds) reads
flat ``key: value`` lines under one ``uwsgi:`` section and silently stops at
the first line it does not understand: a nested mapping, a block list, a key
without a value, a flow collection. The keys below such a line are dropped
with no message, so a wrong vassal fails quietly. This module reads a config
the way uWSGI does, follows ``include:``/``inherit:`` (``%d``, ``%p``, ``%s``,
``%n`` expanded as uWSGI does, per file), and reports with file:line and the fix:

- constructs uWSGI's reader ignores (block lists, nested mappings, keys
  without a value, several documents, anchors/aliases/merge keys, several
  ``uwsgi:`` sections, single-quoted values, ``#`` inside a value);
- options the installed ``uwsgi`` does not know (``uwsgi --help``);
- the mistakes specific to uwsgi_ws: the broadcast mule without a
  sharedarea and the reverse, ``mule`` without a value, ``lazy-apps`` with the
  module:callable broadcast mule, the ``http`` router in front of WebSockets
  (an error without ``http-websockets``: every WebSocket would hang),
  ``harakiri``, gevent configured but not importable, a threads model with
  fewer threads than ``max_connections_per_worker``, an app served with no
  concurrency model (one request at a time per worker), ``UWSGI_WS_*`` set with
  ``env:`` in a strict config (the instance dies on its first reload), and a
  per-application option (``ping_interval``...) given to uWSGI, where it sets
  nothing (it belongs to ``WebSocket(app, ...)`` or the Flask config).

Fixes are written in the syntax of the file they are about (``key: value`` in
YAML, ``key = value`` in ini).

Files: ``*.yaml``/``*.yml`` (YAML, checked with pyyaml too) and ``*.ini``;
a directory means the files of those kinds directly in it.
Exit status (`main`): 0 clean or warnings only, 1 on errors, 2 on bad usage.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import FrozenSet, Iterable, List, Optional, Sequence, Set, Tuple

import yaml

from . import settings

#: Options that name another config file read in place (uWSGI 2.0).
INCLUDE_KEYS = ("include", "inherit", "yaml", "yml", "ini", "config")
#: Mule values that are the uwsgi_ws broadcast mule.
MODULE_MULE = "uwsgi_ws.mule:run"
MULE_FILE = "broadcast_mule.py"
#: Booleans as uWSGI reads them (core/uwsgi.c, uwsgi_opt_true): these are false, anything else true.
FALSE_VALUES = ("false", "off", "no", "0")
YAML_SUFFIXES = (".yaml", ".yml")
INI_SUFFIXES = (".ini",)
#: Options that load a WSGI app: an instance with one serves requests (a fragment such as conf/broadcast.yaml does not).
APP_KEYS = ("module", "wsgi", "w", "wsgi-file", "file", "mount")
#: The http router's options (uWSGI's http plugin).
ROUTER_KEYS = ("http", "https", "https2")


@dataclass(frozen=True)
class Finding:
    """One problem: where (file, 1-based line), how bad ("error" or "warning"), what, and the fix."""

    path: str
    line: int
    severity: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.severity}: {self.message}\n    fix: {self.fix}"


@dataclass(frozen=True)
class Option:
    """One option as uWSGI reads it from a file."""

    key: str
    value: str
    path: Path
    line: int


@dataclass
class Instance:
    """The options of one top-level config, includes expanded in place, and what went wrong reading it."""

    top: Path
    options: List[Option] = field(default_factory=list)
    findings: List[Finding] = field(default_factory=list)

    def values(self, key: str) -> List[Option]:
        return [o for o in self.options if o.key == key]

    def last(self, *keys: str) -> Optional[Option]:
        found = [o for o in self.options if o.key in keys]
        return found[-1] if found else None

    def flag(self, *keys: str) -> Optional[Option]:
        """The last of `keys` if it is set to a true value."""
        option = self.last(*keys)
        if option is None or option.value.strip().lower() in FALSE_VALUES:
            return None
        return option

    def placeholder(self, name: str) -> Optional[Tuple[str, Option]]:
        """The value given to uWSGI placeholder `name` (set-placeholder / set-ph), last wins."""
        found = None
        for o in self.options:
            if o.key in ("set-placeholder", "set-ph"):
                key, sep, value = o.value.partition("=")
                if sep and key.strip() == name:
                    found = (value.strip(), o)
        return found


def _finding(option_or_path: Option | Path, severity: str, message: str, fix: str, line: int = 0) -> Finding:
    if isinstance(option_or_path, Option):
        return Finding(str(option_or_path.path), option_or_path.line, severity, message, fix)
    return Finding(str(option_or_path), line, severity, message, fix)


def _ini(path: Path) -> bool:
    return path.suffix in INI_SUFFIXES


def _kv(path: Path, key: str, value: str) -> str:
    """``key: value`` (YAML) or ``key = value`` (ini), in backquotes, as file `path` writes it."""
    return f"`{key} = {value}`" if _ini(path) else f"`{key}: {value}`"


def _conf(path: Path, name: str) -> str:
    """The shipped base config `name` ("broadcast") of the kind of file `path`."""
    return f"conf/{name}.ini" if _ini(path) else f"conf/{name}.yaml"


def _python_value(text: str) -> str:
    """`text` as a Python literal in a fix: numbers, None/True/False as they are, anything else quoted."""
    value = text.strip()
    if value in ("None", "True", "False"):
        return value
    try:
        float(value)
        return value
    except ValueError:
        return repr(value)


def _app_option_fix(name: str, value: str) -> str:
    """Where per-application option `name` is given: the extension's keyword or the Flask config key."""
    declared = settings.app_option(name)
    literal = _python_value(value)
    return (f"give it to the app: `WebSocket(app, {name}={literal})`, or the Flask config "
            f"`app.config[\"{declared.config_key}\"] = {literal}` (read at each use), and remove it here")


def _app_option_named(text: str) -> Optional[str]:
    """The per-application (extension) option that `text` (``UWSGI_WS_PING_INTERVAL``,
    ``uwsgi-ws-ping-interval``) names, or None."""
    lowered = text.strip().lower().replace("-", "_")
    for prefix in ("uwsgi_ws_",):
        if lowered.startswith(prefix):
            name = lowered[len(prefix):]
            try:
                settings.app_option(name)
            except KeyError:
                return None
            return name
    return None


# -- reading files as uWSGI does ------------------------------------------------------------


def _expand(value: str, path: Path) -> str:
    """uWSGI's per-file magic variables in `value` (%d dir with trailing slash, %p, %s, %n, %e, %%)."""
    table = {
        "d": str(path.parent) + "/",
        "p": str(path),
        "s": path.name,
        "n": path.stem,
        "e": path.suffix.lstrip("."),
        "%": "%",
    }
    return re.sub(r"%([dpsne%])", lambda m: table[m.group(1)], value)


def _yaml_structure(path: Path, text: str) -> List[Finding]:
    """What pyyaml sees that uWSGI's line reader does not: several documents, anchors, aliases.

    uWSGI does not read YAML syntax, so text pyyaml cannot scan (``%d`` at the
    start of a value is fine for uWSGI) ends the scan without a finding; the
    magic ``%`` is masked first so that the common case scans through.
    """
    findings: List[Finding] = []
    masked = text.replace("%", "x")
    try:
        for token in yaml.scan(masked):
            line = token.start_mark.line + 1
            if isinstance(token, yaml.AnchorToken):
                findings.append(_finding(path, "error", f"YAML anchor &{token.value}: uWSGI's YAML reader "
                                         "has no anchors (the text is kept as part of the value)",
                                         "repeat the options, or put them in a file and `include:` it", line))
            elif isinstance(token, yaml.AliasToken):
                findings.append(_finding(path, "error", f"YAML alias *{token.value}: uWSGI's YAML reader has "
                                         "no aliases or merge keys (`<<`)",
                                         "repeat the options, or put them in a file and `include:` it", line))
            elif isinstance(token, yaml.DocumentStartToken) and token.start_mark.line > 0:
                findings.append(_finding(path, "error", "a second YAML document: uWSGI reads one `uwsgi:` "
                                         "section and ignores the rest of the file",
                                         "one document per file; put another instance in its own file", line))
    except yaml.YAMLError:
        pass
    return findings


def _depth(line: str) -> int:
    depth = 0
    for ch in line:
        if ch == " ":
            depth += 1
        elif ch in "\t\r":
            depth += 8
        else:
            break
    return depth


def read_yaml(path: Path, text: str) -> Tuple[List[Option], List[Finding]]:
    """The options uWSGI's embedded YAML reader takes from `text` (section `uwsgi`), and what it drops.

    Mirrors core/yaml.c (uWSGI 2.0): ``#`` starts a comment anywhere, a line
    at the section's depth ends the section, and in the section a line
    without ``": "`` (or starting with ``-``, ``[``, ``{``) ends the whole
    read. Double quotes around keys and values are stripped, single quotes kept.
    """
    options: List[Option] = []
    findings = _yaml_structure(path, text)
    lines = text.split("\n")
    in_section = False
    sections = 0
    current_depth = 0
    for index, raw in enumerate(lines):
        number = index + 1
        hash_at = raw.find("#")
        line = raw if hash_at < 0 else raw[:hash_at]
        if hash_at > 0 and raw[:hash_at].strip() and not raw[hash_at - 1].isspace():
            findings.append(_finding(path, "warning", "uWSGI cuts this line at '#' (a comment starts "
                                     "anywhere, not only after a space)",
                                     "avoid '#' in values (use a file, or an ini config)", number))
        if not line.strip(" \t\r"):
            continue
        depth = _depth(line)
        if depth <= current_depth:
            current_depth = depth
            if in_section:
                rest = [i + 1 for i in range(index, len(lines)) if lines[i].split("#")[0].strip()]
                if re.match(r"\s*[\"]?uwsgi[\"]?\s*:", line):
                    findings.append(_finding(path, "error", "a second `uwsgi:` section: uWSGI reads the "
                                             "first one only", "merge it into the first section", number))
                elif rest and any(_depth(lines[i - 1]) > depth for i in rest):
                    findings.append(_finding(path, "error", f"uWSGI's `uwsgi:` section ends at line {number} "
                                             f"(`{line.strip()}`): the option lines below it are ignored",
                                             "keep every option indented under `uwsgi:`", number))
                return options, findings
        elif not in_section:
            continue
        key = line.lstrip(" \t\r\"")
        if key[:1] in ("-", "[", "{"):
            if in_section:
                kind = "a block list item" if key[0] == "-" else "a flow collection"
                findings.append(_finding(path, "error", f"{kind}: uWSGI's YAML reader stops here and "
                                         "ignores this line and every option after it",
                                         "write the key once per value (`mule: a` then `mule: b`)", number))
                return options, findings
            continue
        if not in_section:
            name, sep, _ = key.partition(":")
            if sep and name.rstrip(" \t\"") == "uwsgi":
                in_section = True
                sections += 1
            continue
        match = re.search(r":[ \t]", key)
        if match is None:
            following = next((lines[i] for i in range(index + 1, len(lines))
                              if lines[i].split("#")[0].strip()), None)
            nested = following is not None and _depth(following) > depth
            if nested and following is not None and following.strip().startswith("-"):
                message = (f"a block list under `{key.strip().rstrip(':')}`: uWSGI's YAML reader takes "
                           "flat `key: value` lines only; it stops here and ignores every option after it")
                fix = f"write the key once per value (`{key.strip()} a` then `{key.strip()} b`)"
            elif nested:
                message = (f"a nested mapping under `{key.strip().rstrip(':')}`: uWSGI's YAML reader takes "
                           "flat `key: value` lines only; it stops here and ignores every option after it")
                fix = "flatten it: one `key: value` line per option, directly under `uwsgi:`"
            elif key.rstrip().endswith(":"):
                message = (f"`{key.strip()}` has no value: uWSGI's YAML reader stops here and ignores "
                           "every option after it")
                fix = f"give it a value (`{key.strip()} true` for a flag)"
            else:
                message = (f"`{key.strip()}` is not a `key: value` line (a space must follow the colon): "
                           "uWSGI's YAML reader stops here and ignores every option after it")
                fix = "write `key: value`"
            findings.append(_finding(path, "error", message, fix, number))
            return options, findings
        name = key[:match.start()].rstrip(" \t\"")
        value = key[match.end():].lstrip(" \t\r\"").rstrip(" \t\r\"")
        if len(value) >= 2 and value[0] == "'" and value[-1] == "'":
            findings.append(_finding(path, "warning", f"single quotes around `{name}`'s value: uWSGI keeps "
                                     "them as part of the value", "use double quotes, or none", number))
        options.append(Option(name, value, path, number))
    if sections == 0:
        findings.append(_finding(path, "error", "no `uwsgi:` section: uWSGI reads nothing from this file",
                                 "put the options under a top-level `uwsgi:` key", 1))
    return options, findings


def read_ini(path: Path, text: str) -> Tuple[List[Option], List[Finding]]:
    """The options of the ``[uwsgi]`` section of an ini config (core/ini.c: ``key = value`` lines,
    ``;``/``#`` comment lines), and the lines uWSGI would ignore there."""
    options: List[Option] = []
    findings: List[Finding] = []
    section: Optional[str] = None
    sections = 0
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            if section == "uwsgi":
                sections += 1
            continue
        if section != "uwsgi":
            continue
        key, sep, value = line.partition("=")
        if not sep:
            findings.append(_finding(path, "error", f"`{line}` has no `=`: uWSGI ignores this line",
                                     "write `key = value` (`key = true` for a flag)", number))
            continue
        options.append(Option(key.strip(), value.strip(), path, number))
    if sections == 0:
        findings.append(_finding(path, "error", "no [uwsgi] section: uWSGI reads nothing from this file",
                                 "put the options under a `[uwsgi]` line", 1))
    return options, findings


def read(path: Path) -> Tuple[List[Option], List[Finding]]:
    """Read one config file (kind by suffix) without following its includes."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix in INI_SUFFIXES:
        return read_ini(path, text)
    return read_yaml(path, text)


def load(top: Path) -> Instance:
    """The options of config `top`, includes and inherits expanded in place (cycles and missing
    files reported), with the reading problems of every file read."""
    instance = Instance(top)

    def visit(path: Path, stack: Tuple[Path, ...]) -> None:
        options, findings = read(path)
        instance.findings.extend(findings)
        for option in options:
            if option.key in INCLUDE_KEYS:
                target = Path(_expand(option.value, path))
                if not target.is_absolute():
                    target = path.parent / target
                target = Path(os.path.normpath(target))
                if not target.is_file():
                    instance.findings.append(_finding(option, "error", f"{option.key}: {target} does not exist",
                                                      "fix the path (%d is this file's directory, with "
                                                      "a trailing slash)"))
                elif target in stack:
                    instance.findings.append(_finding(option, "error", f"{option.key}: {target} includes itself",
                                                      "remove the cycle"))
                else:
                    instance.options.append(option)
                    visit(target, stack + (target,))
                continue
            instance.options.append(Option(option.key, _expand(option.value, path), option.path, option.line))

    visit(Path(os.path.normpath(top.resolve())), (top.resolve(),))
    return instance


# -- what the installed uWSGI knows -----------------------------------------------------------


def uwsgi_binary() -> Optional[str]:
    """The uwsgi next to this interpreter (a virtualenv's), else the one on PATH, else None."""
    candidate = Path(sys.executable).with_name("uwsgi")
    if candidate.exists():
        return str(candidate)
    return shutil.which("uwsgi")


@functools.cache
def known_options(binary: str) -> FrozenSet[str]:
    """The option names `binary --help` lists (long names, without dashes).

    Raises:
        OSError: the binary cannot be run.
    """
    out = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30).stdout
    return frozenset(re.findall(r"^\s+(?:-\w\|)?--([\w-]+)", out, re.M))


# -- the checks -----------------------------------------------------------------------------


def _int(value: str) -> Optional[int]:
    try:
        return int(value.strip())
    except ValueError:
        return None


def _gevent_importable(instance: Instance) -> Tuple[bool, str]:
    """Whether gevent imports in the instance's Python (its `home`/`virtualenv`, else this one)."""
    home = instance.last("home", "virtualenv", "venv", "pyhome", "H")
    if home is not None:
        python = Path(home.value) / "bin" / "python"
        if python.exists():
            done = subprocess.run([str(python), "-c", "import gevent"], capture_output=True, timeout=60)
            return done.returncode == 0, str(python)
    return importlib.util.find_spec("gevent") is not None, sys.executable


def check_instance(instance: Instance, known: Optional[FrozenSet[str]]) -> List[Finding]:
    """The uwsgi_ws-specific findings for one loaded instance (plus unknown options when `known`)."""
    found: List[Finding] = []
    strict = instance.flag("strict")

    if known is not None:
        for o in instance.options:
            if o.key in known or o.key.startswith("%"):
                continue
            app_option = _app_option_named(o.key)
            if app_option is not None:
                fix = f"{app_option} is a per-application option: " + _app_option_fix(app_option, o.value)
            elif o.key.startswith("uwsgi-ws-") or o.key.startswith("uwsgi_ws"):
                fix = ("uwsgi_ws settings are placeholders: "
                       + _kv(o.path, "set-placeholder", f"{o.key.replace('_', '-')}={o.value}"))
            else:
                close = difflib.get_close_matches(o.key.replace("_", "-"), sorted(known), n=1)
                fix = f"did you mean `{close[0]}`?" if close else "check the spelling (`uwsgi --help` lists them)"
            # strict: uWSGI refuses to start; otherwise the key silently becomes a placeholder
            # (meant, for `%(name)` references; or a typo that configures nothing)
            severity = "error" if strict else "warning"
            why = "strict mode refuses it at start" if strict else "without `strict` it silently becomes a placeholder"
            found.append(_finding(o, severity, f"uWSGI does not know the option `{o.key}` ({why})", fix))

    mules = instance.values("mule")
    for o in mules:
        if o.value.strip().lower() in ("", "true", "1", "yes", "on"):
            found.append(_finding(o, "error", "`mule` without a value starts a mule that runs no code "
                                  "(the broadcast never starts)",
                                  f"name what it runs: {_kv(o.path, 'mule', MODULE_MULE)}, or include "
                                  f"{_conf(o.path, 'broadcast')}"))
    broadcast = [o for o in mules if o.value.strip() == MODULE_MULE or o.value.strip().endswith(MULE_FILE)]
    sharedarea = instance.last("sharedarea")
    if broadcast and sharedarea is None:
        where = broadcast[0].path
        found.append(_finding(broadcast[0], "error", "the broadcast mule without a sharedarea: it has no ring "
                              "to write (publish and subscribe fail)",
                              f"add {_kv(where, 'sharedarea', '4096')} (include {_conf(where, 'broadcast')}: "
                              "it has both)"))
    if sharedarea is not None and not broadcast and not mules:
        where = sharedarea.path
        found.append(_finding(sharedarea, "warning", "a sharedarea without the broadcast mule: ws.publish "
                              "has no mule to send to (PublishError)",
                              f"add {_kv(where, 'mule', MODULE_MULE)} (or include {_conf(where, 'broadcast')}); "
                              "ignore this if the sharedarea is your own"))
    lazy = instance.flag("lazy-apps", "lazy")
    module_mules = [o for o in broadcast if o.value.strip() == MODULE_MULE]
    if lazy is not None and module_mules:
        where = module_mules[0].path
        found.append(_finding(module_mules[0], "error", "lazy-apps with the broadcast mule as module:callable: "
                              "uWSGI 2.0.31 segfaults such a mule about once a second under lazy-apps "
                              f"({lazy.path}:{lazy.line}) and every publish fails",
                              f"run the mule file: include {_conf(where, 'broadcast')} "
                              f"({_kv(where, 'mule', '%d' + MULE_FILE)}), or turn lazy-apps off"))

    passes_websockets = instance.flag("http-websockets") is not None
    for o in [o for o in instance.options if o.key in ROUTER_KEYS]:
        # the workers speaking HTTP themselves: http-socket for http, https-socket (addr,cert,key) for https
        direct = _kv(o.path, "http-socket", o.value) if o.key == "http" else "`https-socket` (addr,cert,key)"
        if not passes_websockets:
            found.append(_finding(o, "error", f"the `{o.key}` router without `http-websockets`: it forwards the "
                                  "101, then drops every frame the client sends, so each WebSocket opens and "
                                  "hangs (uwsgi_ws refuses such handshakes with HTTP 501)",
                                  f"add {_kv(o.path, 'http-websockets', 'true')} next to "
                                  f"{_kv(o.path, o.key, o.value)}, or serve with "
                                  f"{direct} (directly, or behind nginx/HAProxy: "
                                  "conf/nginx.conf, conf/haproxy.cfg)"))
        else:
            found.append(_finding(o, "warning", f"the `{o.key}` router in front of WebSockets: it cuts a "
                                  "WebSocket idle for http-timeout (60 s) with no close frame (uwsgi_ws's pings "
                                  "keep an open one busy), and is one more hop for every frame",
                                  f"serve with {direct} (directly, or behind "
                                  "nginx/HAProxy: conf/nginx.conf, conf/haproxy.cfg)"))

    harakiri = instance.last("harakiri")
    if harakiri is not None and (_int(harakiri.value) or 0) > 0:
        found.append(_finding(harakiri, "error", f"harakiri {harakiri.value}: a WebSocket request lasts as long "
                              "as its connection, so harakiri kills the worker and every WebSocket on it",
                              f"remove harakiri (or {_kv(harakiri.path, 'harakiri', '0')}); bound plain HTTP "
                              "views in the app or the proxy"))

    gevent = instance.last("gevent")
    loop = instance.last("loop")
    uses_gevent = gevent is not None or (loop is not None and loop.value.strip() == "gevent")
    if uses_gevent:
        configured = gevent or loop
        assert configured is not None
        ok, python = _gevent_importable(instance)
        if not ok:
            found.append(_finding(configured, "error", f"gevent configured but not installed for {python}: every "
                                  "worker dies at start (No module named 'gevent') and respawns for ever",
                                  "pip install \"uwsgi_ws[gevent]\""))

    threads = instance.last("threads")
    app = instance.last(*APP_KEYS)
    if app is not None and not uses_gevent and instance.last("async", "ugreen") is None \
            and (threads is None or (_int(threads.value) or 2) <= 1):
        serving = threads or app
        found.append(_finding(serving, "warning", "no concurrency model (no threads above 1, no gevent, no async): "
                              "each worker serves one request at a time; a WebSocket holds it for its whole "
                              "life and every other request, plain HTTP included, waits behind it (uwsgi_ws "
                              "warns at start too)",
                              f"add {_kv(serving.path, 'threads', '16')} (or {_kv(serving.path, 'gevent', '1000')} "
                              f"with uwsgi_ws[gevent]), or include {_conf(serving.path, 'threads')}"))
    limit = _max_connections(instance)
    if threads is not None and not uses_gevent and limit is not None:
        count = _int(threads.value)
        if count is not None and count < limit[0]:
            found.append(_finding(threads, "error", f"threads {count} but max_connections_per_worker "
                                  f"{limit[0]} ({limit[1].path}:{limit[1].line}): past {count} WebSockets "
                                  "a worker has no thread left, the next ones wait unanswered (no 503) "
                                  "and plain HTTP queues behind them",
                                  f"raise threads above {limit[0]} or lower max_connections_per_worker "
                                  f"below {count}"))

    for o in instance.values("env"):
        name, _, value = o.value.partition("=")
        name = name.strip()
        if not name.startswith("UWSGI_WS_"):
            continue
        placeholder = name[len("UWSGI_"):].lower().replace("_", "-")
        app_option = _app_option_named(name)
        dies = (f"; and in this strict config, after a reload uWSGI reads every UWSGI_* environment variable "
                f"as its own option, strict mode refuses `{placeholder}` and the instance exits") if strict else ""
        if app_option is not None:
            found.append(_finding(o, "error" if strict else "warning",
                                  f"env: {name} sets nothing: {app_option} is a per-application option, read "
                                  f"from the app's `WebSocket(...)` keywords and Flask config, not from the "
                                  f"environment{dies}", _app_option_fix(app_option, value)))
        elif strict is not None:
            found.append(_finding(o, "error", f"env: {name} in a strict config: after a reload uWSGI reads "
                                  f"every UWSGI_* environment variable as its own option, strict mode "
                                  f"refuses `{placeholder}` and the instance exits",
                                  _kv(o.path, "set-placeholder", f"uwsgi-{placeholder}={value}").strip("`")))
    for o in instance.values("set-placeholder") + instance.values("set-ph"):
        key, sep, value = o.value.partition("=")
        app_option = _app_option_named(key) if sep else None
        if app_option is not None:
            found.append(_finding(o, "warning", f"placeholder {key.strip()} sets nothing: {app_option} is a "
                                  "per-application option, read from the app's `WebSocket(...)` keywords and "
                                  "Flask config, not from uWSGI", _app_option_fix(app_option, value)))
    return found


def _max_connections(instance: Instance) -> Optional[Tuple[int, Option]]:
    found = instance.placeholder("uwsgi-ws-max-connections-per-worker")
    if found is None:
        for o in instance.values("env"):
            name, _, value = o.value.partition("=")
            if name.strip() == "UWSGI_WS_MAX_CONNECTIONS_PER_WORKER":
                found = (value, o)
    if found is None:
        return None
    number = _int(found[0])
    return None if number is None else (number, found[1])


def config_files(paths: Iterable[Path]) -> List[Path]:
    """`paths` with each directory replaced by the YAML and ini files directly in it (sorted).

    Raises:
        FileNotFoundError: a path does not exist.
    """
    files: List[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir()
                                if p.is_file() and p.suffix in YAML_SUFFIXES + INI_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    return files


def check(paths: Sequence[Path], uwsgi: Optional[str] = None) -> List[Finding]:
    """Lint each config file in `paths` (files or directories) as a top-level config.

    Args:
        paths: config files (.yaml/.yml/.ini) or directories holding them.
        uwsgi: the uwsgi binary whose options are valid (default: the one next
            to this interpreter, else on PATH; none found: a warning, and
            unknown options are not checked).
    Returns:
        The findings, each once (an included file seen from several tops reports once), in file order.
    Raises:
        FileNotFoundError: a path does not exist.
    Blocking: runs ``uwsgi --help`` once per binary (cached) and, for a gevent
    config with ``home:``, that virtualenv's Python.
    """
    files = config_files(paths)
    binary = uwsgi or uwsgi_binary()
    known = None
    findings: List[Finding] = []
    if binary is None:
        findings.append(Finding(str(files[0]) if files else ".", 0, "warning",
                                "no uwsgi binary found: unknown options are not checked",
                                "install uWSGI (pip install uwsgi) or pass --uwsgi PATH"))
    else:
        known = known_options(binary)
    for path in files:
        instance = load(path)
        findings.extend(instance.findings)
        findings.extend(check_instance(instance, known))
    seen: Set[Tuple[str, int, str]] = set()
    unique: List[Finding] = []
    for f in findings:
        key = (f.path, f.line, f.message)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return sorted(unique, key=lambda f: (f.path, f.line))
