"""The page: one self-contained HTML file (plotly.js inlined once), sections per run."""

from __future__ import annotations

import plotly.graph_objects as go
import plotly.io as pio

from dse.report._cross import cross_device_data
from dse.report._data import (
    exit_rate_data,
    front_figure_data,
    histogram_data,
    kept_exits,
)
from dse.report._figures import (
    cross_figure,
    exit_colors,
    exit_rate_figure,
    front_figure,
    histogram_figure,
)
from dse.report._format import esc
from dse.report._model import ReportData, RunData
from dse.report._summary import summary_rows
from dse.report._tables import (
    cross_table,
    front_table,
    run_meta,
    summary_table,
    verification_table,
)

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
       max-width: 1400px; padding: 1rem 2rem 4rem; color: #212529; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 2px solid #dee2e6; padding-bottom: 0.3rem;
margin-top: 2.5rem; } h3 { margin-top: 1.8rem; }
.sub, .note { color: #6c757d; }
.warning { color: #8a4b00; background: #fff3cd; padding: 4px 8px; }
.predicted { color: #8a4b00; font-size: 0.8em; font-weight: normal; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 0.2rem 1rem; }
dl.meta dt { font-weight: 600; } dl.meta dd { margin: 0; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0 1rem; }
th, td { border-bottom: 1px solid #dee2e6; padding: 0.25rem 0.6rem; text-align: left;
         vertical-align: top; }
th { background: #f1f3f5; position: sticky; top: 0; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th[aria-sort="ascending"]::after { content: " ▲"; }
table.sortable th[aria-sort="descending"]::after { content: " ▼"; }
.table-wrap { max-height: 32rem; overflow: auto; }
pre { background: #f8f9fa; padding: 0.5rem; max-height: 20rem; overflow: auto; }
"""

# The only hand-written script: click a column header to sort a table by that column.
SORT_JS = """
document.querySelectorAll("table.sortable th").forEach(function (th) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0];
    var col = Array.prototype.indexOf.call(th.parentNode.children, th);
    var asc = th.getAttribute("aria-sort") !== "ascending";
    table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].getAttribute("data-sort"), y = b.cells[col].getAttribute("data-sort");
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


class _Figures:
    """Turns figures into HTML fragments; plotly.js goes inline with the first one only."""

    def __init__(self) -> None:
        self.count = 0

    def html(self, fig: go.Figure, name: str) -> str:
        self.count += 1
        return pio.to_html(
            fig, include_plotlyjs=self.count == 1, full_html=False,
            div_id=f"fig-{name}", config={"displaylogo": False, "responsive": True},
        )


def _run_section(data: RunData, figures: _Figures) -> str:
    run, cands = data.run, data.candidates
    rid = run.id
    parts = [
        f"<section id=\"run-{rid}\"><h2>Run {rid}: {esc(run.model_name)} on "
        f"{esc(run.device_name)}{_predicted_mark(data)}</h2>",
        run_meta(data),
        "<h3>Summary (paper use cases)</h3>",
        summary_table(summary_rows(run, cands)),
        "<h3>Pareto front</h3>",
        _trust(data),
        figures.html(front_figure(front_figure_data(run, cands, data.verifications)),
                     f"front-{rid}"),
    ]
    if data.verifications:
        parts += ["<h3>Predicted vs measured (dse verify)</h3>",
                  f"<div class=\"table-wrap\">{verification_table(data.verifications)}</div>"]
    parts += ["<h3>Front 1</h3>",
              "<p class=\"note\">Click a column header to sort.</p>",
              f"<div class=\"table-wrap\">{front_table(run, cands)}</div>"]
    rates = exit_rate_data(cands)
    colors = exit_colors(kept_exits(cands))
    parts.append("<h3>Where images leave</h3>")
    if rates.candidates:
        parts.append(figures.html(
            exit_rate_figure(rates, title=f"Exit rates of front-1 candidates, run {rid}",
                             colors=colors), f"exits-{rid}"))
    else:
        parts.append("<p class=\"note\">No front-1 candidate to show.</p>")
    parts.append("<h3>Confidence histograms of the kept exits</h3>")
    parts.append(_histograms(data, figures, colors))
    parts.append("</section>")
    return "\n".join(parts)


def _trust(data: RunData) -> str:
    """The device profile's measurement quality, next to its front (a warning class when due)."""
    trust = data.trust
    if trust is None:
        return ""
    css = "warning" if trust.warning else "note"
    text = trust.warning or f"latencies {trust.status}: {trust.figures}"
    return (f"<p class=\"{css} trust\" data-trust=\"{esc(trust.status)}\">Latency measurement "
            f"quality on {esc(trust.device)}: {esc(text)}</p>")


def _predicted_mark(data: RunData) -> str:
    """A mark beside the device's name when its latencies are partly predicted (few-shot)."""
    trust = data.trust
    if trust is None or not trust.predicted_rows:
        return ""
    err = (trust.prediction or {}).get("cv_error")
    expected = f", expected error {err:.0%} median" if isinstance(err, float) else ""
    return (f" <span class=\"predicted\" data-predicted=\"{trust.predicted_rows}/"
            f"{trust.components}\">(latencies predicted for {trust.predicted_rows} of "
            f"{trust.components} components{esc(expected)})</span>")


def _histograms(data: RunData, figures: _Figures, colors: dict[str, str]) -> str:
    kept = kept_exits(data.candidates)
    if not kept:
        return "<p class=\"note\">Front 1 keeps no early exit.</p>"
    if data.confidence is None:
        note = data.confidence_note or (
            f"accuracy profile {data.run.accuracy_profile_id} was not loaded")
        return f"<p class=\"note\">No confidence histograms: {esc(note)}.</p>"
    hist = histogram_data(data.confidence, kept)
    out = ""
    if hist.panels:
        out = figures.html(histogram_figure(
            hist, title=f"Pixel confidence per kept exit (accuracy profile "
                        f"{data.confidence.profile_id})", colors=colors), f"hist-{data.run.id}")
    if hist.missing:
        out += ("<p class=\"note\">No stored histogram for: "
                + ", ".join(esc(e) for e in hist.missing) + "</p>")
    return out


def _cross_section(data: ReportData, figures: _Figures) -> str:
    cross = cross_device_data(data.runs)
    return "\n".join([
        "<section id=\"cross\"><h2>Across runs</h2>",
        "<p class=\"note\">Each configuration (same exits and thresholds) that is on front 1 "
        "of some run is linked to itself in the other runs; hover a point for its numbers "
        "everywhere.</p>",
        figures.html(cross_figure(cross), "cross"),
        f"<div class=\"table-wrap\">{cross_table(cross)}</div>",
        "</section>",
    ])


def render_report(data: ReportData) -> str:
    """The whole HTML page of one or more runs, self-contained (works offline)."""
    figures = _Figures()
    runs = data.runs
    devices = ", ".join(esc(r.run.device_name) for r in runs)
    title = (f"MESS report: run {runs[0].run.id}" if len(runs) == 1
             else "MESS report: runs " + ", ".join(str(r.run.id) for r in runs))
    sections = []
    if len(runs) > 1:
        sections.append(_cross_section(data, figures))
    sections += [_run_section(r, figures) for r in runs]
    nav = " · ".join(f"<a href=\"#run-{r.run.id}\">{esc(r.label)}</a>" for r in runs)
    return "\n".join([
        "<!DOCTYPE html>",
        "<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
        f"<header><h1>{esc(title)}</h1>",
        f"<p class=\"sub\">Devices: {devices} · generated "
        f"{esc(data.generated.isoformat(timespec='seconds'))} by mess-dse · {nav}</p></header>",
        *sections,
        f"<script>{SORT_JS}</script>",
        "</body></html>",
    ])
