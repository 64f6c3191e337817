"""The search core: profiles in, Pareto-optimal exit configurations out (numpy, no torch).

Public names are re-exported lazily, so `import dse.errors` (what the CLI needs to map errors)
does not pay for numpy, joblib or Optuna.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AccuracyData": "dse.data",
    "CostData": "dse.data",
    "accuracy_from_records": "dse.data",
    "cost_from_records": "dse.data",
    "Configuration": "dse.space",
    "SearchSpace": "dse.space",
    "build_space": "dse.space",
    "count_configurations": "dse.space",
    "Evaluation": "dse.evaluate",
    "Evaluator": "dse.evaluate",
    "nondominated_sort": "dse.pareto",
    "hypervolume_2d": "dse.pareto",
    "ParetoArchive": "dse.pareto",
    "Constraints": "dse.constraints",
    "NoFeasibleError": "dse.constraints",
    "Searcher": "dse.search",
    "SearchResult": "dse.search",
    "ExhaustiveSearcher": "dse.exhaustive",
    "OptunaSearcher": "dse.optuna_search",
    "SearchRequest": "dse.run",
    "run_search": "dse.run",
    "load_problem": "dse.run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dse' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
