"""Report data and HTML for bootstrap intervals and held-out checks (hand-made records)."""

from __future__ import annotations

import dataclasses

from report_factory import EARLY, WHEN, make_run, records

from db.records import VerificationRecord
from dse.report import ReportData, RunData, front_figure_data, render_report
from dse.report._figures import front_figure

B = EARLY[1]
IV = {"level": 0.9, "miou": [0.58, 0.61], "drop_pp": [-1.0, 2.0], "latency_ms": [19.0, 21.5],
      "exit_rates": {B: [0.5, 0.7], "final": [0.3, 0.5]}, "confidence": 0.9,
      "bounds": {"miou_low": 0.583, "drop_pp_high": 1.7, "latency_ms_high": 21.0,
                 "gflops_high": 5.2}}


def _held_out(index: int = 1) -> VerificationRecord:
    return VerificationRecord(
        id=2, run_id=1, candidate_index=index, device_id=1, device_name="cpu-a",
        dataset="synthetic", split="val[1::2]",
        predicted={"miou": 0.595, "drop_pp": 0.5, "latency_ms": 20.0,
                   "exit_rates": {B: 0.6, "final": 0.4}},
        measured={"miou": 0.55, "drop_pp": 4.5, "latency_ms": 24.0, "latency_p95_ms": 30.0,
                  "gflops": 6.0, "exit_rates": {B: 0.3, "final": 0.7},
                  "source": "stored profile", "moved_exits": {B: -30.0, "final": 30.0},
                  "broken": ["drop 4.50 pp > 1 pp"],
                  "check_set": {"calibration_set": 2, "images": 10, "shared_images": 0}},
        created=WHEN)


def _cands():
    cands = records()
    cands[1] = dataclasses.replace(cands[1], intervals=IV)
    return cands


def test_front_points_carry_their_interval_and_hover() -> None:
    data = front_figure_data(make_run(), _cands(), [_held_out()])
    front = next(s for s in data.series if s.style == "front")
    point = next(p for p in front.points if p.candidate == 1)
    assert point.miou_interval == (0.58, 0.61) and point.latency_interval == (19.0, 21.5)
    assert "90 % bootstrap interval" in point.hover and "drop ≤ 1.70 pp" in point.hover
    others = [p for p in front.points if p.candidate != 1]
    assert all(p.miou_interval is None for p in others)
    (check,) = data.verifications
    assert check.held_out and (check.miou, check.latency_ms) == (0.55, 24.0)
    assert "held-out check" in check.hover and "moved -30 points" in check.hover
    assert "drop 4.50 pp &gt; 1 pp" in check.hover  # escaped like every stored string
    fig = front_figure(data)
    trace = next(t for t in fig.data if t.name == "front 1 (Pareto-optimal)")
    k = list(trace.customdata).index(1)
    assert trace.error_y.array[k] == 0.61 - 0.595 and trace.error_y.arrayminus[k] == 0.595 - 0.58
    assert sum(trace.error_y.array) == trace.error_y.array[k]  # no bars where none is stored
    names = [t.name for t in fig.data]
    assert "held-out check (dse pareto --check-on)" in names
    assert "measured (dse verify)" not in names


def test_html_shows_interval_columns_and_marks_held_out_rows() -> None:
    run = make_run()
    html = render_report(ReportData(runs=(RunData(run=run, candidates=_cands(),
                                                  verifications=(_held_out(),)),)))
    assert "mIoU interval" in html and "58.00 %–61.00 % (90 %)" in html
    assert "val[1::2] (held-out, stored profile)" in html
    assert "moved -30 points" in html and "drop 4.50 pp &gt; 1 pp" in html
