"""Interactive HTML Pareto reports of search runs (issue 8).

Figure data come from pure functions over store records (`front_figure_data`,
`summary_rows`, `exit_rate_data`, `histogram_data`, `cross_device_data`); `render_report`
draws them with Plotly into one self-contained page; `write_report` reads the store and
writes the file atomically.
"""

from dse.report._build import build_report_data, check_output_path, write_report
from dse.report._cross import CrossDeviceData, config_key, cross_device_data
from dse.report._data import (
    ExitRateData,
    FrontFigureData,
    HistogramData,
    candidate_hover,
    exit_rate_data,
    front_figure_data,
    histogram_data,
    kept_exits,
    order_exits,
)
from dse.report._html import render_report
from dse.report._model import ConfidenceData, ReportData, RunData
from dse.report._summary import SummaryRow, summary_rows

__all__ = [
    "ConfidenceData",
    "CrossDeviceData",
    "ExitRateData",
    "FrontFigureData",
    "HistogramData",
    "ReportData",
    "RunData",
    "SummaryRow",
    "build_report_data",
    "candidate_hover",
    "check_output_path",
    "config_key",
    "cross_device_data",
    "exit_rate_data",
    "front_figure_data",
    "histogram_data",
    "kept_exits",
    "order_exits",
    "render_report",
    "summary_rows",
    "write_report",
]
