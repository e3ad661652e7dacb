"""Plug-in registry for strategies: adapters (how a model gets trainable parameters) and CL methods
(what happens around training: replay, EWC, ...).

A plug-in is ONE file in the top-level `strategies/` folder, a module named by an entry point in the
group ``clsharelora.strategies`` of any installed package, or a file in a folder listed in
$CLSHARELORA_STRATEGY_PATH. It registers classes with the decorators below;
nothing in `clsharelora/` changes when a strategy is added.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import importlib.util
import os
import pkgutil
from pathlib import Path
from typing import Any, ClassVar

from .errors import ConfigError, did_you_mean

ENTRY_POINT_GROUP = "clsharelora.strategies"
PATH_ENV = "CLSHARELORA_STRATEGY_PATH"   # extra folders of plug-in files, os.pathsep-separated
KINDS = ("adapter", "cl")

_REGISTRY: dict[str, dict[str, type]] = {kind: {} for kind in KINDS}
_discovered = False


class Strategy:
    """Common base: `options` are the validated keyword options from the config (`adapter:` / `cl:` blocks)."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    #: option name -> default; unknown options in a config are rejected with a "did you mean".
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            key = unknown[0]
            raise ConfigError(
                f"unknown option {key!r} for {self.kind} strategy {self.name!r}{did_you_mean(key, self.defaults)}; "
                f"known options: {', '.join(sorted(self.defaults)) or 'none'}"
            )
        self.options = {**self.defaults, **options}
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for impossible option values (called from __init__)."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, **self.options}


def register(name: str, kind: str):
    """Class decorator: make a Strategy subclass available under `name` for configs and the CLI."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")

    def wrap(cls: type) -> type:
        existing = _REGISTRY[kind].get(name)
        if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"{kind} strategy {name!r} registered twice ({existing} and {cls})")
        cls.name, cls.kind = name, kind
        _REGISTRY[kind][name] = cls
        return cls

    return wrap


def discover() -> None:
    """Import every module of the `strategies` package, every entry point of the plug-in group and every
    file in $CLSHARELORA_STRATEGY_PATH (once per process)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    import strategies

    for info in pkgutil.iter_modules(strategies.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"strategies.{info.name}")
    for ep in md.entry_points(group=ENTRY_POINT_GROUP):
        ep.load()
    for folder in filter(None, os.environ.get(PATH_ENV, "").split(os.pathsep)):
        for path in sorted(Path(folder).glob("*.py")):
            if path.name.startswith("_"):
                continue
            spec = importlib.util.spec_from_file_location(f"clsharelora_user_strategies.{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)


def known(kind: str) -> list[str]:
    discover()
    return sorted(_REGISTRY[kind])


def get(name: str, kind: str) -> type:
    """The registered class, or a ConfigError that lists the known names and the closest match."""
    discover()
    table = _REGISTRY[kind]
    if name not in table:
        raise ConfigError(f"unknown {kind} strategy {name!r}{did_you_mean(name, table)}; "
                          f"known: {', '.join(sorted(table))}")
    return table[name]


def create(name: str, kind: str, **options: Any) -> Strategy:
    return get(name, kind)(**options)
