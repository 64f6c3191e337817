"""Optuna search: multi-objective (NSGA-II by default), per-exit thresholds, shared studies.

Each trial picks up to `max_exits` slots (an exit id or "none"); slots at the same position keep
the first, then exits are ordered by position. Constraints go through
`trial.set_constraint` (values <= 0 are feasible). A named study lives in the store's database
URL, so `dse pareto --method optuna --study NAME` started on several machines joins one study;
the candidates are then ranked from every finished trial of the study. Without `--study` the
study stays in memory: the search run and its candidates are what the store keeps.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import replace
from typing import Any

import optuna
from sqlalchemy.exc import SQLAlchemyError

from db.session import exclusive
from dse.constraints import Bounds, explain_empty
from dse.errors import DseError
from dse.evaluate import Evaluation, Evaluator
from dse.search import Progress, SearchResult, excluded_front, feasible, rank
from dse.space import Configuration, SearchSpace

_DIRECTIONS = {"miou": "maximize", "latency": "minimize", "gflops": "minimize"}
NONE = "none"


class OptunaSearcher:
    """NSGA-II (or TPE) over the same space as the exhaustive engine.

    Args:
        storage_url: SQLAlchemy URL of the store, where a named study lives.
        study_name: join or create this study in storage_url; without a name the study stays
            in memory (nobody could join an anonymous study, so storing one is only litter).
        n_trials / timeout_s: this process's budget (Optuna stops at whichever comes first).
        seed: sampler seed (reproducible when one process runs the study).
        sampler: "nsga2" or "tpe".
    """

    name = "optuna"

    def __init__(self, *, storage_url: str | None = None, study_name: str | None = None,
                 n_trials: int = 500, timeout_s: float | None = None, seed: int = 0,
                 sampler: str = "nsga2", max_front: int = 3) -> None:
        if sampler not in ("nsga2", "tpe"):
            raise DseError(f"unknown sampler {sampler!r}; choose nsga2 or tpe")
        if n_trials < 1:
            raise DseError(f"--trials must be >= 1, got {n_trials}")
        self.storage_url, self.study_name = storage_url, study_name
        self.n_trials, self.timeout_s, self.seed = n_trials, timeout_s, seed
        self.sampler, self.max_front = sampler, max_front

    def search(self, ev: Evaluator, space: SearchSpace, *, objectives: list[str],
               bounds: Bounds, progress: Progress | None = None) -> SearchResult:
        if space.mode != "cascade":
            raise DseError("the optuna method searches cascade configurations; use "
                           "--method exhaustive for budgeted and anytime modes")
        previous = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(logging.WARNING)  # its INFO lines are not ours to print
        try:
            return self._search(ev, space, objectives=objectives, bounds=bounds,
                                progress=progress)
        finally:
            optuna.logging.set_verbosity(previous)

    def _search(self, ev: Evaluator, space: SearchSpace, *, objectives: list[str],
                bounds: Bounds, progress: Progress | None) -> SearchResult:
        study = self._study(objectives, bounds)

        def objective(trial: optuna.Trial) -> tuple[float, ...]:
            e = ev.evaluate(suggest(trial, ev, space))
            for key, value in _violations(e, bounds).items():
                trial.set_constraint(key, value)
            values = {"miou": e.miou, "latency": e.latency_ms, "gflops": e.gflops}
            return tuple(values[n] for n in objectives)

        callbacks = []
        if progress is not None:
            def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
                progress(trial.number + 1, self.n_trials)
            callbacks.append(report)
        study.optimize(objective, n_trials=self.n_trials, timeout=self.timeout_s,
                       callbacks=callbacks)
        evaluations = [ev.evaluate(config_of(t.params, ev, space))
                       for t in study.get_trials(deepcopy=False,
                                                 states=(optuna.trial.TrialState.COMPLETE,))]
        baseline = ev.baseline()
        kept = [e for e in evaluations if feasible(e, bounds)]
        if not kept:
            n_sat = {n: sum(feasible(e, Bounds(**{n: getattr(bounds, n)})) for e in evaluations)
                     for n in bounds.names()}
            from dse.exhaustive import _violation
            closest = min(evaluations, key=lambda e: _violation(e, bounds), default=None)
            raise explain_empty(bounds, len(evaluations), n_sat, closest)
        result = rank(kept, objectives, max_front=self.max_front, baseline=baseline,
                      n_evaluated=len(evaluations), method=self.name)
        return replace(result, excluded=excluded_front(evaluations, objectives, bounds))

    def _study(self, objectives: list[str], bounds: Bounds) -> optuna.Study:
        sampler: optuna.samplers.BaseSampler
        if self.sampler == "nsga2":  # constraints come from trial.set_constraint (Optuna >= 5)
            sampler = optuna.samplers.NSGAIISampler(seed=self.seed)
        else:
            sampler = optuna.samplers.TPESampler(seed=self.seed)
        directions: list[Any] = [_DIRECTIONS[n] for n in objectives]
        optuna.logging.set_verbosity(logging.WARNING)
        # Optuna creates its tables without a lock: workers starting one study on a new
        # database at once would race, so they take turns on the store until the study is open.
        try:
            storage = self.storage_url if self.study_name is not None else None
            with exclusive(storage) if storage is not None else nullcontext():
                study = optuna.create_study(storage=storage, study_name=self.study_name,
                                            sampler=sampler, directions=directions,
                                            load_if_exists=self.study_name is not None)
        except (ValueError, optuna.exceptions.OptunaError, SQLAlchemyError) as exc:
            first = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            raise DseError(f"cannot open Optuna study {self.study_name!r}: {first}") from exc
        if [d.name.lower() for d in study.directions] != directions:
            raise DseError(f"study {self.study_name!r} optimises other objectives; "
                           "use another --study name")
        return study


def suggest(trial: optuna.Trial, ev: Evaluator, space: SearchSpace) -> Configuration:
    """Draw a configuration's parameters on a trial."""
    choices = [NONE, *space.exit_ids]
    for i in range(space.max_exits):
        trial.suggest_categorical(f"exit_{i}", choices)
        if space.per_exit_thresholds:
            trial.suggest_categorical(f"th_pix_{i}", list(space.th_pix))
    if not space.per_exit_thresholds:
        trial.suggest_categorical("th_pix", list(space.th_pix))
    trial.suggest_categorical("th_img", list(space.th_img))
    return config_of(trial.params, ev, space)


def config_of(params: dict[str, object], ev: Evaluator, space: SearchSpace) -> Configuration:
    """The configuration a trial's parameters describe (one exit per position, ordered)."""
    chosen: dict[int, tuple[str, float]] = {}
    for i in range(space.max_exits):
        exit_id = str(params.get(f"exit_{i}", NONE))
        if exit_id == NONE:
            continue
        th = params.get(f"th_pix_{i}", params.get("th_pix"))
        position = ev.data.position_index[ev.index[exit_id]]
        chosen.setdefault(position, (exit_id, float(th)))  # type: ignore[arg-type]
    slots = [chosen[p] for p in sorted(chosen)]
    return Configuration(exits=tuple(e for e, _ in slots), th_pix=tuple(t for _, t in slots),
                         th_img=float(params["th_img"]))  # type: ignore[arg-type]


def _violations(e: Evaluation, bounds: Bounds) -> dict[str, float]:
    """Optuna constraint values: <= 0 where met."""
    values = {"miou": -e.miou, "latency_ms": e.latency_ms, "gflops": e.gflops}
    limits = {"miou": None if bounds.min_miou is None else -bounds.min_miou,
              "latency_ms": bounds.max_latency_ms, "gflops": bounds.max_gflops}
    return {k: values[k] - v for k, v in limits.items() if v is not None}
