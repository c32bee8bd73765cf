"""User-facing errors: one line naming the file or field and the rule that failed."""

from __future__ import annotations


class DriftloopError(Exception):
    """Base class for errors the CLI reports as one line with a non-zero exit code."""

    exit_code = 2


class StoreError(DriftloopError):
    """A store root, object or file is missing or cannot be read or written."""


class SchemaError(DriftloopError):
    """A schema file is malformed or data does not match it at the file level."""


class IntegrityError(DriftloopError):
    """A stored artifact does not match the hash recorded for it."""

    exit_code = 3


class ConfigError(DriftloopError):
    """A configuration value is out of its allowed range."""
