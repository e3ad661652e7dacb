"""User-given names are data, not paths: one rule for every name that becomes a file or folder name (study,
stream, experience, strategy label, run), and the check that an output path stays under its --out.

A name like `../../x` or `a/b` would otherwise place a study's cells or a run outside the folder the user
chose; a symbolic link inside --out could do the same, so paths are compared after resolving links.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import ConfigError

NAME_RULE = "letters, digits and '-', '_', '.', '+' only, not starting with '.' (no '/')"
_SAFE_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]*")


def check_name(value, field: str, source: str = "") -> str:
    """`value` if it is a safe file/folder name; else a ConfigError naming the field (and where it came from)."""
    if not isinstance(value, str) or not _SAFE_NAME.fullmatch(value):
        where = f" ({source})" if source else ""
        raise ConfigError(f"{field} {value!r}{where} cannot name a file or folder: allowed are {NAME_RULE}")
    return value


def check_inside(path: str | Path, out: str | Path, field: str) -> None:
    """`path`, with every symbolic link resolved, must lie under `out` (resolved too): nothing is written
    outside the folder the user gave."""
    resolved, root = Path(path).resolve(), Path(out).resolve()
    if not resolved.is_relative_to(root):
        raise ConfigError(f"{field} {path} resolves to {resolved}, outside --out {out} ({root}); remove the "
                          f"symbolic link or choose another --out")
