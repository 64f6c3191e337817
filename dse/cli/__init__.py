"""The `dse` command line. Each module registers its commands on `app`."""

from dse.cli import (
    _db,  # noqa: F401
    _demo,  # noqa: F401
    _deploy,  # noqa: F401
    _inspect,  # noqa: F401
    _pareto,  # noqa: F401
    _probe,  # noqa: F401
    _profile,  # noqa: F401
    _report,  # noqa: F401
    _runs,  # noqa: F401
    _train,  # noqa: F401
)
from dse.cli._app import app, main, run

__all__ = ["app", "main", "run"]
