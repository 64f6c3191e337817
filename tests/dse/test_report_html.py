"""The HTML page, `write_report` on a real SQLite store, and `dse report` on the command line."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from report_factory import EARLY, EVIL, edges, fill_store, make_run, records, verification

from db.errors import StorageError
from db.session import open_store, session_scope
from dse.cli._app import main
from dse.errors import DseError
from dse.report import (
    ConfidenceData,
    ReportData,
    RunData,
    check_output_path,
    exit_rate_data,
    front_figure_data,
    histogram_data,
    render_report,
    write_report,
)
from dse.report._figures import exit_colors, exit_rate_figure, front_figure, histogram_figure

PLOTLY_BANNER = re.compile(r"plotly\.js v\d+\.\d+\.\d+")


def _page(*runs: RunData) -> str:
    return render_report(ReportData(runs=runs))


@pytest.fixture(scope="module")
def single() -> str:
    run = make_run(1, device=EVIL, model="m<&>", fingerprint={"gpu": EVIL},
                   constraints={"max_latency_ms": 35.0, "max_drop_pp": 1.0})
    return _page(RunData(run=run, candidates=tuple(records(1)),
                         verifications=(verification(1, device=EVIL),)))


def test_page_is_self_contained_with_plotly_inlined_once(single: str) -> None:
    assert single.startswith("<!DOCTYPE html>") and single.rstrip().endswith("</html>")
    assert len(PLOTLY_BANNER.findall(single)) == 1  # the library, inline, exactly once
    assert "<script src=" not in single and "<link" not in single  # nothing fetched
    assert 'id="fig-front-1"' in single and 'id="fig-exits-1"' in single
    assert 'id="fig-hist-1"' not in single  # no confidence data in this hand-made run
    assert "No confidence histograms" in single


def test_every_user_string_is_escaped(single: str) -> None:
    assert "<script>alert(1)</script>" not in single
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in single  # the device name as text
    assert "m&lt;&amp;&gt;" in single
    # Only our own script tags: Plotly's config and library, one per figure, the sorter.
    assert single.count("<script") == 2 + 2 + 1


def test_summary_front_and_verification_tables(single: str) -> None:
    assert "baseline: final exit only" in single and "min latency, mIoU drop ≤ 1 pp" in single
    front = single.split('class="sortable front"')[1].split("</table>")[0]
    assert front.count("<tr>") == 1 + 4  # header + front-1 feasible candidates
    assert 'data-sort="30"' in front  # candidate 2's latency, sortable as a number
    verify = single.split('class="sortable verify"')[1].split("</table>")[0]
    assert "latency_ms" in verify and "22.00 ms" in verify and "+2 (+10.0 %)" in verify
    assert "latency_samples_ms" not in verify
    assert "Predicted vs measured" in single


def test_multi_run_page_has_the_cross_section() -> None:
    page = _page(RunData(run=make_run(1, device="fast"), candidates=tuple(records(1))),
                 RunData(run=make_run(2, device="slow"), candidates=tuple(records(2, 2.0))))
    assert 'id="cross"' in page and 'id="fig-cross"' in page
    cross = page.split('class="sortable cross"')[1].split("</table>")[0]
    assert "run 1 · fast: latency" in cross and "run 2 · slow: latency" in cross
    assert cross.count("<tr>") == 1 + 4
    assert len(PLOTLY_BANNER.findall(page)) == 1


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[int]]:
    path = tmp_path_factory.mktemp("store") / "mess.db"
    return f"sqlite:///{path}", fill_store(path)


def test_write_report_from_a_real_store(store: tuple[str, list[int]], tmp_path: Path) -> None:
    url, run_ids = store
    engine = open_store(url)
    try:
        with session_scope(engine, readonly=True) as s:
            out = write_report(s, run_ids, tmp_path / "r.html")
    finally:
        engine.dispose()
    page = out.read_text(encoding="utf-8")
    assert 'id="fig-hist-1"' in page and 'id="fig-hist-2"' in page and 'id="fig-cross"' in page
    assert "Pixel confidence per kept exit (accuracy profile 1)" in page
    assert os.listdir(tmp_path) == ["r.html"]  # no temp file left behind


def test_missing_run_leaves_no_file(store: tuple[str, list[int]], tmp_path: Path) -> None:
    url, _ = store
    engine = open_store(url)
    try:
        with session_scope(engine, readonly=True) as s, pytest.raises(StorageError,
                                                                      match="dse pareto"):
            write_report(s, [1, 99], tmp_path / "r.html")
    finally:
        engine.dispose()
    assert os.listdir(tmp_path) == []


def test_output_path_checks(tmp_path: Path) -> None:
    with pytest.raises(DseError, match="does not exist"):
        check_output_path(tmp_path / "missing" / "r.html")
    with pytest.raises(DseError, match="is a folder"):
        check_output_path(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DseError, match="does not exist"):
        check_output_path(blocker / "r.html")
    assert check_output_path(tmp_path / "ok.html") == tmp_path / "ok.html"
    assert os.listdir(tmp_path) == ["file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_output_folder_not_writable(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    try:
        with pytest.raises(DseError, match="cannot write|not writable"):
            check_output_path(folder / "r.html")
    finally:
        folder.chmod(0o700)


def test_cli_writes_the_report(store: tuple[str, list[int]], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = store
    out = tmp_path / "two.html"
    assert main(["report", "--runs", "1, 2", "--out", str(out), "--db", url, "--json"]) == 0
    line = capsys.readouterr().out.strip()
    assert f'"out": "{out}"' in line and '"runs": [1, 2]' in line
    assert 'id="fig-cross"' in out.read_text(encoding="utf-8")


@pytest.mark.parametrize(("args", "message"), [
    (["--runs", "7"], "unknown search run 7"),
    (["--runs", "1,x"], "'x' is not a run id"),
    (["--runs", "1,1"], "listed twice"),
    (["--runs", "1", "--out", "{tmp}/missing/r.html"], "does not exist"),
])
def test_cli_bad_input_is_one_line_and_exit_2(
        store: tuple[str, list[int]], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        args: list[str], message: str) -> None:
    url, _ = store
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "r.html")]
    assert main(["report", *args, "--db", url]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert os.listdir(tmp_path) == []


def test_constraints_and_chosen_candidate_on_the_page() -> None:
    run = make_run(1, constraints={"max_drop_pp": 2.0, "max_latency_ms": None,
                                   "target": "speed", "chosen_candidate": 1,
                                   "resolved": {"min_miou": 0.58}})
    page = _page(RunData(run=run, candidates=tuple(records(1))))
    shown = page.split("<dt>constraints</dt>")[1].split("</dd>")[0]
    assert "mIoU drop &lt;= 2 pp, target speed (bounds used: mIoU &gt;= 58.00%)" in shown
    assert "chosen_candidate" not in shown and "resolved" not in shown
    assert "max_latency_ms" not in page.split("<dt>constraints</dt>")[1].split("</dd>")[0]
    front = page.split('class="sortable front"')[1].split("</table>")[0]
    assert '<td data-sort="1">1 (chosen)</td>' in front
    assert "chosen for --target speed" in page


def test_figures_emphasise_front_one_and_share_exit_colours() -> None:
    run = make_run(constraints={"max_latency_ms": 35.0, "max_drop_pp": 1.0})
    fig = front_figure(front_figure_data(run, records(), [verification()]))
    traces = {t.name: t for t in fig.data}
    front, faint = traces["front 1 (Pareto-optimal)"], traces["fronts &gt; 3"]
    assert front.opacity == 1.0 and faint.opacity < traces["front 2"].opacity < 1.0
    assert list(front.customdata) == [0, 1, 2, 3]
    assert "baseline (final exit only)" in traces and "measured (dse verify)" in traces
    assert len(fig.layout.shapes) == 2  # latency budget and maximum drop
    assert fig.data[-1].name == "measured (dse verify)"  # drawn on top

    colors = exit_colors(list(EARLY))
    bars = exit_rate_figure(exit_rate_data(records()), title="t", colors=colors)
    conf = ConfidenceData(profile_id=1, edges=edges(),
                          counts={e: np.ones(190, dtype=np.int64) for e in EARLY[1:]})
    hist = histogram_figure(histogram_data(conf, list(EARLY[1:])), title="h", colors=colors)
    bar_colors = {t.name: t.marker.color for t in bars.data}
    assert {t.name: t.marker.color for t in hist.data} == {e: bar_colors[e] for e in EARLY[1:]}
    assert bar_colors["final"] == "#495057" and len(set(bar_colors.values())) == 4
