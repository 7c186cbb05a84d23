"""The documentation site (docs/, Sphinx): it builds with warnings as errors, every page is in it,
the README's links into docs/ resolve, and a public name without a docstring fails the build."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Dict, Set

import pytest

pytest.importorskip("sphinx", reason="Sphinx is not installed: pip install -e '.[docs]' (the test extra has it)")
pytest.importorskip("furo", reason="furo is not installed: pip install -e '.[docs]'")
pytest.importorskip("myst_parser", reason="myst-parser is not installed: pip install -e '.[docs]'")

from uwsgi_ws import settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def sphinx(source: Path, out: Path) -> subprocess.CompletedProcess:
    """`make docs`'s build: HTML, warnings as errors, every warning reported, from scratch."""
    return subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-q", "-E",
                           str(source), str(out)], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("html")
    done = sphinx(DOCS, out)
    assert done.returncode == 0, f"the docs build failed (make docs):\n{done.stdout}\n{done.stderr}"
    return out


class _Ids(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: Set[str] = set()

    def handle_starttag(self, tag: str, attrs) -> None:
        self.ids.update(value for name, value in attrs if name == "id" and value)


def ids(page: Path) -> Set[str]:
    parser = _Ids()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.ids


def test_the_site_builds_with_warnings_as_errors_and_has_every_page(site):
    pages = sorted(p.stem for p in DOCS.glob("*.md"))
    for needed in ("index", "install", "routes", "configuration", "broadcast", "events", "deployment",
                   "scale-out", "security", "metrics", "testing", "migration", "socketio", "protocol",
                   "performance", "api"):
        assert needed in pages, f"docs/{needed}.md is missing"
    index = (site / "index.html").read_text(encoding="utf-8")
    for page in pages:
        assert (site / f"{page}.html").exists(), page
        if page != "index":
            assert f'href="{page}.html"' in index, f"docs/{page}.md is not in the index's table of contents"


def test_every_readme_link_into_docs_resolves(site):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\((docs/[^)\s]*)\)", readme)
    assert len(links) >= 15, links  # the guides' list at least
    anchors: Dict[str, Set[str]] = {}
    for link in links:
        path, _, anchor = link.partition("#")
        assert (ROOT / path).is_file(), f"README links to {path}, which does not exist"
        if anchor:
            page = site / (Path(path).stem + ".html")
            found = anchors.setdefault(path, ids(page))
            assert anchor in found, f"README links to {link}: no such heading in {path}"


def test_the_options_tables_are_in_the_site(site):
    """configuration.md includes the README's generated tables (tests/test_settings.py keeps those equal
    to uwsgi_ws/settings.py): every declared option and setting is on the built page."""
    page = (site / "configuration.html").read_text(encoding="utf-8")
    for option in settings.APP_OPTIONS:
        assert f"<code class=\"docutils literal notranslate\"><span class=\"pre\">{option.name}</span>" in page, \
            option.name
    for setting in settings.SETTINGS:
        assert setting.placeholder in page and setting.env in page, setting.name


def test_the_api_reference_documents_the_public_names(site):
    import uwsgi_ws
    import uwsgi_ws.client
    import uwsgi_ws.exceptions
    import uwsgi_ws.testing

    found = ids(site / "api.html")
    for name in uwsgi_ws.__all__:
        assert f"uwsgi_ws.{name}" in found or f"uwsgi_ws.exceptions.{name}" in found, name
    for module in (uwsgi_ws.client, uwsgi_ws.testing, uwsgi_ws.exceptions):
        for name in module.__all__:
            if name != "PublishError":  # documented once, in uwsgi_ws.exceptions
                assert f"{module.__name__}.{name}" in found, f"{module.__name__}.{name}"
    assert "uwsgi_ws.socketio.SocketIO" in found and "uwsgi_ws.events.Events" in found


def test_a_public_name_without_a_docstring_or_a_broken_link_fails_the_build(tmp_path):
    """docs/conf.py's settings on a small site: autodoc alone would document an undocumented name in
    silence; a link to a page or a heading that does not exist fails too."""
    source = tmp_path / "docs"
    source.mkdir()
    shutil.copy(DOCS / "conf.py", source / "conf.py")
    (tmp_path / "uwsgi_ws_docs_probe.py").write_text(
        '"""A module for the test."""\n\n\ndef documented() -> int:\n    """Returns 1."""\n    return 1\n\n\n'
        "def undocumented() -> int:\n    return 2\n")
    (source / "index.md").write_text("# Probe\n\n```{eval-rst}\n.. automodule:: uwsgi_ws_docs_probe\n```\n\n"
                                     "## A heading\n\n[here](#a-heading), [gone](gone.md), [nowhere](#no-heading)\n")
    done = sphinx(source, tmp_path / "html")
    assert done.returncode != 0
    assert "function uwsgi_ws_docs_probe.undocumented has no docstring" in done.stderr, done.stderr
    assert "documented has no docstring" not in done.stderr.replace("undocumented has no docstring", "")
    assert "'gone.md'" in done.stderr and "'no-heading'" in done.stderr, done.stderr
    assert "'a-heading'" not in done.stderr
