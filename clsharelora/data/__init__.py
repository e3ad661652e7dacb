"""Benchmark loaders: one entry point, `load_benchmark`, turning upstream files (or the HF hub) into Records.

Each benchmark module (gsm8k, humaneval, mbpp, codealpaca, mmlu, mmlu_pro) builds Records with one
`build_record` function used by both sources, so files and hub give identical items.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import ConfigError, DataError
from ..paths import data_root
from . import codealpaca, gsm8k, humaneval, mbpp, mmlu, mmlu_pro
from .io import missing_file
from .records import Record
from .subset import seeded_subset

__all__ = ["load_benchmark", "known_benchmarks", "Record", "seeded_subset"]

_MODULES: dict[str, ModuleType] = {m.NAME: m for m in (gsm8k, humaneval, mbpp, codealpaca, mmlu, mmlu_pro)}
SOURCES = ("auto", "files", "hub")


def known_benchmarks() -> dict[str, tuple[str, ...]]:
    """Benchmark name -> its splits, in a fixed order (iterating gives the names)."""
    return {name: m.SPLITS for name, m in _MODULES.items()}


def _module(name: str, split: str, kw: dict[str, Any]) -> ModuleType:
    mod = _MODULES.get(name)
    if mod is None:
        known = ", ".join(f"{n} ({'/'.join(m.SPLITS)})" for n, m in _MODULES.items())
        raise ConfigError(f"unknown benchmark {name!r}; known: {known}")
    if split not in mod.SPLITS:
        raise ConfigError(f"{name}: unknown split {split!r}; known: {', '.join(mod.SPLITS)}")
    extra = sorted(set(kw) - mod.KWARGS)
    if extra:
        allowed = ", ".join(sorted(mod.KWARGS)) or "none"
        raise ConfigError(f"{name}: unknown option(s) {extra}; allowed: {allowed}")
    return mod


def _check_unique(records: list[Record], origin: str) -> None:
    seen: set[str] = set()
    for r in records:
        if r.id in seen:
            raise DataError(f"{origin}: duplicate item id {r.id!r}")
        seen.add(r.id)


def load_benchmark(
    name: str,
    split: str,
    *,
    root: str | os.PathLike | None = None,
    n: int | None = None,
    seed: int = 0,
    source: str = "auto",
    **kw: Any,
) -> list[Record]:
    """All Records of benchmark `name`/`split` (or a seeded subset of n of them, in file order).

    root: the data root (None -> clsharelora.paths.data_root(): $CLSHARELORA_DATA or ../shared/data).
    source: "files" (data root only), "hub" (HF hub only), "auto" (files when present, else the hub).
    kw: benchmark options (mmlu: subjects=[...]; codealpaca: file=...; gsm8k: keep_calc=True).
    """
    mod = _module(name, split, kw)
    if source not in SOURCES:
        raise ConfigError(f"source: must be one of {', '.join(SOURCES)}, got {source!r}")
    if n is not None:
        seeded_subset((), n, seed)  # validate n/seed before any (slow) loading

    if source == "hub":
        records, origin = mod.load_hub(split, **kw), f"{name} (hub)"
    else:
        try:
            root_path: Path | None = data_root(root)
        except DataError:
            if source == "files" or root is not None:
                raise
            root_path = None  # auto with no data root anywhere: the hub (or a packaged file) may serve
        path = mod.file_source(root_path, split, **kw)
        if path is not None and path.exists():
            records, origin = mod.load_files(path, split, **kw), str(path)
        else:
            missing = missing_file(path if path is not None else Path(f"<data root>/{name}"), name)
            if source == "files":
                raise missing
            try:
                records, origin = mod.load_hub(split, **kw), f"{name} (hub)"
            except DataError as hub_err:
                raise DataError(f"{missing} The hub fallback failed too: {hub_err}") from hub_err
    if not records:
        raise DataError(f"{origin}: holds no {name}/{split} items (empty file?); a benchmark split needs at least one")
    _check_unique(records, origin)
    return seeded_subset(records, n, seed)
