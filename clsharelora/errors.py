"""User-facing errors: the CLI prints their message and exits non-zero, with no traceback."""


class UserError(Exception):
    """Base of every error caused by user input (config, data, names); exit code 2."""

    exit_code = 2


class ConfigError(UserError):
    """A config/stream/CLI value is malformed, unknown or impossible."""


class DiskFull(UserError):
    """A write found no space (blocks, inodes or quota) on its file system; what was published stays intact
    (clsharelora/atomic.py), so the same command with --resume continues once space is freed. Exit code 2."""


class DataError(UserError):
    """A data file is missing, corrupt, or holds an unexpected value (message names file and line)."""


def did_you_mean(key: str, known) -> str:
    """' (did you mean 'x'?)' for the closest known name, or '' when nothing is close."""
    import difflib

    known = [str(k) for k in known]
    hint = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    if not hint:  # "lr_rate" -> "lr": a known name that starts the key (or the reverse) beats fuzzy matching
        hint = sorted((k for k in known if key.startswith(k) or k.startswith(key)), key=len, reverse=True)[:1]
    if not hint:
        hint = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    return f" (did you mean {hint[0]!r}?)" if hint else ""
