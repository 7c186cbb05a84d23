"""Sphinx configuration of the uwsgi_ws documentation (``make docs``; tests/test_docs.py).

Built with warnings as errors (``-W``, nitpicky for the package's own names), so a broken
link, a guide left out of the table of contents, an ill-formatted docstring or a public
name without a docstring fails the build.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from typing import Any, List, Set

from sphinx.application import Sphinx
from sphinx.ext.napoleon.docstring import GoogleDocstring
from sphinx.util import logging

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's package, even when not installed

from uwsgi_ws import __version__  # noqa: E402

project = "uwsgi_ws"
author = "the uwsgi_ws authors"
copyright = "the uwsgi_ws authors, MIT license"
version = release = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # the package's docstrings: Google style (Args/Returns/Raises)
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

html_theme = "furo"
html_title = f"uwsgi_ws {version}"
html_static_path = ["_static"]
html_css_files = ["uwsgi_ws.css"]
# uWSGI's YAML dialect (`%d` magic variables, repeated keys) is not YAML to Pygments: shown plain.
suppress_warnings = ["misc.highlighting_failure"]

# MyST: the guides are GitHub-flavoured Markdown; `[x](#some-heading)` links resolve.
myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence"]

# autodoc: the public names; the signatures' types in the text, not in the signature line.
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_mock_imports: List[str] = []
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# Nitpicky for the package's own names: a reference to a uwsgi_ws name that does not exist
# fails; other libraries' names (no intersphinx: the build needs no network) are not checked.
nitpicky = True
nitpick_ignore_regex = [(r"py:.*", r"(?!uwsgi_ws\b).*"), (r"py:.*", r"uwsgi_ws\..*\.(_[A-Za-z]\w*)")]

_log = logging.getLogger("uwsgi_ws.docs")


def _attribute_docstring_as_written(self: GoogleDocstring) -> List[str]:
    """Napoleon reads an attribute's first line as ``type: description`` when it has a colon;
    the package's attribute docstrings are prose ("... in seconds (None: wait for ever)") and
    their types are the annotations: keep the text as written."""
    return list(self._dedent(self._consume_to_end()))


GoogleDocstring._parse_attribute_docstring = _attribute_docstring_as_written  # type: ignore[method-assign]


def _require_docstring(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: List[str]) -> None:
    """A public name documented by autodoc without a docstring is a warning (an error under -W)."""
    if what in ("module", "attribute", "data", "property") or any(part.startswith("_") for part in name.split(".")):
        return
    if not str(getattr(obj, "__module__", "uwsgi_ws")).startswith("uwsgi_ws"):
        return  # another library's object the package re-exports: its docstring is that library's
    if not any(line.strip() for line in lines):
        _log.warning("%s %s has no docstring: the API reference documents every public name", what, name,
                     type="uwsgi_ws", subtype="docstring")


def _skip_inherited_noise(app: Sphinx, what: str, name: str, obj: Any, skip: bool, options: Any) -> Any:
    """Leave out what a class inherits from the standard library (Exception.args, with_traceback...)."""
    if re.fullmatch(r"args|with_traceback|add_note", name):
        return True
    return None


def _canonical(app: Sphinx, env: Any, node: Any, contnode: Any) -> Any:
    """Resolve a reference to a uwsgi_ws name by the object's own module when it is documented
    under another (``uwsgi_ws.PublishError`` is `uwsgi_ws.exceptions.PublishError`)."""
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not target.startswith("uwsgi_ws."):
        return None
    module_name, _, rest = target.partition(".")
    obj: Any = importlib.import_module(module_name)
    for part in rest.split("."):
        try:
            obj = getattr(obj, part) if hasattr(obj, part) else importlib.import_module(f"{module_name}.{part}")
        except ImportError:
            return None
        module_name = f"{module_name}.{part}"
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qualname or f"{module}.{qualname}" == target:
        return None
    domain = env.get_domain("py")
    node = node.deepcopy()
    node["reftarget"] = f"{module}.{qualname}"
    return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], node["reftarget"], node,
                               contnode)


def _more_pages(app: Sphinx, docname: str, source: List[str]) -> None:
    """Pages other engineers add to docs/ (docs/mutation.md, docs/admin.md) join the index's
    "More" table of contents by themselves, so the site never leaves a page out."""
    if docname != root_doc:
        return
    listed = set(re.findall(r"(?m)^([\w-]+)$", source[0]))
    more = sorted(path.stem for path in Path(app.srcdir).glob("*.md") if path.stem not in listed | {root_doc})
    if more:
        source[0] += "\n```{toctree}\n:caption: More\n:maxdepth: 1\n\n" + "\n".join(more) + "\n```\n"


def _reread_index(app: Sphinx, env: Any, added: Set[str], changed: Set[str], removed: Set[str]) -> List[str]:
    """An incremental build reads the index again, so a page added since is in its "More"."""
    return [root_doc]


def setup(app: Sphinx) -> None:
    app.connect("source-read", _more_pages)
    app.connect("env-get-outdated", _reread_index)
    app.connect("missing-reference", _canonical)
    app.connect("autodoc-process-docstring", _require_docstring)
    app.connect("autodoc-skip-member", _skip_inherited_noise)
