"""Plug-in registry for strategies: adapters (how a model gets trainable parameters) and CL methods
(what happens around training: replay, EWC, ...).

A plug-in is ONE file in the top-level `strategies/` folder (installed as `clsharelora.strategies`), a module named by an entry point in the
group ``clsharelora.strategies`` of any installed package, or a file in a folder listed in
$CLSHARELORA_STRATEGY_PATH. It registers classes with the decorators below;
nothing in `clsharelora/` changes when a strategy is added.

Names are read from the files with `ast` (`listed`), so `clsharelora list` imports no plug-in (nor torch).
A plug-in that fails to import costs only its own strategies (one warning line; an error when one of them
is requested); the same name in two files is always an error naming both.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.metadata as md
import importlib.util
import inspect
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .errors import ConfigError, UserError, did_you_mean

ENTRY_POINT_GROUP = "clsharelora.strategies"
PATH_ENV = "CLSHARELORA_STRATEGY_PATH"   # extra folders of plug-in files, os.pathsep-separated
KINDS = ("adapter", "cl")

_REGISTRY: dict[str, dict[str, type]] = {kind: {} for kind in KINDS}
_FAILED: dict[tuple[str, str], str] = {}   # (kind, name) -> "file: error" of a plug-in that failed to import
_discovered = False


class DuplicateStrategy(ConfigError):
    """Two plug-in files register the same (kind, name): always an error, never a silent replacement."""


class Strategy:
    """Common base: `options` are the validated keyword options from the config (`adapter:` / `cl:` blocks)."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    #: option name -> default; unknown options in a config are rejected with a "did you mean".
    defaults: ClassVar[dict[str, Any]] = {}
    #: option name -> one line of help, printed by `clsharelora list --verbose`.
    option_help: ClassVar[dict[str, str]] = {}

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise unknown_option(self.kind, self.name, unknown[0], self.defaults)
        self.options = {**self.defaults, **options}
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for impossible option values (called from __init__)."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, **self.options}


def unknown_option(kind: str, name: str, key: str, known) -> ConfigError:
    return ConfigError(f"unknown option {key!r} for {kind} strategy {name!r}{did_you_mean(key, known)}; "
                       f"known options: {', '.join(sorted(known)) or 'none'}")


def _source(cls: type) -> str:
    """The file a class was defined in (re-importing the same file re-registers, a second file is a duplicate)."""
    try:
        return str(Path(inspect.getfile(cls)).resolve())
    except (TypeError, OSError):
        return f"{cls.__module__}.{cls.__qualname__}"


def source_line(function) -> str:
    """'path/to/file.py, line N' of a function or class, for messages about plug-in code."""
    try:
        _, line = inspect.getsourcelines(function)
        return f"{inspect.getsourcefile(function)}, line {line}"
    except (TypeError, OSError):
        return getattr(function, "__qualname__", repr(function))


def register(name: str, kind: str):
    """Class decorator: make a Strategy subclass available under `name` for configs and the CLI."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")

    def wrap(cls: type) -> type:
        existing = _REGISTRY[kind].get(name)
        if existing is not None and existing is not cls and _source(existing) != _source(cls):
            raise DuplicateStrategy(f"{kind} strategy {name!r} is defined twice: in {_source(existing)} and in "
                                    f"{_source(cls)}; rename one of them")
        cls.name, cls.kind = name, kind
        _REGISTRY[kind][name] = cls
        return cls

    return wrap


@dataclass(frozen=True)
class PluginFile:
    """One plug-in source file and what a static read of it says it registers (no import needed)."""

    path: Path
    module: str                              # the name it is imported under
    names: tuple[tuple[str, str], ...]       # (kind, name) of every @register("name", "kind") with literal args
    dynamic: bool                            # a register(...) call whose arguments are not literals
    error: str | None                        # why it could not be read (syntax error, unreadable)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _scan(path: Path, module: str) -> PluginFile:
    """Read `path` with `ast` and collect its register("name", "kind") calls: strategy names without
    importing the plug-in (and torch, peft, ... with it)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError) as exc:
        return PluginFile(path, module, (), False, _one_line(exc))
    names, dynamic = [], False
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if called != "register":
            continue
        args = list(node.args) + [k.value for k in node.keywords if k.arg in ("name", "kind")]
        if len(args) != 2:   # not our register(name, kind) (e.g. atexit.register(fn))
            continue
        if all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in args):
            names.append((args[1].value, args[0].value))
        else:
            dynamic = True
    return PluginFile(path, module, tuple(names), dynamic, None)


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()
    return text[0] if text else type(exc).__name__


def plugin_files() -> list[PluginFile]:
    """Every plug-in file, in load order: the built-in `strategies/` package, entry points of the group
    ``clsharelora.strategies``, then the folders of $CLSHARELORA_STRATEGY_PATH. Imports nothing."""
    out: list[PluginFile] = []
    spec = importlib.util.find_spec("clsharelora.strategies")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for path in sorted(Path(folder).glob("*.py")):
            if not path.name.startswith("_"):
                out.append(_scan(path, f"clsharelora.strategies.{path.stem}"))
    for ep in md.entry_points(group=ENTRY_POINT_GROUP):
        module = ep.value.partition(":")[0]
        try:
            origin = importlib.util.find_spec(module).origin
        except (ImportError, AttributeError, ValueError) as exc:
            out.append(PluginFile(Path(module), module, (), False, f"entry point {ep.name!r}: {_one_line(exc)}"))
            continue
        out.append(_scan(Path(origin), module))
    for folder in filter(None, os.environ.get(PATH_ENV, "").split(os.pathsep)):
        if not Path(folder).is_dir():
            _warn_once(f"${PATH_ENV} names {folder!r}, which is not a directory; no plug-ins loaded from it")
            continue
        for path in sorted(Path(folder).glob("*.py")):
            if not path.name.startswith("_"):
                out.append(_scan(path, f"clsharelora_user_strategies.{path.stem}"))
    _check_static_duplicates(out)
    return out


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        _warn(message)


def _check_static_duplicates(files: list[PluginFile]) -> None:
    seen: dict[tuple[str, str], Path] = {}
    for f in files:
        for key in f.names:
            if key in seen and seen[key] != f.path:
                raise ConfigError(f"{key[0]} strategy {key[1]!r} is defined twice: in {seen[key]} and in {f.path}; "
                                  "rename one of them")
            seen[key] = f.path


def listed(kind: str) -> list[str]:
    """Strategy names of `kind` read statically from the plug-in files (fast: for `clsharelora list`).
    Files that register names dynamically are imported; files that cannot be read are skipped with a warning."""
    names = set()
    for f in plugin_files():
        if f.error:
            _warn_once(f"plug-in {f.path}: {f.error} (skipped)")
        names.update(n for k, n in f.names if k == kind)
        if f.dynamic:
            discover()
            names.update(_REGISTRY[kind])
    return sorted(names)


def discover() -> None:
    """Import every plug-in file (once per process). A file that fails to import is reported as one warning
    line and skipped; its strategies become an error only when they are requested (see `get`)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    _FAILED.clear()
    for f in plugin_files():
        error = f.error
        before = {kind: dict(table) for kind, table in _REGISTRY.items()}
        if error is None:
            try:
                if f.module.startswith("clsharelora_user_strategies."):
                    spec = importlib.util.spec_from_file_location(f.module, f.path)
                    module = importlib.util.module_from_spec(spec)
                    spec.loader.exec_module(module)
                else:
                    importlib.import_module(f.module)
            except DuplicateStrategy:
                raise
            except (Exception, SystemExit) as exc:  # a broken plug-in must not take the CLI down
                error = _one_line(exc)
        if error is not None:
            for kind in KINDS:  # what the file registered before it failed goes too: a half-run module is out
                _REGISTRY[kind] = before[kind]
            _warn_once(f"plug-in {f.path}: {error} (skipped)")
            for kind, name in f.names:
                _FAILED[(kind, name)] = f"{f.path}: {error}"


def known(kind: str) -> list[str]:
    discover()
    return sorted(_REGISTRY[kind])


def get(name: str, kind: str) -> type:
    """The registered class, or a ConfigError that lists the known names and the closest match."""
    if not _discovered:
        _refuse_unknown_statically(name, kind)
    discover()
    table = _REGISTRY[kind]
    if name not in table and (kind, name) in _FAILED:
        raise ConfigError(f"{kind} strategy {name!r} is defined in a plug-in that failed to import: "
                          f"{_FAILED[(kind, name)]}")
    if name not in table:
        raise _unknown(name, kind, table)
    return table[name]


def _unknown(name: str, kind: str, known) -> ConfigError:
    return ConfigError(f"unknown {kind} strategy {name!r}{did_you_mean(name, known)}; known: {', '.join(sorted(known))}")


def _refuse_unknown_statically(name: str, kind: str) -> None:
    """A misspelt name is refused from the static read alone (no plug-in, nor torch, imported: a typo is
    reported in well under a second) when every file could be read and registers literal names only."""
    files = plugin_files()
    if any(f.dynamic or f.error for f in files):
        return
    names = {n for f in files for k, n in f.names if k == kind}
    if name not in names:
        raise _unknown(name, kind, names)


def describe_class(cls: type) -> str:
    """A strategy for `clsharelora list --verbose`: name, kind, file, first docstring line, and each option
    with its default, its type (the default's) and its help."""
    doc = inspect.cleandoc(cls.__dict__.get("__doc__") or "").split("\n")[0]  # its own, not a base's
    lines = [f"{cls.kind} {cls.name}: {doc}".rstrip(": "), f"  file: {_source(cls)}"]
    help_text = getattr(cls, "option_help", {})
    for key, default in sorted(cls.defaults.items()):
        kind = type(default).__name__ if default is not None else "optional"
        lines.append(f"  {key} = {default!r} ({kind})" + (f"  {help_text[key]}" if key in help_text else ""))
    if not cls.defaults:
        lines.append("  (no options)")
    return "\n".join(lines)


def static_defaults(name: str, kind: str) -> dict[str, Any] | None:
    """The strategy's option defaults read from its file without importing it (plugin_options.py), for
    refusing a misspelt option before torch is imported; None when they cannot be read so (or the plug-ins
    are imported already: then the class is asked). An unknown name is refused here too."""
    from . import plugin_options

    if _discovered:
        return None
    _refuse_unknown_statically(name, kind)
    for f in plugin_files():
        if (kind, name) in f.names:
            return plugin_options.read_defaults(f.path, kind, name)
    return None


def option_defaults(name: str, kind: str) -> dict[str, Any]:
    """The strategy's option defaults: the static read where possible (no import), else the class's."""
    found = static_defaults(name, kind)
    return found if found is not None else dict(get(name, kind).defaults)


def check_option_names(block: dict[str, Any], kind: str) -> None:
    """Refuse a key of an `adapter:` / `cl:` block that its strategy does not know, from the static read
    (no import); what cannot be read statically is checked when the strategy is created."""
    known = static_defaults(block["name"], kind)
    for key in sorted(block) if known is not None else ():
        if key != "name" and key not in known:
            raise unknown_option(kind, block["name"], key, known)


def create(name: str, kind: str, **options: Any) -> Strategy:
    return get(name, kind)(**options)


class PluginError(UserError):
    """A plug-in's own code raised (apply(), an Avalanche callback, ...): the user's code, so one `error:`
    line naming the plug-in file and line and exit 2, not a traceback of the project's internals."""


def _plugin_sources() -> set[Path]:
    """Every .py file next to a plug-in file (helpers such as strategies/_adapter_copies.py included)."""
    out = set()
    for f in plugin_files():
        folder = f.path.resolve().parent
        out.update(p.resolve() for p in folder.glob("*.py"))
    return out


@contextlib.contextmanager
def blame_plugins(log: Path | None = None):
    """Turn an exception raised in plug-in code into a PluginError naming the innermost plug-in frame (file,
    line, function). The full traceback is appended to `log` when its folder exists (the run's log.txt once
    the run directory is there; before that nothing is written). Errors outside plug-in code pass unchanged."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        sources = _plugin_sources()
        frame = next((f for f in reversed(traceback.extract_tb(exc.__traceback__))
                      if Path(f.filename).resolve() in sources), None)
        if frame is None:
            raise
        where = f"plug-in {frame.filename}, line {frame.lineno} (in {frame.name}): {_one_line(exc)}"
        if log is not None and Path(log).parent.is_dir():
            with open(log, "a", encoding="utf-8") as out:
                out.write(f"error: {where}\n{''.join(traceback.format_exception(exc))}")
            where += f" (traceback in {log})"
        raise PluginError(where) from exc
