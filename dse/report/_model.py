"""What a report is made of: the records of each run, read once from the store.

Rendering works only on these frozen objects, so a page can be built (and tested) from
hand-made records without a store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

import numpy as np

from db.records import CandidateRecord, SearchRunRecord, VerificationRecord
from db.repository import device_runtime, names_with_several_setups, runtime_label
from db.trust import LatencyTrust


@dataclass(frozen=True, kw_only=True, eq=False)
class ConfidenceData:
    """Pixel-confidence histograms of an accuracy profile, summed over its images.

    `edges` are the profile's B + 1 bin edges from 0.0 to 1.0 (bin k holds
    edges[k] <= conf < edges[k + 1], the last bin closed at 1.0); `counts` maps an exit id to
    int64 pixel counts [B].
    """

    profile_id: int
    edges: np.ndarray
    counts: Mapping[str, np.ndarray]

    def __post_init__(self) -> None:
        edges = np.asarray(self.edges, dtype=np.float64)
        if edges.ndim != 1 or edges.size < 2 or not np.all(np.diff(edges) > 0):
            raise ValueError("edges must be a strictly increasing 1-D array of >= 2 values")
        counts: dict[str, np.ndarray] = {}
        for exit_id, row in self.counts.items():
            arr = np.asarray(row, dtype=np.int64)
            if arr.shape != (edges.size - 1,):
                raise ValueError(
                    f"counts[{exit_id!r}] must have {edges.size - 1} bins, got shape {arr.shape}"
                )
            if (arr < 0).any():
                raise ValueError(f"counts[{exit_id!r}] must be non-negative")
            counts[exit_id] = arr
        object.__setattr__(self, "edges", edges)
        object.__setattr__(self, "counts", counts)

    @classmethod
    def from_arrays(
        cls, *, profile_id: int, exit_ids: tuple[str, ...] | list[str], edges: np.ndarray,
        hist: np.ndarray, keep: set[str] | None = None,
    ) -> ConfidenceData:
        """Sum per-image histograms hist [E, S, B] over images, for the exits in `keep`."""
        hist = np.asarray(hist)
        if hist.ndim != 3 or hist.shape[0] != len(exit_ids):
            raise ValueError(f"hist must be [E={len(exit_ids)}, S, B], got shape {hist.shape}")
        counts = {
            exit_id: hist[i].sum(axis=0, dtype=np.int64)
            for i, exit_id in enumerate(exit_ids)
            if keep is None or exit_id in keep
        }
        return cls(profile_id=profile_id, edges=edges, counts=counts)


@dataclass(frozen=True, kw_only=True, eq=False)
class RunData:
    """One search run with its candidates, verifications and (when stored) confidences."""

    run: SearchRunRecord
    candidates: tuple[CandidateRecord, ...]
    verifications: tuple[VerificationRecord, ...] = ()
    confidence: ConfidenceData | None = None
    confidence_note: str = ""  # why `confidence` is None, shown on the page
    trust: LatencyTrust | None = None  # the device profile's measured quality (db.trust)
    show_setup: bool = False  # name the runtime setup even for torch (ReportData sets it)

    def __post_init__(self) -> None:
        object.__setattr__(self, "candidates", tuple(self.candidates))
        object.__setattr__(self, "verifications", tuple(self.verifications))
        for cand in self.candidates:
            if cand.run_id != self.run.id:
                raise ValueError(
                    f"candidates: candidate {cand.index} belongs to run {cand.run_id}, "
                    f"not run {self.run.id}"
                )
        for ver in self.verifications:
            if ver.run_id != self.run.id:
                raise ValueError(
                    f"verifications: row {ver.id} belongs to run {ver.run_id}, not run {self.run.id}"
                )

    @property
    def label(self) -> str:
        """Short name of the run in legends: `run 3 · jetson`, with the runtime setup when it
        is not torch eager or when the report has other setups of this device name
        (`run 3 · laptop · torch 2.14.1 (2 threads)`, `run 4 · laptop · onnxruntime 1.32.0
        (1 thread, opt all)`), so one machine's runtimes overlay like two devices (not
        escaped)."""
        fingerprint = self.run.device_fingerprint
        name = f"run {self.run.id} · {self.run.device_name}"
        if self.show_setup or device_runtime(fingerprint) != "torch":
            return f"{name} · {runtime_label(fingerprint)}"
        return name


@dataclass(frozen=True, kw_only=True, eq=False)
class ReportData:
    """Everything one HTML page shows: one or more runs."""

    runs: tuple[RunData, ...]
    generated: datetime = field(default_factory=lambda: datetime.now().astimezone())

    def __post_init__(self) -> None:
        runs = tuple(self.runs)
        if not runs:
            raise ValueError("runs must hold at least one run")
        ids = [r.run.id for r in runs]
        if len(set(ids)) != len(ids):
            raise ValueError(f"runs must not repeat a run, got ids {ids}")
        several = names_with_several_setups((r.run.device_name, r.run.device_id) for r in runs)
        runs = tuple(replace(r, show_setup=True) if r.run.device_name in several else r
                     for r in runs)
        object.__setattr__(self, "runs", runs)
