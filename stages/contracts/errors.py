"""User-facing errors: mistakes a user can fix (params, input files, offline Hub, unknown model).

The CLI (`stages.cli`) prints them as a few lines and exits with status 2, without a traceback
(set `IMAGENET_CLEAN_DEBUG=1` or pass `--debug` to see it). Any other exception is a programming
error and keeps its traceback. Each class also derives from the built-in exception callers would
catch for it, so `except ValueError` keeps working.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; the message names the problem and the fix."""


class ConfigError(UserError, ValueError):
    """A bad params.yaml key or value."""


class InputError(UserError, ValueError):
    """A bad or inconsistent input file (named in the message)."""


class MissingInputError(UserError, FileNotFoundError):
    """An input file or folder that does not exist (named in the message)."""
