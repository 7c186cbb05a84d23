"""The package's structure, checked on its source (AST, no import of the modules):

1. The broadcast has one face (issue 11): a module outside ``uwsgi_ws/broadcast/``
   imports from ``uwsgi_ws.broadcast`` only names of its ``__all__``, never one of
   its submodules (``broadcast.ring``, ``broadcast.hub``, ``from .broadcast import
   local``...), and reads no other attribute of it.
2. No module reads another module's underscore-private names: ``from .x import
   _name``, ``x._name`` on an imported module, and ``obj._name`` (or
   ``getattr(obj, "_name")``) where ``_name`` is an attribute defined only in other
   modules of the package. Private *modules* (``_uwsgi``, ``_threadstart``,
   ``runtime/_watch``...) are the package's own shared helpers: importing them is fine.

What cannot be moved now is listed in ALLOWED_* below, each with why; the last
tests check that the checker catches each kind of leak (on a package written to
tmp_path) and that no allowance has gone stale.
"""

from __future__ import annotations

import ast
import pathlib
from typing import Dict, Iterator, Optional, Set, Tuple

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "uwsgi_ws"

#: (file, imported module) pairs allowed to reach past the broadcast's face.
ALLOWED_SUBMODULE_IMPORTS: Set[Tuple[str, str]] = {
    # The documented mule entry point (``--mule=uwsgi_ws.mule:run``, kept stable for
    # configs) re-exports the mule's loop: that loop is not part of the face (a worker
    # importing the face must not load the mule's code), this file exists only to give
    # it a stable path.
    ("uwsgi_ws/mule.py", "uwsgi_ws.broadcast.mule"),
}

#: (file, private name) pairs allowed to be read across modules.
ALLOWED_PRIVATE: Set[Tuple[str, str]] = set()  # none today


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


class Package:
    """The modules of a package directory (`root`, named `root.name`), parsed once."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self.name = root.name
        self.trees: Dict[pathlib.Path, ast.Module] = {
            path: ast.parse(path.read_text(encoding="utf-8"), str(path)) for path in sorted(root.rglob("*.py"))}
        self.modules: Set[str] = {self.module_of(path) for path in self.trees}
        # native modules (the optional _speedups) count as modules of the package
        self.modules |= {self.module_of(p.with_suffix(".py")) for p in root.rglob("*.pyi")}
        self.defined: Dict[pathlib.Path, Set[str]] = {path: _attributes(tree) for path, tree in self.trees.items()}

    def module_of(self, path: pathlib.Path) -> str:
        parts = list(path.relative_to(self.root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        return ".".join(parts)

    def rel(self, path: pathlib.Path) -> str:
        return path.relative_to(self.root.parent).as_posix()

    def resolve(self, path: pathlib.Path, node: ast.ImportFrom) -> str:
        """The absolute module name `node` imports from."""
        if not node.level:
            return node.module or ""
        package = self.module_of(path).split(".")
        if path.name != "__init__.py":
            package.pop()
        base = package[:len(package) - node.level + 1]
        return ".".join(base + ([node.module] if node.module else []))

    def face_exports(self, face: str) -> Set[str]:
        """The names of `face`'s ``__all__`` (its ``__all__ = [...]`` and ``+= [...]``)."""
        path = self.root.parent / (face.replace(".", "/") + "/__init__.py")
        names: Set[str] = set()
        for node in ast.walk(self.trees[path]):
            target: Optional[ast.expr] = None
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
            elif isinstance(node, ast.AugAssign):
                target = node.target
            if isinstance(target, ast.Name) and target.id == "__all__":
                value = node.value  # type: ignore[union-attr]
                names |= {e.value for e in getattr(value, "elts", []) if isinstance(e, ast.Constant)}
        return names


def _attributes(tree: ast.Module) -> Set[str]:
    """Attribute names a module defines: functions and classes (methods), attributes
    it assigns (``x._a = ...``), class-body fields, ``__slots__`` entries."""
    out: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del)):
            out.add(node.attr)
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                targets = item.targets if isinstance(item, ast.Assign) else (
                    [item.target] if isinstance(item, ast.AnnAssign) else [])
                for target in targets:
                    if isinstance(target, ast.Name):
                        out.add(target.id)
                        if target.id == "__slots__":
                            out |= {c.value for c in ast.walk(item) if isinstance(c, ast.Constant)
                                    and isinstance(c.value, str)}
    return out


def face_leaks(pkg: Package, face: str) -> Iterator[Tuple[str, int, str]]:
    """(file, line, what) for each reach past `face` (e.g. "uwsgi_ws.broadcast") by a
    module outside its folder."""
    exports = pkg.face_exports(face)
    folder = pkg.root.parent / face.replace(".", "/")
    for path, tree in pkg.trees.items():
        if folder in path.parents:
            continue
        face_aliases: Set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith(face + "."):
                        yield pkg.rel(path), node.lineno, f"import {alias.name}"
                    elif alias.name == face and alias.asname:
                        face_aliases.add(alias.asname)
            elif isinstance(node, ast.ImportFrom):
                source = pkg.resolve(path, node)
                if source.startswith(face + "."):
                    yield pkg.rel(path), node.lineno, f"from {source} import ..."
                elif source == face:
                    for alias in node.names:
                        if alias.name not in exports:
                            yield pkg.rel(path), node.lineno, f"from {face} import {alias.name} (not in its __all__)"
                else:  # from uwsgi_ws import broadcast
                    face_aliases |= {a.asname or a.name for a in node.names if f"{source}.{a.name}" == face}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in face_aliases and node.attr not in exports):
                yield pkg.rel(path), node.lineno, f"{node.value.id}.{node.attr} (not in {face}.__all__)"


def private_reads(pkg: Package) -> Iterator[Tuple[str, int, str]]:
    """(file, line, name) for each read of another module's underscore-private name."""
    for path, tree in pkg.trees.items():
        own = pkg.defined[path]
        others = set().union(*(names for p, names in pkg.defined.items() if p != path))
        module_aliases: Set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                source = pkg.resolve(path, node)
                if source.split(".")[0] != pkg.name:
                    continue
                for alias in node.names:
                    full = f"{source}.{alias.name}"
                    if full in pkg.modules:
                        module_aliases.add(alias.asname or alias.name)
                    elif _private(alias.name):
                        yield pkg.rel(path), node.lineno, alias.name
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == pkg.name:
                        module_aliases.add(alias.asname or alias.name.split(".")[0])
        for node in ast.walk(tree):
            name: Optional[str] = None
            owner: Optional[ast.expr] = None
            if isinstance(node, ast.Attribute) and _private(node.attr):
                name, owner = node.attr, node.value
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) >= 2
                  and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
                  and _private(node.args[1].value)):
                name, owner = node.args[1].value, node.args[0]
            if name is None or owner is None:
                continue
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if isinstance(owner, ast.Name) and owner.id in module_aliases:
                if f"{pkg.name}.{name}" not in pkg.modules and not any(m.endswith(f".{name}") for m in pkg.modules):
                    yield pkg.rel(path), node.lineno, name
            elif name not in own and name in others:
                yield pkg.rel(path), node.lineno, name


@pytest.fixture(scope="module")
def package() -> Package:
    return Package(ROOT)


def test_broadcast_has_one_face(package: Package) -> None:
    found = [(f, line, what) for f, line, what in face_leaks(package, "uwsgi_ws.broadcast")
             if (f, what.split()[1]) not in ALLOWED_SUBMODULE_IMPORTS]
    assert not found, ("modules outside uwsgi_ws/broadcast/ reach past its face (use or add a name of "
                       "uwsgi_ws.broadcast.__all__ with a meaning):\n" +
                       "\n".join(f"  {f}:{line}: {what}" for f, line, what in found))


def test_no_private_names_across_modules(package: Package) -> None:
    found = [(f, line, name) for f, line, name in private_reads(package) if (f, name) not in ALLOWED_PRIVATE]
    assert not found, ("modules read other modules' private names (give the owner a public method):\n" +
                       "\n".join(f"  {f}:{line}: {name}" for f, line, name in found))


def test_allowances_are_still_needed(package: Package) -> None:
    """An allowance whose leak is gone must be deleted (the list only shrinks)."""
    leaks = {(f, what.split()[1]) for f, _, what in face_leaks(package, "uwsgi_ws.broadcast")}
    reads = {(f, name) for f, _, name in private_reads(package)}
    assert ALLOWED_SUBMODULE_IMPORTS - leaks == set()
    assert ALLOWED_PRIVATE - reads == set()


def _write(root: pathlib.Path, files: Dict[str, str]) -> Package:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return Package(root / "pkg")


FACE = '__all__ = ["Broadcast", "publish"]\nfrom .hub import Hub as Broadcast\ndef publish(): pass\n'


@pytest.mark.parametrize("source, what", [
    ("from .broadcast.ring import FLAG_EVENT\n", "from pkg.broadcast.ring import ..."),
    ("from .broadcast import hub\n", "from pkg.broadcast import hub (not in its __all__)"),
    ("from .broadcast import Hub\n", "from pkg.broadcast import Hub (not in its __all__)"),
    ("import pkg.broadcast.hub\n", "import pkg.broadcast.hub"),
    ("def f():\n    from pkg.broadcast.hub import Hub\n", "from pkg.broadcast.hub import ..."),
    ("from . import broadcast\nbroadcast.hub.Hub\n", "broadcast.hub (not in pkg.broadcast.__all__)"),
])
def test_face_checker_catches(tmp_path: pathlib.Path, source: str, what: str) -> None:
    pkg = _write(tmp_path, {"__init__.py": "", "broadcast/__init__.py": FACE,
                            "broadcast/hub.py": "class Hub: pass\n", "broadcast/ring.py": "FLAG_EVENT = 4\n",
                            "user.py": source})
    assert [w for _, _, w in face_leaks(pkg, "pkg.broadcast")] == [what]


def test_face_checker_allows_the_face(tmp_path: pathlib.Path) -> None:
    pkg = _write(tmp_path, {"__init__.py": "", "broadcast/__init__.py": FACE,
                            "broadcast/hub.py": "class Hub: pass\n",
                            "user.py": "from .broadcast import Broadcast, publish\nfrom . import broadcast\n"
                                       "broadcast.publish()\n"})
    assert list(face_leaks(pkg, "pkg.broadcast")) == []


@pytest.mark.parametrize("source, name", [
    ("from .hub import _helper\n", "_helper"),
    ("from . import hub\nhub._helper()\n", "_helper"),
    ("def f(h):\n    return h._last\n", "_last"),
    ("def f(h):\n    return getattr(h, '_last', 0)\n", "_last"),
])
def test_private_checker_catches(tmp_path: pathlib.Path, source: str, name: str) -> None:
    pkg = _write(tmp_path, {"__init__.py": "", "_native.pyi": "",
                            "hub.py": "def _helper(): pass\nclass Hub:\n    def __init__(self):\n"
                                      "        self._last = 0\n",
                            "user.py": source})
    assert [(f, n) for f, _, n in private_reads(pkg)] == [("pkg/user.py", name)]


def test_private_checker_allows_own_and_private_modules(tmp_path: pathlib.Path) -> None:
    pkg = _write(tmp_path, {"__init__.py": "", "_native.pyi": "", "_shared.py": "X = 1\n",
                            "hub.py": "class Hub:\n    def __init__(self):\n        self._last = 0\n",
                            "user.py": "from . import _shared, _native\nfrom ._shared import X\n"
                                       "class C:\n    def __init__(self):\n        self._last = 1\n"
                                       "def f(c, d):\n    return c._last, d._unknown, _shared.X\n"})
    assert list(private_reads(pkg)) == []
