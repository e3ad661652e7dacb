"""Where data and caches live: one place resolves the data root and the cache dir for everyone."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DataError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
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
