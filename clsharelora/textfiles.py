"""Every YAML, JSON and JSONL input is UTF-8: one decoder whose error names the file, the line, the byte
offset and the bytes found, instead of a UnicodeDecodeError traceback (a file saved as Latin-1 or UTF-16)."""

from __future__ import annotations

import os

from .errors import UserError


def decode_utf8(raw: bytes, path: str | os.PathLike, error: type[UserError], note: str = "") -> str:
    """`raw` as text; undecodable bytes raise `error` ("<path>:<line>: byte <offset>...: not UTF-8 ...")."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        found = raw[exc.start: min(exc.end, exc.start + 4)]
        raise error(f"{path}:{line}: byte {exc.start}{note}: not UTF-8 ({exc.reason}, found {found!r}); "
                    "expected a UTF-8 text file (re-save it as UTF-8)") from None
