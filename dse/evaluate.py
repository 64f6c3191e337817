"""Exact evaluation of one configuration from the stored profile (float64, vectorised over images).

This is the evaluator the Optuna engine calls per trial and the one that gives the stored numbers
of every candidate; the exhaustive engine has a faster batched kernel (`dse._kernel`) that agrees
with it (tests/dse/test_evaluate.py checks both against a slow per-image reference).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from db.counts import miou_from_union
from dse.data import FINAL_EXIT, AccuracyData, CostData
from dse.errors import DseError
from dse.space import Configuration


@dataclass(frozen=True, kw_only=True)
class Evaluation:
    """Objectives of one configuration over the calibration images.

    exit_counts: images answered per exit of `config.all_exits` (anytime: every image at each).
    anytime_ms: cumulative latency of each successive output (anytime mode only).
    """

    config: Configuration
    miou: float
    latency_ms: float
    latency_p95_ms: float
    gflops: float
    exit_counts: tuple[int, ...]
    anytime_ms: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.miou <= 1.0:
            raise ValueError(f"miou must lie in [0, 1], got {self.miou}")
        if len(self.exit_counts) != len(self.config.all_exits):
            raise ValueError("exit_counts needs one count per exit of the configuration")

    @property
    def exit_rates(self) -> dict[str, float]:
        """Exit id -> share of images answered there."""
        total = self.exit_counts[-1] if self.config.mode == "anytime" else sum(self.exit_counts)
        return {e: n / total for e, n in zip(self.config.all_exits, self.exit_counts, strict=True)}


@dataclass(frozen=True, kw_only=True, eq=False)
class Routes:
    """Per calibration image: the configuration's slot it leaves at (0..k-1 early, k final),
    the profile row of that exit, its latency (ms) and GFLOPs."""

    slot: np.ndarray
    exit_row: np.ndarray
    ms: np.ndarray
    gflops: np.ndarray
    num_slots: int


class Evaluator:
    """Prepared tables of one (accuracy profile, device costs) pair."""

    def __init__(self, data: AccuracyData, cost: CostData) -> None:
        if cost.num_positions != data.num_positions:
            raise DseError(f"the latency profile has {cost.num_positions} positions but the "
                           f"accuracy profile {data.num_positions}; profile the same checkpoint")
        missing = cost.missing(data.exit_ids)
        if missing:
            raise DseError(f"no latency for exit {missing[0]!r} (and {len(missing) - 1} more); "
                           "re-run `dse profile --latency` for this device")
        self.data = data
        self.cost = cost
        self.index = {e: i for i, e in enumerate(data.exit_ids)}
        self.union = data.tp + data.fp + data.fn  # [E + 1, S, C]
        cum_ms = np.cumsum(cost.segment_ms)
        cum_gf = np.cumsum(cost.segment_gflops)
        pos = np.asarray(data.position_index, dtype=np.int64)
        # cost of reaching an early exit's position (the backbone up to it) ...
        self.seg_ms = cum_ms[pos] if pos.size else np.zeros(0)
        self.seg_gflops = cum_gf[pos] if pos.size else np.zeros(0)
        # ... of upsampling its logits to the input size (only the images that leave there) ...
        self.up_ms = np.array([cost.upsample_ms[e] for e in data.exit_ids])
        self.up_gflops = np.array([cost.upsample_gflops.get(e, 0.0) for e in data.exit_ids])
        # ... so an image leaving there pays the backbone to it plus one upsampling ...
        self.leave_ms = self.seg_ms + self.up_ms
        self.leave_gflops = self.seg_gflops + self.up_gflops
        # ... and every image reaching it pays its head, or its head plus exit decision
        self.head_ms = np.array([cost.head_ms[e] for e in data.exit_ids])
        self.head_gflops = np.array([cost.head_gflops[e] for e in data.exit_ids])
        self.check_ms = self.head_ms + np.array([cost.decision_ms[e] for e in data.exit_ids])
        self.check_gflops = self.head_gflops + np.array(
            [cost.decision_gflops.get(e, 0.0) for e in data.exit_ids])
        # the final exit: the whole backbone, the final head, its upsampling
        self.final_ms = float(cum_ms[-1] + cost.final_ms + cost.final_upsample_ms)
        self.final_gflops = float(cum_gf[-1] + cost.final_gflops + cost.final_upsample_gflops)

    def indices(self, exit_ids: tuple[str, ...]) -> list[int]:
        """Row of each exit id; raises DseError on an unknown id or a wrong order."""
        try:
            rows = [self.index[e] for e in exit_ids]
        except KeyError as exc:
            raise DseError(f"exit {exc.args[0]!r} is not in the accuracy profile") from exc
        positions = [self.data.position_index[r] for r in rows]
        if any(b <= a for a, b in zip(positions, positions[1:], strict=False)):
            raise DseError(f"exits {list(exit_ids)} must be at increasing positions")
        return rows

    def evaluate(self, config: Configuration) -> Evaluation:
        """Objectives of one configuration (exact, float64)."""
        if config.mode == "budgeted":
            return self._budgeted(config)
        if config.mode == "anytime":
            return self._anytime(config, self.indices(config.exits))
        return self._cascade(config)

    def baseline(self) -> Evaluation:
        """The final exit alone."""
        return self.evaluate(Configuration(exits=()))

    def routes(self, config: Configuration) -> Routes:
        """Where each calibration image leaves and what it costs (cascade and budgeted modes).

        Every objective of `evaluate` is a sum or a percentile over these per-image values, so a
        resample of the images (the bootstrap) or another calibration set re-scores exactly.
        """
        if config.mode == "anytime":
            raise DseError("per-image routes exist for cascade and budgeted configurations only")
        s = self.data.num_samples
        if config.mode == "budgeted":
            return self._budgeted_routes(config, s)
        rows = self.indices(config.exits)
        route = np.full(s, len(rows), dtype=np.int64)  # slot per image; len(rows) = final
        open_ = np.ones(s, dtype=bool)
        for slot, (row, th_pix) in enumerate(zip(rows, config.th_pix, strict=True)):
            c_img = self.data.image_confidence(row, self.data.edge_index(th_pix))
            leave = open_ & (c_img >= config.th_img)
            route[leave] = slot
            open_ &= ~leave
        exit_rows = np.asarray([*rows, len(self.data.exit_ids)])[route]
        # latency per slot: backbone to the exit and its upsampling + heads and decisions of
        # every exit reached
        check_ms = np.cumsum(self.check_ms[rows]) if rows else np.zeros(0)
        check_gf = np.cumsum(self.check_gflops[rows]) if rows else np.zeros(0)
        slot_ms = np.append(self.leave_ms[rows] + check_ms,
                            self.final_ms + (check_ms[-1] if rows else 0))
        slot_gf = np.append(self.leave_gflops[rows] + check_gf,
                            self.final_gflops + (check_gf[-1] if rows else 0))
        return Routes(slot=route, exit_row=exit_rows, ms=slot_ms[route], gflops=slot_gf[route],
                      num_slots=len(rows) + 1)

    def _budgeted_routes(self, config: Configuration, s: int) -> Routes:
        (exit_id,) = config.exits
        if exit_id == FINAL_EXIT:
            row, ms, gf = len(self.data.exit_ids), self.final_ms, self.final_gflops
        else:
            (row,) = self.indices(config.exits)
            ms = float(self.leave_ms[row] + self.head_ms[row])
            gf = float(self.leave_gflops[row] + self.head_gflops[row])
        return Routes(slot=np.zeros(s, dtype=np.int64), exit_row=np.full(s, row, dtype=np.int64),
                      ms=np.full(s, ms), gflops=np.full(s, gf), num_slots=1)

    def _cascade(self, config: Configuration) -> Evaluation:
        r = self.routes(config)
        images = np.arange(self.data.num_samples)
        tp = self.data.tp[r.exit_row, images].sum(axis=0)
        union = self.union[r.exit_row, images].sum(axis=0)
        return Evaluation(
            config=config, miou=float(miou_from_union(tp, union)),
            latency_ms=float(r.ms.mean()), latency_p95_ms=float(np.percentile(r.ms, 95)),
            gflops=float(r.gflops.mean()),
            exit_counts=tuple(int(n) for n in np.bincount(r.slot, minlength=r.num_slots)),
        )

    def _budgeted(self, config: Configuration) -> Evaluation:
        r = self.routes(config)
        row = int(r.exit_row[0])
        miou = miou_from_union(self.data.tp[row].sum(axis=0), self.union[row].sum(axis=0))
        ms, gf = float(r.ms[0]), float(r.gflops[0])
        return Evaluation(config=config, miou=float(miou), latency_ms=ms, latency_p95_ms=ms,
                          gflops=gf, exit_counts=(self.data.num_samples,))

    def _anytime(self, config: Configuration, rows: list[int]) -> Evaluation:
        final = len(self.data.exit_ids)
        # every output is upsampled to the input size before it is handed out
        out_ms = self.head_ms + self.up_ms
        outputs_ms = [float(self.seg_ms[r] + out_ms[rows[: i + 1]].sum())
                      for i, r in enumerate(rows)]
        heads_ms = float(out_ms[rows].sum()) if rows else 0.0
        heads_gf = float((self.head_gflops + self.up_gflops)[rows].sum()) if rows else 0.0
        outputs_ms.append(self.final_ms + heads_ms)
        miou = miou_from_union(self.data.tp[final].sum(axis=0), self.union[final].sum(axis=0))
        s = self.data.num_samples
        return Evaluation(config=config, miou=float(miou), latency_ms=outputs_ms[-1],
                          latency_p95_ms=outputs_ms[-1], gflops=self.final_gflops + heads_gf,
                          exit_counts=(s,) * (len(rows) + 1), anytime_ms=tuple(outputs_ms))
