"""Search runs, their candidates, and verification of candidates against real runs."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db._common import aware, plain_json
from db.errors import StorageError
from db.models import AccuracyProfile, Candidate, Device, Model, SearchRun, Verification
from db.records import CandidateInput, CandidateRecord, SearchRunRecord, VerificationRecord

RUN_HINT = "`dse pareto` creates search runs"


def _run_record(s: Session, row: SearchRun) -> SearchRunRecord:
    model = s.get(Model, row.model_id)
    device = s.get(Device, row.device_id)
    assert model is not None and device is not None
    return SearchRunRecord(
        id=row.id, model_id=row.model_id, model_name=model.name, device_id=row.device_id,
        device_name=device.name, device_fingerprint=dict(device.fingerprint),
        accuracy_profile_id=row.accuracy_profile_id, method=row.method, mode=row.mode,
        space=dict(row.space), constraints=dict(row.constraints),
        objectives=[str(o) for o in row.objectives], baseline=dict(row.baseline),
        input_shape=[int(d) for d in row.input_shape], duration_s=row.duration_s,
        n_evaluated=row.n_evaluated, created=aware(row.created),
    )


def _run(s: Session, run_id: int) -> SearchRun:
    row = s.get(SearchRun, run_id)
    if row is None:
        raise StorageError(f"unknown search run {run_id}; {RUN_HINT}")
    return row


def create_search_run(
    s: Session,
    *,
    model_id: int,
    device_id: int,
    accuracy_profile_id: int,
    method: str,
    mode: str,
    space: Mapping[str, Any],
    constraints: Mapping[str, Any],
    objectives: Sequence[str],
    baseline: Mapping[str, Any],
    input_shape: Sequence[int],
    duration_s: float = 0.0,
    n_evaluated: int = 0,
) -> SearchRunRecord:
    """A new search run row (every run is its own row; runs are not deduplicated)."""
    if not method or not mode:
        raise ValueError("method and mode must be non-empty strings")
    if duration_s < 0 or n_evaluated < 0:
        raise ValueError("duration_s and n_evaluated must be >= 0")
    if s.get(Model, model_id) is None:
        raise StorageError(f"unknown model id {model_id}; `dse models` lists the stored models")
    if s.get(Device, device_id) is None:
        raise StorageError(f"unknown device id {device_id}; `dse devices` lists the known ones")
    if s.get(AccuracyProfile, accuracy_profile_id) is None:
        raise StorageError(f"unknown accuracy profile id {accuracy_profile_id}")
    row = SearchRun(
        uid=uuid.uuid4().hex, model_id=model_id, device_id=device_id,
        accuracy_profile_id=accuracy_profile_id, method=method, mode=mode,
        space=plain_json(dict(space), field="space"),
        constraints=plain_json(dict(constraints), field="constraints"),
        objectives=[str(o) for o in objectives],
        baseline=plain_json(dict(baseline), field="baseline"),
        input_shape=[int(d) for d in input_shape], duration_s=float(duration_s),
        n_evaluated=int(n_evaluated),
    )
    s.add(row)
    s.flush()
    return _run_record(s, row)


def finish_search_run(
    s: Session, run_id: int, *, duration_s: float, n_evaluated: int
) -> SearchRunRecord:
    """Record how long a run took and how many configurations it evaluated."""
    if duration_s < 0 or n_evaluated < 0:
        raise ValueError("duration_s and n_evaluated must be >= 0")
    row = _run(s, run_id)
    row.duration_s, row.n_evaluated = float(duration_s), int(n_evaluated)
    s.flush()
    return _run_record(s, row)


def get_search_run(s: Session, run_id: int) -> SearchRunRecord:
    return _run_record(s, _run(s, run_id))


def list_search_runs(
    s: Session, *, model_id: int | None = None, device_id: int | None = None
) -> list[SearchRunRecord]:
    stmt = select(SearchRun)
    if model_id is not None:
        stmt = stmt.where(SearchRun.model_id == model_id)
    if device_id is not None:
        stmt = stmt.where(SearchRun.device_id == device_id)
    return [_run_record(s, r) for r in s.scalars(stmt.order_by(SearchRun.id))]


def _intervals(s: Session, run_id: int) -> dict[str, Any]:
    """Bootstrap intervals of a run's candidates, kept in its constraints by candidate index
    (no schema change: they describe the run's predictions, like its resolved bounds)."""
    run = s.get(SearchRun, run_id)
    found = (run.constraints or {}).get("intervals") if run is not None else None
    return found if isinstance(found, dict) else {}


def _candidate_record(row: Candidate, intervals: dict[str, Any] | None = None) -> CandidateRecord:
    return CandidateRecord(
        run_id=row.run_id, index=row.index, front=row.front, exits=list(row.exits),
        th_pix=list(row.th_pix), th_img=row.th_img, miou=row.miou, latency_ms=row.latency_ms,
        latency_p95_ms=row.latency_p95_ms, gflops=row.gflops, exit_rates=dict(row.exit_rates),
        feasible=row.feasible, anytime_ms=list(row.anytime_ms) if row.anytime_ms is not None else None,
        intervals=(intervals or {}).get(str(row.index)),
    )


def add_candidates(s: Session, run_id: int, candidates: Sequence[CandidateInput]) -> int:
    """Store candidates of a run; an index already stored is refused. Returns how many."""
    _run(s, run_id)
    indices = [c.index for c in candidates]
    if len(set(indices)) != len(indices):
        raise ValueError("candidate indices must be unique")
    taken = set(
        s.scalars(
            select(Candidate.index).where(Candidate.run_id == run_id, Candidate.index.in_(indices))
        )
    )
    if taken:
        raise StorageError(f"search run {run_id} already holds candidates {sorted(taken)[:5]}")
    for c in candidates:
        s.add(
            Candidate(
                run_id=run_id, index=c.index, front=c.front, exits=list(c.exits),
                th_pix=list(c.th_pix), th_img=c.th_img, miou=c.miou, latency_ms=c.latency_ms,
                latency_p95_ms=c.latency_p95_ms, gflops=c.gflops, exit_rates=dict(c.exit_rates),
                feasible=bool(c.feasible), anytime_ms=c.anytime_ms,
            )
        )
    s.flush()
    return len(candidates)


def list_candidates(s: Session, run_id: int, *, front: int | None = None) -> list[CandidateRecord]:
    """Candidates of a run by index; `front=1` keeps the non-dominated ones."""
    _run(s, run_id)
    stmt = select(Candidate).where(Candidate.run_id == run_id)
    if front is not None:
        stmt = stmt.where(Candidate.front == front)
    found = _intervals(s, run_id)
    return [_candidate_record(r, found) for r in s.scalars(stmt.order_by(Candidate.index))]


def get_candidate(s: Session, run_id: int, index: int) -> CandidateRecord:
    _run(s, run_id)
    row = s.scalars(
        select(Candidate).where(Candidate.run_id == run_id, Candidate.index == index)
    ).first()
    if row is None:
        count = len(s.scalars(select(Candidate.id).where(Candidate.run_id == run_id)).all())
        raise StorageError(
            f"search run {run_id} has no candidate {index} (it has {count}, numbered from 0)"
        )
    return _candidate_record(row, _intervals(s, run_id))


def _verification_record(s: Session, row: Verification) -> VerificationRecord:
    device = s.get(Device, row.device_id)
    assert device is not None
    return VerificationRecord(
        id=row.id, run_id=row.run_id, candidate_index=row.candidate_index,
        device_id=row.device_id, device_name=device.name, dataset=row.dataset, split=row.split,
        predicted=dict(row.predicted), measured=dict(row.measured), created=aware(row.created),
    )


def add_verification(
    s: Session,
    *,
    run_id: int,
    candidate_index: int,
    device_id: int,
    dataset: str,
    split: str,
    predicted: Mapping[str, Any],
    measured: Mapping[str, Any],
) -> VerificationRecord:
    """Store what `dse verify` measured for a candidate next to what the search predicted."""
    get_candidate(s, run_id, candidate_index)
    if s.get(Device, device_id) is None:
        raise StorageError(f"unknown device id {device_id}; `dse devices` lists the known ones")
    row = Verification(
        uid=uuid.uuid4().hex, run_id=run_id, candidate_index=candidate_index, device_id=device_id,
        dataset=dataset, split=split, predicted=plain_json(dict(predicted), field="predicted"),
        measured=plain_json(dict(measured), field="measured"),
    )
    s.add(row)
    s.flush()
    return _verification_record(s, row)


def list_verifications(s: Session, run_id: int) -> list[VerificationRecord]:
    stmt = select(Verification).where(Verification.run_id == run_id).order_by(Verification.id)
    return [_verification_record(s, r) for r in s.scalars(stmt)]
