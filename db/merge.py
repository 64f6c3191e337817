"""Bring a store filled on another machine into this one (`dse db merge`).

Rows are matched by natural keys (weights hash, calibration content hash, device name and
fingerprint hash, input shape, ...), never by id; ids are remapped. Identical rows are skipped;
a row whose key matches but whose measurement differs is reported as a conflict and this store's
row is kept. Everything happens in one transaction of the target: all or nothing.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.errors import StorageError
from db.models import (
    AccuracyChunk,
    AccuracyProfile,
    AccuracySummary,
    CalibrationSet,
    Candidate,
    Device,
    Exit,
    Latency,
    Model,
    ProfileQuality,
    SearchRun,
    Verification,
)
from db.session import display_url, open_store, parse_url, session_scope, sqlite_path


@dataclass(frozen=True, kw_only=True)
class MergeReport:
    """Rows copied and skipped per table, and one line per conflict."""

    copied: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    conflict_counts: dict[str, int] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "copied": dict(self.copied), "skipped": dict(self.skipped),
            "conflicts": dict(self.conflict_counts),
        }


def _same_store(a: str, b: str) -> bool:
    ua, ub = parse_url(a), parse_url(b)
    pa, pb = sqlite_path(ua), sqlite_path(ub)
    if pa is not None or pb is not None:
        if pa is None or pb is None:
            return False
        if pa.exists() and pb.exists():
            return os.path.samefile(pa, pb)
        return pa == pb
    return (ua.host, ua.port, ua.database, ua.get_backend_name()) == (
        ub.host, ub.port, ub.database, ub.get_backend_name()
    )


def _cols(row: Any, names: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(getattr(row, n) for n in names)


class _Merger:
    def __init__(self, src: Session, dst: Session) -> None:
        self.src, self.dst = src, dst
        self.copied: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.conflict_counts: Counter[str] = Counter()
        self.conflicts: list[str] = []
        self.model_ids: dict[int, int] = {}
        self.calib_ids: dict[int, int] = {}
        self.device_ids: dict[int, int] = {}
        self.profile_ids: dict[int, int] = {}
        self.run_ids: dict[int, int] = {}

    def _conflict(self, table: str, what: str) -> None:
        self.conflict_counts[table] += 1
        self.conflicts.append(f"{table}: {what}")

    def _copy(self, table: str, row: Any) -> Any:
        self.dst.add(row)
        self.dst.flush()
        self.copied[table] += 1
        return row

    def _compare(self, table: str, ours: Any, theirs: Any, names: tuple[str, ...], what: str) -> None:
        if _cols(ours, names) == _cols(theirs, names):
            self.skipped[table] += 1
        else:
            differing = [n for n in names if getattr(ours, n) != getattr(theirs, n)]
            self._conflict(table, f"{what} differs in {', '.join(differing)}")

    def models(self) -> None:
        # The name is a display label (it defaults to the checkpoint's file name, which differs
        # from machine to machine), not provenance: it is copied with a new model, never compared.
        names = ("arch", "architecture", "num_classes")
        for m in self.src.scalars(select(Model).order_by(Model.id)):
            ours = self.dst.scalars(select(Model).where(Model.weights_sha256 == m.weights_sha256)).first()
            if ours is None:
                ours = self._copy("dse_model", Model(weights_sha256=m.weights_sha256, created=m.created,
                                                      name=m.name,
                                                      **dict(zip(names, _cols(m, names), strict=True))))
            else:
                self._compare("dse_model", ours, m, names, f"model {m.weights_sha256[:12]}")
            self.model_ids[m.id] = ours.id

    def exits(self) -> None:
        names = ("position", "position_index", "head", "params", "gflops")
        for e in self.src.scalars(select(Exit).order_by(Exit.id)):
            model_id = self.model_ids[e.model_id]
            ours = self.dst.scalars(select(Exit).where(
                Exit.model_id == model_id, Exit.exit_id == e.exit_id, Exit.input_shape == e.input_shape
            )).first()
            if ours is None:
                self._copy("dse_exit", Exit(model_id=model_id, exit_id=e.exit_id, input_shape=e.input_shape,
                                            **dict(zip(names, _cols(e, names), strict=True))))
            else:
                self._compare("dse_exit", ours, e, names, f"exit {e.exit_id} at {e.input_shape}")

    def calibration_sets(self) -> None:
        names = ("dataset", "split", "num_samples", "sample_ids")
        for c in self.src.scalars(select(CalibrationSet).order_by(CalibrationSet.id)):
            ours = self.dst.scalars(
                select(CalibrationSet).where(CalibrationSet.content_hash == c.content_hash)
            ).first()
            if ours is None:
                ours = self._copy("dse_calibration_set", CalibrationSet(
                    content_hash=c.content_hash, **dict(zip(names, _cols(c, names), strict=True))))
            else:
                self._compare("dse_calibration_set", ours, c, names, f"calibration set {c.content_hash[:12]}")
            self.calib_ids[c.id] = ours.id

    def devices(self) -> None:
        for d in self.src.scalars(select(Device).order_by(Device.id)):
            ours = self.dst.scalars(select(Device).where(
                Device.name == d.name, Device.fingerprint_sha256 == d.fingerprint_sha256
            )).first()
            if ours is None:
                ours = self._copy("dse_device", Device(
                    name=d.name, fingerprint=d.fingerprint, fingerprint_sha256=d.fingerprint_sha256,
                    created=d.created))
            else:
                self.skipped["dse_device"] += 1
            self.device_ids[d.id] = ours.id

    def accuracy(self) -> None:
        for p in self.src.scalars(select(AccuracyProfile).order_by(AccuracyProfile.id)):
            model_id, calib_id = self.model_ids[p.model_id], self.calib_ids[p.calibration_set_id]
            ours = self.dst.scalars(select(AccuracyProfile).where(
                AccuracyProfile.model_id == model_id, AccuracyProfile.calibration_set_id == calib_id,
                AccuracyProfile.settings_sha256 == p.settings_sha256,
            )).first()
            if ours is None:
                ours = self._copy("dse_accuracy_profile", AccuracyProfile(
                    model_id=model_id, calibration_set_id=calib_id, settings=p.settings,
                    settings_sha256=p.settings_sha256, edges=p.edges, exit_ids=p.exit_ids,
                    num_classes=p.num_classes, num_samples=p.num_samples, complete=False,
                    created=p.created))
            else:
                self.skipped["dse_accuracy_profile"] += 1
            self.profile_ids[p.id] = ours.id
            self._chunks(p, ours)
            self._summaries(p, ours)
            if p.complete and not ours.complete and self._covered(ours):
                ours.complete = True

    def _covered(self, profile: AccuracyProfile) -> bool:
        rows = self.dst.execute(select(AccuracyChunk.exit_id, AccuracyChunk.n).where(
            AccuracyChunk.profile_id == profile.id)).all()
        per_exit: Counter[str] = Counter()
        for exit_id, n in rows:
            per_exit[exit_id] += n
        return all(per_exit[e] == profile.num_samples for e in profile.exit_ids)

    def _chunks(self, p: AccuracyProfile, ours: AccuracyProfile) -> None:
        names = ("n", "tp", "fp", "fn", "hist")
        stored = {(c.exit_id, c.start): c for c in self.dst.scalars(
            select(AccuracyChunk).where(AccuracyChunk.profile_id == ours.id))}
        for c in self.src.scalars(select(AccuracyChunk).where(AccuracyChunk.profile_id == p.id)
                                  .order_by(AccuracyChunk.start, AccuracyChunk.exit_id)):
            what = f"profile {ours.id} exit {c.exit_id} images [{c.start}, {c.start + c.n})"
            mine = stored.get((c.exit_id, c.start))
            if mine is not None:
                self._compare("dse_accuracy_chunk", mine, c, names, what)
                continue
            overlap = any(e == c.exit_id and s < c.start + c.n and c.start < s + o.n
                          for (e, s), o in stored.items())
            if overlap:
                self._conflict("dse_accuracy_chunk", f"{what} overlaps chunks of other bounds")
                continue
            self._copy("dse_accuracy_chunk", AccuracyChunk(
                profile_id=ours.id, exit_id=c.exit_id, start=c.start,
                **dict(zip(names, _cols(c, names), strict=True))))

    def _summaries(self, p: AccuracyProfile, ours: AccuracyProfile) -> None:
        names = ("miou", "pixel_accuracy", "mean_confidence")
        for summ in self.src.scalars(select(AccuracySummary).where(AccuracySummary.profile_id == p.id)):
            mine = self.dst.scalars(select(AccuracySummary).where(
                AccuracySummary.profile_id == ours.id, AccuracySummary.exit_id == summ.exit_id)).first()
            if mine is None:
                self._copy("dse_accuracy_summary", AccuracySummary(
                    profile_id=ours.id, exit_id=summ.exit_id,
                    **dict(zip(names, _cols(summ, names), strict=True))))
            else:
                self._compare("dse_accuracy_summary", mine, summ, names,
                              f"summary of profile {ours.id} exit {summ.exit_id}")

    def latency(self) -> None:
        names = ("n", "mean_ms", "std_ms", "min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms",
                 "samples_ms", "gflops", "params", "predicted_ms", "noisy", "quality", "source",
                 "provenance")
        for lat in self.src.scalars(select(Latency).order_by(Latency.id)):
            model_id, device_id = self.model_ids[lat.model_id], self.device_ids[lat.device_id]
            key = dict(model_id=model_id, device_id=device_id, kind=lat.kind, name=lat.name,
                       input_shape=lat.input_shape, batch=lat.batch, dtype=lat.dtype)
            ours = self.dst.scalars(select(Latency).filter_by(**key)).first()
            if ours is None:
                self._copy("dse_latency", Latency(created=lat.created, **key,
                                                  **dict(zip(names, _cols(lat, names), strict=True))))
            else:
                self._compare("dse_latency", ours, lat, names,
                              f"latency of {lat.kind} {lat.name} ({lat.input_shape}, batch {lat.batch}, "
                              f"{lat.dtype}) on device {device_id}")

    def profile_quality(self) -> None:
        names = ("noisy", "quality")
        for q in self.src.scalars(select(ProfileQuality).order_by(ProfileQuality.id)):
            key = dict(model_id=self.model_ids[q.model_id], device_id=self.device_ids[q.device_id],
                       input_shape=q.input_shape, batch=q.batch, dtype=q.dtype)
            ours = self.dst.scalars(select(ProfileQuality).filter_by(**key)).first()
            if ours is None:
                self._copy("dse_profile_quality", ProfileQuality(
                    created=q.created, **key, **dict(zip(names, _cols(q, names), strict=True))))
            else:
                self._compare("dse_profile_quality", ours, q, names,
                              f"profile quality ({q.input_shape}, batch {q.batch}, {q.dtype}) "
                              f"on device {key['device_id']}")

    def search(self) -> None:
        run_names = ("method", "mode", "space", "constraints", "objectives", "baseline",
                     "input_shape", "duration_s", "n_evaluated", "created")
        cand_names = ("index", "front", "exits", "th_pix", "th_img", "miou", "latency_ms",
                      "latency_p95_ms", "gflops", "exit_rates", "feasible", "anytime_ms")
        for r in self.src.scalars(select(SearchRun).order_by(SearchRun.id)):
            ours = self.dst.scalars(select(SearchRun).where(SearchRun.uid == r.uid)).first()
            if ours is not None:
                self.skipped["dse_search_run"] += 1
                self.run_ids[r.id] = ours.id
                continue
            ours = self._copy("dse_search_run", SearchRun(
                uid=r.uid, model_id=self.model_ids[r.model_id], device_id=self.device_ids[r.device_id],
                accuracy_profile_id=self.profile_ids[r.accuracy_profile_id],
                **dict(zip(run_names, _cols(r, run_names), strict=True))))
            self.run_ids[r.id] = ours.id
            for c in self.src.scalars(select(Candidate).where(Candidate.run_id == r.id)):
                self._copy("dse_candidate", Candidate(
                    run_id=ours.id, **dict(zip(cand_names, _cols(c, cand_names), strict=True))))
        ver_names = ("candidate_index", "dataset", "split", "predicted", "measured", "created")
        for v in self.src.scalars(select(Verification).order_by(Verification.id)):
            if self.dst.scalars(select(Verification).where(Verification.uid == v.uid)).first():
                self.skipped["dse_verification"] += 1
                continue
            self._copy("dse_verification", Verification(
                uid=v.uid, run_id=self.run_ids[v.run_id], device_id=self.device_ids[v.device_id],
                **dict(zip(ver_names, _cols(v, ver_names), strict=True))))

    def run(self) -> MergeReport:
        self.models()
        self.exits()
        self.calibration_sets()
        self.devices()
        self.accuracy()
        self.latency()
        self.profile_quality()
        self.search()
        return MergeReport(
            copied=dict(self.copied), skipped=dict(self.skipped),
            conflict_counts=dict(self.conflict_counts), conflicts=list(self.conflicts),
        )


def merge_stores(source: str, target: str) -> MergeReport:
    """Copy every row of `source` that `target` lacks, in one transaction of `target`.

    Raises:
        StorageError: source and target are the same store, the source is missing or not a
            store, or its schema is not this version's (newer: upgrade mess-dse; older: run
            `dse db upgrade` on it first).
    """
    if _same_store(source, target):
        raise StorageError(f"cannot merge {display_url(source)} into itself; pass another store")
    try:
        src_engine = open_store(source)
    except StorageError as e:
        raise StorageError(f"merge source: {e}") from e
    try:
        dst_engine = open_store(target, create=True)
    except StorageError:
        src_engine.dispose()
        raise
    try:
        with session_scope(src_engine, readonly=True) as src, session_scope(dst_engine) as dst:
            return _Merger(src, dst).run()
    finally:
        src_engine.dispose()
        dst_engine.dispose()
