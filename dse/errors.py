"""Errors of the search core; the CLI shows their message as one line."""


class DseError(Exception):
    """A user-facing problem in search, evaluation or reporting."""
