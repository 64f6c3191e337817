"""Errors of the profilers; the CLI shows their message as one line."""


class ProfilingError(Exception):
    """A user-facing problem while profiling accuracy or latency."""
