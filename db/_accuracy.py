"""Accuracy profiles: per-image, per-exit counts, written in chunks so a cut run resumes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from db._common import aware, insert_or_get, plain_json, sha256_json
from db.arrays import from_bytes, to_bytes
from db.counts import miou_from_counts, pixel_accuracy_from_counts
from db.errors import StorageError
from db.models import AccuracyChunk, AccuracyProfile, AccuracySummary, CalibrationSet, Model
from db.records import AccuracyArrays, AccuracyProfileRecord, ExitArrays, ExitSummary

RESUME_HINT = "run `dse profile` again to finish it"
DAMAGED_HINT = "the store is damaged: restore it from a backup or profile into a new store"
MAX_COUNT = 2**40  # pixels of one image; far above any real image, far below int64 overflow


def implausible(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, hist: np.ndarray
                ) -> tuple[int, int, str] | None:
    """(exit index, image index, why) of the first counts no set of images can produce, or None.

    tp/fp/fn are [E, n, C] and hist [E, n, B] over the same n images. What every real profile
    satisfies: counts are non-negative and bounded; per image, tp + fn per class is the truth and
    so the same at every exit; tp + fp adds up to the same labelled pixels (only labelled pixels
    are counted); every image's histogram counts the same pixels at a given exit (one input size).
    Where exits disagree, the one off the per-image median is blamed.
    """
    checks: list[tuple[np.ndarray, str]] = []
    for name, a in (("tp", tp), ("fp", fp), ("fn", fn), ("hist", hist)):
        checks.append((np.asarray(((a < 0) | (a > MAX_COUNT)).any(axis=-1)),
                       f"{name} counts outside [0, 2^40]"))
    truth = tp + fn
    checks.append(((tp + fp).sum(axis=-1) != truth.sum(axis=-1),
                   "tp + fp and tp + fn add up to different labelled pixels"))
    checks.append(((truth != np.median(truth, axis=0)[None]).any(axis=-1),
                   "tp + fn (the ground truth) differs from the other exits'"))
    totals = hist.sum(axis=-1)
    checks.append((totals != np.median(totals, axis=1)[:, None],
                   "the confidence histogram counts another number of pixels than the other images'"))
    for bad, why in checks:
        if bad.any():
            e, i = np.argwhere(bad)[0]
            return int(e), int(i), why
    return None


def _edges_array(edges: np.ndarray) -> np.ndarray:
    arr = np.asarray(edges, dtype=np.float64)
    if arr.ndim != 1 or arr.size < 2:
        raise ValueError(f"edges must be 1-D with at least 2 values, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or not np.all(np.diff(arr) > 0):
        raise ValueError("edges must be finite and strictly increasing")
    return arr


def _profile_record(s: Session, row: AccuracyProfile) -> AccuracyProfileRecord:
    summaries = {
        r.exit_id: ExitSummary(
            miou=r.miou, pixel_accuracy=r.pixel_accuracy, mean_confidence=r.mean_confidence
        )
        for r in s.scalars(select(AccuracySummary).where(AccuracySummary.profile_id == row.id))
    }
    return AccuracyProfileRecord(
        id=row.id, model_id=row.model_id, calibration_set_id=row.calibration_set_id,
        settings=dict(row.settings), edges=_edges(row),
        exit_ids=tuple(row.exit_ids), num_classes=row.num_classes, num_samples=row.num_samples,
        complete=row.complete, created=aware(row.created), summaries=summaries,
    )


def _edges(row: AccuracyProfile) -> np.ndarray:
    return from_bytes(row.edges, np.float64, (None,), where=f"dse_accuracy_profile row {row.id} edges")


def _profile(s: Session, profile_id: int) -> AccuracyProfile:
    row = s.get(AccuracyProfile, profile_id)
    if row is None:
        raise StorageError(f"unknown accuracy profile id {profile_id}; `dse profile` measures one")
    return row


def upsert_accuracy_profile(
    s: Session,
    *,
    model_id: int,
    calibration_set_id: int,
    settings: Mapping[str, Any],
    edges: np.ndarray,
    exit_ids: Sequence[str],
    num_classes: int,
) -> AccuracyProfileRecord:
    """The profile of a model on a calibration set with these settings; created when new.

    The key covers the settings, the histogram edges, the exit ids and the class count, so
    measurements taken any other way never mix with these.
    """
    edges_arr = _edges_array(edges)
    ids = [str(e) for e in exit_ids]
    if not ids or len(set(ids)) != len(ids):
        raise ValueError("exit_ids must be non-empty and unique")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    model = s.get(Model, model_id)
    if model is None:
        raise StorageError(f"unknown model id {model_id}; `dse models` lists the stored models")
    calib = s.get(CalibrationSet, calibration_set_id)
    if calib is None:
        raise StorageError(f"unknown calibration set id {calibration_set_id}")
    plain = plain_json(dict(settings), field="settings")
    key = sha256_json(
        {"settings": plain, "edges": edges_arr.tolist(), "exit_ids": ids, "num_classes": num_classes},
        field="settings",
    )
    row = AccuracyProfile(
        model_id=model_id, calibration_set_id=calibration_set_id, settings=plain,
        settings_sha256=key, edges=to_bytes(edges_arr), exit_ids=ids, num_classes=num_classes,
        num_samples=calib.num_samples, complete=False,
    )
    stored, _ = insert_or_get(
        s, row,
        select(AccuracyProfile).where(
            AccuracyProfile.model_id == model_id,
            AccuracyProfile.calibration_set_id == calibration_set_id,
            AccuracyProfile.settings_sha256 == key,
        ),
    )
    return _profile_record(s, stored)


def get_accuracy_profile(s: Session, profile_id: int) -> AccuracyProfileRecord:
    return _profile_record(s, _profile(s, profile_id))


def find_accuracy_profiles(
    s: Session, model_id: int, *, complete_only: bool = False
) -> list[AccuracyProfileRecord]:
    """Profiles of a model, newest first."""
    stmt = select(AccuracyProfile).where(AccuracyProfile.model_id == model_id)
    if complete_only:
        stmt = stmt.where(AccuracyProfile.complete.is_(True))
    return [_profile_record(s, r) for r in s.scalars(stmt.order_by(AccuracyProfile.id.desc()))]


def _ranges(s: Session, profile: AccuracyProfile) -> list[tuple[int, int]]:
    """[start, stop) of the stored chunks (every exit of a chunk is written together)."""
    first = profile.exit_ids[0]
    rows = s.execute(
        select(AccuracyChunk.start, AccuracyChunk.n)
        .where(AccuracyChunk.profile_id == profile.id, AccuracyChunk.exit_id == first)
        .order_by(AccuracyChunk.start)
    ).all()
    return [(int(start), int(start + n)) for start, n in rows]


def add_accuracy_chunk(
    s: Session, profile_id: int, *, start: int, arrays: Mapping[str, ExitArrays]
) -> None:
    """Store the counts of every exit for images [start, start + n).

    A chunk already stored with the same bounds is replaced (re-measuring gives the same
    numbers); one overlapping other bounds is refused.
    """
    profile = _profile(s, profile_id)
    if set(arrays) != set(profile.exit_ids):
        missing = sorted(set(profile.exit_ids) - set(arrays))
        extra = sorted(set(arrays) - set(profile.exit_ids))
        raise ValueError(f"arrays must cover the profile's exits; missing {missing}, extra {extra}")
    sizes = {a.num_samples for a in arrays.values()}
    if len(sizes) != 1:
        raise ValueError(f"arrays must all have the same number of images, got {sorted(sizes)}")
    n = sizes.pop()
    bins = _edges(profile).size - 1
    if n < 1 or start < 0 or start + n > profile.num_samples:
        raise ValueError(
            f"start={start}, n={n} fall outside the calibration set of {profile.num_samples} images"
        )
    for exit_id, a in arrays.items():
        if a.tp.shape[1] != profile.num_classes:
            raise ValueError(f"{exit_id}: tp has {a.tp.shape[1]} classes, expected {profile.num_classes}")
        if a.hist.shape[1] != bins:
            raise ValueError(f"{exit_id}: hist has {a.hist.shape[1]} bins, expected {bins}")
    ids = list(profile.exit_ids)
    stacked = [np.stack([getattr(arrays[e], k) for e in ids]) for k in ("tp", "fp", "fn", "hist")]
    bad = implausible(*stacked)
    if bad is not None:
        raise ValueError(f"counts of exit {ids[bad[0]]!r}, image {start + bad[1]}: {bad[2]}")
    for lo, hi in _ranges(s, profile):
        if lo < start + n and start < hi and (lo, hi) != (start, start + n):
            raise StorageError(
                f"chunk [{start}, {start + n}) overlaps stored chunk [{lo}, {hi}) of profile "
                f"{profile_id}; resume with the same chunk size"
            )
    for exit_id in profile.exit_ids:
        a = arrays[exit_id]
        blobs = {k: to_bytes(getattr(a, k)) for k in ("tp", "fp", "fn", "hist")}
        row = AccuracyChunk(profile_id=profile_id, exit_id=exit_id, start=start, n=n, **blobs)
        stored, inserted = insert_or_get(
            s, row,
            select(AccuracyChunk).where(
                AccuracyChunk.profile_id == profile_id, AccuracyChunk.exit_id == exit_id,
                AccuracyChunk.start == start,
            ),
        )
        if not inserted:
            stored.tp, stored.fp, stored.fn, stored.hist = (
                blobs["tp"], blobs["fp"], blobs["fn"], blobs["hist"],
            )
    s.flush()


def completed_samples(s: Session, profile_id: int) -> int:
    """How many calibration images of the profile are stored."""
    return sum(hi - lo for lo, hi in _ranges(s, _profile(s, profile_id)))


def missing_chunks(s: Session, profile_id: int, *, chunk_size: int) -> list[tuple[int, int]]:
    """[start, stop) ranges still to measure, at most `chunk_size` images each."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    profile = _profile(s, profile_id)
    out: list[tuple[int, int]] = []
    cursor = 0
    for lo, hi in [*_ranges(s, profile), (profile.num_samples, profile.num_samples)]:
        for a in range(cursor, lo, chunk_size):
            out.append((a, min(a + chunk_size, lo)))
        cursor = max(cursor, hi)
    return out


def load_accuracy(s: Session, profile_id: int) -> AccuracyArrays:
    """The whole profile stacked in sample order; refuses an unfinished one."""
    profile = _profile(s, profile_id)
    ranges = _ranges(s, profile)
    if sum(hi - lo for lo, hi in ranges) != profile.num_samples:
        done = sum(hi - lo for lo, hi in ranges)
        raise StorageError(
            f"accuracy profile {profile_id} holds {done} of {profile.num_samples} images; {RESUME_HINT}"
        )
    edges = _edges(profile)
    E, S, C, B = len(profile.exit_ids), profile.num_samples, profile.num_classes, edges.size - 1
    out = {k: np.zeros((E, S, C if k != "hist" else B), dtype=np.int64) for k in ("tp", "fp", "fn", "hist")}
    index = {e: i for i, e in enumerate(profile.exit_ids)}
    row_of = np.zeros((E, S), dtype=np.int64)  # chunk row id per (exit, image); 0: not stored
    for chunk in s.scalars(select(AccuracyChunk).where(AccuracyChunk.profile_id == profile_id)):
        where = _chunk_name(chunk)
        if chunk.exit_id not in index:
            raise StorageError(f"{where} holds counts of an exit its profile does not have; {DAMAGED_HINT}")
        i, sl = index[chunk.exit_id], slice(chunk.start, chunk.start + chunk.n)
        if chunk.start < 0 or chunk.n < 1 or chunk.start + chunk.n > S or row_of[i, sl].any():
            raise StorageError(f"{where} lies outside or across the profile's images; {DAMAGED_HINT}")
        for k in ("tp", "fp", "fn", "hist"):
            out[k][i, sl] = from_bytes(getattr(chunk, k), np.int64, (chunk.n, B if k == "hist" else C),
                                       where=f"{where} column {k}")
        row_of[i, sl] = chunk.id
    if not row_of.all():
        raise StorageError(f"accuracy profile {profile_id} misses some exits' counts; {RESUME_HINT}")
    bad = implausible(out["tp"], out["fp"], out["fn"], out["hist"])
    if bad is not None:
        e, i, why = bad
        blamed = s.get(AccuracyChunk, int(row_of[e, i]))
        assert blamed is not None
        raise StorageError(f"{_chunk_name(blamed)} holds implausible counts (image {i}: {why}); "
                           f"{DAMAGED_HINT}")
    calib = s.get(CalibrationSet, profile.calibration_set_id)
    assert calib is not None
    return AccuracyArrays(
        profile_id=profile_id, exit_ids=tuple(profile.exit_ids), sample_ids=tuple(calib.sample_ids),
        edges=edges, num_classes=C, settings=dict(profile.settings), **out,
    )


def _chunk_name(chunk: AccuracyChunk) -> str:
    return (f"dse_accuracy_chunk row {chunk.id} (accuracy profile {chunk.profile_id}, exit "
            f"{chunk.exit_id!r}, images {chunk.start}-{chunk.start + chunk.n - 1})")


def summarise(arrays: AccuracyArrays) -> dict[str, ExitSummary]:
    """mIoU (classes seen in prediction or ground truth), pixel accuracy, mean confidence."""
    out = {}
    centres = (arrays.edges[:-1] + arrays.edges[1:]) / 2
    for i, exit_id in enumerate(arrays.exit_ids):
        tp, fp, fn = (a[i].sum(axis=0) for a in (arrays.tp, arrays.fp, arrays.fn))
        hist = arrays.hist[i].sum(axis=0)
        conf = float((hist * centres).sum() / hist.sum()) if hist.sum() else 0.0
        out[exit_id] = ExitSummary(
            miou=miou_from_counts(tp, fp, fn),
            pixel_accuracy=pixel_accuracy_from_counts(tp, fn),
            mean_confidence=min(max(conf, 0.0), 1.0),
        )
    return out


def finish_accuracy_profile(
    s: Session, profile_id: int, summaries: Mapping[str, ExitSummary] | None = None
) -> AccuracyProfileRecord:
    """Mark a fully measured profile complete and store its per-exit summary columns.

    `summaries=None` computes them from the stored counts (see `summarise`).
    """
    profile = _profile(s, profile_id)
    arrays = load_accuracy(s, profile_id)
    values = dict(summaries) if summaries is not None else summarise(arrays)
    if set(values) != set(profile.exit_ids):
        raise ValueError("summaries must cover exactly the profile's exits")
    for exit_id, summ in values.items():
        row = AccuracySummary(
            profile_id=profile_id, exit_id=exit_id, miou=summ.miou,
            pixel_accuracy=summ.pixel_accuracy, mean_confidence=summ.mean_confidence,
        )
        stored, inserted = insert_or_get(
            s, row,
            select(AccuracySummary).where(
                AccuracySummary.profile_id == profile_id, AccuracySummary.exit_id == exit_id
            ),
        )
        if not inserted:
            stored.miou, stored.pixel_accuracy = summ.miou, summ.pixel_accuracy
            stored.mean_confidence = summ.mean_confidence
    profile.complete = True
    s.flush()
    return _profile_record(s, profile)
