"""Where data and caches live: one place resolves the data root and the cache dir for everyone."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DataError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUILTIN_KINDS = ("streams", "configs")
DATA_ENV = "CLSHARELORA_DATA"
CACHE_ENV = "CLSHARELORA_CACHE"


def data_root(override: str | os.PathLike | None = None) -> Path:
    """The benchmark data root: explicit flag > $CLSHARELORA_DATA > ../shared/data beside the project or cwd."""
    if override is not None:
        root = Path(override).expanduser()
        if not root.is_dir():
            raise DataError(f"data root {root} (from --data-root) is not a directory")
        return root
    env = os.environ.get(DATA_ENV)
    if env:
        root = Path(env).expanduser()
        if not root.is_dir():
            raise DataError(f"data root {root} (from ${DATA_ENV}) is not a directory")
        return root
    for candidate in (PROJECT_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    raise DataError(
        f"no data root found: pass --data-root, set ${DATA_ENV}, or place the benchmark files in "
        f"{PROJECT_ROOT.parent / 'shared' / 'data'} (layout: see docs/data.md)"
    )


def cache_dir() -> Path:
    """The cache for converted model weights: $CLSHARELORA_CACHE or ~/.cache/clsharelora (created on demand)."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "clsharelora").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def builtin_dir(kind: str) -> Path:
    """Where the built-in `streams/` or `configs/` live: inside the installed package (the wheel ships them
    as package data under clsharelora/), else the repository's top-level folder (a source checkout)."""
    if kind not in BUILTIN_KINDS:
        raise ValueError(f"kind must be one of {BUILTIN_KINDS}, got {kind!r}")
    packaged = Path(__file__).resolve().parent / kind
    return packaged if packaged.is_dir() else PROJECT_ROOT / kind


def builtin_names(kind: str) -> list[str]:
    """Names of the built-in streams / configs (file stems), for listings and error messages."""
    return sorted(p.stem for p in builtin_dir(kind).glob("*.yaml"))


def resolve_builtin(path: str | os.PathLike, kind: str) -> Path:
    """`path` itself when it exists; else, for a relative path, the built-in file it names: `demo`,
    `demo.yaml` and `streams/demo.yaml` all mean the shipped streams/demo.yaml, wherever the command runs.
    Returns `path` unchanged when neither exists (the caller reports it)."""
    given = Path(path).expanduser()
    if given.exists() or given.is_absolute():
        return given
    parts = given.parts[1:] if given.parts[:1] == (kind,) else given.parts
    if not parts:
        return given
    name = Path(*parts)
    if name.suffix not in (".yaml", ".yml"):
        name = name.with_name(name.name + ".yaml")
    builtin = builtin_dir(kind) / name
    return builtin if builtin.is_file() else given
