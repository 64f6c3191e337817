"""Errors of the measurement store; the CLI shows their message as one line."""


class StorageError(Exception):
    """A user-facing problem with the store (URL, schema revision, missing rows)."""
