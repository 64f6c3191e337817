"""Pure figure data of the reports, from hand-made records (no store, no search)."""

from __future__ import annotations

import numpy as np
import pytest
from report_factory import EARLY, EVIL, edges, make_run, records

from db.records import CandidateRecord
from dse.report import (
    ConfidenceData,
    ReportData,
    RunData,
    cross_device_data,
    exit_rate_data,
    front_figure_data,
    histogram_data,
    kept_exits,
    order_exits,
    summary_rows,
)

A, B, C = EARLY


def _by_style(data):
    return {s.style: [p.candidate for p in s.points] for s in data.series}


def test_front_series_group_fronts_and_sort_by_latency() -> None:
    data = front_figure_data(make_run(), records())
    assert _by_style(data) == {
        "front": [0, 1, 2, 3], "later": [5, 4], "dominated": [6], "infeasible": [7],
    }
    assert data.series[0].style == "front"  # front 1 first in the data, drawn last (on top)
    assert data.baseline is not None
    assert (data.baseline.latency_ms, data.baseline.miou) == (40.0, 0.60)
    lo, hi = data.x_range
    assert lo >= 0.0 and hi > 50.0
    assert data.y_range[0] < 0.50 < 0.63 < data.y_range[1]


def test_constraint_regions_shade_what_is_ruled_out() -> None:
    run = make_run(constraints={"max_latency_ms": 35.0, "max_drop_pp": 1.0, "min_miou": 0.52})
    data = front_figure_data(run, records())
    regions = {r.label: r for r in data.regions}
    budget = regions["latency > 35 ms budget"]
    assert budget.x0 == 35.0 and budget.x1 == data.x_range[1]
    drop = regions["mIoU drop > 1 pp"]
    assert drop.y1 == pytest.approx(0.59) and drop.y0 == data.y_range[0]
    assert regions["mIoU < 52.00 %"].y1 == pytest.approx(0.52)
    assert front_figure_data(make_run(), records()).regions == ()


def test_hover_carries_configuration_numbers_and_provenance() -> None:
    hover = {p.candidate: p.hover
             for s in front_figure_data(make_run(), records()).series for p in s.points}
    text = hover[2]
    for needle in (f"{A} → {C} → final", "th_pix 0.9, 0.9 · th_img 0.8", "mIoU 60.05 %",
                   "+0.05 pp", "30.00 ms mean", "36.00 ms p95", "7.500 GFLOPs",
                   f"{C}: 50.0 %", "accuracy profile 1", "cpu=Test CPU", "front 1"):
        assert needle in text, needle
    assert "violates a constraint" in hover[7]


def test_user_strings_are_escaped_in_hover() -> None:
    evil_exit = "layer1.0/<b>x</b>"
    run = make_run(device=EVIL, model="m&<i>", fingerprint={"gpu": EVIL})
    cand = CandidateRecord(
        run_id=1, index=0, front=1, exits=[evil_exit, "final"], th_pix=[0.9], th_img=0.5,
        miou=0.5, latency_ms=1.0, latency_p95_ms=1.0, gflops=1.0,
        exit_rates={evil_exit: 1.0}, feasible=True)
    data = front_figure_data(run, [cand])
    text = data.series[0].points[0].hover + data.baseline.hover  # type: ignore[union-attr]
    assert "<script>" not in text and "<b>x</b>" not in text and "<i>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "layer1.0/&lt;b&gt;x&lt;/b&gt;" in text and "m&amp;&lt;i&gt;" in text


def test_verification_markers_use_measured_numbers() -> None:
    from report_factory import verification

    data = front_figure_data(make_run(), records(), [verification()])
    (v,) = data.verifications
    assert (v.candidate, v.latency_ms, v.miou) == (1, 22.0, 0.59)
    assert (v.predicted_latency_ms, v.predicted_miou) == (20.0, 0.595)
    assert "measured" in v.hover and "cpu-a" in v.hover


def test_summary_rows_follow_the_paper_use_cases() -> None:
    rows = summary_rows(make_run(), records())
    assert [r.label for r in rows] == [
        "baseline: final exit only", "max mIoU, latency ≤ baseline",
        "min latency, mIoU drop ≤ 0.1 pp", "min latency, mIoU drop ≤ 1 pp"]
    assert [r.candidate for r in rows] == [None, 3, 2, 1]
    assert rows[0].miou == 0.60 and rows[0].speedup == 1.0
    assert rows[1].delta_pp == pytest.approx(3.0)
    assert rows[3].speedup == pytest.approx(2.0)  # 40 ms / 20 ms
    by_gflops = summary_rows(make_run(), records(), cost="gflops")
    assert [r.candidate for r in by_gflops] == [None, 3, 2, 1]
    assert by_gflops[3].speedup == pytest.approx(10.0 / 5.0)


def test_summary_drop_of_exactly_a_tenth_of_a_point_counts_and_empty_use_case() -> None:
    cands = [c for c in records() if c.index in (0, 5)]  # 0.55 and 0.54: far below 0.60
    rows = summary_rows(make_run(), cands)
    assert rows[2].candidate is None and rows[2].miou is None
    exact = CandidateRecord(**{**vars(records()[0]), "index": 9, "miou": 0.60 - 0.001})
    assert summary_rows(make_run(), [exact])[2].candidate == 9
    with pytest.raises(ValueError, match="cost"):
        summary_rows(make_run(), cands, cost="joules")


def test_exit_rates_per_front_candidate_in_backbone_order() -> None:
    data = exit_rate_data(records())
    assert data.candidates == (0, 1, 2, 3)
    assert data.exit_ids == (A, B, C, "final")
    rates = dict(zip(data.exit_ids, data.shares, strict=True))
    assert rates[A] == (0.7, 0.0, 0.2, 0.0)
    assert rates["final"] == (0.3, 0.4, 0.3, 0.9)
    totals = np.sum(np.array(data.shares), axis=0)
    np.testing.assert_allclose(totals, 1.0)


def test_order_exits_follows_candidate_order_not_names() -> None:
    def cand(i: int, exits: list[str]) -> CandidateRecord:
        return CandidateRecord(run_id=1, index=i, front=1, exits=exits,
                               th_pix=[0.5] * (len(exits) - 1), th_img=0.5, miou=0.5,
                               latency_ms=1.0, latency_p95_ms=1.0, gflops=1.0, exit_rates={},
                               feasible=True)
    cands = [cand(0, ["z.1/h", "a.2/h", "final"]), cand(1, ["a.2/h", "m.3/h", "final"]),
             cand(2, ["b.0/h", "final"])]
    assert order_exits(cands) == ["b.0/h", "z.1/h", "a.2/h", "m.3/h", "final"]
    assert kept_exits(records()) == [A, B, C]


def test_histograms_rebin_to_equal_widths_exactly() -> None:
    e = edges()
    counts = np.zeros(len(e) - 1, dtype=np.int64)
    counts[5] = 10  # [0.05, 0.06)
    counts[-1] = 30  # [0.999, 1.0]
    counts[-5] = 60  # [0.995, 0.996)
    conf = ConfidenceData(profile_id=1, edges=e, counts={A: counts})
    data = histogram_data(conf, [A, B])
    (panel,) = data.panels
    assert data.missing == (B,)
    assert len(panel.lefts) == 100
    np.testing.assert_allclose(panel.widths, 0.01, atol=1e-9)
    assert panel.pixels == 100
    assert panel.shares[5] == pytest.approx(0.1) and panel.lefts[5] == pytest.approx(0.05)
    assert panel.shares[-1] == pytest.approx(0.9) and panel.lefts[-1] == pytest.approx(0.99)
    assert sum(panel.shares) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="min_width"):
        histogram_data(conf, [A], min_width=0.0)


def test_confidence_sums_images_and_checks_shapes() -> None:
    e = np.array([0.0, 0.5, 1.0])
    hist = np.array([[[1, 2], [3, 4]], [[5, 6], [7, 8]]])  # [E=2, S=2, B=2]
    conf = ConfidenceData.from_arrays(profile_id=3, exit_ids=[A, B], edges=e, hist=hist,
                                      keep={B})
    assert list(conf.counts) == [B]
    np.testing.assert_array_equal(conf.counts[B], [12, 14])
    with pytest.raises(ValueError, match="bins"):
        ConfidenceData(profile_id=1, edges=e, counts={A: np.array([1, 2, 3])})
    with pytest.raises(ValueError, match="edges"):
        ConfidenceData(profile_id=1, edges=np.array([0.0, 0.0, 1.0]), counts={})


def test_cross_device_links_the_same_configuration() -> None:
    fast = RunData(run=make_run(1, device="fast"), candidates=tuple(records(1)))
    slow = RunData(run=make_run(2, device=EVIL), candidates=tuple(records(2, scale=2.0)))
    data = cross_device_data([fast, slow])
    assert [c.label for c in data.configs] == ["C1", "C2", "C3", "C4"]
    c3 = data.configs[2]
    assert c3.exits == (A, C, "final") and c3.shared
    assert [cell.latency_ms for cell in c3.cells] == [30.0, 60.0]  # type: ignore[union-attr]
    hover = next(p.point.hover for p in data.runs[0].points if p.config == "C3")
    assert "C3 elsewhere" in hover and "60.00 ms" in hover
    assert "&lt;script&gt;" in hover and "<script>" not in hover
    assert [p.config for p in data.runs[1].points] == ["C1", "C2", "C3", "C4"]


def test_one_machine_under_two_runtimes_overlays_like_two_devices() -> None:
    fp = {"cpu": "Test CPU", "threads": 1, "torch": "2.14.1"}
    ort_fp = {"cpu": "Test CPU", "threads": 1, "runtime": "onnxruntime", "onnxruntime": "1.32.0",
              "graph_optimization": "all"}
    eager = RunData(run=make_run(1, device="laptop", fingerprint=fp), candidates=tuple(records(1)))
    ort = RunData(run=make_run(2, device="laptop", fingerprint=ort_fp),
                  candidates=tuple(records(2, scale=0.5)))
    assert eager.label == "run 1 · laptop"  # alone, torch eager needs no word
    assert ort.label == "run 2 · laptop · onnxruntime 1.32.0 (1 thread, opt all)"
    report = ReportData(runs=(eager, ort))  # together, each names its setup
    data = cross_device_data(report.runs)
    assert [r.label for r in data.runs] == [
        "run 1 · laptop · torch 2.14.1 (1 thread)",
        "run 2 · laptop · onnxruntime 1.32.0 (1 thread, opt all)"]
    c3 = next(c for c in data.configs if c.exits == (A, C, "final"))
    assert [cell.latency_ms for cell in c3.cells] == [30.0, 15.0]  # type: ignore[union-attr]
    other = RunData(run=make_run(3, device="jetson"), candidates=tuple(records(3)))
    assert [r.label for r in ReportData(runs=(eager, other)).runs] == [
        "run 1 · laptop", "run 3 · jetson"]


def test_a_setup_label_from_an_imported_fingerprint_is_escaped_on_the_page() -> None:
    from dse.report import render_report

    evil = {"runtime": "onnxruntime", "onnxruntime": EVIL, "threads": 2}
    runs = (RunData(run=make_run(1, device="pi"), candidates=tuple(records(1))),
            RunData(run=make_run(2, device="pi", fingerprint=evil),
                    candidates=tuple(records(2, scale=2.0))))
    page = render_report(ReportData(runs=runs))
    assert EVIL not in page and "pi · onnxruntime &lt;script&gt;" in page


def test_cross_device_configuration_missing_in_a_run() -> None:
    first = RunData(run=make_run(1), candidates=tuple(records(1)))
    only = tuple(c for c in records(2) if c.index != 2)
    second = RunData(run=make_run(2, device="other"), candidates=only)
    data = cross_device_data([first, second])
    c3 = next(c for c in data.configs if c.exits == (A, C, "final"))
    assert c3.cells[1] is None and not c3.shared


def test_records_must_belong_to_their_run() -> None:
    with pytest.raises(ValueError, match="candidates"):
        RunData(run=make_run(1), candidates=tuple(records(2)))
    run = RunData(run=make_run(1), candidates=tuple(records(1)))
    with pytest.raises(ValueError, match="runs"):
        ReportData(runs=(run, run))
    with pytest.raises(ValueError, match="runs"):
        ReportData(runs=())


def test_the_candidate_chosen_by_target_is_marked() -> None:
    run = make_run(constraints={"target": "speed", "chosen_candidate": 1})
    data = front_figure_data(run, records())
    assert data.chosen is not None and data.chosen.candidate == 1
    assert data.chosen_label == "chosen for --target speed"
    assert front_figure_data(make_run(), records()).chosen is None
    odd = make_run(constraints={"chosen_candidate": True})  # not an index
    assert front_figure_data(odd, records()).chosen is None
