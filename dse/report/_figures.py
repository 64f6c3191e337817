"""Drawing: figure data objects to Plotly figures, nothing computed here.

Hover labels arrive escaped; trace names and titles that carry user strings are escaped here,
since Plotly renders them as a small HTML subset.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from db.records import FINAL_EXIT
from dse.report._cross import CrossDeviceData
from dse.report._data import (
    ExitRateData,
    FrontFigureData,
    FrontSeries,
    HistogramData,
    PointData,
)
from dse.report._format import esc

FRONT_BLUE = "#1f5fbf"
PALETTE = ("#1f5fbf", "#d9480f", "#2b8a3e", "#862e9c", "#c92a2a", "#0b7285", "#5c940d",
           "#e67700")
HOVER = "%{hovertext}<extra></extra>"
_STYLE = {
    "front": dict(mode="lines+markers", marker=dict(size=9, color=FRONT_BLUE),
                  line=dict(color=FRONT_BLUE, width=2, shape="hv"), opacity=1.0),
    "later": dict(mode="lines+markers", marker=dict(size=6, color="#7a8fb8"),
                  line=dict(color="#7a8fb8", width=1, dash="dot", shape="hv"), opacity=0.45),
    "dominated": dict(mode="markers", marker=dict(size=5, color="#9aa0a6"), opacity=0.25),
    "infeasible": dict(mode="markers", marker=dict(size=6, color="#9aa0a6",
                                                   symbol="x-thin-open"), opacity=0.3),
}


def exit_colors(exit_ids: list[str] | tuple[str, ...]) -> dict[str, str]:
    """One colour per exit, by backbone order, so an exit looks the same in every figure."""
    colors = {e: PALETTE[k % len(PALETTE)] for k, e in enumerate(x for x in exit_ids
                                                                  if x != FINAL_EXIT)}
    colors[FINAL_EXIT] = "#495057"
    return colors


def _layout(fig: go.Figure, *, title: str, height: int) -> None:
    fig.update_layout(
        title=dict(text=esc(title), x=0.01), height=height, template="plotly_white",
        margin=dict(l=70, r=20, t=60, b=60), hoverlabel=dict(align="left"),
        # Right of the plot, top-aligned: the right margin grows to fit it, so it can never
        # cover the title (top left) however many entries it wraps into.
        legend=dict(orientation="v", yanchor="top", y=1.0, x=1.02, xanchor="left"),
    )


def _error_bars(points: tuple[PointData, ...], color: str) -> dict[str, object]:
    """Bootstrap intervals as asymmetric error bars (points without one get none)."""
    if not any(p.miou_interval for p in points):
        return {}

    def bars(values: list[float],
             intervals: list[tuple[float, float] | None]) -> dict[str, object]:
        pairs = list(zip(values, intervals, strict=True))
        return dict(type="data", symmetric=False, color=color, thickness=1, width=3,
                    array=[iv[1] - v if iv else 0.0 for v, iv in pairs],
                    arrayminus=[v - iv[0] if iv else 0.0 for v, iv in pairs])

    return dict(error_y=bars([p.miou for p in points], [p.miou_interval for p in points]),
                error_x=bars([p.latency_ms for p in points],
                             [p.latency_interval for p in points]))


def _points_trace(points: tuple[PointData, ...], *, name: str, **style: object) -> go.Scatter:
    return go.Scatter(
        x=[p.latency_ms for p in points], y=[p.miou for p in points],
        customdata=[p.candidate for p in points], hovertext=[p.hover for p in points],
        hovertemplate=HOVER, name=esc(name), **style,
    )


def _series_trace(series: FrontSeries) -> go.Scatter:
    return _points_trace(series.points, name=series.name, **_STYLE[series.style],
                         **_error_bars(series.points, "rgba(31, 95, 191, 0.45)"))


def front_figure(data: FrontFigureData) -> go.Figure:
    """Latency against mIoU: shaded constraint regions, fronts, baseline, measured checks."""
    fig = go.Figure()
    for region in data.regions:
        fig.add_shape(type="rect", x0=region.x0, x1=region.x1, y0=region.y0, y1=region.y1,
                      fillcolor="rgba(201, 42, 42, 0.08)", line=dict(width=0), layer="below")
        # A latency budget is labelled at its top-left corner, an mIoU floor at its bottom-left,
        # so two labels never overlap.
        vertical = region.y1 >= data.y_range[1]
        fig.add_annotation(x=region.x0, y=region.y1 if vertical else region.y0, xanchor="left",
                           yanchor="top" if vertical else "bottom", text=esc(region.label),
                           showarrow=False, font=dict(size=11, color="#a61e1e"))
    for series in reversed(data.series):  # front 1 drawn last, on top; listed first
        fig.add_trace(_series_trace(series))
        fig.data[-1].legendrank = 1 + data.series.index(series)
    if data.baseline is not None:
        fig.add_trace(_points_trace(
            (data.baseline,), name="baseline (final exit only)", mode="markers+text",
            text=["baseline"], textposition="top center", legendrank=100,
            marker=dict(size=15, symbol="star", color="#212529")))
    if data.chosen is not None:
        fig.add_trace(_points_trace(
            (data.chosen,), name=data.chosen_label, mode="markers", legendrank=99,
            marker=dict(size=20, symbol="circle-open", color="#e67700", line=dict(width=3))))
    for held_out, name, color, symbol in (
            (False, "measured (dse verify)", "#e67700", "diamond"),
            (True, "held-out check (dse pareto --check-on)", "#2b8a3e", "square")):
        checks = [v for v in data.verifications if v.held_out == held_out]
        if not checks:
            continue
        xs: list[float | None] = []
        ys: list[float | None] = []
        for v in checks:
            xs += [v.predicted_latency_ms, v.latency_ms, None]
            ys += [v.predicted_miou, v.miou, None]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                                 line=dict(color=color, width=1, dash="dash")))
        fig.add_trace(go.Scatter(
            x=[v.latency_ms for v in checks], y=[v.miou for v in checks],
            customdata=[v.candidate for v in checks],
            hovertext=[v.hover for v in checks], hovertemplate=HOVER,
            mode="markers", name=name, legendrank=101 + held_out,
            marker=dict(size=11, symbol=symbol, color=color,
                        line=dict(width=1, color="#212529"))))
    fig.update_xaxes(title_text="mean latency (ms)", range=list(data.x_range))
    fig.update_yaxes(title_text="mIoU", tickformat=".1%", range=list(data.y_range))
    _layout(fig, title=data.title, height=560)
    return fig


def exit_rate_figure(data: ExitRateData, *, title: str,
                     colors: dict[str, str] | None = None) -> go.Figure:
    """Stacked bars: for each front-1 candidate, the share of images leaving at each exit."""
    fig = go.Figure()
    labels = [f"#{i}" for i in data.candidates]
    colors = {**exit_colors(data.exit_ids), **(colors or {})}
    for exit_id, shares in zip(data.exit_ids, data.shares, strict=True):
        fig.add_trace(go.Bar(
            x=labels, y=list(shares), name=esc(exit_id), marker_color=colors[exit_id],
            hovertemplate=f"{esc(exit_id)}<br>candidate %{{x}}: %{{y:.1%}} of images"
                          "<extra></extra>"))
    fig.update_layout(barmode="stack")
    fig.update_xaxes(title_text="front-1 candidate (fastest first)", type="category")
    fig.update_yaxes(title_text="share of images", tickformat=".0%", range=[0, 1])
    _layout(fig, title=title, height=420)
    return fig


def histogram_figure(data: HistogramData, *, title: str, cols: int = 3,
                     colors: dict[str, str] | None = None) -> go.Figure:
    """One panel per kept exit: share of its pixels per confidence bin."""
    colors = {**exit_colors([p.exit_id for p in data.panels]), **(colors or {})}
    n = len(data.panels)
    rows = max(1, math.ceil(n / cols))
    fig = make_subplots(rows=rows, cols=min(cols, max(n, 1)),
                        subplot_titles=[esc(p.exit_id) for p in data.panels],
                        vertical_spacing=min(0.12, 0.4 / rows))
    for k, panel in enumerate(data.panels):
        fig.add_trace(go.Bar(
            x=[left + w / 2 for left, w in zip(panel.lefts, panel.widths, strict=True)],
            y=list(panel.shares), width=list(panel.widths), showlegend=False,
            marker_color=colors[panel.exit_id], name=esc(panel.exit_id),
            customdata=list(panel.lefts),
            hovertemplate=f"{esc(panel.exit_id)}<br>confidence ≥ %{{customdata:.3f}}: "
                          "%{y:.2%} of pixels<extra></extra>"),
            row=k // cols + 1, col=k % cols + 1)
    fig.update_xaxes(range=[0, 1.0], title_text="pixel confidence")
    fig.update_yaxes(tickformat=".0%")
    _layout(fig, title=title, height=120 + 260 * rows)
    return fig


def cross_figure(data: CrossDeviceData) -> go.Figure:
    """Fronts of several runs on one plot, each configuration linked to itself across runs."""
    fig = go.Figure()
    where: dict[str, list[tuple[float, float]]] = {}
    for run in data.runs:
        for p in run.points:
            where.setdefault(p.config, []).append((p.point.latency_ms, p.point.miou))
    xs: list[float | None] = []
    ys: list[float | None] = []
    for spots in where.values():
        if len(spots) >= 2:
            for x, y in sorted(spots):
                xs.append(x)
                ys.append(y)
            xs.append(None)
            ys.append(None)
    if xs:
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip",
                                 name="same configuration",
                                 line=dict(color="#adb5bd", width=1, dash="dot")))
    for k, run in enumerate(data.runs):
        color = PALETTE[k % len(PALETTE)]
        front = tuple(p.point for p in run.points if p.on_front)
        off = tuple(p.point for p in run.points if not p.on_front)
        configs = {p.point.candidate: p.config for p in run.points}
        fig.add_trace(_points_trace(
            front, name=f"{run.label}: front 1", mode="lines+markers",
            line=dict(color=color, width=2, shape="hv"), marker=dict(size=9, color=color),
            text=[configs[p.candidate] for p in front]))
        if off:
            fig.add_trace(_points_trace(
                off, name=f"{run.label}: linked, off its front", mode="markers",
                marker=dict(size=8, color=color, symbol="circle-open"), opacity=0.7))
        if run.baseline is not None:
            fig.add_trace(_points_trace(
                (run.baseline,), name=f"{run.label}: baseline", mode="markers",
                marker=dict(size=14, symbol="star", color=color,
                            line=dict(width=1, color="#212529"))))
    fig.update_xaxes(title_text="mean latency (ms)", rangemode="tozero")
    fig.update_yaxes(title_text="mIoU", tickformat=".1%")
    _layout(fig, title="Pareto fronts across runs: latency vs mIoU", height=600)
    return fig
