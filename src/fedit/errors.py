"""Errors fedit raises for user mistakes.

Every user-facing problem (bad flag, bad file, bad record, bad client update) is a
:class:`FeditError` whose message is one line saying what is wrong and where. The CLI
prints that line and exits non-zero; it never shows a traceback for these.
"""

from __future__ import annotations


class FeditError(Exception):
    """Base class of every error caused by user input (config, data, files, updates)."""

    exit_code = 2


class ConfigError(FeditError):
    """A flag or configuration value is invalid; the message names the flag."""


class DataError(FeditError):
    """A data file or record is invalid; the message names the file and record."""


class ModelError(FeditError):
    """A model could not be resolved or loaded (missing file, offline hub, ...)."""


class UpdateError(FeditError):
    """A client update is malformed (wrong keys, shapes, non-finite values)."""


class CheckpointError(FeditError):
    """A run directory or checkpoint cannot be resumed."""
