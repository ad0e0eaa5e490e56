"""The errors a user can fix, below every other module: each names the setting, file or flag, and
`metalearn` (cli.py) reports it in one line without a traceback, exit code 2."""
from __future__ import annotations


class BadInput(ValueError):
    """Input the user can fix (a setting, a file, a flag); the message names it and says what to do.
    `metalearn` reports it without a traceback and exits with code 2."""


class ConfigError(BadInput):
    """An invalid params.yaml; the message names the key."""


class BadFile(BadInput):
    """A file that cannot be used as given (missing, unreadable, truncated, of another kind); the
    message names the file."""
