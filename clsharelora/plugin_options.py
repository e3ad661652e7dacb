"""A plug-in's option names and defaults read from its source with `ast`, as its strategy names are
(registry.py), so that a misspelt option is refused without importing the plug-ins and torch with them
(tens of seconds on a loaded 2-core machine; issue 25 item 3).

Only what Python would evaluate to the same value is read: dict literals of literal values or of module-level
literal constants (of the file, or imported from another with `from ... import`), and spreads of
another class's attribute (`{**AdapterStrategy.defaults, "match": None}`), that class found in the same file
or through `from module import Name` in files of installed packages. Anything else gives None, and the
option is checked when the imported strategy is created; tests/test_fast_errors.py holds the static read
equal to the imported classes' defaults for every built-in strategy.
"""

from __future__ import annotations

import ast
import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any


class _Unknown(Exception):
    """Not statically readable: import instead."""


@lru_cache(maxsize=128)
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _module_file(module: str, package: str | None, level: int) -> Path:
    """The source file of `module` without importing it (nor its parent packages)."""
    if level:
        if not package:
            raise _Unknown
        base = package.split(".")
        base = base[: len(base) - level + 1]
        module = ".".join(base + ([module] if module else []))
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)   # a top-level name: found, not imported
    if spec is None or not spec.submodule_search_locations and rest:
        raise _Unknown
    folder = Path(next(iter(spec.submodule_search_locations))) if spec.submodule_search_locations else None
    if folder is None:
        return Path(spec.origin)
    for part in rest:
        folder = folder / part
    for candidate in (folder / "__init__.py", folder.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    raise _Unknown


def _package_of(path: Path) -> str | None:
    """The dotted package a file lies in (walking up __init__.py files), for relative imports."""
    parts, folder = [], path.parent
    while (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        folder = folder.parent
    return ".".join(parts) or None


def _find_class(path: Path, name: str, depth: int = 0) -> tuple[Path, ast.ClassDef]:
    if depth > 8:
        raise _Unknown
    tree = _parse(path)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return path, node
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    target = _module_file(node.module or "", _package_of(path), node.level)
                    return _find_class(target, alias.name, depth + 1)
    raise _Unknown


def _class_attr(path: Path, cls: ast.ClassDef, attr: str, depth: int = 0) -> dict:
    """The value of `attr` on class `cls`: its own assignment, else its first base's (Strategy's: {})."""
    if depth > 8:
        raise _Unknown
    for node in cls.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == attr for t in node.targets):
            return _value(path, node.value, depth)
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == attr:
            if node.value is None:
                raise _Unknown
            return _value(path, node.value, depth)
    if not cls.bases:
        raise _Unknown
    base = cls.bases[0]
    if not isinstance(base, ast.Name):
        raise _Unknown
    base_path, base_cls = _find_class(path, base.id)
    return _class_attr(base_path, base_cls, attr, depth + 1)


def _value(path: Path, node: ast.expr, depth: int) -> dict:
    if not isinstance(node, ast.Dict):
        raise _Unknown
    out: dict = {}
    for key, value in zip(node.keys, node.values):
        if key is None:   # {**Other.attr}
            if not (isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name)):
                raise _Unknown
            other_path, other = _find_class(path, value.value.id)
            out.update(_class_attr(other_path, other, value.attr, depth + 1))
            continue
        out[_literal(path, key, depth)] = _literal(path, value, depth)
    return out


def _literal(path: Path, node: ast.expr, depth: int) -> Any:
    """A literal, or a module-level constant `NAME = <literal>` of this file or imported from another
    (`from .dropout import DEFAULT as DROPOUT_MASKS_DEFAULT`)."""
    try:
        return ast.literal_eval(node)
    except ValueError:
        pass
    if not isinstance(node, ast.Name) or depth > 8:
        raise _Unknown
    for stmt in _parse(path).body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == node.id for t in stmt.targets):
            return _literal(path, stmt.value, depth + 1)
        if isinstance(stmt, ast.ImportFrom):
            for alias in stmt.names:
                if (alias.asname or alias.name) == node.id:
                    target = _module_file(stmt.module or "", _package_of(path), stmt.level)
                    return _literal(target, ast.Name(id=alias.name), depth + 1)
    raise _Unknown


def read_defaults(path: Path, kind: str, name: str) -> dict[str, Any] | None:
    """The `defaults` of the class registered as (kind, name) in `path`, or None when they cannot be read
    without running the file."""
    try:
        for node in ast.walk(_parse(path)):
            if isinstance(node, ast.ClassDef) and any(_registers(d, kind, name) for d in node.decorator_list):
                return _class_attr(path, node, "defaults")
    except (_Unknown, OSError, SyntaxError, UnicodeDecodeError, RecursionError):
        return None
    return None


def _registers(decorator: ast.expr, kind: str, name: str) -> bool:
    if not isinstance(decorator, ast.Call):
        return False
    func = decorator.func
    called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    args = [a.value for a in decorator.args if isinstance(a, ast.Constant)]
    return called == "register" and args == [name, kind]
