"""`dse pareto` as a library call: load the profiles from the store, search, store the run.

The search runs outside any transaction; the run and its candidates are then written in one
unit of work, so a failed or interrupted search stores nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from db import repository as repo
from db.errors import StorageError
from db.records import (
    FINAL_EXIT,
    CandidateInput,
    CandidateRecord,
    DeviceRecord,
    ModelRecord,
    SearchRunRecord,
)
from db.session import session_scope
from db.trust import LatencyTrust, latency_trust
from dse.constraints import Constraints, pick
from dse.data import accuracy_from_records, cost_from_records
from dse.errors import DseError
from dse.evaluate import Evaluation, Evaluator
from dse.exhaustive import ExhaustiveSearcher
from dse.optuna_search import OptunaSearcher
from dse.pareto import OBJECTIVES
from dse.search import Progress, Searcher
from dse.space import build_space

METHODS = ("exhaustive", "optuna")


@dataclass(frozen=True, kw_only=True)
class SearchRequest:
    """Everything `dse pareto` asks for."""

    device: str
    model: str | None = None
    method: str = "exhaustive"
    objectives: tuple[str, ...] = ("miou", "latency")
    max_exits: int = 3
    positions: tuple[str, ...] | None = None
    heads: tuple[str, ...] | None = None
    th_pix: tuple[float, ...] | None = None
    th_img: tuple[float, ...] | None = None
    mode: str = "cascade"
    per_exit_thresholds: bool = False
    constraints: Constraints = field(default_factory=Constraints)
    n_jobs: int = 1
    max_front: int = 3
    study: str | None = None
    trials: int = 500
    timeout_s: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        bad = [o for o in self.objectives if o not in OBJECTIVES]
        if bad or len(self.objectives) < 2 or len(set(self.objectives)) != len(self.objectives):
            raise ValueError(f"objectives must be two or more distinct names of "
                             f"{', '.join(OBJECTIVES)}, got {','.join(self.objectives)}")
        if self.n_jobs < 1 or self.max_front < 1:
            raise ValueError("n_jobs and max_front must be >= 1")
        if self.per_exit_thresholds and self.method != "optuna":
            raise ValueError("per_exit_thresholds: only the optuna method searches per-exit "
                             "thresholds (the exhaustive space would explode)")


@dataclass(frozen=True, kw_only=True)
class Problem:
    """What one search needs, loaded from the store."""

    model: ModelRecord
    device: DeviceRecord
    profile_id: int
    input_shape: tuple[int, ...]
    evaluator: Evaluator


@dataclass(frozen=True, kw_only=True)
class StoredRun:
    run: SearchRunRecord
    candidates: list[CandidateRecord]
    chosen: int | None
    trust: LatencyTrust | None = None  # what the latencies rest on (db.trust)


def load_problem(s: Session, *, device: str, model: str | None) -> Problem:
    """Model, device, newest complete accuracy profile and the device's latency profile.

    Raises:
        DseError / StorageError: naming the `dse profile` run that provides what is missing.
    """
    dev = repo.get_device(s, device)
    if model is None:
        timed = [m for m in repo.list_models(s)
                 if repo.load_latency(s, model_id=m.id, device_id=dev.id,
                                      include_predicted=True)]
        if not timed:
            raise DseError(f"no model has a latency profile on device {dev.name!r}; run "
                           f"`dse profile --checkpoint CKPT --device {dev.name}`")
        if len(timed) > 1:
            names = ", ".join(f"{m.id} ({m.name})" for m in timed)
            raise DseError(f"several models are profiled on {dev.name!r}: {names}; pass --model")
        mod = timed[0]
    else:
        mod = repo.get_model(s, int(model) if model.isdigit() else model)
    profiles = repo.find_accuracy_profiles(s, mod.id, complete_only=True)
    if not profiles:
        raise DseError(f"model {mod.name!r} has no complete accuracy profile; run "
                       f"`dse profile --checkpoint CKPT --device {dev.name} --accuracy`")
    # predicted (few-shot) rows count: the search says what it rests on (db.trust)
    latency = repo.load_latency(s, model_id=mod.id, device_id=dev.id, include_predicted=True)
    if not latency:
        raise DseError(f"model {mod.name!r} has no latency profile on device {dev.name!r}; run "
                       f"`dse profile --checkpoint CKPT --device {dev.name} --latency`")
    newest = max(latency, key=lambda r: r.created)
    shape = tuple(newest.input_shape)
    latency = [r for r in latency if tuple(r.input_shape) == shape and r.batch == newest.batch
               and r.dtype == newest.dtype]
    positions = list(mod.architecture.get("positions", []))
    exits = repo.list_exits(s, mod.id)
    if not positions:
        positions = sorted({e.position for e in exits if e.exit_id != FINAL_EXIT},
                           key=lambda p: next(e.position_index for e in exits if e.position == p))
    data = accuracy_from_records(repo.load_accuracy(s, profiles[0].id), exits, positions)
    cost = cost_from_records(latency, positions)
    return Problem(model=mod, device=dev, profile_id=profiles[0].id, input_shape=shape,
                   evaluator=Evaluator(data, cost))


def searcher_for(request: SearchRequest, url: str) -> Searcher:
    if request.method == "optuna":
        return OptunaSearcher(storage_url=url, study_name=request.study, n_trials=request.trials,
                              timeout_s=request.timeout_s, seed=request.seed,
                              max_front=request.max_front)
    return ExhaustiveSearcher(n_jobs=request.n_jobs, max_front=request.max_front)


def run_search(engine: Engine, url: str, request: SearchRequest,
               progress: Progress | None = None) -> StoredRun:
    """Load, search, then store the run and its candidates in one transaction."""
    with session_scope(engine) as s:
        problem = load_problem(s, device=request.device, model=request.model)
        trust = latency_trust(s, model_id=problem.model.id, device_id=problem.device.id,
                              input_shape=problem.input_shape)
    ev = problem.evaluator
    space = build_space(ev.data, max_exits=request.max_exits, positions=request.positions,
                        heads=request.heads, th_pix=request.th_pix, th_img=request.th_img,
                        mode=request.mode, per_exit_thresholds=request.per_exit_thresholds)
    baseline = ev.baseline()
    bounds = request.constraints.resolve(baseline)
    started = time.perf_counter()
    result = searcher_for(request, url).search(ev, space, objectives=list(request.objectives),
                                               bounds=bounds, progress=progress)
    duration = time.perf_counter() - started
    chosen = pick(request.constraints.target, list(result.candidates), list(result.fronts))
    constraints = {**request.constraints.to_dict(),
                   "resolved": {n: getattr(bounds, n) for n in bounds.names()}}
    if chosen is not None:
        constraints["chosen_candidate"] = chosen
    try:
        with session_scope(engine) as s:
            run = repo.create_search_run(
                s, model_id=problem.model.id, device_id=problem.device.id,
                accuracy_profile_id=problem.profile_id, method=result.method, mode=space.mode,
                space=space.to_dict(), constraints=constraints,
                objectives=list(request.objectives), baseline=_baseline(baseline),
                input_shape=list(problem.input_shape), duration_s=duration,
                n_evaluated=result.n_evaluated)
            repo.add_candidates(s, run.id, [
                candidate_input(i, e, f) for i, (e, f) in
                enumerate(zip(result.candidates, result.fronts, strict=True))])
            stored = repo.list_candidates(s, run.id)
    except ValueError as exc:
        raise StorageError(f"could not store the search run: {exc}") from exc
    return StoredRun(run=run, candidates=stored, chosen=chosen, trust=trust)


def _baseline(e: Evaluation) -> dict[str, float]:
    return {"miou": e.miou, "latency_ms": e.latency_ms, "latency_p95_ms": e.latency_p95_ms,
            "gflops": e.gflops}


def candidate_input(index: int, e: Evaluation, front: int) -> CandidateInput:
    """A store row for an evaluated configuration."""
    return CandidateInput(
        index=index, front=front, exits=list(e.config.all_exits), th_pix=list(e.config.th_pix),
        th_img=e.config.th_img, miou=e.miou, latency_ms=e.latency_ms,
        latency_p95_ms=e.latency_p95_ms, gflops=e.gflops, exit_rates=e.exit_rates,
        feasible=True, anytime_ms=list(e.anytime_ms) if e.anytime_ms is not None else None)
