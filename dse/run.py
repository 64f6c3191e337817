"""`dse pareto` as a library call: load the profiles from the store, search, store the run.

The search runs outside any transaction; the run, its candidates (with the bootstrap intervals of
front 1) and the held-out checks are then written in one unit of work, so a failed or
interrupted search stores nothing. Everything a request names (calibration sets, the confidence)
is resolved before the search starts, so a mistake is refused before any work.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from db import repository as repo
from db.errors import StorageError
from db.records import (
    FINAL_EXIT,
    AccuracyProfileRecord,
    CalibrationSetRecord,
    CandidateInput,
    CandidateRecord,
    DeviceRecord,
    ModelRecord,
    SearchRunRecord,
    check_name,
)
from db.session import session_scope
from db.trust import LatencyTrust, latency_trust
from dse.constraints import Bounds, Constraints, pick
from dse.data import accuracy_from_records, cost_from_records
from dse.errors import DseError
from dse.evaluate import Evaluation, Evaluator
from dse.exhaustive import ExhaustiveSearcher
from dse.heldout import HeldOutCheck, check_compatible, check_on
from dse.optuna_search import OptunaSearcher
from dse.pareto import OBJECTIVES
from dse.robust import RobustPick, robust_pick
from dse.search import Progress, Searcher
from dse.space import build_space
from dse.uncertainty import Bootstrap, BootstrapSettings, Intervals, check_probability

METHODS = ("exhaustive", "optuna")


@dataclass(frozen=True, kw_only=True)
class SearchRequest:
    """Everything `dse pareto` asks for."""

    device: str  # a name (its newest fingerprint, of `runtime` when given) or a device id
    runtime: str | None = None
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
    calibration: str | None = None
    check_on: str | None = None
    bootstrap: BootstrapSettings | None = field(default_factory=BootstrapSettings)
    confidence: float | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        bad = [o for o in self.objectives if o not in OBJECTIVES]
        if bad or len(self.objectives) < 2 or len(set(self.objectives)) != len(self.objectives):
            raise ValueError(f"objectives must be two or more distinct names of "
                             f"{', '.join(OBJECTIVES)}, got {','.join(self.objectives)}")
        if self.n_jobs < 1 or self.max_front < 1:
            raise ValueError("workers (n_jobs) and fronts (max_front) must be >= 1")
        if self.study is not None:
            check_name(self.study, field="study")
        if self.per_exit_thresholds and self.method != "optuna":
            raise ValueError("per_exit_thresholds: only the optuna method searches per-exit "
                             "thresholds (the exhaustive space would explode)")
        if self.confidence is not None:
            check_probability(self.confidence, "confidence")
            if self.bootstrap is None:
                raise ValueError("confidence: robust selection needs the bootstrap; drop "
                                 "--bootstrap 0")


@dataclass(frozen=True, kw_only=True)
class Problem:
    """What one search needs, loaded from the store."""

    model: ModelRecord
    device: DeviceRecord
    profile_id: int
    input_shape: tuple[int, ...]
    evaluator: Evaluator
    calibration: CalibrationSetRecord | None = None
    positions: tuple[str, ...] = ()
    device_note: str | None = None  # the name has other setups (db select_device)


@dataclass(frozen=True, kw_only=True)
class HeldOut:
    """The check set of `--check-on`, its baseline there and one check per front-1 candidate."""

    calibration: CalibrationSetRecord
    profile_id: int
    shared_images: int
    baseline: Evaluation
    checks: list[HeldOutCheck]


@dataclass(frozen=True, kw_only=True)
class StoredRun:
    run: SearchRunRecord
    candidates: list[CandidateRecord]
    chosen: int | None
    trust: LatencyTrust | None = None  # what the latencies rest on (db.trust)
    plain: int | None = None  # the target's pick on the point estimates (differs under
    robust: RobustPick | None = None  # --confidence, which picks on the bootstrap bounds)
    held_out: HeldOut | None = None
    num_images: int = 0  # calibration images the search (and the bootstrap) used
    device_note: str | None = None  # the device name has other setups: which one was used


def _describe(c: CalibrationSetRecord) -> str:
    return f"{c.dataset}/{c.split} (id {c.id}, {c.num_samples} images)"


def find_profile(s: Session, model: ModelRecord, ref: str, *,
                 like: AccuracyProfileRecord | None = None) -> AccuracyProfileRecord:
    """The newest complete accuracy profile of `model` on calibration set `ref`.

    `ref` is a calibration set id, its split (``val[1::2]``) or ``dataset/split``; `like` asks
    for the same exit policy settings and exits as another profile (a held-out check).

    Raises:
        DseError: no such set, a set of another model, or profiled with other settings.
    """
    sets = repo.list_calibration_sets(s)
    matches = [c for c in sets if (ref.isdigit() and c.id == int(ref)) or ref in
               (c.split, f"{c.dataset}/{c.split}")]
    profiles = repo.find_accuracy_profiles(s, model.id, complete_only=True)
    mine = {p.calibration_set_id for p in profiles}
    if not matches:
        known = ", ".join(_describe(c) for c in sets if c.id in mine) or "none"
        raise DseError(f"no stored calibration set {ref!r}; model {model.name!r} has {known}; "
                       f"profile it with `dse profile --checkpoint CKPT --device NAME --split "
                       f"'{ref}' --no-latency`")
    ours = [c for c in matches if c.id in mine]
    if not ours:
        raise DseError(f"calibration set {_describe(matches[0])} has no complete accuracy "
                       f"profile of model {model.name!r} (another model or input size was "
                       f"profiled on it); run `dse profile --checkpoint CKPT --device NAME "
                       f"--split '{matches[0].split}' --no-latency` with this model's checkpoint")
    if len(ours) > 1:
        raise DseError(f"{ref!r} names several calibration sets: "
                       f"{', '.join(_describe(c) for c in ours)}; give the id")
    found = [p for p in profiles if p.calibration_set_id == ours[0].id and (
        like is None or (p.settings == like.settings and set(p.exit_ids) == set(like.exit_ids)))]
    if not found:
        raise DseError(f"calibration set {_describe(ours[0])} was profiled with another exit "
                       "policy or other exits than the selection set; re-profile it with the "
                       "same checkpoint")
    return found[0]


def load_problem(s: Session, *, device: str, model: str | None,
                 calibration: str | None = None, runtime: str | None = None) -> Problem:
    """Model, device, accuracy profile (newest, or of `calibration`) and latency profile.

    The latency rows are those of one device fingerprint (`device` and `runtime` select it):
    torch and ONNX Runtime timings of one machine never mix in a search.

    Raises:
        DseError / StorageError: naming the `dse profile` run that provides what is missing.
    """
    choice = repo.select_device(s, device, runtime=runtime)
    dev = choice.device
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
    if calibration is not None:
        profiles = [find_profile(s, mod, calibration)]
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
                   evaluator=Evaluator(data, cost),
                   calibration=repo.get_calibration_set(s, profiles[0].calibration_set_id),
                   positions=tuple(positions), device_note=choice.note)


def load_check_set(s: Session, problem: Problem, ref: str
                   ) -> tuple[AccuracyProfileRecord, CalibrationSetRecord, Evaluator]:
    """The profile of `--check-on` and an evaluator on it with the search's device costs."""
    selection = repo.get_accuracy_profile(s, problem.profile_id)
    profile = find_profile(s, problem.model, ref, like=selection)
    calib = repo.get_calibration_set(s, profile.calibration_set_id)
    if problem.calibration is not None and calib.id == problem.calibration.id:
        raise DseError(f"--check-on {ref!r} is the selection set itself; name another stored "
                       "calibration set (e.g. the other half: val[1::2] for val[::2])")
    data = accuracy_from_records(repo.load_accuracy(s, profile.id),
                                 repo.list_exits(s, problem.model.id), list(problem.positions))
    check_compatible(problem.evaluator.data, data, what=f"calibration set {_describe(calib)}")
    return profile, calib, Evaluator(data, problem.evaluator.cost)


def _intervals_for(boot: Bootstrap, evaluations: list[Evaluation], confidence: float | None
                   ) -> Callable[[list[int]], dict[int, Intervals]]:
    def compute(indices: list[int]) -> dict[int, Intervals]:
        found = boot.intervals_batch([evaluations[i].config for i in indices],
                                     confidence=confidence)
        return dict(zip(indices, found, strict=True))
    return compute


def _check_front(problem: Problem, held: tuple[AccuracyProfileRecord, CalibrationSetRecord,
                                               Evaluator],
                 evaluations: list[Evaluation], indices: list[int], request: SearchRequest,
                 bounds: Bounds) -> HeldOut:
    profile, calib, check_ev = held
    baseline, checks = check_on(problem.evaluator, check_ev,
                                [(i, evaluations[i]) for i in indices],
                                request.constraints, bounds)
    own = set(problem.calibration.sample_ids) if problem.calibration else set()
    return HeldOut(calibration=calib, profile_id=profile.id, baseline=baseline, checks=checks,
                   shared_images=len(own & set(calib.sample_ids)))


def searcher_for(request: SearchRequest, url: str) -> Searcher:
    if request.method == "optuna":
        return OptunaSearcher(storage_url=url, study_name=request.study, n_trials=request.trials,
                              timeout_s=request.timeout_s, seed=request.seed,
                              max_front=request.max_front)
    return ExhaustiveSearcher(n_jobs=request.n_jobs, max_front=request.max_front)


def run_search(engine: Engine, url: str, request: SearchRequest,
               progress: Progress | None = None) -> StoredRun:
    """Load, search, bootstrap front 1, check it on `check_on`, then store it all at once."""
    with session_scope(engine) as s:
        problem = load_problem(s, device=request.device, model=request.model,
                               calibration=request.calibration, runtime=request.runtime)
        trust = latency_trust(s, model_id=problem.model.id, device_id=problem.device.id,
                              input_shape=problem.input_shape)
        held = load_check_set(s, problem, request.check_on) if request.check_on else None
    ev = problem.evaluator
    settings = request.bootstrap if ev.data.num_samples >= 2 else None
    if request.confidence is not None and settings is None:
        raise DseError("--confidence: the calibration set has one image, nothing to resample; "
                       "profile more images (dse profile --split)")
    space = build_space(ev.data, max_exits=request.max_exits, positions=request.positions,
                        heads=request.heads, th_pix=request.th_pix, th_img=request.th_img,
                        mode=request.mode, per_exit_thresholds=request.per_exit_thresholds)
    baseline = ev.baseline()
    bounds = request.constraints.resolve(baseline)
    started = time.perf_counter()
    result = searcher_for(request, url).search(ev, space, objectives=list(request.objectives),
                                               bounds=bounds, progress=progress)
    duration = time.perf_counter() - started
    evaluations, fronts = list(result.candidates), list(result.fronts)
    plain = pick(request.constraints.target, evaluations, fronts)
    chosen, robust = plain, None
    front1 = [i for i, f in enumerate(fronts) if f == 1]
    intervals: dict[int, Intervals] = {}
    constraints = {**request.constraints.to_dict(),
                   "resolved": {n: getattr(bounds, n) for n in bounds.names()}}
    if settings is not None:  # one image: no intervals (nothing to resample)
        compute = _intervals_for(Bootstrap(ev, settings), evaluations, request.confidence)
        intervals.update(compute(front1))
        constraints["bootstrap"] = settings.to_dict()
        if request.confidence is not None:
            constraints["confidence"] = request.confidence
            if request.constraints.target is not None and evaluations:
                robust = robust_pick(request.constraints.target, evaluations,
                                     request.constraints, bounds, intervals, compute)
                chosen = robust.chosen
                constraints["plain_candidate"] = plain
    if chosen is not None:
        constraints["chosen_candidate"] = chosen
    if intervals:  # stored with the run, by candidate index (CandidateRecord.intervals)
        constraints["intervals"] = {str(i): iv.to_dict() for i, iv in sorted(intervals.items())}
    checked = sorted(set(front1) | ({chosen} if chosen is not None else set()))
    held_out = _check_front(problem, held, evaluations, checked, request, bounds) if held else None
    if held_out is not None:
        constraints["check_on"] = {"calibration_set": held_out.calibration.id,
                                   "split": held_out.calibration.split,
                                   "dataset": held_out.calibration.dataset}
    try:
        with session_scope(engine) as s:
            run = repo.create_search_run(
                s, model_id=problem.model.id, device_id=problem.device.id,
                accuracy_profile_id=problem.profile_id, method=result.method, mode=space.mode,
                space=space.to_dict(), constraints=constraints,
                objectives=list(request.objectives), baseline=_baseline(baseline),
                input_shape=list(problem.input_shape), duration_s=duration,
                n_evaluated=result.n_evaluated)
            n = len(result.candidates)
            repo.add_candidates(s, run.id, [
                candidate_input(i, e, f, intervals.get(i)) for i, (e, f) in
                enumerate(zip(evaluations, fronts, strict=True))] + [
                candidate_input(n + i, e, 1, feasible=False)
                for i, e in enumerate(result.excluded)])
            if held_out is not None:
                _store_checks(s, run, held_out)
            stored = repo.list_candidates(s, run.id)
    except ValueError as exc:
        raise StorageError(f"could not store the search run: {exc}") from exc
    return StoredRun(run=run, candidates=stored, chosen=chosen, trust=trust, plain=plain,
                     robust=robust, held_out=held_out, num_images=ev.data.num_samples,
                     device_note=problem.device_note)


def _store_checks(s: Session, run: SearchRunRecord, held: HeldOut) -> None:
    """Each held-out check as a verification row, marked as read from a stored profile."""
    calib = held.calibration
    for check in held.checks:
        repo.add_verification(
            s, run_id=run.id, candidate_index=check.candidate, device_id=run.device_id,
            dataset=calib.dataset, split=calib.split, predicted=check.predicted,
            measured={**check.observed, "source": "stored profile",
                      "check_set": {"calibration_set": calib.id,
                                    "accuracy_profile": held.profile_id,
                                    "images": calib.num_samples,
                                    "shared_images": held.shared_images},
                      "moved_exits": check.moved, "broken": check.broken})


@dataclass(frozen=True, kw_only=True)
class RunSummary:
    """One stored search run as `dse runs` lists it."""

    run: SearchRunRecord
    candidates: int  # stored candidates the constraints allow
    front_one: int
    chosen: CandidateRecord | None  # the candidate `--target` picked, if any


def list_runs(s: Session, *, model: str | None = None, device: str | None = None,
              runtime: str | None = None) -> list[RunSummary]:
    """Every stored search run (oldest first), optionally of one model (id or name), device
    (a name: all its setups; an id: that one) and runtime.

    Raises:
        StorageError: an unknown model or device, named with the close matches.
    """
    model_id = None
    if model is not None:
        model_id = repo.get_model(s, int(model) if model.isdigit() else model).id
    keep_id: int | None = None
    keep_name: str | None = None
    if device is not None:
        found = repo.select_device(s, device, runtime=runtime).device  # explains a miss
        keep_id, keep_name = (found.id, None) if device.strip().isdigit() else (None, found.name)
    out = []
    for run in repo.list_search_runs(s, model_id=model_id):
        if keep_id is not None and run.device_id != keep_id:
            continue
        if keep_name is not None and run.device_name != keep_name:
            continue
        if runtime is not None and repo.device_runtime(run.device_fingerprint) != runtime:
            continue
        candidates = [c for c in repo.list_candidates(s, run.id) if c.feasible]
        index = run.constraints.get("chosen_candidate")
        chosen = next((c for c in candidates if c.index == index), None)
        out.append(RunSummary(run=run, candidates=len(candidates),
                              front_one=sum(c.front == 1 for c in candidates), chosen=chosen))
    return out


def _baseline(e: Evaluation) -> dict[str, float]:
    return {"miou": e.miou, "latency_ms": e.latency_ms, "latency_p95_ms": e.latency_p95_ms,
            "gflops": e.gflops}


def candidate_input(index: int, e: Evaluation, front: int,
                    intervals: Intervals | None = None, *,
                    feasible: bool = True) -> CandidateInput:
    """A store row for an evaluated configuration (with its bootstrap intervals, if any;
    `feasible=False`: one a constraint excluded, stored after the kept ones with its front
    among the unconstrained space)."""
    return CandidateInput(
        index=index, front=front, exits=list(e.config.all_exits), th_pix=list(e.config.th_pix),
        th_img=e.config.th_img, miou=e.miou, latency_ms=e.latency_ms,
        latency_p95_ms=e.latency_p95_ms, gflops=e.gflops, exit_rates=e.exit_rates,
        feasible=feasible, anytime_ms=list(e.anytime_ms) if e.anytime_ms is not None else None,
        intervals=intervals.to_dict() if intervals is not None else None)
