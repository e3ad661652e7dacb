"""Shared readers for the upstream benchmark files: every bad row raises DataError naming file:line.

Parsed files are cached per process on (path, mtime, size), so repeated loads of MMLU/MMLU-Pro are
instant; the cache holds immutable tuples of (line, row) and loaders build fresh Records from them.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from ..errors import DataError
from ..textfiles import decode_utf8

Rows = tuple[tuple[int, Any], ...]


def where(path: str | os.PathLike, line: int) -> str:
    """The location prefix used in every data error: "<path>:<line>"."""
    return f"{path}:{line}"


def missing_file(path: Path, benchmark: str, *, hint: str = "") -> DataError:
    """The error for a missing benchmark file/dir: says which path and how to provide it."""
    extra = f" {hint}" if hint else ""
    return DataError(
        f"{benchmark}: {path} not found. Point the data root at the benchmark files with --data-root or "
        f"$CLSHARELORA_DATA (layout: docs/data.md), or load from the HF hub with source='hub'.{extra}"
    )


def _stat_key(path: Path) -> tuple[str, int, int]:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DataError(f"{path} not found") from None
    if not path.is_file():
        raise DataError(f"{path} is not a file")
    return (str(path), st.st_mtime_ns, st.st_size)


def _read_text(path: str) -> str:
    """The whole file as text (gunzipped if it ends in .gz); undecodable bytes are a DataError."""
    try:
        raw = Path(path).read_bytes()
        if path.endswith(".gz"):
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read file: {exc}") from None
    return decode_utf8(raw, path, DataError, " (after gunzip)" if path.endswith(".gz") else "")


@lru_cache(maxsize=512)
def _jsonl_cached(path: str, _mtime: int, _size: int) -> Rows:
    rows = []
    for lineno, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where(path, lineno)}: corrupt JSON line ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{where(path, lineno)}: expected a JSON object, got {type(obj).__name__}")
        rows.append((lineno, obj))
    return tuple(rows)


def read_jsonl(path: str | os.PathLike) -> Rows:
    """((line, object), ...) of a JSON-lines file (optionally .gz); blank lines are skipped."""
    return _jsonl_cached(*_stat_key(Path(path)))


@lru_cache(maxsize=64)
def _json_list_cached(path: str, _mtime: int, _size: int) -> Rows:
    text = _read_text(path)
    dec = json.JSONDecoder()

    seen = [0, 1]  # (position, line) reached so far: items come in order, so counting is incremental

    def line_of(pos: int) -> int:
        if pos < seen[0]:
            return text.count("\n", 0, pos) + 1
        seen[1] += text.count("\n", seen[0], pos)
        seen[0] = pos
        return seen[1]

    def skip_ws(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    pos = skip_ws(0)
    if pos >= len(text) or text[pos] != "[":
        raise DataError(f"{where(path, line_of(pos))}: expected a JSON list of objects")
    pos = skip_ws(pos + 1)
    rows: list[tuple[int, Any]] = []
    if pos < len(text) and text[pos] == "]":
        pos += 1
    else:
        while True:
            start = pos
            try:
                obj, pos = dec.raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where(path, exc.lineno)}: corrupt JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{where(path, line_of(start))}: expected a JSON object, got {type(obj).__name__}")
            rows.append((line_of(start), obj))
            pos = skip_ws(pos)
            if pos < len(text) and text[pos] == ",":
                pos = skip_ws(pos + 1)
                continue
            if pos < len(text) and text[pos] == "]":
                pos += 1
                break
            raise DataError(f"{where(path, line_of(pos))}: corrupt JSON (expected ',' or ']' after an item)")
    if skip_ws(pos) != len(text):
        raise DataError(f"{where(path, line_of(skip_ws(pos)))}: corrupt JSON (extra data after the list)")
    return tuple(rows)


def read_json_list(path: str | os.PathLike) -> Rows:
    """((line, object), ...) of a file holding one JSON list of objects; line = where each object starts."""
    return _json_list_cached(*_stat_key(Path(path)))


@lru_cache(maxsize=512)
def _csv_cached(path: str, _mtime: int, _size: int, ncols: int) -> Rows:
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    rows = []
    start = 1
    try:
        for row in reader:
            if row and len(row) != ncols:
                raise DataError(f"{where(path, start)}: expected {ncols} CSV columns, got {len(row)}")
            if row:
                rows.append((start, tuple(row)))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(f"{where(path, start)}: corrupt CSV ({exc})") from None
    return tuple(rows)


def read_csv(path: str | os.PathLike, ncols: int) -> Rows:
    """((line, fields), ...) of a headerless CSV whose quoted fields may span lines; line = record start."""
    return _csv_cached(*_stat_key(Path(path)), ncols)


def field(row: Mapping[str, Any], name: str, loc: str, kind: type | tuple[type, ...] = str) -> Any:
    """row[name], checked present and of type `kind`; otherwise a DataError naming loc and the field."""
    if not isinstance(row, Mapping):
        raise DataError(f"{loc}: expected an object with field {name!r}, got {type(row).__name__}")
    if name not in row or row[name] is None:
        raise DataError(f"{loc}: missing field {name!r}")
    value = row[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise DataError(f"{loc}: field {name!r} should be {want}, got {type(value).__name__}")
    return value


def str_list(row: Mapping[str, Any], name: str, loc: str) -> list[str]:
    """row[name] as a fresh list of strings (DataError naming loc/field otherwise)."""
    value = field(row, name, loc, (list, tuple))
    if not all(isinstance(v, str) for v in value):
        raise DataError(f"{loc}: field {name!r} should be a list of strings")
    return list(value)

