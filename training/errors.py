"""Errors of networks, data and training; the CLI shows their message as one line."""


class TrainingError(Exception):
    """A user-facing problem building, loading or training a MESS network."""
