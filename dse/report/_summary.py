"""The paper-style summary rows of a run (Kouris et al., ECCV 2022, Table 2).

Baseline (final exit only); max mIoU at a cost no higher than the baseline's; min cost at an
mIoU drop of at most 0.1 pp and of at most 1 pp. Cost is mean latency on the run's device, or
GFLOPs (device-independent) when asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from db.records import FINAL_EXIT, CandidateRecord, SearchRunRecord
from dse.report._format import baseline_value

COSTS = ("latency_ms", "gflops")
DROPS_PP = (0.1, 1.0)


@dataclass(frozen=True, kw_only=True)
class SummaryRow:
    """One row; `candidate` is None for the baseline and for a use case nothing meets."""

    label: str
    candidate: int | None
    miou: float | None
    latency_ms: float | None
    latency_p95_ms: float | None
    gflops: float | None
    exits: tuple[str, ...]
    delta_pp: float | None  # mIoU minus baseline mIoU, percentage points
    speedup: float | None  # baseline cost / cost (latency or GFLOPs, as summarised)


def _cost(cand: CandidateRecord, cost: str) -> float:
    return cand.latency_ms if cost == "latency_ms" else cand.gflops


def _row(label: str, cand: CandidateRecord, base_miou: float, base_cost: float | None,
         cost: str) -> SummaryRow:
    value = _cost(cand, cost)
    return SummaryRow(
        label=label, candidate=cand.index, miou=cand.miou, latency_ms=cand.latency_ms,
        latency_p95_ms=cand.latency_p95_ms, gflops=cand.gflops, exits=tuple(cand.exits),
        delta_pp=100.0 * (cand.miou - base_miou),
        speedup=base_cost / value if base_cost and value > 0 else None,
    )


def _empty(label: str) -> SummaryRow:
    return SummaryRow(label=label, candidate=None, miou=None, latency_ms=None,
                      latency_p95_ms=None, gflops=None, exits=(), delta_pp=None, speedup=None)


def summary_rows(run: SearchRunRecord, candidates: Sequence[CandidateRecord], *,
                 cost: str = "latency_ms") -> tuple[SummaryRow, ...]:
    """Baseline and the three use cases over all stored candidates of a run.

    The use cases ignore the run's own constraints (they are the paper's fixed targets), so
    the rows compare across runs. Ties go to the other objective, then the lower index.

    Raises:
        ValueError: `cost` is not one of COSTS.
    """
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {COSTS}, got {cost!r}")
    base_miou = baseline_value(run, "miou")
    base_cost = baseline_value(run, cost)
    unit = "latency" if cost == "latency_ms" else "GFLOPs"
    if base_miou is None:
        return (_empty("baseline (not stored in this run)"),)
    base = SummaryRow(
        label="baseline: final exit only", candidate=None, miou=base_miou,
        latency_ms=baseline_value(run, "latency_ms"),
        latency_p95_ms=baseline_value(run, "latency_p95_ms"),
        gflops=baseline_value(run, "gflops"), exits=(FINAL_EXIT,), delta_pp=0.0,
        speedup=1.0 if base_cost else None,
    )
    rows = [base]
    label = f"max mIoU, {unit} ≤ baseline"
    if base_cost is None:
        rows.append(_empty(label))
    else:
        within = [c for c in candidates if _cost(c, cost) <= base_cost]
        best = min(within, key=lambda c: (-c.miou, _cost(c, cost), c.index), default=None)
        rows.append(_row(label, best, base_miou, base_cost, cost) if best else _empty(label))
    for drop_pp in DROPS_PP:
        label = f"min {unit}, mIoU drop ≤ {drop_pp:g} pp"
        # The epsilon keeps a drop of exactly 0.1 pp (within float rounding) inside.
        floor = base_miou - drop_pp / 100.0 - 1e-12
        within = [c for c in candidates if c.miou >= floor]
        best = min(within, key=lambda c: (_cost(c, cost), -c.miou, c.index), default=None)
        rows.append(_row(label, best, base_miou, base_cost, cost) if best else _empty(label))
    return tuple(rows)
