"""Cross-run data: the same configuration (exits + thresholds) found in several runs.

Several devices, or two runs on one device, are overlaid on one plot; a configuration that is
Pareto-optimal in any run is linked to itself in the other runs (a dotted line, the hover and a
table show its latency and mIoU everywhere).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from db.records import CandidateRecord
from dse.report._data import PointData, baseline_point, candidate_hover
from dse.report._format import esc, exit_chain, ms, pct, thresholds
from dse.report._model import RunData

ConfigKey = tuple[tuple[str, ...], tuple[float, ...], float]


def config_key(cand: CandidateRecord) -> ConfigKey:
    """Identity of a configuration across runs; thresholds rounded so float noise matches."""
    return (tuple(cand.exits), tuple(round(t, 6) for t in cand.th_pix), round(cand.th_img, 6))


@dataclass(frozen=True, kw_only=True)
class CrossCell:
    """A configuration as evaluated in one run."""

    candidate: int
    front: int
    feasible: bool
    latency_ms: float
    miou: float


@dataclass(frozen=True, kw_only=True)
class CrossConfig:
    """A configuration on front 1 of at least one run; cells align with `CrossDeviceData.runs`.

    A cell is None when that run did not store the configuration (outside its space, or on a
    front it did not keep).
    """

    label: str
    exits: tuple[str, ...]
    thresholds: str
    cells: tuple[CrossCell | None, ...]

    @property
    def shared(self) -> bool:
        """Stored by at least two runs (so a link can be drawn)."""
        return sum(c is not None for c in self.cells) >= 2


@dataclass(frozen=True, kw_only=True)
class CrossPoint:
    """A candidate drawn in the overlay; `on_front` False: shown only because it is linked."""

    config: str
    on_front: bool
    point: PointData


@dataclass(frozen=True, kw_only=True)
class CrossRun:
    """One run of the overlay."""

    run_id: int
    label: str
    points: tuple[CrossPoint, ...]
    baseline: PointData | None


@dataclass(frozen=True, kw_only=True)
class CrossDeviceData:
    """Overlay of several runs, with the configurations linked across them."""

    runs: tuple[CrossRun, ...]
    configs: tuple[CrossConfig, ...]


def _elsewhere(config: CrossConfig, runs: Sequence[RunData], here: int) -> str:
    parts = []
    for j, cell in enumerate(config.cells):
        if cell is None or j == here:
            continue
        parts.append(f"{esc(runs[j].label)}: {ms(cell.latency_ms)}, {pct(cell.miou)}, "
                     f"front {cell.front}")
    if not parts:
        return f"<b>{config.label}</b>: not stored by the other runs"
    return f"<b>{config.label} elsewhere</b>: " + "; ".join(parts)


def cross_device_data(runs: Sequence[RunData]) -> CrossDeviceData:
    """Link configurations across runs.

    Returns the configurations on front 1 (feasible) of at least one run, labelled C1, C2, ...
    in order of run then latency, and per run the points to draw: its front 1 plus the linked
    configurations that are off its front.
    """
    by_run = [{config_key(c): c for c in r.candidates} for r in runs]
    keys: list[ConfigKey] = []
    for r in runs:
        front = sorted((c for c in r.candidates if c.front == 1 and c.feasible),
                       key=lambda c: (c.latency_ms, -c.miou, c.index))
        for cand in front:
            key = config_key(cand)
            if key not in keys:
                keys.append(key)
    configs = []
    for n, key in enumerate(keys, start=1):
        cells = tuple(
            CrossCell(candidate=c.index, front=c.front, feasible=c.feasible,
                      latency_ms=c.latency_ms, miou=c.miou) if (c := table.get(key)) else None
            for table in by_run
        )
        any_cand = next(t[key] for t in by_run if key in t)
        configs.append(CrossConfig(label=f"C{n}", exits=key[0], thresholds=thresholds(any_cand),
                                   cells=cells))
    out_runs = []
    for i, r in enumerate(runs):
        points = []
        for config, key in zip(configs, keys, strict=True):
            found = by_run[i].get(key)
            if found is None:
                continue
            cand = found
            on_front = cand.front == 1 and cand.feasible
            if not on_front and not config.shared:
                continue
            hover = (f"<b>{config.label}</b> · {esc(r.label)}<br>"
                     f"{candidate_hover(r.run, cand)}<br>{_elsewhere(config, runs, i)}")
            points.append(CrossPoint(config=config.label, on_front=on_front, point=PointData(
                candidate=cand.index, latency_ms=cand.latency_ms,
                latency_p95_ms=cand.latency_p95_ms, miou=cand.miou, gflops=cand.gflops,
                hover=hover)))
        points.sort(key=lambda p: (p.point.latency_ms, -p.point.miou))
        out_runs.append(CrossRun(run_id=r.run.id, label=r.label, points=tuple(points),
                                 baseline=baseline_point(r.run)))
    return CrossDeviceData(runs=tuple(out_runs), configs=tuple(configs))


def config_exits_text(config: CrossConfig) -> str:
    """Escaped exit chain of a configuration, for tables."""
    return exit_chain(config.exits)
