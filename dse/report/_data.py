"""Pure figure data: what each plot of a run shows, computed from records, tested alone.

The drawing (`_figures.py`) only maps these objects to Plotly traces.
"""

from __future__ import annotations

import graphlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from db.records import CandidateRecord, SearchRunRecord, VerificationRecord
from dse.report._format import (
    FINAL_EXIT,
    baseline_value,
    esc,
    exit_chain,
    ms,
    pct,
    provenance,
    thresholds,
)
from dse.report._model import ConfidenceData

DIMMED_FRONTS = 3  # fronts 2..3 are drawn dimmed; later ones as faint "dominated" points


@dataclass(frozen=True, kw_only=True)
class PointData:
    """One candidate in the latency-mIoU plane, with its escaped hover label."""

    candidate: int
    latency_ms: float
    latency_p95_ms: float
    miou: float
    gflops: float
    hover: str
    miou_interval: tuple[float, float] | None = None  # bootstrap interval (dse pareto)
    latency_interval: tuple[float, float] | None = None


@dataclass(frozen=True, kw_only=True)
class FrontSeries:
    """Points drawn alike: `style` is "front" (front 1), "later", "dominated" or "infeasible"."""

    name: str
    style: str
    points: tuple[PointData, ...]


@dataclass(frozen=True, kw_only=True)
class Region:
    """A shaded rectangle of the plane that a constraint rules out, in data coordinates."""

    label: str
    x0: float
    x1: float
    y0: float
    y1: float


@dataclass(frozen=True, kw_only=True)
class VerificationPoint:
    """A candidate's measured objectives next to its predicted ones (`dse verify`)."""

    candidate: int
    predicted_latency_ms: float
    predicted_miou: float
    latency_ms: float
    miou: float
    hover: str
    held_out: bool = False  # read from another stored calibration set (dse pareto --check-on)


@dataclass(frozen=True, kw_only=True)
class FrontFigureData:
    """The Pareto plot of one run."""

    title: str
    series: tuple[FrontSeries, ...]
    baseline: PointData | None
    regions: tuple[Region, ...]
    verifications: tuple[VerificationPoint, ...]
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    chosen: PointData | None = None  # the candidate `dse pareto --target` picked
    chosen_label: str = ""


def candidate_hover(run: SearchRunRecord, cand: CandidateRecord) -> str:
    """The hover label of a candidate: configuration, objectives, exit rates, provenance."""
    base_miou = baseline_value(run, "miou")
    base_ms = baseline_value(run, "latency_ms")
    drop = f" ({100.0 * (cand.miou - base_miou):+.2f} pp vs baseline)" if base_miou else ""
    speed = (
        f" · {base_ms / cand.latency_ms:.2f}× vs baseline"
        if base_ms and cand.latency_ms > 0 else ""
    )
    rates = ", ".join(
        f"{esc(e)}: {100.0 * share:.1f} %" for e, share in cand.exit_rates.items()
    )
    feasible = "" if cand.feasible else " · <i>violates a constraint</i>"
    lines = [
        f"<b>candidate {cand.index}</b> · front {cand.front}{feasible}",
        f"exits: {exit_chain(cand.exits)}",
        thresholds(cand),
        f"mIoU {pct(cand.miou)}{drop}",
        f"latency {ms(cand.latency_ms)} mean · {ms(cand.latency_p95_ms)} p95{speed}",
        f"{cand.gflops:.3f} GFLOPs",
        f"exit rates: {rates or 'not stored'}",
        provenance(run),
    ]
    if cand.anytime_ms:
        lines.insert(5, "anytime outputs at " + ", ".join(ms(v) for v in cand.anytime_ms))
    if cand.intervals:
        lines[-1:-1] = interval_lines(cand.intervals)
    return "<br>".join(lines)


def interval_lines(iv: dict) -> list[str]:  # type: ignore[type-arg]
    """Hover lines of a candidate's stored bootstrap intervals (`dse pareto`)."""
    level = float(iv.get("level", 0.0))
    m, d, lat = iv["miou"], iv["drop_pp"], iv["latency_ms"]
    rates = ", ".join(f"{esc(e)} {100 * lo:.0f}–{100 * hi:.0f} %"
                      for e, (lo, hi) in iv.get("exit_rates", {}).items())
    lines = [f"<i>{100 * level:g} % bootstrap interval</i>: mIoU {pct(m[0])}–{pct(m[1])}",
             f"drop {d[0]:+.2f} to {d[1]:+.2f} pp · latency {ms(lat[0])}–{ms(lat[1])}",
             f"exit rates {rates}"]
    bounds, confidence = iv.get("bounds"), iv.get("confidence")
    if bounds and confidence:
        lines.append(f"at confidence {confidence:g}: drop ≤ {bounds['drop_pp_high']:.2f} pp, "
                     f"mIoU ≥ {pct(bounds['miou_low'])}, "
                     f"latency ≤ {ms(bounds['latency_ms_high'])}")
    return lines


def _point(run: SearchRunRecord, cand: CandidateRecord) -> PointData:
    iv = cand.intervals or {}

    def pair(key: str) -> tuple[float, float] | None:
        return (float(iv[key][0]), float(iv[key][1])) if key in iv else None

    return PointData(
        candidate=cand.index, latency_ms=cand.latency_ms, latency_p95_ms=cand.latency_p95_ms,
        miou=cand.miou, gflops=cand.gflops, hover=candidate_hover(run, cand),
        miou_interval=pair("miou"), latency_interval=pair("latency_ms"),
    )


def _series(run: SearchRunRecord, candidates: Sequence[CandidateRecord]) -> list[FrontSeries]:
    feasible = [c for c in candidates if c.feasible]
    groups: dict[tuple[int, str, str], list[CandidateRecord]] = {}
    for cand in feasible:
        if cand.front == 1:
            key = (1, "front", "front 1 (Pareto-optimal)")
        elif cand.front <= DIMMED_FRONTS:
            key = (cand.front, "later", f"front {cand.front}")
        else:
            key = (DIMMED_FRONTS + 1, "dominated", f"fronts > {DIMMED_FRONTS}")
        groups.setdefault(key, []).append(cand)
    infeasible = [c for c in candidates if not c.feasible]
    if infeasible:
        groups[(DIMMED_FRONTS + 2, "infeasible", "excluded by a constraint")] = infeasible
    out = []
    for (_, style, name), cands in sorted(groups.items()):
        cands = sorted(cands, key=lambda c: (c.latency_ms, -c.miou, c.index))
        out.append(FrontSeries(name=name, style=style,
                               points=tuple(_point(run, c) for c in cands)))
    return out


def baseline_point(run: SearchRunRecord) -> PointData | None:
    """The final-exit-only baseline as a point, or None when the run did not store it."""
    miou, lat = baseline_value(run, "miou"), baseline_value(run, "latency_ms")
    if miou is None or lat is None:
        return None
    p95 = baseline_value(run, "latency_p95_ms")
    gflops = baseline_value(run, "gflops")
    hover = "<br>".join([
        "<b>baseline</b>: final exit only",
        f"mIoU {pct(miou)}",
        f"latency {ms(lat)} mean" + (f" · {ms(p95)} p95" if p95 is not None else ""),
        f"{gflops:.3f} GFLOPs" if gflops is not None else "GFLOPs not stored",
        provenance(run),
    ])
    return PointData(candidate=-1, latency_ms=lat, latency_p95_ms=p95 if p95 is not None else lat,
                     miou=miou, gflops=gflops if gflops is not None else 0.0, hover=hover)


def _constraint(run: SearchRunRecord, key: str) -> float | None:
    value = run.constraints.get(key)
    return float(value) if isinstance(value, (int, float)) else None


def _regions(run: SearchRunRecord, x_range: tuple[float, float],
             y_range: tuple[float, float]) -> list[Region]:
    """Constraint keys as `dse pareto` stores them: max_latency_ms, max_drop_pp, min_miou."""
    regions = []
    budget = _constraint(run, "max_latency_ms")
    if budget is not None and budget < x_range[1]:
        regions.append(Region(label=f"latency > {budget:g} ms budget", x0=budget,
                              x1=x_range[1], y0=y_range[0], y1=y_range[1]))
    floors = []
    drop_pp = _constraint(run, "max_drop_pp")
    base_miou = baseline_value(run, "miou")
    if drop_pp is not None and base_miou is not None:
        floors.append((base_miou - drop_pp / 100.0, f"mIoU drop > {drop_pp:g} pp"))
    min_miou = _constraint(run, "min_miou")
    if min_miou is not None:
        floors.append((min_miou, f"mIoU < {pct(min_miou)}"))
    for floor, label in floors:
        if floor > y_range[0]:
            regions.append(Region(label=label, x0=x_range[0], x1=x_range[1],
                                  y0=y_range[0], y1=floor))
    return regions


def _verification_points(run: SearchRunRecord, candidates: Sequence[CandidateRecord],
                         verifications: Sequence[VerificationRecord]) -> list[VerificationPoint]:
    by_index = {c.index: c for c in candidates}
    out = []
    for ver in verifications:
        cand = by_index.get(ver.candidate_index)
        m_lat, m_miou = ver.measured.get("latency_ms"), ver.measured.get("miou")
        if cand is None or (m_lat is None and m_miou is None):
            continue
        lat = float(m_lat) if m_lat is not None else cand.latency_ms
        miou = float(m_miou) if m_miou is not None else cand.miou
        if ver.measured.get("source") == "stored profile":
            out.append(VerificationPoint(
                candidate=cand.index, predicted_latency_ms=cand.latency_ms,
                predicted_miou=cand.miou, latency_ms=lat, miou=miou, held_out=True,
                hover=held_out_hover(cand, ver)))
            continue
        hover = "<br>".join([
            f"<b>measured</b>: candidate {cand.index} on {esc(ver.device_name)}",
            f"data {esc(ver.dataset)} / {esc(ver.split)}",
            f"mIoU {pct(miou)} measured vs {pct(cand.miou)} predicted"
            if m_miou is not None else "mIoU not measured (predicted value shown)",
            f"latency {ms(lat)} measured vs {ms(cand.latency_ms)} predicted"
            if m_lat is not None else "latency not measured (predicted value shown)",
        ])
        out.append(VerificationPoint(candidate=cand.index, predicted_latency_ms=cand.latency_ms,
                                     predicted_miou=cand.miou, latency_ms=lat, miou=miou,
                                     hover=hover))
    return out


def held_out_hover(cand: CandidateRecord, ver: VerificationRecord) -> str:
    """Hover of a held-out check: predicted vs observed on another stored calibration set."""
    m = ver.measured
    lines = [
        f"<b>held-out check</b>: candidate {cand.index} on {esc(ver.dataset)} / "
        f"{esc(ver.split)} (stored profile, no network run)",
        f"mIoU {pct(float(m['miou']))} observed vs {pct(cand.miou)} predicted",
    ]
    if "drop_pp" in m and "drop_pp" in ver.predicted:
        lines.append(f"drop {float(m['drop_pp']):+.2f} pp observed vs "
                     f"{float(ver.predicted['drop_pp']):+.2f} pp predicted")
    rates = m.get("exit_rates") or {}
    lines.append("exit rates " + ", ".join(
        f"{esc(e)} {100 * cand.exit_rates.get(e, 0.0):.0f} → {100 * float(r):.0f} %"
        for e, r in rates.items()))
    lines.append(f"latency {ms(float(m['latency_ms']))} from component costs on the observed "
                 "routes")
    flags = [f"{esc(e)} moved {float(v):+.0f} points" for e, v in
             (m.get("moved_exits") or {}).items()] + [esc(b) for b in m.get("broken") or []]
    lines.append("<b>flags</b>: " + "; ".join(flags) if flags else "no flags")
    return "<br>".join(lines)


def chosen_candidate(run: SearchRunRecord) -> int | None:
    """The index `dse pareto --target` stored as `constraints["chosen_candidate"]`, if any."""
    value = run.constraints.get("chosen_candidate")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _padded(values: Sequence[float], *, low: float | None = None) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    pad = 0.06 * (hi - lo) if hi > lo else max(abs(hi) * 0.05, 1e-3)
    lo_p = lo - pad if low is None else max(low, lo - pad)
    return (lo_p, hi + pad)


def front_figure_data(run: SearchRunRecord, candidates: Sequence[CandidateRecord],
                      verifications: Sequence[VerificationRecord] = ()) -> FrontFigureData:
    """Latency (ms) against mIoU for one run: fronts, baseline, constraint regions, checks."""
    series = _series(run, candidates)
    baseline = baseline_point(run)
    checks = _verification_points(run, candidates, verifications)
    points = [p for s in series for p in s.points] + ([baseline] if baseline else [])
    xs = [p.latency_ms for p in points] + [v.latency_ms for v in checks]
    ys = [p.miou for p in points] + [v.miou for v in checks]
    budget = _constraint(run, "max_latency_ms")
    if budget is not None:
        xs.append(budget)
    x_range = _padded(xs or [0.0, 1.0], low=0.0)
    y_range = _padded(ys or [0.0, 1.0])
    title = f"{run.model_name} on {run.device_name}: latency vs mIoU (run {run.id})"
    index = chosen_candidate(run)
    chosen = next((p for p in points if index is not None and p.candidate == index), None)
    target = run.constraints.get("target")
    label = f"chosen for --target {target}" if isinstance(target, str) else "chosen"
    return FrontFigureData(
        title=title, series=tuple(series), baseline=baseline,
        regions=tuple(_regions(run, x_range, y_range)), verifications=tuple(checks),
        x_range=x_range, y_range=y_range, chosen=chosen, chosen_label=label,
    )


def order_exits(candidates: Sequence[CandidateRecord]) -> list[str]:
    """All exit ids in backbone order, as the candidates' own (ordered) lists imply; final last.

    Ties (exits never seen together) are broken by name, so the order is stable.
    """
    graph: dict[str, set[str]] = {}
    for cand in candidates:
        early = [e for e in cand.exits if e != FINAL_EXIT]
        for i, exit_id in enumerate(early):
            graph.setdefault(exit_id, set())
            if i:
                graph[exit_id].add(early[i - 1])
    sorter = graphlib.TopologicalSorter(graph)
    order: list[str] = []
    try:
        sorter.prepare()
    except graphlib.CycleError:  # inconsistent orders; fall back to names
        return sorted(graph) + [FINAL_EXIT]
    while sorter.is_active():
        ready = sorted(sorter.get_ready())
        order.extend(ready)
        sorter.done(*ready)
    return order + [FINAL_EXIT]


def front_one(candidates: Sequence[CandidateRecord]) -> list[CandidateRecord]:
    """Feasible front-1 candidates, fastest first."""
    return sorted((c for c in candidates if c.front == 1 and c.feasible),
                  key=lambda c: (c.latency_ms, -c.miou, c.index))


@dataclass(frozen=True, kw_only=True)
class ExitRateData:
    """Share of images leaving at each exit, for each front-1 candidate (fastest first)."""

    candidates: tuple[int, ...]
    exit_ids: tuple[str, ...]
    shares: tuple[tuple[float, ...], ...]  # [exit][candidate]


def exit_rate_data(candidates: Sequence[CandidateRecord]) -> ExitRateData:
    """Stacked-bar data: for each front-1 candidate, how many images leave where."""
    front = front_one(candidates)
    exit_ids = [e for e in order_exits(front)
                if any(c.exit_rates.get(e, 0.0) > 0.0 for c in front)]
    shares = tuple(tuple(float(c.exit_rates.get(e, 0.0)) for c in front) for e in exit_ids)
    return ExitRateData(candidates=tuple(c.index for c in front), exit_ids=tuple(exit_ids),
                        shares=shares)


@dataclass(frozen=True, kw_only=True)
class HistogramPanel:
    """Share of an exit's pixels per confidence bin (bins [left, left + width))."""

    exit_id: str
    lefts: tuple[float, ...]
    widths: tuple[float, ...]
    shares: tuple[float, ...]
    pixels: int


@dataclass(frozen=True, kw_only=True)
class HistogramData:
    """One panel per kept early exit; `missing` names kept exits without stored histograms."""

    panels: tuple[HistogramPanel, ...]
    missing: tuple[str, ...]


def _merge_bins(edges: np.ndarray, min_width: float) -> list[tuple[int, int]]:
    """Group consecutive profile bins [a, b) into display bins at least `min_width` wide.

    A narrow remainder at the top joins the display bin before it.
    """
    groups: list[tuple[int, int]] = []
    start = 0
    bins = len(edges) - 1
    for k in range(1, bins + 1):
        if edges[k] - edges[start] >= min_width - 1e-9:
            groups.append((start, k))
            start = k
    if start < bins:
        if groups:
            groups[-1] = (groups[-1][0], bins)
        else:
            groups.append((0, bins))
    return groups


def histogram_data(confidence: ConfidenceData, kept: Sequence[str], *,
                   min_width: float = 0.01) -> HistogramData:
    """Pixel-confidence histograms of the kept exits, rebinned to bins >= `min_width` wide.

    The profile's bins are much finer near 1.0; equal display widths keep the bars comparable.
    """
    if not 0.0 < min_width <= 1.0:
        raise ValueError(f"min_width must be in (0, 1], got {min_width}")
    edges = confidence.edges
    groups = _merge_bins(edges, min_width)
    panels, missing = [], []
    for exit_id in kept:
        counts = confidence.counts.get(exit_id)
        if counts is None:
            missing.append(exit_id)
            continue
        total = int(counts.sum())
        summed = [int(counts[a:b].sum()) for a, b in groups]
        lefts = [float(edges[a]) for a, _ in groups]
        panels.append(HistogramPanel(
            exit_id=exit_id, lefts=tuple(lefts),
            widths=tuple(float(edges[b] - edges[a]) for a, b in groups),
            shares=tuple(s / total if total else 0.0 for s in summed), pixels=total,
        ))
    return HistogramData(panels=tuple(panels), missing=tuple(missing))


def kept_exits(candidates: Sequence[CandidateRecord]) -> list[str]:
    """Early exits used by at least one front-1 candidate, in backbone order."""
    front = front_one(candidates)
    used = {e for c in front for e in c.exits if e != FINAL_EXIT}
    return [e for e in order_exits(front) if e in used]
