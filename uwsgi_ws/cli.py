"""The `python -m uwsgi_ws` command line (a CLI entry point: it prints).

    python -m uwsgi_ws conf                 print the directory of the installed configs
    python -m uwsgi_ws conf --copy DIR      copy them into DIR (created; existing files replaced)
    python -m uwsgi_ws check PATH...        lint uWSGI configs and vassals (uwsgi_ws.check)
    python -m uwsgi_ws settings             the table of instance settings (uwsgi_ws.settings)
    python -m uwsgi_ws settings --app       the table of per-application options (the same module)
    python -m uwsgi_ws publish|emit ...     publish from outside uWSGI (uwsgi_ws.client)
    python -m uwsgi_ws --version            the package version
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from . import __version__

#: The configs shipped inside the package (model bases, broadcast + its mule file, metrics, proxies).
CONF_DIR = Path(__file__).resolve().parent / "conf"


def conf_files() -> List[Path]:
    """The files of the installed config directory and its subdirectories, sorted (no caches)."""
    return sorted(p for p in CONF_DIR.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith((".pyc", ".pyo")))


def copy_conf(target: Path) -> List[Path]:
    """Copy the installed configs into `target`, subdirectories kept (created with its parents;
    same-named files replaced).

    Args:
        target: the directory to copy into, e.g. /etc/uwsgi_ws.
    Returns:
        The paths written.
    Raises:
        OSError: `target` cannot be created or written (e.g. it is a file, or permissions).
    """
    written = []
    for source in conf_files():
        dest = target / source.relative_to(CONF_DIR)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
        written.append(dest)
    return written


def _conf(args: argparse.Namespace) -> int:
    if args.copy is None:
        print(CONF_DIR)  # noqa: T201  (CLI output)
        return 0
    try:
        written = copy_conf(Path(args.copy))
    except OSError as exc:
        print(f"error: cannot copy the configs to {args.copy}: {exc}", file=sys.stderr)  # noqa: T201  (CLI output)
        return 1
    for path in written:
        print(path)  # noqa: T201  (CLI output)
    return 0


def _check(argv: Sequence[str], prog: str = "python -m uwsgi_ws check") -> int:
    """The `check` command (`uwsgi_ws.check` finds, this prints): the findings on stdout,
    the summary on stderr; the exit status is 1 on errors, 2 for a missing path."""
    from .check import check, config_files

    parser = argparse.ArgumentParser(prog=prog, description="Lint uWSGI configs and vassals for uwsgi_ws.")
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="config files or directories")
    parser.add_argument("--uwsgi", metavar="BINARY", help="the uwsgi whose options are valid "
                        "(default: next to this Python, else on PATH)")
    args = parser.parse_args(argv)
    try:
        findings = check(args.paths, args.uwsgi)
    except (FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201  (CLI output)
        return 2
    for f in findings:
        print(f)  # noqa: T201  (CLI output)
    errors = sum(f.severity == "error" for f in findings)
    warnings = len(findings) - errors
    files = len(config_files(args.paths))
    print(f"{files} file(s) checked: {errors} error(s), {warnings} warning(s)", file=sys.stderr)  # noqa: T201
    return 1 if errors else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; returns the exit status (0 ok, 1 failure or lint errors, 2 bad usage)."""
    parser = argparse.ArgumentParser(
        prog="python -m uwsgi_ws",
        description="uwsgi_ws: installed configs, the config linter, instance settings, publishing from outside uWSGI.")
    parser.add_argument("--version", action="version", version=f"uwsgi_ws {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    conf = commands.add_parser("conf", help="print the installed config directory (or --copy it)",
                               description="Print the directory of the configs installed with the package "
                               "(include them from vassals), or copy them with --copy DIR.")
    conf.add_argument("--copy", metavar="DIR", help="copy the configs into DIR")
    commands.add_parser("check", help="lint uWSGI configs and vassals", add_help=False)
    commands.add_parser("settings", help="print the table of instance settings (--app: per-app options; Markdown)")
    commands.add_parser("publish", help="publish a message from outside uWSGI (--help: how)", add_help=False)
    commands.add_parser("emit", help="emit an event from outside uWSGI (--help: how)", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "check":
        return _check(rest)
    if args.command in ("publish", "emit"):
        from .client import emit_main, publish_main

        return (publish_main if args.command == "publish" else emit_main)(rest)
    if args.command == "settings" and rest in ([], ["--app"]):
        from .settings import markdown_table

        print(markdown_table("app" if rest else "instance"))  # noqa: T201  (CLI output)
        return 0
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "conf":
        return _conf(args)
    parser.print_help()
    return 2
