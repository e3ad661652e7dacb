"""User-facing errors: the CLI prints their message and exits non-zero, with no traceback."""


class UserError(Exception):
    """Base of every error caused by user input (config, data, names); exit code 2."""

    exit_code = 2


class ConfigError(UserError):
    """A config/stream/CLI value is malformed, unknown or impossible."""


class DataError(UserError):
    """A data file is missing, corrupt, or holds an unexpected value (message names file and line)."""
